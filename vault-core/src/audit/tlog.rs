//! Proofs about the audit log that an outside auditor checks with the audit public key alone.
//!
//! The log's entries are the leaves of an RFC 6962 Merkle tree (`merkle`); its head is signed in
//! the C2SP tlog-checkpoint format, a C2SP signed note with an Ed25519 signature by the audit
//! key, so any tool that reads those formats (Go's `golang.org/x/mod/sumdb/note`, for one) can
//! check it. An auditor keeps a checkpoint; later, `vaultctl audit prove` gives a subject's
//! entries with inclusion proofs under a new checkpoint, and a consistency proof that the new
//! tree extends the kept one: nothing the auditor saw can have been removed or changed since.
//!
//! Leaf `i` (from 0) is entry `seq = i + 1`, encoded by `leaf_bytes`: the domain string
//! `school-vault/audit-leaf/v1\0`, then seq and time in microseconds as big-endian i64, then
//! actor, action, school, subject, record, categories (joined by commas), purpose, outcome and
//! reason, each a u32 big-endian length and its bytes, optional ones after a byte 0 (absent) or
//! 1 (present). `docs/AUDIT_PROOFS.md` restates it for whoever writes their own checker.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::audit::chain::{AuditRecord, put, put_opt};
use crate::audit::merkle::{Hash, leaf_hash, verify_consistency, verify_inclusion};

/// The `format` of a proof bundle.
pub const PROOF_FORMAT: &str = "school-vault/audit-proof/v1";
const LEAF_DOMAIN: &[u8] = b"school-vault/audit-leaf/v1\0";
/// The signature type of Ed25519 in a signed note.
const ED25519_NOTE: u8 = 0x01;
/// At most this many signature lines are read from a note.
const MAX_SIGNATURES: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProofError {
    #[error("{0}")]
    Malformed(String),
    #[error(
        "the public key {0:?} is not a note verifier key: expected name+keyid+base64 (as printed by vaultctl audit public-key)"
    )]
    BadKey(String),
    #[error("the checkpoint is not signed by any of the given audit keys")]
    NotSigned,
    #[error("the checkpoint is of log {found}, not of log {expected}")]
    OtherLog { expected: String, found: String },
    #[error(
        "entry {seq} is not in the signed tree: its fields or its inclusion proof were changed"
    )]
    NotIncluded { seq: i64 },
    #[error(
        "the tree of {new} entries does not extend the checkpoint of {old}: entries the older checkpoint covers were changed or removed, or the proof was changed"
    )]
    Inconsistent { old: u64, new: u64 },
    #[error("the proof is not from the checkpoint given with --since (of {expected} entries)")]
    NotFromCheckpoint { expected: u64 },
}

fn malformed(what: impl Into<String>) -> ProofError {
    ProofError::Malformed(what.into())
}

/// The bytes of an entry's leaf (see the module's documentation).
pub(crate) fn leaf_bytes(r: &AuditRecord) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(LEAF_DOMAIN);
    b.extend_from_slice(&r.seq.to_be_bytes());
    b.extend_from_slice(&r.at.timestamp_micros().to_be_bytes());
    put(&mut b, r.actor.as_bytes());
    put(&mut b, r.action.as_bytes());
    put_opt(&mut b, r.school.as_deref());
    put_opt(&mut b, r.subject.as_deref());
    put_opt(&mut b, r.record.as_deref());
    b.extend_from_slice(&(r.categories.len() as u32).to_be_bytes());
    for c in &r.categories {
        put(&mut b, c.as_bytes());
    }
    put_opt(&mut b, r.purpose.as_deref());
    put(&mut b, r.outcome.as_bytes());
    put_opt(&mut b, r.reason.as_deref());
    b
}

pub(crate) fn entry_leaf(r: &AuditRecord) -> Hash {
    leaf_hash(&leaf_bytes(r))
}

/// A public key that verifies signed notes: the audit key under the log's name, written as a
/// C2SP verifier key `name+keyid+base64(0x01 || key)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteKey {
    name: String,
    id: [u8; 4],
    public: [u8; 32],
}

fn key_id(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut m = name.as_bytes().to_vec();
    m.push(b'\n');
    m.push(ED25519_NOTE);
    m.extend_from_slice(public);
    let d = digest(&SHA256, &m);
    let mut id = [0u8; 4];
    id.copy_from_slice(&d.as_ref()[..4]);
    id
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c == '+')
}

impl NoteKey {
    pub(crate) fn of(name: &str, public: [u8; 32]) -> NoteKey {
        NoteKey {
            name: name.to_owned(),
            id: key_id(name, &public),
            public,
        }
    }

