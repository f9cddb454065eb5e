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
