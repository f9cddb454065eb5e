//! Allow / approval-required / deny, over the real files in `policies/`: every role, write-only
//! admissions, the custodian reading nothing, purposes the catalog does not allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use vault_core::{Action, Category, Decision, Policy, Purpose, Role, SchoolId, Scope};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Want {
    Allow,
    Approval,
    /// Denied with this stable reason code.
    Deny(&'static str),
}

use Want::*;

/// (role, where the role is held, school asked about, category, action, purpose) -> answer
const TABLE: &[(&str, &str, &str, &str, &str, &str, Want)] = &[
    // General director: a director of every school.
    (
        "general_director",
        "*",
        "school-2",
        "identity",
        "read",
        "education",
        Allow,
    ),
    (
        "general_director",
        "*",
        "school-9",
        "health",
        "approve",
        "education",
        Allow,
    ),
    (
        "general_director",
        "*",
        "school-2",
        "health",
        "read",
        "education",
        Approval,
    ),
    // Director: own school only; approval categories need someone else's approval.
    (
        "director",
        "school-1",
        "school-1",
        "academic",
        "read",
        "education",
        Allow,
    ),
    (
        "director",
        "school-1",
        "school-1",
        "health",
        "approve",
        "education",
        Allow,
    ),
    (
        "director",
        "school-1",
        "school-1",
        "disciplinary",
        "approve",
        "discipline",
        Allow,
    ),
    (
        "director",
        "school-1",
        "school-2",
        "health",
        "approve",
        "education",
        Deny("no_role_in_school"),
    ),
    (
        "director",
        "school-1",
        "school-1",
        "health",
        "read",
        "education",
        Approval,
    ),
    (
        "director",
        "school-1",
        "school-1",
        "religion",
        "read",
        "religious_education",
        Deny("not_granted"),
    ),
    (
        "director",
        "school-1",
        "school-1",
        "health",
        "break_glass",
        "medical_emergency",
        Allow,
    ),
    // Privacy officer: subject access export without approval; no everyday reads.
    (
        "privacy_officer",
        "school-1",
        "school-1",
        "health",
        "export",
        "subject_access",
        Allow,
    ),
    (
        "privacy_officer",
        "school-1",
        "school-1",
        "religion",
        "export",
        "subject_access",
        Allow,
    ),
    (
        "privacy_officer",
        "school-1",
        "school-1",
        "health",
        "read",
        "education",
        Deny("not_granted"),
    ),
    (
        "privacy_officer",
        "school-1",
        "school-1",
        "identity",
        "shred",
        "subject_access",
        Allow,
    ),
    (
        "privacy_officer",
        "school-1",
        "school-1",
        "ethnicity",
        "consent",
        "legal_administrative",
        Allow,
    ),
    // Key custodian: key operations, reads nothing.
    (
        "key_custodian",
        "*",
        "school-1",
        "health",
        "key_admin",
        "legal_administrative",
        Allow,
    ),
    (
        "key_custodian",
        "*",
        "school-1",
        "identity",
        "read",
        "education",
        Deny("not_granted"),
    ),
    (
        "key_custodian",
        "*",
        "school-1",
        "health",
        "read",
        "medical_emergency",
        Deny("not_granted"),
    ),
    (
        "key_custodian",
        "*",
        "school-1",
        "financial",
        "export",
        "subject_access",
        Deny("not_granted"),
    ),
    // Auditor: the audit log only.
    (
        "auditor",
        "*",
        "school-1",
        "identity",
        "audit_read",
        "audit",
        Allow,
    ),
    (
        "auditor",
        "*",
        "school-1",
        "identity",
        "read",
        "education",
        Deny("not_granted"),
    ),
    // HR officer.
    (
        "hr_officer",
        "school-1",
        "school-1",
        "financial",
        "read",
        "payroll",
        Allow,
    ),
    (
        "hr_officer",
        "school-1",
        "school-1",
        "financial",
        "read",
        "education",
        Deny("purpose_not_allowed"),
    ),
    (
        "hr_officer",
        "school-1",
        "school-1",
        "health",
        "read",
        "sick_leave",
        Approval,
    ),
    (
        "hr_officer",
        "school-1",
        "school-1",
        "health",
        "read",
        "education",
        Deny("not_granted"),
    ),
    (
        "hr_officer",
        "school-1",
        "school-1",
        "criminal_record",
        "write",
        "legal_administrative",
        Allow,
    ),
    (
        "hr_officer",
        "school-1",
        "school-1",
        "disciplinary",
        "read",
        "discipline",
        Approval,
    ),
    // Teachers.
    (
        "teacher",
        "school-1",
        "school-1",
        "academic",
        "write",
        "education",
        Allow,
    ),
    (
        "teacher",
        "school-1",
        "school-1",
        "attendance",
        "read",
        "education",
        Allow,
    ),
    (
        "teacher",
        "school-1",
        "school-1",
        "contact",
        "read",
        "emergency_contact",
        Deny("not_granted"),
    ),
    (
        "teacher",
        "school-1",
        "school-1",
        "health",
        "read",
        "education",
        Approval,
    ),
    (
        "teacher",
        "school-1",
        "school-1",
        "psychological",
        "read",
        "education",
        Deny("not_granted"),
    ),
    (
        "teacher",
        "school-1",
        "school-1",
        "academic",
        "read",
        "payroll",
        Deny("purpose_not_allowed"),
    ),
    // Class teacher inherits teacher.
    (
        "class_teacher",
        "school-1",
        "school-1",
        "academic",
        "write",
        "education",
        Allow,
    ),
    (
        "class_teacher",
        "school-1",
        "school-1",
        "contact",
        "read",
        "emergency_contact",
        Allow,
    ),
    (
        "class_teacher",
        "school-1",
        "school-1",
        "disciplinary",
        "read",
        "discipline",
        Approval,
    ),
    (
        "class_teacher",
        "school-1",
        "school-1",
        "religion",
        "read",
        "religious_education",
        Allow,
    ),
    (
        "teacher",
        "school-1",
        "school-1",
        "religion",
        "read",
        "religious_education",
        Deny("not_granted"),
    ),
    (
        "director",
        "school-1",
        "school-1",
        "ethnicity",
        "read",
        "legal_administrative",
        Allow,
    ),
    // Nurse.
    (
        "nurse",
        "school-1",
        "school-1",
        "health",
        "read",
        "education",
        Approval,
    ),
    (
        "nurse",
        "school-1",
        "school-1",
        "health",
        "write",
        "education",
        Allow,
    ),
    (
        "nurse",
        "school-1",
        "school-1",
        "health",
        "break_glass",
        "medical_emergency",
        Allow,
    ),
    (
        "nurse",
        "school-1",
        "school-1",
        "health",
        "read",
        "payroll",
        Deny("purpose_not_allowed"),
    ),
    (
        "nurse",
        "school-1",
        "school-1",
        "psychological",
        "read",
        "education",
        Deny("not_granted"),
    ),
    // Psychologist.
    (
        "psychologist",
        "school-1",
        "school-1",
        "psychological",
        "write",
        "education",
        Allow,
    ),
    (
        "psychologist",
        "school-1",
        "school-1",
        "psychological",
        "read",
        "education",
        Approval,
    ),
    (
        "psychologist",
        "school-1",
        "school-1",
        "health",
        "read",
        "education",
        Deny("not_granted"),
    ),
    // Admissions: writes religion and ethnicity, never reads them back.
    (
        "admissions",
        "school-1",
        "school-1",
        "religion",
        "write",
        "religious_education",
        Allow,
    ),
    (
        "admissions",
        "school-1",
        "school-1",
        "religion",
        "read",
        "religious_education",
        Deny("not_granted"),
    ),
    (
        "admissions",
        "school-1",
        "school-1",
        "ethnicity",
        "write",
        "legal_administrative",
        Allow,
    ),
    (
        "admissions",
        "school-1",
        "school-1",
        "ethnicity",
        "read",
        "legal_administrative",
        Deny("not_granted"),
    ),
    (
        "admissions",
        "school-1",
        "school-1",
        "identity",
        "read",
        "legal_administrative",
        Allow,
    ),
    (
        "admissions",
        "school-1",
        "school-1",
        "health",
        "write",
        "legal_administrative",
        Allow,
    ),
    // School apps.
    (
        "app_timetable",
        "school-1",
        "school-1",
        "attendance",
        "write",
        "education",
        Allow,
    ),
    (
        "app_timetable",
        "school-1",
        "school-1",
        "academic",
        "read",
        "education",
        Deny("not_granted"),
    ),
    (
        "app_lms",
        "school-1",
        "school-1",
        "academic",
        "update",
        "education",
        Allow,
    ),
    (
        "app_lms",
        "school-1",
        "school-1",
        "contact",
        "read",
        "education",
        Deny("not_granted"),
    ),
    (
        "app_nurse_office",
        "school-1",
        "school-1",
        "health",
        "write",
        "education",
        Allow,
    ),
    (
        "app_nurse_office",
        "school-1",
        "school-1",
        "health",
        "break_glass",
        "medical_emergency",
        Deny("not_granted"),
    ),
    (
        "app_hr",
        "school-1",
        "school-1",
        "financial",
        "update",
        "payroll",
        Allow,
    ),
    (
        "app_admissions",
        "school-1",
        "school-1",
        "religion",
        "read",
        "religious_education",
        Deny("not_granted"),
    ),
    // A purpose the catalog does not allow is denied whatever the role.
    (
        "general_director",
        "*",
        "school-1",
        "religion",
        "read",
        "payroll",
        Deny("purpose_not_allowed"),
    ),
    (
        "director",
        "school-1",
        "school-1",
        "psychological",
        "read",
        "medical_emergency",
        Deny("purpose_not_allowed"),
    ),
    // Categories the school does not collect.
    (
        "general_director",
        "*",
        "school-1",
        "political_views",
        "read",
        "education",
        Deny("not_collected"),
    ),
    (
        "admissions",
        "school-1",
        "school-1",
        "sex_life",
        "write",
        "legal_administrative",
        Deny("not_collected"),
    ),
];

