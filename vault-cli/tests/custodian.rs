//! The custodian's and privacy officer's work with the real `vaultctl` binary, on SQLite and on
//! PostgreSQL: rotation of 10,000 records with a rewrap killed halfway, recipients made by the
//! real `age-keygen`, principals, audit verification, incident reports, and wrong input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use sea_orm::ConnectionTrait;
use vault_core::{
    Category, FieldName, FieldValue, NewSubject, Purpose, RecordId, RecordType, Role, SchoolId,
    Scope, SubjectKind, Unlock, Vault,
};
use vault_tests::{Backend, TestStores, on_both_backends, policy, tool};

/// `--format json` output: JSON Lines, each line one object.
fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

on_both_backends!(
    rotation_of_ten_thousand_records_survives_a_kill,
    recipients_principals_audit_and_incidents,
    retention_from_the_command_line,
    transfers_abroad_follow_the_rules,
    a_transfer_export_acts_as_someone_and_passes_a_reads_decisions,
    vaultctl_on_another_schools_subject_answers_as_for_a_random_id,
    restore_of_an_older_backup_keeps_shredded_data_shredded,
);

struct Ctl {
    stores: TestStores,
    identity: PathBuf,
    /// The privacy officer's token, for the commands that act as a named principal.
    token_file: PathBuf,
}

impl Ctl {
    fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vaultctl"));
        c.arg("--policies")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"));
        match self.stores.backend {
            Backend::Sqlite => {
                c.arg("--data-dir").arg(self.stores.dir.path().join("data"));
            }
            Backend::Postgres => {
                c.arg("--data-url").arg(&self.stores.config.data_url);
                c.arg("--keys-url").arg(&self.stores.config.keys_url);
            }
        }
        c.env_remove("VAULT_IDENTITY")
            .env_remove("VAULT_PASSPHRASE_FILE")
            .env_remove("VAULT_TOKEN")
            .env("VAULT_TOKEN_FILE", &self.token_file);
        c
    }

    /// Runs vaultctl with a terminal (a pty, through util-linux's `script`) for its stdout and
    /// stderr; answers everything it wrote there.
    fn on_a_terminal(&self, args: &[&str]) -> String {
        let c = self.cmd();
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', r"'\''"));
        let mut line = quote(c.get_program());
        let identity = [
            std::ffi::OsStr::new("--identity"),
            self.identity.as_os_str(),
        ];
        for a in c
            .get_args()
            .chain(identity)
            .chain(args.iter().map(std::ffi::OsStr::new))
        {
            line.push(' ');
            line.push_str(&quote(a));
        }
        let mut s = Command::new("script");
        s.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => s.env(k, v),
                None => s.env_remove(k),
            };
        }
        let o = s
            .output()
            .expect("util-linux's script gives vaultctl a terminal");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn run(&self, args: &[&str]) -> Output {
        let o = self
            .cmd()
            .args(args)
            .arg("--identity")
            .arg(&self.identity)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("stack backtrace"),
            "{err}"
        );
        o
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "vaultctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn fails(&self, args: &[&str], want: &str) -> String {
        let o = self.run(args);
        assert_eq!(o.status.code(), Some(1), "vaultctl {args:?} should fail");
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.starts_with("error: "), "{err}");
        assert!(err.contains(want), "vaultctl {args:?}: {err}");
        err
    }

    async fn vault(&self) -> Vault {
        let config = match self.stores.backend {
            Backend::Sqlite => {
                vault_core::StoreConfig::sqlite_dir(&self.stores.dir.path().join("data")).unwrap()
            }
            Backend::Postgres => self.stores.config.clone(),
        };
        Vault::open(
            vault_core::Stores::open(&config).await.unwrap(),
            policy().await,
            Unlock::identity_file(&self.identity).unwrap(),
        )
        .await
        .unwrap()
    }
}

async fn setup(backend: Backend) -> Ctl {
    let stores = TestStores::new(backend).await;
    let identity = stores.dir.path().join("custodian.txt");
    let recipient = Unlock::generate_identity_file(&identity)
        .unwrap()
        .to_string();
    let token_file = stores.dir.path().join("privacy-officer.token");
    let ctl = Ctl {
        stores,
        identity,
        token_file,
    };
    let o = ctl
        .cmd()
        .args(["keyring", "init", "--recipient", &recipient])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // The first principal is the only one the custodian's identity alone may make.
    let o = ctl
        .cmd()
        .env_remove("VAULT_TOKEN_FILE")
        .args([
            "principal",
            "add",
            "--name",
            "General director",
            "--role",
            "general_director@*",
            "--identity",
        ])
        .arg(&ctl.identity)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::write(
        ctl.admin_token(),
        token_line(&String::from_utf8_lossy(&o.stdout)),
    )
    .unwrap();
    let out = ctl.ok_as(
        &ctl.admin_token(),
        &[
            "principal",
            "add",
            "--name",
            "Privacy officer",
            "--role",
            "privacy_officer@school-1",
        ],
    );
    std::fs::write(&ctl.token_file, token_line(&out)).unwrap();
    let out = ctl.ok_as(
        &ctl.admin_token(),
        &[
            "principal",
            "add",
            "--name",
            "Auditor",
            "--role",
            "auditor@*",
        ],
    );
    std::fs::write(ctl.auditor_token(), token_line(&out)).unwrap();
    ctl
}

/// The token line `principal add` printed, as a token file holds it.
fn token_line(out: &str) -> String {
    let token = out.lines().nth(1).unwrap().rsplit(' ').next().unwrap();
    format!("{token}\n")
}

impl Ctl {
    /// The general director's token: the bootstrap principal, who adds the others.
    fn admin_token(&self) -> PathBuf {
        self.stores.dir.path().join("general-director.token")
    }

    /// A network-wide auditor's token, for `audit log`.
    fn auditor_token(&self) -> PathBuf {
        self.stores.dir.path().join("auditor.token")
    }

    /// `ok`, acting as the holder of `token`.
    fn ok_as(&self, token: &Path, args: &[&str]) -> String {
        let o = self
            .cmd()
            .env("VAULT_TOKEN_FILE", token)
            .args(args)
            .arg("--identity")
            .arg(&self.identity)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "vaultctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    async fn privacy_officer(&self, v: &Vault) -> vault_core::Principal {
        let token = std::fs::read_to_string(&self.token_file).unwrap();
        v.authenticate(&vault_core::BearerToken::new(token.trim()))
            .await
            .unwrap()
    }
}

