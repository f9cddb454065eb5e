//! The test harness: the real `vault-server` binary on port 0 in dev mode, a tiny HTTP/1.1
//! client on std's TcpStream, and a scan of the server's whole log at the end.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};
use vault_core::{Unlock, Vault};
use vault_tests::{Backend, TestStores, policy};

pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: std::thread::JoinHandle<String>,
    pub tokens: HashMap<String, String>,
    pub stores: std::sync::Arc<TestStores>,
    /// Strings that must never appear in the server's log.
    pub secrets: Vec<String>,
}

pub struct Resp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn problem(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(
            self.headers.get("content-type").map(String::as_str),
            Some("application/problem+json"),
            "{}",
            self.text()
        );
        let j = self.json();
        assert_eq!(j["code"], code, "{j}");
        assert_eq!(j["status"], status);
        j
    }
}

/// Spawns the real server in dev mode on port 0 over `data`, and waits for its "listening on"
/// line. Returns the process, its address and a thread collecting its whole stderr log.
pub fn spawn_server(
    data: &Path,
    extra: &[&str],
    log_level: &str,
) -> (Child, String, std::thread::JoinHandle<String>) {
    spawn_server_env(data, extra, log_level, &[])
}

/// `spawn_server` with more environment variables (a crash point to arm, say).
pub fn spawn_server_env(
    data: &Path,
    extra: &[&str],
    log_level: &str,
    vars: &[(&str, &str)],
) -> (Child, String, std::thread::JoinHandle<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vault-server"))
        .args(["--dev", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data)
        .arg("--policies")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"))
        .args(extra)
        .env("VAULT_LOG", log_level)
        .envs(vars.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    (child, addr, log)
}

pub async fn start(backend: Backend) -> Server {
    start_with(backend, None).await
}

/// Starts a server; with `shared`, on the same stores as another (a second instance).
pub async fn start_with(backend: Backend, shared: Option<&Server>) -> Server {
    start_full(backend, shared, &[]).await
}

/// `start_with`, with more command-line flags for the server.
pub async fn start_full(backend: Backend, shared: Option<&Server>, extra: &[&str]) -> Server {
    let stores = match shared {
        Some(other) => other.stores.clone(),
        None => std::sync::Arc::new(TestStores::new(backend).await),
    };
    start_on(stores, extra)
}

/// Starts a server on stores another server used before (a restart).
pub fn start_on(stores: std::sync::Arc<TestStores>, extra: &[&str]) -> Server {
    let backend = stores.backend;
    let data = stores.dir.path().join("vault-data");
    let mut urls: Vec<&str> = match backend {
        Backend::Postgres => vec![
            "--data-url",
            &stores.config.data_url,
            "--keys-url",
            &stores.config.keys_url,
        ],
        Backend::Sqlite => Vec::new(),
    };
    // Every server of the end-to-end tests logs JSON: `stop` checks each line of it.
    urls.extend_from_slice(&["--log-format", "json"]);
    urls.extend_from_slice(extra);
    let (child, addr, log) = spawn_server(&data, &urls, "debug");
    let env = std::fs::read_to_string(data.join("dev-tokens.env")).unwrap();
    let tokens: HashMap<String, String> = env
        .lines()
        .filter_map(|l| l.strip_prefix("export VAULT_"))
        .filter_map(|l| l.split_once("_TOKEN="))
        .map(|(k, v)| (k.to_lowercase(), v.to_owned()))
        .collect();
    assert_eq!(tokens.len(), 7);
    let secrets = tokens.values().cloned().collect();
    Server {
        child,
        addr,
        log,
        tokens,
        stores,
        secrets,
    }
}

impl Server {
    pub fn call(
        &self,
        method: &str,
        path: &str,
        who: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Resp {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: vault\r\nConnection: close\r\n");
        if let Some(w) = who {
            req.push_str(&format!(
                "Authorization: Bearer {}\r\n",
                self.tokens.get(w).map(String::as_str).unwrap_or(w)
            ));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or(b"");
        if !body.is_empty() || method != "GET" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        // The server may answer (413) before reading a large body; a reset then is expected.
        let _ = s.write_all(body);
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a full response");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.lines();
        let status = lines.next().unwrap()[9..12].parse().unwrap();
        let headers: HashMap<String, String> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        if headers
            .get("transfer-encoding")
            .is_some_and(|v| v == "chunked")
        {
            let mut out = Vec::new();
            let mut rest = &body[..];
            loop {
                let nl = rest.windows(2).position(|w| w == b"\r\n").unwrap();
                let n = usize::from_str_radix(std::str::from_utf8(&rest[..nl]).unwrap().trim(), 16)
                    .unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&rest[nl + 2..nl + 2 + n]);
                rest = &rest[nl + 2 + n + 2..];
            }
            body = out;
        }
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn get(&self, path: &str, who: &str, purpose: Option<&str>) -> Resp {
        let h: Vec<(&str, &str)> = purpose
            .map(|p| vec![("X-Vault-Purpose", p)])
            .unwrap_or_default();
        self.call("GET", path, Some(who), &h, None)
    }

    pub fn post(&self, path: &str, who: &str, purpose: Option<&str>, body: Value) -> Resp {
        let mut h = vec![("Content-Type", "application/json")];
        if let Some(p) = purpose {
            h.push(("X-Vault-Purpose", p));
        }
        self.call(
            "POST",
            path,
            Some(who),
            &h,
            Some(body.to_string().as_bytes()),
        )
    }

    /// Enrols a student in school-1 as admissions; returns the subject id.
    pub fn new_student(&self) -> String {
        self.post(
            "/v1/subjects",
            "admissions",
            None,
            json!({"school": "school-1", "kind": "student"}),
        )
        .json()["id"]
            .as_str()
            .expect("a subject id")
            .to_owned()
    }

    /// A vault over the same stores, as a second instance or `vaultctl` would open them.
    pub async fn core(&self) -> Vault {
        let data = self.stores.dir.path().join("vault-data");
        let config = match self.stores.backend {
            Backend::Sqlite => vault_core::StoreConfig::sqlite_dir(&data).unwrap(),
            Backend::Postgres => self.stores.config.clone(),
        };
        let stores = vault_core::Stores::open(&config).await.unwrap();
        Vault::open(
            stores,
            policy().await,
            Unlock::identity_file(&data.join("dev-custodian.txt")).unwrap(),
        )
        .await
        .unwrap()
    }

    /// Stops the server and checks its whole log holds none of the secrets.
    pub fn stop(mut self, markers: &[&str]) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let log = self.log.join().unwrap();
        assert!(log.contains("request"), "the log was captured");
        // --log-format json: every line one JSON object, never a terminal escape (stderr is a
        // pipe here, as a file or journald would be).
        assert!(!log.contains('\u{1b}'), "an escape sequence in the log");
        for line in log.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
            assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        }
        for m in markers
            .iter()
            .map(|m| m.to_string())
            .chain(self.secrets.iter().cloned())
        {
            assert!(!log.contains(&m), "the server log holds {m}");
        }
    }
}

/// The real `vaultctl`, next to `vault-server` in the target folder (`cargo test --workspace`
/// builds it; for one test alone run `cargo build -p vault-cli` first).
pub fn vaultctl_bin() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_vault-server")).with_file_name("vaultctl");
    assert!(
        p.exists(),
        "{} is missing: build it first (cargo build -p vault-cli; cargo test --workspace does)",
        p.display()
    );
    p
}

/// `vaultctl` over the stores of a server from `start`, with the identities given (none from
/// the environment); answers its output after checking it did not panic.
pub fn vaultctl_as(
    stores: &TestStores,
    identities: &[&Path],
    args: &[&str],
) -> std::process::Output {
    let mut c = Command::new(vaultctl_bin());
    c.arg("--policies")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"));
    match stores.backend {
        Backend::Sqlite => {
            c.arg("--data-dir")
                .arg(stores.dir.path().join("vault-data"));
        }
        Backend::Postgres => {
            c.arg("--data-url").arg(&stores.config.data_url);
            c.arg("--keys-url").arg(&stores.config.keys_url);
        }
    }
    for i in identities {
        c.arg("--identity").arg(i);
    }
    let o = c
        .env_remove("VAULT_IDENTITY")
        .env_remove("VAULT_PASSPHRASE_FILE")
        .env_remove("VAULT_TOKEN")
        .env_remove("VAULT_TOKEN_FILE")
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "vaultctl {args:?}: {err}");
    o
}

/// Parses `/metrics` with the reference OpenMetrics parser (PyPI's `prometheus_client`) and
/// returns each family as `name type samples`. Panics, never skips, when the parser is missing.
pub fn parse_openmetrics(text: &str) -> Vec<String> {
    use std::io::Write as _;
    const SCRIPT: &str = r#"
import sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    print(f.name, f.type, len(f.samples))
"#;
    let mut child = std::process::Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the OpenMetrics parser (install python3)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused /metrics (or is missing: pip install prometheus-client): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}
