//! The data store's subjects: school, kind, the IIN's blind index, and the dates that matter.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::domain::{SchoolId, SubjectId, SubjectKind};
use crate::store::codec::corrupt;
use crate::store::entities::subject;
use crate::store::{Db, StoreError};
use crate::vault::{Subject, VaultError};

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

/// Whether a school already has a subject with this IIN index.
pub(crate) async fn iin_taken(
    db: &Db,
    iin_index: &[u8],
    school: &SchoolId,
) -> Result<bool, StoreError> {
    Ok(subject::Entity::find()
        .filter(subject::Column::IinIndex.eq(iin_index.to_vec()))
        .filter(subject::Column::SchoolId.eq(school.as_str()))
        .one(db)
        .await
        .map_err(StoreError::data)?
        .is_some())
}

/// Stores a new subject with its IIN index.
pub(crate) async fn insert(
    db: &Db,
    s: &Subject,
    iin_index: Option<Vec<u8>>,
) -> Result<(), StoreError> {
    subject::Entity::insert(subject::ActiveModel {
        id: Set(s.id.to_string()),
        school_id: Set(s.school.as_str().to_owned()),
        kind: Set(s.kind.as_str().to_owned()),
        iin_index: Set(iin_index),
        created_at: Set(s.created_at),
        left_at: Set(s.left_at),
        blocked_at: Set(None),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// Every subject with this IIN index, oldest first.
pub(crate) async fn by_iin(db: &Db, iin_index: Vec<u8>) -> Result<Vec<Subject>, VaultError> {
    subject::Entity::find()
        .filter(subject::Column::IinIndex.eq(iin_index))
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