async fn rotation_of_ten_thousand_records_survives_a_kill(backend: Backend) {
    const N: usize = 10_000;
    let ctl = setup(backend).await;
    let v = ctl.vault().await;
    let s = v
        .create_subject(NewSubject {
            school: SchoolId::parse("school-1").unwrap(),
            kind: SubjectKind::Student,
            iin: None,
        })
        .await
        .unwrap();
    let rt = RecordType::parse("student").unwrap();
    let mut ids: Vec<(RecordId, String)> = Vec::with_capacity(N);
    for i in 0..N {
        let name = format!("student {i}");
        let f: BTreeMap<_, _> = [(
            FieldName::parse("full_name").unwrap(),
            FieldValue::text(&name),
        )]
        .into_iter()
        .collect();
        ids.push((v.write_record(s.id, &rt, &f).await.unwrap().id, name));
    }
    drop(v);

    let out = ctl.ok(&["keyring", "rotate", "--category", "identity"]);
    assert!(out.contains("version 2"), "{out}");
    // Retiring the old version is refused while data keys use it, with the count.
    ctl.fails(
        &[
            "keyring",
            "retire",
            "--category",
            "identity",
            "--version",
            "1",
        ],
        &format!("{N} data keys still use version 1"),
    );
    ctl.fails(
        &[
            "keyring",
            "retire",
            "--category",
            "identity",
            "--version",
            "2",
        ],
        "newest",
    );

    // Rewrap in small batches, stopped dead (abort, as SIGKILL) after its third batch commits,
    // then run again. Its stderr is a pipe: no progress bar, no control characters.
    let o = ctl
        .cmd()
        .args([
            "keyring",
            "rewrap",
            "--category",
            "identity",
            "--batch",
            "100",
            "--identity",
        ])
        .arg(&ctl.identity)
        .env("VAULT_TEST_CRASH_AT", "rewrap.batch_committed:3")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("crash point rewrap.batch_committed #3 reached") && !o.status.success(),
        "rewrap was not stopped: {:?} {err}",
        o.status
    );
    assert!(
        !o.stderr.iter().any(|b| *b == b'\r' || *b == 0x1b),
        "control characters on a piped stderr: {err:?}"
    );
    let v = ctl.vault().await;
    let left = v
        .rewrap_remaining(Some(&Category::parse("identity").unwrap()))
        .await
        .unwrap();
    assert!(left > 0 && left < N as u64, "killed halfway: {left} left");
    drop(v);
    let out = ctl.ok(&[
        "keyring",
        "rewrap",
        "--category",
        "identity",
        "--batch",
        "1000",
    ]);
    assert!(
        out.contains(&format!("rewrapped {left} data keys; 0 left")),
        "{out}"
    );
    ctl.ok(&[
        "keyring",
        "retire",
        "--category",
        "identity",
        "--version",
        "1",
    ]);
    let j = json_lines(&ctl.ok(&["keyring", "status", "--format", "json"]));
    assert_eq!(j.len(), 1);
    let identity: Vec<_> = j[0]["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["category"] == "identity")
        .collect();
    assert_eq!(identity.len(), 1, "{j:?}");
    assert_eq!(identity[0]["version"], 2);
    assert_eq!(identity[0]["deks"], N);
    assert_eq!(j[0]["blind_index_keys"], 1);
    let status = ctl.ok(&["keyring", "status"]);
    let line = status.lines().find(|l| l.starts_with("identity ")).unwrap();
    assert!(
        line.contains(" 2 ") && line.trim_end().ends_with(&N.to_string()),
        "{line}"
    );
    assert!(
        !status
            .lines()
            .any(|l| l.starts_with("identity ") && l.contains(" 1 2")),
        "{status}"
    );

    // Every record still reads back.
    let v = ctl.vault().await;
    let identity: BTreeSet<Category> = [Category::parse("identity").unwrap()].into_iter().collect();
    for (id, name) in &ids {
        let view = v.read_record(*id, &identity).await.unwrap();
        match &view.fields[&FieldName::parse("full_name").unwrap()] {
            vault_core::FieldView::Open { value, .. } => assert_eq!(value, &FieldValue::text(name)),
            other => panic!("{other:?}"),
        }
    }
    drop(v);

    // Nothing here is an orphan, and nothing is old enough to be looked at.
    let gc = ctl.ok(&["keyring", "gc", "--dry-run", "--older-than-hours", "1"]);
    assert!(
        gc.contains("0 orphan data keys found (dry run, none removed) of 0 older than 1 hours"),
        "{gc}"
    );
    let gc = ctl.ok(&["keyring", "gc"]);
    assert!(gc.contains("0 orphan data keys removed"), "{gc}");
    let v = ctl.vault().await;
    let log = v.audit_entries().await.unwrap();
    for a in ["key.rotate", "key.rewrap", "key.retire", "key.gc"] {
        assert!(log.iter().any(|e| e.action == a), "{a}");
    }
}

