//! The security state a restore must not undo: what today's data store says about revoked
//! tokens, blocked subjects, withdrawn consents and spent or revoked approvals, read before a
//! restore and written again over the backup's rows in the restore's own transaction. Every
//! change moves towards less access: a revocation, a block or a withdrawal is added, never
//! removed; an approval only loses uses or becomes revoked or denied.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter, QueryOrder, QuerySelect};

use crate::access::model::RequestStatus;
use crate::store::entities::{
    access_request, audit_entry, break_glass, consent, legal_hold, principal, subject,
};
use crate::store::{Db, DbErr, StoreError, Txn};

/// The live security state, as read before a restore. No `Debug`: a break-glass
/// justification can describe a child's health.
#[derive(Default)]
pub(crate) struct Live {
    revoked: Vec<(String, DateTime<Utc>)>,
    blocked: Vec<(String, DateTime<Utc>)>,
    withdrawn: Vec<(String, DateTime<Utc>)>,
    /// (request id, status, uses left) of every decided request.
    requests: Vec<(String, String, Option<i32>)>,
    /// Legal holds in force: a court order placed after the backup must still stop a sweep.
    holds: Vec<legal_hold::Model>,
    /// Break-glass accesses not yet reviewed: the review duty survives the restore.
    unreviewed: Vec<break_glass::Model>,
}

/// How many rows of the restored backup today's state changed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CarriedOver {
    pub revocations: u64,
    pub blocks: u64,
    pub withdrawals: u64,
    pub approvals: u64,
    /// Legal holds in force today that the backup did not hold.
    pub holds: u64,
    /// Unreviewed break-glass accesses the backup did not hold.
    pub break_glass: u64,
}

pub(crate) async fn read_live(db: &Db) -> Result<Live, StoreError> {
    let revoked = principal::Entity::find()
        .select_only()
        .column(principal::Column::Id)
        .column(principal::Column::RevokedAt)
        .filter(principal::Column::RevokedAt.is_not_null())
        .into_tuple::<(String, DateTime<Utc>)>()
        .all(db)
        .await
        .map_err(StoreError::data)?;
    let blocked = subject::Entity::find()
        .select_only()
        .column(subject::Column::Id)
        .column(subject::Column::BlockedAt)
        .filter(subject::Column::BlockedAt.is_not_null())
        .into_tuple::<(String, DateTime<Utc>)>()
        .all(db)
        .await
        .map_err(StoreError::data)?;
    let withdrawn = consent::Entity::find()
        .select_only()
        .column(consent::Column::Id)
        .column(consent::Column::WithdrawnAt)
        .filter(consent::Column::WithdrawnAt.is_not_null())
        .into_tuple::<(String, DateTime<Utc>)>()
        .all(db)
        .await
        .map_err(StoreError::data)?;
    let requests = access_request::Entity::find()
        .select_only()
        .column(access_request::Column::Id)
        .column(access_request::Column::Status)
        .column(access_request::Column::UsesLeft)
        .filter(access_request::Column::Status.ne(RequestStatus::Pending.as_str()))
        .into_tuple::<(String, String, Option<i32>)>()
        .all(db)
        .await
        .map_err(StoreError::data)?;
    let holds = legal_hold::Entity::find()
        .filter(legal_hold::Column::ReleasedAt.is_null())
        .all(db)
        .await
        .map_err(StoreError::data)?;
    let unreviewed = break_glass::Entity::find()
        .filter(break_glass::Column::ReviewedAt.is_null())
        .all(db)
        .await
        .map_err(StoreError::data)?;
    Ok(Live {
        revoked,
        blocked,
        withdrawn,
        requests,
        holds,
        unreviewed,
    })
}

