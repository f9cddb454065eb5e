//! Backup and restore of both stores. A backup is a folder: `data.jsonl.age` and
//! `keys.jsonl.age` (every row of every table, one JSON line each, read in one snapshot per
//! store and encrypted to the custodians' age recipients) and `manifest.json` (when, row counts).
//! Backing up needs no unseal: only the recipients' public keys.
//!
//! Restore replaces every row with the backup's, then re-applies every shred in the live shred
//! log that the backup does not know of, so data destroyed after the backup was taken stays
//! destroyed (Law 94-V Art. 1(6)).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::keys::custodian::{CustodianRecipient, Passphrase, Unlock};
use crate::keys::quorum::QuorumSeal;
use crate::store::repo::carry;
pub use crate::store::repo::carry::CarriedOver;
use crate::store::repo::retention::ShredRow;
use crate::store::repo::{deks, keyring, records, retention, tables};
use crate::store::{StoreError, Stores};

/// What a backup holds, written beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupManifest {
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub format: u32,
    pub rows: BTreeMap<String, u64>,
}

impl BackupManifest {
    /// Reads `manifest.json`: a format this vault writes, and row counts that add up without
    /// overflowing (the file is input like any other: a custodian may be handed a forged one).
    pub fn parse(bytes: &[u8]) -> Result<Self, VaultError> {
        let m: BackupManifest = serde_json::from_slice(bytes)
            .map_err(|e| io(format!("manifest.json is not a backup manifest: {e}")))?;
        if m.format != 1 {
            return Err(io(format!(
                "manifest.json is format {}, this vault reads format 1",
                m.format
            )));
        }
        m.expected_rows()?;
        Ok(m)
    }

    /// The rows the backup's two files must hold together.
    pub fn expected_rows(&self) -> Result<u64, VaultError> {
        self.rows
            .values()
            .try_fold(0u64, |a, n| a.checked_add(*n))
            .ok_or_else(|| io("manifest.json counts more rows than can exist: it is damaged"))
    }
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    pub rows: u64,
    /// Shreds from the live shred log re-applied over the older backup.
    pub shreds_replayed: u64,
    /// Today's revocations, blocks, withdrawals and approval states written over the backup's.
    pub carried_over: CarriedOver,
    pub audit: RestoredAudit,
}

/// What became of the audit log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoredAudit {
    /// The live log continues the backup's, so it was kept whole: the entries made since the
    /// backup (`since_backup` of them) are still there.
    Kept { since_backup: i64 },
    /// The live log was empty (a restore onto new stores): the backup's log was loaded.
    Loaded,
    /// The live log did not continue the backup's and `replace_audit_log` was given: entries
    /// `first..=last` of the live log are gone from the store, which the restore's own entry
    /// names; they were written first to `archive` (an age file sealed like a backup).
    Replaced {
        first: i64,
        last: i64,
        archive: std::path::PathBuf,
    },
}

/// How a restore treats what it would remove.
#[derive(Clone, Debug, Default)]
pub struct RestoreOptions {
    /// Replace a live audit log that does not continue the backup's (its entries leave the
    /// store, and the restore's entry names the range); without it, such a restore is refused.
    pub replace_audit_log: bool,
    /// Where the live audit log is written, sealed like a backup, before it is replaced: the
    /// evidence is kept, never only dropped. Needed with `replace_audit_log` when the restore
    /// replaces the log; a file that exists is not overwritten.
    pub audit_archive: Option<std::path::PathBuf>,
}

/// The quorum's shares, beside the sealed stores of a backup of a quorum-sealed vault.
const SHARES_FILE: &str = "shares.json";

fn io(e: impl std::fmt::Display) -> VaultError {
    VaultError::Invalid(format!("backup: {e}"))
}

fn seal(
    plain: &[u8],
    to: &[CustodianRecipient],
    passphrase: Option<&Passphrase>,
) -> Result<Vec<u8>, VaultError> {
    let enc = match passphrase {
        Some(p) => {
            let r = p.scrypt_recipient();
            age::Encryptor::with_recipients(std::iter::once(&r as &dyn age::Recipient))
                .map_err(io)?
        }
        None => age::Encryptor::with_recipients(to.iter().map(|r| r.as_age())).map_err(io)?,
    };
    let mut out = Vec::new();
    let mut w = enc.wrap_output(&mut out).map_err(io)?;
    w.write_all(plain)
        .and_then(|_| w.finish().map(|_| ()))
        .map_err(io)?;
    Ok(out)
}