async fn recipients_principals_audit_and_incidents(backend: Backend) {
    let ctl = setup(backend).await;
    // A second custodian's key from the real age-keygen.
    {
        let mut keygen = tool("age-keygen");
        let second = ctl.stores.dir.path().join("second.txt");
        let o = keygen.arg("-o").arg(&second).output().unwrap();
        let public = String::from_utf8_lossy(&o.stderr)
            .lines()
            .find_map(|l| l.strip_prefix("Public key: ").map(str::to_owned))
            .unwrap();
        ctl.ok(&["keyring", "recipient", "add", &public]);
        let as_second = |args: &[&str]| {
            ctl.cmd()
                .args(args)
                .arg("--identity")
                .arg(&second)
                .output()
                .unwrap()
        };
        assert!(
            as_second(&["keyring", "status"]).status.success(),
            "the added custodian unseals"
        );
        assert!(ctl.ok(&["keyring", "recipient", "list"]).contains(&public));
        let rs = json_lines(&ctl.ok(&["keyring", "recipient", "list", "--format", "json"]));
        assert!(
            rs.iter().any(|r| r["recipient"] == public.as_str()),
            "{rs:?}"
        );
        ctl.ok(&["keyring", "recipient", "remove", &public]);
        let o = as_second(&["keyring", "status"]);
        assert_eq!(
            o.status.code(),
            Some(1),
            "a removed custodian no longer unseals"
        );
        assert!(
            String::from_utf8_lossy(&o.stderr)
                .contains("no identity or passphrase given can unseal")
        );
    }
    ctl.fails(
        &[
            "keyring",
            "recipient",
            "remove",
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
        ],
        "is not a recipient",
    );

    // Principals: add prints the token once; list is the list of persons with access; revoke.
    // Only a principal administrator adds one: the custodian's identity alone cannot mint
    // someone to act as once the vault has principals, nor can a privacy officer.
    let nurse_role = [
        "principal",
        "add",
        "--name",
        "Nurse Aigul",
        "--role",
        "nurse@school-1",
    ];
    let o = ctl
        .cmd()
        .env_remove("VAULT_TOKEN_FILE")
        .args(nurse_role)
        .arg("--identity")
        .arg(&ctl.identity)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("has principals already"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    ctl.fails(&nurse_role, "may not give the role nurse@school-1");
    let out = ctl.ok_as(&ctl.admin_token(), &nurse_role);
    // A school's director adds staff, but no second director (who could approve the first
    // one's requests), privacy officer or auditor: those come from the general director.
    let director = ctl.stores.dir.path().join("director.token");
    let made = ctl.ok_as(
        &ctl.admin_token(),
        &[
            "principal",
            "add",
            "--name",
            "Director",
            "--role",
            "director@school-1",
        ],
    );
    std::fs::write(&director, token_line(&made)).unwrap();
    ctl.ok_as(
        &director,
        &[
            "principal",
            "add",
            "--name",
            "Teacher Bolat",
            "--role",
            "teacher@school-1",
        ],
    );
    for role in [
        "director@school-1",
        "privacy_officer@school-1",
        "auditor@school-1",
        "nurse@school-2",
    ] {
        let o = ctl
            .cmd()
            .env("VAULT_TOKEN_FILE", &director)
            .args([
                "principal",
                "add",
                "--name",
                "Sock puppet",
                "--role",
                role,
                "--identity",
            ])
            .arg(&ctl.identity)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1), "{role}");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("may not give the role"),
            "{role}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let id = out
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_owned();
    let token = out
        .lines()
        .nth(1)
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_owned();
    assert!(token.starts_with("vt_"));
    let list = ctl.ok(&["principal", "list"]);
    assert!(
        list.contains("Nurse Aigul") && list.contains("nurse@school-1") && !list.contains(&token),
        "{list}"
    );
    let list = ctl.ok(&["principal", "list", "--format", "json"]);
    let nurse = json_lines(&list)
        .into_iter()
        .find(|p| p["name"] == "Nurse Aigul")
        .unwrap();
    assert_eq!(
        nurse["roles"],
        serde_json::json!([{"role": "nurse", "school": "school-1"}])
    );
    assert!(
        nurse["revoked_at"].is_null() && !list.contains(&token),
        "{list}"
    );
    ctl.fails(
        &[
            "principal",
            "add",
            "--name",
            "X",
            "--role",
            "janitor@school-1",
        ],
        "unknown role 'janitor'",
    );
    ctl.fails(
        &["principal", "add", "--name", "X", "--role", "nurse"],
        "ROLE@SCHOOL",
    );

    // The nurse reads three students' records; another principal reads a fourth.
    let v = ctl.vault().await;
    let nurse = v
        .authenticate(&vault_core::BearerToken::new(&token))
        .await
        .unwrap();
    let (other, _) = v
        .create_principal(
            "Teacher",
            &[(
                Scope::School(SchoolId::parse("school-1").unwrap()),
                Role::Teacher,
            )],
        )
        .await
        .unwrap();
    let rt = RecordType::parse("student").unwrap();
    let mut touched = BTreeSet::new();
    let mut all = Vec::new();
    for i in 0..4 {
        let s = v
            .create_subject(NewSubject {
                school: SchoolId::parse("school-1").unwrap(),
                kind: SubjectKind::Student,
                iin: None,
            })
            .await
            .unwrap();
        let f: BTreeMap<_, _> = [
            (
                FieldName::parse("full_name").unwrap(),
                FieldValue::text(&format!("Student {i}")),
            ),
            (
                FieldName::parse("phones").unwrap(),
                FieldValue::from_json(&serde_json::json!(["+7 701 000 000"])),
            ),
        ]
        .into_iter()
        .collect();
        let r = v.write_record(s.id, &rt, &f).await.unwrap().id;
        let reader = if i < 3 { &nurse } else { &other };
        v.session(reader.clone())
            .read_record(r, &Purpose::parse("education").unwrap())
            .await
            .unwrap();
        if i < 3 {
            touched.insert(s.id.to_string());
        }
        all.push(s.id);
    }
    drop(v);
    let report = ctl.ok(&[
        "incident",
        "report",
        "--principal",
        &id,
        "--since",
        "2020-01-01",
    ]);
    let j: serde_json::Value = serde_json::from_str(&report).unwrap();
    let listed: BTreeSet<String> = j["subjects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subject"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, touched, "exactly the subjects the nurse touched");
    assert!(
        j["subjects"][0]["contacts"]["full_name"]
            .as_str()
            .unwrap()
            .starts_with("Student")
    );
    // The report's Debug (what a log line or a panic would show) names fields, never values.
    let v = ctl.vault().await;
    let r = v
        .session(ctl.privacy_officer(&v).await)
        .incident_report(
            vault_core::PrincipalId::parse(&id).unwrap(),
            "2020-01-01T00:00:00Z".parse().unwrap(),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
    let debug = format!("{r:?}");
    assert!(
        debug.contains("full_name")
            && !(0..4).any(|i| debug.contains(&format!("Student {i}")))
            && !debug.contains("+7 701"),
        "{debug}"
    );
    drop(v);
    // One working day after detection (Art. 25(2)(8)), by the holidays file: the exact date.
    let detected: chrono::DateTime<chrono::Utc> =
        j["detected_at"].as_str().unwrap().parse().unwrap();
    let due = policy().await.add_working_days(detected.date_naive(), 1);
    assert_eq!(j["notify_authority_by"], due.to_string(), "{j}");
    let csv = ctl.ok(&[
        "incident",
        "report",
        "--principal",
        &id,
        "--since",
        "2020-01-01",
        "--format",
        "csv",
    ]);
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let none = ctl.ok(&[
        "incident",
        "report",
        "--principal",
        &id,
        "--since",
        "2020-01-01",
        "--until",
        "2020-02-01",
    ]);
    assert!(none.contains("\"subjects\": []"));
    ctl.fails(
        &[
            "incident",
            "report",
            "--principal",
            &id,
            "--since",
            "yesterday",
        ],
        "is not a time",
    );

    ctl.ok(&["principal", "revoke", &id]);
    assert!(
        ctl.ok(&["principal", "list"])
            .lines()
            .any(|l| l.contains("Nurse Aigul") && !l.contains(" -  "))
    );

    // Audit: verify, log filters, and a tampered entry is named with exit code 1. The log is
    // read as an auditor: the custodian's identity and a privacy officer's token are not enough.
    assert!(ctl.ok(&["audit", "verify"]).starts_with("audit log intact"));
    ctl.fails(&["audit", "log"], "only an auditor may read the audit log");
    let auditor = ctl.auditor_token();
    let log = ctl.ok_as(
        &auditor,
        &["audit", "log", "--principal", &id, "--format", "json"],
    );
    // Each read: identity allowed, contact denied (the nurse may not read contacts for education).
    let reads = |outcome: &str| {
        log.lines()
            .filter(|l| {
                l.contains("record.read") && l.contains(&format!("\"outcome\":\"{outcome}\""))
            })
            .count()
    };
    assert_eq!(reads("allowed"), 3, "{log}");
    assert_eq!(reads("denied"), 3, "{log}");
    let subj = all[3].to_string();
    let log = ctl.ok_as(&auditor, &["audit", "log", "--subject", &subj]);
    assert!(log.contains("record.read"));
    // Both queries are themselves in the log, under the auditor.
    let v = ctl.vault().await;
    let queries = v
        .audit_query(&vault_core::AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "audit.query" || e.action == "audit.read")
        .count();
    assert_eq!(queries, 2);
    let refused_bootstrap = v
        .audit_query(&vault_core::AuditFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.actor == "bootstrap" && e.outcome == "denied")
        .count();
    assert_eq!(refused_bootstrap, 1, "the refused bootstrap is in the log");
    drop(v);
    let db = ctl.stores.raw_data().await;
    db.execute_unprepared("UPDATE audit_log SET outcome = 'denied' WHERE seq = 2")
        .await
        .unwrap();
    ctl.fails(&["audit", "verify"], "entry 2 was altered");

    // Wrong input everywhere: one line, exit 1, no panic.
    ctl.fails(&["keyring", "rotate", "--category", "helth"], "helth");
    ctl.fails(
        &["keyring", "rotate", "--category", "political_views"],
        "not collected",
    );
    ctl.fails(
        &["audit", "log", "--subject", "not-a-uuid"],
        "invalid subject id",
    );
    let o = ctl
        .cmd()
        .args(["keyring", "status", "--identity", "/nonexistent/key.txt"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/key.txt"));
    let stranger = ctl.stores.dir.path().join("stranger.txt");
    Unlock::generate_identity_file(&stranger).unwrap();
    let o = ctl
        .cmd()
        .args(["keyring", "status", "--identity"])
        .arg(&stranger)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("can unseal the keyring"),
        "a keyring that is not ours"
    );
    let pass = ctl.stores.dir.path().join("pass.txt");
    std::fs::write(&pass, "not the right passphrase at all\n").unwrap();
    let o = ctl
        .cmd()
        .args(["keyring", "status", "--passphrase-file"])
        .arg(&pass)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let o = ctl.cmd().args(["keyring", "status"]).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stderr).contains("give --identity FILE"));
}

