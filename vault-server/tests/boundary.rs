//! The access boundary, attacked the way it was broken: each test is named after one way a
//! principal of another school, or a role without the grant, got at personal data before the
//! core had one door. Real server, real HTTP, SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, start};
use serde_json::{Value, json};
use vault_core::{Role, SchoolId, Scope};
use vault_tests::{Backend, make_iin, on_both_backends};

on_both_backends!(
    an_auditor_of_another_school_reads_no_history,
    posts_on_another_schools_subject_answer_as_for_a_random_id,
    iin_search_is_scoped_granted_purposed_and_audited,
    export_of_a_subject_without_records_still_needs_the_grant,
    consents_are_listed_only_with_a_grant_and_audited,
    admissions_cannot_unblock_what_the_privacy_officer_blocked,
    a_record_emptied_of_fields_is_not_shredded_by_a_teacher,
    a_shredded_record_of_another_school_is_not_found_not_gone,
    one_approval_use_opens_all_its_categories_and_is_spent_only_on_a_read,
    category_lists_are_deduplicated_and_bounded,
    the_enrolment_form_is_one_request,
);

fn later(hours: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::hours(hours)).to_rfc3339()
}

const RANDOM: &str = "0190a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b";

/// A principal of school-2 with one role; returns its token.
async fn school2(s: &Server, role: Role) -> String {
    let v = s.core().await;
    let (_, token) = v
        .create_principal(
            &format!("{role} of school 2"),
            &[(Scope::School(SchoolId::parse("school-2").unwrap()), role)],
        )
        .await
        .unwrap();
    token.expose().to_owned()
}

fn id(r: &common::Resp) -> String {
    assert!(r.status < 300, "{}", r.text());
    r.json()["id"].as_str().unwrap().to_owned()
}

/// A student with an IIN and a guardian in school-1.
fn family(s: &Server, iin: &str) -> (String, String) {
    let sid = id(&s.post(
        "/v1/subjects",
        "admissions",
        None,
        json!({"school": "school-1", "kind": "student", "iin": iin}),
    ));
    let gid = id(&s.post(
        "/v1/subjects",
        "admissions",
        None,
        json!({"school": "school-1", "kind": "guardian"}),
    ));
    (sid, gid)
}

fn consent_body(gid: &str, cats: &[&str]) -> Value {
    json!({ "given_by": "guardian", "guardian": gid, "method": "paper", "evidence_ref": "scan 2026/9",
            "text_version": "v3", "categories": cats, "third_party": false, "cross_border": false,
            "publication": false })
}

fn consent(s: &Server, sid: &str, gid: &str, cats: &[&str]) -> String {
    id(&s.post(
        &format!("/v1/subjects/{sid}/consents"),
        "admissions",
        None,
        consent_body(gid, cats),
    ))
}

