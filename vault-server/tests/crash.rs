//! Crash safety of record writes: the real server is SIGKILLed 15 times at pseudo-random moments
//! while four clients write records. Every write the server acknowledged (201) is there after
//! restart with its value; no record is half-written; the audit chain verifies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::start;
use vault_core::{Category, FieldView, RecordId, VaultError};
use vault_tests::Backend;

fn spawn(data: &Path) -> (Child, String) {
    let (child, addr, _log) = common::spawn_server(data, &[], "error");
    (child, addr)
}

/// One POST; `None` when the connection died (the server was killed).
fn post(addr: &str, token: &str, path: &str, body: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: v\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nX-Vault-Purpose: legal_administrative\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).ok()?;
    let status = raw.get(9..12)?.parse().ok()?;
    let body = raw.split("\r\n\r\n").nth(1)?.to_owned();
    Some((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_write_15_times_loses_nothing_acknowledged() {
    let first = start(Backend::Sqlite).await;
    let token = first.tokens["admissions"].clone();
    let sid = first.new_student();
    let data = first.stores.dir.path().join("vault-data");
    let stores = first.stores.clone();
    first.stop(&[]);

    let acked: Arc<Mutex<BTreeMap<String, String>>> = Arc::default();
    let mut seed: u64 = 0x2026_1127;
    for round in 0..15 {
        let (mut child, addr) = spawn(&data);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (addr, token, sid, acked, stop) = (
                addr.clone(),
                token.clone(),
                sid.clone(),
                acked.clone(),
                stop.clone(),
            );
            writers.push(std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("r{round}-w{w}-n{n}");
                    n += 1;
                    let body = serde_json::json!({"record_type": "student", "fields": {"full_name": name, "address": format!("{name} street")}}).to_string();
                    match post(&addr, &token, &format!("/v1/subjects/{sid}/records"), &body) {
                        Some((201, b)) => {
                            let id = serde_json::from_str::<serde_json::Value>(&b).unwrap()["id"].as_str().unwrap().to_owned();
                            acked.lock().unwrap().insert(id, name);
                        }
                        Some((code, b)) => panic!("write answered {code}: {b}"),
                        None => break,
                    }
                }
            }));
        }
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(50 + (seed >> 33) % 300));
        child.kill().unwrap();
        child.wait().unwrap();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "only {} writes were acknowledged",
        acked.len()
    );

    // After restart: every acknowledged write is there; no record is half-written.
    let (mut child, _) = spawn(&data);
    child.kill().unwrap();
    child.wait().unwrap();
    let config = vault_core::StoreConfig::sqlite_dir(&data).unwrap();
    let v = vault_core::Vault::open(
        vault_core::Stores::open(&config).await.unwrap(),
        vault_tests::policy().await,
        vault_core::Unlock::identity_file(&data.join("dev-custodian.txt")).unwrap(),
    )
    .await
    .unwrap();
    let all: BTreeSet<Category> = v.catalog().collected_categories().cloned().collect();
    let subject = vault_core::SubjectId::parse(&sid).unwrap();
    let ids = v.subject_record_ids(subject).await.unwrap();
    let mut names = BTreeMap::new();
    for id in &ids {
        let view = v
            .read_record(*id, &all)
            .await
            .unwrap_or_else(|e: VaultError| panic!("record {id}: {e}"));
        assert_eq!(view.fields.len(), 2, "record {id} is half-written");
        for f in view.fields.values() {
            assert!(matches!(f, FieldView::Open { .. }), "record {id}: {f:?}");
        }
        if let FieldView::Open { value, .. } =
            &view.fields[&vault_core::FieldName::parse("full_name").unwrap()]
        {
            names.insert(id.to_string(), value.to_json().as_str().unwrap().to_owned());
        }
    }
    for (id, name) in &acked {
        assert_eq!(
            names.get(id),
            Some(name),
            "acknowledged record {id} is lost or changed"
        );
        let _ = RecordId::parse(id).unwrap();
    }
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
    drop(stores);
}

vault_tests::on_both_backends!(a_server_stopped_mid_create_or_mid_shred_keeps_its_promises);

