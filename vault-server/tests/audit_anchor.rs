//! `GET /v1/audit/verify` on a running server against the audit anchor: the newest entries cut
//! behind its back, with the head and the checkpoints rewound to match, are named as missing;
//! the server's `--audit-witness` file gets one JSON line per anchor.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, start_full};
use vault_tests::audit_edit::{anchored_seq, cut_after, max_seq};
use vault_tests::{Backend, on_both_backends};

on_both_backends!(the_verify_endpoint_names_a_cut_tail);

fn config(s: &Server) -> vault_core::StoreConfig {
    match s.stores.backend {
        Backend::Sqlite => {
            vault_core::StoreConfig::sqlite_dir(&s.stores.dir.path().join("vault-data")).unwrap()
        }
        Backend::Postgres => s.stores.config.clone(),
    }
}

/// Anchors go with checkpoints, off the request path: waits until the newest entry is anchored.
async fn anchored(cfg: &vault_core::StoreConfig) -> i64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let n = max_seq(cfg).await;
        if anchored_seq(cfg).await == Some(n) {
            return n;
        }
        assert!(std::time::Instant::now() < deadline, "never anchored {n}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn the_verify_endpoint_names_a_cut_tail(backend: Backend) {
    let witness_dir = tempfile::tempdir().unwrap();
    let witness = witness_dir.path().join("vault-1.jsonl");
    let s = start_full(
        backend,
        None,
        &["--audit-witness", witness.to_str().unwrap()],
    )
    .await;
    for _ in 0..6 {
        s.new_student();
    }
    let cfg = config(&s);
    anchored(&cfg).await;
    let v = s.get("/v1/audit/verify", "auditor", None).json();
    assert_eq!(v["intact"], true, "{v}");

    let n = anchored(&cfg).await;
    let last: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&witness)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["seq"], n, "the witness has the newest anchor: {last}");
    cut_after(&cfg, n - 3).await;
    let v = s.get("/v1/audit/verify", "auditor", None).json();
    assert_eq!(v["intact"], false, "{v}");
    let p = v["problem"].as_str().unwrap();
    assert!(
        p.starts_with(&format!(
            "entries {} to {n} are missing; the anchor of ",
            n - 2
        )) && p.contains(&format!("names {n}")),
        "{p}"
    );
    s.stop(&[]);
}
