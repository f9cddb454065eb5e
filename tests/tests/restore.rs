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
    a_restore_keeps_todays_security_state,
    a_restore_over_a_diverged_audit_log_refuses_or_names_the_range,
    a_restore_over_an_emptied_audit_log_is_refused,
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

/// Issue 13: a restore undid security decisions made after the backup: a revoked token worked
/// again, a block and a consent withdrawal were lifted, a spent approval use came back, and the
/// audit entries since the backup were lost while `verify` said intact.
async fn a_restore_keeps_todays_security_state(backend: Backend) {
    use vault_core::{
        ConsentGiver, NewAccessRequest, NewConsent, Purpose, RestoredAudit, Role, Scope,
    };
    let t = TestVault::new(backend).await;
    let v = &t.vault;
    let school = Scope::parse("school-1").unwrap();
    let make = |name: &'static str, role: Role| {
        let school = school.clone();
        async move { v.create_principal(name, &[(school, role)]).await.unwrap() }
    };
    let (_, teacher_token) = make("Teacher", Role::Teacher).await;
    let (nurse, _) = make("Nurse", Role::Nurse).await;
    let (director, _) = make("Director", Role::Director).await;
    let (admissions, _) = make("Admissions", Role::Admissions).await;
    let (privacy, _) = make("Privacy officer", Role::PrivacyOfficer).await;
    let student = vault_tests::new_subject(v, SubjectKind::Student).await;
    let other = vault_tests::new_subject(v, SubjectKind::Student).await;
    let guardian = vault_tests::new_subject(v, SubjectKind::Guardian).await;
    let consent = |cats: &[&str]| NewConsent {
        subject: student,
        given_by: ConsentGiver::Guardian(guardian),
        method: "paper".into(),
        evidence_ref: "scan 2026/7".into(),
        text_version: "consent-v3".into(),
        categories: cats
            .iter()
            .map(|c| vault_core::Category::parse(c).unwrap())
            .collect(),
        third_party: false,
        cross_border: false,
        publication: false,
        term_until: None,
    };
    let adm = v.session(admissions.clone());
    adm.record_consent(consent(&["health"])).await.unwrap();
    let religion = adm.record_consent(consent(&["religion"])).await.unwrap();
    let rec = v
        .write_record(
            student,
            &RecordType::parse("student").unwrap(),
            &[
                (name("full_name"), FieldValue::text("Dana")),
                (
                    name("special_educational_needs"),
                    FieldValue::text("MARKER-sen"),
                ),
            ]
            .into_iter()
            .collect(),
        )
        .await
        .unwrap();
    let education = Purpose::parse("education").unwrap();
    let req = v
        .session(nurse.clone())
        .request_access(NewAccessRequest {
            subject: student,
            record: Some(rec.id),
            categories: vec![vault_core::Category::parse("health").unwrap()],
            purpose: education.clone(),
            act: vault_core::ApprovalAct::Read,
            justification: "hearing support plan for the term".into(),
        })
        .await
        .unwrap();
    v.session(director.clone())
        .approve(req.id, chrono::Utc::now() + chrono::Duration::hours(2), 2)
        .await
        .unwrap();
    let dir = t.stores.dir.path().join("backup");
    backup(v.stores(), &dir, None).await.unwrap();

    // After the backup: a revocation, a block, a withdrawal and one approval use.
    let teacher = v.authenticate(&teacher_token).await.unwrap();
    v.revoke_principal(teacher.id()).await.unwrap();
    let po = v.session(privacy.clone());
    po.block(other).await.unwrap();
    po.withdraw_consent(religion.id, None).await.unwrap();
    let hold = po
        .place_hold(student, None, "court order 3-77/2026")
        .await
        .unwrap();
    let sen_opens = |view: &vault_core::RecordView| {
        matches!(
            view.fields[&name("special_educational_needs")],
            FieldView::Open { .. }
        )
    };
    let nurse_s = v.session(nurse.clone());
    assert!(sen_opens(
        &nurse_s.read_record(rec.id, &education).await.unwrap()
    ));
    let entries_before = v.audit_entries().await.unwrap().len();

    let unlock = Unlock::identity_file(&t.identity).unwrap();
    let report = restore(v.stores(), &dir, &unlock).await.unwrap();
    assert_eq!(report.carried_over.revocations, 1, "{report:?}");
    assert_eq!(report.carried_over.blocks, 1, "{report:?}");
    assert_eq!(report.carried_over.withdrawals, 1, "{report:?}");
    assert_eq!(report.carried_over.approvals, 1, "{report:?}");
    assert_eq!(report.carried_over.holds, 1, "{report:?}");
    assert!(
        matches!(report.audit, RestoredAudit::Kept { since_backup } if since_backup > 0),
        "{report:?}"
    );
    let t = t.reopen().await.unwrap();
    let v = &t.vault;
    assert!(
        matches!(
            v.authenticate(&teacher_token).await,
            Err(VaultError::Unauthenticated)
        ),
        "the revoked token stays refused"
    );
    assert!(v.subject(other).await.unwrap().blocked, "still blocked");
    assert!(
        v.holds()
            .await
            .unwrap()
            .iter()
            .any(|h| h.id == hold.id && h.released_at.is_none()),
        "a court order placed after the backup still holds"
    );
    let consents = v.session(privacy.clone()).consents(student).await.unwrap();
    assert!(
        consents
            .iter()
            .any(|c| c.id == religion.id && c.withdrawn_at.is_some()),
        "the withdrawal stands"
    );
    // One use was left at the restore: one read opens, the next is sealed.
    let nurse_s = v.session(nurse.clone());
    assert!(sen_opens(
        &nurse_s.read_record(rec.id, &education).await.unwrap()
    ));
    assert!(!sen_opens(
        &nurse_s.read_record(rec.id, &education).await.unwrap()
    ));
    // The entries made since the backup are all still there, and the chain verifies.
    let entries = v.audit_entries().await.unwrap();
    assert!(
        entries.len() >= entries_before,
        "{} < {entries_before}",
        entries.len()
    );
    assert!(entries.iter().any(|e| e.action == "principal.revoke"));
    assert!(
        entries.iter().any(|e| e.action == "consent.withdraw"),
        "{entries:?}"
    );
    assert!(v.verify_audit().await.unwrap().problem.is_none());
}

