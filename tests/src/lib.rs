//! Helpers for the end-to-end tests: a fresh vault on SQLite (a temp folder) or on PostgreSQL
//! (two fresh databases on the server named by `VAULT_TEST_PG_URL`).
//!
//! No variant ever skips: without `VAULT_TEST_PG_URL` the harness runs `scripts/pg-up` once
//! (it installs and starts this machine's PostgreSQL and prints its URL), and a PostgreSQL that
//! still cannot be had fails every PostgreSQL variant. External tools (`age`, `age-keygen`) are
//! installed with apt-get when missing and the tests run as root, and fail the test otherwise.
#![forbid(unsafe_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use sea_orm::{ConnectionTrait, Database, DatabaseConnection};
use serde_json::{Value, json};
use vault_core::{
    Catalog, Clock, CustodianRecipient, FieldName, FieldType, FieldValue, Policy, RecordType,
    SealTo, StoreConfig, Stores, Unlock, Vault,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async scenario once per backend, as `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::Backend::Postgres).await
            }
        }
    )*};
}

/// The PostgreSQL admin URL: `VAULT_TEST_PG_URL`, or the one `scripts/pg-up` prints after
/// starting this machine's PostgreSQL. Panics, saying how to fix it, when neither gives one: a
/// PostgreSQL variant never passes without running.
pub fn pg_admin_url() -> String {
    static URL: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    let got = URL.get_or_init(|| {
        if let Ok(u) = std::env::var("VAULT_TEST_PG_URL")
            && !u.is_empty()
        {
            return Ok(u);
        }
        let script = repo_root().join("scripts/pg-up");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        let url = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !url.is_empty() {
            Ok(url)
        } else {
            Err(format!(
                "scripts/pg-up could not start PostgreSQL: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    });
    match got {
        Ok(u) => u.clone(),
        Err(e) => panic!(
            "the PostgreSQL variants need a server: set VAULT_TEST_PG_URL, or let scripts/pg-up start one ({e})"
        ),
    }
}

/// Replaces the database name of a PostgreSQL URL.
pub fn with_database(url: &str, db: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(start);
    let slash = rest.find('/').unwrap_or(rest.len());
    let query = rest.find('?').map_or("", |q| &rest[q..]);
    format!("{head}{}/{db}{query}", &rest[..slash])
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn catalog() -> Arc<Catalog> {
    Arc::new(Catalog::load(&repo_root().join("policies/catalog.toml")).expect("shipped catalog"))
}

/// The shipped policy folder: catalog, casbin model and grants, holidays.
pub async fn policy() -> Arc<Policy> {
    Arc::new(
        Policy::load_dir(&repo_root().join("policies"))
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
}

/// A fresh pair of stores, and what is needed to inspect them behind the vault's back.
pub struct TestStores {
    pub backend: Backend,
    pub config: StoreConfig,
    /// The SQLite folder (kept alive for the test's duration).
    pub dir: tempfile::TempDir,
    /// PostgreSQL database names (data, keys).
    pub pg_dbs: Option<(String, String)>,
}

impl TestStores {
    pub async fn new(backend: Backend) -> TestStores {
        let dir = tempfile::tempdir().unwrap();
        match backend {
            Backend::Sqlite => TestStores {
                backend,
                config: StoreConfig::sqlite_dir(&dir.path().join("data")).unwrap(),
                dir,
                pg_dbs: None,
            },
            Backend::Postgres => {
                let admin = pg_admin_url();
                let conn = Database::connect(&admin).await.unwrap_or_else(|e| {
                    panic!("cannot reach PostgreSQL at VAULT_TEST_PG_URL: {e}")
                });
                let tag = uuid::Uuid::new_v4().simple().to_string();
                let (d, k) = (format!("vt_{tag}_data"), format!("vt_{tag}_keys"));
                for db in [&d, &k] {
                    conn.execute_unprepared(&format!("CREATE DATABASE {db}"))
                        .await
                        .unwrap();
                }
                conn.close().await.unwrap();
                TestStores {
                    backend,
                    config: StoreConfig {
                        data_url: with_database(&admin, &d),
                        keys_url: with_database(&admin, &k),
                    },
                    dir,
                    pg_dbs: Some((d, k)),
                }
            }
        }
    }

    pub async fn open(&self) -> Stores {
        Stores::open(&self.config).await.unwrap()
    }

    /// `vaultctl` (the binary at `bin`) on these stores with the repository's policies, and
    /// none of the VAULT_* settings of the environment the tests run in.
    pub fn vaultctl(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        c.arg("--policies").arg(repo_root().join("policies"));
        match self.backend {
            Backend::Sqlite => {
                c.arg("--data-dir").arg(self.dir.path().join("data"));
            }
            Backend::Postgres => {
                c.arg("--data-url").arg(&self.config.data_url);
                c.arg("--keys-url").arg(&self.config.keys_url);
            }
        }
        for v in [
            "VAULT_IDENTITY",
            "VAULT_PASSPHRASE_FILE",
            "VAULT_TOKEN",
            "VAULT_TOKEN_FILE",
            "VAULT_AUDIT_WITNESS",
        ] {
            c.env_remove(v);
        }
        c
    }

    /// A raw connection to the data store, for tampering behind the vault's back.
    pub async fn raw_data(&self) -> DatabaseConnection {
        Database::connect(&self.config.data_url).await.unwrap()
    }

    pub async fn raw_keys(&self) -> DatabaseConnection {
        Database::connect(&self.config.keys_url).await.unwrap()
    }

    /// Everything the data store holds as bytes: the SQLite files (with WAL), or a `pg_dump`.
    pub fn data_store_bytes(&self) -> Vec<u8> {
        self.store_bytes(true)
    }

    pub fn key_store_bytes(&self) -> Vec<u8> {
        self.store_bytes(false)
    }

    fn store_bytes(&self, data: bool) -> Vec<u8> {
        match self.backend {
            Backend::Sqlite => {
                let base = if data { "data.db" } else { "keys.db" };
                let mut out = Vec::new();
                for suffix in ["", "-wal", "-shm"] {
                    let p = self.dir.path().join("data").join(format!("{base}{suffix}"));
                    if let Ok(b) = std::fs::read(&p) {
                        out.extend(b);
                    }
                }
                assert!(!out.is_empty(), "no SQLite files found");
                out
            }
            Backend::Postgres => {
                let url = if data {
                    &self.config.data_url
                } else {
                    &self.config.keys_url
                };
                let out = Command::new("pg_dump")
                    .arg("--dbname")
                    .arg(url)
                    .output()
                    .expect("pg_dump must be installed for the PostgreSQL scan");
                assert!(
                    out.status.success(),
                    "pg_dump failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                out.stdout
            }
        }
    }
}

/// A vault over fresh stores, sealed to a custodian identity file in the test's temp folder.
pub struct TestVault {
    pub stores: TestStores,
    pub vault: Vault,
    pub identity: PathBuf,
    pub recipient: CustodianRecipient,
}

impl TestVault {
    pub async fn new(backend: Backend) -> TestVault {
        Self::with_clock(backend, Arc::new(vault_core::SystemClock)).await
    }

    /// A vault whose clock the test moves (expiry, deadlines) instead of sleeping.
    pub async fn with_clock(backend: Backend, clock: Arc<dyn Clock>) -> TestVault {
        let stores = TestStores::new(backend).await;
        let identity = stores.dir.path().join("custodian.txt");
        let recipient = Unlock::generate_identity_file(&identity).unwrap();
        let s = stores.open().await;
        let catalog = catalog();
        Vault::init_keyring(
            &s,
            &catalog,
            &SealTo::Recipients(vec![recipient.clone()]),
            chrono::Utc::now(),
        )
        .await
        .unwrap();
        let vault = Vault::open_with_clock(
            s,
            policy().await,
            Unlock::identity_file(&identity).unwrap(),
            clock,
        )
        .await
        .unwrap();
        TestVault {
            stores,
            vault,
            identity,
            recipient,
        }
    }

    /// Closes the vault and opens it again from the stores, as a restart would.
    pub async fn reopen(self) -> Result<TestVault, vault_core::VaultError> {
        let TestVault {
            stores,
            vault,
            identity,
            recipient,
        } = self;
        drop(vault);
        let s = stores.open().await;
        let vault = Vault::open(s, policy().await, Unlock::identity_file(&identity)?).await?;
        Ok(TestVault {
            stores,
            vault,
            identity,
            recipient,
        })
    }
}

/// A value of the field's type that contains `marker` wherever the type allows text.
pub fn value_for(ty: FieldType, marker: &str, iin: &str) -> Value {
    match ty {
        FieldType::Text => json!(marker),
        FieldType::Date => json!("2012-09-01"),
        FieldType::Number => json!(42),
        FieldType::Boolean => json!(true),
        FieldType::Iin => json!(iin),
        FieldType::Json => json!({ "note": marker, "items": [1, 2, 3] }),
    }
}

/// A record with every catalog field of `record_type` filled, each with its own marker.
/// Returns the fields and the markers (so a scan can look for each).
pub fn full_record(
    catalog: &Catalog,
    record_type: &str,
    iin: &str,
) -> (
    std::collections::BTreeMap<FieldName, FieldValue>,
    Vec<String>,
) {
    let rt = catalog
        .record_type(&RecordType::parse(record_type).unwrap())
        .unwrap();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut fields = std::collections::BTreeMap::new();
    let mut markers = vec![iin.to_owned()];
    for f in rt.fields() {
        let marker = format!("MARKER-{}-{}", f.name, &run[..12]);
        let v = value_for(f.field_type, &marker, iin);
        fields.insert(f.name.clone(), FieldValue::from_json(&v));
        if matches!(f.field_type, FieldType::Text | FieldType::Json) {
            markers.push(marker);
        }
    }
    (fields, markers)
}

/// A valid IIN with the given 11-digit prefix's check digit, trying serials until one exists.
pub fn make_iin(yymmdd: &str, century_sex: u8) -> String {
    for serial in 0..10_000u32 {
        let prefix = format!("{yymmdd}{century_sex}{serial:04}");
        let d: Vec<u8> = prefix.bytes().map(|b| b - b'0').collect();
        if let Some(c) = vault_core::Iin::check_digit(&d) {
            return format!("{prefix}{c}");
        }
    }
    panic!("no valid IIN for {yymmdd}")
}

/// True if the record read back with every field open. A record whose keys were destroyed
/// still reads `Ok`, with each field sealed as shredded: a check that must tell a surviving
/// record from a shredded one looks at every field, never at `is_ok()` or a count.
pub fn every_field_opens(view: &vault_core::RecordView) -> bool {
    !view.fields.is_empty()
        && view
            .fields
            .values()
            .all(|f| matches!(f, vault_core::FieldView::Open { .. }))
}

/// True if `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Hex of bytes, as `pg_dump` prints bytea.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An external tool (`age`, `age-keygen`). When it is missing it is installed from Debian's
/// `age` package if the tests run as root; otherwise the test fails, naming what to install.
pub fn tool(name: &str) -> Command {
    let found = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {name}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !found() {
        static INSTALL: std::sync::Once = std::sync::Once::new();
        INSTALL.call_once(|| {
            let _ = Command::new("sh")
                .arg("-c")
                .arg("[ \"$(id -u)\" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null 2>&1 || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq age >/dev/null 2>&1; }")
                .status();
        });
    }
    assert!(
        found(),
        "`{name}` is not installed and could not be installed: apt-get install age"
    );
    Command::new(name)
}

/// Makes `db` refuse new rows of `table` whose `column` is `value` (a trigger), standing in for
/// one write failing inside a transaction. `allow_inserts` takes the trigger away again.
pub async fn refuse_inserts(
    db: &DatabaseConnection,
    table: &str,
    column: &str,
    value: impl std::fmt::Display,
) {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => format!(
            "CREATE FUNCTION refuse_{table}() RETURNS trigger AS $$ BEGIN \
             IF NEW.{column} = '{value}' THEN RAISE EXCEPTION 'refused by a test'; END IF; \
             RETURN NEW; END $$ LANGUAGE plpgsql; \
             CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
             FOR EACH ROW EXECUTE FUNCTION refuse_{table}()"
        ),
        _ => format!(
            "CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} \
             WHEN NEW.{column} = '{value}' BEGIN SELECT RAISE(ABORT, 'refused by a test'); END"
        ),
    };
    db.execute_unprepared(&sql).await.unwrap();
}