/// The subject's history as the school's auditor sees it, without the auditor's own reads.
fn history(s: &Server, sid: &str) -> Vec<Value> {
    let h = s.get(
        &format!("/v1/subjects/{sid}/access-history"),
        "auditor",
        None,
    );
    assert_eq!(h.status, 200, "{}", h.text());
    h.json()["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] != "audit.read")
        .cloned()
        .collect()
}

/// The same answer with every id in it replaced, as a caller compares two of them.
fn shape(r: &common::Resp, ids: &[&str]) -> (u16, Value, String) {
    let j = r.json();
    let mut detail = j["detail"].as_str().unwrap_or("").to_owned();
    for i in ids {
        detail = detail.replace(i, "<id>");
    }
    (r.status, j["code"].clone(), detail)
}

async fn an_auditor_of_another_school_reads_no_history(backend: Backend) {
    let s = start(backend).await;
    let (sid, _) = family(&s, &make_iin("150304", 5));
    let auditor2 = school2(&s, Role::Auditor).await;
    let victim = s.get(
        &format!("/v1/subjects/{sid}/access-history"),
        &auditor2,
        None,
    );
    let random = s.get(
        &format!("/v1/subjects/{RANDOM}/access-history"),
        &auditor2,
        None,
    );
    victim.problem(404, "not_found");
    assert_eq!(shape(&victim, &[&sid]), shape(&random, &[RANDOM]));
    // The school's own auditor does read it, and only auditors do.
    assert_eq!(history(&s, &sid).len(), 1, "the enrolment");
    s.get(
        &format!("/v1/subjects/{sid}/access-history"),
        "director",
        None,
    )
    .problem(403, "not_auditor");
    s.stop(&[]);
}

async fn posts_on_another_schools_subject_answer_as_for_a_random_id(backend: Backend) {
    let s = start(backend).await;
    let (sid, gid) = family(&s, &make_iin("150304", 5));
    let cid = consent(&s, &sid, &gid, &["health"]);
    let bg = id(&s.post(
        "/v1/break-glass",
        "nurse",
        None,
        json!({"subject": sid, "justification": "collapsed in the gym, unconscious"}),
    ));
    let before = history(&s, &sid);
    let admissions2 = school2(&s, Role::Admissions).await;
    let nurse2 = school2(&s, Role::Nurse).await;
    let director2 = school2(&s, Role::Director).await;
    let privacy2 = school2(&s, Role::PrivacyOfficer).await;
    let calls: Vec<(&str, String, &str, Value)> = vec![
        (
            "consent",
            String::from("/v1/subjects/{}/consents"),
            admissions2.as_str(),
            consent_body(RANDOM, &["health"]),
        ),
        (
            "legal ground",
            String::from("/v1/subjects/{}/legal-grounds"),
            privacy2.as_str(),
            json!({"category": "health", "ground": "operator_obligation_by_law", "reference": "Law on Education Art. 1"}),
        ),
        (
            "block",
            String::from("/v1/subjects/{}/block"),
            privacy2.as_str(),
            json!({}),
        ),
        (
            "withdraw",
            String::from("/v1/consents/{}/withdraw"),
            privacy2.as_str(),
            json!({}),
        ),
        (
            "review",
            String::from("/v1/break-glass/{}/review"),
            director2.as_str(),
            json!({"note": "reviewed, fine"}),
        ),
    ];
    for (what, path, who, body) in &calls {
        let victim_id = match *what {
            "withdraw" => cid.as_str(),
            "review" => bg.as_str(),
            _ => sid.as_str(),
        };
        let victim = s.post(&path.replace("{}", victim_id), who, None, body.clone());
        let random = s.post(&path.replace("{}", RANDOM), who, None, body.clone());
        assert_eq!(victim.status, 404, "{what}: {}", victim.text());
        assert_eq!(
            shape(&victim, &[victim_id]),
            shape(&random, &[RANDOM]),
            "{what}"
        );
    }
    // Bodies that carry the subject id: an access request and a break-glass.
    for (what, path, who, body) in [
        (
            "access request",
            "/v1/access-requests",
            nurse2.as_str(),
            json!({"subject": "{}", "categories": ["health"], "purpose": "education",
                   "justification": "hearing support plan for the term"}),
        ),
        (
            "break-glass",
            "/v1/break-glass",
            nurse2.as_str(),
            json!({"subject": "{}", "justification": "collapsed in the gym, unconscious"}),
        ),
    ] {
        let with =
            |x: &str| serde_json::from_str::<Value>(&body.to_string().replace("{}", x)).unwrap();
        let victim = s.post(path, who, None, with(&sid));
        let random = s.post(path, who, None, with(RANDOM));
        assert_eq!(victim.status, 404, "{what}: {}", victim.text());
        assert_eq!(shape(&victim, &[&sid]), shape(&random, &[RANDOM]), "{what}");
    }
    assert_eq!(
        history(&s, &sid),
        before,
        "refused calls from another school leave nothing in the victim's history"
    );
    s.stop(&[]);
}

async fn iin_search_is_scoped_granted_purposed_and_audited(backend: Backend) {
    let s = start(backend).await;
    let iin = make_iin("150304", 5);
    let nobody = make_iin("150305", 5);
    let (sid, _) = family(&s, &iin);
    let admissions2 = school2(&s, Role::Admissions).await;
    let search = |who: &str, iin: &str, why: Option<&str>| {
        s.post("/v1/subjects/search", who, why, json!({ "iin": iin }))
    };
    let why = Some("legal_administrative");
    let victim = search(&admissions2, &iin, why);
    let random = search(&admissions2, &nobody, why);
    victim.problem(404, "not_found");
    assert_eq!(victim.text(), random.text());
    assert!(!victim.text().contains(&sid));
    // Only roles granted `search` may search, and every search names a purpose.
    search("auditor", &iin, why).problem(403, "not_granted");
    search("teacher", &iin, Some("education")).problem(403, "not_granted");
    search("admissions", &iin, None).problem(400, "purpose_required");
    let found = search("admissions", &iin, why);
    assert_eq!(found.json()["id"], sid.as_str());
    assert!(
        history(&s, &sid)
            .iter()
            .any(|e| e["action"] == "subject.search" && e["outcome"] == "allowed"),
        "the search is in the subject's history"
    );
    // Another school enrols the same child without learning that school-1 has.
    let enrol2 = s.post(
        "/v1/subjects",
        &admissions2,
        None,
        json!({"school": "school-2", "kind": "student", "iin": iin}),
    );
    assert_eq!(enrol2.status, 201, "{}", enrol2.text());
    assert_ne!(enrol2.json()["id"], sid.as_str());
    // And school-1 still finds its own.
    assert_eq!(search("admissions", &iin, why).json()["id"], sid.as_str());
    s.stop(&[&iin]);
}

async fn export_of_a_subject_without_records_still_needs_the_grant(backend: Backend) {
    let s = start(backend).await;
    let (sid, gid) = family(&s, &make_iin("150304", 5));
    consent(&s, &sid, &gid, &["health"]);
    for who in ["teacher", "nurse", "admissions", "auditor", "director"] {
        s.get(&format!("/v1/subjects/{sid}/export"), who, None)
            .problem(403, "not_granted");
    }
    let e = s.get(&format!("/v1/subjects/{sid}/export"), "privacy", None);
    assert_eq!(e.status, 200, "{}", e.text());
    assert_eq!(e.json()["consents"].as_array().unwrap().len(), 1);
    s.stop(&[]);
}

async fn consents_are_listed_only_with_a_grant_and_audited(backend: Backend) {
    let s = start(backend).await;
    let (sid, gid) = family(&s, &make_iin("150304", 5));
    consent(&s, &sid, &gid, &["health", "religion"]);
    for who in ["teacher", "nurse", "auditor"] {
        let r = s.get(&format!("/v1/subjects/{sid}/consents"), who, None);
        r.problem(403, "not_granted");
        assert!(!r.text().contains("religion") && !r.text().contains("scan"));
    }
    let list = s.get(&format!("/v1/subjects/{sid}/consents"), "privacy", None);
    assert_eq!(list.json()["consents"][0]["evidence_ref"], "scan 2026/9");
    let h = history(&s, &sid);
    assert!(
        h.iter()
            .any(|e| e["action"] == "consent.list" && e["outcome"] == "allowed")
    );
    assert!(
        h.iter()
            .any(|e| e["action"] == "consent.list" && e["outcome"] == "denied")
    );
    s.stop(&[]);
}

async fn admissions_cannot_unblock_what_the_privacy_officer_blocked(backend: Backend) {
    let s = start(backend).await;
    let (sid, _) = family(&s, &make_iin("150304", 5));
    for who in ["admissions", "director", "teacher"] {
        s.post(&format!("/v1/subjects/{sid}/block"), who, None, json!({}))
            .problem(403, "not_granted");
    }
    let b = s.post(
        &format!("/v1/subjects/{sid}/block"),
        "privacy",
        None,
        json!({}),
    );
    assert_eq!(b.status, 200, "{}", b.text());
    for who in ["admissions", "director", "general_director"] {
        s.post(&format!("/v1/subjects/{sid}/unblock"), who, None, json!({}))
            .problem(403, "not_granted");
    }
    // Still blocked: a write is refused.
    s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "Dana"}}),
    )
    .problem(403, "blocked");
    let u = s.post(
        &format!("/v1/subjects/{sid}/unblock"),
        "privacy",
        None,
        json!({}),
    );
    assert_eq!(u.status, 200, "{}", u.text());
    s.stop(&[]);
}

