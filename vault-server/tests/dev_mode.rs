//! The real `vault-server --dev` binary: starts on port 0, makes its keyring once, answers
//! health and readiness over real HTTP, and reuses its keyring after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

struct Server {
    child: Child,
    addr: String,
    stderr: std::thread::JoinHandle<String>,
}

fn start(data: &Path) -> Server {
    let (child, addr, stderr) = common::spawn_server(data, &[], "warn");
    Server {
        child,
        addr,
        stderr,
    }
}

impl Server {
    /// One request over a fresh connection: the status and the body.
    fn request(&self, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: vault\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let status = resp[9..12].parse().unwrap();
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
        (status, body)
    }

    fn get(&self, path: &str) -> (u16, String) {
        self.request("GET", path, "", "")
    }

    /// A GET with a bearer token and a request id of our own.
    fn get_as(&self, path: &str, token: &str, request_id: &str) -> (u16, String) {
        let headers = format!("Authorization: Bearer {token}\r\nX-Request-Id: {request_id}\r\n");
        self.request("GET", path, &headers, "")
    }

    /// A POST of a JSON body with a bearer token and a purpose.
    fn post_as(&self, path: &str, token: &str, body: &str) -> (u16, String) {
        let headers = format!(
            "Authorization: Bearer {token}\r\nX-Vault-Purpose: legal_administrative\r\nContent-Type: application/json\r\n"
        );
        self.request("POST", path, &headers, body)
    }

    fn stop(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.stderr.join().unwrap()
    }
}

#[test]
fn dev_server_starts_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("vault-data");
    let server = start(&data);
    assert_eq!(server.get("/healthz"), (200, r#"{"status":"ok"}"#.into()));
    assert_eq!(server.get("/readyz"), (200, r#"{"status":"ready"}"#.into()));
    let log = server.stop();
    assert!(log.contains("DEV MODE: made a new keyring"), "{log}");
    // Written to a pipe, as to a file or a log shipper: no ANSI colour codes.
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in a piped log: {log:?}"
    );
    // The shipped policy was due for review in July 2025: the server says so at every start.
    assert!(
        log.contains("review is overdue") && log.contains("2025-07"),
        "{log}"
    );
    assert!(data.join("dev-custodian.txt").exists());
    let tokens = std::fs::read_to_string(data.join("dev-tokens.env")).unwrap();
    assert_eq!(tokens.matches("export VAULT_").count(), 7, "{tokens}");

    // A restart unseals the same keyring instead of making a new one.
    let server = start(&data);
    assert_eq!(server.get("/readyz").0, 200);
    let log = server.stop();
    assert!(log.contains("DEV MODE: dev keyring and tokens in"), "{log}");
    assert!(!log.contains("made a new keyring"), "{log}");
}

/// With the last review moved forward, the warning goes away: it follows the catalog.
#[test]
fn no_review_warning_when_the_policy_is_current() {
    let dir = tempfile::tempdir().unwrap();
    let pol = dir.path().join("policies");
    std::fs::create_dir(&pol).unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    for e in std::fs::read_dir(&shipped).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), pol.join(e.file_name())).unwrap();
    }
    let catalog = std::fs::read_to_string(pol.join("catalog.toml")).unwrap();
    assert!(catalog.contains("reviewed = \"2022-07\""));
    std::fs::write(
        pol.join("catalog.toml"),
        catalog.replace("reviewed = \"2022-07\"", "reviewed = \"2026-07\""),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-server"))
        .args(["--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("vault-data"))
        .arg("--policies")
        .arg(&pol)
        .env("VAULT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on"), "{line}");
    child.kill().unwrap();
    child.wait().unwrap();
    let mut log = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    assert!(log.contains("DEV MODE"), "the log was read: {log}");
    assert!(!log.contains("review is overdue"), "{log}");
}

#[test]
fn production_mode_without_identity_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vault-server"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--policies")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .env_remove("VAULT_IDENTITY")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("pass --identity FILE"), "{err}");
}

