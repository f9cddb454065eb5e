//! The data store's principals (a name, the hash of the bearer token, dates) and their roles.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, JoinType, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::access::model::PrincipalId;
use crate::access::policy::{Role, Scope};
use crate::audit::reports::PrincipalEntry;
use crate::error::VaultError;
use crate::store::codec::corrupt;
use crate::store::entities::{principal, principal_role};
use crate::store::{Db, StoreError};

/// A stored principal row.
pub(crate) type PrincipalRow = principal::Model;
/// A stored role of a principal.
pub(crate) type RoleRow = principal_role::Model;

impl PrincipalRow {
    pub(crate) fn principal_id(&self) -> Result<PrincipalId, VaultError> {
        corrupt(PrincipalId::parse(&self.id), "principal id")
    }
}

impl RoleRow {
    /// The role and where it is held.
    pub(crate) fn decode(&self) -> Result<(Scope, Role), VaultError> {
        Ok((
            corrupt(Scope::parse(&self.scope), "role scope")?,
            Role::parse(&self.role).map_err(|_| VaultError::CorruptRow("role"))?,
        ))
    }
}

/// Whether any principal was ever made (revoked ones count).
pub(crate) async fn any(db: &Db) -> Result<bool, StoreError> {
    Ok(principal::Entity::find()
        .select_only()
        .column(principal::Column::Id)
        .limit(1)
        .into_tuple::<String>()
        .one(db)
        .await
        .map_err(StoreError::data)?
        .is_some())
}

/// Stores a principal, then its roles.
pub(crate) async fn insert(
    db: &Db,
    id: PrincipalId,
    name: &str,
    token_hash: Vec<u8>,
    now: DateTime<Utc>,
    roles: &[(Scope, Role)],
) -> Result<(), StoreError> {
    let txn = crate::store::begin(db).await.map_err(StoreError::data)?;
    insert_in(&txn, id, name, token_hash, now, roles).await?;
    txn.commit().await.map_err(StoreError::data)
}

/// Inserts the first principal, only if there is none, in one transaction that holds the
/// principals table's write lock from its first statement: of two bootstraps at once, one
/// waits for the other and then finds a principal. Answers whether it inserted.
pub(crate) async fn insert_first(
    db: &Db,
    id: PrincipalId,
    name: &str,
    token_hash: Vec<u8>,
    now: DateTime<Utc>,
    roles: &[(Scope, Role)],
) -> Result<bool, StoreError> {
    let txn = crate::store::begin(db).await.map_err(StoreError::data)?;
    match txn.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            txn.execute_unprepared("LOCK TABLE principals IN SHARE ROW EXCLUSIVE MODE")
                .await
                .map_err(StoreError::data)?;
        }
        // SQLite: a write first takes the database's write lock (a deferred transaction that
        // only read would both see no principal, then both write).
        _ => {
            principal::Entity::update_many()
                .col_expr(principal::Column::Name, Expr::col(principal::Column::Name))
                .filter(principal::Column::Id.eq(""))
                .exec(&txn)
                .await
                .map_err(StoreError::data)?;
        }
    }
    let exists = principal::Entity::find()
        .select_only()
        .column(principal::Column::Id)
        .limit(1)
        .into_tuple::<String>()
        .one(&txn)
        .await
        .map_err(StoreError::data)?
        .is_some();
    if exists {
        txn.rollback().await.map_err(StoreError::data)?;
        return Ok(false);
    }
    insert_in(&txn, id, name, token_hash, now, roles).await?;
    txn.commit().await.map_err(StoreError::data)?;
    Ok(true)
}

async fn insert_in(
    txn: &crate::store::Txn,
    id: PrincipalId,
    name: &str,
    token_hash: Vec<u8>,
    now: DateTime<Utc>,
    roles: &[(Scope, Role)],
) -> Result<(), StoreError> {
    principal::Entity::insert(principal::ActiveModel {
        id: Set(id.to_string()),
        name: Set(name.to_owned()),
        token_hash: Set(token_hash),
        created_at: Set(now),
        revoked_at: Set(None),
    })
    .exec_without_returning(txn)
    .await
    .map_err(StoreError::data)?;
    let rows = roles.iter().map(|(s, r)| principal_role::ActiveModel {
        principal_id: Set(id.to_string()),
        scope: Set(s.as_str().to_owned()),
        role: Set(r.as_str().to_owned()),
    });
    principal_role::Entity::insert_many(rows)
        .exec_without_returning(txn)
        .await
        .map_err(StoreError::data)?;
    Ok(())
}

/// The principal with this token hash, once per role it holds (once with no role if none), in
/// one query.
pub(crate) async fn by_token_hash(
    db: &Db,
    hash: Vec<u8>,
) -> Result<Vec<(PrincipalRow, Option<RoleRow>)>, StoreError> {
    let to_roles = principal::Entity::belongs_to(principal_role::Entity)
        .from(principal::Column::Id)
        .to(principal_role::Column::PrincipalId)
        .into();
    principal::Entity::find()
        .filter(principal::Column::TokenHash.eq(hash))
        .join(JoinType::LeftJoin, to_roles)
        .select_also(principal_role::Entity)
        .all(db)
        .await
        .map_err(StoreError::data)
}

/// Revokes a principal not yet revoked; answers the rows changed.
pub(crate) async fn revoke(
    db: &Db,
    id: PrincipalId,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    Ok(principal::Entity::update_many()
        .col_expr(principal::Column::RevokedAt, Expr::value(now))
        .filter(principal::Column::Id.eq(id.to_string()))
        .filter(principal::Column::RevokedAt.is_null())
        .exec(db)
        .await
        .map_err(StoreError::data)?
        .rows_affected)
}

/// Every principal, oldest first, with its roles (sorted) and dates.
pub(crate) async fn list(db: &Db) -> Result<Vec<PrincipalEntry>, VaultError> {
    let rows = principal::Entity::find()
        .order_by_asc(principal::Column::CreatedAt)
        .all(db)
        .await
        .map_err(StoreError::data)?;
    let roles = principal_role::Entity::find()
        .all(db)
        .await
        .map_err(StoreError::data)?;
    rows.into_iter()
        .map(|r| {
            let id =
                PrincipalId::parse(&r.id).map_err(|_| VaultError::CorruptRow("principal id"))?;
            let mut rs = Vec::new();
            for pr in roles.iter().filter(|x| x.principal_id == r.id) {
                rs.push((
                    Scope::parse(&pr.scope).map_err(|_| VaultError::CorruptRow("scope"))?,
                    Role::parse(&pr.role).map_err(|_| VaultError::CorruptRow("role"))?,
                ));
            }
            rs.sort();
            Ok(PrincipalEntry {
                id,
                name: r.name,
                roles: rs,
                created_at: r.created_at,
                revoked_at: r.revoked_at,
            })
        })
        .collect()
}
