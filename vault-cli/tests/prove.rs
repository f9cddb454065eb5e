//! `vaultctl audit prove` and `audit check-proof`: a subject's entries with inclusion proofs and
//! a consistency proof from a kept checkpoint, checked with the audit public key alone, by
//! vaultctl and by an independent checker (`scripts/check-audit-proof`, Python, sharing no code
//! with the vault); one changed byte of an entry or of a proof fails both; a log edited behind
//! the vault's back gets no proof.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sea_orm::{ConnectionTrait, Database, Statement};
use serde_json::Value;
use vault_core::{Role, Scope, SubjectKind};
use vault_tests::{Backend, TestStores, TestVault, on_both_backends};

on_both_backends!(a_proof_checks_with_the_public_key_alone_and_fails_when_one_byte_changes);
on_both_backends!(a_log_edited_behind_the_vaults_back_gets_no_proof);
on_both_backends!(after_a_rotation_only_the_new_key_signs_a_proof_and_old_checkpoints_still_count);

fn vaultctl(stores: &TestStores, identity: &Path, token: &Path, args: &[&str]) -> Output {
    let o = stores
        .vaultctl(env!("CARGO_BIN_EXE_vaultctl"))
        .env("VAULT_TOKEN_FILE", token)
        .args(args)
        .arg("--identity")
        .arg(identity)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    o
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `vaultctl audit check-proof` as an outside auditor runs it: in an empty folder, with no
/// store, keyring, token or policies, only the public key file.
fn check(dir: &Path, proof: &Path, vkey: &Path, since: Option<&Path>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vaultctl"));
    c.env_clear()
        .current_dir(dir)
        .args(["audit", "check-proof"]);
    c.arg(proof).arg("--public-key-file").arg(vkey);
    if let Some(s) = since {
        c.arg("--since").arg(s);
    }
    c.output().unwrap()
}

/// The independent checker.
fn python_check(proof: &Path, vkey: &Path, since: Option<&Path>) -> Output {
    let mut c = Command::new("python3");
    c.arg(vault_tests::repo_root().join("scripts/check-audit-proof"));
    c.arg(proof).arg(vkey);
    if let Some(s) = since {
        c.arg(s);
    }
    c.output()
        .expect("python3 with python3-cryptography is needed")
}

fn holds(dir: &Path, proof: &Path, vkey: &Path, since: Option<&Path>) -> String {
    let py = python_check(proof, vkey, since);
    assert!(
        py.status.success(),
        "the independent checker refused a good proof: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    ok(check(dir, proof, vkey, since), "check-proof")
}

/// Both checkers refuse; vaultctl's reason contains `why`.
fn refused(dir: &Path, proof: &Path, vkey: &Path, since: Option<&Path>, why: &str) {
    let o = check(dir, proof, vkey, since);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "check-proof accepted it");
    assert!(err.contains(why), "{err}");
    assert!(
        !python_check(proof, vkey, since).status.success(),
        "the independent checker accepted a changed proof ({why})"
    );
}

struct Setup {
    t: TestVault,
    token: PathBuf,
    subject: String,
    dir: PathBuf,
    vkey: PathBuf,
}

async fn setup(backend: Backend) -> Setup {
    let t = TestVault::new(backend).await;
    let subject = vault_tests::new_subject(&t.vault, SubjectKind::Student).await;
    // A record, so the subject's entries carry categories (part of each leaf).
    let fields: std::collections::BTreeMap<_, _> = [(
        vault_core::FieldName::parse("full_name").unwrap(),
        vault_core::FieldValue::text("Dana"),
    )]
    .into_iter()
    .collect();
    let rec = t
        .vault
        .write_record(
            subject,
            &vault_core::RecordType::parse("student").unwrap(),
            &fields,
        )
        .await
        .unwrap();
    let (nurse, _) = t
        .vault
        .create_principal(
            "Nurse",
            &[(
                Scope::School(vault_core::SchoolId::parse("school-1").unwrap()),
                Role::Nurse,
            )],
        )
        .await
        .unwrap();
    t.vault
        .session(nurse)
        .read_record(rec.id, &vault_core::Purpose::parse("education").unwrap())
        .await
        .unwrap();
    let (_, tok) = t
        .vault
        .create_principal("Auditor", &[(Scope::Network, Role::Auditor)])
        .await
        .unwrap();
    let dir = t.stores.dir.path().to_path_buf();
    let token = dir.join("auditor.token");
    std::fs::write(&token, tok.expose()).unwrap();
    let vkey = dir.join("audit.vkey");
    let keys = ok(
        vaultctl(&t.stores, &t.identity, &token, &["audit", "public-key"]),
        "public-key",
    );
    assert_eq!(keys.lines().count(), 1, "{keys}");
    std::fs::write(&vkey, &keys).unwrap();
    Setup {
        t,
        token,
        subject: subject.to_string(),
        dir,
        vkey,
    }
}

impl Setup {
    fn prove(&self, out: &Path, kept: &Path, since: Option<&Path>) -> Output {
        let out = out.to_str().unwrap();
        let kept = kept.to_str().unwrap();
        let mut args = vec![
            "audit",
            "prove",
            "--subject",
            &self.subject,
            "--out",
            out,
            "--checkpoint-out",
            kept,
        ];
        if let Some(s) = since {
            args.extend(["--since", s.to_str().unwrap()]);
        }
        vaultctl(&self.t.stores, &self.t.identity, &self.token, &args)
    }

    async fn events(&self, n: usize) {
        for i in 0..n {
            self.t
                .vault
                .record_operator_event("test", "test.event", format!("event {i}"))
                .await
                .unwrap();
        }
    }
}

fn edit(from: &Path, to: &Path, f: impl FnOnce(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(from).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(to, serde_json::to_string(&v).unwrap()).unwrap();
}

/// One flipped bit in a base64 hash.
fn flip(v: &mut Value) {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut h = b64.decode(v.as_str().unwrap()).unwrap();
    h[5] ^= 0x10;
    *v = Value::String(b64.encode(h));
}

async fn a_proof_checks_with_the_public_key_alone_and_fails_when_one_byte_changes(
    backend: Backend,
) {
    let s = setup(backend).await;
    let auditor_dir = tempfile::tempdir().unwrap();
    let d = auditor_dir.path();
    s.events(3).await;
    let (p1, kept) = (s.dir.join("p1.json"), s.dir.join("kept.checkpoint"));
    ok(s.prove(&p1, &kept, None), "prove");
    let out = holds(d, &p1, &s.vkey, None);
    let first: Value = serde_json::from_str(&std::fs::read_to_string(&p1).unwrap()).unwrap();
    // At least the auditor's read of the history, which the proof covers too.
    let n1 = first["entries"].as_array().unwrap().len();
    assert!(n1 >= 1);
    assert!(out.contains(&format!("proof holds: {n1} entries")), "{out}");
    assert!(first["consistency"].is_null());
    for e in first["entries"].as_array().unwrap() {
        assert_eq!(e["subject"].as_str(), Some(s.subject.as_str()));
    }
    assert!(
        first["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| !e["categories"].as_array().unwrap().is_empty()),
        "no entry with categories: the two checkers' leaf encodings are not compared on them"
    );

    // Later: more entries, and a proof that the log extends the kept checkpoint.
    s.events(5).await;
    let (p2, kept2) = (s.dir.join("p2.json"), s.dir.join("kept2.checkpoint"));
    ok(s.prove(&p2, &kept2, Some(&kept)), "prove --since");
    let old_size: u64 = std::fs::read_to_string(&kept)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let out = holds(d, &p2, &s.vkey, Some(&kept));
    // One more: the second read.
    assert!(
        out.contains(&format!("proof holds: {} entries", n1 + 1)),
        "{out}"
    );
    assert!(
        out.contains(&format!("extends your checkpoint of {old_size} entries")),
        "{out}"
    );

    let bad = d.join("bad.json");
    // One changed byte of an entry.
    edit(&p2, &bad, |v| {
        let actor = v["entries"][0]["actor"].as_str().unwrap().to_owned();
        let mut b = actor.into_bytes();
        b[0] ^= 1;
        v["entries"][0]["actor"] = Value::String(String::from_utf8(b).unwrap());
    });
    refused(d, &bad, &s.vkey, None, "is not in the signed tree");
    edit(&p2, &bad, |v| {
        v["entries"][n1]["reason"] = Value::String("nothing happened".into())
    });
    refused(d, &bad, &s.vkey, None, "is not in the signed tree");
    // Categories moved between list items: a different leaf.
    edit(&p2, &bad, |v| {
        let e = v["entries"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|e| !e["categories"].as_array().unwrap().is_empty())
            .unwrap();
        let joined: Vec<String> = e["categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect();
        e["categories"] = serde_json::json!([format!("{},", joined.join(","))]);
    });
    refused(d, &bad, &s.vkey, None, "is not in the signed tree");
    // Entries repeated or out of order.
    edit(&p2, &bad, |v| {
        let e = v["entries"][0].clone();
        v["entries"].as_array_mut().unwrap().push(e);
    });
    refused(d, &bad, &s.vkey, None, "increasing order");
    // One flipped bit of an inclusion proof, of the consistency proof.
    edit(&p2, &bad, |v| flip(&mut v["entries"][0]["inclusion"][0]));
    refused(d, &bad, &s.vkey, None, "is not in the signed tree");
    edit(&p2, &bad, |v| flip(&mut v["consistency"]["proof"][0]));
    refused(d, &bad, &s.vkey, None, "does not extend the checkpoint");
    // A checkpoint whose size was changed no longer carries the signature.
    edit(&p2, &bad, |v| {
        let cp = v["checkpoint"].as_str().unwrap();
        let mut lines: Vec<String> = cp.split('\n').map(str::to_owned).collect();
        lines[1] = (lines[1].parse::<u64>().unwrap() + 1).to_string();
        v["checkpoint"] = Value::String(lines.join("\n"));
    });
    refused(
        d,
        &bad,
        &s.vkey,
        None,
        "not signed by any of the given audit keys",
    );
    // The first proof does not start from the auditor's kept checkpoint: refused with --since.
    refused(
        d,
        &p1,
        &s.vkey,
        Some(&kept),
        "not from the checkpoint given",
    );
    // Another vault's key verifies nothing.
    let other = setup(backend).await;
    refused(
        d,
        &p2,
        &other.vkey,
        None,
        "not signed by any of the given audit keys",
    );
}

async fn a_log_edited_behind_the_vaults_back_gets_no_proof(backend: Backend) {
    let s = setup(backend).await;
    s.events(3).await;
    let (p1, kept) = (s.dir.join("p1.json"), s.dir.join("kept.checkpoint"));
    ok(s.prove(&p1, &kept, None), "prove");
    // An administrator rewrites an entry's reason in the data store.
    let db = Database::connect(&s.t.stores.config.data_url)
        .await
        .unwrap();
    db.execute_raw(Statement::from_string(
        db.get_database_backend(),
        "UPDATE audit_log SET reason = 'nothing happened' WHERE seq = 2",
    ))
    .await
    .unwrap();
    let o = s.prove(&s.dir.join("p2.json"), &s.dir.join("k2"), Some(&kept));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "a proof was made over an edited log"
    );
    assert!(
        err.contains("the audit log was tampered with: entry 2 was altered"),
        "{err}"
    );
    assert!(!s.dir.join("p2.json").exists());
}

async fn after_a_rotation_only_the_new_key_signs_a_proof_and_old_checkpoints_still_count(
    backend: Backend,
) {
    let s = setup(backend).await;
    let auditor_dir = tempfile::tempdir().unwrap();
    let d = auditor_dir.path();
    s.events(2).await;
    let (p1, kept) = (s.dir.join("p1.json"), s.dir.join("kept.checkpoint"));
    ok(s.prove(&p1, &kept, None), "prove");
    holds(d, &p1, &s.vkey, None);
    ok(
        vaultctl(
            &s.t.stores,
            &s.t.identity,
            &s.token,
            &["keyring", "rotate-audit-key"],
        ),
        "rotate-audit-key",
    );
    let keys = ok(
        vaultctl(
            &s.t.stores,
            &s.t.identity,
            &s.token,
            &["audit", "public-key"],
        ),
        "public-key",
    );
    let lines: Vec<&str> = keys.lines().collect();
    assert_eq!(lines.len(), 2, "{keys}");
    let old = std::fs::read_to_string(&s.vkey).unwrap();
    assert_eq!(lines[0], old.trim(), "the retired key is listed first");
    let both = s.dir.join("both.vkey");
    std::fs::write(&both, &keys).unwrap();
    // A checkpoint signed by the retired key is nothing new: refused under the new list, as a
    // checkpoint that someone who left with the old key signs today would be.
    refused(
        d,
        &p1,
        &both,
        None,
        "not signed by any of the given audit keys",
    );
    // The kept checkpoint, under the old key, still counts as the start of a consistency proof.
    let (p2, kept2) = (s.dir.join("p2.json"), s.dir.join("kept2.checkpoint"));
    ok(
        s.prove(&p2, &kept2, Some(&kept)),
        "prove --since after the rotation",
    );
    let out = holds(d, &p2, &both, Some(&kept));
    assert!(out.contains("extends your checkpoint"), "{out}");
    // With only the old key, the new proof does not hold.
    refused(
        d,
        &p2,
        &s.vkey,
        Some(&kept),
        "not signed by any of the given audit keys",
    );
}