/// How far a backup or a restore has got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CopyProgress {
    /// The table last copied (a backup) or written to (a restore).
    pub table: &'static str,
    /// Rows copied so far.
    pub rows: u64,
    /// Rows in all, when known: a restore knows from the manifest, a backup does not.
    pub total: Option<u64>,
}

/// Turns the stores' per-table counts into a running `CopyProgress` for `progress`.
fn running_count<'a>(
    progress: &'a mut (dyn FnMut(CopyProgress) + Send),
    total: Option<u64>,
) -> impl FnMut(&'static str, u64) + Send + 'a {
    let mut rows = 0u64;
    move |table, n| {
        rows += n;
        progress(CopyProgress { table, rows, total });
    }
}

/// Writes a consistent backup of both stores into `dir` (created; must not exist).
pub async fn backup(
    stores: &Stores,
    dir: &Path,
    passphrase: Option<&Passphrase>,
) -> Result<BackupManifest, VaultError> {
    backup_reporting(stores, dir, passphrase, &mut |_| {}).await
}

/// `backup`, telling `progress` after each table.
pub async fn backup_reporting(
    stores: &Stores,
    dir: &Path,
    passphrase: Option<&Passphrase>,
    progress: &mut (dyn FnMut(CopyProgress) + Send),
) -> Result<BackupManifest, VaultError> {
    let recipients: Vec<CustodianRecipient> = keyring::recipients(&stores.keys)
        .await?
        .ok_or(VaultError::KeyringMissing)?;
    if recipients.is_empty() && passphrase.is_none() {
        return Err(VaultError::Invalid(
            "the keyring is sealed to a passphrase: give it to encrypt the backup".into(),
        ));
    }
    std::fs::create_dir(dir).map_err(|e| {
        io(format!(
            "cannot create {} (it must not exist yet): {e}",
            dir.display()
        ))
    })?;
    // A quorum-sealed keyring's backup is sealed to the quorum key its shares rebuild (not to
    // the row's recipients column), and the shares go beside it.
    let quorum = keyring::quorum(&stores.keys).await?;
    let recipients = match &quorum {
        Some(q) => {
            std::fs::write(dir.join(SHARES_FILE), q.to_file()?).map_err(io)?;
            vec![q.quorum().key.clone()]
        }
        None => recipients,
    };
    let mut rows = BTreeMap::new();
    let mut tell = running_count(progress, None);
    let data = tables::dump(&stores.data, false, &mut rows, &mut tell).await?;
    let keys = tables::dump(&stores.keys, true, &mut rows, &mut tell).await?;
    for (name, plain) in [("data.jsonl.age", data), ("keys.jsonl.age", keys)] {
        let sealed = seal(&plain, &recipients, passphrase)?;
        let mut f = std::fs::File::create(dir.join(name)).map_err(io)?;
        f.write_all(&sealed)
            .and_then(|_| f.sync_all())
            .map_err(io)?;
        crate::crash::point(&format!("backup.{name}"));
    }
    let manifest = BackupManifest {
        created_at: chrono::Utc::now(),
        format: 1,
        rows,
    };
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest).map_err(io)?,
    )
    .map_err(io)?;
    Ok(manifest)
}

fn open_file(dir: &Path, name: &str, unlock: &Unlock) -> Result<Vec<u8>, VaultError> {
    let sealed = std::fs::read(dir.join(name))
        .map_err(|e| io(format!("cannot read {}: {e}", dir.join(name).display())))?;
    let dec = age::Decryptor::new_buffered(&sealed[..]).map_err(io)?;
    let mut r = match unlock {
        Unlock::Identities(ids) => {
            dec.decrypt(ids.iter().map(|i| i.as_ref() as &dyn age::Identity))
        }
        Unlock::Passphrase(p) => {
            let id = p.scrypt_identity();
            dec.decrypt(std::iter::once(&id as &dyn age::Identity))
        }
    }
    .map_err(|e| io(format!("{name} does not open with this identity: {e}")))?;
    let mut out = Vec::new();
    r.read_to_end(&mut out).map_err(io)?;
    Ok(out)
}

