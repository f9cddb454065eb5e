//! Who may decrypt what, end to end on SQLite and PostgreSQL: approvals, break-glass, consent
//! and withdrawal, write-only admissions, tokens, and a tamper-evident audit log. Time moves by
//! an injected clock, never by sleeping.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, Utc};
use sea_orm::{ConnectionTrait, Statement};
use vault_core::{
    AuditProblem, BREAK_GLASS_REVIEW_DUE, BREAK_GLASS_WINDOW, BearerToken, Category, ConsentGiver,
    FieldChange, FieldName, FieldValue, FieldView, LegalGround, ManualClock, NewAccessRequest,
    NewConsent, Principal, Purpose, RecordId, RecordType, Role, SchoolId, Scope, SealReason,
    SubjectId, SubjectKind, VaultError,
};
use vault_tests::{Backend, TestVault, contains, on_both_backends};

on_both_backends!(
    two_bootstraps_at_once_make_one_principal,
    approvals_gate_special_reads,
    break_glass_opens_at_once_and_must_be_reviewed,
    consent_gates_special_categories_and_withdrawal_ends_it,
    tokens_authenticate_and_revoke,
    audit_log_detects_edits_removals_and_reordering,
    audit_never_holds_values,
    concurrent_reads_share_audit_transactions,
    a_create_and_its_audit_entry_commit_together,
    an_update_or_a_shred_commits_with_its_audit_entry,
    blocked_subjects_are_stored_not_processed,
    a_consent_keeps_every_field_it_was_given,
    a_read_approval_is_not_spent_by_a_transfer,
    a_shred_or_a_block_is_told_only_after_the_decision,
    a_hold_on_another_schools_record_answers_as_for_a_random_id,
);

fn start() -> DateTime<Utc> {
    "2026-12-01T09:00:00Z".parse().unwrap()
}

fn cat(s: &str) -> Category {
    Category::parse(s).unwrap()
}
fn purpose(s: &str) -> Purpose {
    Purpose::parse(s).unwrap()
}
fn school(s: &str) -> SchoolId {
    SchoolId::parse(s).unwrap()
}

struct School {
    t: TestVault,
    clock: Arc<ManualClock>,
    admissions: Principal,
    nurse: Principal,
    teacher: Principal,
    class_teacher: Principal,
    director: Principal,
    director2: Principal,
    other_director: Principal,
    general_director: Principal,
    privacy: Principal,
    student: SubjectId,
    guardian: SubjectId,
}

async fn principal(t: &TestVault, name: &str, scope: &str, role: Role) -> Principal {
    t.vault
        .create_principal(name, &[(Scope::parse(scope).unwrap(), role)])
        .await
        .unwrap()
        .0
}