#[tokio::test]
async fn decisions_follow_the_policy_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let policy = Policy::load_dir(&dir)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(TABLE.len() >= 40);
    let mut roles_seen = std::collections::BTreeSet::new();
    for (i, (role, scope, school, cat, act, pur, want)) in TABLE.iter().enumerate() {
        let role = Role::parse(role).unwrap();
        roles_seen.insert(role);
        let roles = vec![(Scope::parse(scope).unwrap(), role)];
        let got = policy.decide(
            &roles,
            &SchoolId::parse(school).unwrap(),
            &Category::parse(cat).unwrap(),
            Action::parse(act).unwrap(),
            &Purpose::parse(pur).unwrap(),
        );
        let got_want = match &got {
            Decision::Allow => Allow,
            Decision::ApprovalRequired => Approval,
            Decision::Deny(r) => Deny(r.code()),
        };
        assert_eq!(
            got_want, *want,
            "row {i}: {role} {scope} {school} {cat} {act} {pur}: {got:?}"
        );
        // The same question again comes from the cache with the same answer.
        let again = policy.decide(
            &roles,
            &SchoolId::parse(school).unwrap(),
            &Category::parse(cat).unwrap(),
            Action::parse(act).unwrap(),
            &Purpose::parse(pur).unwrap(),
        );
        assert_eq!(again, got, "row {i} from cache");
    }
    assert_eq!(roles_seen.len(), Role::ALL.len(), "every role has rows");
}

