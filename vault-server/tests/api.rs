//! The real `vault-server` binary on port 0, over real HTTP, on SQLite and on PostgreSQL: a
//! school day (enrol, ask, approve, read, export), then every way a client can get it wrong.
//! Each server's whole log is scanned at the end for the markers and tokens the test used.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{parse_openmetrics, start};
use serde_json::{Value, json};
use vault_core::{Role, SchoolId, Scope, Unlock, Vault};
use vault_tests::{Backend, make_iin, on_both_backends, policy};

on_both_backends!(
    school_day_over_http,
    clients_get_clear_errors,
    a_running_server_picks_up_a_rotated_keyring
);

fn later(hours: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::hours(hours)).to_rfc3339()
}

async fn school_day_over_http(backend: Backend) {
    let s = start(backend).await;
    let iin = make_iin("150304", 5);
    // Admissions enrols a student and the guardian, and records the guardian's consent.
    let student = s.post(
        "/v1/subjects",
        "admissions",
        None,
        json!({"school": "school-1", "kind": "student", "iin": iin}),
    );
    assert_eq!(student.status, 201, "{}", student.text());
    let sid = student.json()["id"].as_str().unwrap().to_owned();
    let guardian = s.post(
        "/v1/subjects",
        "admissions",
        None,
        json!({"school": "school-1", "kind": "guardian"}),
    );
    let gid = guardian.json()["id"].as_str().unwrap().to_owned();
    let consent = s.post(
        &format!("/v1/subjects/{sid}/consents"),
        "admissions",
        None,
        json!({
        "given_by": "guardian", "guardian": gid, "method": "paper", "evidence_ref": "scan 2026/77",
        "text_version": "v3", "categories": ["health", "religion"], "third_party": false,
        "cross_border": false, "publication": false }),
    );
    assert_eq!(consent.status, 201, "{}", consent.text());
    let rec = s.post(&format!("/v1/subjects/{sid}/records"), "admissions", Some("legal_administrative"), json!({
        "record_type": "student",
        "fields": { "full_name": "MARKER-Aigerim Bekova", "special_educational_needs": "MARKER-hearing aid",
                    "date_of_birth": "2015-03-04" } }));
    assert_eq!(rec.status, 201, "{}", rec.text());
    assert_eq!(rec.headers["etag"], "\"v1\"");
    let rid = rec.json()["id"].as_str().unwrap().to_owned();

    // The nurse asks for health data: sealed, and the response says how to open it.
    let r = s.get(&format!("/v1/records/{rid}"), "nurse", Some("education"));
    assert_eq!(r.status, 200, "{}", r.text());
    let f = &r.json()["fields"];
    assert_eq!(f["full_name"]["value"], "MARKER-Aigerim Bekova");
    assert_eq!(f["special_educational_needs"]["sealed"], true);
    assert_eq!(
        f["special_educational_needs"]["reason"],
        "approval_required"
    );
    assert_eq!(f["special_educational_needs"]["category"], "health");
    assert_eq!(
        f["special_educational_needs"]["open_with"]["request"],
        "POST /v1/access-requests"
    );
    assert!(!r.text().contains("hearing aid"));
    let req = s.post(
        "/v1/access-requests",
        "nurse",
        None,
        json!({
        "subject": sid, "record": rid, "categories": ["health"], "purpose": "education",
        "justification": "hearing support plan for the new term" }),
    );
    assert_eq!(req.status, 201, "{}", req.text());
    let qid = req.json()["id"].as_str().unwrap().to_owned();

    // The director sees it pending and approves one use.
    let pending = s.get("/v1/access-requests/pending", "director", None);
    assert!(pending.text().contains(&qid));
    let self_approve = s.post(
        &format!("/v1/access-requests/{qid}/approve"),
        "nurse",
        None,
        json!({"expires_at": later(1), "uses": 1}),
    );
    self_approve.problem(403, "self_approval");
    let ok = s.post(
        &format!("/v1/access-requests/{qid}/approve"),
        "director",
        None,
        json!({"expires_at": later(1), "uses": 1}),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.json()["status"], "approved");

    // The nurse reads it, once.
    let r = s.get(&format!("/v1/records/{rid}"), "nurse", Some("education"));
    assert_eq!(
        r.json()["fields"]["special_educational_needs"]["value"],
        "MARKER-hearing aid"
    );
    let r = s.get(&format!("/v1/records/{rid}"), "nurse", Some("education"));
    assert_eq!(
        r.json()["fields"]["special_educational_needs"]["reason"],
        "approval_required"
    );

    // The privacy officer exports everything held about the student.
    let e = s.get(&format!("/v1/subjects/{sid}/export"), "privacy", None);
    assert_eq!(e.status, 200, "{}", e.text());
    let ej = e.json();
    assert_eq!(
        ej["records"][0]["fields"]["special_educational_needs"]["value"],
        "MARKER-hearing aid"
    );
    assert_eq!(ej["consents"].as_array().unwrap().len(), 1);
    let history = ej["access_history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["action"] == "access.approve"));
    assert!(
        history
            .iter()
            .any(|h| h["action"] == "record.read" && h["outcome"] == "approval_required")
    );

    // Find by IIN (in the body), and the auditor's view.
    let found = s.post(
        "/v1/subjects/search",
        "admissions",
        Some("legal_administrative"),
        json!({"iin": iin}),
    );
    assert_eq!(found.json()["id"], sid.as_str());
    let v = s.get("/v1/audit/verify", "auditor", None);
    assert_eq!(v.json()["intact"], true, "{}", v.text());
    s.get("/v1/audit/verify", "nurse", None)
        .problem(403, "not_auditor");
    let h = s.get(
        &format!("/v1/subjects/{sid}/access-history"),
        "auditor",
        None,
    );
    assert!(h.json()["entries"].as_array().unwrap().len() > 5);

    // Metrics: valid Prometheus text, with the decisions made above.
    let m = s.call("GET", "/metrics", None, &[], None);
    assert_eq!(m.status, 200);
    assert!(
        m.headers["content-type"].starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        m.headers["content-type"]
    );
    let families = parse_openmetrics(&m.text());
    for want in [
        "vault_http_requests counter",
        "vault_http_request_duration_seconds histogram",
        "vault_field_decisions counter",
        "vault_group_commit_batch_size histogram",
        "vault_group_commit_duration_seconds histogram",
        "vault_group_commit_queue_depth gauge",
        "process_resident_memory_bytes gauge",
        "process_open_fds gauge",
        "process_cpu_seconds counter",
    ] {
        assert!(
            families.iter().any(|f| f.starts_with(&format!("{want} "))),
            "{want} missing from {families:?}"
        );
    }
    // The creates above went through the record writer's group commit.
    assert!(
        m.text().lines().any(|l| l
            .starts_with(r#"vault_group_commit_batch_size_count{writer="records"}"#)
            && !l.ends_with(" 0")),
        "{}",
        m.text()
    );
    assert!(
        m.text()
            .contains("vault_field_decisions_total{outcome=\"approval_required\"}")
    );
    assert!(
        m.text().contains("route=\"/v1/records/{id}\""),
        "routes are patterns, not paths with ids"
    );
    assert!(!m.text().contains(&rid));

    let mut markers = vec!["MARKER", "hearing aid", "Aigerim", iin.as_str()];
    markers.push("2015-03-04");
    s.stop(&markers);
}

async fn clients_get_clear_errors(backend: Backend) {
    let s = start(backend).await;
    let sid = s.new_student();
    let rec = s.post(&format!("/v1/subjects/{sid}/records"), "admissions", Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "MARKER-first", "address": "MARKER-Almaty"}}));
    assert_eq!(rec.status, 201, "{}", rec.text());
    let rid = rec.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/records/{rid}");
    let patch = |if_match: Option<&str>, v: &str| {
        let mut h = vec![
            ("Content-Type", "application/json"),
            ("X-Vault-Purpose", "legal_administrative"),
        ];
        if let Some(m) = if_match {
            h.push(("If-Match", m));
        }
        s.call(
            "PATCH",
            &path,
            Some("admissions"),
            &h,
            Some(json!({"fields": {"address": v}}).to_string().as_bytes()),
        )
    };

    // Optimistic concurrency: a stale If-Match is a 412 and changes nothing.
    let ok = patch(Some("\"v1\""), "MARKER-Astana");
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(ok.headers["etag"], "\"v2\"");
    patch(Some("\"v1\""), "MARKER-Shymkent").problem(412, "stale_version");
    patch(None, "MARKER-Shymkent").problem(428, "if_match_required");
    let now = s.get(&path, "admissions", Some("legal_administrative"));
    assert_eq!(now.json()["fields"]["address"]["value"], "MARKER-Astana");
    assert_eq!(now.json()["version"], 2);

    // A read without a purpose is a 400 naming the allowed ones; an unknown one too.
    let p = s
        .get(&path, "admissions", None)
        .problem(400, "purpose_required");
    assert!(p["detail"].as_str().unwrap().contains("education"));
    assert_eq!(p["field"], "X-Vault-Purpose");
    s.get(&path, "admissions", Some("curiosity"))
        .problem(400, "unknown_purpose");

    // Another school's record: 404, exactly as for a record that does not exist.
    let core = s.core().await;
    let (_, other) = core
        .create_principal(
            "Teacher at school 2",
            &[(
                Scope::School(SchoolId::parse("school-2").unwrap()),
                Role::Teacher,
            )],
        )
        .await
        .unwrap();
    let other_token = other.expose().to_owned();
    s.get(&path, &other_token, Some("education"))
        .problem(404, "not_found");
    s.get(&format!("/v1/subjects/{sid}"), &other_token, None)
        .problem(404, "not_found");
    s.get(
        &format!("/v1/records/{}", uuid::Uuid::new_v4()),
        "admissions",
        Some("education"),
    )
    .problem(404, "not_found");

    // Revoked token: 401 at once.
    let (p, token) = core
        .create_principal(
            "Short-lived app",
            &[(
                Scope::School(SchoolId::parse("school-1").unwrap()),
                Role::AppLms,
            )],
        )
        .await
        .unwrap();
    assert_eq!(s.get("/v1/me", token.expose(), None).status, 200);
    core.revoke_principal(p.id()).await.unwrap();
    let r = s.get("/v1/me", token.expose(), None);
    r.problem(401, "unauthenticated");
    assert_eq!(r.headers["www-authenticate"], "Bearer");
    s.call("GET", "/v1/me", None, &[], None)
        .problem(401, "unauthenticated");
    s.get("/v1/me", "vt_0123", None)
        .problem(401, "unauthenticated");

    // Bodies: too large, malformed, unknown fields, wrong type, too deep.
    let big = vec![b'a'; 10 * 1024 * 1024];
    s.call(
        "POST",
        "/v1/subjects",
        Some("admissions"),
        &[("Content-Type", "application/json")],
        Some(&big),
    )
    .problem(413, "payload_too_large");
    // At the edge: exactly 4 MiB is read, one byte more is not (before, only 10 MiB was tried).
    let at_limit = |extra: usize| {
        let mut b = br#"{"school": "school-1", "kind": "guardian"}"#.to_vec();
        b.resize(vault_server::api::MAX_BODY + extra, b' ');
        s.call(
            "POST",
            "/v1/subjects",
            Some("admissions"),
            &[("Content-Type", "application/json")],
            Some(&b),
        )
    };
    assert_eq!(at_limit(0).status, 201, "{}", at_limit(0).text());
    at_limit(1).problem(413, "payload_too_large");
    // And nesting: 32 levels are parsed (and fail as the wrong type), 33 are refused unread.
    let nested = |levels: usize| {
        let body = format!(
            "{{\"school\": {}{}}}",
            "[".repeat(levels - 1),
            "]".repeat(levels - 1)
        );
        s.call(
            "POST",
            "/v1/subjects",
            Some("admissions"),
            &[("Content-Type", "application/json")],
            Some(body.as_bytes()),
        )
    };
    assert_eq!(vault_server::api::MAX_DEPTH, 32);
    nested(32).problem(400, "invalid_json");
    nested(33).problem(400, "too_deep");
    s.call(
        "POST",
        "/v1/subjects",
        Some("admissions"),
        &[("Content-Type", "application/json")],
        Some(b"{\"school\": "),
    )
    .problem(400, "invalid_json");
    let p = s
        .post(
            "/v1/subjects",
            "admissions",
            None,
            json!({"school": "school-1", "kind": "student", "nickname": "MARKER-x"}),
        )
        .problem(400, "invalid_json");
    assert!(p["detail"].as_str().unwrap().contains("nickname"), "{p}");
    s.call(
        "POST",
        "/v1/subjects",
        Some("admissions"),
        &[("Content-Type", "text/plain")],
        Some(b"{}"),
    )
    .problem(415, "unsupported_media_type");
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    s.call(
        "POST",
        "/v1/subjects",
        Some("admissions"),
        &[("Content-Type", "application/json")],
        Some(deep.as_bytes()),
    )
    .problem(400, "too_deep");
    let p = s
        .post(
            &format!("/v1/subjects/{sid}/records"),
            "admissions",
            Some("legal_administrative"),
            json!({"record_type": "student", "fields": {"political_views": "MARKER-p"}}),
        )
        .problem(400, "unknown_field");
    assert_eq!(p["field"], "fields.political_views");
    s.get("/v1/records/not-a-uuid", "admissions", Some("education"))
        .problem(400, "invalid_input");
    s.get("/v1/nothing-here", "admissions", None)
        .problem(404, "no_route");

    // Blocked data is not returned.
    assert_eq!(
        s.post(
            &format!("/v1/subjects/{sid}/block"),
            "privacy",
            None,
            json!({})
        )
        .status,
        200
    );
    let r = s.get(&path, "admissions", Some("legal_administrative"));
    assert_eq!(r.status, 200);
    for f in r.json()["fields"].as_object().unwrap().values() {
        assert_eq!(f["reason"], "blocked");
    }
    assert!(!r.text().contains("MARKER"));

    // Shredding: gone for good.
    assert_eq!(
        s.post(
            &format!("/v1/subjects/{sid}/unblock"),
            "privacy",
            None,
            json!({})
        )
        .status,
        200
    );
    let d = s.call(
        "DELETE",
        &path,
        Some("privacy"),
        &[("X-Vault-Purpose", "subject_access")],
        None,
    );
    assert_eq!(d.status, 200, "{}", d.text());
    assert!(d.json()["keys_destroyed"].as_u64().unwrap() >= 1);
    s.get(&path, "admissions", Some("legal_administrative"))
        .problem(410, "shredded");

    // Request ids: given ones are echoed, others made.
    let r = s.call(
        "GET",
        "/healthz",
        None,
        &[("X-Request-Id", "abc-123")],
        None,
    );
    assert_eq!(r.headers["x-request-id"], "abc-123");
    let r = s.call(
        "GET",
        "/healthz",
        None,
        &[("X-Request-Id", "bad id\twith tab")],
        None,
    );
    assert_ne!(r.headers["x-request-id"], "bad id\twith tab");
    let mut markers = vec!["MARKER"];
    markers.push(&other_token);
    let t = token.expose().to_owned();
    markers.push(&t);
    drop(core);
    s.stop(&markers);
}

