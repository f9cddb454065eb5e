//! Rotating the blind-index key with the real `vaultctl`, on SQLite and on PostgreSQL: 10,000
//! subjects with their IINs in their records, `keyring rotate-index` stopped at a crash point
//! halfway through its batches and run again; every IIN is found throughout, and afterwards the
//! old key is gone from the keyring.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vault_core::{
    FieldName, FieldValue, Iin, NewSubject, RecordType, SchoolId, SubjectId, SubjectKind, Unlock,
    Vault,
};
use vault_tests::{Backend, TestStores, on_both_backends, policy};

on_both_backends!(
    blind_index_rotation_of_ten_thousand_subjects_survives_a_kill,
    a_subject_whose_iin_no_record_holds_keeps_the_old_key,
);

struct Ctl {
    stores: TestStores,
    identity: PathBuf,
}

impl Ctl {
    /// `vaultctl` with the stores and `args`, with no identity.
    fn bare(&self, args: &[&str]) -> Command {
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
            .env_remove("VAULT_TOKEN_FILE")
            .env_remove("VAULT_TEST_CRASH_AT")
            .args(args);
        c
    }

    /// `vaultctl` with the stores, `args` and the custodian's identity.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = self.bare(args);
        c.arg("--identity").arg(&self.identity);
        c
    }

    fn ok(&self, args: &[&str]) -> Output {
        let o = self.cmd(args).output().unwrap();
        assert!(
            o.status.success(),
            "vaultctl {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o
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

/// The `n`-th of a run of distinct IINs (born in January 2015), if it has a check digit.
fn iin(n: usize) -> Option<String> {
    let prefix = format!("1501{:02}5{:04}", 1 + n / 10_000, n % 10_000);
    let d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
    Iin::check_digit(&d).map(|c| format!("{prefix}{c}"))
}

/// Every IIN in `sample` finds its own subject.
async fn all_found(v: &Vault, sample: &[(String, SubjectId)]) {
    for (digits, id) in sample {
        let got = v
            .find_subject_by_iin(&Iin::parse(digits).unwrap())
            .await
            .unwrap()
            .map(|s| s.id);
        assert_eq!(got, Some(*id), "IIN number {digits} not found");
    }
}

fn status(ctl: &Ctl) -> String {
    String::from_utf8_lossy(&ctl.ok(&["keyring", "status"]).stdout).into_owned()
}

/// Fresh stores with a keyring sealed to a new custodian identity.
async fn setup(backend: Backend) -> Ctl {
    let stores = TestStores::new(backend).await;
    let identity = stores.dir.path().join("custodian.txt");
    let recipient = Unlock::generate_identity_file(&identity)
        .unwrap()
        .to_string();
    let ctl = Ctl { stores, identity };
    let o = ctl
        .bare(&["keyring", "init", "--recipient", &recipient])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ctl
}

async fn subject_with(v: &Vault, digits: &str, in_record: Option<&str>) -> SubjectId {
    let s = v
        .create_subject(NewSubject {
            school: SchoolId::parse("school-1").unwrap(),
            kind: SubjectKind::Student,
            iin: Some(Iin::parse(digits).unwrap()),
        })
        .await
        .unwrap();
    if let Some(held) = in_record {
        record_iin(v, s.id, held).await;
    }
    s.id
}

async fn record_iin(v: &Vault, s: SubjectId, digits: &str) {
    let f: BTreeMap<_, _> = [(FieldName::parse("iin").unwrap(), FieldValue::text(digits))]
        .into_iter()
        .collect();
    v.write_record(s, &RecordType::parse("student").unwrap(), &f)
        .await
        .unwrap();
}

/// The limit of a re-index from the records: a subject none of whose records holds its IIN
/// (none at all, or only someone else's) cannot be moved, so the old key stays, the command
/// exits 1 naming them, and they stay findable; once a record holds the IIN, a second run ends
/// the rotation.
async fn a_subject_whose_iin_no_record_holds_keeps_the_old_key(backend: Backend) {
    let ctl = setup(backend).await;
    let v = ctl.vault().await;
    let [a, b, c] = [iin(1), iin(2), iin(3)].map(Option::unwrap);
    let mut all = vec![
        (a.clone(), subject_with(&v, &a, Some(&a)).await),
        (b.clone(), subject_with(&v, &b, None).await),
    ];
    // A record holding another subject's IIN moves nothing.
    all.push((c.clone(), subject_with(&v, &c, Some(&a)).await));
    drop(v);

    let o = ctl.cmd(&["keyring", "rotate-index"]).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("2 subjects are still under the old blind-index key (2 of them with no record holding their IIN)"),
        "{err}"
    );
    assert!(status(&ctl).contains("blind-index keys: 2"));
    let v = ctl.vault().await;
    all_found(&v, &all).await;
    record_iin(&v, all[1].1, &b).await;
    record_iin(&v, all[2].1, &c).await;
    drop(v);

    let out = String::from_utf8_lossy(&ctl.ok(&["keyring", "rotate-index"]).stdout).into_owned();
    assert!(out.contains("re-indexed 2 subjects"), "{out}");
    assert!(
        out.contains("the old blind-index key is destroyed"),
        "{out}"
    );
    assert!(status(&ctl).contains("blind-index keys: 1"));
    all_found(&ctl.vault().await, &all).await;
}

async fn blind_index_rotation_of_ten_thousand_subjects_survives_a_kill(backend: Backend) {
    const N: usize = 10_000;
    let ctl = setup(backend).await;

    let v = ctl.vault().await;
    let school = SchoolId::parse("school-1").unwrap();
    let rt = RecordType::parse("student").unwrap();
    let mut subjects: Vec<(String, SubjectId)> = Vec::with_capacity(N);
    let mut n = 0;
    while subjects.len() < N {
        let Some(digits) = iin(n) else {
            n += 1;
            continue;
        };
        n += 1;
        let s = v
            .create_subject(NewSubject {
                school: school.clone(),
                kind: SubjectKind::Student,
                iin: Some(Iin::parse(&digits).unwrap()),
            })
            .await
            .unwrap();
        let f: BTreeMap<_, _> = [
            (
                FieldName::parse("full_name").unwrap(),
                FieldValue::text(&format!("student {n}")),
            ),
            (FieldName::parse("iin").unwrap(), FieldValue::text(&digits)),
        ]
        .into_iter()
        .collect();
        v.write_record(s.id, &rt, &f).await.unwrap();
        subjects.push((digits, s.id));
    }
    // The first and the last, and 200 spread between them.
    let mut sample: Vec<(String, SubjectId)> = (0..200)
        .map(|i| subjects[1 + i * (N - 2) / 200].clone())
        .collect();
    sample.push(subjects[0].clone());
    sample.push(subjects[N - 1].clone());
    all_found(&v, &sample).await;
    let old_key = v.test_hooks_key_material().await.unwrap()[0].clone();
    drop(v);
    assert!(status(&ctl).contains("blind-index keys: 1"));

    // Stopped after 50 batches of 100: half the subjects moved, the rest still under the old key.
    let o = ctl
        .cmd(&["keyring", "rotate-index", "--batch", "100"])
        .env("VAULT_TEST_CRASH_AT", "reindex.batch_committed:50")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("crash point reindex.batch_committed #50 reached")
            && o.status.signal().is_some(),
        "rotate-index was not stopped halfway: {:?} {err}",
        o.status
    );
    assert!(
        !err.contains('\r') && !err.contains('\u{1b}'),
        "no progress bar on a piped stderr: {err:?}"
    );
    assert!(status(&ctl).contains("blind-index keys: 2, a rotation is under way"));

    // Halfway, every IIN is still found: the moved ones by the new index, the rest by the old.
    let v = ctl.vault().await;
    assert!(v.index_rotation_pending());
    all_found(&v, &sample).await;
    // A subject made now is indexed under the new key and found too; its IIN is taken.
    let late = iin(n).or_else(|| iin(n + 1)).unwrap();
    let s = v
        .create_subject(NewSubject {
            school: school.clone(),
            kind: SubjectKind::Student,
            iin: Some(Iin::parse(&late).unwrap()),
        })
        .await
        .unwrap();
    let f: BTreeMap<_, _> = [(FieldName::parse("iin").unwrap(), FieldValue::text(&late))]
        .into_iter()
        .collect();
    v.write_record(s.id, &rt, &f).await.unwrap();
    let taken = v
        .create_subject(NewSubject {
            school: school.clone(),
            kind: SubjectKind::Student,
            iin: Some(Iin::parse(&subjects[N - 1].0).unwrap()),
        })
        .await;
    assert!(
        matches!(taken, Err(vault_core::VaultError::DuplicateIin)),
        "{taken:?}"
    );
    sample.push((late, s.id));
    drop(v);

    // Run again: it continues where it stopped, then retires the old key.
    let o = ctl.ok(&["keyring", "rotate-index", "--batch", "1000"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("continuing the blind-index rotation begun before"),
        "{out}"
    );
    assert!(out.contains("re-indexed 5000 subjects"), "{out}");
    assert!(
        out.contains("the old blind-index key is destroyed"),
        "{out}"
    );
    assert!(status(&ctl).contains("blind-index keys: 1"));
    let chain = String::from_utf8_lossy(&ctl.ok(&["keyring", "verify"]).stdout).into_owned();
    assert!(chain.contains("to generation 3"), "{chain}");

    let v = ctl.vault().await;
    assert!(!v.index_rotation_pending());
    let keys = v.test_hooks_key_material().await.unwrap();
    assert!(
        !keys.contains(&old_key),
        "the old blind-index key is still in the keyring"
    );
    all_found(&v, &sample).await;
    // An IIN nobody holds is still not found.
    let nobody = iin(n + 50).or_else(|| iin(n + 51)).unwrap();
    assert!(
        v.find_subject_by_iin(&Iin::parse(&nobody).unwrap())
            .await
            .unwrap()
            .is_none()
    );
}
