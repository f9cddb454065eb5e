//! The data store's access requests: asked, then approved (with an expiry and a number of uses),
//! denied or revoked. The status column holds `RequestStatus::as_str`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::access::model::{AccessRequest, PrincipalId, RequestId, RequestStatus};
use crate::access::policy::ApprovalAct;
use crate::domain::{Category, Purpose, RecordId, SchoolId, SubjectId};
use crate::error::VaultError;
use crate::store::codec::{categories_list, corrupt, parse_categories};
use crate::store::entities::access_request;
use crate::store::{Db, StoreError};

/// A stored access request row.
pub(crate) type RequestRow = access_request::Model;

const STATUSES: [RequestStatus; 4] = [
    RequestStatus::Pending,
    RequestStatus::Approved,
    RequestStatus::Denied,
    RequestStatus::Revoked,
];

fn status(s: &str) -> Result<RequestStatus, VaultError> {
    STATUSES
        .into_iter()
        .find(|x| x.as_str() == s)
        .ok_or(VaultError::CorruptRow("request status"))
}

impl RequestRow {
    pub(crate) fn request_id(&self) -> Result<RequestId, VaultError> {
        corrupt(RequestId::parse(&self.id), "request id")
    }

    pub(crate) fn categories(&self) -> Result<Vec<Category>, VaultError> {
        parse_categories(&self.categories)
    }
}

fn decode(m: RequestRow) -> Result<AccessRequest, VaultError> {
    Ok(AccessRequest {
        id: corrupt(RequestId::parse(&m.id), "request id")?,
        requester: corrupt(PrincipalId::parse(&m.requester), "principal id")?,
        school: corrupt(SchoolId::parse(&m.school_id), "school id")?,
        subject: corrupt(SubjectId::parse(&m.subject_id), "subject id")?,
        record: m
            .record_id
            .as_deref()
            .map(RecordId::parse)
            .transpose()
            .map_err(|_| VaultError::CorruptRow("record id"))?,
        categories: parse_categories(&m.categories)?,
        purpose: corrupt(Purpose::parse(&m.purpose), "purpose")?,
        act: ApprovalAct::parse(&m.action).map_err(|_| VaultError::CorruptRow("approval act"))?,
        justification: m.justification,
        status: status(&m.status)?,
        created_at: m.created_at,
        decided_by: m
            .decided_by
            .as_deref()
            .map(PrincipalId::parse)
            .transpose()
            .map_err(|_| VaultError::CorruptRow("principal id"))?,
        decided_at: m.decided_at,
        reason: m.reason,
        expires_at: m.expires_at,
        uses_left: m.uses_left.map(|u| u32::try_from(u).unwrap_or(0)),
    })
}

