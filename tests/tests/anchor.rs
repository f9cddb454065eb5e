//! The audit anchor outside the data store, attacked by editing the stores directly: the newest
//! entries cut with the head and the checkpoints rewound to match (the attack that passed
//! before the anchor), the key store's anchor put back to an older one as well, and what still
//! names the cut then: the running server's memory, the witness file. Each on both backends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use sea_orm::ConnectionTrait;
use vault_core::{Anchor, AnchorOptions, AnchorSource, AuditProblem, Vault};
use vault_tests::audit_edit::{anchored_seq, copy_anchor, cut_after, max_seq, put_anchor_back};
use vault_tests::{Backend, TestVault, on_both_backends};

on_both_backends!(
    an_untouched_log_verifies_against_its_anchor,
    a_cut_tail_is_named_by_the_key_store_anchor,
    an_older_anchor_put_back_is_caught_by_the_running_server,
    a_witness_file_names_a_cut_both_stores_hide,
    a_rotated_audit_key_verifies_across_the_boundary,
    the_old_audit_key_signs_nothing_after_a_rotation,
    a_process_with_the_old_key_stops_signing_until_it_loads_the_new,
);

/// Appends `n` batches of one entry each, each with its signed checkpoint.
async fn busy(v: &Vault, n: usize) {
    for i in 0..n {
        v.record_operator_event("test", "test.event", format!("event {i}"))
            .await
            .unwrap();
    }
}

/// An anchor after 4 batches (and a copy of its key-store row), then the newest after 6 more,
/// which names the head `n`.
async fn two_anchors(t: &TestVault) -> (Anchor, Vec<sea_orm::Value>, Anchor, i64) {
    busy(&t.vault, 4).await;
    let old = t.vault.sync_audit_anchor().await.unwrap();
    let copy = copy_anchor(&t.stores.config).await;
    busy(&t.vault, 6).await;
    let newest = t.vault.sync_audit_anchor().await.unwrap();
    let n = max_seq(&t.stores.config).await;
    assert_eq!(newest.seq, n);
    (old, copy, newest, n)
}

async fn problem(v: &Vault) -> Option<AuditProblem> {
    v.verify_audit().await.unwrap().problem
}

async fn an_untouched_log_verifies_against_its_anchor(backend: Backend) {
    let t = TestVault::new(backend).await;
    busy(&t.vault, 6).await;
    let anchor = t.vault.sync_audit_anchor().await.expect("anchored");
    let n = max_seq(&t.stores.config).await;
    assert_eq!(anchor.seq, n, "the newest checkpoint is anchored");
    assert_eq!(
        anchored_seq(&t.stores.config).await,
        Some(n),
        "in the key store"
    );
    assert_eq!(problem(&t.vault).await, None);

    // A fresh process reads the anchor from the key store, and the log still verifies.
    let t = t.reopen().await.unwrap();
    assert_eq!(problem(&t.vault).await, None);
    busy(&t.vault, 3).await;
    t.vault.sync_audit_anchor().await;
    let n = max_seq(&t.stores.config).await;
    assert_eq!(
        anchored_seq(&t.stores.config).await,
        Some(n),
        "it moves forward"
    );
    assert_eq!(problem(&t.vault).await, None);

    // The anchor is signed: one changed field is refused, naming where it was read.
    let keys = t.stores.raw_keys().await;
    keys.execute_unprepared("UPDATE audit_anchor SET seq = seq + 1000")
        .await
        .unwrap();
    assert_eq!(
        problem(&t.vault).await,
        Some(AuditProblem::BadAnchor {
            source: AnchorSource::KeyStore
        })
    );
    keys.execute_unprepared("UPDATE audit_anchor SET seq = seq - 1000")
        .await
        .unwrap();
    assert_eq!(problem(&t.vault).await, None);
}