async fn retention_from_the_command_line(backend: Backend) {
    let ctl = setup(backend).await;
    let v = ctl.vault().await;
    let s = v
        .create_subject(NewSubject {
            school: SchoolId::parse("school-1").unwrap(),
            kind: SubjectKind::Student,
            iin: None,
        })
        .await
        .unwrap();
    let f: BTreeMap<_, _> = [
        (
            FieldName::parse("full_name").unwrap(),
            FieldValue::text("Kept"),
        ),
        (
            FieldName::parse("address").unwrap(),
            FieldValue::text("Expired"),
        ),
    ]
    .into_iter()
    .collect();
    let rid = v
        .write_record(s.id, &RecordType::parse("student").unwrap(), &f)
        .await
        .unwrap()
        .id;
    drop(v);
    let sid = s.id.to_string();
    ctl.ok(&["retention", "left", "--subject", &sid, "--on", "2015-06-30"]);
    let plan = ctl.ok(&["retention", "plan", "--until", "2030-01-01"]);
    assert!(
        plan.lines().any(|l| l.starts_with("2018-06-30")
            && l.contains("contact")
            && l.contains("3y after left_school")),
        "{plan}"
    );
    let out = ctl.ok(&[
        "retention",
        "hold",
        "add",
        "--subject",
        &sid,
        "--reason",
        "prosecutor's request 44/2026",
    ]);
    let hold = out.split_whitespace().nth(1).unwrap().to_owned();
    let plan = json_lines(&ctl.ok(&[
        "retention",
        "plan",
        "--until",
        "2030-01-01",
        "--format",
        "json",
    ]));
    assert!(
        plan.iter().any(|i| i["expires_on"] == "2018-06-30"
            && i["category"] == "contact"
            && i["held"] == true
            && i["rule"] == "contact: 3y after left_school"),
        "{plan:?}"
    );
    let holds = json_lines(&ctl.ok(&["retention", "hold", "list", "--format", "json"]));
    assert_eq!(holds.len(), 1, "{holds:?}");
    assert_eq!(holds[0]["id"], hold.as_str());
    assert_eq!(holds[0]["subject"], sid.as_str());
    assert!(holds[0]["active"] == true && holds[0]["record"].is_null());
    let dry = ctl.ok(&["retention", "sweep", "--dry-run"]);
    assert!(
        dry.contains(
            "0 records would be shredded (dry run); 1 expired items kept under legal hold"
        ),
        "{dry}"
    );
    ctl.fails(
        &["retention", "hold", "release", &hold, "--reason", "no"],
        "needs a reason",
    );
    ctl.ok(&[
        "retention",
        "hold",
        "release",
        &hold,
        "--reason",
        "request withdrawn",
    ]);
    let done = ctl.ok(&["retention", "sweep"]);
    assert!(done.contains(&format!("shredded {rid}: contact")), "{done}");
    let v = ctl.vault().await;
    let all: BTreeSet<Category> = v.catalog().collected_categories().cloned().collect();
    let view = v.read_record(rid, &all).await.unwrap();
    assert_eq!(
        view.fields.len(),
        1,
        "the address is gone, the name is kept"
    );
    assert!(
        vault_tests::every_field_opens(&view),
        "the kept name still opens"
    );
    ctl.fails(
        &["retention", "left", "--subject", &sid, "--on", "last june"],
        "is not a time",
    );
    // A leaving day in the future would postpone every expiry: refused.
    ctl.fails(
        &["retention", "left", "--subject", &sid, "--on", "2099-01-01"],
        "is in the future",
    );
}