/// A live audit log that does not continue the backup's is not silently replaced: the restore
/// refuses, and with `replace_audit_log` it says which range it removed.
async fn a_restore_over_a_diverged_audit_log_refuses_or_names_the_range(backend: Backend) {
    let t = TestVault::new(backend).await;
    let v = &t.vault;
    let subject = vault_tests::new_subject(v, SubjectKind::Student).await;
    v.write_record(
        subject,
        &RecordType::parse("student").unwrap(),
        &[(name("full_name"), FieldValue::text("Dana"))]
            .into_iter()
            .collect(),
    )
    .await
    .unwrap();
    // Entries in the log: a principal made, and one revoked.
    let (p, _) = v
        .create_principal(
            "Teacher",
            &[(
                vault_core::Scope::parse("school-1").unwrap(),
                vault_core::Role::Teacher,
            )],
        )
        .await
        .unwrap();
    v.revoke_principal(p.id()).await.unwrap();
    let dir = t.stores.dir.path().join("backup");
    backup(v.stores(), &dir, None).await.unwrap();
    let newest = v.audit_entries().await.unwrap().len() as i64;
    assert!(newest >= 2);
    // The live log no longer holds the backup's head as it was.
    let raw = t.stores.raw_data().await;
    raw.execute_unprepared(&format!(
        "UPDATE audit_log SET hash = prev_hash WHERE seq = {newest}"
    ))
    .await
    .unwrap();
    let unlock = Unlock::identity_file(&t.identity).unwrap();
    let err = restore(v.stores(), &dir, &unlock).await.unwrap_err();
    assert!(
        err.to_string().contains("does not continue the backup's")
            && err.to_string().contains("--replace-audit-log"),
        "{err}"
    );
    let err = vault_core::restore_with(
        v.stores(),
        &dir,
        &unlock,
        vault_core::RestoreOptions {
            replace_audit_log: true,
            audit_archive: None,
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("needs --audit-archive"), "{err}");
    let archive = t.stores.dir.path().join("replaced-audit.age");
    let r = vault_core::restore_with(
        v.stores(),
        &dir,
        &unlock,
        vault_core::RestoreOptions {
            replace_audit_log: true,
            audit_archive: Some(archive.clone()),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        r.audit,
        vault_core::RestoredAudit::Replaced {
            first: 1,
            last: newest,
            archive: archive.clone(),
        }
    );
    // The archive is an age file the custodian opens with the standard tool; it holds every
    // entry the store no longer does, the changed one included.
    let o = vault_tests::tool("age")
        .arg("-d")
        .arg("-i")
        .arg(&t.identity)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout).unwrap();
    let entries = text
        .lines()
        .filter(|l| l.starts_with(r#"{"t":"audit_log""#))
        .count();
    assert_eq!(entries as i64, newest, "{text}");
    assert!(text.contains(r#"{"t":"audit_head""#));
}

/// Review finding: a DBA who emptied the live audit log made the restore take it for new
/// stores and load the backup's log without a word; the key store's anchor still named the
/// entries beyond the backup.
async fn a_restore_over_an_emptied_audit_log_is_refused(backend: Backend) {
    let t = TestVault::new(backend).await;
    let v = &t.vault;
    for i in 0..3 {
        v.record_operator_event("test", "test.event", format!("before {i}"))
            .await
            .unwrap();
    }
    let dir = t.stores.dir.path().join("backup");
    backup(v.stores(), &dir, None).await.unwrap();
    for i in 0..3 {
        v.record_operator_event("test", "test.event", format!("after {i}"))
            .await
            .unwrap();
    }
    let anchor = v.sync_audit_anchor().await.expect("anchored");
    assert!(anchor.seq >= 6, "{}", anchor.seq);
    let raw = t.stores.raw_data().await;
    for table in ["audit_log", "audit_checkpoints", "audit_head"] {
        raw.execute_unprepared(&format!("DELETE FROM {table}"))
            .await
            .unwrap();
    }
    let unlock = Unlock::identity_file(&t.identity).unwrap();
    let err = restore(v.stores(), &dir, &unlock).await.unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "the key store's anchor names entry {}",
            anchor.seq
        )),
        "{err}"
    );
}