    /// Reads a verifier key as `vaultctl audit public-key` prints it.
    pub fn parse(vkey: &str) -> Result<NoteKey, ProofError> {
        let bad = || ProofError::BadKey(vkey.chars().take(200).collect());
        let vkey = vkey.trim();
        // The name holds no '+'; the base64 key may.
        let mut parts = vkey.splitn(3, '+');
        let (Some(name), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad());
        };
        if !valid_name(name) || id.len() != 8 {
            return Err(bad());
        }
        let id = hex::decode(id).map_err(|_| bad())?;
        let key = B64.decode(key).map_err(|_| bad())?;
        if key.len() != 33 || key[0] != ED25519_NOTE {
            return Err(bad());
        }
        let mut public = [0u8; 32];
        public.copy_from_slice(&key[1..]);
        let k = NoteKey::of(name, public);
        if k.id[..] != id[..] {
            return Err(bad());
        }
        Ok(k)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.public)
            .verify(message, signature)
            .is_ok()
    }
}

impl std::fmt::Display for NoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut key = vec![ED25519_NOTE];
        key.extend_from_slice(&self.public);
        write!(
            f,
            "{}+{}+{}",
            self.name,
            hex::encode(self.id),
            B64.encode(key)
        )
    }
}

/// The name of the log (the checkpoint's origin line and the key name): fixed by the first audit
/// key, so it stays the same across rotations.
pub(crate) fn origin(first_public: &[u8]) -> String {
    let d = digest(&SHA256, first_public);
    format!("school-vault/audit/{}", hex::encode(&d.as_ref()[..8]))
}

/// A tree head: the log's name, its size and its root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// The signed note: the body, a blank line, and the signature line of `key`.
    pub(crate) fn sign(&self, key: &NoteKey, signer: &Ed25519KeyPair) -> String {
        let body = self.body();
        let mut sig = key.id.to_vec();
        sig.extend_from_slice(signer.sign(body.as_bytes()).as_ref());
        format!("{body}\n\u{2014} {} {}\n", key.name, B64.encode(sig))
    }

    /// Reads a signed checkpoint and checks that one of `keys` signed it; lines signed by
    /// other keys are ignored, as the signed-note format asks. Answers the checkpoint and the
    /// key that signed it.
    pub fn open<'k>(
        note: &str,
        keys: &'k [NoteKey],
    ) -> Result<(Checkpoint, &'k NoteKey), ProofError> {
        // As Go's note.Open: the signatures follow the last blank line.
        let Some(split) = note.rfind("\n\n") else {
            return Err(malformed(
                "the checkpoint has no blank line before its signatures",
            ));
        };
        let (body, sigs) = (&note[..split + 1], &note[split + 2..]);
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or_else(|| malformed("the checkpoint has no origin line"))?;
        let size = lines
            .next()
            .filter(|s| {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && (s == &"0" || !s.starts_with('0'))
            })
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or_else(|| malformed("the checkpoint's second line is not a tree size"))?;
        let root = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| Hash::try_from(r.as_slice()).ok())
            .ok_or_else(|| malformed("the checkpoint's third line is not a base64 SHA-256 root"))?;
        if !sigs.ends_with('\n') {
            return Err(malformed("the checkpoint's last line does not end"));
        }
        if note.chars().any(|c| c.is_control() && c != '\n') {
            return Err(malformed("the checkpoint holds control characters"));
        }
        let sig_lines: Vec<&str> = sigs.split_terminator('\n').collect();
        if sig_lines.is_empty() || sig_lines.len() > MAX_SIGNATURES {
            return Err(malformed(format!(
                "the checkpoint has {} signature lines: between 1 and {MAX_SIGNATURES}",
                sig_lines.len()
            )));
        }
        let mut signer = None;
        for line in sig_lines {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(malformed(
                    "a signature line of the checkpoint does not start with an em dash",
                ));
            };
            let Some((name, sig)) = rest.split_once(' ') else {
                return Err(malformed(
                    "a signature line of the checkpoint has no signature",
                ));
            };
            let Ok(sig) = B64.decode(sig) else {
                return Err(malformed("a signature of the checkpoint is not base64"));
            };
            if sig.len() < 5 || !valid_name(name) {
                return Err(malformed("a signature line of the checkpoint is malformed"));
            }
            if let Some(k) = keys.iter().find(|k| k.name == name && k.id[..] == sig[..4]) {
                // A known key whose signature does not verify: the note was changed.
                if !k.verifies(body.as_bytes(), &sig[4..]) {
                    return Err(ProofError::NotSigned);
                }
                signer = Some(k);
            }
        }
        let signer = signer.ok_or(ProofError::NotSigned)?;
        if origin != signer.name {
            return Err(ProofError::OtherLog {
                expected: signer.name.clone(),
                found: origin.to_owned(),
            });
        }
        Ok((
            Checkpoint {
                origin: origin.to_owned(),
                size,
                root,
            },
            signer,
        ))
    }
}

