//! The key store's audit anchor: one row, the newest signed head of the data store's audit
//! chain. Written only by compare-and-set on the seq it replaces, so two servers never move it
//! back, and a writer that read a stale row writes nothing.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use crate::store::entities::audit_anchor;
use crate::store::{Db, DbErr, Txn};

/// The one row.
const ANCHOR_ROW: i32 = 1;

/// A stored anchor.
pub(crate) type AnchorRow = audit_anchor::Model;

/// The stored anchor, if any.
pub(crate) async fn get(db: &Db) -> Result<Option<AnchorRow>, DbErr> {
    audit_anchor::Entity::find_by_id(ANCHOR_ROW).one(db).await
}

/// Stores `(seq, hash, at, signature)` if the row still holds the seq `expected` (`None`: no row
/// yet). Answers whether it was written.
pub(crate) async fn compare_and_set(
    db: &Db,
    expected: Option<i64>,
    seq: i64,
    hash: Vec<u8>,
    at: DateTime<Utc>,
    signature: Vec<u8>,
) -> Result<bool, DbErr> {
    match expected {
        None => {
            let r = audit_anchor::Entity::insert(audit_anchor::ActiveModel {
                id: Set(ANCHOR_ROW),
                seq: Set(seq),
                hash: Set(hash),
                at: Set(at),
                signature: Set(signature),
            })
            .exec_without_returning(db)
            .await;
            // Another writer inserted first: a primary-key conflict, so nothing was written.
            Ok(r.is_ok())
        }
        Some(old) => {
            let r = audit_anchor::Entity::update_many()
                .col_expr(audit_anchor::Column::Seq, Expr::value(seq))
                .col_expr(audit_anchor::Column::Hash, Expr::value(hash))
                .col_expr(audit_anchor::Column::At, Expr::value(at))
                .col_expr(audit_anchor::Column::Signature, Expr::value(signature))
                .filter(audit_anchor::Column::Id.eq(ANCHOR_ROW))
                .filter(audit_anchor::Column::Seq.eq(old))
                .filter(audit_anchor::Column::Seq.lt(seq))
                .exec(db)
                .await?;
            Ok(r.rows_affected == 1)
        }
    }
}

/// Forgets the anchor inside a key-store transaction: a restore puts the audit log back as it
/// was at the backup, and its own entry anchors the restored chain again.
pub(crate) async fn clear_in(txn: &Txn) -> Result<(), DbErr> {
    audit_anchor::Entity::delete_many().exec(txn).await?;
    Ok(())
}
