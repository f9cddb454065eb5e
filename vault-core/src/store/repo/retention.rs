//! The data store's legal holds and its shred log: every shred, so a restore of an older backup
//! re-applies it.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder,
};

use crate::domain::{Category, RecordId, SubjectId};
use crate::error::VaultError;
use crate::records::retention::LegalHold;
use crate::store::codec::{categories_list, split_list};
use crate::store::entities::{legal_hold, shred_log};
use crate::store::{Db, DbErr, StoreError, Txn};

/// A stored shred log row.
pub(crate) type ShredRow = shred_log::Model;

impl ShredRow {
    /// The names of the categories shredded, as stored.
    pub(crate) fn category_names(&self) -> Vec<String> {
        split_list(&self.categories)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn decode_hold(m: legal_hold::Model) -> Result<LegalHold, VaultError> {
    Ok(LegalHold {
        subject: SubjectId::parse(&m.subject_id)
            .map_err(|_| VaultError::CorruptRow("subject id"))?,
        record: m
            .record_id
            .as_deref()
            .map(RecordId::parse)
            .transpose()
            .map_err(|_| VaultError::CorruptRow("record id"))?,
        id: m.id,
        reason: m.reason,
        placed_by: m.placed_by,
        placed_at: m.placed_at,
        released_at: m.released_at,
        release_reason: m.release_reason,
    })
}

/// Stores a new hold.
pub(crate) async fn insert_hold(db: &Db, h: &LegalHold) -> Result<(), StoreError> {
    legal_hold::Entity::insert(legal_hold::ActiveModel {
        id: Set(h.id.clone()),
        subject_id: Set(h.subject.to_string()),
        record_id: Set(h.record.map(|r| r.to_string())),
        reason: Set(h.reason.clone()),
        placed_by: Set(h.placed_by.clone()),
        placed_at: Set(h.placed_at),
        released_at: Set(h.released_at),
        release_reason: Set(h.release_reason.clone()),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// A hold by id.
pub(crate) async fn hold(db: &Db, id: &str) -> Result<Option<LegalHold>, VaultError> {
    legal_hold::Entity::find_by_id(id.to_owned())
        .one(db)
        .await
        .map_err(StoreError::data)?
        .map(decode_hold)
        .transpose()
}

/// Records a hold's release.
pub(crate) async fn release_hold(
    db: &Db,
    id: &str,
    at: DateTime<Utc>,
    reason: &str,
) -> Result<(), StoreError> {
    legal_hold::Entity::update_many()
        .col_expr(legal_hold::Column::ReleasedAt, Expr::value(at))
        .col_expr(legal_hold::Column::ReleaseReason, Expr::value(reason))
        .filter(legal_hold::Column::Id.eq(id))
        .exec(db)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Every hold, in the order placed.
pub(crate) async fn holds(db: &Db) -> Result<Vec<LegalHold>, VaultError> {
    legal_hold::Entity::find()
        .order_by_asc(legal_hold::Column::PlacedAt)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .map(decode_hold)
        .collect()
}

/// One shred for the log: the record, the categories shredded, the rule, when.
pub(crate) struct Shred {
    pub record: String,
    pub categories: Vec<Category>,
    pub rule: String,
    pub at: DateTime<Utc>,
}

fn shred_row(s: Shred) -> shred_log::ActiveModel {
    shred_log::ActiveModel {
        record_id: Set(s.record),
        categories: Set(categories_list(&s.categories)),
        rule: Set(s.rule),
        at: Set(s.at),
        ..Default::default()
    }
}

/// Appends one shred to the log.
pub(crate) async fn log_shred(txn: &Txn, s: Shred) -> Result<(), StoreError> {
    shred_log::Entity::insert(shred_row(s))
        .exec_without_returning(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Appends shreds to the log in one statement.
pub(crate) async fn log_shreds(txn: &Txn, shreds: Vec<Shred>) -> Result<(), StoreError> {
    shred_log::Entity::insert_many(shreds.into_iter().map(shred_row))
        .exec_without_returning(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// The shred log: (record, categories, rule, when), oldest first.
pub(crate) async fn shred_log(
    db: &Db,
) -> Result<Vec<(RecordId, Vec<Category>, String, DateTime<Utc>)>, VaultError> {
    shred_log::Entity::find()
        .order_by_asc(shred_log::Column::Seq)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .map(|m| {
            Ok((
                RecordId::parse(&m.record_id).map_err(|_| VaultError::CorruptRow("record id"))?,
                split_list(&m.categories)
                    .filter_map(|c| Category::parse(c).ok())
                    .collect(),
                m.rule,
                m.at,
            ))
        })
        .collect()
}

/// Every row of the live shred log, in no particular order; the driver's error for the caller
/// to explain.
pub(crate) async fn live_shreds(db: &Db) -> Result<Vec<ShredRow>, DbErr> {
    shred_log::Entity::find().all(db).await
}

/// Appends a shred replayed from the live log over a restored backup, under a new seq.
pub(crate) async fn replay_shred(txn: &Txn, s: &ShredRow) -> Result<(), StoreError> {
    let mut am = s.clone().into_active_model();
    am.seq = sea_orm::ActiveValue::NotSet;
    shred_log::Entity::insert(am)
        .exec_without_returning(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}
