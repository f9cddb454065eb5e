//! Two server instances on one PostgreSQL, as in production: no lost update, approvals and
//! revocations seen by both at once, one intact audit chain with both writing, and a key
//! rotation while both serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{start, start_with};
use serde_json::json;
use vault_core::{Category, Role, SchoolId, Scope};
use vault_tests::{Backend, pg_admin_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_share_one_postgresql() {
    // Runs everywhere: pg_admin_url starts PostgreSQL when none is named, or fails.
    pg_admin_url();
    let a = start(Backend::Postgres).await;
    let b = start_with(Backend::Postgres, Some(&a)).await;
    assert_ne!(a.addr, b.addr);

    // Write on A, read on B.
    let sid = a.new_student();
    let rec = a.post(&format!("/v1/subjects/{sid}/records"), "admissions", Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "MARKER-one", "address": "MARKER-start"}}));
    let rid = rec.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/records/{rid}");
    assert_eq!(
        b.get(&path, "admissions", Some("legal_administrative"))
            .json()["fields"]["full_name"]["value"],
        "MARKER-one"
    );

    // The same update from both at once, both holding version 1: exactly one wins.
    let patch = |s: &common::Server, v: &str| {
        let h = [
            ("Content-Type", "application/json"),
            ("X-Vault-Purpose", "legal_administrative"),
            ("If-Match", "\"v1\""),
        ];
        s.call(
            "PATCH",
            &path,
            Some("admissions"),
            &h,
            Some(json!({"fields": {"address": v}}).to_string().as_bytes()),
        )
    };
    let (ra, rb) = std::thread::scope(|sc| {
        let ha = sc.spawn(|| patch(&a, "MARKER-from-a"));
        let hb = sc.spawn(|| patch(&b, "MARKER-from-b"));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    let mut codes = [ra.status, rb.status];
    codes.sort();
    assert_eq!(
        codes,
        [200, 412],
        "one update wins, the other is told it is stale"
    );
    let winner = if ra.status == 200 {
        "MARKER-from-a"
    } else {
        "MARKER-from-b"
    };
    let now = a
        .get(&path, "admissions", Some("legal_administrative"))
        .json();
    assert_eq!(now["fields"]["address"]["value"], winner, "no lost update");
    assert_eq!(now["version"], 2);

    // An approval made on A opens on B; a revocation on B closes it on A.
    let consent = a.post(&format!("/v1/subjects/{sid}/consents"), "admissions", None, json!({
        "given_by": "subject", "confirmed_adult": true, "method": "paper", "evidence_ref": "scan 1", "text_version": "v3",
        "categories": ["health"], "third_party": false, "cross_border": false, "publication": false }));
    assert_eq!(consent.status, 201, "{}", consent.text());
    let hp = a.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"special_educational_needs": "MARKER-sen"}}),
    );
    let hid = hp.json()["id"].as_str().unwrap().to_owned();
    let q = b.post("/v1/access-requests", "nurse", None, json!({"subject": sid, "record": hid, "categories": ["health"], "purpose": "education", "justification": "support plan for the term"}));
    let qid = q.json()["id"].as_str().unwrap().to_owned();
    let exp = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    assert_eq!(
        a.post(
            &format!("/v1/access-requests/{qid}/approve"),
            "director",
            None,
            json!({"expires_at": exp, "uses": 10})
        )
        .status,
        200
    );
    let hpath = format!("/v1/records/{hid}");
    assert_eq!(
        b.get(&hpath, "nurse", Some("education")).json()["fields"]["special_educational_needs"]["value"],
        "MARKER-sen"
    );
    assert_eq!(
        b.post(
            &format!("/v1/access-requests/{qid}/revoke"),
            "director",
            None,
            json!({})
        )
        .status,
        200
    );
    assert_eq!(
        a.get(&hpath, "nurse", Some("education")).json()["fields"]["special_educational_needs"]["reason"],
        "approval_required"
    );

    // A revoked token is refused by both at once.
    let core = a.core().await;
    let (p, token) = core
        .create_principal(
            "Timetable",
            &[(
                Scope::School(SchoolId::parse("school-1").unwrap()),
                Role::AppTimetable,
            )],
        )
        .await
        .unwrap();
    assert_eq!(a.get("/v1/me", token.expose(), None).status, 200);
    assert_eq!(b.get("/v1/me", token.expose(), None).status, 200);
    core.revoke_principal(p.id()).await.unwrap();
    assert_eq!(a.get("/v1/me", token.expose(), None).status, 401);
    assert_eq!(b.get("/v1/me", token.expose(), None).status, 401);

    // Both write audit entries concurrently; the chain stays one and intact.
    std::thread::scope(|sc| {
        for s in [&a, &b] {
            for _ in 0..2 {
                let path = path.clone();
                sc.spawn(move || {
                    for _ in 0..25 {
                        assert_eq!(
                            s.get(&path, "admissions", Some("legal_administrative"))
                                .status,
                            200
                        );
                    }
                });
            }
        }
    });
    let v = a.get("/v1/audit/verify", "auditor", None).json();
    assert_eq!(v["intact"], true, "{v}");
    assert!(v["entries"].as_u64().unwrap() > 100);

    // A rotation while both serve: both keep reading and writing.
    let identity = Category::parse("identity").unwrap();
    core.rotate_kek(&identity, None).await.unwrap();
    for s in [&a, &b] {
        let r = s.post(
            &format!("/v1/subjects/{sid}/records"),
            "admissions",
            Some("legal_administrative"),
            json!({"record_type": "student", "fields": {"full_name": "MARKER-after-rotation"}}),
        );
        assert_eq!(r.status, 201, "{}", r.text());
    }
    core.rewrap(None, 100, &mut |_| {}).await.unwrap();
    core.retire_kek(&identity, 1, None).await.unwrap();
    for s in [&a, &b] {
        assert_eq!(
            s.get(&path, "admissions", Some("legal_administrative"))
                .json()["fields"]["full_name"]["value"],
            "MARKER-one"
        );
    }
    assert_eq!(core.verify_audit().await.unwrap().problem, None);
    drop(core);
    b.stop(&["MARKER"]);
    a.stop(&["MARKER"]);
}
