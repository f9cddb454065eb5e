//! The key store's wrapped DEKs: one per (record, category), wrapped under a KEK version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, TransactionTrait,
};

use crate::domain::{Category, DekId, RecordId};
use crate::error::VaultError;
use crate::keys::envelope::WrappedDek;
use crate::store::codec::corrupt;
use crate::store::entities::dek;
use crate::store::{Db, DbErr, StoreError, Txn};

/// A stored DEK row.
pub(crate) type DekRow = dek::Model;

/// The rows of newly made DEKs of one record.
pub(super) fn rows(
    record: RecordId,
    deks: &[WrappedDek],
    now: DateTime<Utc>,
) -> Vec<dek::ActiveModel> {
    deks.iter()
        .map(|d| dek::ActiveModel {
            id: Set(d.id.to_string()),
            record_id: Set(record.to_string()),
            category: Set(d.category.as_str().to_owned()),
            kek_version: Set(d.kek_version as i32),
            wrapped: Set(d.wrapped.clone()),
            created_at: Set(now),
        })
        .collect()
}

/// The ids of DEK rows about to be inserted.
pub(super) fn ids(rows: &[dek::ActiveModel]) -> Vec<String> {
    rows.iter()
        .filter_map(|d| match &d.id {
            Set(id) => Some(id.clone()),
            _ => None,
        })
        .collect()
}

impl DekRow {
    /// The DEK's category, if it parses.
    pub(crate) fn category(&self) -> Option<Category> {
        Category::parse(&self.category).ok()
    }

    /// The row as a wrapped DEK, with its record.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn into_wrapped(self) -> Result<(RecordId, WrappedDek), VaultError> {
        let id = corrupt(RecordId::parse(&self.record_id), "record id")?;
        let w = WrappedDek {
            id: corrupt(DekId::parse(&self.id), "DEK id")?,
            category: corrupt(Category::parse(&self.category), "category")?,
            kek_version: self.kek_version as u32,
            wrapped: self.wrapped,
        };
        Ok((id, w))
    }

    /// The row as a wrapped DEK of `category`, with its record: for a rewrap, which reads the
    /// DEKs of one category.
    pub(crate) fn wrapped_as(
        &self,
        category: Category,
    ) -> Result<(RecordId, WrappedDek), VaultError> {
        let record =
            RecordId::parse(&self.record_id).map_err(|_| VaultError::CorruptRow("record id"))?;
        let w = WrappedDek {
            id: DekId::parse(&self.id).map_err(|_| VaultError::CorruptRow("DEK id"))?,
            category,
            kek_version: u32::try_from(self.kek_version)
                .map_err(|_| VaultError::CorruptRow("KEK version"))?,
            wrapped: self.wrapped.clone(),
        };
        Ok((record, w))
    }
}

/// Stores newly made DEKs of a record in one key-store transaction.
pub(crate) async fn insert(
    db: &Db,
    record: RecordId,
    deks: &[WrappedDek],
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let rows = rows(record, deks, now);
    let txn = db.begin().await.map_err(StoreError::keys)?;
    dek::Entity::insert_many(rows)
        .exec_without_returning(&txn)
        .await
        .map_err(StoreError::keys)?;
    txn.commit().await.map_err(StoreError::keys)?;
    Ok(())
}

/// Inserts DEK rows inside a key-store transaction, in bounded statements.
pub(super) async fn insert_rows(txn: &Txn, rows: Vec<dek::ActiveModel>) -> Result<(), DbErr> {
    super::insert_chunks(txn, rows).await
}

/// Removes DEKs by id; answers the driver's error, for the caller to log.
pub(crate) async fn delete_ids(db: &Db, ids: Vec<String>) -> Result<u64, DbErr> {
    Ok(dek::Entity::delete_many()
        .filter(dek::Column::Id.is_in(ids))
        .exec(db)
        .await?
        .rows_affected)
}

/// A record's DEKs.
pub(crate) async fn of_record(db: &Db, record: RecordId) -> Result<Vec<DekRow>, StoreError> {
    dek::Entity::find()
        .filter(dek::Column::RecordId.eq(record.to_string()))
        .all(db)
        .await
        .map_err(StoreError::keys)
}

