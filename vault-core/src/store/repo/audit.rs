//! The data store's audit log: the hash-chained entries, the chain head (one row, also the
//! chain's write lock) and the signed checkpoints.

use chrono::{DateTime, Utc};
use futures_util::{Stream, TryStreamExt as _};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder};

use crate::audit::chain::AuditRecord;
use crate::audit::reports::AuditFilter;
use crate::domain::SubjectId;
use crate::store::codec::{join_list, split_list};
use crate::store::entities::{audit_checkpoint, audit_entry, audit_head};
use crate::store::{Db, DbErr, StoreError, Txn};

/// The one row of the chain head.
const HEAD_ROW: i32 = 1;

/// A stored checkpoint: the audit key's signature over (seq, hash).
pub(crate) type Checkpoint = audit_checkpoint::Model;

/// An entry as stored: the record, the hash of the one before it and its own.
pub(crate) type Chained = (AuditRecord, Vec<u8>, Vec<u8>);

fn decode(m: audit_entry::Model) -> Chained {
    (
        AuditRecord {
            seq: m.seq,
            at: m.at,
            actor: m.actor,
            action: m.action,
            school: m.school_id,
            subject: m.subject_id,
            record: m.record_id,
            categories: if m.categories.is_empty() {
                Vec::new()
            } else {
                split_list(&m.categories).map(str::to_owned).collect()
            },
            purpose: m.purpose,
            outcome: m.outcome,
            reason: m.reason,
        },
        m.prev_hash,
        m.hash,
    )
}

fn encode((r, prev, hash): Chained) -> audit_entry::ActiveModel {
    audit_entry::ActiveModel {
        seq: Set(r.seq),
        at: Set(r.at),
        actor: Set(r.actor),
        action: Set(r.action),
        school_id: Set(r.school),
        subject_id: Set(r.subject),
        record_id: Set(r.record),
        categories: Set(join_list(r.categories.iter().map(String::as_str))),
        purpose: Set(r.purpose),
        outcome: Set(r.outcome),
        reason: Set(r.reason),
        prev_hash: Set(prev),
        hash: Set(hash),
    }
}

/// Takes the chain's write lock and reads the head (seq, hash) in one statement.
pub(crate) async fn lock_head(txn: &Txn) -> Result<(i64, Vec<u8>), DbErr> {
    let head = audit_head::Entity::update_many()
        .col_expr(audit_head::Column::Seq, Expr::col(audit_head::Column::Seq))
        .filter(audit_head::Column::Id.eq(HEAD_ROW))
        .exec_with_returning(txn)
        .await?
        .pop()
        .ok_or_else(|| DbErr::RecordNotFound("audit_head".into()))?;
    Ok((head.seq, head.hash))
}

