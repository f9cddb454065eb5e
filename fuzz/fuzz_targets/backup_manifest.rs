//! A backup's `manifest.json` from arbitrary bytes, through the parser `vaultctl restore` uses:
//! never a panic (row counts that overflow are an error, not a crash), and what parses adds up.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = vault_core::BackupManifest::parse(data) {
        let total = m.expected_rows().expect("a parsed manifest adds up");
        assert!(m.rows.values().all(|n| *n <= total));
    }
});
