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

/// The source without its test module: `#[cfg(test)]`, any further attributes, then `mod`.
fn without_tests(text: &str) -> &str {
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let mut rest = text[at + "#[cfg(test)]".len()..].trim_start();
        while rest.starts_with("#[") {
            match rest.find(']') {
                Some(j) => rest = rest[j + 1..].trim_start(),
                None => break,
            }
        }
        if rest.starts_with("mod ") {
            return &text[..at];
        }
        from = at + 1;
    }
    text
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

/// The text between a `{` at the start of `s` and its matching `}`.
fn group(s: &str) -> &str {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &s[1..i];
                }
            }
            _ => {}
        }
    }
    ""
}

/// The items of a use group, split at its top-level commas.
fn items(g: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0, 0);
    for (i, c) in g.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(g[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(g[start..].trim());
    out
}

/// Every path the code names from `crate::`, `super::` or `self::`, as segments from the crate
/// root, with each item of a `{…}` group expanded.
fn paths(code: &str, module: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let own: Vec<&str> = module.split("::").collect();
    for (start, base) in [
        ("crate::", Vec::new()),
        ("super::", own[..own.len() - 1].to_vec()),
        ("self::", own.clone()),
    ] {
        for (i, _) in code.match_indices(start) {
            if code[..i].chars().next_back().is_some_and(is_path_char) {
                continue; // part of a longer path, such as `vault_core::`
            }
            let rest = &code[i + start.len()..];
            let head: String = rest.chars().take_while(|c| is_path_char(*c)).collect();
            let prefix: Vec<String> = base
                .iter()
                .map(|s| s.to_string())
                .chain(head.split("::").filter(|s| !s.is_empty()).map(String::from))
                .collect();
            let after = &rest[head.len()..];
            if head.ends_with("::") && after.starts_with('{') {
                for item in items(group(after)) {
                    let tail: String = item.chars().take_while(|c| is_path_char(*c)).collect();
                    let mut p = prefix.clone();
                    p.extend(tail.split("::").filter(|s| !s.is_empty()).map(String::from));
                    out.push(p);
                }
            } else {
                out.push(prefix);
            }
        }
    }
    out
}

/// Names the lib root re-exports (`pub use crate::a::b::{X, Y}`), with the module each is from.
fn reexports(lib: &str, modules: &BTreeSet<String>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for p in paths(lib, "lib") {
        if let Some(name) = p.last()
            && let Some(m) = (1..p.len())
                .rev()
                .map(|n| p[..n].join("::"))
                .find(|m| modules.contains(m))
        {
            out.insert(name.clone(), m);
        }
    }
    out
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(&src, f)).collect();
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("read lib.rs");
    let roots = reexports(&lib, &modules);
    let mut g = Graph::new();
    for f in &files {
        let m = module_of(&src, f);
        if m == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(f).expect("read");
        let deps = g.entry(m.clone()).or_default();
        for segs in paths(without_tests(&text), &m) {
            // The longest prefix that names a module of the crate, or the module a root
            // re-export comes from.
            let dep = (1..=segs.len().min(2))
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|p| modules.contains(p))
                .or_else(|| segs.first().and_then(|s| roots.get(s).cloned()));
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

/// The parser sees the forms a dependency can take: a group, `super::`, a root re-export.
#[test]
fn the_walk_sees_groups_super_and_root_reexports() {
    let modules: BTreeSet<String> = [
        "records",
        "records::vault",
        "keys",
        "keys::custody",
        "error",
    ]
    .map(String::from)
    .into();
    let code = "use crate::records::{vault::Vault, writer};\nuse super::custody::ChainEntry;\nfn f() -> crate::VaultError {}\n#[cfg(test)]\n#[allow(x)]\nmod tests { use crate::error::X; }";
    let roots = reexports("pub use crate::error::VaultError;", &modules);
    let found: BTreeSet<String> = paths(without_tests(code), "keys::open")
        .into_iter()
        .filter_map(|segs| {
            (1..=segs.len().min(2))
                .rev()
                .map(|n| segs[..n].join("::"))
                .find(|p| modules.contains(p))
                .or_else(|| segs.first().and_then(|s| roots.get(s).cloned()))
        })
        .collect();
    assert_eq!(
        found,
        ["error", "keys::custody", "records", "records::vault"]
            .map(String::from)
            .into()
    );
}
