//! The data store's subjects: school, kind, the IIN's blind index, and the dates that matter.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Condition;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use crate::domain::{SchoolId, SubjectId, SubjectKind};
use crate::error::VaultError;
use crate::records::vault::Subject;
use crate::store::codec::corrupt;
use crate::store::entities::subject;
use crate::store::{Db, StoreError};

/// A stored subject row.
pub(crate) type SubjectRow = subject::Model;

/// A subject row as the domain knows it.
pub(crate) fn decode(r: SubjectRow) -> Result<Subject, VaultError> {
    Ok(Subject {
        id: corrupt(SubjectId::parse(&r.id), "subject id")?,
        school: corrupt(SchoolId::parse(&r.school_id), "school id")?,
        kind: corrupt(SubjectKind::parse(&r.kind), "subject kind")?,
        created_at: r.created_at,
        left_at: r.left_at,
        blocked: r.blocked_at.is_some(),
    })
}

/// A subject by id.
pub(crate) async fn get(db: &Db, id: SubjectId) -> Result<Option<Subject>, VaultError> {
    subject::Entity::find_by_id(id.to_string())
        .one(db)
        .await
        .map_err(StoreError::data)?
        .map(decode)
        .transpose()
}

/// Whether a school already has a subject with one of these IIN indexes (during a blind-index
/// rotation, the IIN's index under each key).
pub(crate) async fn iin_taken(
    db: &Db,
    iin_indexes: Vec<Vec<u8>>,
    school: &SchoolId,
) -> Result<bool, StoreError> {
    Ok(subject::Entity::find()
        .filter(subject::Column::IinIndex.is_in(iin_indexes))
        .filter(subject::Column::SchoolId.eq(school.as_str()))
        .one(db)
        .await
        .map_err(StoreError::data)?
        .is_some())
}

/// Stores a new subject with its IIN index and the identifier of the key it is under.
pub(crate) async fn insert(
    db: &Db,
    s: &Subject,
    iin_index: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<(), StoreError> {
    let (iin_index, iin_key) = iin_index.unzip();
    subject::Entity::insert(subject::ActiveModel {
        id: Set(s.id.to_string()),
        school_id: Set(s.school.as_str().to_owned()),
        kind: Set(s.kind.as_str().to_owned()),
        iin_index: Set(iin_index),
        iin_key: Set(iin_key),
        created_at: Set(s.created_at),
        left_at: Set(s.left_at),
        blocked_at: Set(None),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// Every subject with one of these IIN indexes, oldest first.
pub(crate) async fn by_iin(db: &Db, iin_indexes: Vec<Vec<u8>>) -> Result<Vec<Subject>, VaultError> {
    subject::Entity::find()
        .filter(subject::Column::IinIndex.is_in(iin_indexes))
        .order_by_asc(subject::Column::CreatedAt)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .map(decode)
        .collect()
}

/// One subject with this IIN index.
pub(crate) async fn one_by_iin(db: &Db, iin_index: Vec<u8>) -> Result<Option<Subject>, VaultError> {
    subject::Entity::find()
        .filter(subject::Column::IinIndex.eq(iin_index))
        .one(db)
        .await
        .map_err(StoreError::data)?
        .map(decode)
        .transpose()
}

/// Blocks a subject since `at`, or unblocks it with `None`.
pub(crate) async fn set_blocked(
    db: &Db,
    id: SubjectId,
    at: Option<DateTime<Utc>>,
) -> Result<(), StoreError> {
    subject::Entity::update_many()
        .col_expr(subject::Column::BlockedAt, Expr::value(at))
        .filter(subject::Column::Id.eq(id.to_string()))
        .exec(db)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Records when a subject left the school.
pub(crate) async fn set_left(db: &Db, id: SubjectId, at: DateTime<Utc>) -> Result<(), StoreError> {
    subject::Entity::update_many()
        .col_expr(subject::Column::LeftAt, Expr::value(at))
        .filter(subject::Column::Id.eq(id.to_string()))
        .exec(db)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Subjects with an IIN index not yet under the key `key_id` names, after `after` in id order:
/// their ids and indexes, at most `limit`.
pub(crate) async fn not_under_key(
    db: &Db,
    key_id: &[u8],
    after: Option<&str>,
    limit: u64,
) -> Result<Vec<(SubjectId, Vec<u8>)>, VaultError> {
    let mut q = subject::Entity::find().filter(not_under(key_id));
    if let Some(a) = after {
        q = q.filter(subject::Column::Id.gt(a));
    }
    q.order_by_asc(subject::Column::Id)
        .limit(limit)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .filter_map(|r| r.iin_index.clone().map(|ix| (r.id, ix)))
        .map(|(id, ix)| Ok((corrupt(SubjectId::parse(&id), "subject id")?, ix)))
        .collect()
}

/// How many subjects have an IIN index not yet under the key `key_id` names.
pub(crate) async fn count_not_under_key(db: &Db, key_id: &[u8]) -> Result<u64, StoreError> {
    subject::Entity::find()
        .filter(not_under(key_id))
        .count(db)
        .await
        .map_err(StoreError::data)
}

fn not_under(key_id: &[u8]) -> Condition {
    Condition::all()
        .add(subject::Column::IinIndex.is_not_null())
        .add(
            Condition::any()
                .add(subject::Column::IinKey.is_null())
                .add(subject::Column::IinKey.ne(key_id.to_vec())),
        )
}

/// Moves subjects' IIN indexes onto a new key in one transaction: `(id, old index, new index)`,
/// each only if it still holds the old index, so a crash or a second run loses nothing. Answers
/// how many moved.
pub(crate) async fn reindex(
    db: &Db,
    moves: Vec<(SubjectId, Vec<u8>, Vec<u8>)>,
    key_id: &[u8],
) -> Result<u64, StoreError> {
    let txn = db.begin().await.map_err(StoreError::data)?;
    let mut moved = 0;
    for (id, old, new) in moves {
        moved += subject::Entity::update_many()
            .col_expr(subject::Column::IinIndex, Expr::value(new))
            .col_expr(subject::Column::IinKey, Expr::value(key_id.to_vec()))
            .filter(subject::Column::Id.eq(id.to_string()))
            .filter(subject::Column::IinIndex.eq(old))
            .exec(&txn)
            .await
            .map_err(StoreError::data)?
            .rows_affected;
    }
    txn.commit().await.map_err(StoreError::data)?;
    Ok(moved)
}
