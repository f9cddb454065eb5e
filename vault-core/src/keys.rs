//! The key custodian's operations: rotate a category's KEK, rewrap DEKs onto the newest version
//! in resumable batches (never decrypting field data), retire an old version once nothing uses
//! it, and change the custodians the keyring is sealed to. Every change of the keyring is a
//! compare-and-set on its generation, so two custodians cannot overwrite each other, and running
//! servers load the new generation before their next write.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::collections::{BTreeMap, BTreeSet};

use crate::audit::{AuditEvent, Outcome};
use crate::domain::Category;
use crate::envelope::rewrap_dek;
use crate::keyring::{CustodianRecipient, Keyring, Passphrase, SealTo};
use crate::store::repo::{deks, keyring, records};
use crate::vault::{Vault, VaultError};

const MAX_REWRAP_BATCH: u64 = 5000;
/// DEKs checked per page of an orphan collection: one key-store page, one data-store lookup.
const GC_PAGE: u64 = 1000;

/// Progress of a rewrap: how many DEKs moved, and how many still use an older version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewrapProgress {
    pub moved: u64,
    pub remaining: u64,
}

/// What a collection of orphan DEKs found (and, unless it was a dry run, removed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OrphanReport {
    pub dry_run: bool,
    /// DEKs old enough to be looked at.
    pub checked: u64,
    /// Of those, DEKs of records the data store does not hold.
    pub orphans: u64,
}

impl Vault {
    /// The current in-memory keyring.
    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        match self.keyring.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Loads the stored keyring if a custodian changed it since this one was loaded.
    pub async fn refresh_keyring(&self) -> Result<bool, VaultError> {
        let row = keyring::sealed(&self.stores().keys)
            .await?
            .ok_or(VaultError::KeyringMissing)?;
        if row.generation == self.generation.load(Ordering::Acquire) {
            return Ok(false);
        }
        let fresh = Keyring::unseal(&row.sealed, &self.unlock)?;
        self.install(fresh, row.generation);
        tracing::info!(generation = row.generation, "loaded a newer keyring");
        Ok(true)
    }

    fn install(&self, k: Keyring, generation: i64) {
        match self.keyring.write() {
            Ok(mut g) => *g = Arc::new(k),
            Err(p) => *p.into_inner() = Arc::new(k),
        }
        self.generation.store(generation, Ordering::Release);
    }

    /// The public recipients the keyring is sealed to (empty: sealed to a passphrase).
    pub async fn recipients(&self) -> Result<Vec<CustodianRecipient>, VaultError> {
        keyring::recipients(&self.stores().keys)
            .await?
            .ok_or(VaultError::KeyringMissing)
    }

    /// Seals `k` to `to` and stores it as the next generation, if nobody changed it meanwhile.
    async fn store_keyring(&self, k: Keyring, to: &SealTo) -> Result<(), VaultError> {
        let sealed = k.seal(to)?;
        let g = self.generation.load(Ordering::Acquire);
        let r = keyring::replace(&self.stores().keys, g, sealed, to, self.now()).await?;
        if r != 1 {
            return Err(VaultError::Invalid(
                "the keyring changed while this operation ran (another custodian?): run it again"
                    .into(),
            ));
        }
        self.install(k, g + 1);
        Ok(())
    }

    /// Whom to re-seal to: the stored recipients, or the passphrase the custodian gives.
    async fn reseal_target(&self, passphrase: Option<Passphrase>) -> Result<SealTo, VaultError> {
        let rs = self.recipients().await?;
        match (rs.is_empty(), passphrase) {
            (false, _) => Ok(SealTo::Recipients(rs)),
            (true, Some(p)) => Ok(SealTo::Passphrase(p, None)),
            (true, None) => Err(VaultError::Invalid(
                "the keyring is sealed to a passphrase: give it (--passphrase-file) to re-seal"
                    .into(),
            )),
        }
    }

