//! The envelope: fields sealed under a per-(record, category) DEK, DEKs wrapped under the
//! category's KEK. Every ciphertext starts with a format byte so the format can evolve, and every
//! AAD binds where the ciphertext belongs, so moving it anywhere else makes it fail to open.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::domain::{Category, DekId, FieldName, RecordId};

/// Format byte of a sealed field, version 1: `01 | nonce(12) | ciphertext | tag(16)`.
pub const FIELD_FORMAT_V1: u8 = 0x01;
/// Format byte of a wrapped DEK, version 1: `01 | kek_version(u32 BE) | nonce(12) | ct(32) | tag(16)`.
pub const DEK_FORMAT_V1: u8 = 0x01;

const TAG_LEN: usize = 16;
const WRAPPED_DEK_LEN: usize = 1 + 4 + NONCE_LEN + 32 + TAG_LEN;
const FIELD_AAD_DOMAIN: &[u8] = b"school-vault/field/v1\0";
const DEK_AAD_DOMAIN: &[u8] = b"school-vault/dek/v1\0";

/// Why a ciphertext could not be made or opened. Never carries plaintext.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("ciphertext has unknown format byte {0:#04x}")]
    UnknownFormat(u8),
    #[error("ciphertext is truncated or has the wrong length")]
    Malformed,
    /// Authentication failed: the bytes were altered, or belong to another record, field,
    /// category, DEK or KEK version.
    #[error(
        "ciphertext failed authentication: it was altered or belongs to another record, field or category"
    )]
    Authentication,
    #[error("the system random number generator failed")]
    Random,
}

/// 256 bits of secret key material. Zeroized on drop; no Debug, Display or Serialize.
pub(crate) struct SecretKey(Zeroizing<[u8; 32]>);

impl SecretKey {
    pub(crate) fn generate(rng: &SystemRandom) -> Result<Self, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        rng.fill(k.as_mut()).map_err(|_| CryptoError::Random)?;
        Ok(SecretKey(k))
    }

    pub(crate) fn from_bytes(b: &[u8; 32]) -> Self {
        SecretKey(Zeroizing::new(*b))
    }

    pub(crate) fn expose(&self) -> &[u8; 32] {
        &self.0
    }

    fn aead(&self) -> LessSafeKey {
        // AES-256-GCM accepts any 32-byte key, so this cannot fail.
        match UnboundKey::new(&AES_256_GCM, self.0.as_ref()) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => unreachable!("AES-256-GCM key is 32 bytes"),
        }
    }
}

pub(crate) fn random_nonce(rng: &SystemRandom) -> Result<[u8; NONCE_LEN], CryptoError> {
    let mut n = [0u8; NONCE_LEN];
    rng.fill(&mut n).map_err(|_| CryptoError::Random)?;
    Ok(n)
}

/// OS randomness fetched in one call and handed out in slices: sealing a record needs ~500
/// random bytes (keys, ids, nonces), and one `getrandom` per nonce cost more than the AES-GCM
/// itself. Every byte is used once and zeroed as it is handed out.
pub(crate) struct Entropy {
    buf: Zeroizing<[u8; ENTROPY_POOL]>,
    pos: usize,
}

// One student record (6 DEKs of key, id and wrap nonce; 20 field nonces) takes 600 bytes.
const ENTROPY_POOL: usize = 640;

impl Entropy {
    pub(crate) fn new() -> Self {
        Entropy {
            buf: Zeroizing::new([0u8; ENTROPY_POOL]),
            pos: ENTROPY_POOL,
        }
    }

    fn fill(&mut self, rng: &SystemRandom, out: &mut [u8]) -> Result<(), CryptoError> {
        if out.len() > ENTROPY_POOL {
            return rng.fill(out).map_err(|_| CryptoError::Random);
        }
        if ENTROPY_POOL - self.pos < out.len() {
            rng.fill(self.buf.as_mut())
                .map_err(|_| CryptoError::Random)?;
            self.pos = 0;
        }
        let src = &mut self.buf[self.pos..self.pos + out.len()];
        out.copy_from_slice(src);
        src.fill(0);
        self.pos += out.len();
        Ok(())
    }

    pub(crate) fn nonce(&mut self, rng: &SystemRandom) -> Result<[u8; NONCE_LEN], CryptoError> {
        let mut n = [0u8; NONCE_LEN];
        self.fill(rng, &mut n)?;
        Ok(n)
    }