/// Writes today's revocations, blocks, withdrawals and approval states over the restored rows.
pub(crate) async fn reapply(txn: &Txn, live: &Live) -> Result<CarriedOver, DbErr> {
    let mut c = CarriedOver::default();
    for (id, at) in &live.revoked {
        c.revocations += principal::Entity::update_many()
            .col_expr(principal::Column::RevokedAt, Expr::value(*at))
            .filter(principal::Column::Id.eq(id.as_str()))
            .filter(principal::Column::RevokedAt.is_null())
            .exec(txn)
            .await?
            .rows_affected;
    }
    for (id, at) in &live.blocked {
        c.blocks += subject::Entity::update_many()
            .col_expr(subject::Column::BlockedAt, Expr::value(*at))
            .filter(subject::Column::Id.eq(id.as_str()))
            .filter(subject::Column::BlockedAt.is_null())
            .exec(txn)
            .await?
            .rows_affected;
    }
    for (id, at) in &live.withdrawn {
        c.withdrawals += consent::Entity::update_many()
            .col_expr(consent::Column::WithdrawnAt, Expr::value(*at))
            .filter(consent::Column::Id.eq(id.as_str()))
            .filter(consent::Column::WithdrawnAt.is_null())
            .exec(txn)
            .await?
            .rows_affected;
    }
    let approved = RequestStatus::Approved.as_str();
    for (id, status, uses) in &live.requests {
        let n = if status == approved {
            // Uses spent since the backup stay spent.
            let Some(uses) = uses else { continue };
            access_request::Entity::update_many()
                .col_expr(access_request::Column::UsesLeft, Expr::value(*uses))
                .filter(access_request::Column::Id.eq(id.as_str()))
                .filter(access_request::Column::UsesLeft.gt(*uses))
                .exec(txn)
                .await?
                .rows_affected
        } else {
            // Revoked or denied since the backup: it opens nothing again.
            access_request::Entity::update_many()
                .col_expr(access_request::Column::Status, Expr::value(status.as_str()))
                .col_expr(access_request::Column::UsesLeft, Expr::value(0))
                .filter(access_request::Column::Id.eq(id.as_str()))
                .filter(access_request::Column::Status.eq(approved))
                .exec(txn)
                .await?
                .rows_affected
        };
        c.approvals += n;
    }
    // Rows the backup lacks, for subjects it holds (a subject made after the backup is gone,
    // and with it what named it).
    for h in &live.holds {
        if legal_hold::Entity::find_by_id(h.id.clone())
            .one(txn)
            .await?
            .is_none()
            && subject::Entity::find_by_id(h.subject_id.clone())
                .one(txn)
                .await?
                .is_some()
        {
            legal_hold::Entity::insert(h.clone().into_active_model())
                .exec_without_returning(txn)
                .await?;
            c.holds += 1;
        }
    }
    for b in &live.unreviewed {
        if break_glass::Entity::find_by_id(b.id.clone())
            .one(txn)
            .await?
            .is_none()
            && subject::Entity::find_by_id(b.subject_id.clone())
                .one(txn)
                .await?
                .is_some()
        {
            break_glass::Entity::insert(b.clone().into_active_model())
                .exec_without_returning(txn)
                .await?;
            c.break_glass += 1;
        }
    }
    Ok(c)
}

/// The live audit log's newest sequence number (0 when empty) and the hash of entry `seq`.
pub(crate) async fn audit_tail(
    db: &Db,
    seq: Option<i64>,
) -> Result<(i64, Option<Vec<u8>>), StoreError> {
    let newest = audit_entry::Entity::find()
        .select_only()
        .column(audit_entry::Column::Seq)
        .order_by_desc(audit_entry::Column::Seq)
        .limit(1)
        .into_tuple::<i64>()
        .one(db)
        .await
        .map_err(StoreError::data)?
        .unwrap_or(0);
    let hash = match seq {
        Some(s) => audit_entry::Entity::find()
            .select_only()
            .column(audit_entry::Column::Hash)
            .filter(audit_entry::Column::Seq.eq(s))
            .into_tuple::<Vec<u8>>()
            .one(db)
            .await
            .map_err(StoreError::data)?,
        None => None,
    };
    Ok((newest, hash))
}
