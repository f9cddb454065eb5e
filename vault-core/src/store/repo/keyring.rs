//! The key store's keyring row: the sealed keyring, its generation and the recipients it is
//! sealed to (one per line; none for a passphrase).

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QuerySelect};

use crate::keyring::{CustodianRecipient, SealTo};
use crate::store::entities::keyring_row;
use crate::store::{Db, DbErr, StoreError, Txn};
use crate::vault::VaultError;

/// The one row of the keyring table.
const KEYRING_ROW: i32 = 1;

/// The stored keyring: an age file, and the generation it is at.
pub(crate) struct Sealed {
    pub generation: i64,
    pub sealed: Vec<u8>,
}

fn recipients_text(to: &SealTo) -> String {
    match to {
        SealTo::Recipients(rs) => rs
            .iter()
            .map(CustodianRecipient::to_string)
            .collect::<Vec<_>>()
            .join("\n"),
        SealTo::Passphrase(..) => String::new(),
    }
}

/// The stored keyring, if there is one.
pub(crate) async fn sealed(db: &Db) -> Result<Option<Sealed>, StoreError> {
    Ok(keyring_row::Entity::find_by_id(KEYRING_ROW)
        .one(db)
        .await
        .map_err(StoreError::keys)?
        .map(|r| Sealed {
            generation: r.generation,
            sealed: r.sealed,
        }))
}

/// The public recipients the stored keyring is sealed to (empty: sealed to a passphrase);
/// `None` without a keyring.
pub(crate) async fn recipients(db: &Db) -> Result<Option<Vec<CustodianRecipient>>, VaultError> {
    let Some(row) = keyring_row::Entity::find_by_id(KEYRING_ROW)
        .one(db)
        .await
        .map_err(StoreError::keys)?
    else {
        return Ok(None);
    };
    Ok(Some(
        row.recipients
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(CustodianRecipient::parse)
            .collect::<Result<_, _>>()?,
    ))
}

/// Stores the first keyring, at generation 1. A keyring already there is a primary-key conflict.
pub(crate) async fn insert_first(
    db: &Db,
    sealed: Vec<u8>,
    to: &SealTo,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    keyring_row::Entity::insert(keyring_row::ActiveModel {
        id: Set(KEYRING_ROW),
        generation: Set(1),
        sealed: Set(sealed),
        recipients: Set(recipients_text(to)),
        updated_at: Set(now),
    })
    .exec_without_returning(db)
    .await
    .map_err(StoreError::keys)?;
    Ok(())
}

/// Replaces the keyring with generation `generation + 1` if it is still at `generation`;
/// answers the rows changed (0: somebody else changed it meanwhile).
pub(crate) async fn replace(
    db: &Db,
    generation: i64,
    sealed: Vec<u8>,
    to: &SealTo,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(keyring_row::Entity::update_many()
        .col_expr(keyring_row::Column::Sealed, Expr::value(sealed))
        .col_expr(
            keyring_row::Column::Recipients,
            Expr::value(recipients_text(to)),
        )
        .col_expr(keyring_row::Column::Generation, Expr::value(generation + 1))
        .col_expr(keyring_row::Column::UpdatedAt, Expr::value(now))
        .filter(keyring_row::Column::Id.eq(KEYRING_ROW))
        .filter(keyring_row::Column::Generation.eq(generation))
        .exec(db)
        .await
        .map_err(StoreError::keys)?
        .rows_affected)
}

/// The keyring's generation, read inside a key-store transaction.
pub(crate) async fn generation(txn: &Txn) -> Result<Option<i64>, DbErr> {
    keyring_row::Entity::find_by_id(KEYRING_ROW)
        .select_only()
        .column(keyring_row::Column::Generation)
        .into_tuple()
        .one(txn)
        .await
}
