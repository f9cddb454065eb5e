//! Rotating the blind-index key (`vaultctl keyring rotate-index`): a custodian who left knows
//! the old key, and with it could test guessed IINs against a copy of the subjects table.
//!
//! The vault keeps no IIN in clear, but a subject's records may hold it, sealed, in a field of
//! type `iin` (a student's, staff member's or guardian's file). The rotation adds a next key to
//! the keyring (a signed generation), then, in batches of one data-store transaction each, opens
//! each subject's IIN fields with the keyring, keeps the IIN whose HMAC under the old key is the
//! stored index (so a record holding someone else's IIN moves nothing), and replaces the index
//! with the HMAC under the new key and the new key's identifier. When no subject is left under
//! the old key, the next key replaces it (another signed generation) and the old one is gone.
//!
//! Stopped anywhere, it resumes: the keyring keeps the next key, and the subjects still to move
//! are those whose index names another key. Throughout, new subjects are indexed under the new
//! key and a lookup tries the new index, then the old.

use std::collections::BTreeSet;

use crate::catalog::FieldType;
use crate::domain::{Category, FieldName, Iin, SubjectId};
use crate::error::VaultError;
use crate::records::vault::{FieldView, Vault};
use crate::store::repo::{records, subjects};

/// Subjects per transaction, at most.
const MAX_BATCH: u64 = 5000;

/// Where a blind-index rotation stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexRotation {
    /// Whether this run made the new key (`false`: it continued a rotation begun before).
    pub began: bool,
    /// Subjects moved onto the new key by this run.
    pub moved: u64,
    /// Subjects still under the old key: none once the rotation is done.
    pub remaining: u64,
    /// Of those, subjects none of whose records holds a readable IIN matching their index.
    pub unrecoverable: u64,
    /// Whether the old key was retired (by this run or, if nothing was left, at once).
    pub retired: bool,
}

impl Vault {
    /// Whether a blind-index rotation is under way: the keyring holds a new key beside the old.
    pub fn index_rotation_pending(&self) -> bool {
        self.keyring().index_rotation_pending()
    }

    /// Rotates the blind-index key; see the module documentation. `progress` is told after each
    /// committed batch.
    pub async fn rotate_blind_index(
        &self,
        batch: u64,
        passphrase: Option<crate::keys::custodian::Passphrase>,
        progress: &mut (dyn FnMut(IndexRotation) + Send),
    ) -> Result<IndexRotation, VaultError> {
        self.refresh_keyring().await?;
        let to = self.reseal_target(passphrase).await?;
        let mut report = IndexRotation::default();
        if !self.keyring().index_rotation_pending() {
            let mut k = self.keyring().duplicate()?;
            k.begin_index_rotation()?;
            self.store_keyring(k, &to).await?;
            report.began = true;
            self.key_event(
                "key.index_rotate",
                Vec::new(),
                "a new blind-index key: subjects are re-indexed under it".into(),
            )
            .await?;
        }
        let k = self.keyring();
        let key_id = k.index_key_id();
        report.remaining = subjects::count_not_under_key(&self.stores().data, &key_id).await?;
        let fields = self.iin_fields();
        let mut after: Option<String> = None;
        loop {
            let page = subjects::not_under_key(
                &self.stores().data,
                &key_id,
                after.as_deref(),
                batch.clamp(1, MAX_BATCH),
            )
            .await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.to_string());
            let mut moves = Vec::with_capacity(page.len());
            for (id, old) in page {
                match self.recover_iin(id, &old, &fields).await? {
                    Some(iin) => {
                        let digits = iin.digits();
                        let new = k.blind_index_next("iin", digits.as_bytes()).ok_or(
                            VaultError::Invalid(
                                "the blind-index rotation ended while this run went on".into(),
                            ),
                        )?;
                        moves.push((id, old, new.as_bytes().to_vec()));
                    }
                    None => report.unrecoverable += 1,
                }
            }
            let moved = subjects::reindex(&self.stores().data, moves, &key_id).await?;
            report.moved += moved;
            report.remaining = report.remaining.saturating_sub(moved);
            crate::crash::point("reindex.batch_committed");
            progress(report);
        }
        report.remaining = subjects::count_not_under_key(&self.stores().data, &key_id).await?;
        if report.remaining == 0 {
            let mut k = self.keyring().duplicate()?;
            k.finish_index_rotation()?;
            self.store_keyring(k, &to).await?;
            report.retired = true;
            self.key_event(
                "key.index_retire",
                Vec::new(),
                format!(
                    "every subject re-indexed ({} by this run): the old blind-index key is destroyed",
                    report.moved
                ),
            )
            .await?;
        } else {
            self.key_event(
                "key.index_reindex",
                Vec::new(),
                format!(
                    "{} subjects re-indexed; {} still under the old blind-index key, {} with no readable IIN in any record",
                    report.moved, report.remaining, report.unrecoverable
                ),
            )
            .await?;
        }
        Ok(report)
    }

    /// The catalog's fields that hold an IIN, with their categories.
    fn iin_fields(&self) -> BTreeSet<(FieldName, Category)> {
        self.catalog()
            .record_types()
            .flat_map(|t| t.fields())
            .filter(|f| f.field_type == FieldType::Iin)
            .map(|f| (f.name.clone(), f.category.clone()))
            .collect()
    }

    /// The subject's IIN, from a sealed IIN field of one of its live records whose HMAC under
    /// the current key is the subject's stored index `old`.
    async fn recover_iin(
        &self,
        subject: SubjectId,
        old: &[u8],
        fields: &BTreeSet<(FieldName, Category)>,
    ) -> Result<Option<Iin>, VaultError> {
        let k = self.keyring();
        let allowed: BTreeSet<Category> = fields.iter().map(|(_, c)| c.clone()).collect();
        for record in records::active_ids_of(&self.stores().data, subject).await? {
            let view = match self.read_record(record, &allowed).await {
                Ok(v) => v,
                // Shredded meanwhile (a retention sweep): it holds nothing any more.
                Err(VaultError::RecordShredded(_) | VaultError::RecordNotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            for (name, f) in &view.fields {
                let FieldView::Open { category, value } = f else {
                    continue;
                };
                if !fields.contains(&(name.clone(), category.clone())) {
                    continue;
                }
                let Some(iin) = value.to_json().as_str().and_then(|s| Iin::parse(s).ok()) else {
                    continue;
                };
                if k.blind_index("iin", iin.digits().as_bytes()).as_bytes() == old {
                    return Ok(Some(iin));
                }
            }
        }
        Ok(None)
    }
}
