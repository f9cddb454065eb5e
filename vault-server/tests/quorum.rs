//! M-of-N custodians with the real `vault-server`, the real `vaultctl` and identities from the
//! real `age-keygen`, on SQLite and on PostgreSQL:
//!
//! - a vault resealed 2-of-3: one custodian's identity alone opens nothing (`vaultctl`), any
//!   two do;
//! - the server restarted on it comes up sealed (`/readyz` 503 `sealed`, every route 503), takes
//!   shares from `vaultctl keyring unseal`, refuses a share with one byte changed (422, naming
//!   the share and never its value), and opens at the second share: records read back;
//! - resharing to 3-of-5 keeps every record readable, and two of the new custodians no longer
//!   suffice;
//! - each ceremony step is in the audit log, which still verifies; no share is in a log line.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{start, start_on, vaultctl_as};
use serde_json::json;
use vault_tests::{Backend, on_both_backends, tool};

on_both_backends!(two_of_three_then_three_of_five);

/// A custodian's identity from the real `age-keygen`: (file, public key).
fn custodian(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(format!("{name}.txt"));
    let o = tool("age-keygen").arg("-o").arg(&path).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let public = String::from_utf8_lossy(&o.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("Public key: ").map(str::to_owned))
        .unwrap();
    (path, public)
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn refused(o: std::process::Output) -> String {
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn reshare_args<'a>(m: &'a str, publics: &'a [String]) -> Vec<&'a str> {
    let mut a = vec!["keyring", "reshare", "--threshold", m];
    for p in publics {
        a.extend(["--recipient", p.as_str()]);
    }
    a
}

/// Runs SQL on one store with the shell an administrator would use: rows one a line, columns
/// separated by `|`.
fn sql(stores: &vault_tests::TestStores, keys: bool, q: &str) -> String {
    let o = match stores.backend {
        Backend::Sqlite => std::process::Command::new("sqlite3")
            .arg(stores.dir.path().join(if keys {
                "vault-data/keys.db"
            } else {
                "vault-data/data.db"
            }))
            .arg(q)
            .output()
            .unwrap(),
        Backend::Postgres => std::process::Command::new("psql")
            .arg(if keys {
                &stores.config.keys_url
            } else {
                &stores.config.data_url
            })
            .args(["-At", "-c", q])
            .output()
            .unwrap(),
    };
    assert!(
        o.status.success(),
        "{q}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Every share the identity opens, decrypted with the real `age` tool: the share files are
/// standard age files, so a custodian can check theirs without the vault.
fn shares_by_age(stores: &vault_tests::TestStores, identity: &Path) -> Vec<String> {
    let hex = match stores.backend {
        Backend::Sqlite => "hex(sealed)",
        Backend::Postgres => "encode(sealed, 'hex')",
    };
    let rows = sql(
        stores,
        true,
        &format!("SELECT x, {hex} FROM keyring_shares ORDER BY x"),
    );
    assert!(!rows.trim().is_empty(), "the key store holds the shares");
    let mut out = Vec::new();
    for (_, h) in rows.lines().filter_map(|l| l.split_once('|')) {
        let f = stores.dir.path().join("share.age");
        std::fs::write(&f, vault_tests::unhex(h.trim())).unwrap();
        let o = tool("age")
            .arg("-d")
            .arg("-i")
            .arg(identity)
            .arg(&f)
            .output()
            .unwrap();
        if o.status.success() {
            out.push(String::from_utf8(o.stdout).unwrap());
        }
    }
    out
}

/// `/readyz` once the sealed app has handed the listener to the full app. A connection the
/// sealed app accepted as it stopped is closed unanswered: a client tries again.
fn ready_after_handover(s: &common::Server) -> u16 {
    let mut last = 0;
    for _ in 0..100 {
        let got = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            s.call("GET", "/readyz", None, &[], None).status
        }));
        last = got.unwrap_or(0);
        if last == 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    last
}

async fn two_of_three_then_three_of_five(backend: Backend) {
    let s = start(backend).await;
    let dir = s.stores.dir.path().to_owned();
    let dev = dir.join("vault-data/dev-custodian.txt");
    let sid = s.new_student();
    let rec = s.post(
        &format!("/v1/subjects/{sid}/records"),
        "admissions",
        Some("legal_administrative"),
        json!({"record_type": "student", "fields": {"full_name": "MARKER-quorum", "address": "MARKER-street"}}),
    );
    assert_eq!(rec.status, 201, "{}", rec.text());
    let rid = rec.json()["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/records/{rid}");

    // 2-of-3, dealt by the custodian who holds the keyring today.
    let three: Vec<(PathBuf, String)> = ["c1", "c2", "c3"]
        .iter()
        .map(|n| custodian(&dir, n))
        .collect();
    let publics: Vec<String> = three.iter().map(|c| c.1.clone()).collect();
    let out = ok(vaultctl_as(
        &s.stores,
        &[&dev],
        &reshare_args("2", &publics),
    ));
    assert!(out.contains("any 2 of 3 custodians"), "{out}");
    let shares = shares_by_age(&s.stores, &three[0].0);
    assert_eq!(shares.len(), 1, "one share is sealed to each custodian");
    let share1 = shares[0].trim().to_owned();
    assert!(
        share1.starts_with("school-vault-share-v1:1:"),
        "share 1 goes to the first custodian"
    );
    let tokens = s.tokens.clone();
    let stores = s.stores.clone();
    s.stop(&[]);

    // One custodian alone opens nothing, the old identity nothing; any two do.
    for lone in [&three[0].0, &three[2].0, &dev] {
        let err = refused(vaultctl_as(&stores, &[lone], &["keyring", "status"]));
        assert!(err.contains("shares needed"), "{err}");
    }
    for pair in [[0, 1], [0, 2], [1, 2]] {
        let out = ok(vaultctl_as(
            &stores,
            &[&three[pair[0]].0, &three[pair[1]].0],
            &["keyring", "status"],
        ));
        assert!(
            out.contains("sealed to a quorum: any 2 of 3"),
            "{pair:?}: {out}"
        );
    }

    // The server comes up sealed: it holds no key and serves nothing but the ceremony.
    let mut s = start_on(stores.clone(), &[]);
    s.tokens = tokens.clone();
    s.call("GET", "/readyz", None, &[], None)
        .problem(503, "sealed");
    s.get(&path, "admissions", Some("legal_administrative"))
        .problem(503, "sealed");
    let st = s.call("GET", "/unseal", None, &[], None);
    assert_eq!(
        st.json(),
        json!({"sealed": true, "threshold": 2, "custodians": 3, "given": []})
    );

    // A share with one byte changed is refused by number; its value is never echoed.
    let mut changed = share1.clone().into_bytes();
    let last = changed.len() - 1;
    changed[last] = if changed[last] == b'0' { b'1' } else { b'0' };
    let changed = String::from_utf8(changed).unwrap();
    let body = json!({ "share": changed }).to_string();
    let r = s.call(
        "POST",
        "/unseal",
        None,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    );
    let p = r.problem(422, "share_refused");
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains("share 1 is refused"), "{detail}");
    let value = share1.rsplit(':').next().unwrap();
    assert!(!r.text().contains(&value[..16]), "{}", r.text());
    assert_eq!(
        s.call("GET", "/unseal", None, &[], None).json()["given"],
        json!([])
    );

    // The real ceremony: two custodians, each with `vaultctl keyring unseal`.
    let server = format!("http://{}", s.addr);
    let out = ok(vaultctl_as(
        &stores,
        &[&three[1].0],
        &["keyring", "unseal", "--server", &server],
    ));
    assert!(out.contains("share 2 given: 1 of 2"), "{out}");
    s.call("GET", "/readyz", None, &[], None)
        .problem(503, "sealed");
    // The same share again counts once.
    let out = ok(vaultctl_as(
        &stores,
        &[&three[1].0],
        &["keyring", "unseal", "--server", &server],
    ));
    assert!(out.contains("1 of 2"), "{out}");
    let out = ok(vaultctl_as(
        &stores,
        &[&three[2].0],
        &["keyring", "unseal", "--server", &server],
    ));
    assert!(out.contains("the vault is unsealed"), "{out}");
    assert_eq!(ready_after_handover(&s), 200, "the full app took over");
    let r = s.get(&path, "admissions", Some("legal_administrative"));
    assert_eq!(
        r.json()["fields"]["full_name"]["value"],
        "MARKER-quorum",
        "{}",
        r.text()
    );
    assert_eq!(
        s.call("GET", "/unseal", None, &[], None).json(),
        json!({"sealed": false})
    );
    let body = json!({ "share": share1 }).to_string();
    s.call(
        "POST",
        "/unseal",
        None,
        &[("Content-Type", "application/json")],
        Some(body.as_bytes()),
    )
    .problem(409, "not_sealed");
    // A share goes to a remote server only over TLS.
    let err = refused(vaultctl_as(
        &stores,
        &[&three[0].0],
        &["keyring", "unseal", "--server", "http://192.0.2.1:8080"],
    ));
    assert!(err.contains("must not cross the network in clear"), "{err}");
    let v = s.get("/v1/audit/verify", "auditor", None);
    assert_eq!(v.json()["intact"], true, "{}", v.text());
    s.stop(&[value, &changed]);

    // Resharing to 3-of-5, by two custodians of the old quorum: the same keys.
    let five: Vec<(PathBuf, String)> = ["d1", "d2", "d3", "d4", "d5"]
        .iter()
        .map(|n| custodian(&dir, n))
        .collect();
    let publics: Vec<String> = five.iter().map(|c| c.1.clone()).collect();
    let out = ok(vaultctl_as(
        &stores,
        &[&three[0].0, &three[1].0],
        &reshare_args("3", &publics),
    ));
    assert!(out.contains("any 3 of 5"), "{out}");
    let err = refused(vaultctl_as(
        &stores,
        &[&three[0].0, &three[1].0],
        &["keyring", "status"],
    ));
    assert!(
        err.contains("shares needed"),
        "the old shares open nothing: {err}"
    );
    let err = refused(vaultctl_as(
        &stores,
        &[&five[0].0, &five[4].0],
        &["keyring", "status"],
    ));
    assert!(err.contains("2 of the 3 shares"), "{err}");
    let mut s = start_on(stores.clone(), &[]);
    s.tokens = tokens;
    let server = format!("http://{}", s.addr);
    for c in [&five[4], &five[1], &five[2]] {
        ok(vaultctl_as(
            &stores,
            &[&c.0],
            &["keyring", "unseal", "--server", &server],
        ));
    }
    assert_eq!(ready_after_handover(&s), 200, "the full app took over");
    let r = s.get(&path, "admissions", Some("legal_administrative"));
    assert_eq!(
        r.json()["fields"]["address"]["value"],
        "MARKER-street",
        "{}",
        r.text()
    );
    let h = ok(vaultctl_as(
        &stores,
        &[&five[0].0, &five[1].0, &five[3].0],
        &["audit", "verify"],
    ));
    assert!(h.contains("intact"), "{h}");
    let log = s.get("/v1/audit/verify", "auditor", None);
    assert_eq!(log.json()["intact"], true, "{}", log.text());
    s.stop(&[]);

    // A backup is sealed to the quorum key and carries the sealed shares beside it: a restore
    // takes three custodians, as the keyring does.
    let backup = dir.join("backup");
    ok(vaultctl_as(
        &stores,
        &[],
        &["backup", "--out", backup.to_str().unwrap()],
    ));
    let shares_file = std::fs::read_to_string(backup.join("shares.json")).unwrap();
    assert!(shares_file.contains(&five[3].1), "{shares_file}");
    let from = ["restore", "--from", backup.to_str().unwrap(), "--force"];
    let err = refused(vaultctl_as(&stores, &[&five[0].0, &five[1].0], &from));
    assert!(err.contains("2 of the 3 shares"), "{err}");
    ok(vaultctl_as(
        &stores,
        &[&five[0].0, &five[1].0, &five[2].0],
        &from,
    ));
    let out = ok(vaultctl_as(
        &stores,
        &[&five[0].0, &five[3].0, &five[4].0],
        &["keyring", "status"],
    ));
    assert!(out.contains("any 3 of 5"), "{out}");

    // Every step of the ceremonies is in the audit log; no share is in any of it.
    let steps = sql(
        &stores,
        false,
        "SELECT action || ' ' || outcome || ' ' || coalesce(reason, '') FROM audit_log WHERE action LIKE 'keyring.%' OR action = 'key.reshare' ORDER BY seq",
    );
    let count = |what: &str| steps.lines().filter(|l| l.starts_with(what)).count();
    assert_eq!(count("key.reshare"), 2, "{steps}");
    assert_eq!(count("keyring.share_refused"), 1, "{steps}");
    assert_eq!(count("keyring.share_given"), 6, "{steps}");
    assert_eq!(count("keyring.unseal"), 2, "{steps}");
    assert!(steps.contains("share 2 of the quorum"), "{steps}");
    assert!(!steps.contains(&value[..16]), "{steps}");
}
