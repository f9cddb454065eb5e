//! The catalog parser and validator on arbitrary text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Err(e) = vault_core::Catalog::parse(text, "fuzz.toml")
    {
        let _ = e.to_string();
    }
});