#[tokio::test]
async fn openapi_document_is_served_and_checked_in() {
    let s = start(Backend::Sqlite).await;
    let r = s.call("GET", "/openapi.json", None, &[], None);
    assert_eq!(r.status, 200);
    let served = r.json();
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(served, file);
    assert_eq!(served["openapi"], "3.1.0");
    assert!(served["paths"].as_object().unwrap().len() >= 20);
    s.stop(&[]);
}

#[tokio::test]
async fn storage_outside_kazakhstan_is_refused_unless_overridden() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_vault-server"))
            .args([
                "--dev",
                "--listen",
                "127.0.0.1:0",
                "--store-country",
                "de",
                "--data-dir",
            ])
            .arg(dir.path())
            .arg("--policies")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let out = run(&[]).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("outside Kazakhstan") && err.contains("Art. 12(2)"),
        "{err}"
    );

    let mut child = run(&["--allow-store-outside-kz"]);
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    // The override is in the audit log.
    let stores =
        vault_core::Stores::open(&vault_core::StoreConfig::sqlite_dir(dir.path()).unwrap())
            .await
            .unwrap();
    let v = Vault::open(
        stores,
        policy().await,
        Unlock::identity_file(&dir.path().join("dev-custodian.txt")).unwrap(),
    )
    .await
    .unwrap();
    let log = v.audit_entries().await.unwrap();
    assert!(
        log.iter().any(|e| e.action == "config.store_outside_kz"),
        "{log:?}"
    );
}