#[test]
fn config_file_and_passphrase_unlock() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pass = dir.path().join("pass.txt");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    // The custodian makes a passphrase-sealed keyring with vaultctl.
    let vaultctl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/vaultctl");
    // `cargo test --workspace` builds it; a lone `-p vault-server` run fails here rather than
    // pass without proving anything.
    assert!(
        vaultctl.exists(),
        "{} is missing: run cargo test --workspace, or cargo build -p vault-cli first",
        vaultctl.display()
    );
    let o = Command::new(&vaultctl)
        .arg("--data-dir")
        .arg(&data)
        .arg("--policies")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .args(["keyring", "init", "--passphrase-file"])
        .arg(&pass)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config = dir.path().join("vault.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\npassphrase_file = {:?}\npolicies = {:?}\n",
            data,
            pass,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-server"))
        .arg("--config")
        .arg(&config)
        .env_remove("VAULT_IDENTITY")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        line.starts_with("listening on http://127.0.0.1:"),
        "{line:?} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A misspelt key in the config file is named.
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\nlisten_port = 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vault-server"))
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("listen_port"));
}

/// `--log-format json`, for a log shipper: every line is one JSON object, and a request's line
/// carries its id, route pattern, method, status, latency and the principal's id; never the
/// token, and never the path with its ids.
#[test]
fn json_logs_name_the_request_and_the_principal_and_nothing_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("vault-data");
    let (child, addr, stderr) = common::spawn_server(&data, &["--log-format", "json"], "info");
    let server = Server {
        child,
        addr,
        stderr,
    };
    let tokens = std::fs::read_to_string(data.join("dev-tokens.env")).unwrap();
    let token = tokens
        .lines()
        .find_map(|l| l.strip_prefix("export VAULT_DIRECTOR_TOKEN="))
        .unwrap()
        .to_owned();
    let (status, me) = server.get_as("/v1/me", &token, "req-json-1");
    assert_eq!(status, 200, "{me}");
    let me: serde_json::Value = serde_json::from_str(&me).unwrap();
    let principal = me["id"].as_str().unwrap().to_owned();
    let random = uuid_like();
    // Refused (no purpose given) or not found: either way its line names the pattern only.
    let (status2, _) = server.get_as(&format!("/v1/records/{random}"), &token, "req-json-2");
    assert!(status2 >= 400, "{status2}");
    // A record with a value no log may hold, written by the admissions app.
    let admissions = tokens
        .lines()
        .find_map(|l| l.strip_prefix("export VAULT_ADMISSIONS_TOKEN="))
        .unwrap()
        .to_owned();
    let (status, subject) = server.post_as(
        "/v1/subjects",
        &admissions,
        r#"{"school":"school-1","kind":"student"}"#,
    );
    assert_eq!(status, 201, "{subject}");
    let subject: serde_json::Value = serde_json::from_str(&subject).unwrap();
    let marker = "Zhanar-Log-Marker-7731";
    let (status, record) = server.post_as(
        &format!("/v1/subjects/{}/records", subject["id"].as_str().unwrap()),
        &admissions,
        &format!(r#"{{"record_type":"student","fields":{{"full_name":"{marker}"}}}}"#),
    );
    assert_eq!(status, 201, "{record}");
    let log = server.stop();
    assert!(!log.contains(marker), "a field value reached the log");
    assert!(
        !log.contains(me["name"].as_str().unwrap()),
        "a principal's name reached the log"
    );
    assert!(!log.contains('\u{1b}'), "ANSI codes in JSON logs: {log:?}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() > 2, "{log}");
    let request = |id: &str| {
        lines
            .iter()
            .find(|l| l["message"] == "request" && l["span"]["id"] == id)
            .unwrap_or_else(|| panic!("no request line for {id}: {log}"))
            .clone()
    };
    let first = request("req-json-1");
    assert_eq!(first["route"], "/v1/me", "{first}");
    assert_eq!(first["method"], "GET", "{first}");
    assert_eq!(first["status"], 200, "{first}");
    assert!(first["ms"].is_u64(), "{first}");
    assert_eq!(first["span"]["principal"], principal.as_str(), "{first}");
    let second = request("req-json-2");
    assert_eq!(second["route"], "/v1/records/{id}", "{second}");
    assert_eq!(second["status"], status2, "{second}");
    assert!(!log.contains(&token), "the bearer token reached the log");
    assert!(!log.contains(&random), "a path's id reached the log");
}

fn uuid_like() -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "0190{:04x}-0000-7000-8000-{:012x}",
        n & 0xffff,
        n & 0xffff_ffff_ffff
    )
}
