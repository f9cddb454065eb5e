//! Every HTTP request body type, through the server's own depth limit and strict parsing.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vault_server::api::parse_any_body(data);
});