async fn transfers_abroad_follow_the_rules(backend: Backend) {
    let ctl = setup(backend).await;
    // The operator lists Germany as a protecting state in its own copy of the policies.
    let pol = ctl.stores.dir.path().join("policies");
    std::fs::create_dir(&pol).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for f in [
        "catalog.toml",
        "model.conf",
        "policy.csv",
        "holidays-kz.toml",
    ] {
        std::fs::copy(shipped.join(f), pol.join(f)).unwrap();
    }
    std::fs::write(pol.join("transfer.toml"), "protecting_states = [\"DE\"]\n").unwrap();
    let run = |args: &[&str]| {
        let o = ctl
            .cmd()
            .args(args)
            .arg("--policies")
            .arg(&pol)
            .arg("--identity")
            .arg(&ctl.identity)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            err,
        )
    };

    let v = ctl.vault().await;
    let school = SchoolId::parse("school-1").unwrap();
    let s = v
        .create_subject(NewSubject {
            school: school.clone(),
            kind: SubjectKind::Student,
            iin: None,
        })
        .await
        .unwrap();
    let g = v
        .create_subject(NewSubject {
            school: school.clone(),
            kind: SubjectKind::Guardian,
            iin: None,
        })
        .await
        .unwrap();
    let f: BTreeMap<_, _> = [
        (
            FieldName::parse("full_name").unwrap(),
            FieldValue::text("Dana Serikova"),
        ),
        (
            FieldName::parse("academic_record").unwrap(),
            FieldValue::from_json(&serde_json::json!({"math": 5})),
        ),
        (
            FieldName::parse("health_issues").unwrap(),
            FieldValue::text("MARKER-asthma"),
        ),
    ]
    .into_iter()
    .collect();
    v.write_record(s.id, &RecordType::parse("student").unwrap(), &f)
        .await
        .unwrap();
    let sid = s.id.to_string();
    let base = |to: &str, cats: &str, purpose: &str| -> Vec<String> {
        [
            "transfer",
            "check",
            "--subject",
            &sid,
            "--to",
            to,
            "--categories",
            cats,
            "--recipient",
            "Partner school",
            "--purpose",
            purpose,
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let check = |to: &str, cats: &str, purpose: &str| {
        let a = base(to, cats, purpose);
        run(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };

    let (code, out, _) = check("de", "identity,academic", "education");
    assert_eq!(code, Some(0));
    assert!(out.starts_with("allowed: protecting_state: DE"), "{out}");
    let (code, _, err) = check("DE", "identity,health", "education");
    assert_eq!(code, Some(3));
    assert!(
        err.starts_with("refused: never_leaves") && err.contains("health"),
        "{err}"
    );
    let (code, _, err) = check("US", "identity,academic", "education");
    assert_eq!(code, Some(3));
    assert!(err.starts_with("refused: no_basis"), "{err}");
    let (code, _, err) = check("DE", "academic", "payroll");
    assert_eq!(code, Some(3));
    assert!(err.contains("purpose_not_allowed"), "{err}");
    let (code, _, err) = check("XX", "identity", "education");
    assert_eq!(code, Some(1));
    assert!(
        err.contains("not an ISO 3166-1 alpha-2 country code"),
        "{err}"
    );

    // The guardian's consent to cross-border transfer (and to third parties) opens the US.
    let (admissions, _) = v
        .create_principal(
            "Admissions",
            &[(Scope::School(school.clone()), Role::Admissions)],
        )
        .await
        .unwrap();
    v.session(admissions)
        .record_consent(vault_core::NewConsent {
            subject: s.id,
            given_by: vault_core::ConsentGiver::Guardian(g.id),
            method: "paper".into(),
            evidence_ref: "scan 9".into(),
            text_version: "v3".into(),
            categories: vec![
                Category::parse("identity").unwrap(),
                Category::parse("academic").unwrap(),
            ],
            third_party: true,
            cross_border: true,
            publication: false,
            term_until: None,
        })
        .await
        .unwrap();
    drop(v);
    let (code, out, _) = check("US", "identity,academic", "education");
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("allowed: consent: cross-border consent"),
        "{out}"
    );
    // Ten working days (Art. 19), by the holidays file: the exact date.
    let due = policy()
        .await
        .add_working_days(chrono::Utc::now().date_naive(), 10);
    assert!(
        out.contains(&format!("must be told of the transfer by {due}")),
        "{out}"
    );

    // A recorded Art. 16(3) ground opens another destination.
    let (code, _, err) = run(&[
        "transfer",
        "ground",
        "--subject",
        &sid,
        "--to",
        "RU",
        "--ground",
        "treaty",
        "--reference",
        "x",
    ]);
    assert_eq!(code, Some(1));
    assert!(err.contains("unknown transfer ground"), "{err}");
    let (code, _, _) = run(&[
        "transfer",
        "ground",
        "--subject",
        &sid,
        "--to",
        "RU",
        "--ground",
        "ratified_treaty",
        "--reference",
        "Treaty on education No. 12",
    ]);
    assert_eq!(code, Some(0));
    // (education_history: the consent does not cover it, so the ground decides.)
    let (code, _, err) = check("RU", "education_history", "education");
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = check("RU", "education_history", "education");
    assert!(out.starts_with("allowed: ground: ratified_treaty"), "{out}");
    let (code, _, _) = check("CN", "education_history", "education");
    assert_eq!(code, Some(3), "the ground is for RU only");

    // Export: a package for the real age tool, holding exactly the allowed categories.
    let mut keygen = tool("age-keygen");
    let key = ctl.stores.dir.path().join("partner.txt");
    let o = keygen.arg("-o").arg(&key).output().unwrap();
    let public = String::from_utf8_lossy(&o.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("Public key: ").map(str::to_owned))
        .unwrap();
    let package = ctl.stores.dir.path().join("package.age");
    let mut a = base("DE", "identity,academic", "education");
    a[1] = "export".into();
    a.extend([
        "--recipient-key".to_string(),
        public,
        "--out".to_string(),
        package.display().to_string(),
    ]);
    let (code, out, err) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("exported to Partner school (DE)"), "{out}");
    let raw = std::fs::read(&package).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1"));
    assert!(!String::from_utf8_lossy(&raw).contains("Dana"));
    let opened = tool("age")
        .arg("-d")
        .arg("-i")
        .arg(&key)
        .arg(&package)
        .output()
        .unwrap();
    assert!(
        opened.status.success(),
        "{}",
        String::from_utf8_lossy(&opened.stderr)
    );
    let j: serde_json::Value = serde_json::from_slice(&opened.stdout).unwrap();
    let fields = j["records"][0]["fields"].as_object().unwrap();
    let names: BTreeSet<&str> = fields.keys().map(String::as_str).collect();
    assert_eq!(names, BTreeSet::from(["academic_record", "full_name"]));
    assert_eq!(fields["full_name"]["value"], "Dana Serikova");
    assert!(
        !String::from_utf8_lossy(&opened.stdout).contains("MARKER"),
        "health never leaves"
    );
    // A refused export writes nothing.
    let refused = ctl.stores.dir.path().join("refused.age");
    let mut a = base("DE", "health", "education");
    a[1] = "export".into();
    a.extend([
        "--recipient-key".to_string(),
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".to_string(),
        "--out".to_string(),
        refused.display().to_string(),
    ]);
    let (code, _, _) = run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(code, Some(3));
    assert!(!refused.exists());

    let (code, ledger, _) = run(&["transfer", "ledger", "--subject", &sid, "--format", "json"]);
    assert_eq!(code, Some(0));
    let ledger = json_lines(&ledger);
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    assert_eq!(ledger[0]["country"], "DE");
    assert_eq!(ledger[0]["recipient"], "Partner school");
    assert_eq!(
        ledger[0]["basis"],
        "protecting_state: DE is on the operator's list"
    );
    assert_eq!(
        ledger[0]["categories"],
        serde_json::json!(["identity", "academic"])
    );
    let (code, ledger, _) = run(&["transfer", "ledger", "--subject", &sid]);
    assert_eq!(code, Some(0));
    assert_eq!(ledger.lines().count(), 1, "{ledger}");
    assert!(
        ledger.contains("DE  Partner school  identity,academic  education  protecting_state"),
        "{ledger}"
    );
}