async fn school_day(backend: Backend) -> School {
    let clock = Arc::new(ManualClock::new(start()));
    let t = TestVault::with_clock(backend, clock.clone()).await;
    let student = vault_tests::new_subject(&t.vault, SubjectKind::Student).await;
    let guardian = vault_tests::new_subject(&t.vault, SubjectKind::Guardian).await;
    School {
        admissions: principal(&t, "Admissions office", "school-1", Role::Admissions).await,
        nurse: principal(&t, "Nurse Aigul", "school-1", Role::Nurse).await,
        teacher: principal(&t, "Teacher Bolat", "school-1", Role::Teacher).await,
        class_teacher: principal(&t, "Class teacher Dana", "school-1", Role::ClassTeacher).await,
        director: principal(&t, "Director Serik", "school-1", Role::Director).await,
        director2: principal(&t, "Deputy director Aliya", "school-1", Role::Director).await,
        other_director: principal(&t, "Director of school 2", "school-2", Role::Director).await,
        general_director: principal(&t, "General director", "*", Role::GeneralDirector).await,
        privacy: principal(&t, "Privacy officer", "school-1", Role::PrivacyOfficer).await,
        t,
        clock,
        student,
        guardian,
    }
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<FieldName, FieldValue> {
    pairs
        .iter()
        .map(|(k, v)| (FieldName::parse(k).unwrap(), FieldValue::text(v)))
        .collect()
}

impl School {
    async fn consent(&self, cats: &[&str]) -> vault_core::Consent {
        self.t
            .vault
            .session(self.admissions.clone())
            .record_consent(NewConsent {
                subject: self.student,
                given_by: ConsentGiver::Guardian(self.guardian),
                method: "paper".into(),
                evidence_ref: "scan 2026/118".into(),
                text_version: "consent-v3".into(),
                categories: cats.iter().map(|c| cat(c)).collect(),
                third_party: false,
                cross_border: false,
                publication: false,
                term_until: None,
            })
            .await
            .unwrap()
    }

    async fn enrol_with_health(&self) -> RecordId {
        self.consent(&["health", "religion"]).await;
        self.t
            .vault
            .session(self.admissions.clone())
            .write_record(
                self.student,
                &RecordType::parse("student").unwrap(),
                &fields(&[
                    ("full_name", "Aruzhan Serikovna"),
                    ("special_educational_needs", "MARKER-dyslexia"),
                ]),
                &purpose("legal_administrative"),
            )
            .await
            .unwrap()
            .id
    }

    async fn health_of(&self, p: &Principal, record: RecordId, why: &str) -> FieldView {
        let mut view = self
            .t
            .vault
            .session(p.clone())
            .read_record(record, &purpose(why))
            .await
            .unwrap();
        view.fields
            .remove(&FieldName::parse("special_educational_needs").unwrap())
            .unwrap()
    }

    async fn request(&self, p: &Principal, record: RecordId) -> vault_core::AccessRequest {
        self.t
            .vault
            .session(p.clone())
            .request_access(NewAccessRequest {
                subject: self.student,
                record: Some(record),
                categories: vec![cat("health")],
                purpose: purpose("education"),
                act: vault_core::ApprovalAct::Read,
                justification: "planning support for the new term".into(),
            })
            .await
            .unwrap()
    }
}

fn is_open(v: &FieldView) -> bool {
    matches!(v, FieldView::Open { .. })
}

fn sealed_as(v: &FieldView) -> Option<&SealReason> {
    match v {
        FieldView::Sealed { reason, .. } => Some(reason),
        FieldView::Open { .. } => None,
    }
}

async fn approvals_gate_special_reads(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;

    // Until approved: sealed, saying what would open it. Identity opens.
    let view = v
        .session(s.nurse.clone())
        .read_record(rec, &purpose("education"))
        .await
        .unwrap();
    assert!(is_open(
        &view.fields[&FieldName::parse("full_name").unwrap()]
    ));
    assert_eq!(
        sealed_as(&view.fields[&FieldName::parse("special_educational_needs").unwrap()]),
        Some(&SealReason::ApprovalRequired)
    );

    let req = s.request(&s.nurse, rec).await;
    // Nobody approves their own request; another school's director cannot approve.
    let in_an_hour = start() + Duration::hours(1);
    assert!(matches!(
        v.session(s.nurse.clone())
            .approve(req.id, in_an_hour, 2)
            .await
            .unwrap_err(),
        VaultError::SelfApproval | VaultError::NotApprover { .. }
    ));
    assert!(matches!(
        v.session(s.other_director.clone())
            .approve(req.id, in_an_hour, 2)
            .await
            .unwrap_err(),
        VaultError::NotFound(_)
    ));
    assert!(
        v.session(s.director.clone())
            .pending_requests()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == req.id)
    );
    assert!(
        v.session(s.other_director.clone())
            .pending_requests()
            .await
            .unwrap()
            .is_empty()
    );

    // Approved for two uses: exactly two reads open it.
    let approved = v
        .session(s.director.clone())
        .approve(req.id, in_an_hour, 2)
        .await
        .unwrap();
    assert_eq!(approved.uses_left, Some(2));
    // While both uses are left, the approval opens nothing for anyone else or for another
    // purpose, and those reads spend no use. (Before, this was checked only after both uses were
    // spent, when the field was sealed whatever the check did.)
    assert_eq!(
        sealed_as(&s.health_of(&s.teacher, rec, "education").await),
        Some(&SealReason::ApprovalRequired)
    );
    assert_eq!(
        sealed_as(&s.health_of(&s.nurse, rec, "legal_administrative").await),
        Some(&SealReason::ApprovalRequired)
    );
    assert_eq!(
        sealed_as(&s.health_of(&s.director2, rec, "education").await),
        Some(&SealReason::ApprovalRequired)
    );
    assert!(is_open(&s.health_of(&s.nurse, rec, "education").await));
    assert!(is_open(&s.health_of(&s.nurse, rec, "education").await));
    assert_eq!(
        sealed_as(&s.health_of(&s.nurse, rec, "education").await),
        Some(&SealReason::ApprovalRequired)
    );

    // Expiry: approved until +1h, read at +2h.
    let req2 = s.request(&s.nurse, rec).await;
    v.session(s.director.clone())
        .approve(req2.id, start() + Duration::hours(1), 10)
        .await
        .unwrap();
    s.clock.advance(Duration::hours(2));
    assert_eq!(
        sealed_as(&s.health_of(&s.nurse, rec, "education").await),
        Some(&SealReason::ApprovalRequired)
    );
    let now = start() + Duration::hours(2);

    // Denied opens nothing.
    let req3 = s.request(&s.nurse, rec).await;
    v.session(s.director.clone())
        .deny(req3.id, "not needed for this term")
        .await
        .unwrap();
    assert_eq!(
        sealed_as(&s.health_of(&s.nurse, rec, "education").await),
        Some(&SealReason::ApprovalRequired)
    );
    // A decided request cannot be approved afterwards.
    assert!(
        v.session(s.director2.clone())
            .approve(req3.id, now + Duration::hours(1), 1)
            .await
            .is_err()
    );

    // Revoked opens nothing.
    let req4 = s.request(&s.nurse, rec).await;
    v.session(s.director2.clone())
        .approve(req4.id, now + Duration::hours(1), 5)
        .await
        .unwrap();
    assert!(is_open(&s.health_of(&s.nurse, rec, "education").await));
    v.session(s.director.clone())
        .revoke_approval(req4.id)
        .await
        .unwrap();
    assert_eq!(
        sealed_as(&s.health_of(&s.nurse, rec, "education").await),
        Some(&SealReason::ApprovalRequired)
    );

    // A director's own read needs another director's approval too; the general director can give it.
    let req5 = s.request(&s.director, rec).await;
    assert!(matches!(
        v.session(s.director.clone())
            .approve(req5.id, now + Duration::hours(1), 1)
            .await
            .unwrap_err(),
        VaultError::SelfApproval
    ));
    v.session(s.general_director.clone())
        .approve(req5.id, now + Duration::hours(1), 1)
        .await
        .unwrap();
    assert!(is_open(&s.health_of(&s.director, rec, "education").await));

    // Every step left an audit entry, and the chain verifies.
    let log = v.audit_entries().await.unwrap();
    for action in [
        "access.request",
        "access.approve",
        "access.deny",
        "access.revoke",
        "record.read",
    ] {
        assert!(log.iter().any(|e| e.action == action), "no {action} entry");
    }
    assert!(
        log.iter()
            .any(|e| e.action == "access.approve" && e.outcome == "denied")
    );
    assert!(
        log.iter()
            .any(|e| e.action == "record.read" && e.outcome == "approval_required")
    );
    let report = v.verify_audit().await.unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.entries as usize, log.len());
}