/// Destroys a record's DEKs; answers how many.
pub(crate) async fn delete_of_record(db: &Db, record: RecordId) -> Result<u64, StoreError> {
    Ok(dek::Entity::delete_many()
        .filter(dek::Column::RecordId.eq(record.to_string()))
        .exec(db)
        .await
        .map_err(StoreError::keys)?
        .rows_affected)
}

/// How many DEKs the key store holds for a record.
pub(crate) async fn count_of_record(db: &Db, record: RecordId) -> Result<u64, StoreError> {
    dek::Entity::find()
        .filter(dek::Column::RecordId.eq(record.to_string()))
        .count(db)
        .await
        .map_err(StoreError::keys)
}

/// A record's DEKs of the given categories, as wrapped DEKs.
pub(crate) async fn wrapped_of(
    db: &Db,
    record: RecordId,
    categories: Vec<&str>,
) -> Result<Vec<WrappedDek>, VaultError> {
    dek::Entity::find()
        .filter(dek::Column::RecordId.eq(record.to_string()))
        .filter(dek::Column::Category.is_in(categories))
        .all(db)
        .await
        .map_err(StoreError::keys)?
        .into_iter()
        .map(|r| {
            Ok(WrappedDek {
                id: corrupt(DekId::parse(&r.id), "DEK id")?,
                category: corrupt(Category::parse(&r.category), "DEK category")?,
                kek_version: u32::try_from(r.kek_version)
                    .map_err(|_| VaultError::CorruptRow("KEK version"))?,
                wrapped: r.wrapped,
            })
        })
        .collect()
}

/// Every DEK, for the tests that scan the stores for leaked key bytes.
#[cfg(feature = "test-hooks")]
pub(crate) async fn all(db: &Db) -> Result<Vec<DekRow>, StoreError> {
    dek::Entity::find().all(db).await.map_err(StoreError::keys)
}

/// (category, KEK version, DEKs) for every version in use.
pub(crate) async fn count_by_version(db: &Db) -> Result<Vec<(String, i32, i64)>, StoreError> {
    dek::Entity::find()
        .select_only()
        .column(dek::Column::Category)
        .column(dek::Column::KekVersion)
        .column_as(dek::Column::Id.count(), "n")
        .group_by(dek::Column::Category)
        .group_by(dek::Column::KekVersion)
        .into_tuple::<(String, i32, i64)>()
        .all(db)
        .await
        .map_err(StoreError::keys)
}

/// How many DEKs of a category are wrapped under one KEK version.
pub(crate) async fn count_at_version(
    db: &Db,
    category: &Category,
    version: u32,
) -> Result<u64, StoreError> {
    dek::Entity::find()
        .filter(dek::Column::Category.eq(category.as_str()))
        .filter(dek::Column::KekVersion.eq(version as i32))
        .count(db)
        .await
        .map_err(StoreError::keys)
}

/// Up to `limit` DEKs of a category wrapped under a version older than `newest`.
pub(crate) async fn older_than(
    db: &Db,
    category: &Category,
    newest: u32,
    limit: u64,
) -> Result<Vec<DekRow>, StoreError> {
    // No ORDER BY: the (category, version) index hands out the next batch without
    // sorting every DEK still to move, so each batch costs the same.
    dek::Entity::find()
        .filter(dek::Column::Category.eq(category.as_str()))
        .filter(dek::Column::KekVersion.lt(newest as i32))
        .limit(limit)
        .all(db)
        .await
        .map_err(StoreError::keys)
}

/// Writes new wrappings in one key-store transaction: for each old version, (id, wrapping)
/// pairs moved onto `newest`. Answers how many DEKs moved.
pub(crate) async fn rewrap(
    db: &Db,
    newest: u32,
    by_version: BTreeMap<i32, Vec<(String, Vec<u8>)>>,
) -> Result<u64, StoreError> {
    let mut moved = 0;
    let txn = db.begin().await.map_err(StoreError::keys)?;
    for (old, batch) in by_version {
        moved += rewrap_rows(&txn, newest as i32, old, batch)
            .await
            .map_err(StoreError::keys)?;
    }
    txn.commit().await.map_err(StoreError::keys)?;
    Ok(moved)
}