async fn restore_of_an_older_backup_keeps_shredded_data_shredded(backend: Backend) {
    let ctl = setup(backend).await;
    let v = ctl.vault().await;
    let rt = RecordType::parse("student").unwrap();
    let mk = |name: &str| -> BTreeMap<FieldName, FieldValue> {
        [
            (
                FieldName::parse("full_name").unwrap(),
                FieldValue::text(name),
            ),
            (
                FieldName::parse("address").unwrap(),
                FieldValue::text("MARKER-address"),
            ),
        ]
        .into_iter()
        .collect()
    };
    let (a, b, c) = (
        vault_tests::new_subject(&v, SubjectKind::Student).await,
        vault_tests::new_subject(&v, SubjectKind::Student).await,
        vault_tests::new_subject(&v, SubjectKind::Student).await,
    );
    let ra = v.write_record(a, &rt, &mk("A")).await.unwrap().id;
    let rb = v.write_record(b, &rt, &mk("B")).await.unwrap().id;
    let rc = v.write_record(c, &rt, &mk("C")).await.unwrap().id;
    drop(v);

    let dir = ctl.stores.dir.path().join("backup-1");
    let out = ctl.ok(&["backup", "--out", dir.to_str().unwrap()]);
    assert!(out.starts_with("backed up"), "{out}");
    // On a terminal a progress bar is drawn on stderr (and cleared); with --quiet, none.
    let shown = ctl.on_a_terminal(&["backup", "--out", dir.join("t").to_str().unwrap()]);
    assert!(
        shown.contains("backup") && shown.contains(" rows (") && shown.contains('\u{1b}'),
        "{shown:?}"
    );
    let quiet = ctl.on_a_terminal(&[
        "backup",
        "--quiet",
        "--out",
        dir.join("q").to_str().unwrap(),
    ]);
    assert!(
        quiet.contains("backed up") && !quiet.contains(" rows (") && !quiet.contains('\u{1b}'),
        "{quiet:?}"
    );
    let raw = std::fs::read(dir.join("data.jsonl.age")).unwrap();
    assert!(raw.starts_with(b"age-encryption.org/v1"));
    ctl.fails(
        &["backup", "--out", dir.to_str().unwrap()],
        "must not exist",
    );

    // After the backup: A's contact data expires and is swept; C is shredded on request.
    ctl.ok(&[
        "retention",
        "left",
        "--subject",
        &a.to_string(),
        "--on",
        "2015-01-01",
    ]);
    assert!(
        ctl.ok(&["retention", "sweep"])
            .contains(&format!("shredded {ra}: contact"))
    );
    let v = ctl.vault().await;
    v.shred_record(rc).await.unwrap();
    drop(v);

    ctl.fails(&["restore", "--from", dir.to_str().unwrap()], "--force");
    let out = ctl.ok(&["restore", "--from", dir.to_str().unwrap(), "--force"]);
    assert!(out.contains("re-applied 2 shreds"), "{out}");

    let v = ctl.vault().await;
    let all: BTreeSet<Category> = v.catalog().collected_categories().cloned().collect();
    let va = v.read_record(ra, &all).await.unwrap();
    assert_eq!(
        va.fields.len(),
        1,
        "A's address stays shredded after the restore"
    );
    assert!(vault_tests::every_field_opens(&va), "A's name still opens");
    assert_eq!(v.dek_count(ra).await.unwrap(), 1);
    assert!(matches!(
        v.read_record(rc, &all).await.unwrap_err(),
        vault_core::VaultError::RecordShredded(_)
    ));
    assert_eq!(v.dek_count(rc).await.unwrap(), 0);
    let vb = v.read_record(rb, &all).await.unwrap();
    assert_eq!(vb.fields.len(), 2, "B is as backed up");
    assert!(vault_tests::every_field_opens(&vb), "B's fields open");
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
    assert!(
        v.audit_entries()
            .await
            .unwrap()
            .iter()
            .any(|e| e.action == "backup.restore")
    );
    // A second restore of the same backup re-applies the same shreds again.
    drop(v);
    let out = ctl.ok(&["restore", "--from", dir.to_str().unwrap(), "--force"]);
    assert!(out.contains("re-applied 2 shreds"), "{out}");
    // A stranger's identity cannot read the backup.
    let stranger = ctl.stores.dir.path().join("stranger2.txt");
    Unlock::generate_identity_file(&stranger).unwrap();
    let o = ctl
        .cmd()
        .args([
            "restore",
            "--from",
            dir.to_str().unwrap(),
            "--force",
            "--identity",
        ])
        .arg(&stranger)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("does not open with this identity"));
}

