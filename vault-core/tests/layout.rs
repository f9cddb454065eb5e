//! The layout of `vault-core/src` keeps the dependencies it was split for. A module's
//! dependencies are the `crate::…` paths its non-test code names; a change that brings back one
//! of the import cycles the split removed, or lets the key primitives reach a service, fails here.
#![allow(clippy::expect_used)] // a test: a file that cannot be read is a failure

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `keys/envelope.rs` is `keys::envelope`; `keys/mod.rs` is `keys`; the store counts as one.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file
        .strip_prefix(src)
        .expect("under src")
        .with_extension("");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts.first().is_some_and(|p| p == "store") {
        parts.truncate(1);
    }
    parts.join("::")
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let mut g = Graph::new();
    for f in &files {
        let m = module_of(&src, f);
        if m == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or("");
        let deps = g.entry(m.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            let path: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            // The longest prefix that names a module of the crate.
            let dep = (1..=segs.len().min(2))
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|p| modules.contains(p));
            if let Some(d) = dep
                && d != m
            {
                deps.insert(d);
            }
        }
    }
    g
}

/// Whether `from` reaches `to` through modules other than those in `besides`.
fn reaches_besides(g: &Graph, from: &str, to: &str, besides: &[&str]) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_string()];
    while let Some(m) = stack.pop() {
        if m == to {
            return true;
        }
        if m != from && besides.contains(&m.as_str()) {
            continue;
        }
        if seen.insert(m.clone()) {
            stack.extend(g.get(&m).into_iter().flatten().cloned());
        }
    }
    false
}

#[test]
fn the_cycles_the_split_removed_stay_gone() {
    let g = graph();
    assert!(
        g.contains_key("keys::envelope"),
        "the walk found the modules: {g:?}"
    );
    // Each pair was an import cycle before the split; the first no longer reaches the second.
    // The store layer and the services' error are left out of the walk: the repositories still
    // return values (and `VaultError`) defined beside the services, a cycle of its own that
    // `docs/ARCHITECTURE.md` names. Every path here must go around it.
    for (low, high) in [
        ("audit::chain", "records::writer"),
        ("audit::anchor", "records::vault"),
        ("access::policy", "access::transfer"),
        ("keys::envelope", "keys::keyring"),
        ("keys::open", "keys::custody"),
        ("keys::open", "records::vault"),
        ("keys::quorum", "keys::keyring"),
    ] {
        assert!(
            !reaches_besides(&g, low, high, &["store", "error"]),
            "{low} depends (through {:?}) on {high} again",
            g.get(low)
        );
    }
}

#[test]
fn the_key_primitives_depend_on_no_service() {
    let g = graph();
    let primitives = [
        "keys::envelope",
        "keys::custodian",
        "keys::keychain",
        "keys::quorum",
        "keys::keyring",
        "keys::record_keys",
        "audit::merkle",
    ];
    let allowed = ["domain", "clock", "crash"];
    for m in primitives {
        for d in g.get(m).into_iter().flatten() {
            assert!(
                allowed.contains(&d.as_str()) || primitives.contains(&d.as_str()),
                "{m} depends on {d}: the key primitives must not reach the stores or a service"
            );
        }
    }
    for m in primitives {
        assert!(
            !reaches_besides(&g, m, "store", &[]),
            "{m} reaches the store layer"
        );
        assert!(
            !reaches_besides(&g, m, "error", &[]),
            "{m} reaches the services' error"
        );
    }
}
