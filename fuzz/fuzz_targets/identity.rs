//! Custodian inputs: an age identity file (as `--identity` reads it) and a recipient string
//! (as `--recipient` and `keyring recipient add` take it), from arbitrary bytes. Never a panic,
//! and an error never echoes a secret identity given where a recipient belongs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use vault_core::{CustodianRecipient, Unlock};

static FILE: LazyLock<std::path::PathBuf> = LazyLock::new(|| {
    std::env::temp_dir().join(format!("vault-fuzz-identity-{}.txt", std::process::id()))
});

fuzz_target!(|data: &[u8]| {
    if std::fs::write(&*FILE, data).is_ok() {
        let _ = Unlock::identity_file(&FILE);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        match CustodianRecipient::parse(s) {
            Ok(r) => assert!(r.to_string().starts_with("age1")),
            Err(e) => {
                // A secret identity anywhere in the text is refused as such, echoing nothing;
                // any other mistake may show a short prefix of what was typed.
                if s.to_ascii_uppercase().contains("AGE-SECRET-KEY-") {
                    assert!(
                        matches!(e, vault_core::KeyringError::SecretGivenAsRecipient),
                        "{e}"
                    );
                }
            }
        }
    }
});