/// Writes the live audit log (entries, head, checkpoints: JSON lines as in a backup) to `path`,
/// sealed to whom a backup is sealed to (the keyring's recipients or quorum key, or the
/// passphrase that unseals it), before a restore replaces it.
async fn archive_audit(stores: &Stores, path: &Path, unlock: &Unlock) -> Result<(), VaultError> {
    let plain = tables::dump_audit(&stores.data).await?;
    let sealed = match unlock {
        Unlock::Passphrase(p) => seal(&plain, &[], Some(p))?,
        Unlock::Identities(_) => {
            let to = match keyring::quorum(&stores.keys).await? {
                Some(q) => vec![q.quorum().key.clone()],
                None => keyring::recipients(&stores.keys)
                    .await?
                    .ok_or(VaultError::KeyringMissing)?,
            };
            seal(&plain, &to, None)?
        }
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| {
            io(format!(
                "cannot create the audit archive {} (it must not exist yet): {e}; nothing was restored",
                path.display()
            ))
        })?;
    f.write_all(&sealed)
        .and_then(|_| f.sync_all())
        .map_err(|e| io(format!("writing the audit archive {}: {e}", path.display())))?;
    Ok(())
}

/// The live shred log. Stores are migrated when opened, so the table is always there: a read
/// that fails is a failure, never "nothing to replay", or a restore would silently bring back
/// data that was destroyed after the backup.
async fn live_shreds(stores: &Stores) -> Result<Vec<ShredRow>, VaultError> {
    retention::live_shreds(&stores.data)
        .await
        .map_err(|e| {
            io(format!(
                "cannot read the live shred log, so the shreds made after the backup could not be re-applied; nothing was restored: {e}"
            ))
        })
}

/// Restores both stores from a backup folder, then re-applies every shred of the live shred log
/// made after the backup. Each store is replaced, and its part of the replay applied, in one
/// transaction: the key store first, the data store (which holds the live shred log) last. A
/// crash before the data store commits leaves that log in place, so running again completes.
///
/// Today's security state is kept: tokens revoked, subjects blocked, consents withdrawn and
/// approvals spent or revoked since the backup stay so; the live audit log is kept when it
/// continues the backup's, and a restore that would cut entries from it is refused unless
/// `opts.replace_audit_log` (see `RestoredAudit`).
pub async fn restore(
    stores: &Stores,
    dir: &Path,
    unlock: &Unlock,
) -> Result<RestoreReport, VaultError> {
    restore_with(stores, dir, unlock, RestoreOptions::default()).await
}

/// `restore`, with options.
pub async fn restore_with(
    stores: &Stores,
    dir: &Path,
    unlock: &Unlock,
    opts: RestoreOptions,
) -> Result<RestoreReport, VaultError> {
    restore_reporting(stores, dir, unlock, opts, &mut |_| {}).await
}

