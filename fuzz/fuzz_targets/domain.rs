//! IIN, ids, names and country codes from arbitrary text: parse never panics, and what parses
//! prints back as it was read.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vault_core::{Category, Country, Iin, RecordId, SchoolId};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(i) = Iin::parse(s) {
        assert_eq!(i.digits(), s.trim());
        let _ = i.birth_date();
    }
    if let Ok(c) = Category::parse(s) {
        assert_eq!(c.as_str(), s);
    }
    if let Ok(x) = SchoolId::parse(s) {
        assert_eq!(x.as_str(), s);
    }
    let _ = RecordId::parse(s);
    let _ = Country::parse(s);
});
