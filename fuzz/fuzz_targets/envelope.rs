//! Sealed fields and wrapped DEKs from arbitrary bytes, against a real keyring: a DEK unwrap
//! and a field open never panic and never authenticate what the keyring did not seal, whether
//! the bytes are random or a genuine wrapped DEK or sealed field with the input XORed in.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::LazyLock;
use vault_core::{
    Category, Dek, FieldName, Keyring, RecordId, RecordKeys, WrappedDek, wrapped_kek_version,
};

struct Fixture {
    keyring: Keyring,
    record: RecordId,
    genuine_dek: WrappedDek,
    genuine_field: Vec<u8>,
}

static DEK: LazyLock<Dek> =
    LazyLock::new(|| Dek::generate(&ring::rand::SystemRandom::new()).expect("rng"));
static HEALTH: LazyLock<Category> = LazyLock::new(|| Category::parse("health").expect("name"));
static FIELD: LazyLock<FieldName> = LazyLock::new(|| FieldName::parse("diagnosis").expect("name"));
static FIX: LazyLock<Fixture> = LazyLock::new(|| {
    let keyring = Keyring::generate([&*HEALTH], chrono::Utc::now()).expect("keyring");
    let record = RecordId::new_random();
    let mut keys = RecordKeys::new(record);
    let rng = ring::rand::SystemRandom::new();
    let genuine_field = keys
        .seal(&keyring, &rng, &FIELD, &HEALTH, b"asthma")
        .expect("seal");
    let genuine_dek = keys.take_new().pop().expect("a new DEK");
    Fixture {
        keyring,
        record,
        genuine_dek,
        genuine_field,
    }
});

fn xor(base: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    for (i, b) in data.iter().enumerate() {
        if let Some(o) = out.get_mut(i % base.len().max(1)) {
            *o ^= b;
        }
    }
    if data.len() > base.len() {
        out.extend_from_slice(&data[base.len()..]);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIX;
    // Random bytes never open as a field under some other DEK.
    assert!(DEK.open_field(f.record, &FIELD, &HEALTH, data).is_err());
    let _ = wrapped_kek_version(data);

    // Random bytes, then the genuine wrapped DEK with the input XORed in, through the real
    // unwrap path: only the untouched genuine bytes unwrap.
    for wrapped in [data.to_vec(), xor(&f.genuine_dek.wrapped, data)] {
        let w = WrappedDek {
            wrapped: wrapped.clone(),
            kek_version: wrapped_kek_version(&wrapped).unwrap_or(1),
            ..f.genuine_dek.clone()
        };
        let mut keys = RecordKeys::new(f.record);
        let ok = keys.unwrap(&f.keyring, &w).is_ok();
        assert_eq!(ok, wrapped == f.genuine_dek.wrapped, "only the genuine DEK unwraps");
        if ok {
            // The genuine DEK opens only the genuine field, not one with the input XORed in.
            let sealed = xor(&f.genuine_field, data);
            let opened = keys.open(&FIELD, &HEALTH, &sealed).expect("a DEK for health");
            assert_eq!(opened.is_ok(), sealed == f.genuine_field);
        }
    }
});