/// Before, `vaultctl transfer export` wrote a blocked subject's health data into a package for
/// any age key, with the custodian's identity alone, and audited a fixed actor.
async fn a_transfer_export_acts_as_someone_and_passes_a_reads_decisions(backend: Backend) {
    let ctl = setup(backend).await;
    let v = ctl.vault().await;
    let school = SchoolId::parse("school-1").unwrap();
    let s = v
        .create_subject(NewSubject {
            school: school.clone(),
            kind: SubjectKind::Student,
            iin: None,
        })
        .await
        .unwrap();
    let g = v
        .create_subject(NewSubject {
            school: school.clone(),
            kind: SubjectKind::Guardian,
            iin: None,
        })
        .await
        .unwrap();
    let f: BTreeMap<_, _> = [
        (
            FieldName::parse("full_name").unwrap(),
            FieldValue::text("MARKER-Dana"),
        ),
        (
            FieldName::parse("health_issues").unwrap(),
            FieldValue::text("MARKER-asthma"),
        ),
    ]
    .into_iter()
    .collect();
    v.write_record(s.id, &RecordType::parse("student").unwrap(), &f)
        .await
        .unwrap();
    let (admissions, _) = v
        .create_principal(
            "Admissions",
            &[(Scope::School(school.clone()), Role::Admissions)],
        )
        .await
        .unwrap();
    let (_, teacher) = v
        .create_principal("Teacher", &[(Scope::School(school.clone()), Role::Teacher)])
        .await
        .unwrap();
    let teacher_file = ctl.stores.dir.path().join("teacher.token");
    std::fs::write(&teacher_file, teacher.expose()).unwrap();
    let (_, custodian) = v
        .create_principal(
            "Key custodian",
            &[(Scope::School(school.clone()), Role::KeyCustodian)],
        )
        .await
        .unwrap();
    let custodian_file = ctl.stores.dir.path().join("custodian.token");
    std::fs::write(&custodian_file, custodian.expose()).unwrap();
    v.session(admissions.clone())
        .record_consent(vault_core::NewConsent {
            subject: s.id,
            given_by: vault_core::ConsentGiver::Guardian(g.id),
            method: "paper".into(),
            evidence_ref: "scan 10".into(),
            text_version: "v3".into(),
            categories: vec![Category::parse("health").unwrap()],
            third_party: false,
            cross_border: false,
            publication: false,
            term_until: None,
        })
        .await
        .unwrap();
    let privacy = ctl.privacy_officer(&v).await;
    drop(v);
    let sid = s.id.to_string();
    let n = std::cell::Cell::new(0);
    let export = |cats: &str, token: Option<&Path>| {
        n.set(n.get() + 1);
        let out = ctl
            .stores
            .dir
            .path()
            .join(format!("export-{}.age", n.get()));
        let mut c = ctl.cmd();
        match token {
            Some(t) => c.env("VAULT_TOKEN_FILE", t),
            None => c.env_remove("VAULT_TOKEN_FILE"),
        };
        let o = c
            .args([
                "transfer",
                "export",
                "--subject",
                &sid,
                "--to",
                "KZ",
                "--categories",
                cats,
                "--recipient",
                "District office",
                "--purpose",
                "legal_administrative",
                "--recipient-key",
                "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
                "--out",
            ])
            .arg(&out)
            .arg("--identity")
            .arg(&ctl.identity)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        if o.status.code() != Some(0) {
            assert!(!out.exists(), "a refused export writes nothing");
        }
        (o.status.code(), err)
    };
    // The custodian's identity alone reads nothing.
    let (code, err) = export("identity", None);
    assert_eq!(code, Some(1));
    assert!(err.contains("acts as a named principal"), "{err}");
    // A teacher holds no transfer grant; nor does the key custodian, acting as themself.
    for who in [&teacher_file, &custodian_file] {
        let (code, err) = export("identity", Some(who));
        assert_eq!(code, Some(1));
        assert!(
            err.contains("none of your roles may transfer identity"),
            "{err}"
        );
    }
    // Health goes to a third party only on a consent that says so (this one does not) ...
    let (code, err) = export("health", Some(&ctl.token_file));
    assert_eq!(code, Some(1));
    assert!(err.contains("no consent or legal ground"), "{err}");
    // ... and identity is fine until the subject is blocked.
    let (code, err) = export("identity", Some(&ctl.token_file));
    assert_eq!(code, Some(0), "{err}");
    let v = ctl.vault().await;
    v.session(privacy.clone()).block(s.id).await.unwrap();
    drop(v);
    let (code, err) = export("identity", Some(&ctl.token_file));
    assert_eq!(code, Some(1));
    assert!(err.contains("is blocked"), "{err}");
    // Every attempt is in the log under the person who made it.
    let log = ctl.ok_as(
        &ctl.auditor_token(),
        &["audit", "log", "--subject", &sid, "--format", "json"],
    );
    let exports: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["action"] == "transfer.export")
        .collect();
    assert_eq!(exports.len(), 5, "{log}");
    assert!(
        exports.iter().all(|e| e["actor"] != "privacy_officer"),
        "{log}"
    );
    assert_eq!(
        exports
            .iter()
            .filter(|e| e["actor"] == privacy.id().to_string().as_str())
            .count(),
        3,
        "{log}"
    );
    assert!(!log.contains("MARKER"));
}