async fn a_record_emptied_of_fields_is_not_shredded_by_a_teacher(backend: Backend) {
    let s = start(backend).await;
    let (sid, _) = family(&s, &make_iin("150304", 5));
    let made = s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "Dana"}}),
    );
    let rid = id(&made);
    let emptied = s.call(
        "PATCH",
        &format!("/v1/records/{rid}"),
        Some("admissions"),
        &[
            ("Content-Type", "application/json"),
            ("X-Vault-Purpose", "legal_administrative"),
            ("If-Match", "\"v1\""),
        ],
        Some(
            json!({"fields": {"full_name": null}})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(emptied.status, 200, "{}", emptied.text());
    for who in ["teacher", "admissions", "director", "nurse"] {
        s.call(
            "DELETE",
            &format!("/v1/records/{rid}"),
            Some(who),
            &[("X-Vault-Purpose", "legal_administrative")],
            None,
        )
        .problem(403, "not_granted");
    }
    let shred = s.call(
        "DELETE",
        &format!("/v1/records/{rid}"),
        Some("privacy"),
        &[("X-Vault-Purpose", "legal_administrative")],
        None,
    );
    assert_eq!(shred.status, 200, "{}", shred.text());
    s.stop(&[]);
}

async fn a_shredded_record_of_another_school_is_not_found_not_gone(backend: Backend) {
    let s = start(backend).await;
    let (sid, _) = family(&s, &make_iin("150304", 5));
    let rid = id(&s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "Dana"}}),
    ));
    let shred = s.call(
        "DELETE",
        &format!("/v1/records/{rid}"),
        Some("privacy"),
        &[("X-Vault-Purpose", "legal_administrative")],
        None,
    );
    assert_eq!(shred.status, 200, "{}", shred.text());
    let privacy2 = school2(&s, Role::PrivacyOfficer).await;
    let director2 = school2(&s, Role::Director).await;
    for who in [&privacy2, &director2] {
        let victim = s.get(
            &format!("/v1/records/{rid}"),
            who,
            Some("legal_administrative"),
        );
        let random = s.get(
            &format!("/v1/records/{RANDOM}"),
            who,
            Some("legal_administrative"),
        );
        victim.problem(404, "not_found");
        assert_eq!(shape(&victim, &[&rid]), shape(&random, &[RANDOM]));
        let del = s.call(
            "DELETE",
            &format!("/v1/records/{rid}"),
            Some(who),
            &[("X-Vault-Purpose", "legal_administrative")],
            None,
        );
        del.problem(404, "not_found");
    }
    // In its own school it is gone, and says so.
    s.get(
        &format!("/v1/records/{rid}"),
        "director",
        Some("legal_administrative"),
    )
    .problem(410, "shredded");
    s.stop(&[]);
}