    async fn key_event(
        &self,
        action: &'static str,
        categories: Vec<Category>,
        reason: String,
    ) -> Result<(), VaultError> {
        let mut ev = AuditEvent::new("custodian", action, Outcome::Done);
        ev.categories = categories;
        ev.reason = Some(reason);
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    /// Adds a new KEK version for a category; new DEKs use it at once.
    pub async fn rotate_kek(
        &self,
        category: &Category,
        passphrase: Option<Passphrase>,
    ) -> Result<u32, VaultError> {
        self.refresh_keyring().await?;
        if !self.catalog().collected_categories().any(|c| c == category) {
            return Err(VaultError::Invalid(format!(
                "category '{category}' is not collected: nothing to rotate"
            )));
        }
        let to = self.reseal_target(passphrase).await?;
        let mut k = self.keyring().duplicate()?;
        let v = k.rotate(category, self.now())?;
        self.store_keyring(k, &to).await?;
        self.key_event(
            "key.rotate",
            vec![category.clone()],
            format!("new version {v}"),
        )
        .await?;
        Ok(v)
    }

    /// DEKs still wrapped under an older version than their category's newest.
    pub async fn rewrap_remaining(&self, category: Option<&Category>) -> Result<u64, VaultError> {
        let k = self.keyring();
        let mut n = 0;
        for info in k.kek_versions() {
            if category.is_some_and(|c| *c != info.category)
                || Some(info.version) == k.newest_version(&info.category)
            {
                continue;
            }
            n += deks::count_at_version(&self.stores().keys, &info.category, info.version).await?;
        }
        Ok(n)
    }

    /// Moves DEKs of older versions onto the newest, `batch` at a time, one transaction each.
    /// Each DEK is updated only if still at the version it was read at, so a crash or a
    /// concurrent rewrap loses nothing; running again continues where it stopped.
    pub async fn rewrap(
        &self,
        category: Option<&Category>,
        batch: u64,
        progress: &mut (dyn FnMut(RewrapProgress) + Send),
    ) -> Result<RewrapProgress, VaultError> {
        self.refresh_keyring().await?;
        let k = self.keyring();
        let mut moved = 0u64;
        let total = self.rewrap_remaining(category).await?;
        let cats: Vec<Category> = k
            .kek_versions()
            .into_iter()
            .map(|i| i.category)
            .filter(|c| category.is_none_or(|x| x == c))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for cat in cats {
            let Some(newest) = k.newest_version(&cat) else {
                continue;
            };
            loop {
                let rows = deks::older_than(
                    &self.stores().keys,
                    &cat,
                    newest,
                    // Bounded so one UPDATE stays under SQLite's 32,766 bound parameters.
                    batch.clamp(1, MAX_REWRAP_BATCH),
                )
                .await?;
                if rows.is_empty() {
                    break;
                }
                // One UPDATE per old version in the batch, each DEK's new wrapping chosen by id.
                // The version filter keeps the compare-and-set: a DEK another rewrap moved
                // meanwhile is left as it is and not counted.
                let mut by_version: BTreeMap<i32, Vec<(String, Vec<u8>)>> = BTreeMap::new();
                for r in &rows {
                    let (record, w) = r.wrapped_as(cat.clone())?;
                    let wrapped =
                        rewrap_dek(&k, self.rng(), record, &w, newest).map_err(|source| {
                            VaultError::DekTampered {
                                record,
                                category: cat.clone(),
                                source,
                            }
                        })?;
                    by_version
                        .entry(r.kek_version)
                        .or_default()
                        .push((r.id.clone(), wrapped));
                }
                moved += deks::rewrap(&self.stores().keys, newest, by_version).await?;
                crate::crash::point("rewrap.batch_committed");
                progress(RewrapProgress {
                    moved,
                    remaining: total.saturating_sub(moved),
                });
            }
        }
        let remaining = self.rewrap_remaining(category).await?;
        self.key_event(
            "key.rewrap",
            category.into_iter().cloned().collect(),
            format!("{moved} keys moved to the newest version; {remaining} left"),
        )
        .await?;
        Ok(RewrapProgress { moved, remaining })
    }

    /// Removes DEKs whose record the data store does not hold: left by a create that died
    /// between its key-store and data-store commits. Only DEKs made more than `older_than` ago
    /// are looked at, so a create still in flight is never touched; a DEK whose record exists
    /// is always kept (an interrupted update's DEK is used again by the next update of its
    /// category). Such DEKs open nothing, so this is tidiness, not secrecy.
    pub async fn collect_orphan_deks(
        &self,
        older_than: chrono::Duration,
        dry_run: bool,
    ) -> Result<OrphanReport, VaultError> {
        if older_than < chrono::Duration::hours(1) {
            return Err(VaultError::Invalid(
                "orphan DEKs must be at least an hour old before they are removed: a create in flight holds its DEKs for a moment before its record".into(),
            ));
        }
        let cutoff = self.now() - older_than;
        let mut report = OrphanReport {
            dry_run,
            ..OrphanReport::default()
        };
        let mut after: Option<String> = None;
        loop {
            let page =
                deks::made_before(&self.stores().keys, cutoff, after.as_deref(), GC_PAGE).await?;
            let Some((last, _)) = page.last() else {
                break;
            };
            after = Some(last.clone());
            report.checked += page.len() as u64;
            let wanted: BTreeSet<&str> = page.iter().map(|(_, r)| r.as_str()).collect();
            // Records in any state count: a shredded record's tombstone is not an orphan's.
            let held = records::existing_ids(&self.stores().data, wanted).await?;
            let orphans: Vec<String> = page
                .iter()
                .filter(|(_, r)| !held.contains(r))
                .map(|(id, _)| id.clone())
                .collect();
            report.orphans += orphans.len() as u64;
            if !dry_run && !orphans.is_empty() {
                deks::delete_made_before(&self.stores().keys, orphans, cutoff).await?;
            }
        }
        if !dry_run {
            self.key_event(
                "key.gc",
                Vec::new(),
                format!(
                    "{} orphan data keys removed of {} older than {} hours",
                    report.orphans,
                    report.checked,
                    older_than.num_hours()
                ),
            )
            .await?;
        }
        Ok(report)
    }

    /// Destroys an old KEK version, only when no DEK refers to it.
    pub async fn retire_kek(
        &self,
        category: &Category,
        version: u32,
        passphrase: Option<Passphrase>,
    ) -> Result<(), VaultError> {
        self.refresh_keyring().await?;
        let users = deks::count_at_version(&self.stores().keys, category, version).await?;
        if users > 0 {
            return Err(VaultError::Invalid(format!(
                "{users} data keys still use version {version} of the {category} key: run `vaultctl keyring rewrap` first"
            )));
        }
        let to = self.reseal_target(passphrase).await?;
        let mut k = self.keyring().duplicate()?;
        k.retire(category, version)?;
        self.store_keyring(k, &to).await?;
        self.key_event(
            "key.retire",
            vec![category.clone()],
            format!("version {version} destroyed"),
        )
        .await
    }

    /// Re-seals the keyring to one more custodian. Only the keyring is re-encrypted.
    pub async fn add_recipient(&self, r: CustodianRecipient) -> Result<(), VaultError> {
        self.refresh_keyring().await?;
        let mut rs = self.recipients().await?;
        if rs.is_empty() {
            return Err(VaultError::Invalid(
                "the keyring is sealed to a passphrase; it cannot also have recipients".into(),
            ));
        }
        if rs.contains(&r) {
            return Err(VaultError::Invalid(format!("{r} is already a recipient")));
        }
        rs.push(r.clone());
        let k = self.keyring().duplicate()?;
        self.store_keyring(k, &SealTo::Recipients(rs)).await?;
        self.key_event("key.recipient_add", Vec::new(), format!("recipient {r}"))
            .await
    }

    /// Re-seals the keyring without one custodian; the last one cannot be removed.
    pub async fn remove_recipient(&self, r: &CustodianRecipient) -> Result<(), VaultError> {
        self.refresh_keyring().await?;
        let rs: Vec<_> = self.recipients().await?;
        if !rs.contains(r) {
            return Err(VaultError::Invalid(format!("{r} is not a recipient")));
        }
        let rest: Vec<_> = rs.into_iter().filter(|x| x != r).collect();
        if rest.is_empty() {
            return Err(VaultError::Invalid(
                "cannot remove the last recipient: add another custodian first".into(),
            ));
        }
        let k = self.keyring().duplicate()?;
        self.store_keyring(k, &SealTo::Recipients(rest)).await?;
        self.key_event("key.recipient_remove", Vec::new(), format!("recipient {r}"))
            .await
    }
}
