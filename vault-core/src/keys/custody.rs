//! The key custodian's operations: rotate a category's KEK, rewrap DEKs onto the newest version
//! in resumable batches (never decrypting field data), retire an old version once nothing uses
//! it, and change the custodians the keyring is sealed to. Every change of the keyring is a
//! compare-and-set on its generation, so two custodians cannot overwrite each other, and running
//! servers load the new generation before their next write.
//!
//! Every generation is signed by the chain key of the one before (`keychain`): a process loads
//! a stored keyring only as the signed successor of the one it holds, never an older one, and
//! refuses anything else loudly (an error log, a `keyring.refused` audit entry, `/readyz` 503),
//! sealing nothing under it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use std::collections::{BTreeMap, BTreeSet};

use crate::audit::chain::{AuditEvent, Outcome};
use crate::domain::Category;
use crate::error::VaultError;
use crate::keys::custodian::{CustodianRecipient, KeyringError, Passphrase, Unlock};
use crate::keys::keychain::{self, ChainProblem, Known};
use crate::keys::keyring::{Keyring, SealTarget, SealTo};
use crate::keys::quorum::{Quorum, QuorumSeal};
use crate::keys::record_keys::rewrap_dek;
use crate::records::vault::Vault;
use crate::store::Stores;
use crate::store::repo::{deks, keyring, records};

use super::open::*;

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

/// One generation of the keyring's chain, as `vaultctl keyring verify` shows it. Public values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainEntry {
    pub generation: i64,
    /// The generation whose chain key signed this one (itself for the genesis).
    pub signed_by: i64,
    /// Hex of the generation's chain public key.
    pub public_key: String,
    /// Hex of the SHA-256 of its sealed keyring.
    pub sealed_sha256: String,
}

/// The whole chain, checked from its genesis, and what the data store pins.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainReport {
    /// The generation the vault holds.
    pub generation: i64,
    /// Oldest first; empty for a keyring made before the chain.
    pub entries: Vec<ChainEntry>,
    /// The data store's pin: (genesis generation, newest generation).
    pub pinned: Option<(i64, i64)>,
}