async fn a_cut_tail_is_named_by_the_key_store_anchor(backend: Backend) {
    let t = TestVault::new(backend).await;
    busy(&t.vault, 10).await;
    let anchor = t.vault.sync_audit_anchor().await.unwrap();
    let n = max_seq(&t.stores.config).await;
    assert_eq!(anchor.seq, n);
    let keep = n - 5;
    cut_after(&t.stores.config, keep).await;

    let want = AuditProblem::TailMissing {
        from: keep + 1,
        to: n,
        anchored_at: anchor.at,
        source: AnchorSource::KeyStore,
    };
    assert_eq!(problem(&t.vault).await, Some(want.clone()));
    let text = want.to_string();
    assert!(
        text.starts_with(&format!(
            "entries {} to {n} are missing; the anchor of ",
            keep + 1
        )) && text.contains(&format!("in the key store names {n}")),
        "{text}"
    );

    // A fresh process (vaultctl, a restarted server) reads the same from the key store.
    let t = t.reopen().await.unwrap();
    assert_eq!(problem(&t.vault).await, Some(want));

    // New entries continue the chain from the cut, past the anchored seq: the anchor never
    // moves over the cut, and the entry now at its seq is named as not the anchored one.
    busy(&t.vault, 10).await;
    t.vault.sync_audit_anchor().await;
    assert!(max_seq(&t.stores.config).await > n);
    assert_eq!(
        anchored_seq(&t.stores.config).await,
        Some(n),
        "the anchor stays"
    );
    assert_eq!(
        problem(&t.vault).await,
        Some(AuditProblem::AnchorDiffers {
            seq: n,
            anchored_at: anchor.at,
            source: AnchorSource::KeyStore
        })
    );
}

async fn an_older_anchor_put_back_is_caught_by_the_running_server(backend: Backend) {
    let t = TestVault::new(backend).await;
    let (old, copy, newest, n) = two_anchors(&t).await;

    // Both stores edited: the log cut back to the old anchor's entry, the old (validly signed)
    // anchor row put back in the key store. The key store and the data store now agree.
    cut_after(&t.stores.config, old.seq).await;
    put_anchor_back(&t.stores.config, copy).await;
    assert_eq!(anchored_seq(&t.stores.config).await, Some(old.seq));

    // The running server still holds the newest anchor it wrote.
    assert_eq!(
        problem(&t.vault).await,
        Some(AuditProblem::TailMissing {
            from: old.seq + 1,
            to: n,
            anchored_at: newest.at,
            source: AnchorSource::Memory
        })
    );
    // It keeps serving, and writes no anchor over the cut: the key store keeps the old one.
    busy(&t.vault, 10).await;
    t.vault.sync_audit_anchor().await;
    assert!(max_seq(&t.stores.config).await > n);
    assert_eq!(anchored_seq(&t.stores.config).await, Some(old.seq));
    assert_eq!(
        problem(&t.vault).await,
        Some(AuditProblem::AnchorDiffers {
            seq: n,
            anchored_at: newest.at,
            source: AnchorSource::Memory
        })
    );

    // The limit (docs/THREAT_MODEL.md): a process started after both stores were edited, with
    // no witness configured, knows only the two stores, and they agree.
    let t = t.reopen().await.unwrap();
    assert_eq!(problem(&t.vault).await, None);
}

