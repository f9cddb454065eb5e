//! Crash safety on SQLite and PostgreSQL: `vaultctl` is stopped at crash points the code
//! announces (`VAULT_TEST_CRASH_AT`, a test-only hook: the process says it reached the point and
//! aborts there, as a SIGKILL would stop it), so every stop is known to land mid-operation:
//! between a rewrap's batches, between a backup's two files, between a sweep chunk's key-store
//! and data-store commits, and between a restore's two stores or before its data commit. Each
//! operation is then run again to completion. Afterwards nothing completed is lost, nothing is
//! half-written, nothing shredded comes back, and the audit chain verifies. The harness prints
//! how many stops landed mid-operation, per operation and backend, and fails unless all did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vault_core::{
    Category, FieldName, FieldValue, FieldView, NewSubject, RecordId, RecordType, SchoolId,
    SubjectKind, Unlock, Vault, VaultError,
};
use vault_tests::{Backend, TestStores, on_both_backends, policy};

on_both_backends!(vaultctl_stopped_at_35_crash_points_loses_nothing);

struct Env {
    stores: TestStores,
    identity: PathBuf,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
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
        c.arg("--identity")
            .arg(&self.identity)
            .args(args)
            .env_remove("VAULT_TEST_CRASH_AT")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// Runs to completion.
    fn run(&self, args: &[&str]) {
        let o = self.cmd(args).stderr(Stdio::piped()).output().unwrap();
        assert!(
            o.status.success(),
            "vaultctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Runs with the crash point `point` armed. True when the process reached it and stopped
    /// there; false when it finished without reaching it.
    fn crash_at(&self, args: &[&str], point: &str) -> bool {
        let o = self
            .cmd(args)
            .env("VAULT_TEST_CRASH_AT", point)
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        let name = point.split(':').next().unwrap();
        if err.contains(&format!("crash point {name} #")) {
            assert_eq!(
                o.status.signal(),
                Some(6),
                "stopped by abort at {point}: {err}"
            );
            true
        } else {
            assert!(o.status.success(), "vaultctl {args:?} at {point}: {err}");
            false
        }
    }

    async fn vault(&self) -> Vault {
        let stores = vault_core::Stores::open(&self.stores.config).await.unwrap();
        Vault::open(
            stores,
            policy().await,
            Unlock::identity_file(&self.identity).unwrap(),
        )
        .await
        .unwrap()
    }
}

/// Every active record opens completely; returns field name -> value text per record.
async fn check_consistent(
    v: &Vault,
    records: &[RecordId],
) -> BTreeMap<RecordId, BTreeMap<String, String>> {
    let all: BTreeSet<Category> = v.catalog().collected_categories().cloned().collect();
    let mut out = BTreeMap::new();
    for id in records {
        match v.read_record(*id, &all).await {
            Ok(view) => {
                let mut fields = BTreeMap::new();
                for (n, f) in view.fields {
                    match f {
                        FieldView::Open { value, .. } => {
                            fields.insert(n.to_string(), value.expose_json().to_owned());
                        }
                        FieldView::Sealed { reason, .. } => {
                            // A field whose key is gone is a shred a rerun will finish; anything
                            // else is a half-written record.
                            assert_eq!(reason, vault_core::SealReason::Shredded, "{id}.{n}");
                        }
                    }
                }
                out.insert(*id, fields);
            }
            Err(VaultError::RecordShredded(_)) => {}
            Err(e) => panic!("record {id} is damaged: {e}"),
        }
    }
    out
}

async fn vaultctl_stopped_at_35_crash_points_loses_nothing(backend: Backend) {
    let stores = TestStores::new(backend).await;
    let identity = stores.dir.path().join("custodian.txt");
    let recipient = Unlock::generate_identity_file(&identity)
        .unwrap()
        .to_string();
    let env = Env { stores, identity };
    env.run(&["keyring", "init", "--recipient", &recipient]);

    // 600 students with two records each; half of them left long ago (their contact data expires).
    let v = env.vault().await;
    let rt = RecordType::parse("student").unwrap();
    let mut records = Vec::new();
    let mut expiring = BTreeSet::new();
    for i in 0..600 {
        let s = v
            .create_subject(NewSubject {
                school: SchoolId::parse("school-1").unwrap(),
                kind: SubjectKind::Student,
                iin: None,
            })
            .await
            .unwrap();
        for j in 0..2 {
            let f: BTreeMap<_, _> = [
                (
                    FieldName::parse("full_name").unwrap(),
                    FieldValue::text(&format!("student {i}/{j}")),
                ),
                (
                    FieldName::parse("address").unwrap(),
                    FieldValue::text(&format!("street {i}/{j}")),
                ),
            ]
            .into_iter()
            .collect();
            let id = v.write_record(s.id, &rt, &f).await.unwrap().id;
            records.push(id);
            if i % 2 == 0 {
                expiring.insert(id);
            }
        }
        if i % 2 == 0 {
            v.mark_left("registrar", s.id, "2015-06-30T00:00:00Z".parse().unwrap())
                .await
                .unwrap();
        }
    }
    let before = check_consistent(&v, &records).await;
    assert_eq!(before.len(), 1200);
    drop(v);

    // Rewrap: rotate, then stop the rewrap after its 1st, 2nd, ... 10th batch; then finish.
    let mut landed = BTreeMap::new();
    for n in 1..=10 {
        env.run(&["keyring", "rotate", "--category", "identity"]);
        let stopped = env.crash_at(
            &["keyring", "rewrap", "--batch", "25"],
            &format!("rewrap.batch_committed:{n}"),
        );
        let v = env.vault().await;
        let left = v.rewrap_remaining(None).await.unwrap();
        if stopped && left > 0 && left < 1200 {
            *landed.entry("rewrap").or_insert(0) += 1;
        }
    }
    env.run(&["keyring", "rewrap"]);
    let v = env.vault().await;
    assert_eq!(v.rewrap_remaining(None).await.unwrap(), 0);
    assert_eq!(
        check_consistent(&v, &records).await,
        before,
        "rewrap lost or changed nothing"
    );
    drop(v);

    // Backup before the sweep, stopped 5 times between its data and key files.
    let backups = env.stores.dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    for k in 0..5 {
        let p = backups.join(format!("partial-{k}"));
        if env.crash_at(
            &["backup", "--out", p.to_str().unwrap()],
            "backup.data.jsonl.age",
        ) && p.join("data.jsonl.age").exists()
            && !p.join("keys.jsonl.age").exists()
        {
            *landed.entry("backup").or_insert(0) += 1;
        }
        // A partial backup is refused by restore without touching the stores.
        let o = env
            .cmd(&["restore", "--from", p.to_str().unwrap(), "--force"])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
    }
    let full = backups.join("full");
    env.run(&["backup", "--out", full.to_str().unwrap()]);

    // Sweep: stopped 10 times between a chunk's key-store commit (its DEKs destroyed) and its
    // data-store commit, at the 1st to 3rd chunk of each run; then finished.
    for k in 0..10 {
        let stopped = env.crash_at(
            &["retention", "sweep"],
            &format!("sweep.keys_destroyed:{}", 1 + k % 3),
        );
        let v = env.vault().await;
        let dry = vault_core::SweepOptions {
            dry_run: true,
            ..Default::default()
        };
        let due = v.sweep(dry, &mut |_| {}).await.unwrap().records;
        // Half-done chunks read as shredded, never as half-written records.
        check_consistent(&v, &records).await;
        if stopped && due > 0 {
            *landed.entry("sweep").or_insert(0) += 1;
        }
    }
    env.run(&["retention", "sweep"]);
    let v = env.vault().await;
    let after_sweep = check_consistent(&v, &records).await;
    for id in &records {
        let fields = &after_sweep[id];
        assert!(
            fields.contains_key("full_name"),
            "identity is kept for 75 years"
        );
        assert_eq!(
            fields.contains_key("address"),
            !expiring.contains(id),
            "{id}: exactly the expired addresses are gone"
        );
        assert_eq!(fields["full_name"], before[id]["full_name"]);
    }
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
    drop(v);

    // Restore the pre-sweep backup, stopped 5 times between its key-store and data-store
    // commits and 5 times with the data loaded but not committed; then finished: the shreds
    // made after the backup stay applied.
    for k in 0..10 {
        let point = if k % 2 == 0 {
            "restore.keys_committed"
        } else {
            "restore.data_loaded"
        };
        if env.crash_at(
            &["restore", "--from", full.to_str().unwrap(), "--force"],
            point,
        ) {
            *landed.entry("restore").or_insert(0) += 1;
        }
    }
    env.run(&["restore", "--from", full.to_str().unwrap(), "--force"]);
    let v = env.vault().await;
    let restored = check_consistent(&v, &records).await;
    assert_eq!(
        restored, after_sweep,
        "nothing shredded came back, nothing else was lost"
    );
    assert_eq!(v.verify_audit().await.unwrap().problem, None);

    // Straight to stderr, past libtest's capture, so the CI log shows it for a passing test.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "crash points ({backend:?}): landed mid-operation: rewrap {}/10, backup {}/5, sweep {}/10, restore {}/10",
        landed.get("rewrap").unwrap_or(&0),
        landed.get("backup").unwrap_or(&0),
        landed.get("sweep").unwrap_or(&0),
        landed.get("restore").unwrap_or(&0),
    );
    assert_eq!(
        landed,
        BTreeMap::from([
            ("backup", 5),
            ("restore", 10),
            ("rewrap", 10),
            ("sweep", 10)
        ]),
        "every armed crash point must stop its operation midway"
    );
}
