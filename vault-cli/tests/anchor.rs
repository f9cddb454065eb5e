//! `vaultctl audit verify` against the audit anchor: a cut tail (head and checkpoints rewound
//! to match) exits 1 naming the range; `--witness` names a cut that both stores hide; and what
//! vaultctl itself appends is anchored before it exits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Output;

use vault_core::AnchorOptions;
use vault_tests::audit_edit::{anchored_seq, copy_anchor, cut_after, max_seq, put_anchor_back};
use vault_tests::{Backend, TestStores, TestVault, on_both_backends};

on_both_backends!(vaultctl_names_a_cut_tail_with_exit_1);

fn vaultctl(stores: &TestStores, identity: &Path, args: &[&str]) -> Output {
    let o = stores
        .vaultctl(env!("CARGO_BIN_EXE_vaultctl"))
        .args(args)
        .arg("--identity")
        .arg(identity)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    o
}

fn ok(stores: &TestStores, identity: &Path, args: &[&str]) -> String {
    let o = vaultctl(stores, identity, args);
    assert!(
        o.status.success(),
        "vaultctl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(stores: &TestStores, identity: &Path, args: &[&str]) -> String {
    let o = vaultctl(stores, identity, args);
    assert_eq!(o.status.code(), Some(1), "vaultctl {args:?} should fail");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn vaultctl_names_a_cut_tail_with_exit_1(backend: Backend) {
    let t = TestVault::new(backend).await;
    let witness: PathBuf = t.stores.dir.path().join("witness.jsonl");
    t.vault
        .configure_audit_anchors(AnchorOptions {
            witness_file: Some(witness.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..4 {
        t.vault
            .record_operator_event("test", "test.event", format!("event {i}"))
            .await
            .unwrap();
    }
    let old = t.vault.sync_audit_anchor().await.unwrap();
    let copy = copy_anchor(&t.stores.config).await;
    for i in 0..4 {
        t.vault
            .record_operator_event("test", "test.event", format!("event {i}"))
            .await
            .unwrap();
    }
    t.vault.sync_audit_anchor().await.unwrap();
    let TestVault {
        stores,
        vault,
        identity,
        ..
    } = t;
    drop(vault);
    let w = witness.to_str().unwrap();
    assert!(
        ok(&stores, &identity, &["audit", "verify", "--witness", w])
            .starts_with("audit log intact")
    );

    // What vaultctl appends (a rotation's entry) is anchored before it exits.
    ok(
        &stores,
        &identity,
        &["keyring", "rotate", "--category", "health"],
    );
    // The audit key rotated (a custodian left): the old key's checkpoints and the witness
    // file's anchor, signed by the old key, still verify.
    let said = ok(&stores, &identity, &["keyring", "rotate-audit-key"]);
    assert!(said.contains("1 retired audit keys are kept"), "{said}");
    assert!(
        ok(&stores, &identity, &["audit", "verify", "--witness", w])
            .starts_with("audit log intact")
    );
    let n = max_seq(&stores.config).await;
    assert_eq!(anchored_seq(&stores.config).await, Some(n));

    // The tail cut, the head and checkpoints rewound: exit 1, naming the range.
    cut_after(&stores.config, n - 3).await;
    let err = fails(&stores, &identity, &["audit", "verify"]);
    assert!(
        err.contains(&format!(
            "entries {} to {n} are missing; the anchor of ",
            n - 2
        )) && err.contains(&format!("in the key store names {n}")),
        "{err}"
    );

    // Both stores edited (the cut goes back to an older anchor, which is put back too): the
    // stores agree, and the witness file names what is missing.
    cut_after(&stores.config, old.seq).await;
    put_anchor_back(&stores.config, copy).await;
    ok(&stores, &identity, &["audit", "verify"]);
    let err = fails(&stores, &identity, &["audit", "verify", "--witness", w]);
    assert!(
        err.contains(&format!("entries {} to ", old.seq + 1))
            && err.contains("in the witness file names"),
        "{err}"
    );
    let missing = stores.dir.path().join("nowhere.jsonl");
    let err = fails(
        &stores,
        &identity,
        &["audit", "verify", "--witness", missing.to_str().unwrap()],
    );
    assert!(err.contains("does not exist"), "{err}");
}