async fn a_witness_file_names_a_cut_both_stores_hide(backend: Backend) {
    let t = TestVault::new(backend).await;
    let witness = t.stores.dir.path().join("witness").join("vault-1.jsonl");
    std::fs::create_dir_all(witness.parent().unwrap()).unwrap();
    let opts = AnchorOptions {
        witness_file: Some(witness.clone()),
        // Every checkpoint, so the file shows one line per anchor.
        min_interval: std::time::Duration::ZERO,
        ..Default::default()
    };
    t.vault.configure_audit_anchors(opts.clone()).await.unwrap();
    let (old, copy, newest, n) = two_anchors(&t).await;

    // One JSON line per anchor, the seq only going up, the newest naming the head.
    let text = std::fs::read_to_string(&witness).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{text}");
    assert!(lines.iter().all(|l| l["kind"] == "audit_anchor"
        && l["hash"].as_str().unwrap().len() == 64
        && l["signature"].as_str().unwrap().len() == 128));
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(*seqs.last().unwrap(), n);

    // Both stores edited as before, and the server restarted: only the witness remembers.
    cut_after(&t.stores.config, old.seq).await;
    put_anchor_back(&t.stores.config, copy).await;
    let t = t.reopen().await.unwrap();
    assert_eq!(problem(&t.vault).await, None, "the two stores agree");
    t.vault.configure_audit_anchors(opts).await.unwrap();
    let want = AuditProblem::TailMissing {
        from: old.seq + 1,
        to: n,
        anchored_at: newest.at,
        source: AnchorSource::Witness,
    };
    assert_eq!(problem(&t.vault).await, Some(want));
    assert!(
        problem(&t.vault)
            .await
            .unwrap()
            .to_string()
            .contains("in the witness file names"),
    );
    // And the restarted server, knowing the witness's anchor, anchors nothing over the cut.
    let lines_before = std::fs::read_to_string(&witness).unwrap().lines().count();
    busy(&t.vault, 10).await;
    t.vault.sync_audit_anchor().await;
    assert_eq!(anchored_seq(&t.stores.config).await, Some(old.seq));
    assert_eq!(
        std::fs::read_to_string(&witness).unwrap().lines().count(),
        lines_before
    );
    assert!(matches!(
        problem(&t.vault).await,
        Some(AuditProblem::AnchorDiffers { seq, source: AnchorSource::Witness, .. }) if seq == n
    ));
}

/// The audit-signing seed the vault holds now (the second key of the test hook's list).
async fn audit_seed(v: &Vault) -> Vec<u8> {
    v.test_hooks_key_material().await.unwrap()[1].clone()
}

