//! The keyring from arbitrary bytes: the plaintext decoder directly, the age-sealed file, and,
//! to reach the decoder behind a successful unseal, the input age-encrypted to the identity
//! that unseals it (so age's MAC passes and the keyring's own parser sees the bytes).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::str::FromStr;
use std::sync::LazyLock;
use vault_core::{CustodianRecipient, Keyring, Unlock};

static ID: LazyLock<(Unlock, age::x25519::Recipient)> = LazyLock::new(|| {
    let (unlock, recipient): (Unlock, CustodianRecipient) = Unlock::generate_identity();
    let age_recipient =
        age::x25519::Recipient::from_str(&recipient.to_string()).expect("a recipient");
    (unlock, age_recipient)
});

fn sealed_to_identity(plain: &[u8]) -> Vec<u8> {
    let enc = age::Encryptor::with_recipients(std::iter::once(&ID.1 as &dyn age::Recipient))
        .expect("one recipient");
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).expect("age output");
    w.write_all(plain).expect("write");
    w.finish().expect("finish");
    out
}

fuzz_target!(|data: &[u8]| {
    if let Ok(k) = Keyring::decode(data) {
        // What decodes re-encodes to the same bytes.
        assert_eq!(&*k.encode(), data);
    }
    let _ = Keyring::unseal(data, &ID.0);
    // Behind age: the same answer as the decoder gave the plaintext directly.
    let through_age = Keyring::unseal(&sealed_to_identity(data), &ID.0);
    assert_eq!(through_age.is_ok(), Keyring::decode(data).is_ok());
});