/// `restore_with`, telling `progress` after each batch of rows written.
pub async fn restore_reporting(
    stores: &Stores,
    dir: &Path,
    unlock: &Unlock,
    opts: RestoreOptions,
    progress: &mut (dyn FnMut(CopyProgress) + Send),
) -> Result<RestoreReport, VaultError> {
    let manifest: BackupManifest = std::fs::read(dir.join("manifest.json"))
        .map_err(|_| {
            io(format!(
                "{} is not a complete backup: manifest.json is missing",
                dir.display()
            ))
        })
        .and_then(|b| BackupManifest::parse(&b))?;
    let quorum_unlock = match std::fs::read(dir.join(SHARES_FILE)) {
        Ok(b) => Some(QuorumSeal::from_file(&b)?.unlock_with(unlock)?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(io(format!("cannot read {SHARES_FILE}: {e}"))),
    };
    let unlock = quorum_unlock.as_ref().unwrap_or(unlock);
    let data = open_file(dir, "data.jsonl.age", unlock)?;
    let keys = open_file(dir, "keys.jsonl.age", unlock)?;
    let expected = manifest.expected_rows()?;
    let lines = data.lines().count() as u64 + keys.lines().count() as u64;
    if lines != expected {
        return Err(io(format!(
            "the backup holds {lines} rows but its manifest says {expected}: it is damaged"
        )));
    }
    let security = carry::read_live(&stores.data).await.map_err(|e| {
        io(format!(
            "cannot read today's revocations, blocks and withdrawals, so they could not be kept; nothing was restored: {e}"
        ))
    })?;
    let backup_head = tables::backed_up_audit_head(&data);
    let backup_seq = backup_head.as_ref().map_or(0, |h| h.0);
    let (live_newest, live_hash) =
        carry::audit_tail(&stores.data, backup_head.as_ref().map(|h| h.0)).await?;
    // The key store's anchor names the newest entry the live log has had: an emptied log is
    // not "new stores" when the anchor names entries beyond the backup.
    let anchored = crate::store::repo::audit_anchor::get(&stores.keys)
        .await
        .map_err(StoreError::keys)?
        .map_or(0, |a| a.seq);
    let continues = backup_head
        .as_ref()
        .is_none_or(|(_, hash)| live_hash.as_deref() == Some(hash.as_slice()));
    let audit = if live_newest == 0 && anchored <= backup_seq {
        RestoredAudit::Loaded
    } else if live_newest > 0 && continues {
        RestoredAudit::Kept {
            since_backup: live_newest - backup_seq,
        }
    } else {
        let last = live_newest.max(anchored);
        let why = if live_newest == 0 {
            format!(
                "the live audit log is empty, but the key store's anchor names entry {anchored}"
            )
        } else {
            format!(
                "the live audit log ({live_newest} entries) does not continue the backup's (entry {backup_seq} differs or is missing)"
            )
        };
        if !opts.replace_audit_log {
            return Err(io(format!(
                "{why}, so restoring would leave entries 1 to {last} out; nothing was restored. Run `vaultctl audit verify` to see what was changed, then run again with --replace-audit-log --audit-archive FILE: the live log is written to FILE first, and the restore's own entry names the range removed"
            )));
        }
        let Some(archive) = opts.audit_archive.clone() else {
            return Err(io(format!(
                "{why}: --replace-audit-log needs --audit-archive FILE, where the live log is written (sealed like a backup) before it is replaced; nothing was restored"
            )));
        };
        archive_audit(stores, &archive, unlock).await?;
        // Entries the backup shares with the live log cannot be told apart here: report the
        // whole live log as replaced, which is what the restore does to it.
        RestoredAudit::Replaced {
            first: 1,
            last,
            archive,
        }
    };
    let keep: &[&str] = match audit {
        RestoredAudit::Kept { .. } => tables::AUDIT_TABLES,
        _ => &[],
    };
    let live = live_shreds(stores).await?;
    // Which live shreds the backup already knows of.
    let backed_up: BTreeSet<(String, String)> = tables::backed_up_shreds(&data);
    let replay: Vec<ShredRow> = live
        .into_iter()
        .filter(|s| !backed_up.contains(&(s.record_id.clone(), s.categories.clone())))
        .collect();

    let mut tell = running_count(progress, Some(expected));
    let txn = crate::store::begin(&stores.keys)
        .await
        .map_err(StoreError::keys)?;
    let mut rows = tables::load(&txn, &keys, true, &[], &mut tell).await?;
    // The audit log goes back to the backup's: its anchor, which named the live log's head, is
    // forgotten, and the restore's own entry anchors the restored chain.
    if !matches!(audit, RestoredAudit::Kept { .. }) {
        crate::store::repo::audit_anchor::clear_in(&txn)
            .await
            .map_err(StoreError::keys)?;
    }
    for s in &replay {
        deks::delete_of_record_in(&txn, &s.record_id, s.category_names()).await?;
    }
    txn.commit().await.map_err(StoreError::keys)?;
    crate::crash::point("restore.keys_committed");

    let txn = crate::store::begin(&stores.data)
        .await
        .map_err(StoreError::data)?;
    rows += tables::load(&txn, &data, false, keep, &mut tell).await?;
    crate::crash::point("restore.data_loaded");
    for s in &replay {
        records::delete_field_categories(&txn, &s.record_id, s.category_names()).await?;
        let left = records::count_fields(&txn, &s.record_id).await?;
        if left == 0 {
            records::set_shredded(&txn, &s.record_id).await?;
        }
        retention::replay_shred(&txn, s).await?;
    }
    let carried_over = carry::reapply(&txn, &security)
        .await
        .map_err(StoreError::data)?;
    txn.commit().await.map_err(StoreError::data)?;
    Ok(RestoreReport {
        rows,
        shreds_replayed: replay.len() as u64,
        carried_over,
        audit,
    })
}

#[cfg(test)]
mod tests {
    use super::BackupManifest;

    #[test]
    fn a_forged_manifest_is_an_error_not_a_crash() {
        let max = u64::MAX;
        let overflow = format!(
            r#"{{"created_at":"2026-11-27T10:00:00Z","format":1,"rows":{{"a":{max},"b":{max}}}}}"#
        );
        assert!(BackupManifest::parse(overflow.as_bytes()).is_err());
        let future = r#"{"created_at":"2026-11-27T10:00:00Z","format":2,"rows":{}}"#;
        let err = BackupManifest::parse(future.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("format 2"), "{err}");
        let good = r#"{"created_at":"2026-11-27T10:00:00Z","format":1,"rows":{"a":2,"b":3}}"#;
        assert_eq!(
            BackupManifest::parse(good.as_bytes())
                .unwrap()
                .expected_rows()
                .unwrap(),
            5
        );
    }
}