/// Undoes `refuse_inserts` on `table`.
pub async fn allow_inserts(db: &DatabaseConnection, table: &str) {
    let sql = match db.get_database_backend() {
        sea_orm::DbBackend::Postgres => {
            format!("DROP TRIGGER refuse_{table} ON {table}; DROP FUNCTION refuse_{table}()")
        }
        _ => format!("DROP TRIGGER refuse_{table}"),
    };
    db.execute_unprepared(&sql).await.unwrap();
}

/// Runs a sweep and collects what it shredded (or, dry, would shred), chunk by chunk.
/// Each progress report must move forward and stay within the record count.
pub async fn sweep(
    vault: &Vault,
    opts: vault_core::SweepOptions,
) -> Result<
    (
        Vec<(vault_core::RecordId, Vec<vault_core::Category>)>,
        vault_core::SweepReport,
    ),
    vault_core::VaultError,
> {
    let mut shredded = Vec::new();
    let mut checked = 0;
    let report = vault
        .sweep(opts, &mut |p| {
            shredded.extend_from_slice(p.shredded);
            assert!(p.records_checked >= checked && p.records_checked <= p.records_total);
            checked = p.records_checked;
        })
        .await?;
    assert_eq!(report.records, shredded.len());
    Ok((shredded, report))
}