async fn break_glass_opens_at_once_and_must_be_reviewed(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;

    assert!(matches!(
        v.session(s.teacher.clone())
            .open_break_glass(s.student, "student collapsed in class")
            .await
            .unwrap_err(),
        VaultError::Forbidden { .. }
    ));
    let bg = v
        .session(s.nurse.clone())
        .open_break_glass(s.student, "anaphylaxis in the gym, need history")
        .await
        .unwrap();
    assert!(is_open(
        &s.health_of(&s.nurse, rec, "medical_emergency").await
    ));
    let log = v.access_history(s.student).await.unwrap();
    assert!(log.iter().any(|e| e.action == "break_glass.open"
        && e.reason.as_deref().unwrap_or("").contains("BREAK-GLASS")));
    assert!(log.iter().any(|e| e.action == "record.read"
        && e.outcome == "allowed"
        && e.reason.as_deref().unwrap_or("").contains("break-glass")));

    // At the edges: open for exactly 4 hours, overdue once unreviewed for more than 24.
    s.clock.advance(BREAK_GLASS_WINDOW - Duration::seconds(1));
    assert!(is_open(
        &s.health_of(&s.nurse, rec, "medical_emergency").await
    ));
    s.clock.advance(Duration::seconds(1));
    assert_eq!(
        sealed_as(&s.health_of(&s.nurse, rec, "medical_emergency").await),
        Some(&SealReason::ApprovalRequired),
        "closed at 4 h exactly"
    );
    s.clock.advance(BREAK_GLASS_REVIEW_DUE - BREAK_GLASS_WINDOW);
    assert!(
        v.session(s.director.clone())
            .overdue_break_glass()
            .await
            .unwrap()
            .is_empty(),
        "not overdue at 24 h exactly"
    );
    s.clock.advance(Duration::seconds(1));
    let overdue = v
        .session(s.director.clone())
        .overdue_break_glass()
        .await
        .unwrap();
    assert_eq!(overdue.len(), 1);
    assert_eq!(overdue[0].id, bg.id);
    // The window has closed: no more emergency reads without a new break-glass.
    assert_eq!(
        sealed_as(&s.health_of(&s.nurse, rec, "medical_emergency").await),
        Some(&SealReason::ApprovalRequired)
    );

    assert!(matches!(
        v.session(s.nurse.clone())
            .review_break_glass(bg.id, "it was fine")
            .await
            .unwrap_err(),
        VaultError::SelfApproval
    ));
    assert!(matches!(
        v.session(s.other_director.clone())
            .review_break_glass(bg.id, "looks fine")
            .await
            .unwrap_err(),
        VaultError::NotFound(_)
    ));
    let reviewed = v
        .session(s.director.clone())
        .review_break_glass(bg.id, "justified: ambulance called")
        .await
        .unwrap();
    assert_eq!(reviewed.reviewed_by, Some(s.director.id()));
    assert!(
        v.session(s.director.clone())
            .overdue_break_glass()
            .await
            .unwrap()
            .is_empty()
    );
}