/// Inserts linked entries.
pub(crate) async fn insert_entries(txn: &Txn, entries: Vec<Chained>) -> Result<(), DbErr> {
    // Bounded statements: a sweep certifies up to a thousand records in one append.
    let mut rows = entries.into_iter().map(encode).peekable();
    while rows.peek().is_some() {
        let chunk: Vec<_> = rows.by_ref().take(500).collect();
        audit_entry::Entity::insert_many(chunk)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

/// Moves the chain head to the last entry inserted.
pub(crate) async fn move_head(txn: &Txn, seq: i64, hash: Vec<u8>) -> Result<(), DbErr> {
    audit_head::Entity::update_many()
        .col_expr(audit_head::Column::Seq, Expr::value(seq))
        .col_expr(audit_head::Column::Hash, Expr::value(hash))
        .filter(audit_head::Column::Id.eq(HEAD_ROW))
        .exec(txn)
        .await?;
    Ok(())
}

/// Stores a signed checkpoint.
pub(crate) async fn insert_checkpoint(
    txn: &Txn,
    seq: i64,
    hash: Vec<u8>,
    signature: Vec<u8>,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    audit_checkpoint::Entity::insert(audit_checkpoint::ActiveModel {
        seq: Set(seq),
        hash: Set(hash),
        signature: Set(signature),
        at: Set(at),
    })
    .exec_without_returning(txn)
    .await?;
    Ok(())
}

/// The newest checkpoint, read under the chain's lock (whose key signed it tells a process
/// whether another has rotated the audit key since).
pub(crate) async fn latest_checkpoint(txn: &Txn) -> Result<Option<Checkpoint>, DbErr> {
    newest_checkpoint(txn).await
}

/// The newest checkpoint, outside the chain's lock (the head of an audit proof).
pub(crate) async fn newest_checkpoint<C: sea_orm::ConnectionTrait>(
    c: &C,
) -> Result<Option<Checkpoint>, DbErr> {
    audit_checkpoint::Entity::find()
        .order_by_desc(audit_checkpoint::Column::Seq)
        .one(c)
        .await
}

/// Every checkpoint, in order.
pub(crate) async fn checkpoints(db: &Db) -> Result<Vec<Checkpoint>, DbErr> {
    audit_checkpoint::Entity::find()
        .order_by_asc(audit_checkpoint::Column::Seq)
        .all(db)
        .await
}

/// Every entry in order, streamed: memory stays flat in the length of the log.
pub(crate) async fn stream(
    db: &Db,
) -> Result<impl Stream<Item = Result<Chained, DbErr>> + Send + '_, DbErr> {
    Ok(audit_entry::Entity::find()
        .order_by_asc(audit_entry::Column::Seq)
        .stream(db)
        .await?
        .map_ok(decode))
}

/// The chain head's seq, if the head row exists.
pub(crate) async fn head_seq(db: &Db) -> Result<Option<i64>, DbErr> {
    Ok(audit_head::Entity::find_by_id(HEAD_ROW)
        .one(db)
        .await?
        .map(|h| h.seq))
}

/// The hash of the signed checkpoint at `seq`, if there is one (a committed batch's).
pub(crate) async fn checkpoint_hash(db: &Db, seq: i64) -> Result<Option<Vec<u8>>, DbErr> {
    Ok(audit_checkpoint::Entity::find_by_id(seq)
        .one(db)
        .await?
        .map(|c| c.hash))
}

/// The stored hash of the entry at `seq`, if the log holds it.
pub(crate) async fn hash_at(db: &Db, seq: i64) -> Result<Option<Vec<u8>>, DbErr> {
    Ok(audit_entry::Entity::find_by_id(seq)
        .one(db)
        .await?
        .map(|e| e.hash))
}

/// Every entry about a subject, oldest first.
pub(crate) async fn for_subject(db: &Db, subject: SubjectId) -> Result<Vec<AuditRecord>, DbErr> {
    Ok(audit_entry::Entity::find()
        .filter(audit_entry::Column::SubjectId.eq(subject.to_string()))
        .order_by_asc(audit_entry::Column::Seq)
        .all(db)
        .await?
        .into_iter()
        .map(|m| decode(m).0)
        .collect())
}

/// Every entry, oldest first.
pub(crate) async fn all(db: &Db) -> Result<Vec<AuditRecord>, DbErr> {
    Ok(audit_entry::Entity::find()
        .order_by_asc(audit_entry::Column::Seq)
        .all(db)
        .await?
        .into_iter()
        .map(|m| decode(m).0)
        .collect())
}

/// Entries matching the filter's subject, actor, outcome and times, oldest first. The category
/// is not filtered here.
pub(crate) async fn query(db: &Db, f: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
    let mut q = audit_entry::Entity::find().order_by_asc(audit_entry::Column::Seq);
    if let Some(s) = f.subject {
        q = q.filter(audit_entry::Column::SubjectId.eq(s.to_string()));
    }
    if let Some(a) = &f.actor {
        q = q.filter(audit_entry::Column::Actor.eq(a.clone()));
    }
    if let Some(o) = &f.outcome {
        q = q.filter(audit_entry::Column::Outcome.eq(o.clone()));
    }
    if let Some(t) = f.since {
        q = q.filter(audit_entry::Column::At.gte(t));
    }
    if let Some(t) = f.until {
        q = q.filter(audit_entry::Column::At.lt(t));
    }
    let rows = q.all(db).await.map_err(StoreError::data)?;
    Ok(rows.into_iter().map(|m| decode(m).0).collect())
}
