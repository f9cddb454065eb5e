//! The two stores. The data store holds subjects, records and sealed fields; the key store holds
//! the sealed keyring and the wrapped DEKs. Separate databases, so a copy of one alone opens
//! nothing. SQLite files in a data folder by default, PostgreSQL by URL in production.

//!
//! Every query of the vault is here: `repo` holds one module per aggregate, each with the
//! queries and the row codecs (model to domain value and back) of its tables. The services
//! above keep the decisions, the audit events and the crypto, and hold at most a connection
//! (`Db`) or a transaction (`Txn`) to hand to the repo functions.

pub(crate) mod codec;
pub(crate) mod entities;
pub(crate) mod repo;

use std::path::Path;
use std::time::Duration;

use migrations::{DataMigrator, KeyMigrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, Database, DatabaseConnection, DatabaseTransaction, DbBackend, TransactionTrait,
};

pub(crate) use sea_orm::DbErr;

/// A connection pool to one store.
pub(crate) type Db = DatabaseConnection;
/// A transaction on one store, opened by `begin`; the caller commits or rolls back.
pub(crate) type Txn = DatabaseTransaction;

/// Opens a transaction on one store.
pub(crate) async fn begin(db: &Db) -> Result<Txn, DbErr> {
    db.begin().await
}

/// A database failure, naming which store. The cause chain holds the driver's message, which
/// never includes bound values.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("cannot connect to the {store} store at {url}")]
    Connect {
        store: &'static str,
        /// The URL with any password removed.
        url: String,
        #[source]
        source: DbErr,
    },
    #[error("cannot migrate the {store} store")]
    Migrate {
        store: &'static str,
        #[source]
        source: DbErr,
    },
    #[error("database error in the {store} store")]
    Db {
        store: &'static str,
        #[source]
        source: DbErr,
    },
    #[error("the {0} has stopped")]
    Closed(&'static str),
    #[error("the data folder {path} cannot be created: {source}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    pub(crate) fn data(source: DbErr) -> Self {
        StoreError::Db {
            store: "data",
            source,
        }
    }
    pub(crate) fn keys(source: DbErr) -> Self {
        StoreError::Db {
            store: "key",
            source,
        }
    }
}

/// Where the two stores are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    pub data_url: String,
    pub keys_url: String,
}

impl StoreConfig {
    /// The embedded default: `data.db` and `keys.db` in one folder (created if missing).
    pub fn sqlite_dir(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let url = |name: &str| format!("sqlite://{}?mode=rwc", dir.join(name).display());
        Ok(StoreConfig {
            data_url: url("data.db"),
            keys_url: url("keys.db"),
        })
    }
}

/// Removes the password from a database URL before it goes into an error or a log.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..s], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Open connections to both stores.
#[derive(Clone, Debug)]
pub struct Stores {
    pub(crate) data: DatabaseConnection,
    pub(crate) keys: DatabaseConnection,
}

async fn connect(store: &'static str, url: &str) -> Result<DatabaseConnection, StoreError> {
    let mut opts = ConnectOptions::new(url.to_owned());
    opts.sqlx_logging(false)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(30))
        // SQLite has one writer and a page cache per connection: beyond 8, connections add
        // memory and thread switches, not throughput (measured with scripts/bench).
        .max_connections(if url.starts_with("sqlite:") { 8 } else { 16 })
        // WAL lets readers run beside the writer; FULL syncs the WAL on every commit so an
        // acknowledged write survives power loss. busy_timeout waits out a concurrent writer
        // (another server or vaultctl) instead of failing at once.
        .map_sqlx_sqlite_opts(|o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10))
        });
    Database::connect(opts)
        .await
        .map_err(|source| StoreError::Connect {
            store,
            url: redact_url(url),
            source,
        })
}

impl Stores {
    /// Connects to both stores and brings their schemas up to date.
    pub async fn open(cfg: &StoreConfig) -> Result<Stores, StoreError> {
        let data = connect("data", &cfg.data_url).await?;
        let keys = connect("key", &cfg.keys_url).await?;
        DataMigrator::up(&data, None)
            .await
            .map_err(|source| StoreError::Migrate {
                store: "data",
                source,
            })?;
        KeyMigrator::up(&keys, None)
            .await
            .map_err(|source| StoreError::Migrate {
                store: "key",
                source,
            })?;
        Ok(Stores { data, keys })
    }

    /// Rolls both schemas all the way down (for tests of the migrations' `down`).
    pub async fn migrate_down(&self) -> Result<(), StoreError> {
        DataMigrator::down(&self.data, None)
            .await
            .map_err(|source| StoreError::Migrate {
                store: "data",
                source,
            })?;
        KeyMigrator::down(&self.keys, None)
            .await
            .map_err(|source| StoreError::Migrate {
                store: "key",
                source,
            })
    }

    /// Both stores answer.
    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        self.data.ping().await.map_err(StoreError::data)?;
        self.keys.ping().await.map_err(StoreError::keys)?;
        Ok(())
    }

    pub fn backend(&self) -> DbBackend {
        self.data.get_database_backend()
    }

    /// Closes both pools, waiting for connections to return (so SQLite checkpoints its WAL).
    pub async fn close(self) -> Result<(), StoreError> {
        self.data.close().await.map_err(StoreError::data)?;
        self.keys.close().await.map_err(StoreError::keys)
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://vault:s3cret@db.school.kz:5432/vault"),
            "postgres://vault:***@db.school.kz:5432/vault"
        );
        assert_eq!(redact_url("sqlite:///x/data.db"), "sqlite:///x/data.db");
    }
}
