//! The DEKs of one record, unwrapped or made under the keyring's KEKs. Above both the envelope
//! (the primitives) and the keyring (which holds the KEKs), so neither depends on the other.

use ring::rand::SystemRandom;
use zeroize::Zeroizing;

use std::collections::BTreeMap;

use crate::domain::{Category, FieldName, RecordId};
use crate::keys::custodian::KeyringError;
use crate::keys::envelope::{CryptoError, Dek, Entropy, WrappedDek, random_nonce};
use crate::keys::keyring::Keyring;

/// Moves a wrapped DEK from its KEK version to `to`, never touching field data.
pub(crate) fn rewrap_dek(
    keyring: &Keyring,
    rng: &SystemRandom,
    record: RecordId,
    w: &WrappedDek,
    to: u32,
) -> Result<Vec<u8>, KeyringError> {
    let dek =
        keyring
            .kek(&w.category, w.kek_version)?
            .unwrap(&w.wrapped, record, &w.category, w.id)?;
    let target = keyring.kek(&w.category, to)?;
    Ok(target.wrap_with_nonce(random_nonce(rng)?, &dek, record, &w.category)?)
}

/// The DEKs of one record, one per category, made or unwrapped as needed. Sealing a field in a
/// category that has no DEK yet makes one and wraps it under the category's newest KEK.
pub struct RecordKeys {
    record: RecordId,
    deks: BTreeMap<Category, Dek>,
    new: Vec<WrappedDek>,
    entropy: Entropy,
}

impl RecordKeys {
    pub fn new(record: RecordId) -> Self {
        RecordKeys {
            record,
            deks: BTreeMap::new(),
            new: Vec::new(),
            entropy: Entropy::new(),
        }
    }

    /// Unwraps a stored DEK of this record so its fields can be opened or added to.
    pub fn unwrap(&mut self, keyring: &Keyring, w: &WrappedDek) -> Result<(), KeyringError> {
        let kek = keyring.kek(&w.category, w.kek_version)?;
        let dek = kek.unwrap(&w.wrapped, self.record, &w.category, w.id)?;
        self.deks.insert(w.category.clone(), dek);
        Ok(())
    }

    #[cfg(any(test, feature = "test-hooks"))]
    pub fn has(&self, category: &Category) -> bool {
        self.deks.contains_key(category)
    }

    /// Seals one field value under the record's DEK for `category`.
    pub fn seal(
        &mut self,
        keyring: &Keyring,
        rng: &SystemRandom,
        field: &FieldName,
        category: &Category,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, KeyringError> {
        if !self.deks.contains_key(category) {
            let kek = keyring.newest_kek(category)?;
            let dek = Dek::generate_from(&mut self.entropy, rng)?;
            let nonce = self.entropy.nonce(rng)?;
            let wrapped = kek.wrap_with_nonce(nonce, &dek, self.record, category)?;
            self.new.push(WrappedDek {
                id: dek.id(),
                category: category.clone(),
                kek_version: kek.version,
                wrapped,
            });
            self.deks.insert(category.clone(), dek);
        }
        let nonce = self.entropy.nonce(rng)?;
        match self.deks.get(category) {
            Some(dek) => Ok(dek.seal_with_nonce(nonce, self.record, field, category, plaintext)?),
            None => Err(KeyringError::NoKeyFor(category.clone())),
        }
    }

    /// Opens one sealed field; `None` when this record has no unwrapped DEK for the category.
    pub fn open(
        &self,
        field: &FieldName,
        category: &Category,
        sealed: &[u8],
    ) -> Option<Result<Zeroizing<Vec<u8>>, CryptoError>> {
        self.deks
            .get(category)
            .map(|dek| dek.open_field(self.record, field, category, sealed))
    }

    /// The DEKs made since this was created, to be stored in the key store.
    pub fn take_new(&mut self) -> Vec<WrappedDek> {
        std::mem::take(&mut self.new)
    }
}

/// Unwraps a stored DEK and returns its bytes; see `Vault::test_hooks_key_material`.
#[cfg(feature = "test-hooks")]
pub(crate) fn test_hooks_unwrap(
    keyring: &Keyring,
    record: RecordId,
    w: &WrappedDek,
) -> Result<Vec<u8>, KeyringError> {
    let dek =
        keyring
            .kek(&w.category, w.kek_version)?
            .unwrap(&w.wrapped, record, &w.category, w.id)?;
    Ok(dek.key_bytes().to_vec())
}