async fn consent_gates_special_categories_and_withdrawal_ends_it(backend: Backend) {
    let s = school_day(backend).await;
    let v = &s.t.vault;
    let rt = RecordType::parse("student").unwrap();
    let religion = fields(&[("full_name", "Timur"), ("religion", "MARKER-faith")]);

    // No basis: refused, naming what is missing; nothing stored.
    let err = v
        .session(s.admissions.clone())
        .write_record(s.student, &rt, &religion, &purpose("religious_education"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VaultError::NoLegalBasis { category } if category.as_str() == "religion"),
        "{err}"
    );
    assert!(err.to_string().contains("religion"));

    // A student cannot consent alone.
    let err = v
        .session(s.admissions.clone())
        .record_consent(NewConsent {
            subject: s.student,
            given_by: ConsentGiver::Subject {
                confirmed_adult: false,
            },
            method: "paper".into(),
            evidence_ref: "scan 1".into(),
            text_version: "v3".into(),
            categories: vec![cat("religion")],
            third_party: false,
            cross_border: false,
            publication: false,
            term_until: None,
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("guardian"), "{err}");

    // With the guardian's consent: written. Admissions cannot read it back.
    let consent = s.consent(&["religion"]).await;
    assert_eq!(consent.operator_bin.len(), 12);
    assert_eq!(consent.given_by, ConsentGiver::Guardian(s.guardian));
    let rec = v
        .session(s.admissions.clone())
        .write_record(s.student, &rt, &religion, &purpose("religious_education"))
        .await
        .unwrap()
        .id;
    let field = FieldName::parse("religion").unwrap();
    let view = v
        .session(s.admissions.clone())
        .read_record(rec, &purpose("religious_education"))
        .await
        .unwrap();
    assert!(matches!(
        sealed_as(&view.fields[&field]),
        Some(SealReason::Forbidden(_))
    ));
    let view = v
        .session(s.class_teacher.clone())
        .read_record(rec, &purpose("religious_education"))
        .await
        .unwrap();
    assert!(is_open(&view.fields[&field]));

    // Withdrawal on Tuesday 1 December 2026: basis ends now; the deadline is 15 working days
    // later, past three weekends and Independence Day (16 December).
    let w = v
        .session(s.privacy.clone())
        .withdraw_consent(consent.id, None)
        .await
        .unwrap();
    assert_eq!(
        w.withdrawal_deadline,
        Some(NaiveDate::from_ymd_opt(2026, 12, 23).unwrap())
    );
    let view = v
        .session(s.class_teacher.clone())
        .read_record(rec, &purpose("religious_education"))
        .await
        .unwrap();
    assert_eq!(
        sealed_as(&view.fields[&field]),
        Some(&SealReason::NoLegalBasis)
    );
    assert!(
        v.session(s.privacy.clone())
            .withdraw_consent(consent.id, None)
            .await
            .is_err(),
        "withdrawn twice"
    );

    // A withdrawal refused with a recorded reason keeps the basis.
    let c2 = s.consent(&["religion"]).await;
    assert!(
        v.session(s.privacy.clone())
            .withdraw_consent(c2.id, Some("short"))
            .await
            .is_err()
    );
    let w2 = v
        .session(s.privacy.clone())
        .withdraw_consent(c2.id, Some("Education law requires keeping it until June"))
        .await
        .unwrap();
    assert!(w2.refusal_reason.is_some());
    let view = v
        .session(s.class_teacher.clone())
        .read_record(rec, &purpose("religious_education"))
        .await
        .unwrap();
    assert!(is_open(&view.fields[&field]));

    // A named legal ground instead of consent.
    let eth = fields(&[("ethnic_origin", "MARKER-origin")]);
    assert!(
        v.session(s.admissions.clone())
            .write_record(s.student, &rt, &eth, &purpose("legal_administrative"))
            .await
            .is_err()
    );
    v.session(s.privacy.clone())
        .record_legal_ground(
            s.student,
            &cat("ethnicity"),
            LegalGround::StateStatistics,
            "Order on school statistics No. 12",
        )
        .await
        .unwrap();
    let rec2 = v
        .session(s.admissions.clone())
        .write_record(s.student, &rt, &eth, &purpose("legal_administrative"))
        .await
        .unwrap()
        .id;
    let view = v
        .session(s.director.clone())
        .read_record(rec2, &purpose("legal_administrative"))
        .await
        .unwrap();
    assert!(is_open(
        &view.fields[&FieldName::parse("ethnic_origin").unwrap()]
    ));

    // Every consent change is in the subject's history.
    let log = v.access_history(s.student).await.unwrap();
    assert!(log.iter().filter(|e| e.action == "consent.record").count() >= 2);
    assert!(
        log.iter()
            .any(|e| e.action == "consent.withdraw" && e.outcome == "done")
    );
    assert!(
        log.iter()
            .any(|e| e.action == "consent.withdraw" && e.outcome == "refused")
    );
    assert!(
        log.iter()
            .any(|e| e.action == "record.write" && e.outcome == "denied")
    );
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
}

async fn tokens_authenticate_and_revoke(backend: Backend) {
    let s = school_day(backend).await;
    let v = &s.t.vault;
    let (p, token) = v
        .create_principal(
            "Timetable app",
            &[(Scope::School(school("school-1")), Role::AppTimetable)],
        )
        .await
        .unwrap();
    assert!(token.expose().starts_with("vt_") && token.expose().len() == 67);
    assert_eq!(v.authenticate(&token).await.unwrap(), p);
    for bad in ["", "vt_", "vt_0000", &format!("{}x", token.expose())] {
        assert!(matches!(
            v.authenticate(&BearerToken::new(bad)).await.unwrap_err(),
            VaultError::Unauthenticated
        ));
    }
    // Only the hash is stored.
    let db = s.t.stores.raw_data().await;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT token_hash FROM principals",
        ))
        .await
        .unwrap();
    for r in rows {
        let h: Vec<u8> = r.try_get("", "token_hash").unwrap();
        assert_eq!(h.len(), 32);
        assert!(!contains(&h, token.expose().as_bytes()));
    }
    v.revoke_principal(p.id()).await.unwrap();
    assert!(matches!(
        v.authenticate(&token).await.unwrap_err(),
        VaultError::Unauthenticated
    ));
}

async fn tamper(s: &School, sql: &str) {
    let db = s.t.stores.raw_data().await;
    db.execute_unprepared(sql).await.unwrap();
}