/// A checkpoint's signed message, as an outside verifier rebuilds it.
fn checkpoint_message(seq: i64, hash: &[u8]) -> Vec<u8> {
    let mut m = b"school-vault/audit-checkpoint/v1\0".to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

/// Checkpoints as stored: (seq, hash, signature).
async fn checkpoints(t: &TestVault) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let db = t.stores.raw_data().await;
    db.query_all_raw(sea_orm::Statement::from_string(
        db.get_database_backend(),
        "SELECT seq, hash, signature FROM audit_checkpoints ORDER BY seq",
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| {
        (
            r.try_get::<i64>("", "seq").unwrap(),
            r.try_get::<Vec<u8>>("", "hash").unwrap(),
            r.try_get::<Vec<u8>>("", "signature").unwrap(),
        )
    })
    .collect()
}

fn signed_by(seed: &[u8], seq: i64, hash: &[u8], sig: &[u8]) -> bool {
    use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
    let pair = Ed25519KeyPair::from_seed_unchecked(seed).unwrap();
    UnparsedPublicKey::new(&ED25519, pair.public_key().as_ref())
        .verify(&checkpoint_message(seq, hash), sig)
        .is_ok()
}

/// Checkpoints before a rotation are the old key's, those from the rotation's own entry on
/// the new key's; `verify` passes over both, in this process and in a fresh one that reads the
/// retired key from the stored keyring.
async fn a_rotated_audit_key_verifies_across_the_boundary(backend: Backend) {
    let t = TestVault::new(backend).await;
    busy(&t.vault, 3).await;
    let old = audit_seed(&t.vault).await;
    assert_eq!(t.vault.rotate_audit_key(None).await.unwrap(), 1);
    let new = audit_seed(&t.vault).await;
    assert_ne!(old, new, "the audit key changed");
    busy(&t.vault, 3).await;
    let cps = checkpoints(&t).await;
    let boundary = cps
        .iter()
        .position(|(seq, hash, sig)| signed_by(&new, *seq, hash, sig))
        .expect("a checkpoint under the new key");
    assert!(boundary >= 3, "{boundary}");
    for (i, (seq, hash, sig)) in cps.iter().enumerate() {
        let key = if i < boundary { &old } else { &new };
        assert!(signed_by(key, *seq, hash, sig), "checkpoint {seq}");
    }
    let r = t.vault.verify_audit().await.unwrap();
    assert!(r.problem.is_none(), "{:?}", r.problem);
    assert_eq!(r.checkpoints, cps.len() as u64);
    t.vault.sync_audit_anchor().await.unwrap();
    let t = t.reopen().await.unwrap();
    let r = t.vault.verify_audit().await.unwrap();
    assert!(r.problem.is_none(), "after a restart: {:?}", r.problem);
    // Rotated twice: both retired keys still verify their checkpoints.
    assert_eq!(t.vault.rotate_audit_key(None).await.unwrap(), 2);
    busy(&t.vault, 2).await;
    let r = t.vault.verify_audit().await.unwrap();
    assert!(
        r.problem.is_none(),
        "after a second rotation: {:?}",
        r.problem
    );
}

/// A custodian who left took the old audit key. With write access to the data store, a
/// checkpoint re-signed with it after the rotation is refused: along the chain keys only move
/// forward.
async fn the_old_audit_key_signs_nothing_after_a_rotation(backend: Backend) {
    let t = TestVault::new(backend).await;
    busy(&t.vault, 2).await;
    let old = audit_seed(&t.vault).await;
    t.vault.rotate_audit_key(None).await.unwrap();
    busy(&t.vault, 2).await;
    let (seq, hash, _) = checkpoints(&t).await.pop().unwrap();
    let forged = ring::signature::Ed25519KeyPair::from_seed_unchecked(&old)
        .unwrap()
        .sign(&checkpoint_message(seq, &hash));
    let db = t.stores.raw_data().await;
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            "UPDATE audit_checkpoints SET signature = $1 WHERE seq = $2"
        }
        _ => "UPDATE audit_checkpoints SET signature = ? WHERE seq = ?",
    };
    db.execute_raw(sea_orm::Statement::from_sql_and_values(
        db.get_database_backend(),
        sql,
        [forged.as_ref().to_vec().into(), seq.into()],
    ))
    .await
    .unwrap();
    let r = t.vault.verify_audit().await.unwrap();
    assert_eq!(r.problem, Some(AuditProblem::BadCheckpoint { seq }));
}

/// Two processes on the same stores; one rotates the audit key. The other, still holding the
/// old key, chains its entries without checkpoints (nothing signed by the old key follows one
/// signed by the new), and signs with the new key once it loads the keyring (its readiness
/// check does). The log verifies throughout.
async fn a_process_with_the_old_key_stops_signing_until_it_loads_the_new(backend: Backend) {
    let t = TestVault::new(backend).await;
    busy(&t.vault, 2).await;
    let custodian = Vault::open(
        t.stores.open().await,
        vault_tests::policy().await,
        vault_core::Unlock::identity_file(&t.identity).unwrap(),
    )
    .await
    .unwrap();
    custodian.rotate_audit_key(None).await.unwrap();
    let before = checkpoints(&t).await.len();
    busy(&t.vault, 3).await;
    assert_eq!(
        checkpoints(&t).await.len(),
        before,
        "the stale process signed nothing"
    );
    let r = custodian.verify_audit().await.unwrap();
    assert!(r.problem.is_none(), "{:?}", r.problem);
    assert_eq!(r.entries, max_seq(&t.stores.config).await as u64);
    t.vault.check_ready().await.unwrap();
    busy(&t.vault, 2).await;
    assert_eq!(checkpoints(&t).await.len(), before + 2);
    for v in [&t.vault, &custodian] {
        let r = v.verify_audit().await.unwrap();
        assert!(r.problem.is_none(), "{:?}", r.problem);
    }
}