    fn key(&mut self, rng: &SystemRandom) -> Result<SecretKey, CryptoError> {
        let mut k = Zeroizing::new([0u8; 32]);
        self.fill(rng, k.as_mut())?;
        Ok(SecretKey(k))
    }

    fn dek_id(&mut self, rng: &SystemRandom) -> Result<DekId, CryptoError> {
        let mut b = [0u8; 10];
        self.fill(rng, &mut b)?;
        Ok(DekId::from_random_bytes(b))
    }
}

/// The AAD, built on the stack: names are at most 64 bytes, so it never exceeds 200 bytes, and
/// sealing a field allocates only its output.
struct AadBuf {
    buf: [u8; 200],
    len: usize,
}

impl AadBuf {
    fn new(domain: &[u8]) -> Self {
        let mut a = AadBuf {
            buf: [0u8; 200],
            len: 0,
        };
        a.push(domain);
        a
    }
    fn push(&mut self, b: &[u8]) {
        // Callers pass names parsed to at most 64 bytes; truncation cannot happen, and if it
        // did the AAD would still differ from any honest one, so opening would fail safely.
        let n = b.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&b[..n]);
        self.len += n;
    }
    fn push_str(&mut self, s: &str) {
        // Length-prefixed so that ("ab","c") and ("a","bc") never give the same AAD.
        self.push(&(s.len() as u16).to_be_bytes());
        self.push(s.as_bytes());
    }
    fn as_aad(&self) -> Aad<&[u8]> {
        Aad::from(&self.buf[..self.len])
    }
}

fn field_aad(record: RecordId, field: &FieldName, category: &Category, dek: DekId) -> AadBuf {
    let mut aad = AadBuf::new(FIELD_AAD_DOMAIN);
    aad.push(record.as_bytes());
    aad.push_str(field.as_str());
    aad.push_str(category.as_str());
    aad.push(dek.as_bytes());
    aad
}

fn dek_aad(record: RecordId, category: &Category, kek_version: u32, dek: DekId) -> AadBuf {
    let mut aad = AadBuf::new(DEK_AAD_DOMAIN);
    aad.push(record.as_bytes());
    aad.push_str(category.as_str());
    aad.push(&kek_version.to_be_bytes());
    aad.push(dek.as_bytes());
    aad
}

/// A data-encryption key for one (record, category). No Debug: it is a secret.
pub struct Dek {
    id: DekId,
    cipher: LessSafeKey,
    key: SecretKey,
}