async fn audit_log_detects_edits_removals_and_reordering(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    for _ in 0..3 {
        s.t.vault
            .session(s.nurse.clone())
            .read_record(rec, &purpose("education"))
            .await
            .unwrap();
    }
    let v = &s.t.vault;
    let report = v.verify_audit().await.unwrap();
    assert_eq!(report.problem, None);
    assert!(
        report.entries >= 12 && report.checkpoints >= 1,
        "{report:?}"
    );

    // Edit one field of entry 3.
    let original: String = {
        let db = s.t.stores.raw_data().await;
        db.query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT outcome FROM audit_log WHERE seq = 3",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "outcome")
        .unwrap()
    };
    tamper(&s, "UPDATE audit_log SET outcome = 'forged' WHERE seq = 3").await;
    assert_eq!(
        v.verify_audit().await.unwrap().problem,
        Some(AuditProblem::Altered { seq: 3 })
    );
    tamper(
        &s,
        &format!("UPDATE audit_log SET outcome = '{original}' WHERE seq = 3"),
    )
    .await;
    assert_eq!(v.verify_audit().await.unwrap().problem, None);

    // Swap entries 4 and 5.
    tamper(&s, "UPDATE audit_log SET seq = -1 WHERE seq = 4").await;
    tamper(&s, "UPDATE audit_log SET seq = 4 WHERE seq = 5").await;
    tamper(&s, "UPDATE audit_log SET seq = 5 WHERE seq = -1").await;
    let problem = v.verify_audit().await.unwrap().problem;
    assert!(
        matches!(
            problem,
            Some(AuditProblem::OutOfOrder { seq: 4 } | AuditProblem::Altered { seq: 4 })
        ),
        "{problem:?}"
    );
    assert!(problem.unwrap().to_string().contains("entry 4"));
    tamper(&s, "UPDATE audit_log SET seq = -1 WHERE seq = 4").await;
    tamper(&s, "UPDATE audit_log SET seq = 4 WHERE seq = 5").await;
    tamper(&s, "UPDATE audit_log SET seq = 5 WHERE seq = -1").await;
    assert_eq!(v.verify_audit().await.unwrap().problem, None);

    // Delete entry 6.
    tamper(&s, "DELETE FROM audit_log WHERE seq = 6").await;
    let problem = v.verify_audit().await.unwrap().problem.unwrap();
    assert_eq!(problem, AuditProblem::Missing { seq: 6 });
    assert_eq!(problem.to_string(), "entry 6 is missing");

    // Removing the newest entries is caught by the head and the signed checkpoints.
    let t2 = school_day(backend).await;
    let max: i64 = {
        let db = t2.t.stores.raw_data().await;
        db.query_one_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT MAX(seq) AS m FROM audit_log",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "m")
        .unwrap()
    };
    tamper(&t2, &format!("DELETE FROM audit_log WHERE seq = {max}")).await;
    assert!(matches!(
        t2.t.vault.verify_audit().await.unwrap().problem,
        Some(AuditProblem::Truncated { .. })
    ));
    // Rewinding the head as well is still caught, by the signed checkpoint past the end.
    tamper(&t2, &format!("UPDATE audit_head SET seq = {}", max - 1)).await;
    assert_eq!(
        t2.t.vault.verify_audit().await.unwrap().problem,
        Some(AuditProblem::Truncated {
            last: max - 1,
            expected: max
        })
    );

    // A checkpoint whose signature is not the audit key's over its own hash is named.
    let t3 = school_day(backend).await;
    let report = t3.t.vault.verify_audit().await.unwrap();
    assert!(report.checkpoints >= 2, "{report:?}");
    tamper(
        &t3,
        "UPDATE audit_checkpoints SET signature = \
         (SELECT signature FROM audit_checkpoints WHERE seq = (SELECT MIN(seq) FROM audit_checkpoints)) \
         WHERE seq = (SELECT MAX(seq) FROM audit_checkpoints)",
    )
    .await;
    assert!(matches!(
        t3.t.vault.verify_audit().await.unwrap().problem,
        Some(AuditProblem::BadCheckpoint { .. })
    ));
}

async fn audit_never_holds_values(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;
    let req = s.request(&s.nurse, rec).await;
    v.session(s.director.clone())
        .approve(req.id, start() + Duration::hours(1), 3)
        .await
        .unwrap();
    let view = v
        .session(s.nurse.clone())
        .read_record(rec, &purpose("education"))
        .await
        .unwrap();
    assert!(format!("{view:?}").contains("redacted"));
    v.session(s.nurse.clone())
        .open_break_glass(s.student, "seizure at lunch, need the history")
        .await
        .unwrap();
    v.session(s.nurse.clone())
        .read_record(rec, &purpose("medical_emergency"))
        .await
        .unwrap();
    let _ = v
        .session(s.teacher.clone())
        .write_record(
            s.student,
            &RecordType::parse("student").unwrap(),
            &fields(&[("religion", "MARKER-denied-write")]),
            &purpose("religious_education"),
        )
        .await
        .unwrap_err();

    let log = v.audit_entries().await.unwrap();
    assert!(log.len() > 10);
    let text = format!("{log:?}");
    for m in ["MARKER", "dyslexia", "Aruzhan", "Serikovna", "denied-write"] {
        assert!(!text.contains(m), "audit holds {m}");
    }
    // And not in the raw rows either, which the data-store scan also covers.
    let vault = s.t.vault;
    vault.stores().clone().close().await.unwrap();
    drop(vault);
    let raw = s.t.stores.data_store_bytes();
    assert!(
        contains(&raw, b"record.read"),
        "positive control: audit rows are in the scan"
    );
    assert!(!contains(&raw, b"MARKER"));
}