#[tokio::test]
async fn bad_policy_lines_are_named() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let catalog = vault_core::Catalog::load(&dir.join("catalog.toml")).unwrap();
    let model = std::fs::read_to_string(dir.join("model.conf")).unwrap();
    let holidays = std::fs::read_to_string(dir.join("holidays-kz.toml")).unwrap();
    for (csv, want) in [
        ("p, janitor, *, health, read, *", "unknown role 'janitor'"),
        ("p, nurse, *, helth, read, *", "unknown category 'helth'"),
        ("p, nurse, *, health, peek, *", "unknown action 'peek'"),
        (
            "p, nurse, *, health, read, gossip",
            "unknown purpose 'gossip'",
        ),
        ("p, nurse, *, health, read", "6 columns"),
        ("g, nurse, nurse", "cannot inherit itself"),
        ("x, nurse", "starts with 'p'"),
    ] {
        let text = format!("# header\n\n{csv}\n");
        let err = Policy::from_parts(
            catalog.clone(),
            ("model.conf", &model),
            ("policy.csv", &text),
            ("holidays-kz.toml", &holidays),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("policy.csv:3: "), "{err}");
        assert!(err.contains(want), "{err}");
    }
}

#[tokio::test]
async fn working_days_skip_weekends_and_holidays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let policy = Policy::load_dir(&dir).await.unwrap();
    let d = |s: &str| chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
    // From Tuesday 1 December 2026: 3 weekends and Independence Day (16 December) are skipped.
    assert_eq!(
        policy.add_working_days(d("2026-12-01"), 15),
        d("2026-12-23")
    );
    assert!(!policy.is_working_day(d("2026-12-16")));
    assert!(!policy.is_working_day(d("2026-12-05")));
    assert!(policy.is_working_day(d("2026-12-17")));
    // Friday + 1 working day = Monday.
    assert_eq!(policy.add_working_days(d("2026-11-27"), 1), d("2026-11-30"));
}
