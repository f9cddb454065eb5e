//! Every row of every table, for backup and restore: one JSON line per row, `{"t": table,
//! "row": model}`, read in one snapshot per store and replaced in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

use sea_orm::{
    AccessMode, ConnectionTrait, EntityTrait, IntoActiveModel, IsolationLevel, TransactionTrait,
};
use serde::{Deserialize, Serialize};

use crate::error::VaultError;
use crate::store::entities::*;
use crate::store::{Db, StoreError, Txn};

#[derive(Serialize, Deserialize)]
struct Line {
    t: String,
    row: serde_json::Value,
}

/// A backup file that does not encode or decode: the same error the rest of a backup gives.
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
        $m!(keyring_pin, "keyring_pin");
    };
    ($m:ident, audit) => {
        $m!(audit_entry, "audit_log");
        $m!(audit_head, "audit_head");
        $m!(audit_checkpoint, "audit_checkpoints");
    };
    ($m:ident, keys) => {
        $m!(keyring_row, "keyring");
        $m!(keyring_link, "keyring_chain");
        $m!(keyring_share, "keyring_shares");
        $m!(dek, "deks");
    };
}

async fn snapshot(db: &Db) -> Result<Txn, VaultError> {
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

/// Every row of one store (the key store with `keys`) as JSON lines, read in one snapshot;
/// counts the rows of each table into `rows`.
pub(crate) async fn dump(
    db: &Db,
    keys: bool,
    rows: &mut BTreeMap<String, u64>,
    progress: Progress<'_>,
) -> Result<Vec<u8>, VaultError> {
    dump_part(
        db,
        if keys { Part::Keys } else { Part::Data },
        rows,
        progress,
    )
    .await
}

/// Told the table just copied and the rows copied so far, counted by the caller's closure.
pub(crate) type Progress<'a> = &'a mut (dyn FnMut(&'static str, u64) + Send);

/// Which tables a dump reads.
enum Part {
    Data,
    Keys,
    Audit,
}

async fn dump_part(
    db: &Db,
    part: Part,
    rows: &mut BTreeMap<String, u64>,
    progress: Progress<'_>,
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
            progress($name, all.len() as u64);
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
    match part {
        Part::Keys => {
            tables!(dump_one, keys);
        }
        Part::Data => {
            tables!(dump_one, data);
        }
        Part::Audit => {
            tables!(dump_one, audit);
        }
    }
    txn.commit().await.map_err(StoreError::data)?;
    Ok(out)
}

/// The audit tables of the data store as JSON lines, read in one snapshot: what a restore
/// that replaces the log archives first.
pub(crate) async fn dump_audit(db: &Db) -> Result<Vec<u8>, VaultError> {
    dump_part(db, Part::Audit, &mut BTreeMap::new(), &mut |_, _| {}).await
}

/// The audit tables, which a restore keeps from the live store when the live log continues the
/// backup's: the entries made since the backup are evidence, not state to roll back.
pub(crate) const AUDIT_TABLES: &[&str] = &["audit_log", "audit_head", "audit_checkpoints"];

/// Replaces every row of one store (the key store with `keys`) inside `txn` with the JSON
/// lines of `plain`, except the tables named in `keep`, which stay as they are; answers how
/// many rows it inserted.
pub(crate) async fn load(
    txn: &Txn,
    plain: &[u8],
    keys: bool,
    keep: &[&str],
    progress: Progress<'_>,
) -> Result<u64, VaultError> {
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
    names.retain(|t| !keep.contains(t));
    for t in keep {
        by_table.remove(*t);
    }
    for t in names.iter().rev() {
        txn.execute_unprepared(&format!("DELETE FROM {t}"))
            .await
            .map_err(StoreError::data)?;
    }
    macro_rules! load_one {
        ($e:ident, $name:literal) => {{
            let rows = if keep.contains(&$name) {
                Vec::new()
            } else {
                by_table.remove($name).unwrap_or_default()
            };
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
                progress($name, chunk.len() as u64);
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

/// The head of the audit chain in a data-store backup: (sequence, hash), `None` for an empty
/// log.
pub(crate) fn backed_up_audit_head(data: &[u8]) -> Option<(i64, Vec<u8>)> {
    data.lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Line>(&l).ok())
        .filter(|l| l.t == "audit_head")
        .filter_map(|l| serde_json::from_value::<audit_head::Model>(l.row).ok())
        .map(|h| (h.seq, h.hash))
        .find(|(seq, _)| *seq > 0)
}

/// The (record, categories) of every shred in the shred log of a data-store backup; lines that
/// do not parse are skipped.
pub(crate) fn backed_up_shreds(data: &[u8]) -> BTreeSet<(String, String)> {
    data.lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Line>(&l).ok())
        .filter(|l| l.t == "shred_log")
        .filter_map(|l| serde_json::from_value::<shred_log::Model>(l.row).ok())
        .map(|s| (s.record_id, s.categories))
        .collect()
}