/// Group commit writes each create's audit entry in the record's own transaction: 24
/// concurrent creates give 24 entries naming 24 stored records; one the database refuses (a
/// trigger stands in for any failure) leaves neither a record nor an entry, and the chain holds.
async fn a_create_and_its_audit_entry_commit_together(backend: Backend) {
    let s = school_day(backend).await;
    let v = &s.t.vault;
    let other = vault_tests::new_subject(v, SubjectKind::Student).await;
    vault_tests::refuse_inserts(&s.t.stores.raw_data().await, "records", "subject_id", other).await;
    let before = v.audit_entries().await.unwrap().len();
    let student = RecordType::parse("student").unwrap();
    let why = purpose("legal_administrative");
    let writes = (0..25).map(|i| {
        let (s, student, why) = (&s, &student, &why);
        async move {
            let who = if i == 7 { other } else { s.student };
            let f = fields(&[("full_name", &format!("Student {i}"))]);
            v.session(s.admissions.clone())
                .write_record(who, student, &f, why)
                .await
        }
    });
    let results = futures::future::join_all(writes).await;
    let stored: BTreeSet<String> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .map(|m| m.id.to_string())
        .collect();
    assert_eq!(stored.len(), 24);
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 1);
    let log = v.audit_entries().await.unwrap();
    let writes: BTreeSet<String> = log[before..]
        .iter()
        .filter(|e| e.action == "record.write" && e.outcome == "allowed")
        .filter_map(|e| e.record.clone())
        .collect();
    assert_eq!(
        writes, stored,
        "one entry per stored record, none for the refused one"
    );
    assert!(
        !log[before..]
            .iter()
            .any(|e| e.subject.as_deref() == Some(other.to_string().as_str()))
    );
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
}

async fn an_update_or_a_shred_commits_with_its_audit_entry(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;
    let db = s.t.stores.raw_data().await;
    let why = purpose("legal_administrative");
    let change: BTreeMap<FieldName, FieldChange> = [(
        FieldName::parse("full_name").unwrap(),
        FieldChange::Set(FieldValue::text("MARKER-renamed")),
    )]
    .into_iter()
    .collect();
    let about = |log: &[vault_core::AuditRecord], action: &str| -> Vec<vault_core::AuditRecord> {
        log.iter()
            .filter(|e| e.action == action && e.record.as_deref() == Some(&rec.to_string()))
            .cloned()
            .collect()
    };

    // The audit entry cannot be written: the update must not land either.
    vault_tests::refuse_inserts(&db, "audit_log", "record_id", rec).await;
    let err = v
        .session(s.admissions.clone())
        .update_record(rec, 1, &change, &why)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Store(_)), "{err:?}");
    let meta = v.record_meta(rec).await.unwrap();
    assert_eq!(meta.version, 1, "the update rolled back with its entry");
    let identity: BTreeSet<Category> = [cat("identity")].into_iter().collect();
    let view = v.read_record(rec, &identity).await.unwrap();
    match &view.fields[&FieldName::parse("full_name").unwrap()] {
        FieldView::Open { value, .. } => assert_eq!(value, &FieldValue::text("Aruzhan Serikovna")),
        other => panic!("full_name should open: {other:?}"),
    }

    // Likewise a shred: its keys go first, but the record is not reported shredded, and the
    // ciphertext stays, until its certificate can be written.
    let err = v
        .session(s.privacy.clone())
        .shred_record(rec, &why)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Store(_)), "{err:?}");
    let fields_left = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!("SELECT COUNT(*) AS n FROM record_fields WHERE record_id = '{rec}'"),
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(
        fields_left, 2,
        "the deletion rolled back with its certificate"
    );
    let log = v.audit_entries().await.unwrap();
    assert!(about(&log, "record.update").is_empty());
    assert!(about(&log, "record.shred").is_empty());

    // Once entries can be written again, reopening the vault finishes the shred and certifies
    // it in the vault's own name.
    vault_tests::allow_inserts(&db, "audit_log").await;
    let s2 = School {
        t: s.t.reopen().await.unwrap(),
        ..s
    };
    let v = &s2.t.vault;
    assert!(matches!(
        v.read_record(rec, &BTreeSet::new()).await.unwrap_err(),
        VaultError::RecordShredded(_)
    ));
    let cert = about(&v.audit_entries().await.unwrap(), "record.shred");
    assert_eq!(cert.len(), 1, "one certificate for the finished shred");
    assert_eq!(cert[0].actor, "vault");
    let reason = cert[0].reason.as_deref().unwrap();
    assert!(
        reason.contains("finished after an interruption") && reason.contains("fields deleted"),
        "{reason}"
    );
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
}

async fn concurrent_reads_share_audit_transactions(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;
    let before = v.verify_audit().await.unwrap();
    assert_eq!(before.problem, None);
    const READS: usize = 64;
    let education = purpose("education");
    let nurse = v.session(s.nurse.clone());
    let reads = (0..READS).map(|_| nurse.read_record(rec, &education));
    for r in futures::future::join_all(reads).await {
        let view = r.unwrap();
        assert!(is_open(
            &view.fields[&FieldName::parse("full_name").unwrap()]
        ));
    }
    let after = v.verify_audit().await.unwrap();
    assert_eq!(
        after.problem, None,
        "the chain is intact after concurrent appends"
    );
    // Each read writes two entries (identity allowed, health approval-required).
    assert_eq!(after.entries - before.entries, 2 * READS as u64);
    // One transaction (and one signed checkpoint) per batch, not per entry.
    let batches = after.checkpoints - before.checkpoints;
    assert!(
        batches < READS as u64,
        "{batches} batches for {READS} concurrent reads"
    );
}