/// The vaultctl rows of the boundary matrix: every command that reads or exports personal data,
/// as a privacy officer of another school (the same answer as for a random id) and as a role of
/// the same school without the grant (refused, naming the grant).
async fn vaultctl_on_another_schools_subject_answers_as_for_a_random_id(backend: Backend) {
    let ctl = setup(backend).await;
    let v = ctl.vault().await;
    let s = v
        .create_subject(NewSubject {
            school: SchoolId::parse("school-1").unwrap(),
            kind: SubjectKind::Student,
            iin: None,
        })
        .await
        .unwrap();
    let f: BTreeMap<_, _> = [(
        FieldName::parse("full_name").unwrap(),
        FieldValue::text("MARKER-Dana"),
    )]
    .into_iter()
    .collect();
    let rec = v
        .write_record(s.id, &RecordType::parse("student").unwrap(), &f)
        .await
        .unwrap();
    let dir = ctl.stores.dir.path().to_path_buf();
    let token_of = |role: Role, school: &str, name: &str| {
        let v = &v;
        let school = school.to_owned();
        let file = dir.join(format!("{name}.token"));
        let name = name.to_owned();
        async move {
            let (p, t) = v
                .create_principal(
                    &name,
                    &[(Scope::School(SchoolId::parse(&school).unwrap()), role)],
                )
                .await
                .unwrap();
            std::fs::write(&file, t.expose()).unwrap();
            (p, file)
        }
    };
    let (_, privacy2) = token_of(Role::PrivacyOfficer, "school-2", "privacy2").await;
    let (_, teacher) = token_of(Role::Teacher, "school-1", "teacher1").await;
    let (nurse, _) = token_of(Role::Nurse, "school-1", "nurse1").await;
    v.session(nurse.clone())
        .read_record(rec.id, &Purpose::parse("education").unwrap())
        .await
        .unwrap();
    drop(v);
    let run = |token: &Path, args: &[&str]| {
        let o = ctl
            .cmd()
            .env("VAULT_TOKEN_FILE", token)
            .args(args)
            .arg("--identity")
            .arg(&ctl.identity)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!err.contains("panicked"), "{err}");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            err,
        )
    };
    let victim = s.id.to_string();
    let random = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b";
    let out = ctl.stores.dir.path().join("never.age");
    let out = out.to_str().unwrap();
    let commands = |sid: &str| -> Vec<Vec<String>> {
        let t = |to: &str| -> Vec<String> {
            [
                "--subject",
                sid,
                "--to",
                to,
                "--categories",
                "identity",
                "--recipient",
                "District office",
                "--purpose",
                "legal_administrative",
            ]
            .iter()
            .map(|x| x.to_string())
            .collect()
        };
        let mut check = vec!["transfer".to_string(), "check".to_string()];
        check.extend(t("KZ"));
        let mut export = vec!["transfer".to_string(), "export".to_string()];
        export.extend(t("KZ"));
        export.extend([
            "--recipient-key".to_string(),
            "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p".to_string(),
            "--out".to_string(),
            out.to_string(),
        ]);
        let ground = [
            "transfer",
            "ground",
            "--subject",
            sid,
            "--to",
            "RU",
            "--ground",
            "ratified_treaty",
            "--reference",
            "Treaty No. 12",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let owned = |a: &[&str]| a.iter().map(|x| x.to_string()).collect::<Vec<String>>();
        vec![
            check,
            export,
            ground,
            owned(&["transfer", "ledger", "--subject", sid]),
            owned(&["retention", "left", "--subject", sid, "--on", "2020-01-01"]),
            owned(&[
                "retention",
                "hold",
                "add",
                "--subject",
                sid,
                "--reason",
                "court case 2-118/2026",
            ]),
            owned(&["audit", "log", "--subject", sid]),
            owned(&["audit", "prove", "--subject", sid]),
        ]
    };
    for (a, b) in commands(&victim).iter().zip(commands(random)) {
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let b: Vec<&str> = b.iter().map(String::as_str).collect();
        let (ca, oa, ea) = run(&privacy2, &a);
        let (cb, ob, eb) = run(&privacy2, &b);
        assert_eq!(ca, Some(1), "{a:?}: {ea}");
        assert_eq!(
            (ca, oa, ea.replace(&victim, "<id>")),
            (cb, ob, eb.replace(random, "<id>")),
            "{a:?}"
        );
        // A teacher of the school holds none of these grants.
        let (ct, _, et) = run(&teacher, &a);
        assert_eq!(ct, Some(1), "{a:?}");
        assert!(
            et.contains("none of your roles may") || et.contains("only an auditor may"),
            "{a:?}: {et}"
        );
    }
    assert!(!Path::new(out).exists());
    // The incident report of another school lists none of school-1's subjects.
    let nurse_id = nurse.id().to_string();
    let args = [
        "incident",
        "report",
        "--principal",
        &nurse_id,
        "--since",
        "2020-01-01",
    ];
    let (code, report, err) = run(&privacy2, &args);
    assert_eq!(code, Some(0), "{err}");
    assert!(report.contains("\"subjects\": []"), "{report}");
    let (code, report, _) = run(&ctl.token_file, &args);
    assert_eq!(code, Some(0));
    assert!(
        report.contains(&victim),
        "the school's own privacy officer sees it"
    );
    let (code, _, err) = run(&teacher, &args);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("none of your roles may export identity"),
        "{err}"
    );
}