async fn a_running_server_picks_up_a_rotated_keyring(backend: Backend) {
    let s = start(backend).await;
    let sid = s.new_student();
    let write = |name: &str| {
        s.post(
            &format!("/v1/subjects/{sid}/records"),
            "admissions",
            Some("legal_administrative"),
            json!({"record_type": "student", "fields": {"full_name": name}}),
        )
    };
    let before = write("MARKER-before");
    assert_eq!(before.status, 201);
    let old = before.json()["id"].as_str().unwrap().to_owned();

    // The custodian rotates, rewraps and retires while the server serves (as vaultctl does).
    let custodian = s.core().await;
    let identity = vault_core::Category::parse("identity").unwrap();
    assert_eq!(custodian.rotate_kek(&identity, None).await.unwrap(), 2);
    // A write right after the rotation uses the new version: the server reloads the keyring.
    let after = write("MARKER-after");
    assert_eq!(after.status, 201, "{}", after.text());
    custodian
        .rewrap(Some(&identity), 100, &mut |_| {})
        .await
        .unwrap();
    custodian.retire_kek(&identity, 1, None).await.unwrap();
    let status = custodian.key_status().await.unwrap();
    assert!(
        status
            .iter()
            .all(|k| k.kek.category != identity || k.kek.version == 2)
    );

    // Both records still read through the running server, and new writes keep working.
    for (rid, name) in [
        (old.as_str(), "MARKER-before"),
        (after.json()["id"].as_str().unwrap(), "MARKER-after"),
    ] {
        let r = s.get(
            &format!("/v1/records/{rid}"),
            "admissions",
            Some("legal_administrative"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["fields"]["full_name"]["value"], name);
    }
    assert_eq!(write("MARKER-later").status, 201);
    drop(custodian);
    s.stop(&["MARKER"]);
}
