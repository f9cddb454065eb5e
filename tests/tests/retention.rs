//! Retention on SQLite and PostgreSQL: a sweep crypto-shreds exactly the expired, unheld
//! (record, category) pairs of a hand-made expectation, certifies each, can run again, and a
//! released hold lets the next sweep shred. Time moves by an injected clock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use vault_core::{
    Category, FieldName, FieldValue, FieldView, ManualClock, RecordId, RecordType, SubjectId,
    SubjectKind, SweepOptions, VaultError,
};
use vault_tests::{Backend, TestVault, on_both_backends};

on_both_backends!(
    sweep_shreds_exactly_what_expired,
    a_sweep_deletes_nothing_it_cannot_certify
);

fn t(s: &str) -> DateTime<Utc> {
    format!("{s}T10:00:00Z").parse().unwrap()
}

fn dry() -> SweepOptions {
    SweepOptions {
        dry_run: true,
        ..SweepOptions::default()
    }
}

fn f(pairs: &[(&str, &str)]) -> BTreeMap<FieldName, FieldValue> {
    pairs
        .iter()
        .map(|(k, v)| (FieldName::parse(k).unwrap(), FieldValue::text(v)))
        .collect()
}

async fn subject(tv: &TestVault, kind: SubjectKind) -> SubjectId {
    vault_tests::new_subject(&tv.vault, kind).await
}

async fn sweep_shreds_exactly_what_expired(backend: Backend) {
    let clock = Arc::new(ManualClock::new(t("2019-01-10")));
    let tv = TestVault::with_clock(backend, clock.clone()).await;
    let v = &tv.vault;
    let student = RecordType::parse("student").unwrap();
    let full = f(&[
        ("full_name", "MARKER-name"),       // identity: 75y after leaving
        ("address", "MARKER-address"),      // contact: 3y after leaving
        ("health_issues", "MARKER-health"), // health: 5y after leaving
        ("religion", "MARKER-religion"),    // religion: 1y after leaving
    ]);
    // A left in 2020; B too, but under a legal hold; C left recently; D never left.
    let (a, b, c, d) = (
        subject(&tv, SubjectKind::Student).await,
        subject(&tv, SubjectKind::Student).await,
        subject(&tv, SubjectKind::Student).await,
        subject(&tv, SubjectKind::Student).await,
    );
    let ra = v.write_record(a, &student, &full).await.unwrap().id;
    let rb = v.write_record(b, &student, &full).await.unwrap().id;
    let rc = v.write_record(c, &student, &full).await.unwrap().id;
    let rd = v.write_record(d, &student, &full).await.unwrap().id;
    // G: a record holding only religion, left in 2020: the whole record goes.
    let g = subject(&tv, SubjectKind::Student).await;
    let rg = v
        .write_record(g, &student, &f(&[("religion", "MARKER-g")]))
        .await
        .unwrap()
        .id;
    // E: staff memos (correspondence: 5y after the record was created in 2019); E never left.
    let e = subject(&tv, SubjectKind::Staff).await;
    let re = v
        .write_record(
            e,
            &RecordType::parse("staff").unwrap(),
            &f(&[("full_name", "MARKER-e")]),
        )
        .await
        .unwrap()
        .id;
    let memos = f(&[("memos_requests", "MARKER-memo")]);
    let memo_fields: BTreeMap<_, _> = memos
        .into_iter()
        .map(|(k, v)| (k, vault_core::FieldChange::Set(v)))
        .collect();
    v.update_record(re, 1, &memo_fields).await.unwrap();

    for s in [a, b, g] {
        v.mark_left("registrar", s, t("2020-01-01")).await.unwrap();
    }
    v.mark_left("registrar", c, t("2026-06-01")).await.unwrap();
    let hold = v
        .place_hold("privacy_officer", b, None, "court case 2-118/2026")
        .await
        .unwrap();
    assert!(
        v.place_hold("privacy_officer", b, Some(ra), "wrong record")
            .await
            .is_err()
    );

    clock.set(t("2026-12-01"));
    let c = |s: &str| Category::parse(s).unwrap();
    let expected: BTreeSet<(RecordId, Category)> = [
        (ra, c("contact")),
        (ra, c("health")),
        (ra, c("religion")),
        (rg, c("religion")),
        (re, c("correspondence")),
    ]
    .into_iter()
    .collect();

    let plan = v.retention_plan().await.unwrap();
    let due: BTreeSet<_> = plan
        .iter()
        .filter(|i| i.expires_on <= t("2026-12-01").date_naive() && !i.held)
        .map(|i| (i.record, i.category.clone()))
        .collect();
    assert_eq!(
        due, expected,
        "the plan agrees with the hand-made expectation"
    );
    assert!(plan.iter().any(|i| i.record == rb && i.held));
    assert!(
        plan.iter()
            .any(|i| i.record == ra && i.rule == "health: 5y after left_school")
    );
    assert!(
        !plan.iter().any(|i| i.record == rd),
        "never left: nothing expires"
    );

    // A dry run shreds nothing.
    let (dry_list, dry) = vault_tests::sweep(v, dry()).await.unwrap();
    assert_eq!(dry.records, dry_list.len());
    let dry_set: BTreeSet<_> = dry_list
        .iter()
        .flat_map(|(r, cs)| cs.iter().map(move |c| (*r, c.clone())))
        .collect();
    assert_eq!(dry_set, expected);
    assert_eq!(dry.held, 3, "B's contact, health and religion are held");
    assert_eq!(v.retention_plan().await.unwrap().len(), plan.len());

    // Two records a page: six records make three pages, so paging must lose nothing.
    let paged = SweepOptions {
        records_per_page: 2,
        ..SweepOptions::default()
    };
    let (done, _) = vault_tests::sweep(v, paged).await.unwrap();
    let done_set: BTreeSet<_> = done
        .iter()
        .flat_map(|(r, cs)| cs.iter().map(move |c| (*r, c.clone())))
        .collect();
    assert_eq!(done_set, expected);

    // A keeps its name, loses the rest; G is gone; B, C, D untouched; E keeps its name.
    let all: BTreeSet<Category> = v.catalog().collected_categories().cloned().collect();
    let view = v.read_record(ra, &all).await.unwrap();
    assert_eq!(
        view.fields.keys().map(|k| k.as_str()).collect::<Vec<_>>(),
        vec!["full_name"]
    );
    assert!(matches!(
        v.read_record(rg, &all).await.unwrap_err(),
        VaultError::RecordShredded(_)
    ));
    assert_eq!(v.dek_count(rg).await.unwrap(), 0);
    assert_eq!(
        v.dek_count(ra).await.unwrap(),
        1,
        "only the identity key is left"
    );
    for r in [rb, rc, rd] {
        let view = v.read_record(r, &all).await.unwrap();
        assert_eq!(view.fields.len(), 4);
        assert!(vault_tests::every_field_opens(&view), "{r} keeps its data");
    }
    let ve = v.read_record(re, &all).await.unwrap();
    assert!(matches!(
        ve.fields[&FieldName::parse("full_name").unwrap()],
        FieldView::Open { .. }
    ));
    assert!(
        !ve.fields
            .contains_key(&FieldName::parse("memos_requests").unwrap())
    );

    // Certified in the audit log and the shred log; a second sweep has nothing to do.
    let log = v.audit_entries().await.unwrap();
    let certs: Vec<_> = log
        .iter()
        .filter(|e| e.action == "retention.shred")
        .collect();
    assert_eq!(certs.len(), 3);
    assert!(certs.iter().all(|e| {
        e.reason
            .as_deref()
            .unwrap()
            .starts_with("shred certificate: rule")
    }));
    // Each certificate counts what its own record lost, and says whether the record is gone.
    let cert = |r: RecordId| {
        certs
            .iter()
            .find(|e| e.record.as_deref() == Some(r.to_string().as_str()))
            .and_then(|e| e.reason.clone())
            .unwrap()
    };
    assert!(
        cert(ra).ends_with("; 3 keys destroyed, 3 fields deleted"),
        "{}",
        cert(ra)
    );
    assert!(
        cert(rg).ends_with("; 1 keys destroyed, 1 fields deleted; record shredded"),
        "{}",
        cert(rg)
    );
    assert!(
        cert(re).ends_with("; 1 keys destroyed, 1 fields deleted"),
        "{}",
        cert(re)
    );
    assert!(!format!("{log:?}").contains("MARKER"));
    assert_eq!(v.shred_log().await.unwrap().len(), 3);
    assert_eq!(
        vault_tests::sweep(v, SweepOptions::default())
            .await
            .unwrap()
            .1
            .records,
        0
    );

    // Releasing the hold lets the next sweep shred B's expired data.
    v.release_hold("privacy_officer", &hold.id, "case closed by the court")
        .await
        .unwrap();
    let (again, _) = vault_tests::sweep(v, SweepOptions::default())
        .await
        .unwrap();
    assert_eq!(
        again,
        vec![(rb, vec![c("contact"), c("health"), c("religion")])]
    );
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
}

