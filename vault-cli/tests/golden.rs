//! Golden tests of `vaultctl --help` for every command: a change to the interface shows up as a
//! diff here. Regenerate with `UPDATE_GOLDEN=1 cargo test -p vault-cli --test golden`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

const COMMANDS: &[&[&str]] = &[
    &[],
    &["catalog", "check"],
    &["keyring", "init"],
    &["keyring", "export"],
    &["keyring", "status"],
    &["keyring", "rotate"],
    &["keyring", "rewrap"],
    &["keyring", "retire"],
    &["keyring", "gc"],
    &["keyring", "rotate-index"],
    &["keyring", "rotate-audit-key"],
    &["keyring", "verify"],
    &["keyring", "reseal"],
    &["keyring", "reshare"],
    &["keyring", "unseal"],
    &["keyring", "recipient", "add"],
    &["keyring", "recipient", "remove"],
    &["keyring", "recipient", "list"],
    &["principal", "add"],
    &["principal", "list"],
    &["principal", "revoke"],
    &["audit", "verify"],
    &["audit", "log"],
    &["audit", "prove"],
    &["audit", "public-key"],
    &["audit", "check-proof"],
    &["incident", "report"],
    &["retention", "left"],
    &["retention", "plan"],
    &["retention", "sweep"],
    &["retention", "hold", "add"],
    &["retention", "hold", "list"],
    &["retention", "hold", "release"],
    &["transfer", "check"],
    &["transfer", "export"],
    &["transfer", "ground"],
    &["transfer", "ledger"],
    &["backup"],
    &["restore"],
    &["completions"],
    &["man"],
];

/// What vaultctl prints on stdout for `args`; it must succeed. The environment is cleared:
/// its defaults would show in the help text.
fn vaultctl(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_vaultctl"))
        .args(args)
        .env_clear()
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// `vaultctl CMD --help`.
fn help(cmd: &[&str]) -> String {
    vaultctl(&[cmd, &["--help"]].concat())
}

#[test]
fn help_of_every_command_matches_its_golden_file() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut mismatches = Vec::new();
    for cmd in COMMANDS {
        let got = help(cmd);
        if !cmd.is_empty() {
            assert!(
                got.contains("Example: vaultctl"),
                "{cmd:?} --help has no example"
            );
        }
        let name = if cmd.is_empty() {
            "vaultctl".to_owned()
        } else {
            cmd.join("-")
        };
        let file = dir.join(format!("{name}.txt"));
        if update {
            std::fs::write(&file, &got).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&file).unwrap_or_default();
        if want != got {
            mismatches.push(format!("--- {}\n{want}\n+++ actual\n{got}", file.display()));
        }
    }
    assert!(
        mismatches.is_empty(),
        "help text changed (UPDATE_GOLDEN=1 to accept):\n{}",
        mismatches.join("\n")
    );
}

/// Every command that `--help` lists, at every level, has a golden file above.
#[test]
fn every_command_has_a_golden_file() {
    fn walk(path: Vec<String>, missing: &mut Vec<String>) {
        let args: Vec<&str> = path.iter().map(String::as_str).collect();
        let help = help(&args);
        let Some(list) = help.split("Commands:\n").nth(1) else {
            // A leaf: it must be listed.
            if !COMMANDS.iter().any(|c| *c == path.as_slice()) {
                missing.push(path.join(" "));
            }
            return;
        };
        for line in list.lines().take_while(|l| l.starts_with("  ")) {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            if name != "help" {
                let mut sub = path.clone();
                sub.push(name.to_owned());
                walk(sub, missing);
            }
        }
    }
    let mut missing = Vec::new();
    walk(Vec::new(), &mut missing);
    assert!(
        missing.is_empty(),
        "commands without a golden file: {missing:?}"
    );
}

/// Global options sit under their own heading in every subcommand's help, never among the
/// subcommand's own options.
#[test]
fn global_options_have_their_own_heading() {
    for cmd in COMMANDS.iter().filter(|c| !c.is_empty()) {
        let help = help(cmd);
        let (usage, global) = help
            .split_once("Global options:")
            .unwrap_or_else(|| panic!("{cmd:?} has no Global options heading:\n{help}"));
        // The command's own options (the description's example may name global ones).
        let own = usage.split_once("\nOptions:\n").map_or("", |(_, o)| o);
        for flag in ["--data-dir", "--identity", "--policies", "--quiet"] {
            assert!(!own.contains(flag), "{cmd:?}: {flag} among its own options");
            assert!(global.contains(flag), "{cmd:?}: {flag} missing");
        }
    }
}

#[test]
fn completions_and_manual_pages_cover_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let script = vaultctl(&["completions", shell]);
        for cmd in COMMANDS.iter().filter(|c| c.len() == 2) {
            assert!(script.contains(cmd[1]), "{shell} completion lacks {cmd:?}");
        }
    }
    let page = vaultctl(&["man"]);
    assert!(page.contains(".TH vaultctl 1"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    // Another program's page in the folder is not counted as one of ours.
    std::fs::write(dir.path().join("other.1"), ".TH other 1\n").unwrap();
    let out = vaultctl(&["man", "--out", dir.path().to_str().unwrap()]);
    // One page per command, and one per command group (`keyring`, `keyring recipient`, ...).
    let groups: std::collections::BTreeSet<&[&str]> = COMMANDS
        .iter()
        .flat_map(|c| (1..c.len()).map(move |k| &c[..k]))
        .collect();
    assert_eq!(
        out.trim(),
        format!(
            "wrote {} manual pages into {}",
            COMMANDS.len() + groups.len(),
            dir.path().display()
        )
    );
    for cmd in COMMANDS {
        let name = if cmd.is_empty() {
            "vaultctl".to_owned()
        } else {
            format!("vaultctl-{}", cmd.join("-"))
        };
        let page = std::fs::read_to_string(dir.path().join(format!("{name}.1")))
            .unwrap_or_else(|e| panic!("{name}.1: {e} ({out})"));
        assert!(page.contains(&format!(".TH {name} 1")), "{name}");
    }
}
