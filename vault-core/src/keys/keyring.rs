//! The keyring: every category's KEK versions, the blind-index key and the audit-signing seed.
//! At rest it is one age file, encrypted to the custodians' X25519 recipients (any one unseals it)
//! or to a passphrase, so the standard `age` tool can open it in an emergency.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use chrono::{DateTime, Utc};
use ring::hmac;
use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use crate::domain::Category;
use crate::keys::custodian::{CustodianRecipient, KeyringError, Passphrase, Unlock};
use crate::keys::envelope::{Kek, SecretKey};

const MAGIC: &[u8] = b"SCHOOL-VAULT-KEYRING\0";
/// Format 1: no chain key (keyrings made before the chain). Still read; the next save writes 2.
const FORMAT_V1: u8 = 1;
/// Format 2: format 1 with the chain-signing seed after the audit seed.
const FORMAT_V2: u8 = 2;
/// Format 3: format 2 with the next blind-index key after the chain seed, written only while a
/// blind-index rotation is under way (before and after one, the keyring is format 2).
const FORMAT_V3: u8 = 3;
/// Formats 4 and 5: formats 2 and 3 with whom the keyring is sealed to at the end (`SealTarget`),
/// so that a save reseals to what the authenticated keyring says, never to what the key store's
/// row says.
const FORMAT_V4: u8 = 4;
const FORMAT_V5: u8 = 5;
/// Format 6: the chain seed, then a flags byte saying whether a next blind-index key and a seal
/// target follow, then the public keys of retired audit-signing keys at the end (oldest first).
/// Written once the audit-signing key has been rotated; formats 1 to 5 are still read.
const FORMAT_V6: u8 = 6;
const FLAG_NEXT_INDEX: u8 = 1;
const FLAG_TARGET: u8 = 2;
/// Retired audit-signing keys kept: each old checkpoint needs its key to verify.
const MAX_RETIRED_AUDIT_KEYS: usize = 4096;
/// Domain string of a blind-index key's identifier (an HMAC of it under the key).
const INDEX_KEY_ID: &[u8] = b"school-vault/blind-index-key-id/v1\0";
const MAX_CATEGORIES: usize = 1024;
const MAX_VERSIONS: usize = 65_535;

/// Whom the keyring is sealed to. age does not mix passphrases with recipients.
pub enum SealTo {
    Recipients(Vec<CustodianRecipient>),
    /// A passphrase, with scrypt's log2 work factor (`None`: age's default, about 1 s here).
    Passphrase(Passphrase, Option<u8>),
    /// A quorum: any M of N custodians together (`QuorumSeal::deal`).
    Quorum(crate::keys::quorum::QuorumSeal),
}

struct KekEntry {
    created: DateTime<Utc>,
    key: SecretKey,
    kek: Kek,
}

/// The unsealed keyring. No Debug, Display or Serialize: it holds every key of the vault.
pub struct Keyring {
    created: DateTime<Utc>,
    keks: BTreeMap<Category, BTreeMap<u32, KekEntry>>,
    blind_index: SecretKey,
    blind_hmac: hmac::Key,
    /// The blind-index key a rotation moves to (`rotate-index`): new subjects are indexed
    /// under it, lookups try it first; it replaces `blind_index` when every subject is moved.
    blind_next: Option<(SecretKey, hmac::Key)>,
    audit_seed: SecretKey,
    /// The Ed25519 seed whose key signs the next generation (`None`: a format-1 keyring, made
    /// before the chain; it gets one on its next save).
    chain_seed: Option<SecretKey>,
    /// Whom this generation is sealed to (`None`: a keyring saved before formats 4 and 5).
    sealed_to: Option<SealTarget>,
    /// Public keys of the audit-signing keys `audit_seed` replaced, oldest first: checkpoints
    /// signed before a rotation still verify, and no checkpoint signed by one is accepted after
    /// one signed by a newer key.
    retired_audit: Vec<[u8; 32]>,
}

/// Whom a keyring generation is sealed to, as the keyring itself records it (public values).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SealTarget {
    Passphrase,
    Recipients(Vec<String>),
    /// The quorum key's recipient, the threshold, and each share's number and commitment.
    Quorum {
        threshold: u8,
        key: String,
        commitments: Vec<(u8, [u8; 32])>,
    },
}

impl SealTarget {
    pub(crate) fn of(to: &SealTo) -> SealTarget {
        match to {
            SealTo::Passphrase(..) => SealTarget::Passphrase,
            SealTo::Recipients(rs) => {
                SealTarget::Recipients(rs.iter().map(ToString::to_string).collect())
            }
            SealTo::Quorum(q) => SealTarget::Quorum {
                threshold: q.quorum().threshold,
                key: q.quorum().key.to_string(),
                commitments: q.commitments(),
            },
        }
    }
}

