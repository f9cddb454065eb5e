//! The key store's keyring row: the sealed keyring, its generation and the recipients it is
//! sealed to (one per line; none for a passphrase); the key store's chain of signed links, one
//! per generation; and the data store's pin of that chain.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::error::VaultError;
use crate::keys::custodian::{CustodianRecipient, KeyringError};
use crate::keys::keychain::{Link, Pin};
use crate::keys::keyring::SealTo;
use crate::keys::quorum::{DealtShare, Quorum, QuorumSeal};
use crate::store::entities::{keyring_link, keyring_pin, keyring_row, keyring_share};
use crate::store::{Db, DbErr, StoreError, Txn};

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
        SealTo::Quorum(q) => q.quorum().key.to_string(),
    }
}

/// Replaces the quorum's shares inside `txn` with those of `to` when it is a quorum, and
/// removes them when it is not: the share rows always belong to the stored keyring.
async fn put_shares(txn: &Txn, to: &SealTo, now: DateTime<Utc>) -> Result<(), StoreError> {
    keyring_share::Entity::delete_many()
        .exec(txn)
        .await
        .map_err(StoreError::keys)?;
    let SealTo::Quorum(q) = to else {
        return Ok(());
    };
    let rows: Vec<keyring_share::ActiveModel> = q
        .shares
        .iter()
        .map(|d| keyring_share::ActiveModel {
            x: Set(i32::from(d.x)),
            threshold: Set(i32::from(q.quorum().threshold)),
            quorum_recipient: Set(q.quorum().key.to_string()),
            custodian: Set(d.custodian.to_string()),
            sealed: Set(d.sealed.clone()),
            commitment: Set(d.commitment.to_vec()),
            created_at: Set(now),
        })
        .collect();
    keyring_share::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await
        .map_err(StoreError::keys)?;
    Ok(())
}