/// The server stopped at two announced crash points: after a create's DEKs are committed and
/// before its record is, and after a shred's DEKs are destroyed and before its certificate
/// commits. After a restart: every acknowledged write is there with its audit entry, the
/// unacknowledged create left no record, and the shred is finished and certified, its data gone.
async fn a_server_stopped_mid_create_or_mid_shred_keeps_its_promises(backend: Backend) {
    let s = start(backend).await;
    let token = s.tokens["admissions"].clone();
    let privacy = s.tokens["privacy"].clone();
    let sid = s.new_student();
    let mut acked = Vec::new();
    for i in 0..3 {
        let (status, body) = post(
            &s.addr,
            &token,
            &format!("/v1/subjects/{sid}/records"),
            &format!(r#"{{"record_type":"student","fields":{{"full_name":"MARKER-{i}"}}}}"#),
        )
        .unwrap();
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        acked.push(v["id"].as_str().unwrap().to_owned());
    }
    let data = s.stores.dir.path().join("vault-data");
    let stores = s.stores.clone();
    let urls: Vec<String> = match backend {
        Backend::Postgres => vec![
            "--data-url".into(),
            stores.config.data_url.clone(),
            "--keys-url".into(),
            stores.config.keys_url.clone(),
        ],
        Backend::Sqlite => Vec::new(),
    };
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    s.stop(&[]);

    let stopped_at = |point: &str, call: &dyn Fn(&str) -> Option<(u16, String)>| {
        let (mut child, addr, log) =
            common::spawn_server_env(&data, &urls, "error", &[("VAULT_TEST_CRASH_AT", point)]);
        assert!(call(&addr).is_none(), "the server answered past {point}");
        let status = child.wait().unwrap();
        let log = log.join().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(6), "{log}");
        assert!(
            log.contains(&format!("crash point {point} #1 reached")),
            "{log}"
        );
    };
    stopped_at("create.keys_committed", &|addr| {
        post(
            addr,
            &token,
            &format!("/v1/subjects/{sid}/records"),
            r#"{"record_type":"student","fields":{"full_name":"MARKER-unacknowledged"}}"#,
        )
    });
    let shredded = acked[0].clone();
    stopped_at("shred.keys_destroyed", &|addr| {
        let mut c = TcpStream::connect(addr).ok()?;
        c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            c,
            "DELETE /v1/records/{shredded} HTTP/1.1\r\nHost: v\r\nConnection: close\r\nAuthorization: Bearer {privacy}\r\nX-Vault-Purpose: legal_administrative\r\n\r\n"
        )
        .ok()?;
        let mut raw = String::new();
        c.read_to_string(&mut raw).ok()?;
        let status = raw.get(9..12)?.parse().ok()?;
        Some((status, raw))
    });

    // Restart, as vaultctl or a second server would open the stores: the shred is finished.
    let config = match backend {
        Backend::Sqlite => vault_core::StoreConfig::sqlite_dir(&data).unwrap(),
        Backend::Postgres => stores.config.clone(),
    };
    let v = vault_core::Vault::open(
        vault_core::Stores::open(&config).await.unwrap(),
        vault_tests::policy().await,
        vault_core::Unlock::identity_file(&data.join("dev-custodian.txt")).unwrap(),
    )
    .await
    .unwrap();
    let all: BTreeSet<Category> = v.catalog().collected_categories().cloned().collect();
    let subject = vault_core::SubjectId::parse(&sid).unwrap();
    let history = v.access_history(subject).await.unwrap();
    for id in &acked {
        assert!(
            history
                .iter()
                .any(|e| e.action == "record.write" && e.record.as_deref() == Some(id.as_str())),
            "acknowledged record {id} has its audit entry"
        );
    }
    for id in &acked[1..] {
        let view = v
            .read_record(RecordId::parse(id).unwrap(), &all)
            .await
            .unwrap();
        assert!(
            vault_tests::every_field_opens(&view),
            "record {id} is whole"
        );
    }
    assert!(matches!(
        v.read_record(RecordId::parse(&shredded).unwrap(), &all)
            .await,
        Err(VaultError::RecordShredded(_))
    ));
    assert_eq!(
        v.dek_count(RecordId::parse(&shredded).unwrap())
            .await
            .unwrap(),
        0
    );
    assert!(
        history
            .iter()
            .any(|e| e.record.as_deref() == Some(shredded.as_str())
                && e.reason.as_deref().is_some_and(|r| r.contains("shred"))),
        "the shred is certified: {history:?}"
    );
    let ids = v.subject_record_ids(subject).await.unwrap();
    assert_eq!(ids.len(), 2, "the unacknowledged create left no record");
    assert_eq!(v.verify_audit().await.unwrap().problem, None);
}
