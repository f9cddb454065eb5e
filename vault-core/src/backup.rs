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

use sea_orm::{
    AccessMode, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    IntoActiveModel, IsolationLevel, PaginatorTrait, QueryFilter, TransactionTrait,
};
use serde::{Deserialize, Serialize};

use crate::keyring::{CustodianRecipient, Passphrase, Unlock};
use crate::store::entities::*;
use crate::store::{StoreError, Stores};
use crate::vault::{KEYRING_ROW, VaultError};

/// What a backup holds, written beside it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupManifest {
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub format: u32,
    pub rows: BTreeMap<String, u64>,
}

/// What a restore did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestoreReport {
    pub rows: u64,
    /// Shreds from the live shred log re-applied over the older backup.
    pub shreds_replayed: u64,
}

#[derive(Serialize, Deserialize)]
struct Line {
    t: String,
    row: serde_json::Value,
}

fn io(e: impl std::fmt::Display) -> VaultError {
    VaultError::Invalid(format!("backup: {e}"))
}

/// Tables in insertion order (parents first); deletion runs the other way.
macro_rules! tables {
    ($m:ident, data) => {
        $m!(subject, "subjects");
        $m!(record, "records");
        $m!(record_field, "record_fields");
        $m!(principal, "principals");
        $m!(principal_role, "principal_roles");
        $m!(consent, "consents");
        $m!(legal_ground, "legal_grounds");
        $m!(access_request, "access_requests");
        $m!(break_glass, "break_glass");
        $m!(audit_entry, "audit_log");
        $m!(audit_head, "audit_head");
        $m!(audit_checkpoint, "audit_checkpoints");
        $m!(legal_hold, "legal_holds");
        $m!(shred_log, "shred_log");
        $m!(disclosure, "disclosures");
        $m!(transfer_ground, "transfer_grounds");
    };
    ($m:ident, keys) => {
        $m!(keyring_row, "keyring");
        $m!(dek, "deks");
    };
}

async fn snapshot(db: &DatabaseConnection) -> Result<DatabaseTransaction, VaultError> {
    let isolation = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => Some(IsolationLevel::RepeatableRead),
        _ => None,
    };
    let mode = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => Some(AccessMode::ReadOnly),
        _ => None,
    };
    db.begin_with_config(isolation, mode)
        .await
        .map_err(StoreError::data)
        .map_err(Into::into)
}