/// Writes a batch of new wrappings in one statement: the new values are joined in by id from a
/// VALUES list, and only rows still at `old` change, which keeps the compare-and-set against
/// a concurrent rewrap. The same SQL runs on SQLite (3.33+) and PostgreSQL.
async fn rewrap_rows(
    txn: &Txn,
    newest: i32,
    old: i32,
    rows: Vec<(String, Vec<u8>)>,
) -> Result<u64, DbErr> {
    let backend = txn.get_database_backend();
    let mut n = 0usize;
    let mut param = || {
        n += 1;
        match backend {
            DbBackend::Postgres => format!("${n}"),
            _ => "?".to_owned(),
        }
    };
    let tuples: Vec<String> = rows
        .iter()
        .map(|_| format!("({}, {})", param(), param()))
        .collect();
    let sql = format!(
        "WITH v(id, wrapped) AS (VALUES {}) \
         UPDATE deks SET wrapped = v.wrapped, kek_version = {} \
         FROM v WHERE deks.id = v.id AND deks.kek_version = {}",
        tuples.join(", "),
        param(),
        param()
    );
    let mut values: Vec<sea_orm::Value> = Vec::with_capacity(rows.len() * 2 + 2);
    for (id, wrapped) in rows {
        values.push(id.into());
        values.push(wrapped.into());
    }
    values.push(newest.into());
    values.push(old.into());
    Ok(txn
        .execute_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?
        .rows_affected())
}

/// A page of (DEK id, record id) of DEKs made before `cutoff`, in id order after `after`.
pub(crate) async fn made_before(
    db: &Db,
    cutoff: DateTime<Utc>,
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut q = dek::Entity::find()
        .select_only()
        .column(dek::Column::Id)
        .column(dek::Column::RecordId)
        .filter(dek::Column::CreatedAt.lt(cutoff))
        .order_by_asc(dek::Column::Id)
        .limit(limit);
    if let Some(a) = after {
        q = q.filter(dek::Column::Id.gt(a.to_owned()));
    }
    q.into_tuple().all(db).await.map_err(StoreError::keys)
}

/// Removes the given DEKs, each only if made before `cutoff`.
pub(crate) async fn delete_made_before(
    db: &Db,
    ids: Vec<String>,
    cutoff: DateTime<Utc>,
) -> Result<(), StoreError> {
    dek::Entity::delete_many()
        .filter(dek::Column::Id.is_in(ids))
        .filter(dek::Column::CreatedAt.lt(cutoff))
        .exec(db)
        .await
        .map_err(StoreError::keys)?;
    Ok(())
}

/// Destroys DEKs of a chunk of records in one key-store transaction: for each group, the DEKs
/// of its records in its categories. Answers the (record, category) pairs held before.
pub(crate) async fn destroy_groups(
    db: &Db,
    ids: Vec<String>,
    groups: &BTreeMap<&std::collections::BTreeSet<String>, Vec<String>>,
) -> Result<Vec<(String, String)>, StoreError> {
    let txn = db.begin().await.map_err(StoreError::keys)?;
    // It reads before it deletes: a writer from the start (see `keyring::lock_for_write`).
    super::keyring::lock_for_write(&txn)
        .await
        .map_err(StoreError::keys)?;
    let held: Vec<(String, String)> = dek::Entity::find()
        .select_only()
        .column(dek::Column::RecordId)
        .column(dek::Column::Category)
        .filter(dek::Column::RecordId.is_in(ids))
        .into_tuple()
        .all(&txn)
        .await
        .map_err(StoreError::keys)?;
    for (cats, rids) in groups {
        dek::Entity::delete_many()
            .filter(dek::Column::RecordId.is_in(rids.iter().cloned()))
            .filter(dek::Column::Category.is_in(cats.iter().cloned()))
            .exec(&txn)
            .await
            .map_err(StoreError::keys)?;
    }
    txn.commit().await.map_err(StoreError::keys)?;
    Ok(held)
}

/// Destroys a record's DEKs of the given categories, inside a restore's transaction.
pub(crate) async fn delete_of_record_in(
    txn: &Txn,
    record: &str,
    categories: Vec<String>,
) -> Result<(), StoreError> {
    dek::Entity::delete_many()
        .filter(dek::Column::RecordId.eq(record.to_owned()))
        .filter(dek::Column::Category.is_in(categories))
        .exec(txn)
        .await
        .map_err(StoreError::keys)?;
    Ok(())
}