async fn blocked_subjects_are_stored_not_processed(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;
    // Only someone who may act for every category (the privacy officer) blocks.
    assert!(v.session(s.nurse.clone()).block(s.student).await.is_err());
    v.session(s.privacy.clone()).block(s.student).await.unwrap();
    let view = v
        .session(s.admissions.clone())
        .read_record(rec, &purpose("legal_administrative"))
        .await
        .unwrap();
    // What admissions may read is sealed as blocked; what it may not read at all stays
    // forbidden, so the block is told only to those it keeps from the data.
    assert_eq!(
        sealed_as(&view.fields[&FieldName::parse("full_name").unwrap()]),
        Some(&SealReason::Blocked)
    );
    assert!(view.fields.values().all(|f| matches!(
        sealed_as(f),
        Some(SealReason::Blocked | SealReason::Forbidden(_))
    )));
    let err = v
        .session(s.admissions.clone())
        .write_record(
            s.student,
            &RecordType::parse("student").unwrap(),
            &fields(&[("full_name", "x")]),
            &purpose("legal_administrative"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Blocked(id) if id == s.student));
    // Still stored: unblocking makes it readable again.
    v.session(s.privacy.clone())
        .unblock(s.student)
        .await
        .unwrap();
    let view = v
        .session(s.admissions.clone())
        .read_record(rec, &purpose("legal_administrative"))
        .await
        .unwrap();
    assert!(is_open(
        &view.fields[&FieldName::parse("full_name").unwrap()]
    ));
    let log = v.access_history(s.student).await.unwrap();
    assert!(log.iter().any(|e| e.action == "subject.block"));
    assert!(log.iter().any(|e| e.action == "subject.unblock"));
}

/// Art. 7(6) and 8(4): the three separate flags, the evidence and the text version are what the
/// operator must be able to prove, so each is read back, in both settings of every flag.
async fn a_consent_keeps_every_field_it_was_given(backend: Backend) {
    let s = school_day(backend).await;
    let v = &s.t.vault;
    for (third_party, cross_border, publication) in [
        (true, false, true),
        (false, true, false),
        (true, true, false),
    ] {
        let evidence = format!("scan {third_party}-{cross_border}-{publication}");
        let given = v
            .session(s.admissions.clone())
            .record_consent(NewConsent {
                subject: s.student,
                given_by: ConsentGiver::Guardian(s.guardian),
                method: "e_signature".into(),
                evidence_ref: evidence.clone(),
                text_version: "consent-v4".into(),
                categories: vec![cat("health"), cat("religion")],
                third_party,
                cross_border,
                publication,
                term_until: Some(start() + Duration::days(365)),
            })
            .await
            .unwrap();
        let listed = v
            .session(s.privacy.clone())
            .consents(s.student)
            .await
            .unwrap();
        let c = listed.iter().find(|c| c.id == given.id).unwrap();
        assert_eq!(
            (c.third_party, c.cross_border, c.publication),
            (third_party, cross_border, publication)
        );
        assert_eq!(c.evidence_ref, evidence);
        assert_eq!(c.text_version, "consent-v4");
        assert_eq!(c.method, "e_signature");
        assert_eq!(c.given_by, ConsentGiver::Guardian(s.guardian));
        assert_eq!(c.categories, vec![cat("health"), cat("religion")]);
        assert_eq!(c.term_until, Some(start() + Duration::days(365)));
        assert_eq!(c.operator_bin, v.catalog().policy().operator_bin);
    }
}

/// Regression (boundary review): an approval stored no act, so a principal holding both a read
/// and a transfer grant could spend a director's approval to read health data on sending it
/// to a recipient. Now a request names its act and only that act spends it.
async fn a_read_approval_is_not_spent_by_a_transfer(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;
    // A consent that covers disclosure to third parties, so only the approval stands in the way.
    v.session(s.admissions.clone())
        .record_consent(NewConsent {
            subject: s.student,
            given_by: ConsentGiver::Guardian(s.guardian),
            method: "paper".into(),
            evidence_ref: "scan 2026/119".into(),
            text_version: "consent-v3".into(),
            categories: vec![cat("health")],
            third_party: true,
            cross_border: false,
            publication: false,
            term_until: None,
        })
        .await
        .unwrap();
    let both = v
        .create_principal(
            "Deputy director and privacy officer",
            &[
                (Scope::parse("school-1").unwrap(), Role::Director),
                (Scope::parse("school-1").unwrap(), Role::PrivacyOfficer),
            ],
        )
        .await
        .unwrap()
        .0;
    let p = v.session(both.clone());
    let ask = |act| NewAccessRequest {
        subject: s.student,
        record: None,
        categories: vec![cat("health")],
        purpose: purpose("education"),
        act,
        justification: "the district's inclusion programme".into(),
    };
    let in_an_hour = start() + Duration::hours(1);
    let read = p
        .request_access(ask(vault_core::ApprovalAct::Read))
        .await
        .unwrap();
    v.session(s.director.clone())
        .approve(read.id, in_an_hour, 1)
        .await
        .unwrap();
    let transfer = vault_core::TransferRequest {
        subject: s.student,
        to: vault_core::Country::parse("KZ").unwrap(),
        categories: vec![cat("health")],
        recipient: "District office".into(),
        purpose: purpose("education"),
    };
    let key = vault_core::CustodianRecipient::parse(
        "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p",
    )
    .unwrap();
    let err = p.export_transfer(&transfer, &key).await.unwrap_err();
    assert!(
        matches!(err, VaultError::ApprovalRequired { .. }),
        "a read approval opened a transfer: {err}"
    );
    // The read approval is still there, and opens the read.
    assert!(is_open(&s.health_of(&both, rec, "education").await));
    // A transfer approval opens the transfer, once.
    let t = p
        .request_access(ask(vault_core::ApprovalAct::Transfer))
        .await
        .unwrap();
    assert_eq!(t.act, vault_core::ApprovalAct::Transfer);
    v.session(s.director.clone())
        .approve(t.id, in_an_hour, 1)
        .await
        .unwrap();
    p.export_transfer(&transfer, &key).await.unwrap();
    let err = p.export_transfer(&transfer, &key).await.unwrap_err();
    assert!(matches!(err, VaultError::ApprovalRequired { .. }), "{err}");
}

