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

/// Removes every password from a database URL before it goes into an error or a log: the
/// userinfo (`user:secret@`), query parameters (`?password=secret`, `&sslpassword=`), and the
/// `key=value` form libpq also accepts (`host=db password=secret`, quoted values too).
pub fn redact_url(url: &str) -> String {
    fn secret_key(k: &str) -> bool {
        let k = k.trim().to_ascii_lowercase();
        k.contains("password") || k == "pwd" || k == "passwd"
    }
    if let Some(scheme) = url.find("://") {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let base = match base.rfind('@') {
            Some(at) if at > scheme => {
                let userinfo = &base[scheme + 3..at];
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{}://{}:***@{}", &base[..scheme], user, &base[at + 1..])
            }
            _ => base.to_owned(),
        };
        let Some(query) = query else {
            return base;
        };
        let params: Vec<String> = query
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if secret_key(k) => format!("{k}=***"),
                _ => p.to_owned(),
            })
            .collect();
        return format!("{base}?{}", params.join("&"));
    }
    // key=value pairs separated by spaces; a value may be quoted with '...'.
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(eq) = rest.find('=') {
        let key_start = rest[..eq].rfind(char::is_whitespace).map_or(0, |i| i + 1);
        out.push_str(&rest[..=eq]);
        let key = &rest[key_start..eq];
        let after = &rest[eq + 1..];
        let value_len = if let Some(quoted) = after.strip_prefix('\'') {
            quoted.find('\'').map_or(after.len(), |i| i + 2)
        } else {
            after.find(char::is_whitespace).unwrap_or(after.len())
        };
        if secret_key(key) {
            out.push_str("***");
        } else {
            out.push_str(&after[..value_len]);
        }
        rest = &after[value_len..];
    }
    out.push_str(rest);
    out
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
        for (url, secret) in [
            (
                "postgres://db.school.kz/vault?user=vault&password=s3cret&sslmode=require",
                "s3cret",
            ),
            ("postgres://vault:p%40ss@db/vault?sslpassword=k3y", "k3y"),
            ("postgres://vault:a@b@db/vault", "a@b"),
            (
                "host=db.school.kz user=vault password=s3cret dbname=vault",
                "s3cret",
            ),
            ("host=db password='s3 cret' dbname=vault", "s3 cret"),
        ] {
            let shown = redact_url(url);
            assert!(!shown.contains(secret), "{url} -> {shown}");
            assert!(shown.contains("***"), "{url} -> {shown}");
        }
        assert_eq!(
            redact_url("host=db password=s3cret dbname=vault"),
            "host=db password=*** dbname=vault"
        );
        assert_eq!(
            redact_url("postgres://db/vault?user=vault&password=x&sslmode=disable"),
            "postgres://db/vault?user=vault&password=***&sslmode=disable"
        );
    }
}
