//! The data store's break-glass accesses: opened for a medical emergency, reviewed afterwards.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::access::model::{BreakGlass, BreakGlassId, PrincipalId};
use crate::domain::{SchoolId, SubjectId};
use crate::error::VaultError;
use crate::store::codec::corrupt;
use crate::store::entities::break_glass;
use crate::store::{Db, StoreError};

fn decode(m: break_glass::Model) -> Result<BreakGlass, VaultError> {
    Ok(BreakGlass {
        id: corrupt(BreakGlassId::parse(&m.id), "break-glass id")?,
        principal: corrupt(PrincipalId::parse(&m.principal), "principal id")?,
        school: corrupt(SchoolId::parse(&m.school_id), "school id")?,
        subject: corrupt(SubjectId::parse(&m.subject_id), "subject id")?,
        justification: m.justification,
        opened_at: m.opened_at,
        expires_at: m.expires_at,
        reviewed_by: m
            .reviewed_by
            .as_deref()
            .map(PrincipalId::parse)
            .transpose()
            .map_err(|_| VaultError::CorruptRow("principal id"))?,
        reviewed_at: m.reviewed_at,
        review_note: m.review_note,
    })
}

/// Stores a newly opened break-glass access.
pub(crate) async fn insert(db: &Db, b: &BreakGlass) -> Result<(), StoreError> {
    break_glass::Entity::insert(break_glass::ActiveModel {
        id: Set(b.id.to_string()),
        principal: Set(b.principal.to_string()),
        school_id: Set(b.school.as_str().to_owned()),
        subject_id: Set(b.subject.to_string()),
        justification: Set(b.justification.clone()),
        opened_at: Set(b.opened_at),
        expires_at: Set(b.expires_at),
        reviewed_by: Set(b.reviewed_by.map(|p| p.to_string())),
        reviewed_at: Set(b.reviewed_at),
        review_note: Set(b.review_note.clone()),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// A break-glass access by id.
pub(crate) async fn get(db: &Db, id: BreakGlassId) -> Result<Option<BreakGlass>, VaultError> {
    break_glass::Entity::find_by_id(id.to_string())
        .one(db)
        .await
        .map_err(StoreError::data)?
        .map(decode)
        .transpose()
}

/// A break-glass access of this principal to this subject open at `now`.
pub(crate) async fn open_at(
    db: &Db,
    principal: PrincipalId,
    subject: SubjectId,
    now: DateTime<Utc>,
) -> Result<Option<BreakGlassId>, VaultError> {
    let row = break_glass::Entity::find()
        .filter(break_glass::Column::Principal.eq(principal.to_string()))
        .filter(break_glass::Column::SubjectId.eq(subject.to_string()))
        .filter(break_glass::Column::OpenedAt.lte(now))
        .filter(break_glass::Column::ExpiresAt.gt(now))
        .one(db)
        .await
        .map_err(StoreError::data)?;
    row.map(|r| corrupt(BreakGlassId::parse(&r.id), "break-glass id"))
        .transpose()
}

/// Records a director's review.
pub(crate) async fn review(
    db: &Db,
    id: BreakGlassId,
    by: PrincipalId,
    at: DateTime<Utc>,
    note: String,
) -> Result<(), StoreError> {
    break_glass::Entity::update_many()
        .col_expr(break_glass::Column::ReviewedBy, Expr::value(by.to_string()))
        .col_expr(break_glass::Column::ReviewedAt, Expr::value(at))
        .col_expr(break_glass::Column::ReviewNote, Expr::value(note))
        .filter(break_glass::Column::Id.eq(id.to_string()))
        .exec(db)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Unreviewed break-glass accesses opened before `cutoff`, oldest first.
pub(crate) async fn unreviewed_before(
    db: &Db,
    cutoff: DateTime<Utc>,
) -> Result<Vec<BreakGlass>, VaultError> {
    break_glass::Entity::find()
        .filter(break_glass::Column::ReviewedAt.is_null())
        .filter(break_glass::Column::OpenedAt.lt(cutoff))
        .order_by_asc(break_glass::Column::OpenedAt)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .map(decode)
        .collect()
}