/// An HMAC of an identifier under the blind-index key: lets the vault find a subject by IIN
/// without storing the IIN. Not secret by itself.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BlindIndex([u8; 32]);

impl BlindIndex {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// What the custodian sees of one category's keys: versions and dates, never key bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KekInfo {
    pub category: Category,
    pub version: u32,
    pub created: DateTime<Utc>,
}

impl Keyring {
    /// A fresh keyring with version 1 of a KEK for every given category.
    pub fn generate<'a>(
        categories: impl IntoIterator<Item = &'a Category>,
        now: DateTime<Utc>,
    ) -> Result<Self, KeyringError> {
        let rng = SystemRandom::new();
        let now = to_seconds(now);
        let mut keks = BTreeMap::new();
        for c in categories {
            let key = SecretKey::generate(&rng)?;
            let mut versions = BTreeMap::new();
            versions.insert(
                1,
                KekEntry {
                    created: now,
                    kek: Kek::new(1, &key),
                    key,
                },
            );
            keks.insert(c.clone(), versions);
        }
        let blind_index = SecretKey::generate(&rng)?;
        let audit_seed = SecretKey::generate(&rng)?;
        let chain_seed = SecretKey::generate(&rng)?;
        Ok(Self::assemble(
            now,
            keks,
            blind_index,
            None,
            audit_seed,
            Some(chain_seed),
            None,
            Vec::new(),
        ))
    }

    #[allow(
        clippy::too_many_arguments,
        reason = "one private constructor of every field"
    )]
    fn assemble(
        created: DateTime<Utc>,
        keks: BTreeMap<Category, BTreeMap<u32, KekEntry>>,
        blind_index: SecretKey,
        blind_next: Option<SecretKey>,
        audit_seed: SecretKey,
        chain_seed: Option<SecretKey>,
        sealed_to: Option<SealTarget>,
        retired_audit: Vec<[u8; 32]>,
    ) -> Self {
        let blind_hmac = hmac::Key::new(hmac::HMAC_SHA256, blind_index.expose());
        let blind_next = blind_next.map(|k| {
            let h = hmac::Key::new(hmac::HMAC_SHA256, k.expose());
            (k, h)
        });
        Keyring {
            created,
            keks,
            blind_index,
            blind_hmac,
            blind_next,
            audit_seed,
            chain_seed,
            sealed_to,
            retired_audit,
        }
    }

    /// Whom this generation was sealed to, if it says (formats 4 and 5).
    pub(crate) fn sealed_to(&self) -> Option<&SealTarget> {
        self.sealed_to.as_ref()
    }

    /// Records whom the next save seals to; written into the keyring itself.
    pub(crate) fn set_sealed_to(&mut self, to: &SealTo) {
        self.sealed_to = Some(SealTarget::of(to));
    }

    /// The key that signs the next generation, if this keyring has one (format 2).
    pub(crate) fn chain_signer(&self) -> Option<ring::signature::Ed25519KeyPair> {
        self.chain_seed
            .as_ref()
            .and_then(|s| ring::signature::Ed25519KeyPair::from_seed_unchecked(s.expose()).ok())
    }

    /// The public half of the chain key, as signed into the keyring's own link.
    pub(crate) fn chain_public_key(&self) -> Option<Vec<u8>> {
        use ring::signature::KeyPair;
        self.chain_signer()
            .map(|k| k.public_key().as_ref().to_vec())
    }

    /// Replaces the chain key with a fresh one: every generation has its own, so a copy of an
    /// old generation cannot sign a successor of the current one.
    pub(crate) fn renew_chain_key(&mut self) -> Result<(), KeyringError> {
        self.chain_seed = Some(SecretKey::generate(&SystemRandom::new())?);
        Ok(())
    }

    /// This keyring without its chain key, as a keyring made before the chain was (format 1).
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn without_chain_key(mut self) -> Self {
        self.chain_seed = None;
        self
    }

    #[cfg(any(test, feature = "test-hooks"))]
    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }

    /// The newest KEK version of a category, which wraps every new DEK.
    pub(crate) fn newest_kek(&self, category: &Category) -> Result<&Kek, KeyringError> {
        self.keks
            .get(category)
            .and_then(|v| v.values().next_back())
            .map(|e| &e.kek)
            .ok_or_else(|| KeyringError::NoKeyFor(category.clone()))
    }

    pub(crate) fn kek(&self, category: &Category, version: u32) -> Result<&Kek, KeyringError> {
        self.keks
            .get(category)
            .ok_or_else(|| KeyringError::NoKeyFor(category.clone()))?
            .get(&version)
            .map(|e| &e.kek)
            .ok_or_else(|| KeyringError::NoVersion {
                category: category.clone(),
                version,
            })
    }

    /// Adds a new KEK version for the category (creating its first if it has none).
    pub fn rotate(&mut self, category: &Category, now: DateTime<Utc>) -> Result<u32, KeyringError> {
        let rng = SystemRandom::new();
        let versions = self.keks.entry(category.clone()).or_default();
        let next = versions.keys().next_back().map_or(1, |v| v + 1);
        let key = SecretKey::generate(&rng)?;
        versions.insert(
            next,
            KekEntry {
                created: to_seconds(now),
                kek: Kek::new(next, &key),
                key,
            },
        );
        Ok(next)
    }

    /// Destroys one KEK version. The newest version of a category is never retired.
    pub(crate) fn retire(&mut self, category: &Category, version: u32) -> Result<(), KeyringError> {
        let versions = self
            .keks
            .get_mut(category)
            .ok_or_else(|| KeyringError::NoKeyFor(category.clone()))?;
        let newest = versions.keys().next_back().copied();
        if newest == Some(version) {
            return Err(KeyringError::Seal(format!(
                "version {version} is the newest {category} key: rotate first, then retire the old one"
            )));
        }
        versions
            .remove(&version)
            .map(|_| ())
            .ok_or(KeyringError::NoVersion {
                category: category.clone(),
                version,
            })
    }

    /// A copy, through the plaintext encoding (the keyring is deliberately not `Clone`).
    pub(crate) fn duplicate(&self) -> Result<Keyring, KeyringError> {
        Keyring::decode(&self.encode())
    }

    /// The newest version number of a category's KEK.
    pub fn newest_version(&self, category: &Category) -> Option<u32> {
        self.keks
            .get(category)
            .and_then(|v| v.keys().next_back().copied())
    }

    /// Every KEK version, for status and rotation planning.
    pub fn kek_versions(&self) -> Vec<KekInfo> {
        self.keks
            .iter()
            .flat_map(|(c, vs)| {
                vs.iter().map(|(v, e)| KekInfo {
                    category: c.clone(),
                    version: *v,
                    created: e.created,
                })
            })
            .collect()
    }

    /// HMAC-SHA256 of `value` under the blind-index key, domain-separated by `kind`.
    pub fn blind_index(&self, kind: &str, value: &[u8]) -> BlindIndex {
        index_under(&self.blind_hmac, kind, value)
    }

    /// The same HMAC under the next blind-index key, while a rotation is under way.
    pub fn blind_index_next(&self, kind: &str, value: &[u8]) -> Option<BlindIndex> {
        self.blind_next
            .as_ref()
            .map(|(_, h)| index_under(h, kind, value))
    }

    /// Whether a blind-index rotation is under way (the keyring holds a next key).
    pub fn index_rotation_pending(&self) -> bool {
        self.blind_next.is_some()
    }

    /// The identifier of the blind-index key new indexes are made under (the next key during a
    /// rotation): 8 bytes of an HMAC of a constant under it, stored beside each subject's index
    /// so a rotation knows which subjects it has moved. Reveals nothing of the key.
    pub fn index_key_id(&self) -> [u8; 8] {
        let h = self
            .blind_next
            .as_ref()
            .map_or(&self.blind_hmac, |(_, h)| h);
        let tag = hmac::sign(h, INDEX_KEY_ID);
        let mut out = [0u8; 8];
        out.copy_from_slice(&tag.as_ref()[..8]);
        out
    }

    /// Makes a next blind-index key; `false` if a rotation is already under way (kept as is).
    /// Needs the chain key (format 2): a keyring made before the chain is resealed first.
    pub(crate) fn begin_index_rotation(&mut self) -> Result<bool, KeyringError> {
        if self.blind_next.is_some() {
            return Ok(false);
        }
        if self.chain_seed.is_none() {
            return Err(KeyringError::Seal(
                "the keyring has no chain key yet: run `vaultctl keyring reseal` first".into(),
            ));
        }
        let k = SecretKey::generate(&SystemRandom::new())?;
        let h = hmac::Key::new(hmac::HMAC_SHA256, k.expose());
        self.blind_next = Some((k, h));
        Ok(true)
    }

    /// Ends a rotation: the next blind-index key becomes the only one; the old one is gone.
    pub(crate) fn finish_index_rotation(&mut self) -> Result<(), KeyringError> {
        let (k, h) = self.blind_next.take().ok_or(KeyringError::Seal(
            "no blind-index rotation is under way".into(),
        ))?;
        self.blind_index = k;
        self.blind_hmac = h;
        Ok(())
    }

    /// The Ed25519 seed of the audit-signing key.
    pub(crate) fn audit_seed(&self) -> &[u8; 32] {
        self.audit_seed.expose()
    }

    /// The public keys of the audit-signing keys this one replaced, oldest first.
    pub(crate) fn retired_audit_keys(&self) -> &[[u8; 32]] {
        &self.retired_audit
    }

    /// Replaces the audit-signing key with a fresh one; the old one's public key is kept so
    /// the checkpoints it signed still verify. Needs the chain key, like an index rotation.
    pub(crate) fn rotate_audit_key(&mut self) -> Result<(), KeyringError> {
        if self.chain_seed.is_none() {
            return Err(KeyringError::Seal(
                "the keyring has no chain key yet: run `vaultctl keyring reseal` first".into(),
            ));
        }
        if self.retired_audit.len() >= MAX_RETIRED_AUDIT_KEYS {
            return Err(KeyringError::Seal(format!(
                "the keyring already keeps {MAX_RETIRED_AUDIT_KEYS} retired audit keys"
            )));
        }
        let old = ring::signature::Ed25519KeyPair::from_seed_unchecked(self.audit_seed.expose())
            .map_err(|_| KeyringError::Corrupt("invalid audit signing key"))?;
        let mut public = [0u8; 32];
        public.copy_from_slice(ring::signature::KeyPair::public_key(&old).as_ref());
        self.audit_seed = SecretKey::generate(&SystemRandom::new())?;
        self.retired_audit.push(public);
        Ok(())
    }

    /// Every key in clear; see `Vault::test_hooks_key_material`.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn raw_keys(&self) -> Vec<Vec<u8>> {
        let mut out = vec![
            self.blind_index.expose().to_vec(),
            self.audit_seed.expose().to_vec(),
        ];
        out.extend(self.blind_next.iter().map(|(k, _)| k.expose().to_vec()));
        out.extend(self.chain_seed.iter().map(|s| s.expose().to_vec()));
        for vs in self.keks.values() {
            out.extend(vs.values().map(|e| e.key.expose().to_vec()));
        }
        out
    }

    /// The plaintext encoding, in a buffer zeroed on drop.
    pub fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(256 + self.keks.len() * 128));
        out.extend_from_slice(MAGIC);
        // A next blind-index key exists only with a chain key (`begin_index_rotation`).
        let next = self
            .blind_next
            .as_ref()
            .filter(|_| self.chain_seed.is_some());
        let target = self
            .sealed_to
            .as_ref()
            .filter(|_| self.chain_seed.is_some());
        let v6 = self.chain_seed.is_some() && !self.retired_audit.is_empty();
        out.push(match (&self.chain_seed, next, target) {
            _ if v6 => FORMAT_V6,
            (Some(_), Some(_), Some(_)) => FORMAT_V5,
            (Some(_), None, Some(_)) => FORMAT_V4,
            (Some(_), Some(_), None) => FORMAT_V3,
            (Some(_), None, None) => FORMAT_V2,
            (None, _, _) => FORMAT_V1,
        });
        out.extend_from_slice(&self.created.timestamp().to_be_bytes());
        out.extend_from_slice(self.blind_index.expose());
        out.extend_from_slice(self.audit_seed.expose());
        if let Some(c) = &self.chain_seed {
            out.extend_from_slice(c.expose());
        }
        if v6 {
            let mut flags = 0;
            if next.is_some() {
                flags |= FLAG_NEXT_INDEX;
            }
            if target.is_some() {
                flags |= FLAG_TARGET;
            }
            out.push(flags);
        }
        if let Some((k, _)) = next {
            out.extend_from_slice(k.expose());
        }
        out.extend_from_slice(&(self.keks.len() as u16).to_be_bytes());
        for (cat, versions) in &self.keks {
            out.push(cat.as_str().len() as u8);
            out.extend_from_slice(cat.as_str().as_bytes());
            out.extend_from_slice(&(versions.len() as u16).to_be_bytes());
            for (v, e) in versions {
                out.extend_from_slice(&v.to_be_bytes());
                out.extend_from_slice(&e.created.timestamp().to_be_bytes());
                out.extend_from_slice(e.key.expose());
            }
        }
        if let Some(t) = target {
            encode_target(&mut out, t);
        }
        if v6 {
            out.extend_from_slice(&(self.retired_audit.len() as u16).to_be_bytes());
            for k in &self.retired_audit {
                out.extend_from_slice(k);
            }
        }
        out
    }

    /// Parses the plaintext encoding strictly: any trailing byte, duplicate or bad name is refused.
    pub fn decode(bytes: &[u8]) -> Result<Self, KeyringError> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err(KeyringError::Corrupt("not a vault keyring"));
        }
        let format = r.u8()?;
        if !matches!(
            format,
            FORMAT_V1 | FORMAT_V2 | FORMAT_V3 | FORMAT_V4 | FORMAT_V5 | FORMAT_V6
        ) {
            return Err(KeyringError::Corrupt("unknown keyring format version"));
        }
        let created = r.time()?;
        let blind_index = r.key()?;
        let audit_seed = r.key()?;
        let chain_seed = if format >= FORMAT_V2 {
            Some(r.key()?)
        } else {
            None
        };
        let flags = if format == FORMAT_V6 {
            let f = r.u8()?;
            if f & !(FLAG_NEXT_INDEX | FLAG_TARGET) != 0 {
                return Err(KeyringError::Corrupt("unknown keyring flags"));
            }
            f
        } else {
            0
        };
        let blind_next = if matches!(format, FORMAT_V3 | FORMAT_V5) || flags & FLAG_NEXT_INDEX != 0
        {
            Some(r.key()?)
        } else {
            None
        };
        let n = usize::from(r.u16()?);
        if n > MAX_CATEGORIES {
            return Err(KeyringError::Corrupt("too many categories"));
        }
        let mut keks = BTreeMap::new();
        for _ in 0..n {
            let len = usize::from(r.u8()?);
            let name = std::str::from_utf8(r.take(len)?)
                .map_err(|_| KeyringError::Corrupt("category name is not UTF-8"))?;
            let cat = Category::parse(name)
                .map_err(|_| KeyringError::Corrupt("invalid category name"))?;
            let nv = usize::from(r.u16()?);
            if nv > MAX_VERSIONS {
                return Err(KeyringError::Corrupt("too many key versions"));
            }
            let mut versions = BTreeMap::new();
            for _ in 0..nv {
                let v = r.u32()?;
                let created = r.time()?;
                let key = r.key()?;
                if v == 0 {
                    return Err(KeyringError::Corrupt("key version 0"));
                }
                let entry = KekEntry {
                    created,
                    kek: Kek::new(v, &key),
                    key,
                };
                if versions.insert(v, entry).is_some() {
                    return Err(KeyringError::Corrupt("duplicate key version"));
                }
            }
            if keks.insert(cat, versions).is_some() {
                return Err(KeyringError::Corrupt("duplicate category"));
            }
        }
        let sealed_to = if matches!(format, FORMAT_V4 | FORMAT_V5) || flags & FLAG_TARGET != 0 {
            Some(decode_target(&mut r)?)
        } else {
            None
        };
        let mut retired_audit = Vec::new();
        if format == FORMAT_V6 {
            let n = usize::from(r.u16()?);
            if n == 0 || n > MAX_RETIRED_AUDIT_KEYS {
                return Err(KeyringError::Corrupt("bad count of retired audit keys"));
            }
            for _ in 0..n {
                let mut k = [0u8; 32];
                k.copy_from_slice(r.take(32)?);
                retired_audit.push(k);
            }
        }
        if !r.0.is_empty() {
            return Err(KeyringError::Corrupt("trailing bytes after the keyring"));
        }
        Ok(Self::assemble(
            created,
            keks,
            blind_index,
            blind_next,
            audit_seed,
            chain_seed,
            sealed_to,
            retired_audit,
        ))
    }

    /// Encrypts the keyring into one age file.
    pub fn seal(&self, to: &SealTo) -> Result<Vec<u8>, KeyringError> {
        let plain = self.encode();
        let encryptor = match to {
            SealTo::Recipients(rs) => {
                if rs.is_empty() {
                    return Err(KeyringError::Seal(
                        "no custodian recipient given: name at least one age1... key".into(),
                    ));
                }
                age::Encryptor::with_recipients(rs.iter().map(|r| &r.0 as &dyn age::Recipient))
                    .map_err(|e| KeyringError::Seal(e.to_string()))?
            }
            SealTo::Quorum(q) => {
                age::Encryptor::with_recipients(std::iter::once(q.quorum().key.as_age()))
                    .map_err(|e| KeyringError::Seal(e.to_string()))?
            }
            SealTo::Passphrase(p, work) => {
                let mut r = p.scrypt_recipient();
                if let Some(log_n) = work {
                    r.set_work_factor(*log_n);
                }
                age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                    .map_err(|e| KeyringError::Seal(e.to_string()))?
            }
        };
        let mut out = Vec::with_capacity(plain.len() + 512);
        let mut w = encryptor
            .wrap_output(&mut out)
            .map_err(|e| KeyringError::Seal(e.to_string()))?;
        w.write_all(&plain)
            .and_then(|_| w.finish().map(|_| ()))
            .map_err(|e| KeyringError::Seal(e.to_string()))?;
        Ok(out)
    }

    /// Decrypts an age-sealed keyring with the given identities or passphrase.
    pub fn unseal(sealed: &[u8], unlock: &Unlock) -> Result<Self, KeyringError> {
        let dec = age::Decryptor::new_buffered(sealed).map_err(KeyringError::Unseal)?;
        let mut reader = match unlock {
            Unlock::Identities(ids) => {
                dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
            }
            Unlock::Passphrase(p) => {
                let id = p.scrypt_identity();
                dec.decrypt(std::iter::once(&id as &dyn age::Identity))
            }
        }
        .map_err(KeyringError::Unseal)?;
        let mut plain = Zeroizing::new(Vec::new());
        reader
            .read_to_end(&mut plain)
            .map_err(|_| KeyringError::Corrupt("the sealed keyring failed authentication"))?;
        Self::decode(&plain)
    }
}

