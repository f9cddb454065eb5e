//! Backup and restore through the core, on SQLite and PostgreSQL, checked so that a restore
//! that does nothing, or one that skips the shred-log replay, fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;

use sea_orm::ConnectionTrait;
use vault_core::{
    FieldChange, FieldName, FieldValue, FieldView, RecordId, RecordType, SubjectKind, Unlock,
    VaultError, backup, restore,
};
use vault_tests::{Backend, TestVault, on_both_backends};

on_both_backends!(
    a_restore_brings_back_the_backed_up_state,
    a_restore_that_cannot_read_the_live_shred_log_changes_nothing,
);

fn all_categories(c: &vault_core::Catalog) -> std::collections::BTreeSet<vault_core::Category> {
    c.collected_categories().cloned().collect()
}

fn name(s: &str) -> FieldName {
    FieldName::parse(s).unwrap()
}

/// The record's full name as it opens, or the error reading it.
async fn full_name(t: &TestVault, id: RecordId) -> Result<Option<String>, VaultError> {
    let v = t
        .vault
        .read_record(id, &all_categories(t.vault.catalog()))
        .await?;
    Ok(match &v.fields[&name("full_name")] {
        FieldView::Open { value, .. } => value.to_json().as_str().map(str::to_owned),
        FieldView::Sealed { .. } => None,
    })
}

fn is_text(f: &Option<String>, want: &str) -> bool {
    f.as_deref() == Some(want)
}

/// Before: the tests made only shreds after the backup, so a restore that did nothing left the
/// same state and passed. Here an update, a new record and a shred follow the backup, and each
/// must be undone or kept as the backup and the shred log say.
async fn a_restore_brings_back_the_backed_up_state(backend: Backend) {
    let t = TestVault::new(backend).await;
    let rt = RecordType::parse("student").unwrap();
    let subject = vault_tests::new_subject(&t.vault, SubjectKind::Student).await;
    let f = |n: &str| -> BTreeMap<FieldName, FieldValue> {
        [(name("full_name"), FieldValue::text(n))]
            .into_iter()
            .collect()
    };
    let kept = t
        .vault
        .write_record(subject, &rt, &f("Before"))
        .await
        .unwrap();
    let shred_later = t
        .vault
        .write_record(subject, &rt, &f("Shred me"))
        .await
        .unwrap();
    let dir = t.stores.dir.path().join("backup");
    backup(t.vault.stores(), &dir, None).await.unwrap();

    let changes: BTreeMap<_, _> = [(
        name("full_name"),
        FieldChange::Set(FieldValue::text("After")),
    )]
    .into_iter()
    .collect();
    t.vault
        .update_record(kept.id, kept.version, &changes)
        .await
        .unwrap();
    let added = t
        .vault
        .write_record(subject, &rt, &f("Added"))
        .await
        .unwrap();
    t.vault.shred_record(shred_later.id).await.unwrap();
    assert!(is_text(&full_name(&t, kept.id).await.unwrap(), "After"));

    let unlock = Unlock::identity_file(&t.identity).unwrap();
    let report = restore(t.vault.stores(), &dir, &unlock).await.unwrap();
    assert_eq!(
        report.shreds_replayed, 1,
        "the shred after the backup is re-applied"
    );
    let t = t.reopen().await.unwrap();
    assert!(
        is_text(&full_name(&t, kept.id).await.unwrap(), "Before"),
        "the update after the backup is undone"
    );
    assert!(
        matches!(
            full_name(&t, added.id).await,
            Err(VaultError::RecordNotFound(_))
        ),
        "a record made after the backup is gone"
    );
    assert!(
        matches!(
            full_name(&t, shred_later.id).await,
            Err(VaultError::RecordShredded(_))
        ),
        "a record shredded after the backup stays shredded"
    );
    assert_eq!(t.vault.dek_count(shred_later.id).await.unwrap(), 0);
}

/// Before: a failed read of the live shred log counted as "no shreds to replay", so the
/// restore quietly brought destroyed data back.
async fn a_restore_that_cannot_read_the_live_shred_log_changes_nothing(backend: Backend) {
    let t = TestVault::new(backend).await;
    let rt = RecordType::parse("student").unwrap();
    let subject = vault_tests::new_subject(&t.vault, SubjectKind::Student).await;
    let f: BTreeMap<_, _> = [(name("full_name"), FieldValue::text("Before"))]
        .into_iter()
        .collect();
    let r = t.vault.write_record(subject, &rt, &f).await.unwrap();
    let dir = t.stores.dir.path().join("backup");
    backup(t.vault.stores(), &dir, None).await.unwrap();
    t.vault.shred_record(r.id).await.unwrap();
    let raw = t.stores.raw_data().await;
    raw.execute_unprepared("ALTER TABLE shred_log RENAME TO shred_log_moved")
        .await
        .unwrap();
    let unlock = Unlock::identity_file(&t.identity).unwrap();
    let err = restore(t.vault.stores(), &dir, &unlock)
        .await
        .expect_err("the restore must refuse");
    assert!(
        err.to_string().contains("cannot read the live shred log"),
        "{err}"
    );
    raw.execute_unprepared("ALTER TABLE shred_log_moved RENAME TO shred_log")
        .await
        .unwrap();
    assert!(
        matches!(
            full_name(&t, r.id).await,
            Err(VaultError::RecordShredded(_))
        ),
        "nothing was restored: the shredded record stays shredded"
    );
}
