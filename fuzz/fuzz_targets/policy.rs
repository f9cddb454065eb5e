//! The casbin grants file, the holidays file and the transfer rules on arbitrary text, against
//! the shipped catalog. The input is split in three at NUL bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;

static CATALOG: LazyLock<vault_core::Catalog> = LazyLock::new(|| {
    vault_core::Catalog::parse(include_str!("../../policies/catalog.toml"), "catalog.toml").expect("shipped catalog")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut parts = text.splitn(3, '\0');
    let csv = parts.next().unwrap_or("");
    let holidays = parts.next().unwrap_or("[years]");
    let transfer = parts.next().unwrap_or("protecting_states = []");
    let _ = vault_core::check_policy_texts(&CATALOG, csv, holidays, transfer);
});
