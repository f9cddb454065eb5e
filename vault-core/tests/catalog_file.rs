//! The shipped catalog, loaded from `policies/`, and what validation refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::path::Path;

use vault_core::{Catalog, Category, FieldName, Purpose, RecordType, Tier};

fn shipped() -> (String, Catalog) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/catalog.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let catalog = Catalog::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (text, catalog)
}

#[test]
fn shipped_catalog_is_valid_and_complete() {
    let (_, c) = shipped();
    for rt in ["student", "staff", "guardian"] {
        assert!(
            c.record_type(&RecordType::parse(rt).unwrap()).is_some(),
            "{rt}"
        );
    }
    let tier = |n: &str| c.category(&Category::parse(n).unwrap()).map(|d| d.tier);
    for n in [
        "health",
        "psychological",
        "religion",
        "ethnicity",
        "criminal_record",
    ] {
        assert_eq!(tier(n), Some(Tier::Special), "{n}");
        assert!(
            c.category(&Category::parse(n).unwrap())
                .unwrap()
                .legal_basis
        );
    }
    for n in ["political_views", "association_membership", "sex_life"] {
        assert_eq!(tier(n), Some(Tier::NotCollected), "{n}");
    }
    for n in ["health", "psychological", "criminal_record", "disciplinary"] {
        assert!(
            c.category(&Category::parse(n).unwrap())
                .unwrap()
                .director_approval,
            "{n}"
        );
    }
    assert!(c.purpose_allowed(
        &Category::parse("health").unwrap(),
        &Purpose::parse("medical_emergency").unwrap()
    ));
    assert!(!c.purpose_allowed(
        &Category::parse("health").unwrap(),
        &Purpose::parse("payroll").unwrap()
    ));
    let student = c
        .record_type(&RecordType::parse("student").unwrap())
        .unwrap();
    assert!(student.fields().count() >= 20);
    assert!(
        student
            .field(&FieldName::parse("religion").unwrap())
            .is_some()
    );
    assert_eq!(c.policy().review_due().to_string(), "2025-07-01");
}

fn refused(text: &str) -> vault_core::CatalogError {
    Catalog::parse(text, "policies/catalog.toml").expect_err("catalog should be refused")
}

#[test]
fn unknown_category_is_named_with_its_place() {
    let (text, _) = shipped();
    let bad = text.replace(
        r#"{ name = "religion", category = "religion", type = "text" },"#,
        r#"{ name = "religion", category = "relgion", type = "text" },"#,
    );
    let e = refused(&bad);
    assert!(e.reason.contains("unknown category 'relgion'"), "{e}");
    assert!(e.place.starts_with("record_types.student.fields["), "{e}");
    let line = bad.lines().position(|l| l.contains("relgion")).unwrap() + 1;
    assert_eq!(e.line, line, "{e}");
    assert!(e.to_string().starts_with("policies/catalog.toml:"), "{e}");
}

#[test]
fn duplicate_field_is_named() {
    let (text, _) = shipped();
    let bad = text.replace(
        r#"{ name = "email", category = "contact", type = "text" },"#,
        r#"{ name = "email", category = "contact", type = "text" },
  { name = "email", category = "contact", type = "text" },"#,
    );
    let e = refused(&bad);
    assert!(e.reason.contains("duplicate field 'email'"), "{e}");
    assert!(e.reason.contains("guardian"), "{e}");
}

#[test]
fn category_without_purpose_is_named() {
    let (text, _) = shipped();
    let bad = text.replace(
        r#"purposes = ["religious_education", "subject_access"]"#,
        "purposes = []",
    );
    let e = refused(&bad);
    assert_eq!(e.place, "categories.religion");
    assert!(e.reason.contains("has no purpose"), "{e}");
}

#[test]
fn unknown_purpose_and_syntax_errors_are_named() {
    let (text, _) = shipped();
    let e = refused(&text.replace(
        r#""religious_education", "subject_access"]"#,
        r#""religous_education"]"#,
    ));
    assert!(
        e.reason.contains("unknown purpose 'religous_education'"),
        "{e}"
    );
    assert_eq!(e.place, "categories.religion.purposes[0]");

    let e = refused(&text.replace("tier = \"special\"", "tier = \"secret\""));
    assert_eq!(e.place, "syntax");
    assert!(e.line > 0 && e.reason.contains("secret"), "{e}");

    let e = refused(&text.replace(
        "review_every_years = 3",
        "review_every_years = 3\nreviewer = \"x\"",
    ));
    assert!(e.reason.contains("reviewer"), "{e}");
}

#[test]
fn special_category_without_legal_basis_is_refused() {
    let (text, _) = shipped();
    let bad = text.replacen("legal_basis = true\n", "", 1);
    let e = refused(&bad);
    assert!(e.reason.contains("legal_basis"), "{e}");
}