/// Stores a new request.
pub(crate) async fn insert(db: &Db, r: &AccessRequest) -> Result<(), StoreError> {
    access_request::Entity::insert(access_request::ActiveModel {
        id: Set(r.id.to_string()),
        requester: Set(r.requester.to_string()),
        school_id: Set(r.school.as_str().to_owned()),
        subject_id: Set(r.subject.to_string()),
        record_id: Set(r.record.map(|r| r.to_string())),
        categories: Set(categories_list(&r.categories)),
        purpose: Set(r.purpose.as_str().to_owned()),
        action: Set(r.act.as_str().to_owned()),
        justification: Set(r.justification.clone()),
        status: Set(r.status.as_str().into()),
        created_at: Set(r.created_at),
        decided_by: Set(r.decided_by.map(|p| p.to_string())),
        decided_at: Set(r.decided_at),
        reason: Set(r.reason.clone()),
        expires_at: Set(r.expires_at),
        uses_left: Set(r.uses_left.map(|u| u as i32)),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::data)?;
    Ok(())
}

/// A request by id.
pub(crate) async fn get(db: &Db, id: RequestId) -> Result<Option<AccessRequest>, VaultError> {
    access_request::Entity::find_by_id(id.to_string())
        .one(db)
        .await
        .map_err(StoreError::data)?
        .map(decode)
        .transpose()
}

/// Every pending request, oldest first.
pub(crate) async fn pending(db: &Db) -> Result<Vec<AccessRequest>, VaultError> {
    access_request::Entity::find()
        .filter(access_request::Column::Status.eq(RequestStatus::Pending.as_str()))
        .order_by_asc(access_request::Column::CreatedAt)
        .all(db)
        .await
        .map_err(StoreError::data)?
        .into_iter()
        .map(decode)
        .collect()
}

/// Approves a request still pending; answers the rows changed.
pub(crate) async fn approve(
    db: &Db,
    id: RequestId,
    by: PrincipalId,
    at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    uses: u32,
) -> Result<u64, StoreError> {
    Ok(access_request::Entity::update_many()
        .col_expr(
            access_request::Column::Status,
            Expr::value(RequestStatus::Approved.as_str()),
        )
        .col_expr(
            access_request::Column::DecidedBy,
            Expr::value(by.to_string()),
        )
        .col_expr(access_request::Column::DecidedAt, Expr::value(at))
        .col_expr(access_request::Column::ExpiresAt, Expr::value(expires_at))
        .col_expr(access_request::Column::UsesLeft, Expr::value(uses as i32))
        .filter(access_request::Column::Id.eq(id.to_string()))
        .filter(access_request::Column::Status.eq(RequestStatus::Pending.as_str()))
        .exec(db)
        .await
        .map_err(StoreError::data)?
        .rows_affected)
}

/// Denies a request still pending, with a reason.
pub(crate) async fn deny(
    db: &Db,
    id: RequestId,
    by: PrincipalId,
    at: DateTime<Utc>,
    reason: String,
) -> Result<(), StoreError> {
    access_request::Entity::update_many()
        .col_expr(
            access_request::Column::Status,
            Expr::value(RequestStatus::Denied.as_str()),
        )
        .col_expr(
            access_request::Column::DecidedBy,
            Expr::value(by.to_string()),
        )
        .col_expr(access_request::Column::DecidedAt, Expr::value(at))
        .col_expr(access_request::Column::Reason, Expr::value(reason))
        .filter(access_request::Column::Id.eq(id.to_string()))
        .filter(access_request::Column::Status.eq(RequestStatus::Pending.as_str()))
        .exec(db)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// Revokes an approval; answers the rows changed (0: it is not approved).
pub(crate) async fn revoke(db: &Db, id: RequestId) -> Result<u64, StoreError> {
    Ok(access_request::Entity::update_many()
        .col_expr(
            access_request::Column::Status,
            Expr::value(RequestStatus::Revoked.as_str()),
        )
        .filter(access_request::Column::Id.eq(id.to_string()))
        .filter(access_request::Column::Status.eq(RequestStatus::Approved.as_str()))
        .exec(db)
        .await
        .map_err(StoreError::data)?
        .rows_affected)
}

/// A requester's approvals for a subject and purpose that have uses left and have not expired,
/// soonest to expire first.
pub(crate) async fn usable(
    db: &Db,
    requester: PrincipalId,
    subject: SubjectId,
    purpose: &Purpose,
    act: ApprovalAct,
    now: DateTime<Utc>,
) -> Result<Vec<RequestRow>, StoreError> {
    access_request::Entity::find()
        .filter(access_request::Column::Requester.eq(requester.to_string()))
        .filter(access_request::Column::SubjectId.eq(subject.to_string()))
        .filter(access_request::Column::Status.eq(RequestStatus::Approved.as_str()))
        .filter(access_request::Column::Purpose.eq(purpose.as_str()))
        .filter(access_request::Column::Action.eq(act.as_str()))
        .filter(access_request::Column::ExpiresAt.gt(now))
        .filter(access_request::Column::UsesLeft.gt(0))
        .order_by_asc(access_request::Column::ExpiresAt)
        .all(db)
        .await
        .map_err(StoreError::data)
}

/// Spends one use of an approval; answers the rows changed (0: none was left).
pub(crate) async fn take_use(db: &Db, id: &str) -> Result<u64, StoreError> {
    // Atomic: two servers cannot both spend the last use.
    Ok(access_request::Entity::update_many()
        .col_expr(
            access_request::Column::UsesLeft,
            Expr::col(access_request::Column::UsesLeft).sub(1),
        )
        .filter(access_request::Column::Id.eq(id.to_owned()))
        .filter(access_request::Column::Status.eq(RequestStatus::Approved.as_str()))
        .filter(access_request::Column::UsesLeft.gt(0))
        .exec(db)
        .await
        .map_err(StoreError::data)?
        .rows_affected)
}