/// Regression (boundary review): a read or update of a shredded record answered "shredded" to
/// any role of the school, and an empty write answered "blocked" for a blocked subject before
/// any decision: state told to roles that hold no grant.
async fn a_shred_or_a_block_is_told_only_after_the_decision(backend: Backend) {
    let s = school_day(backend).await;
    let rec = s.enrol_with_health().await;
    let v = &s.t.vault;
    let auditor = principal(&s.t, "Auditor", "school-1", Role::Auditor).await;
    v.shred_record(rec).await.unwrap();
    let why = purpose("education");
    // The nurse may read this record type: she hears it is gone.
    let err = v
        .session(s.nurse.clone())
        .read_record(rec, &why)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::RecordShredded(_)), "{err}");
    // The auditor may read nothing of it: refused, as for a live record, and audited.
    let before = v.access_history(s.student).await.unwrap().len();
    let err = v
        .session(auditor.clone())
        .read_record(rec, &why)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Forbidden { .. }), "{err}");
    let changes: BTreeMap<_, _> = [(
        FieldName::parse("full_name").unwrap(),
        FieldChange::Set(FieldValue::text("X")),
    )]
    .into_iter()
    .collect();
    let err = v
        .session(auditor.clone())
        .update_record(rec, 1, &changes, &why)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Forbidden { .. }), "{err}");
    let history = v.access_history(s.student).await.unwrap();
    assert_eq!(
        history.len(),
        before + 2,
        "both refusals are in the history"
    );
    assert!(history[before..].iter().all(|e| e.outcome == "denied"));
    // A role that may act on no category of a record type is not told such a record exists.
    let live = v
        .write_record(
            s.student,
            &RecordType::parse("student").unwrap(),
            &fields(&[("full_name", "Aruzhan")]),
        )
        .await
        .unwrap()
        .id;
    let listed = |p: &Principal| {
        let p = p.clone();
        async move {
            v.session(p)
                .records(s.student)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(&s.nurse).await, vec![live]);
    // A role with no grant to view the school's subjects is refused the listing outright.
    let err = v
        .session(auditor.clone())
        .records(s.student)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VaultError::Forbidden { .. }),
        "the auditor lists no records: {err}"
    );
    // An empty write says nothing of a block, to anyone.
    v.session(s.privacy.clone()).block(s.student).await.unwrap();
    for p in [&auditor, &s.admissions] {
        let err = v
            .session(p.clone())
            .write_record(
                s.student,
                &RecordType::parse("student").unwrap(),
                &BTreeMap::new(),
                &why,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, VaultError::EmptyRecord), "{err}");
    }
}

/// Review finding: a hold naming another school's record answered "is not a record of this
/// subject", a random id "does not exist": an existence oracle across schools.
async fn a_hold_on_another_schools_record_answers_as_for_a_random_id(backend: Backend) {
    let s = school_day(backend).await;
    let v = &s.t.vault;
    let theirs = v
        .create_subject(vault_core::NewSubject {
            school: school("school-2"),
            kind: SubjectKind::Student,
            iin: None,
        })
        .await
        .unwrap();
    let rec = v
        .write_record(
            theirs.id,
            &RecordType::parse("student").unwrap(),
            &fields(&[("full_name", "MARKER-other")]),
        )
        .await
        .unwrap()
        .id;
    let random = RecordId::parse("0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b").unwrap();
    let po = v.session(s.privacy.clone());
    let mut said = Vec::new();
    for r in [rec, random] {
        let err = po
            .place_hold(s.student, Some(r), "court order 3-77/2026")
            .await
            .unwrap_err();
        said.push(err.to_string().replace(&r.to_string(), "<id>"));
    }
    assert_eq!(said[0], said[1]);
    assert!(said[0].contains("does not exist"), "{}", said[0]);
}

/// The first principal is made with the custodian's identity alone, once. Eight bootstraps at
/// once (two custodians racing, or a retried command) made eight general directors when the
/// check and the insert were separate; under the table's write lock they make one.
async fn two_bootstraps_at_once_make_one_principal(backend: Backend) {
    let t = TestVault::new(backend).await;
    let roles = [(Scope::parse("*").unwrap(), Role::GeneralDirector)];
    let names: Vec<String> = (0..8).map(|i| format!("Director {i}")).collect();
    let results =
        futures::future::join_all(names.iter().map(|n| t.vault.bootstrap_principal(n, &roles)))
            .await;
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.iter().filter(|r| r.is_err()) {
        assert!(
            matches!(r, Err(VaultError::PrincipalsExist)),
            "{:?}",
            r.as_ref().err()
        );
    }
    let db = t.stores.raw_data().await;
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT id FROM principals",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one principal in the store");
}
