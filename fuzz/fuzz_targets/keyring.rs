//! The keyring's plaintext encoding and the age-sealed keyring file from arbitrary bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use vault_core::{Keyring, Unlock};

static UNLOCK: LazyLock<Unlock> = LazyLock::new(|| Unlock::generate_identity().0);

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = Keyring::decode(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(&*k.encode(), data);
    }
    let _ = Keyring::unseal(data, &UNLOCK);
});