async fn dump(
    db: &DatabaseConnection,
    keys: bool,
    rows: &mut BTreeMap<String, u64>,
) -> Result<Vec<u8>, VaultError> {
    let txn = snapshot(db).await?;
    let mut out = Vec::new();
    macro_rules! dump_one {
        ($e:ident, $name:literal) => {{
            let all = $e::Entity::find()
                .all(&txn)
                .await
                .map_err(StoreError::data)?;
            rows.insert($name.to_owned(), all.len() as u64);
            for m in all {
                let line = Line {
                    t: $name.to_owned(),
                    row: serde_json::to_value(&m).map_err(io)?,
                };
                serde_json::to_writer(&mut out, &line).map_err(io)?;
                out.push(b'\n');
            }
        }};
    }
    if keys {
        tables!(dump_one, keys);
    } else {
        tables!(dump_one, data);
    }
    txn.commit().await.map_err(StoreError::data)?;
    Ok(out)
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

/// Writes a consistent backup of both stores into `dir` (created; must not exist).
pub async fn backup(
    stores: &Stores,
    dir: &Path,
    passphrase: Option<&Passphrase>,
) -> Result<BackupManifest, VaultError> {
    let row = keyring_row::Entity::find_by_id(KEYRING_ROW)
        .one(&stores.keys)
        .await
        .map_err(StoreError::keys)?
        .ok_or(VaultError::KeyringMissing)?;
    let recipients: Vec<CustodianRecipient> = row
        .recipients
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(CustodianRecipient::parse)
        .collect::<Result<_, _>>()?;
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
    let mut rows = BTreeMap::new();
    let data = dump(&stores.data, false, &mut rows).await?;
    let keys = dump(&stores.keys, true, &mut rows).await?;
    for (name, plain) in [("data.jsonl.age", data), ("keys.jsonl.age", keys)] {
        let sealed = seal(&plain, &recipients, passphrase)?;
        let mut f = std::fs::File::create(dir.join(name)).map_err(io)?;
        f.write_all(&sealed)
            .and_then(|_| f.sync_all())
            .map_err(io)?;
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

/// The live shred log. Stores are migrated when opened, so the table is always there: a read
/// that fails is a failure, never "nothing to replay", or a restore would silently bring back
/// data that was destroyed after the backup.
async fn live_shreds(stores: &Stores) -> Result<Vec<shred_log::Model>, VaultError> {
    shred_log::Entity::find()
        .all(&stores.data)
        .await
        .map_err(|e| {
            io(format!(
                "cannot read the live shred log, so the shreds made after the backup could not be re-applied; nothing was restored: {e}"
            ))
        })
}

async fn load(txn: &DatabaseTransaction, plain: &[u8], keys: bool) -> Result<u64, VaultError> {
    let mut by_table: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for line in plain.lines() {
        let line = line.map_err(io)?;
        if line.is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).map_err(io)?;
        by_table.entry(l.t).or_default().push(l.row);
    }
    let mut n = 0u64;
    // Children first on delete.
    let mut names = Vec::new();
    macro_rules! name {
        ($e:ident, $name:literal) => {
            names.push($name);
        };
    }
    if keys {
        tables!(name, keys);
    } else {
        tables!(name, data);
    }
    for t in names.iter().rev() {
        txn.execute_unprepared(&format!("DELETE FROM {t}"))
            .await
            .map_err(StoreError::data)?;
    }
    macro_rules! load_one {
        ($e:ident, $name:literal) => {{
            let rows = by_table.remove($name).unwrap_or_default();
            let models: Vec<$e::ActiveModel> = rows
                .into_iter()
                .map(|v| {
                    serde_json::from_value::<$e::Model>(v).map(IntoActiveModel::into_active_model)
                })
                .collect::<Result<_, _>>()
                .map_err(io)?;
            n += models.len() as u64;
            for chunk in models.chunks(200) {
                $e::Entity::insert_many(chunk.to_vec())
                    .exec_without_returning(txn)
                    .await
                    .map_err(StoreError::data)?;
            }
        }};
    }
    if keys {
        tables!(load_one, keys);
    } else {
        tables!(load_one, data);
    }
    if let Some(t) = by_table.keys().next() {
        return Err(io(format!(
            "the backup has a table this vault does not know: {t}"
        )));
    }
    Ok(n)
}

/// Restores both stores from a backup folder, then re-applies every shred of the live shred log
/// made after the backup. Each store is replaced, and its part of the replay applied, in one
/// transaction: the key store first, the data store (which holds the live shred log) last. A
/// crash before the data store commits leaves that log in place, so running again completes.
pub async fn restore(
    stores: &Stores,
    dir: &Path,
    unlock: &Unlock,
) -> Result<RestoreReport, VaultError> {
    let manifest: BackupManifest = std::fs::read(dir.join("manifest.json"))
        .map_err(|_| {
            io(format!(
                "{} is not a complete backup: manifest.json is missing",
                dir.display()
            ))
        })
        .and_then(|b| serde_json::from_slice(&b).map_err(io))?;
    let data = open_file(dir, "data.jsonl.age", unlock)?;
    let keys = open_file(dir, "keys.jsonl.age", unlock)?;
    let expected: u64 = manifest.rows.values().sum();
    let lines = data.lines().count() as u64 + keys.lines().count() as u64;
    if lines != expected {
        return Err(io(format!(
            "the backup holds {lines} rows but its manifest says {expected}: it is damaged"
        )));
    }
    let live = live_shreds(stores).await?;
    // Which live shreds the backup already knows of.
    let backed_up: BTreeSet<(String, String)> = data
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Line>(&l).ok())
        .filter(|l| l.t == "shred_log")
        .filter_map(|l| serde_json::from_value::<shred_log::Model>(l.row).ok())
        .map(|s| (s.record_id, s.categories))
        .collect();
    let replay: Vec<shred_log::Model> = live
        .into_iter()
        .filter(|s| !backed_up.contains(&(s.record_id.clone(), s.categories.clone())))
        .collect();
    let cats = |s: &shred_log::Model| -> Vec<String> {
        s.categories
            .split(',')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };

    let txn = stores.keys.begin().await.map_err(StoreError::keys)?;
    let mut rows = load(&txn, &keys, true).await?;
    for s in &replay {
        dek::Entity::delete_many()
            .filter(dek::Column::RecordId.eq(s.record_id.clone()))
            .filter(dek::Column::Category.is_in(cats(s)))
            .exec(&txn)
            .await
            .map_err(StoreError::keys)?;
    }
    txn.commit().await.map_err(StoreError::keys)?;

    let txn = stores.data.begin().await.map_err(StoreError::data)?;
    rows += load(&txn, &data, false).await?;
    for s in &replay {
        record_field::Entity::delete_many()
            .filter(record_field::Column::RecordId.eq(s.record_id.clone()))
            .filter(record_field::Column::Category.is_in(cats(s)))
            .exec(&txn)
            .await
            .map_err(StoreError::data)?;
        let left = record_field::Entity::find()
            .filter(record_field::Column::RecordId.eq(s.record_id.clone()))
            .count(&txn)
            .await
            .map_err(StoreError::data)?;
        if left == 0 {
            record::Entity::update_many()
                .col_expr(
                    record::Column::State,
                    sea_orm::sea_query::Expr::value("shredded"),
                )
                .filter(record::Column::Id.eq(s.record_id.clone()))
                .exec(&txn)
                .await
                .map_err(StoreError::data)?;
        }
        let mut am = s.clone().into_active_model();
        am.seq = sea_orm::ActiveValue::NotSet;
        shred_log::Entity::insert(am)
            .exec_without_returning(&txn)
            .await
            .map_err(StoreError::data)?;
    }
    txn.commit().await.map_err(StoreError::data)?;
    Ok(RestoreReport {
        rows,
        shreds_replayed: replay.len() as u64,
    })
}