const TARGET_PASSPHRASE: u8 = 1;
const TARGET_RECIPIENTS: u8 = 2;
const TARGET_QUORUM: u8 = 3;

fn put_text(out: &mut Vec<u8>, t: &str) {
    out.extend_from_slice(&(t.len() as u16).to_be_bytes());
    out.extend_from_slice(t.as_bytes());
}

fn encode_target(out: &mut Vec<u8>, t: &SealTarget) {
    match t {
        SealTarget::Passphrase => out.push(TARGET_PASSPHRASE),
        SealTarget::Recipients(rs) => {
            out.push(TARGET_RECIPIENTS);
            out.extend_from_slice(&(rs.len() as u16).to_be_bytes());
            for r in rs {
                put_text(out, r);
            }
        }
        SealTarget::Quorum {
            threshold,
            key,
            commitments,
        } => {
            out.push(TARGET_QUORUM);
            out.push(*threshold);
            put_text(out, key);
            out.push(commitments.len() as u8);
            for (x, c) in commitments {
                out.push(*x);
                out.extend_from_slice(c);
            }
        }
    }
}

fn decode_target(r: &mut Reader<'_>) -> Result<SealTarget, KeyringError> {
    let text = |r: &mut Reader<'_>| -> Result<String, KeyringError> {
        let n = usize::from(r.u16()?);
        let t = std::str::from_utf8(r.take(n)?)
            .map_err(|_| KeyringError::Corrupt("a recipient that is not UTF-8"))?;
        CustodianRecipient::parse(t).map_err(|_| KeyringError::Corrupt("an invalid recipient"))?;
        Ok(t.to_owned())
    };
    match r.u8()? {
        TARGET_PASSPHRASE => Ok(SealTarget::Passphrase),
        TARGET_RECIPIENTS => {
            let n = usize::from(r.u16()?);
            if n == 0 || n > MAX_CATEGORIES {
                return Err(KeyringError::Corrupt("a recipient count out of range"));
            }
            (0..n)
                .map(|_| text(r))
                .collect::<Result<_, _>>()
                .map(SealTarget::Recipients)
        }
        TARGET_QUORUM => {
            let threshold = r.u8()?;
            let key = text(r)?;
            let n = r.u8()?;
            if threshold < 2 || threshold > n {
                return Err(KeyringError::Corrupt("a quorum threshold out of range"));
            }
            let mut commitments = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let x = r.u8()?;
                let mut c = [0u8; 32];
                c.copy_from_slice(r.take(32)?);
                if x == 0 || commitments.iter().any(|(y, _)| *y == x) {
                    return Err(KeyringError::Corrupt(
                        "a share number out of range or twice",
                    ));
                }
                commitments.push((x, c));
            }
            Ok(SealTarget::Quorum {
                threshold,
                key,
                commitments,
            })
        }
        _ => Err(KeyringError::Corrupt("an unknown seal target")),
    }
}

