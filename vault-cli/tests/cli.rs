//! The real `vaultctl` binary on a fresh SQLite data folder.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vault_core::Unlock;

fn policies() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn vaultctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vaultctl"))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--policies")
        .arg(policies())
        .args(args)
        .env_remove("VAULT_DATA_URL")
        .env_remove("VAULT_KEYS_URL")
        .output()
        .unwrap()
}

fn text(o: &[u8]) -> String {
    String::from_utf8_lossy(o).into_owned()
}

#[test]
fn keyring_init_status_export() {
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("custodian.txt");
    let recipient = Unlock::generate_identity_file(&id).unwrap().to_string();

    let o = vaultctl(dir.path(), &["keyring", "init", "--recipient", &recipient]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("keyring created with a key for each of 16 categories"));

    let o = vaultctl(dir.path(), &["keyring", "init", "--recipient", &recipient]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("refusing to overwrite"),
        "{}",
        text(&o.stderr)
    );

    let o = vaultctl(
        dir.path(),
        &["keyring", "status", "--identity", id.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("health ") && l.contains(" 1 ")),
        "{out}"
    );
    assert!(out.contains("policy review was due 2025-07-01"), "{out}");

    let file = dir.path().join("keyring.age");
    let o = vaultctl(
        dir.path(),
        &["keyring", "export", "--out", file.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        std::fs::read(&file)
            .unwrap()
            .starts_with(b"age-encryption.org/v1")
    );
    let o = vaultctl(
        dir.path(),
        &["keyring", "export", "--out", file.to_str().unwrap()],
    );
    assert_eq!(
        o.status.code(),
        Some(1),
        "an existing file is not overwritten"
    );
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = vaultctl(
        dir.path(),
        &["keyring", "init", "--recipient", "age1notakey"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("invalid age recipient \"age1notakey\""));

    let o = vaultctl(
        dir.path(),
        &["keyring", "status", "--identity", "/nonexistent/key.txt"],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("/nonexistent/key.txt"),
        "{}",
        text(&o.stderr)
    );

    let bad = dir.path().join("policies");
    std::fs::create_dir(&bad).unwrap();
    for f in ["model.conf", "policy.csv", "holidays-kz.toml"] {
        std::fs::copy(policies().join(f), bad.join(f)).unwrap();
    }
    std::fs::write(
        bad.join("catalog.toml"),
        std::fs::read_to_string(policies().join("catalog.toml"))
            .unwrap()
            .replace("category = \"religion\"", "category = \"relgion\""),
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vaultctl"))
        .args(["--policies", bad.to_str().unwrap(), "catalog", "check"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("catalog.toml:") && err.contains("unknown category 'relgion'"),
        "{err}"
    );

    let o = vaultctl(dir.path(), &["catalog", "check"]);
    assert!(o.status.success());
    assert!(text(&o.stdout).contains("catalog OK: 3 record types"));
}

#[test]
fn output_into_a_closed_pipe_exits_quietly() {
    // Regression: `vaultctl ... | head -1` panicked with "failed printing to stdout".
    use std::io::Read as _;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_vaultctl"))
        .args([
            "--policies",
            policies().to_str().unwrap(),
            "catalog",
            "check",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before vaultctl writes
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(status.success() || status.code() == Some(1), "{status:?}");
}