impl Dek {
    /// The raw key, for the test hooks that prove no store holds it.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn key_bytes(&self) -> &[u8; 32] {
        self.key.expose()
    }

    #[cfg(any(test, feature = "test-hooks"))]
    /// A fresh random DEK.
    pub fn generate(rng: &SystemRandom) -> Result<Self, CryptoError> {
        let key = SecretKey::generate(rng)?;
        Ok(Dek {
            id: DekId::new_random(),
            cipher: key.aead(),
            key,
        })
    }

    pub(crate) fn generate_from(
        entropy: &mut Entropy,
        rng: &SystemRandom,
    ) -> Result<Self, CryptoError> {
        let key = entropy.key(rng)?;
        Ok(Dek {
            id: entropy.dek_id(rng)?,
            cipher: key.aead(),
            key,
        })
    }

    pub fn id(&self) -> DekId {
        self.id
    }

    #[cfg(any(test, feature = "test-hooks"))]
    /// Seals one field value. The result opens only for the same record, field, category and DEK.
    pub fn seal_field(
        &self,
        rng: &SystemRandom,
        record: RecordId,
        field: &FieldName,
        category: &Category,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.seal_with_nonce(random_nonce(rng)?, record, field, category, plaintext)
    }

    pub(crate) fn seal_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        record: RecordId,
        field: &FieldName,
        category: &Category,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + TAG_LEN);
        out.push(FIELD_FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let aad = field_aad(record, field, category, self.id);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aad.as_aad(),
                &mut out[1 + NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Opens a sealed field. The plaintext comes back in a buffer that is zeroed when dropped.
    pub fn open_field(
        &self,
        record: RecordId,
        field: &FieldName,
        category: &Category,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let (&format, rest) = sealed.split_first().ok_or(CryptoError::Malformed)?;
        if format != FIELD_FORMAT_V1 {
            return Err(CryptoError::UnknownFormat(format));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(CryptoError::Malformed);
        }
        let (nonce, body) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let aad = field_aad(record, field, category, self.id);
        let mut buf = Zeroizing::new(body.to_vec());
        let len = self
            .cipher
            .open_in_place(nonce, aad.as_aad(), buf.as_mut_slice())
            .map_err(|_| CryptoError::Authentication)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// A key-encryption key: one version of one category's KEK. No Debug: it is a secret.
pub(crate) struct Kek {
    pub(crate) version: u32,
    cipher: LessSafeKey,
}

impl Kek {
    pub(crate) fn new(version: u32, key: &SecretKey) -> Self {
        Kek {
            version,
            cipher: key.aead(),
        }
    }

    /// Wraps a DEK for (record, category) under this KEK version.
    #[cfg(test)]
    pub(crate) fn wrap(
        &self,
        rng: &SystemRandom,
        dek: &Dek,
        record: RecordId,
        category: &Category,
    ) -> Result<Vec<u8>, CryptoError> {
        self.wrap_with_nonce(random_nonce(rng)?, dek, record, category)
    }

    pub(crate) fn wrap_with_nonce(
        &self,
        nonce: [u8; NONCE_LEN],
        dek: &Dek,
        record: RecordId,
        category: &Category,
    ) -> Result<Vec<u8>, CryptoError> {
        let mut out = Vec::with_capacity(WRAPPED_DEK_LEN);
        out.push(DEK_FORMAT_V1);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(dek.key.expose());
        let aad = dek_aad(record, category, self.version, dek.id);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                aad.as_aad(),
                &mut out[1 + 4 + NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Authentication)?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Unwraps a DEK that `wrap` made for the same (record, category, DEK id).
    pub(crate) fn unwrap(
        &self,
        wrapped: &[u8],
        record: RecordId,
        category: &Category,
        dek_id: DekId,
    ) -> Result<Dek, CryptoError> {
        let version = wrapped_kek_version(wrapped)?;
        if version != self.version {
            return Err(CryptoError::Authentication);
        }
        let nonce = Nonce::try_assume_unique_for_key(&wrapped[5..5 + NONCE_LEN])
            .map_err(|_| CryptoError::Malformed)?;
        let aad = dek_aad(record, category, self.version, dek_id);
        let mut buf = Zeroizing::new(wrapped[5 + NONCE_LEN..].to_vec());
        let plain = self
            .cipher
            .open_in_place(nonce, aad.as_aad(), buf.as_mut_slice())
            .map_err(|_| CryptoError::Authentication)?;
        let bytes: &[u8; 32] = (&*plain).try_into().map_err(|_| CryptoError::Malformed)?;
        let key = SecretKey::from_bytes(bytes);
        Ok(Dek {
            id: dek_id,
            cipher: key.aead(),
            key,
        })
    }
}

/// Reads the KEK version a wrapped DEK names, checking its format and length.
pub fn wrapped_kek_version(wrapped: &[u8]) -> Result<u32, CryptoError> {
    let (&format, _) = wrapped.split_first().ok_or(CryptoError::Malformed)?;
    if format != DEK_FORMAT_V1 {
        return Err(CryptoError::UnknownFormat(format));
    }
    if wrapped.len() != WRAPPED_DEK_LEN {
        return Err(CryptoError::Malformed);
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&wrapped[1..5]);
    Ok(u32::from_be_bytes(v))
}

/// A DEK wrapped under a KEK version, as the key store keeps it. Not secret by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedDek {
    pub id: DekId,
    pub category: Category,
    pub kek_version: u32,
    pub wrapped: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names() -> (FieldName, Category) {
        (
            FieldName::parse("diagnosis").unwrap(),
            Category::parse("health").unwrap(),
        )
    }

    #[test]
    fn field_round_trip_and_binding() {
        let rng = SystemRandom::new();
        let dek = Dek::generate(&rng).unwrap();
        let (field, cat) = names();
        let rec = RecordId::new_random();
        let ct = dek.seal_field(&rng, rec, &field, &cat, b"asthma").unwrap();
        assert_eq!(ct[0], FIELD_FORMAT_V1);
        assert_eq!(&*dek.open_field(rec, &field, &cat, &ct).unwrap(), b"asthma");

        let other_rec = RecordId::new_random();
        let other_field = FieldName::parse("allergies").unwrap();
        let other_cat = Category::parse("psychological").unwrap();
        for (r, f, c) in [
            (other_rec, &field, &cat),
            (rec, &other_field, &cat),
            (rec, &field, &other_cat),
        ] {
            assert_eq!(
                dek.open_field(r, f, c, &ct).map(|_| ()),
                Err(CryptoError::Authentication)
            );
        }
        let other_dek = Dek::generate(&rng).unwrap();
        assert_eq!(
            other_dek.open_field(rec, &field, &cat, &ct).map(|_| ()),
            Err(CryptoError::Authentication)
        );
    }

    #[test]
    fn every_flipped_bit_in_a_field_fails() {
        let rng = SystemRandom::new();
        let dek = Dek::generate(&rng).unwrap();
        let (field, cat) = names();
        let rec = RecordId::new_random();
        let ct = dek
            .seal_field(&rng, rec, &field, &cat, b"x-ray 2026")
            .unwrap();
        for bit in 0..ct.len() * 8 {
            let mut bad = ct.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                dek.open_field(rec, &field, &cat, &bad).is_err(),
                "bit {bit} flipped still opened"
            );
        }
        assert_eq!(
            dek.open_field(rec, &field, &cat, &ct[..10]).map(|_| ()),
            Err(CryptoError::Malformed)
        );
        assert_eq!(
            dek.open_field(rec, &field, &cat, &[]).map(|_| ()),
            Err(CryptoError::Malformed)
        );
    }

    #[test]
    fn dek_wrap_binding_and_bit_flips() {
        let rng = SystemRandom::new();
        let kek = Kek::new(3, &SecretKey::generate(&rng).unwrap());
        let dek = Dek::generate(&rng).unwrap();
        let (field, cat) = names();
        let rec = RecordId::new_random();
        let wrapped = kek.wrap(&rng, &dek, rec, &cat).unwrap();
        assert_eq!(wrapped.len(), WRAPPED_DEK_LEN);
        assert_eq!(wrapped_kek_version(&wrapped), Ok(3));
        let back = kek.unwrap(&wrapped, rec, &cat, dek.id()).unwrap();
        let ct = dek.seal_field(&rng, rec, &field, &cat, b"v").unwrap();
        assert_eq!(&*back.open_field(rec, &field, &cat, &ct).unwrap(), b"v");

        let other_cat = Category::parse("religion").unwrap();
        assert!(
            kek.unwrap(&wrapped, RecordId::new_random(), &cat, dek.id())
                .is_err()
        );
        assert!(kek.unwrap(&wrapped, rec, &other_cat, dek.id()).is_err());
        assert!(
            kek.unwrap(&wrapped, rec, &cat, DekId::new_random())
                .is_err()
        );
        for bit in 0..wrapped.len() * 8 {
            let mut bad = wrapped.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(kek.unwrap(&bad, rec, &cat, dek.id()).is_err(), "bit {bit}");
        }
        // The same key under another version number must not open it either.
        let key = SecretKey::generate(&rng).unwrap();
        let v1 = Kek::new(1, &key);
        let v2 = Kek::new(2, &key);
        let w = v1.wrap(&rng, &dek, rec, &cat).unwrap();
        assert!(v2.unwrap(&w, rec, &cat, dek.id()).is_err());
    }

    #[test]
    fn entropy_pool_hands_out_each_byte_once() {
        let rng = SystemRandom::new();
        let mut e = Entropy::new();
        let mut seen = std::collections::HashSet::new();
        // Several refills' worth of nonces: none may repeat.
        for _ in 0..1000 {
            assert!(seen.insert(e.nonce(&rng).unwrap()));
        }
        let mut big = vec![0u8; ENTROPY_POOL + 1];
        e.fill(&rng, &mut big).unwrap();
        assert!(big.iter().any(|b| *b != 0));
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(
            value in proptest::collection::vec(any::<u8>(), 0..2048),
            field in "[a-z][a-z0-9_]{0,63}",
            category in "[a-z][a-z0-9_]{0,63}",
        ) {
            let rng = SystemRandom::new();
            let dek = Dek::generate(&rng).unwrap();
            let field = FieldName::parse(&field).unwrap();
            let category = Category::parse(&category).unwrap();
            let rec = RecordId::new_random();
            let ct = dek.seal_field(&rng, rec, &field, &category, &value).unwrap();
            prop_assert_eq!(ct.len(), value.len() + 1 + NONCE_LEN + TAG_LEN);
            let back = dek.open_field(rec, &field, &category, &ct).unwrap();
            prop_assert_eq!(&*back, &value[..]);
        }

        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let rng = SystemRandom::new();
            let dek = Dek::generate(&rng).unwrap();
            let (field, cat) = names();
            prop_assert!(dek.open_field(RecordId::new_random(), &field, &cat, &bytes).is_err());
        }
    }
}