/// One entry with its inclusion proof.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvenEntry {
    pub seq: i64,
    /// RFC 3339 with microseconds, as stored.
    pub at: String,
    pub actor: String,
    pub action: String,
    pub school: Option<String>,
    pub subject: Option<String>,
    pub record: Option<String>,
    pub categories: Vec<String>,
    pub purpose: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
    /// Base64 hashes, leaf to root.
    pub inclusion: Vec<String>,
}

/// That the signed tree extends an older checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// The older signed checkpoint, as given.
    pub from: String,
    pub proof: Vec<String>,
}

/// What `vaultctl audit prove` writes: a signed checkpoint, entries under it with inclusion
/// proofs, and optionally a consistency proof from an older checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProof {
    pub format: String,
    pub checkpoint: String,
    pub entries: Vec<ProvenEntry>,
    pub consistency: Option<ConsistencyProof>,
}

fn b64_hashes(hs: &[Hash]) -> Vec<String> {
    hs.iter().map(|h| B64.encode(h)).collect()
}

fn hashes(hs: &[String], what: &str) -> Result<Vec<Hash>, ProofError> {
    hs.iter()
        .map(|h| {
            B64.decode(h)
                .ok()
                .and_then(|b| Hash::try_from(b.as_slice()).ok())
                .ok_or_else(|| malformed(format!("{what}: {h:?} is not a base64 SHA-256 hash")))
        })
        .collect()
}

impl ProvenEntry {
    pub(crate) fn of(r: &AuditRecord, inclusion: &[Hash]) -> ProvenEntry {
        ProvenEntry {
            seq: r.seq,
            at: r.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            actor: r.actor.clone(),
            action: r.action.clone(),
            school: r.school.clone(),
            subject: r.subject.clone(),
            record: r.record.clone(),
            categories: r.categories.clone(),
            purpose: r.purpose.clone(),
            outcome: r.outcome.clone(),
            reason: r.reason.clone(),
            inclusion: b64_hashes(inclusion),
        }
    }

    fn record(&self) -> Result<AuditRecord, ProofError> {
        let at = DateTime::parse_from_rfc3339(&self.at)
            .map_err(|_| malformed(format!("entry {}: 'at' is not an RFC 3339 time", self.seq)))?
            .with_timezone(&Utc);
        Ok(AuditRecord {
            seq: self.seq,
            at,
            actor: self.actor.clone(),
            action: self.action.clone(),
            school: self.school.clone(),
            subject: self.subject.clone(),
            record: self.record.clone(),
            categories: self.categories.clone(),
            purpose: self.purpose.clone(),
            outcome: self.outcome.clone(),
            reason: self.reason.clone(),
        })
    }
}

impl AuditProof {
    pub(crate) fn consistency_of(from: &str, proof: &[Hash]) -> ConsistencyProof {
        ConsistencyProof {
            from: from.to_owned(),
            proof: b64_hashes(proof),
        }
    }
}

/// What a proof showed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProofCheck {
    pub origin: String,
    pub size: u64,
    /// The subject the entries are about (none when there are none).
    pub subject: Option<String>,
    pub entries: usize,
    /// The size of the older checkpoint the tree was shown to extend.
    pub extends: Option<u64>,
}