async fn one_approval_use_opens_all_its_categories_and_is_spent_only_on_a_read(backend: Backend) {
    let s = start(backend).await;
    let (sid, gid) = family(&s, &make_iin("150304", 5));
    consent(&s, &sid, &gid, &["health"]);
    let rid = id(&s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student",
               "fields": {"full_name": "Dana", "health_issues": "MARKER-asthma"}}),
    ));
    let added = s.call(
        "PATCH",
        &format!("/v1/records/{rid}"),
        Some("director"),
        &[
            ("Content-Type", "application/json"),
            ("X-Vault-Purpose", "discipline"),
            ("If-Match", "\"v1\""),
        ],
        Some(
            json!({"fields": {"disciplinary_issues": {"2026-10": "MARKER-late"}}})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(added.status, 200, "{}", added.text());
    // The director asks for both approval categories; the general director approves one use.
    let q = id(&s.post(
        "/v1/access-requests",
        "director",
        None,
        json!({"subject": sid, "record": rid, "categories": ["health", "disciplinary"],
               "purpose": "subject_access", "justification": "the family's access request of 2 Dec"}),
    ));
    let a = s.post(
        &format!("/v1/access-requests/{q}/approve"),
        "general_director",
        None,
        json!({"expires_at": later(1), "uses": 1}),
    );
    assert_eq!(a.status, 200, "{}", a.text());
    let read = || {
        s.get(
            &format!("/v1/records/{rid}"),
            "director",
            Some("subject_access"),
        )
        .json()
    };
    let first = read();
    assert_eq!(
        first["fields"]["health_issues"]["value"], "MARKER-asthma",
        "{first}"
    );
    assert_eq!(
        first["fields"]["disciplinary_issues"]["value"]["2026-10"], "MARKER-late",
        "{first}"
    );
    let second = read();
    for f in ["health_issues", "disciplinary_issues"] {
        assert_eq!(
            second["fields"][f]["reason"], "approval_required",
            "{second}"
        );
    }

    // Without a legal basis the use is not spent: it opens the read after consent is recorded.
    let (sid2, gid2) = family(&s, &make_iin("150306", 5));
    let rid2 = id(&s.post(
        &format!("/v1/subjects/{sid2}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "Aibek"}}),
    ));
    // Health is written by the nurse once consent exists; withdraw-free path: record consent,
    // write, then withdraw the consent so the basis is gone while the data stays.
    let c2 = consent(&s, &sid2, &gid2, &["health"]);
    let w = s.call(
        "PATCH",
        &format!("/v1/records/{rid2}"),
        Some("nurse"),
        &[
            ("Content-Type", "application/json"),
            ("X-Vault-Purpose", "education"),
            ("If-Match", "\"v1\""),
        ],
        Some(
            json!({"fields": {"health_issues": "MARKER-diabetes"}})
                .to_string()
                .as_bytes(),
        ),
    );
    assert_eq!(w.status, 200, "{}", w.text());
    let wd = s.post(
        &format!("/v1/consents/{c2}/withdraw"),
        "privacy",
        None,
        json!({}),
    );
    assert_eq!(wd.status, 200, "{}", wd.text());
    let q2 = id(&s.post(
        "/v1/access-requests",
        "nurse",
        None,
        json!({"subject": sid2, "categories": ["health"], "purpose": "education",
               "justification": "care plan for the new term"}),
    ));
    let a2 = s.post(
        &format!("/v1/access-requests/{q2}/approve"),
        "director",
        None,
        json!({"expires_at": later(1), "uses": 1}),
    );
    assert_eq!(a2.json()["uses_left"], 1);
    let nurse_read = || {
        s.get(&format!("/v1/records/{rid2}"), "nurse", Some("education"))
            .json()
    };
    assert_eq!(
        nurse_read()["fields"]["health_issues"]["reason"],
        "no_legal_basis"
    );
    consent(&s, &sid2, &gid2, &["health"]);
    assert_eq!(
        nurse_read()["fields"]["health_issues"]["value"],
        "MARKER-diabetes"
    );
    assert_eq!(
        nurse_read()["fields"]["health_issues"]["reason"],
        "approval_required"
    );
    s.stop(&["MARKER"]);
}

async fn category_lists_are_deduplicated_and_bounded(backend: Backend) {
    let s = start(backend).await;
    let (sid, gid) = family(&s, &make_iin("150304", 5));
    let many: Vec<&str> = vec!["health"; 200_000];
    let q = s.post(
        "/v1/access-requests",
        "nurse",
        None,
        json!({"subject": sid, "categories": many, "purpose": "education",
               "justification": "hearing support plan for the term"}),
    );
    assert_eq!(q.status, 201, "{}", q.text());
    assert_eq!(q.json()["categories"], json!(["health"]));
    let c = s.post(
        &format!("/v1/subjects/{sid}/consents"),
        "admissions",
        None,
        consent_body(&gid, &many),
    );
    assert_eq!(c.status, 201, "{}", c.text());
    assert_eq!(c.json()["categories"], json!(["health"]));
    // A category the school does not collect is named and refused.
    let bad = s.post(
        "/v1/access-requests",
        "nurse",
        None,
        json!({"subject": sid, "categories": ["health", "political_views"], "purpose": "education",
               "justification": "hearing support plan for the term"}),
    );
    let j = bad.problem(400, "invalid_request");
    assert!(
        j["detail"].as_str().unwrap().contains("political_views"),
        "{j}"
    );
    // The audit entries stay small: one category each.
    for e in history(&s, &sid) {
        assert!(e["categories"].as_array().unwrap().len() <= 1, "{e}");
    }
    s.stop(&[]);
}

async fn the_enrolment_form_is_one_request(backend: Backend) {
    let s = start(backend).await;
    let (sid, gid) = family(&s, &make_iin("150304", 5));
    consent(&s, &sid, &gid, &["religion", "ethnicity", "health"]);
    let form = s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student",
               "fields": {"full_name": "Aigerim Bekova", "phones": ["+7 701 000 0000"],
                          "religion": "MARKER-religion", "ethnic_origin": "MARKER-ethnicity",
                          "health_issues": "MARKER-health"},
               "purposes": {"religion": "religious_education"}}),
    );
    assert_eq!(form.status, 201, "{}", form.text());
    let entries = history(&s, &sid);
    let write = |purpose: &str| {
        entries
            .iter()
            .find(|e| e["action"] == "record.write" && e["purpose"] == purpose)
            .unwrap_or_else(|| panic!("no write entry for {purpose}: {entries:?}"))["categories"]
            .clone()
    };
    assert_eq!(write("religious_education"), json!(["religion"]));
    assert_eq!(
        write("legal_administrative"),
        json!(["contact", "ethnicity", "health", "identity"])
    );
    // Without the per-category purpose the same form is refused, naming the category.
    let one = s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "A", "religion": "MARKER-religion"}}),
    );
    let j = one.problem(403, "purpose_not_allowed");
    assert!(j["detail"].as_str().unwrap().contains("religion"), "{j}");
    // A purpose for a category the form does not write is a mistake, said as one.
    let stray = s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "A"},
               "purposes": {"religion": "religious_education"}}),
    );
    stray.problem(400, "invalid_request");
    s.stop(&["MARKER"]);
}