async fn a_sweep_deletes_nothing_it_cannot_certify(backend: Backend) {
    let clock = Arc::new(ManualClock::new(t("2019-01-10")));
    let tv = TestVault::with_clock(backend, clock.clone()).await;
    let v = &tv.vault;
    let s = subject(&tv, SubjectKind::Student).await;
    let student = RecordType::parse("student").unwrap();
    let r = v
        .write_record(s, &student, &f(&[("religion", "MARKER-r")]))
        .await
        .unwrap()
        .id;
    v.mark_left("registrar", s, t("2020-01-01")).await.unwrap();
    clock.set(t("2026-12-01"));

    // The certificate cannot be written: the keys are already gone (they go first), but the
    // deletions and the shred log roll back with the certificate.
    let db = tv.stores.raw_data().await;
    vault_tests::refuse_inserts(&db, "audit_log", "record_id", r).await;
    assert!(
        vault_tests::sweep(v, SweepOptions::default())
            .await
            .is_err()
    );
    assert_eq!(v.dek_count(r).await.unwrap(), 0);
    assert!(v.shred_log().await.unwrap().is_empty());
    let log = v.audit_entries().await.unwrap();
    assert!(!log.iter().any(|e| e.action == "retention.shred"));

    // The next sweep finds the record still due, finishes and certifies what it deleted.
    vault_tests::allow_inserts(&db, "audit_log").await;
    let (done, _) = vault_tests::sweep(v, SweepOptions::default())
        .await
        .unwrap();
    assert_eq!(done, vec![(r, vec![Category::parse("religion").unwrap()])]);
    let log = v.audit_entries().await.unwrap();
    let certs: Vec<_> = log
        .iter()
        .filter(|e| e.action == "retention.shred")
        .collect();
    assert_eq!(certs.len(), 1);
    let reason = certs[0].reason.as_deref().unwrap();
    assert!(
        reason.ends_with("; 0 keys destroyed, 1 fields deleted; record shredded"),
        "{reason}"
    );
    assert_eq!(v.shred_log().await.unwrap().len(), 1);
    assert!(matches!(
        v.read_record(r, &BTreeSet::new()).await.unwrap_err(),
        VaultError::RecordShredded(_)
    ));
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
}
