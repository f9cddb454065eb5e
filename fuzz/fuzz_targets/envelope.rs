//! Sealed fields and wrapped DEKs from arbitrary bytes: never a panic, never an open.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use vault_core::{Category, Dek, FieldName, RecordId, wrapped_kek_version};

static DEK: LazyLock<Dek> = LazyLock::new(|| Dek::generate(&ring::rand::SystemRandom::new()).expect("rng"));

fuzz_target!(|data: &[u8]| {
    let field = FieldName::parse("diagnosis").expect("name");
    let cat = Category::parse("health").expect("name");
    // Random bytes must never authenticate.
    assert!(DEK.open_field(RecordId::new_random(), &field, &cat, data).is_err());
    let _ = wrapped_kek_version(data);
});