fn index_under(key: &hmac::Key, kind: &str, value: &[u8]) -> BlindIndex {
    let mut ctx = hmac::Context::with_key(key);
    ctx.update(&(kind.len() as u16).to_be_bytes());
    ctx.update(kind.as_bytes());
    ctx.update(value);
    let tag = ctx.sign();
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    BlindIndex(out)
}

/// The keyring stores times to the second; truncating when keys are made keeps the in-memory
/// keyring equal to its stored form.
fn to_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap_or(t)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], KeyringError> {
        if self.0.len() < n {
            return Err(KeyringError::Corrupt("truncated"));
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, KeyringError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, KeyringError> {
        let mut b = [0u8; 2];
        b.copy_from_slice(self.take(2)?);
        Ok(u16::from_be_bytes(b))
    }
    fn u32(&mut self) -> Result<u32, KeyringError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }
    fn time(&mut self) -> Result<DateTime<Utc>, KeyringError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        DateTime::from_timestamp(i64::from_be_bytes(b), 0)
            .ok_or(KeyringError::Corrupt("timestamp out of range"))
    }
    fn key(&mut self) -> Result<SecretKey, KeyringError> {
        let mut b = Zeroizing::new([0u8; 32]);
        b.copy_from_slice(self.take(32)?);
        Ok(SecretKey::from_bytes(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the identity fuzz target: an identity file pasted whole, comments first, was
    /// echoed back in the error with the start of its secret key.
    #[test]
    fn a_pasted_identity_file_is_never_echoed() {
        let pasted = "# created: 2026-01-01\nAGE-SECRET-KEY-1QQQQQQQQQQQQQQ";
        let err = CustodianRecipient::parse(pasted).unwrap_err();
        assert!(matches!(err, KeyringError::SecretGivenAsRecipient));
        assert!(!err.to_string().contains("1QQQ"), "{err}");
    }

    fn cats() -> Vec<Category> {
        ["health", "identity"]
            .iter()
            .map(|c| Category::parse(c).unwrap())
            .collect()
    }

    #[test]
    fn encode_decode_round_trip() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let mut kr = Keyring::generate(&cats(), now).unwrap();
        assert_eq!(kr.rotate(&cats()[0], now).unwrap(), 2);
        let bytes = kr.encode();
        let back = Keyring::decode(&bytes).unwrap();
        assert_eq!(back.kek_versions(), kr.kek_versions());
        assert_eq!(*back.encode(), *bytes);
        assert_eq!(back.blind_index("iin", b"1"), kr.blind_index("iin", b"1"));
        assert_ne!(kr.blind_index("iin", b"1"), kr.blind_index("iim", b"1"));
    }

    /// A keyring made before the chain (format 1) is still read, keeps its keys, and is
    /// written as format 1 until it gets a chain key; then format 2.
    #[test]
    fn format_1_is_still_read_and_format_2_carries_the_chain_key() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let kr = Keyring::generate(&cats(), now).unwrap();
        let v2 = kr.encode();
        assert_eq!(v2[MAGIC.len()], FORMAT_V2);
        let public = kr.chain_public_key().unwrap();
        assert_eq!(public.len(), 32);
        let mut old = kr.without_chain_key();
        let v1 = old.encode();
        assert_eq!(v1[MAGIC.len()], FORMAT_V1);
        assert_eq!(v1.len() + 32, v2.len());
        let back = Keyring::decode(&v1).unwrap();
        assert!(back.chain_public_key().is_none());
        assert_eq!(back.kek_versions(), old.kek_versions());
        assert_eq!(back.blind_index("iin", b"1"), old.blind_index("iin", b"1"));
        old.renew_chain_key().unwrap();
        let renewed = old.encode();
        assert_eq!(renewed[MAGIC.len()], FORMAT_V2);
        assert_ne!(old.chain_public_key().unwrap(), public);
        let again = Keyring::decode(&renewed).unwrap();
        assert_eq!(again.chain_public_key(), old.chain_public_key());
    }

    /// A blind-index rotation adds 32 bytes (format 3) for as long as it runs; a format-2
    /// keyring still decodes, and finishing the rotation writes format 2 again, without the
    /// old key.
    #[test]
    fn format_3_carries_the_next_index_key_and_format_2_still_decodes() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let mut kr = Keyring::generate(&cats(), now).unwrap();
        let v2 = kr.encode();
        assert_eq!(v2[MAGIC.len()], FORMAT_V2);
        let before = Keyring::decode(&v2).unwrap();
        assert!(!before.index_rotation_pending());
        assert!(before.blind_index_next("iin", b"1").is_none());
        let old = kr.blind_index("iin", b"1");
        let old_id = kr.index_key_id();

        assert!(kr.begin_index_rotation().unwrap());
        assert!(
            !kr.begin_index_rotation().unwrap(),
            "a second begin keeps the next key"
        );
        let v3 = kr.encode();
        assert_eq!(v3[MAGIC.len()], FORMAT_V3);
        assert_eq!(v3.len(), v2.len() + 32);
        // Besides the format byte, only the 32 bytes after the chain seed are new.
        let f = MAGIC.len();
        let at = f + 1 + 8 + 32 * 3;
        assert_eq!(v3[..f], v2[..f]);
        assert_eq!(v3[f + 1..at], v2[f + 1..at]);
        assert_eq!(v3[at + 32..], v2[at..]);
        let back = Keyring::decode(&v3).unwrap();
        assert_eq!(*back.encode(), *v3);
        assert_eq!(back.blind_index("iin", b"1"), old);
        let new = back.blind_index_next("iin", b"1").unwrap();
        assert_ne!(new, old);
        assert_eq!(kr.blind_index_next("iin", b"1"), Some(new));
        assert_ne!(back.index_key_id(), old_id);
        assert_eq!(back.index_key_id(), kr.index_key_id());

        kr.finish_index_rotation().unwrap();
        let done = kr.encode();
        assert_eq!(done[MAGIC.len()], FORMAT_V2);
        assert_eq!(done.len(), v2.len());
        let after = Keyring::decode(&done).unwrap();
        assert_eq!(after.blind_index("iin", b"1"), new);
        assert!(after.blind_index_next("iin", b"1").is_none());
        assert!(
            !done
                .windows(32)
                .any(|w| w == &v2[MAGIC.len() + 9..MAGIC.len() + 41]),
            "the old blind-index key is gone"
        );
        assert!(kr.finish_index_rotation().is_err());
        // Damage to a format-3 keyring is refused like any other.
        for cut in 0..v3.len() {
            assert!(Keyring::decode(&v3[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// Format 6 keeps the public keys of the audit keys a rotation replaced, with or without a
    /// next blind-index key and a seal target, and refuses any damage.
    #[test]
    fn format_6_keeps_retired_audit_keys() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let (_, r1) = Unlock::generate_identity();
        for (index, target) in [(false, false), (true, false), (false, true), (true, true)] {
            let mut kr = Keyring::generate(&cats(), now).unwrap();
            if target {
                kr.set_sealed_to(&SealTo::Recipients(vec![r1.clone()]));
            }
            if index {
                kr.begin_index_rotation().unwrap();
            }
            let first = *kr.audit_seed();
            kr.rotate_audit_key().unwrap();
            kr.rotate_audit_key().unwrap();
            assert_ne!(*kr.audit_seed(), first);
            let v6 = kr.encode();
            assert_eq!(v6[MAGIC.len()], FORMAT_V6);
            let back = Keyring::decode(&v6).unwrap();
            assert_eq!(back.retired_audit_keys().len(), 2);
            let old = ring::signature::Ed25519KeyPair::from_seed_unchecked(&first).unwrap();
            assert_eq!(
                back.retired_audit_keys()[0],
                ring::signature::KeyPair::public_key(&old).as_ref()
            );
            assert_eq!(back.index_rotation_pending(), index);
            assert_eq!(back.sealed_to().is_some(), target);
            assert_eq!(*back.encode(), *v6);
            for cut in 0..v6.len() {
                assert!(Keyring::decode(&v6[..cut]).is_err(), "cut at {cut}");
            }
            let mut extra = v6.to_vec();
            extra.push(0);
            assert!(Keyring::decode(&extra).is_err());
        }
    }

    /// Formats 4 and 5 carry whom the keyring is sealed to, and round-trip it exactly.
    #[test]
    fn formats_4_and_5_carry_the_seal_target() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let (_, r1) = Unlock::generate_identity();
        let (_, r2) = Unlock::generate_identity();
        let quorum = crate::keys::quorum::QuorumSeal::deal(2, &[r1.clone(), r2.clone()]).unwrap();
        for to in [
            SealTo::Recipients(vec![r1.clone(), r2.clone()]),
            SealTo::Quorum(quorum),
            SealTo::Passphrase(Passphrase::new("p".into()), None),
        ] {
            let mut kr = Keyring::generate(&cats(), now).unwrap();
            kr.set_sealed_to(&to);
            let v4 = kr.encode();
            assert_eq!(v4[MAGIC.len()], FORMAT_V4);
            let back = Keyring::decode(&v4).unwrap();
            assert_eq!(back.sealed_to(), Some(&SealTarget::of(&to)));
            assert_eq!(*back.encode(), *v4);
            kr.begin_index_rotation().unwrap();
            let v5 = kr.encode();
            assert_eq!(v5[MAGIC.len()], FORMAT_V5);
            assert_eq!(
                Keyring::decode(&v5).unwrap().sealed_to(),
                Some(&SealTarget::of(&to))
            );
            for cut in 0..v5.len() {
                assert!(Keyring::decode(&v5[..cut]).is_err(), "cut at {cut}");
            }
            let mut extra = v5.to_vec();
            extra.push(0);
            assert!(Keyring::decode(&extra).is_err());
        }
    }

    #[test]
    fn decode_refuses_damage() {
        let now = DateTime::from_timestamp(1_790_000_000, 0).unwrap();
        let bytes = Keyring::generate(&cats(), now).unwrap().encode();
        for cut in 0..bytes.len() {
            assert!(Keyring::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.to_vec();
        extra.push(0);
        assert!(Keyring::decode(&extra).is_err());
    }

    #[test]
    fn a_secret_key_given_as_recipient_is_never_echoed() {
        let id = age::x25519::Identity::generate();
        let secret = age::secrecy::ExposeSecret::expose_secret(&id.to_string()).to_owned();
        for input in [secret.clone(), secret.to_lowercase(), format!("  {secret}")] {
            let e = CustodianRecipient::parse(&input).unwrap_err().to_string();
            assert!(!e.contains(&secret[15..]), "{e}");
            assert!(e.contains("secret identity"), "{e}");
        }
        let e = CustodianRecipient::parse(&"age1x".repeat(40))
            .unwrap_err()
            .to_string();
        assert!(e.len() < 120, "{e}");
    }

    #[test]
    fn passphrase_seal_unseal() {
        let now = Utc::now();
        let kr = Keyring::generate(&cats(), now).unwrap();
        let sealed = kr
            .seal(&SealTo::Passphrase(
                Passphrase::new("correct horse".into()),
                Some(10),
            ))
            .unwrap();
        assert!(sealed.starts_with(b"age-encryption.org/v1"));
        let back = Keyring::unseal(
            &sealed,
            &Unlock::Passphrase(Passphrase::new("correct horse".into())),
        )
        .unwrap();
        assert_eq!(back.kek_versions(), kr.kek_versions());
        assert!(matches!(
            Keyring::unseal(
                &sealed,
                &Unlock::Passphrase(Passphrase::new("wrong".into()))
            ),
            Err(KeyringError::Unseal(_))
        ));
    }
}
