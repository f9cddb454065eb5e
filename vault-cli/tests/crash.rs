//! Crash safety: `vaultctl` is killed with SIGKILL at pseudo-random moments (a fixed seed, so a
//! failure replays) during rewrap, sweep, backup and restore, 35 times in all; each operation is
//! then run again to completion. Afterwards nothing completed is lost, nothing is half-written,
//! nothing shredded comes back, and the audit chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use vault_core::{
    Category, FieldName, FieldValue, FieldView, NewSubject, RecordId, RecordType, SchoolId,
    SubjectKind, Unlock, Vault, VaultError,
};
use vault_tests::{Backend, TestStores, policy};

/// A small deterministic generator: the kill points of a run can be replayed from its seed.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

struct Env {
    stores: TestStores,
    identity: PathBuf,
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vaultctl"));
        c.arg("--policies")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
            .arg("--data-dir")
            .arg(self.stores.dir.path().join("data"))
            .arg("--identity")
            .arg(&self.identity)
            .args(args)
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

    /// Starts, then SIGKILLs after `ms` milliseconds (or finds it already finished).
    fn kill_after(&self, args: &[&str], ms: u64) {
        let mut child = self.cmd(args).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(ms));
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts, then SIGKILLs once it has reported `n` steps of progress (each "\r" on stderr):
    /// the kill lands mid-work however fast or slow the machine is.
    fn kill_after_progress(&self, args: &[&str], n: u64) {
        use std::io::Read as _;
        let mut child = self.cmd(args).stderr(Stdio::piped()).spawn().unwrap();
        let mut err = child.stderr.take().unwrap();
        let mut seen = 0;
        let mut buf = [0u8; 512];
        while seen < n {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => seen += buf[..k].iter().filter(|b| **b == b'\r').count() as u64,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    async fn vault(&self) -> Vault {
        let stores = vault_core::Stores::open(
            &vault_core::StoreConfig::sqlite_dir(&self.stores.dir.path().join("data")).unwrap(),
        )
        .await
        .unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vaultctl_killed_at_35_points_loses_nothing() {
    let seed = 0x5eed_2026_1127;
    let mut rng = Lcg(seed);
    eprintln!("kill-point seed {seed:#x}");
    let stores = TestStores::new(Backend::Sqlite).await;
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

    // Rewrap: rotate, then kill the rewrap at a random point; 10 times; then finish.
    let mut interrupted = 0;
    for _ in 0..10 {
        env.run(&["keyring", "rotate", "--category", "identity"]);
        env.kill_after_progress(&["keyring", "rewrap", "--batch", "25"], 1 + rng.next(40));
        let v = env.vault().await;
        let left = v.rewrap_remaining(None).await.unwrap();
        if left > 0 && left < 1200 {
            interrupted += 1;
        }
    }
    assert!(
        interrupted >= 8,
        "only {interrupted} of 10 kills landed mid-rewrap: the harness is not testing much"
    );
    env.run(&["keyring", "rewrap"]);
    let v = env.vault().await;
    assert_eq!(v.rewrap_remaining(None).await.unwrap(), 0);
    assert_eq!(
        check_consistent(&v, &records).await,
        before,
        "rewrap lost or changed nothing"
    );
    drop(v);

    // Backup before the sweep, killed 5 times at random points first.
    let backups = env.stores.dir.path().join("backups");
    std::fs::create_dir(&backups).unwrap();
    for k in 0..5 {
        env.kill_after(
            &[
                "backup",
                "--out",
                backups.join(format!("partial-{k}")).to_str().unwrap(),
            ],
            rng.next(120),
        );
    }
    let full = backups.join("full");
    env.run(&["backup", "--out", full.to_str().unwrap()]);
    // A partial backup is refused by restore without touching the stores.
    for k in 0..5 {
        let p = backups.join(format!("partial-{k}"));
        if p.join("manifest.json").exists() {
            continue;
        }
        let o = env
            .cmd(&["restore", "--from", p.to_str().unwrap(), "--force"])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(1));
    }

    // Sweep: killed 10 times at random points, then finished.
    let mut interrupted = 0;
    for _ in 0..10 {
        // The sweep reports progress once per chunk (a tenth of a page's due records, at least 50)
        // and keeps working while the kill is on its way, so kills land inside later chunks.
        env.kill_after_progress(&["retention", "sweep"], 1 + rng.next(2));
        let v = env.vault().await;
        let dry = vault_core::SweepOptions {
            dry_run: true,
            ..Default::default()
        };
        let due = v.sweep(dry, &mut |_| {}).await.unwrap().records;
        if due > 0 && due < 600 {
            interrupted += 1;
        }
    }
    assert!(interrupted >= 1, "no kill landed mid-sweep");
    // (Each run shreds at least a chunk, so later kills find less to do; the first always lands.)
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

    // Restore the pre-sweep backup, killed 10 times at random points, then finished: the shreds
    // made after the backup stay applied.
    for _ in 0..10 {
        env.kill_after(
            &["restore", "--from", full.to_str().unwrap(), "--force"],
            20 + rng.next(300),
        );
    }
    env.run(&["restore", "--from", full.to_str().unwrap(), "--force"]);
    let v = env.vault().await;
    let restored = check_consistent(&v, &records).await;
    assert_eq!(
        restored, after_sweep,
        "nothing shredded came back, nothing else was lost"
    );
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
}