impl Vault {
    /// The current in-memory keyring.
    pub(crate) fn keyring(&self) -> Arc<Keyring> {
        match self.keyring.read() {
            Ok(k) => k.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    fn tip(&self) -> Tip {
        match self.tip.lock() {
            Ok(t) => t.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The keyring and what is trusted of it, read together.
    fn held(&self) -> (Arc<Keyring>, Tip) {
        let k = match self.keyring.read() {
            Ok(k) => k,
            Err(p) => p.into_inner(),
        };
        (k.clone(), self.tip())
    }

    fn set_refused(&self, value: Option<(i64, Vec<u8>)>) -> bool {
        let mut r = match self.refused.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        let changed = *r != value;
        *r = value;
        changed
    }

    /// Logs and audits a refused keyring (once per distinct stored keyring) and answers the
    /// error every caller gets while it stays.
    async fn refuse(
        &self,
        seen: i64,
        sha: Vec<u8>,
        known: i64,
        problem: ChainProblem,
    ) -> VaultError {
        if self.set_refused(Some((seen, sha))) {
            tracing::error!(
                generation = seen,
                held = known,
                %problem,
                "REFUSED the key store's keyring: it is not chained to the keyring this server holds; writes stop until it is"
            );
            let ev = refusal_event(seen, Some(known), &problem);
            if let Err(e) = self.audit().append(vec![ev]).await {
                tracing::error!(error = %e, "could not record the refusal in the audit log");
            }
        }
        refused(seen, problem)
    }

    /// Loads the stored keyring if a custodian changed it since this one was loaded, and only
    /// if it is the signed successor of this one; anything else (older, unsigned, signed by
    /// another key, other bytes at the same generation) is refused and nothing is sealed under
    /// it. Answers whether a newer keyring was loaded.
    pub async fn refresh_keyring(&self) -> Result<bool, VaultError> {
        let row = keyring::sealed(&self.stores().keys)
            .await?
            .ok_or(VaultError::KeyringMissing)?;
        let sha = keychain::sealed_digest(&row.sealed);
        let tip = self.tip();
        if row.generation == tip.generation && sha == tip.sealed_sha256 {
            if self.set_refused(None) {
                tracing::info!(
                    generation = tip.generation,
                    "the key store holds the keyring this server holds again"
                );
            }
            return Ok(false);
        }
        let links = keyring::chain(&self.stores().keys).await?;
        let pin = keyring::pin(&self.stores().data).await?;
        let known = match &tip.link {
            Some(l) => Known::Signed(l),
            None => Known::Unsigned {
                generation: tip.generation,
            },
        };
        let link = match keychain::judge(&links, pin.as_ref(), row.generation, &sha, known) {
            Ok(Some(l)) => l,
            Ok(None) => {
                let p = ChainProblem::NoLink {
                    generation: row.generation,
                };
                return Err(self.refuse(row.generation, sha, tip.generation, p).await);
            }
            Err(p) => return Err(self.refuse(row.generation, sha, tip.generation, p).await),
        };
        let fresh = match Keyring::unseal(&row.sealed, &self.unlock) {
            Ok(k) => k,
            Err(KeyringError::Unseal(_))
                if keyring::quorum(&self.stores().keys).await?.is_some() =>
            {
                return Err(VaultError::Keyring(KeyringError::QuorumSealed(
                    "the keyring was sealed to a new quorum since this process unsealed it: restart it and unseal it with the new shares (`vaultctl keyring unseal`)",
                )));
            }
            Err(e) => return Err(e.into()),
        };
        if fresh.chain_public_key().as_deref() != Some(link.public_key.as_slice()) {
            let p = ChainProblem::KeyMismatch {
                generation: link.generation,
            };
            return Err(self.refuse(row.generation, sha, tip.generation, p).await);
        }
        let generation = row.generation;
        if !self.install(
            fresh,
            Tip {
                generation,
                sealed_sha256: sha,
                link: Some(link.clone()),
            },
        ) {
            return Ok(false);
        }
        if let Some(genesis) = links.first() {
            pin_tip(self.stores(), genesis, &link, self.now()).await;
        }
        self.set_refused(None);
        tracing::info!(
            generation,
            "loaded a newer keyring, signed by the chain key of generation {}",
            generation - 1
        );
        Ok(true)
    }

    /// Installs `k` unless a newer generation is already installed; answers whether it was.
    fn install(&self, k: Keyring, tip: Tip) -> bool {
        let audit_keys = match crate::audit::chain::AuditKeys::of(&k) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "a keyring with an unusable audit key is not installed");
                return false;
            }
        };
        let mut g = match self.keyring.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let mut t = match self.tip.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        if tip.generation < t.generation {
            return false;
        }
        self.generation.store(tip.generation, Ordering::Release);
        *t = tip;
        *g = Arc::new(k);
        // Still under the keyring's lock: no later keyring's audit key is replaced by this one.
        self.audit().chain().use_keys(audit_keys);
        true
    }

    /// The keyring's chain, checked from its genesis (as every open checks it), and the data
    /// store's pin: what `vaultctl keyring verify` prints. Refuses like a refresh would.
    pub async fn keyring_chain(&self) -> Result<ChainReport, VaultError> {
        self.refresh_keyring().await?;
        let tip = self.tip();
        let links = keyring::chain(&self.stores().keys).await?;
        let pin = keyring::pin(&self.stores().data).await?;
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let entries = links
            .iter()
            .take_while(|l| l.generation <= tip.generation)
            .enumerate()
            .map(|(i, l)| ChainEntry {
                generation: l.generation,
                signed_by: if i == 0 {
                    l.generation
                } else {
                    l.generation - 1
                },
                public_key: hex(&l.public_key),
                sealed_sha256: hex(&l.sealed_sha256),
            })
            .collect();
        Ok(ChainReport {
            generation: tip.generation,
            entries,
            pinned: pin.map(|p| (p.genesis_generation, p.generation)),
        })
    }

    /// The public recipients the keyring is sealed to (empty: sealed to a passphrase).
    pub async fn recipients(&self) -> Result<Vec<CustodianRecipient>, VaultError> {
        keyring::recipients(&self.stores().keys)
            .await?
            .ok_or(VaultError::KeyringMissing)
    }

    /// Seals `k` to `to` and stores it as the next generation, if nobody changed it meanwhile.
    /// `k` gets a fresh chain key; its link is signed by the chain key of the keyring this vault
    /// holds (a keyring made before the chain signs nothing: then the new generation is a new
    /// chain's genesis, signed by itself and pinned in the data store).
    pub(crate) async fn store_keyring(
        &self,
        mut k: Keyring,
        to: &SealTo,
    ) -> Result<(), VaultError> {
        let (held, tip) = self.held();
        k.renew_chain_key()?;
        k.set_sealed_to(to);
        let (Some(own), Some(public)) = (k.chain_signer(), k.chain_public_key()) else {
            return Err(VaultError::Keyring(KeyringError::Corrupt(
                "a renewed keyring has no chain key",
            )));
        };
        let previous = held.chain_signer();
        let sealed = k.seal(to)?;
        let g = tip.generation;
        let link = keychain::sign(previous.as_ref().unwrap_or(&own), g + 1, &sealed, public);
        let r = keyring::replace(&self.stores().keys, g, sealed, to, &link, self.now()).await?;
        if r != 1 {
            return Err(VaultError::Invalid(
                "the keyring changed while this operation ran (another custodian?): run it again"
                    .into(),
            ));
        }
        self.install(
            k,
            Tip {
                generation: g + 1,
                sealed_sha256: link.sealed_sha256.clone(),
                link: Some(link.clone()),
            },
        );
        let genesis = match tip.link {
            Some(_) => keyring::chain(&self.stores().keys)
                .await?
                .into_iter()
                .next()
                .unwrap_or_else(|| link.clone()),
            None => link.clone(),
        };
        pin_tip(self.stores(), &genesis, &link, self.now()).await;
        Ok(())
    }

    /// Stores the same keys again as the next generation, signed: the first time, it gives a
    /// keyring made before the chain its chain key. Answers the new generation.
    pub async fn reseal_keyring(&self, passphrase: Option<Passphrase>) -> Result<i64, VaultError> {
        self.refresh_keyring().await?;
        let to = self.reseal_target(passphrase).await?;
        let k = self.keyring().duplicate()?;
        let was_signed = self.tip().link.is_some();
        self.store_keyring(k, &to).await?;
        let g = self.tip().generation;
        let how = if was_signed {
            format!("signed by the chain key of generation {}", g - 1)
        } else {
            "the first signed generation: a new chain starts here".to_owned()
        };
        self.key_event(
            "key.reseal",
            Vec::new(),
            format!("generation {g}: the same keys, a new chain key, {how}"),
        )
        .await?;
        Ok(g)
    }

    /// Whom to re-seal to: the stored quorum (its shares unchanged), the stored recipients, or
    /// the passphrase the custodian gives.
    pub(crate) async fn reseal_target(
        &self,
        passphrase: Option<Passphrase>,
    ) -> Result<SealTo, VaultError> {
        let stored = keyring::quorum(&self.stores().keys).await?;
        // What the keyring itself says it is sealed to, authenticated by age and the chain:
        // the key store's row and share table are only believed where they agree with it, so
        // an administrator who edits them cannot get the next generation sealed to their key.
        match self.keyring().sealed_to() {
            Some(SealTarget::Quorum {
                threshold,
                key,
                commitments,
            }) => {
                let matches = stored.as_ref().is_some_and(|q| {
                    q.quorum().threshold == *threshold
                        && q.quorum().key.to_string() == *key
                        && q.commitments() == *commitments
                });
                return match stored {
                    Some(q) if matches => Ok(SealTo::Quorum(q)),
                    _ => Err(VaultError::Keyring(KeyringError::QuorumSealed(
                        "the key store's shares are not the ones dealt for this keyring (the keyring_shares table was changed): nothing was sealed. Put the table back from a backup, or deal new shares with `vaultctl keyring reshare`",
                    ))),
                };
            }
            Some(SealTarget::Recipients(rs)) => {
                let rs = rs
                    .iter()
                    .map(|r| CustodianRecipient::parse(r))
                    .collect::<Result<Vec<_>, _>>()?;
                if self.recipients().await.ok().as_ref() != Some(&rs) {
                    tracing::warn!(
                        "the key store's recipient list differs from the one the keyring was sealed to: resealing to the keyring's own list"
                    );
                }
                return Ok(SealTo::Recipients(rs));
            }
            Some(SealTarget::Passphrase) => {
                return match passphrase {
                    Some(p) => Ok(SealTo::Passphrase(p, None)),
                    None => Err(VaultError::Invalid(
                        "the keyring is sealed to a passphrase: give it (--passphrase-file) to re-seal"
                            .into(),
                    )),
                };
            }
            // A keyring saved before it recorded its target, which was never sealed to a
            // quorum (quorums came with the target): share rows are not its own and are
            // ignored; its recipient list is the key store's word, once (docs/THREAT_MODEL.md).
            None => {}
        }
        if stored.is_some() {
            tracing::warn!(
                "the key store holds quorum shares that this keyring was never sealed to: ignored"
            );
        }
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

    pub(crate) async fn key_event(
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

    /// Replaces the audit-signing key. Checkpoints signed before stay verifiable (the old public
    /// key stays in the keyring); from the rotation's own entry on, every checkpoint is signed by
    /// the new key and none by the old one is accepted, so a custodian who left with the old key
    /// cannot sign new history. Answers how many retired audit keys the keyring now keeps.
    pub async fn rotate_audit_key(
        &self,
        passphrase: Option<Passphrase>,
    ) -> Result<usize, VaultError> {
        self.refresh_keyring().await?;
        let to = self.reseal_target(passphrase).await?;
        let mut k = self.keyring().duplicate()?;
        k.rotate_audit_key()?;
        let retired = k.retired_audit_keys().len();
        self.store_keyring(k, &to).await?;
        // The first checkpoint under the new key: from here on the old key signs nothing.
        self.key_event(
            "key.rotate_audit",
            Vec::new(),
            format!("audit-signing key rotated; {retired} retired audit keys kept to verify older checkpoints"),
        )
        .await?;
        Ok(retired)
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

    /// The quorum the keyring is sealed to, if it is sealed M-of-N. Public values.
    pub async fn quorum(&self) -> Result<Option<Quorum>, VaultError> {
        Ok(keyring::quorum(&self.stores().keys)
            .await?
            .map(|q| q.quorum().clone()))
    }

    /// Seals the same keys to a new quorum: a new quorum key, dealt as shares to `custodians`,
    /// any `threshold` of whom unseal it, stored as a new signed generation. The KEKs, the
    /// blind-index key and the audit key are the keyring's own and do not change, so every
    /// record stays readable; the old shares open nothing from this generation on. Also the way
    /// from recipients or a passphrase to a quorum.
    pub async fn reshare(
        &self,
        threshold: u8,
        custodians: &[CustodianRecipient],
    ) -> Result<Quorum, VaultError> {
        self.refresh_keyring().await?;
        let before = keyring::quorum(&self.stores().keys).await?;
        let seal = QuorumSeal::deal(threshold, custodians)?;
        let quorum = seal.quorum().clone();
        let k = self.keyring().duplicate()?;
        self.store_keyring(k, &SealTo::Quorum(seal)).await?;
        let was = match before {
            Some(q) => format!("{} of {}", q.quorum().threshold, q.quorum().holders.len()),
            None => "sealed without a quorum".to_owned(),
        };
        let holders: Vec<String> = quorum
            .holders
            .iter()
            .map(|(x, c)| format!("share {x} to {c}"))
            .collect();
        self.key_event(
            "key.reshare",
            Vec::new(),
            format!(
                "generation {}: the same keys sealed to a new quorum key, {} of {} (was {was}): {}",
                self.tip().generation,
                quorum.threshold,
                quorum.holders.len(),
                holders.join(", ")
            ),
        )
        .await?;
        Ok(quorum)
    }

    /// Refuses a recipient change on a quorum-sealed keyring: a recipient would open it alone.
    async fn refuse_on_quorum(&self) -> Result<(), VaultError> {
        let sealed_to_quorum =
            matches!(self.keyring().sealed_to(), Some(SealTarget::Quorum { .. }));
        if sealed_to_quorum {
            return Err(VaultError::Keyring(KeyringError::QuorumSealed(
                "the keyring is sealed to a quorum of custodians: a single recipient would open it alone. Change the custodians with `vaultctl keyring reshare --threshold M --recipient ...`",
            )));
        }
        Ok(())
    }

    /// Re-seals the keyring to one more custodian. Only the keyring is re-encrypted.
    pub async fn add_recipient(&self, r: CustodianRecipient) -> Result<(), VaultError> {
        self.refresh_keyring().await?;
        self.refuse_on_quorum().await?;
        let mut rs = match self.reseal_target(None).await {
            Ok(SealTo::Recipients(rs)) => rs,
            Ok(_) => Vec::new(),
            Err(VaultError::Invalid(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
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
        self.refuse_on_quorum().await?;
        let rs: Vec<_> = match self.reseal_target(None).await {
            Ok(SealTo::Recipients(rs)) => rs,
            Ok(_) => Vec::new(),
            Err(VaultError::Invalid(_)) => Vec::new(),
            Err(e) => return Err(e),
        };
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

/// How far an unseal ceremony is: how many shares are needed and which were given. Public.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsealProgress {
    pub threshold: u8,
    pub custodians: usize,
    /// The numbers of the shares given so far, lowest first.
    pub given: Vec<u8>,
}

/// A server started on a keyring sealed to a quorum, before it holds M shares: it takes them
/// one by one (`vaultctl keyring unseal`), each checked against its commitment and audited,
/// and opens the vault when it has enough. The shares are kept in memory only, zeroed on drop.
pub struct Unsealer {
    stores: Stores,
    policy: Arc<crate::access::policy::Policy>,
    seal: QuorumSeal,
    given: tokio::sync::Mutex<BTreeMap<u8, crate::keys::quorum::Share>>,
    /// Shares refused so far: the first few are audited one by one, then one in a hundred, so
    /// an unauthenticated flood of bogus shares cannot grow the audit log without bound.
    refused: std::sync::atomic::AtomicU64,
}

/// Refused shares audited one by one before only every hundredth is.
const REFUSALS_AUDITED: u64 = 20;

impl std::fmt::Debug for Unsealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unsealer").finish_non_exhaustive()
    }
}

/// What giving a share came to.
#[derive(Debug)]
pub enum Unsealed {
    /// More shares are needed.
    Waiting(UnsealProgress),
    /// Enough were given: the quorum key is rebuilt; `Unsealer::open` opens the vault with it.
    Complete(QuorumKey),
}

/// The rebuilt quorum key, between the last share and the vault's opening. No Debug of the key.
pub struct QuorumKey {
    unlock: Unlock,
    numbers: Vec<u8>,
}

impl std::fmt::Debug for QuorumKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuorumKey").finish_non_exhaustive()
    }
}

fn ceremony_event(action: &'static str, outcome: Outcome, reason: String) -> AuditEvent {
    let mut ev = AuditEvent::new("custodian", action, outcome);
    ev.reason = Some(reason);
    ev
}

impl Unsealer {
    /// An unsealer for the stored keyring, if it is sealed to a quorum (`None`: it is not, and
    /// opens with an identity or passphrase). Shares that `unlock`'s identities open (a host's
    /// own share, say) count as given.
    pub async fn new(
        stores: Stores,
        policy: Arc<crate::access::policy::Policy>,
        unlock: Option<&Unlock>,
    ) -> Result<Option<Unsealer>, VaultError> {
        let Some(seal) = keyring::quorum(&stores.keys).await? else {
            return Ok(None);
        };
        // What was given opens the keyring itself: no ceremony (share rows an administrator
        // added to a keyring sealed to recipients do not seal the server).
        if let (Some(u), Some(row)) = (unlock, keyring::sealed(&stores.keys).await?)
            && Keyring::unseal(&row.sealed, u).is_ok()
        {
            return Ok(None);
        }
        let mut given = BTreeMap::new();
        if let Some(Unlock::Identities(ids)) = unlock {
            for s in seal.open_with(ids)? {
                given.insert(s.number(), s);
            }
        }
        let u = Unsealer {
            stores,
            policy,
            seal,
            given: tokio::sync::Mutex::new(given),
            refused: std::sync::atomic::AtomicU64::new(0),
        };
        let p = u.progress().await;
        for x in &p.given {
            u.record(ceremony_event(
                "keyring.share_given",
                Outcome::Done,
                format!("share {x} of the quorum ({}) opened by the server's own identity at start; {} of {} given", u.holder(*x), p.given.len(), p.threshold),
            ))
            .await;
        }
        Ok(Some(u))
    }

    fn holder(&self, x: u8) -> String {
        self.seal
            .quorum()
            .holders
            .iter()
            .find(|(n, _)| *n == x)
            .map_or_else(|| "no custodian".to_owned(), |(_, c)| c.to_string())
    }

    /// The quorum the keyring is sealed to.
    pub fn quorum(&self) -> &Quorum {
        self.seal.quorum()
    }

    pub async fn progress(&self) -> UnsealProgress {
        let given = self.given.lock().await;
        UnsealProgress {
            threshold: self.seal.quorum().threshold,
            custodians: self.seal.quorum().holders.len(),
            given: given.keys().copied().collect(),
        }
    }

    /// Records a ceremony step. No audit key is trusted before the keyring opens, so the
    /// entries are chained unsigned; the first signed checkpoint after opening covers them.
    async fn record(&self, ev: AuditEvent) {
        let clock = crate::clock::SystemClock;
        if let Err(e) = crate::audit::chain::append_unsigned(&self.stores.data, &clock, &[ev]).await
        {
            tracing::error!(error = %e, "could not record an unseal step in the audit log");
        }
    }

    /// Takes one custodian's share: refused (and audited) unless it is a share dealt for this
    /// keyring; a share given twice counts once. With the threshold reached, rebuilds the
    /// quorum key and opens the vault.
    pub async fn give(&self, share: crate::keys::quorum::Share) -> Result<Unsealed, VaultError> {
        let mut given = self.given.lock().await;
        let x = share.number();
        if let Err(e) = self.seal.check(&share) {
            drop(given);
            let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(share = x, refused = n, error = %e, "refused a share at unseal");
            if n <= REFUSALS_AUDITED || n.is_multiple_of(100) {
                let more = if n > REFUSALS_AUDITED {
                    format!(" ({n} shares refused since this server started)")
                } else {
                    String::new()
                };
                self.record(ceremony_event(
                    "keyring.share_refused",
                    Outcome::Refused,
                    format!("{e}{more}"),
                ))
                .await;
            }
            return Err(e.into());
        }
        let again = given.insert(x, share).is_some();
        let (n, threshold) = (given.len(), self.seal.quorum().threshold);
        self.record(ceremony_event(
            "keyring.share_given",
            Outcome::Done,
            format!(
                "share {x} of the quorum ({}){}; {n} of {threshold} given",
                self.holder(x),
                if again { ", given again" } else { "" }
            ),
        ))
        .await;
        if n < usize::from(threshold) {
            let given = given.keys().copied().collect();
            return Ok(Unsealed::Waiting(UnsealProgress {
                threshold,
                custodians: self.seal.quorum().holders.len(),
                given,
            }));
        }
        // The shares stay until the vault has opened: an open that fails (a store down, say)
        // is tried again by the next share given, without the ceremony starting over.
        let unlock = match self.seal.combine(given.values()) {
            Ok(u) => u,
            Err(e) => {
                // Every share passed its check, so the stored commitments and key disagree:
                // start again from none rather than keep shares that cannot combine.
                given.clear();
                self.record(ceremony_event(
                    "keyring.unseal",
                    Outcome::Refused,
                    e.to_string(),
                ))
                .await;
                return Err(e.into());
            }
        };
        let numbers = given.keys().copied().collect();
        Ok(Unsealed::Complete(QuorumKey { unlock, numbers }))
    }

    /// Opens the vault with the rebuilt quorum key. Run it on the runtime the vault is to live
    /// on: the vault's writers are tasks of the runtime that opens it.
    pub async fn open(&self, key: QuorumKey) -> Result<Vault, VaultError> {
        let vault = Vault::open(self.stores.clone(), self.policy.clone(), key.unlock).await?;
        self.given.lock().await.clear();
        let numbers: Vec<String> = key.numbers.iter().map(u8::to_string).collect();
        vault
            .key_event(
                "keyring.unseal",
                Vec::new(),
                format!(
                    "the keyring (generation {}) unsealed with shares {} of a {}-of-{} quorum",
                    vault.tip().generation,
                    numbers.join(", "),
                    self.seal.quorum().threshold,
                    self.seal.quorum().holders.len()
                ),
            )
            .await?;
        Ok(vault)
    }
}

/// The shares of the stored quorum that `unlock`'s identities open, checked, with the quorum:
/// what a custodian's `vaultctl keyring unseal` decrypts on their own machine and gives to a
/// sealed server. Errors when the keyring is not sealed to a quorum or no share opens.
pub async fn custodian_shares(
    stores: &Stores,
    unlock: &Unlock,
) -> Result<(Quorum, Vec<crate::keys::quorum::Share>), VaultError> {
    let seal = keyring::quorum(&stores.keys).await?.ok_or_else(|| {
        VaultError::Invalid(
            "the keyring is not sealed to a quorum of custodians: there is no share to give".into(),
        )
    })?;
    let Unlock::Identities(ids) = unlock else {
        return Err(VaultError::Invalid(
            "a share is sealed to a custodian's identity: give --identity FILE".into(),
        ));
    };
    let shares = seal.open_with(ids)?;
    if shares.is_empty() {
        let holders: Vec<String> = seal
            .quorum()
            .holders
            .iter()
            .map(|(_, c)| c.to_string())
            .collect();
        return Err(VaultError::Invalid(format!(
            "none of the shares is sealed to the identity given; they are sealed to {}",
            holders.join(", ")
        )));
    }
    Ok((seal.quorum().clone(), shares))
}