/// A new subject of `kind` in school-1, with no IIN.
pub async fn new_subject(vault: &Vault, kind: vault_core::SubjectKind) -> vault_core::SubjectId {
    vault
        .create_subject(vault_core::NewSubject {
            school: vault_core::SchoolId::parse("school-1").unwrap(),
            kind,
            iin: None,
        })
        .await
        .unwrap()
        .id
}

/// Editing the audit log and its anchor behind the vault's back, as an administrator of the
/// stores would (the attack the anchor answers, in `tests/tests/anchor.rs` and the vaultctl and
/// server tests).
pub mod audit_edit {
    use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement, Value};
    use vault_core::StoreConfig;

    async fn data(s: &StoreConfig) -> DatabaseConnection {
        Database::connect(&s.data_url).await.unwrap()
    }

    async fn keys(s: &StoreConfig) -> DatabaseConnection {
        Database::connect(&s.keys_url).await.unwrap()
    }

    async fn one_i64(db: &DatabaseConnection, sql: &str) -> Option<i64> {
        db.query_one_raw(Statement::from_string(db.get_database_backend(), sql))
            .await
            .unwrap()
            .and_then(|r| r.try_get::<Option<i64>>("", "n").unwrap())
    }

    /// The newest entry's seq.
    pub async fn max_seq(s: &StoreConfig) -> i64 {
        one_i64(&data(s).await, "SELECT MAX(seq) AS n FROM audit_log")
            .await
            .unwrap()
    }

    /// The seq the key store's anchor names, if there is one.
    pub async fn anchored_seq(s: &StoreConfig) -> Option<i64> {
        one_i64(&keys(s).await, "SELECT seq AS n FROM audit_anchor").await
    }

    /// The reproduced attack: cut every entry after `keep`, delete the later checkpoints and
    /// rewind the head to entry `keep`, so that the data store alone verifies.
    pub async fn cut_after(s: &StoreConfig, keep: i64) {
        let db = data(s).await;
        for sql in [
            format!("DELETE FROM audit_log WHERE seq > {keep}"),
            format!("DELETE FROM audit_checkpoints WHERE seq > {keep}"),
            format!(
                "UPDATE audit_head SET seq = {keep}, hash = (SELECT hash FROM audit_log WHERE seq = {keep})"
            ),
        ] {
            db.execute_unprepared(&sql).await.unwrap();
        }
    }

    /// The key store's anchor row as it is now, to put back later (an attacker's copy).
    pub async fn copy_anchor(s: &StoreConfig) -> Vec<Value> {
        let db = keys(s).await;
        let row = db
            .query_one_raw(Statement::from_string(
                db.get_database_backend(),
                "SELECT seq, hash, at, signature FROM audit_anchor",
            ))
            .await
            .unwrap()
            .unwrap();
        vec![
            row.try_get::<i64>("", "seq").unwrap().into(),
            row.try_get::<Vec<u8>>("", "hash").unwrap().into(),
            row.try_get::<chrono::DateTime<chrono::Utc>>("", "at")
                .unwrap()
                .into(),
            row.try_get::<Vec<u8>>("", "signature").unwrap().into(),
        ]
    }

    /// Writes a copied anchor row back over the key store's anchor.
    pub async fn put_anchor_back(s: &StoreConfig, copy: Vec<Value>) {
        let db = keys(s).await;
        let sql = match db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                "UPDATE audit_anchor SET seq = $1, hash = $2, at = $3, signature = $4"
            }
            _ => "UPDATE audit_anchor SET seq = ?, hash = ?, at = ?, signature = ?",
        };
        let r = db
            .execute_raw(Statement::from_sql_and_values(
                db.get_database_backend(),
                sql,
                copy,
            ))
            .await
            .unwrap();
        assert_eq!(r.rows_affected(), 1);
    }
}

/// Bytes from hexadecimal (either case), as `sqlite3`'s `hex()` and `psql`'s `encode` print.
pub fn unhex(s: &str) -> Vec<u8> {
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap_or(0))
        .collect()
}