/// The quorum the stored keyring is sealed to, with its sealed shares; `None` when it is
/// sealed to recipients or a passphrase. Rows that do not agree with each other are refused.
pub(crate) async fn quorum(db: &Db) -> Result<Option<QuorumSeal>, VaultError> {
    let rows = keyring_share::Entity::find()
        .order_by_asc(keyring_share::Column::X)
        .all(db)
        .await
        .map_err(StoreError::keys)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let corrupt = |why| VaultError::Keyring(KeyringError::Corrupt(why));
    let threshold =
        u8::try_from(first.threshold).map_err(|_| corrupt("a share threshold out of range"))?;
    let key = CustodianRecipient::parse(&first.quorum_recipient)?;
    let mut shares = Vec::with_capacity(rows.len());
    for r in &rows {
        if r.threshold != first.threshold || r.quorum_recipient != first.quorum_recipient {
            return Err(corrupt(
                "the key store's shares belong to different quorums",
            ));
        }
        let x = u8::try_from(r.x)
            .ok()
            .filter(|x| *x != 0)
            .ok_or(corrupt("a share number out of range"))?;
        let commitment: [u8; 32] = r
            .commitment
            .as_slice()
            .try_into()
            .map_err(|_| corrupt("a share commitment of the wrong length"))?;
        shares.push(DealtShare {
            x,
            custodian: CustodianRecipient::parse(&r.custodian)?,
            sealed: r.sealed.clone(),
            commitment,
        });
    }
    if usize::from(threshold) > shares.len() || threshold < 2 {
        return Err(corrupt(
            "the key store holds fewer shares than its threshold",
        ));
    }
    let holders = shares.iter().map(|d| (d.x, d.custodian.clone())).collect();
    Ok(Some(QuorumSeal {
        quorum: Quorum {
            threshold,
            key,
            holders,
        },
        shares,
    }))
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

fn link_model(l: &Link, now: DateTime<Utc>) -> keyring_link::ActiveModel {
    keyring_link::ActiveModel {
        generation: Set(l.generation),
        public_key: Set(l.public_key.clone()),
        signature: Set(l.signature.clone()),
        sealed_sha256: Set(l.sealed_sha256.clone()),
        created_at: Set(now),
    }
}

/// Stores the first keyring, at generation 1, with its self-signed link, in one transaction.
/// A keyring already there is a primary-key conflict.
pub(crate) async fn insert_first(
    db: &Db,
    sealed: Vec<u8>,
    to: &SealTo,
    link: &Link,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let txn = crate::store::begin(db).await.map_err(StoreError::keys)?;
    keyring_row::Entity::insert(keyring_row::ActiveModel {
        id: Set(KEYRING_ROW),
        generation: Set(link.generation),
        sealed: Set(sealed),
        recipients: Set(recipients_text(to)),
        updated_at: Set(now),
    })
    .exec_without_returning(&txn)
    .await
    .map_err(StoreError::keys)?;
    keyring_link::Entity::delete_many()
        .exec(&txn)
        .await
        .map_err(StoreError::keys)?;
    keyring_link::Entity::insert(link_model(link, now))
        .exec_without_returning(&txn)
        .await
        .map_err(StoreError::keys)?;
    put_shares(&txn, to, now).await?;
    txn.commit().await.map_err(StoreError::keys)
}

/// Replaces the keyring with generation `generation + 1` if it is still at `generation`, and
/// adds its link, in one transaction; answers the rows changed (0: somebody else changed it
/// meanwhile, and nothing is written). Links beyond `generation` belong to no stored keyring
/// and are dropped first.
pub(crate) async fn replace(
    db: &Db,
    generation: i64,
    sealed: Vec<u8>,
    to: &SealTo,
    link: &Link,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let txn = crate::store::begin(db).await.map_err(StoreError::keys)?;
    let changed = keyring_row::Entity::update_many()
        .col_expr(keyring_row::Column::Sealed, Expr::value(sealed))
        .col_expr(
            keyring_row::Column::Recipients,
            Expr::value(recipients_text(to)),
        )
        .col_expr(keyring_row::Column::Generation, Expr::value(generation + 1))
        .col_expr(keyring_row::Column::UpdatedAt, Expr::value(now))
        .filter(keyring_row::Column::Id.eq(KEYRING_ROW))
        .filter(keyring_row::Column::Generation.eq(generation))
        .exec(&txn)
        .await
        .map_err(StoreError::keys)?
        .rows_affected;
    if changed != 1 {
        txn.rollback().await.map_err(StoreError::keys)?;
        return Ok(changed);
    }
    keyring_link::Entity::delete_many()
        .filter(keyring_link::Column::Generation.gt(generation))
        .exec(&txn)
        .await
        .map_err(StoreError::keys)?;
    keyring_link::Entity::insert(link_model(link, now))
        .exec_without_returning(&txn)
        .await
        .map_err(StoreError::keys)?;
    put_shares(&txn, to, now).await?;
    txn.commit().await.map_err(StoreError::keys)?;
    Ok(changed)
}

/// Every link of the key store's chain, oldest first.
pub(crate) async fn chain(db: &Db) -> Result<Vec<Link>, StoreError> {
    Ok(keyring_link::Entity::find()
        .order_by_asc(keyring_link::Column::Generation)
        .all(db)
        .await
        .map_err(StoreError::keys)?
        .into_iter()
        .map(|m| Link {
            generation: m.generation,
            public_key: m.public_key,
            signature: m.signature,
            sealed_sha256: m.sealed_sha256,
        })
        .collect())
}

/// The data store's pin of the chain, if there is one.
pub(crate) async fn pin(data: &Db) -> Result<Option<Pin>, StoreError> {
    Ok(keyring_pin::Entity::find_by_id(KEYRING_ROW)
        .one(data)
        .await
        .map_err(StoreError::data)?
        .map(|m| Pin {
            genesis_generation: m.genesis_generation,
            genesis_public_key: m.genesis_public_key,
            generation: m.generation,
            public_key: m.public_key,
            sealed_sha256: m.sealed_sha256,
        }))
}

/// Pins `tip` in the data store (with the chain's `genesis`): inserts the pin if there is none,
/// otherwise moves it up, never down. Answers whether the pin changed.
pub(crate) async fn advance_pin(
    data: &Db,
    genesis: &Link,
    tip: &Link,
    now: DateTime<Utc>,
) -> Result<bool, StoreError> {
    if pin(data).await?.is_none() {
        return insert_pin(data, genesis, tip, now).await.map(|_| true);
    }
    Ok(keyring_pin::Entity::update_many()
        .col_expr(keyring_pin::Column::Generation, Expr::value(tip.generation))
        .col_expr(
            keyring_pin::Column::PublicKey,
            Expr::value(tip.public_key.clone()),
        )
        .col_expr(
            keyring_pin::Column::SealedSha256,
            Expr::value(tip.sealed_sha256.clone()),
        )
        .col_expr(keyring_pin::Column::UpdatedAt, Expr::value(now))
        .filter(keyring_pin::Column::Id.eq(KEYRING_ROW))
        .filter(keyring_pin::Column::GenesisGeneration.eq(genesis.generation))
        .filter(keyring_pin::Column::Generation.lt(tip.generation))
        .exec(data)
        .await
        .map_err(StoreError::data)?
        .rows_affected
        == 1)
}

/// The first pin; a pin already there is a primary-key conflict.
pub(crate) async fn insert_pin(
    data: &Db,
    genesis: &Link,
    tip: &Link,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    keyring_pin::Entity::insert(keyring_pin::ActiveModel {
        id: Set(KEYRING_ROW),
        genesis_generation: Set(genesis.generation),
        genesis_public_key: Set(genesis.public_key.clone()),
        generation: Set(tip.generation),
        public_key: Set(tip.public_key.clone()),
        sealed_sha256: Set(tip.sealed_sha256.clone()),
        updated_at: Set(now),
    })
    .exec_without_returning(data)
    .await
    .map_err(StoreError::data)?;
    Ok(())
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

/// Takes the key store's write lock at the start of a transaction that reads before it writes.
/// On SQLite a deferred transaction that has read and then writes fails with SQLITE_BUSY_SNAPSHOT
/// if another connection committed meanwhile (an audit anchor, a rotation), which no busy
/// timeout waits out; a write first makes the transaction a writer from its first statement.
/// It changes no row (there is no row 0). PostgreSQL has no such failure, so it is not sent
/// there: the record write path pays no extra round trip.
pub(crate) async fn lock_for_write(txn: &Txn) -> Result<(), DbErr> {
    if txn.get_database_backend() != sea_orm::DbBackend::Sqlite {
        return Ok(());
    }
    keyring_row::Entity::update_many()
        .col_expr(
            keyring_row::Column::Generation,
            Expr::col(keyring_row::Column::Generation),
        )
        .filter(keyring_row::Column::Id.eq(0))
        .exec(txn)
        .await?;
    Ok(())
}
