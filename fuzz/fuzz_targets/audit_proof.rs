//! Audit proofs from arbitrary text: the first line a note verifier key, the rest a checkpoint
//! note or a proof bundle (JSON). Nothing panics; a key that parses prints back to itself; a
//! checkpoint opens only under the key that signed it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vault_core::{AuditProof, Checkpoint, NoteKey, check_audit_proof};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let (first, rest) = s.split_once('\n').unwrap_or((s, ""));
    let _ = Checkpoint::open(s, &[]).map(|_| panic!("a checkpoint opened under no key"));
    let Ok(key) = NoteKey::parse(first) else { return };
    assert_eq!(NoteKey::parse(&key.to_string()).ok().as_ref(), Some(&key));
    let keys = [key];
    let _ = Checkpoint::open(rest, &keys);
    if let Ok(proof) = serde_json::from_str::<AuditProof>(rest) {
        let _ = check_audit_proof(&proof, &keys, None);
        let _ = check_audit_proof(&proof, &keys, Some(&proof.checkpoint));
    }
});
