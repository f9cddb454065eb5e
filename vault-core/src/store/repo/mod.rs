//! The queries of both stores, one module per aggregate. Each function takes the connection or
//! transaction it runs on and answers rows or domain values; database errors are mapped to the
//! store they came from here, except where a caller needs the driver's error itself.

pub(crate) mod audit;
pub(crate) mod audit_anchor;
pub(crate) mod break_glass;
pub(crate) mod carry;
pub(crate) mod consents;
pub(crate) mod deks;
pub(crate) mod keyring;
pub(crate) mod principals;
pub(crate) mod records;
pub(crate) mod requests;
pub(crate) mod retention;
pub(crate) mod subjects;
pub(crate) mod tables;
pub(crate) mod transfers;

use sea_orm::{ActiveModelTrait, DbErr, EntityTrait};

use super::Txn;

/// Rows per multi-row insert.
const ROWS_PER_INSERT: usize = 500;

/// Inserts rows in bounded multi-row statements, so a statement never nears the databases'
/// parameter limits.
async fn insert_chunks<A>(txn: &Txn, mut rows: Vec<A>) -> Result<(), DbErr>
where
    A: ActiveModelTrait + Send,
{
    while !rows.is_empty() {
        let rest = rows.split_off(rows.len().min(ROWS_PER_INSERT));
        let chunk = std::mem::replace(&mut rows, rest);
        <A::Entity as EntityTrait>::insert_many(chunk)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}