/// Checks a proof bundle with the audit public keys alone (oldest first, as `vaultctl audit
/// public-key` prints them): the checkpoint's signature by the newest key (a retired key signs
/// nothing new), each entry's inclusion, entries in increasing order and of one subject, and the
/// consistency proof, whose older checkpoint may be under any of the keys. `since`, the
/// auditor's own copy of an older checkpoint, must be the one the consistency proof starts
/// from.
pub fn check_audit_proof(
    proof: &AuditProof,
    keys: &[NoteKey],
    since: Option<&str>,
) -> Result<ProofCheck, ProofError> {
    if proof.format != PROOF_FORMAT {
        return Err(malformed(format!(
            "the proof's format is {:?}, not {PROOF_FORMAT:?}",
            proof.format
        )));
    }
    let newest = keys.len().saturating_sub(1);
    let (cp, key) = Checkpoint::open(&proof.checkpoint, &keys[newest..])?;
    let mut last = 0i64;
    let subject = proof.entries.first().and_then(|e| e.subject.clone());
    for e in &proof.entries {
        if e.seq <= last {
            return Err(malformed(format!(
                "entry {} follows entry {last}: entries must be in increasing order, each once",
                e.seq
            )));
        }
        last = e.seq;
        if e.subject.is_none() || e.subject != subject {
            return Err(malformed(format!(
                "entry {} is not about the proof's subject",
                e.seq
            )));
        }
        let r = e.record()?;
        let path = hashes(&e.inclusion, &format!("entry {}", e.seq))?;
        if r.seq < 1
            || !verify_inclusion(
                (r.seq - 1) as u64,
                cp.size,
                &entry_leaf(&r),
                &path,
                &cp.root,
            )
        {
            return Err(ProofError::NotIncluded { seq: r.seq });
        }
    }
    let pinned = since
        .map(|s| Checkpoint::open(s, keys).map(|(c, _)| c))
        .transpose()?;
    let extends = match (&proof.consistency, pinned) {
        (None, None) => None,
        (None, Some(p)) => return Err(ProofError::NotFromCheckpoint { expected: p.size }),
        (Some(c), pinned) => {
            let (old, _) = Checkpoint::open(&c.from, keys)?;
            if let Some(p) = pinned
                && p != old
            {
                return Err(ProofError::NotFromCheckpoint { expected: p.size });
            }
            if old.origin != key.name {
                return Err(ProofError::OtherLog {
                    expected: key.name.clone(),
                    found: old.origin,
                });
            }
            let path = hashes(&c.proof, "the consistency proof")?;
            if !verify_consistency(old.size, cp.size, &old.root, &cp.root, &path) {
                return Err(ProofError::Inconsistent {
                    old: old.size,
                    new: cp.size,
                });
            }
            Some(old.size)
        }
    };
    Ok(ProofCheck {
        origin: cp.origin,
        size: cp.size,
        subject,
        entries: proof.entries.len(),
        extends,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    fn signer() -> (Ed25519KeyPair, NoteKey) {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut public = [0u8; 32];
        public.copy_from_slice(kp.public_key().as_ref());
        let key = NoteKey::of(&origin(&public), public);
        (kp, key)
    }

    #[test]
    fn a_checkpoint_reads_back_under_its_key_and_no_other() {
        let (kp, key) = signer();
        let cp = Checkpoint {
            origin: key.name().to_owned(),
            size: 42,
            root: [7u8; 32],
        };
        let note = cp.sign(&key, &kp);
        assert!(note.starts_with(&format!("{}\n42\n", key.name())));
        let again = NoteKey::parse(&key.to_string()).unwrap();
        assert_eq!(again, key);
        let keys = [again];
        assert_eq!(Checkpoint::open(&note, &keys).unwrap().0, cp);
        let (_, other) = signer();
        assert_eq!(
            Checkpoint::open(&note, &[other]).unwrap_err(),
            ProofError::NotSigned
        );
        // Sizes only in plain decimal; a known key's bad signature rejects the note even
        // when another line verifies; a missing signature line is malformed.
        for bad in [
            note.replacen("\n42\n", "\n+42\n", 1),
            note.replacen("\n42\n", "\n042\n", 1),
        ] {
            assert!(matches!(
                Checkpoint::open(&bad, &keys),
                Err(ProofError::Malformed(_))
            ));
        }
        let sig_line = &note[note.rfind("\n\n").unwrap() + 2..];
        let mut forged = sig_line.to_owned();
        let at = forged.len() - 4;
        forged.replace_range(
            at..at + 1,
            if &forged[at..at + 1] == "A" { "B" } else { "A" },
        );
        let doubled = format!("{note}{forged}");
        assert_eq!(
            Checkpoint::open(&doubled, &keys).unwrap_err(),
            ProofError::NotSigned
        );
        assert!(matches!(
            Checkpoint::open(&note.replace(sig_line, ""), &keys),
            Err(ProofError::Malformed(_))
        ));
        // One changed digit of the size breaks the signature.
        let edited = note.replacen("\n42\n", "\n43\n", 1);
        assert_eq!(
            Checkpoint::open(&edited, &keys).unwrap_err(),
            ProofError::NotSigned
        );
    }

    #[test]
    fn a_key_id_that_does_not_match_the_key_is_refused() {
        let (_, key) = signer();
        let s = key.to_string();
        let parts: Vec<&str> = s.splitn(3, '+').collect();
        let bad = format!("{}+00000000+{}", parts[0], parts[2]);
        assert!(matches!(NoteKey::parse(&bad), Err(ProofError::BadKey(_))));
        assert!(matches!(
            NoteKey::parse("no-plus-signs"),
            Err(ProofError::BadKey(_))
        ));
    }
}
