//! Bench-only tools that `scripts/bench` drives; never shipped or deployed.
//!
//! - `bare`: the baseline for "what the vault costs over its database": an actix-web + sea-orm
//!   endpoint that returns the same stored record and field rows as the vault's read, with no
//!   crypto, policy or audit.
//! - `fixture`: fills real stores through the vault's own API for the bulk benchmarks (rewrap,
//!   retention sweep, audit verify), which then time the real `vaultctl`.
//! - `pgcrypto`: the vault's field decrypt against `pgp_sym_decrypt` on the same values.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use futures_util::StreamExt;
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, QueryFilter,
};
use vault_core::{
    Category, FieldName, FieldType, FieldValue, Keyring, NewSubject, Policy, RecordId, RecordKeys,
    RecordType, RetentionTrigger, SchoolId, StoreConfig, Stores, SubjectKind, Unlock, Vault,
};

#[derive(Parser)]
#[command(name = "vault-bench", about = "Bench-only tools for scripts/bench")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve GET /v1/records/{id}: the stored rows as they are, nothing else.
    Bare {
        #[arg(long)]
        data_url: String,
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Fill stores (made by `vaultctl keyring init`) through the vault's API.
    Fixture {
        #[arg(long, value_enum)]
        kind: Fixture,
        /// DEKs (rewrap), records (sweep) or audit entries (audit).
        #[arg(long)]
        count: u64,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        data_url: Option<String>,
        #[arg(long)]
        keys_url: Option<String>,
        #[arg(long)]
        identity: PathBuf,
        #[arg(long, default_value = "policies")]
        policies: PathBuf,
    },
    /// Field decrypt in the vault against pgp_sym_decrypt on the same values.
    Pgcrypto {
        #[arg(long)]
        pg_url: String,
        #[arg(long, default_value_t = 2000)]
        values: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Fixture {
    Rewrap,
    Sweep,
    Audit,
}

mod bare {
    //! The two tables the vault's read touches in the data store, as plain sea-orm entities.
    pub mod record {
        use sea_orm::entity::prelude::*;
        #[derive(Clone, Debug, DeriveEntityModel)]
        #[sea_orm(table_name = "records")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub id: String,
            pub subject_id: String,
            pub school_id: String,
            pub record_type: String,
            pub version: i64,
            pub state: String,
            pub created_at: DateTimeUtc,
            pub updated_at: DateTimeUtc,
        }
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}
        impl ActiveModelBehavior for ActiveModel {}
    }
    pub mod record_field {
        use sea_orm::entity::prelude::*;
        #[derive(Clone, Debug, DeriveEntityModel)]
        #[sea_orm(table_name = "record_fields")]
        pub struct Model {
            #[sea_orm(primary_key, auto_increment = false)]
            pub record_id: String,
            #[sea_orm(primary_key, auto_increment = false)]
            pub field: String,
            pub category: String,
            pub ciphertext: Vec<u8>,
        }
        #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
        pub enum Relation {}
        impl Related<super::record::Entity> for Entity {
            fn to() -> RelationDef {
                Entity::belongs_to(super::record::Entity)
                    .from(Column::RecordId)
                    .to(super::record::Column::Id)
                    .into()
            }
        }
        impl ActiveModelBehavior for ActiveModel {}
    }
}

async fn bare_read(db: web::Data<DatabaseConnection>, id: web::Path<String>) -> HttpResponse {
    use bare::{record, record_field};
    let rows = match record_field::Entity::find()
        .filter(record_field::Column::RecordId.eq(id.as_str()))
        .find_also_related(record::Entity)
        .all(db.get_ref())
        .await
    {
        Ok(rows) => rows,
        Err(e) => return HttpResponse::InternalServerError().body(e.to_string()),
    };
    let Some((_, Some(r))) = rows.first() else {
        return HttpResponse::NotFound().finish();
    };
    let fields: BTreeMap<&str, String> = rows
        .iter()
        .map(|(f, _)| (f.field.as_str(), hex::encode(&f.ciphertext)))
        .collect();
    HttpResponse::Ok().json(serde_json::json!({
        "id": r.id,
        "subject": r.subject_id,
        "school": r.school_id,
        "record_type": r.record_type,
        "version": r.version,
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "fields": fields,
    }))
}

async fn serve_bare(data_url: &str, listen: &str) -> anyhow::Result<()> {
    let db = Database::connect(data_url)
        .await
        .context("cannot connect to the data store")?;
    let data = web::Data::new(db);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/v1/records/{id}", web::get().to(bare_read))
    })
    .bind(listen)
    .with_context(|| format!("cannot listen on {listen}"))?;
    for addr in server.addrs() {
        println!("listening on http://{addr}");
    }
    server.run().await?;
    Ok(())
}

/// One text field per category, from categories whose retention starts when the subject leaves
/// (so a sweep after `left` finds them all due).
fn fields_for(vault: &Vault, n: usize) -> anyhow::Result<Vec<(FieldName, Category)>> {
    let catalog = vault.catalog();
    let rt = catalog
        .record_type(&RecordType::parse("student")?)
        .context("the catalog has no student record type")?;
    let mut out: Vec<(FieldName, Category)> = Vec::new();
    for f in rt.fields() {
        let leaves = catalog
            .category(&f.category)
            .and_then(|c| c.retention.as_ref())
            .is_some_and(|r| matches!(r.trigger, RetentionTrigger::LeftSchool));
        if f.field_type == FieldType::Text && leaves && !out.iter().any(|(_, c)| *c == f.category) {
            out.push((f.name.clone(), f.category.clone()));
        }
    }
    if out.len() < n {
        bail!(
            "the student record type has only {} suitable categories",
            out.len()
        );
    }
    out.truncate(n);
    Ok(out)
}

async fn fixture(
    kind: Fixture,
    count: u64,
    cfg: StoreConfig,
    identity: PathBuf,
    policies: PathBuf,
) -> anyhow::Result<()> {
    let stores = Stores::open(&cfg).await?;
    let policy = Arc::new(Policy::load_dir(&policies).await?);
    let vault = Vault::open(stores, policy, Unlock::identity_file(&identity)?).await?;
    let started = Instant::now();
    let student = RecordType::parse("student")?;
    let school = SchoolId::parse("school-1")?;
    match kind {
        Fixture::Rewrap | Fixture::Sweep => {
            // Rewrap: six DEKs per record; sweep: records of three categories.
            let (per_record, records) = match kind {
                Fixture::Rewrap => (6, count.div_ceil(6)),
                _ => (3, count),
            };
            let fields: BTreeMap<FieldName, FieldValue> = fields_for(&vault, per_record)?
                .into_iter()
                .map(|(n, _)| {
                    (
                        n,
                        FieldValue::text("bench value of about sixty bytes, a name or an address"),
                    )
                })
                .collect();
            const PER_SUBJECT: u64 = 100;
            let mut written = 0u64;
            while written < records {
                let subj = vault
                    .create_subject(NewSubject {
                        school: school.clone(),
                        kind: SubjectKind::Student,
                        iin: None,
                    })
                    .await?;
                let n = PER_SUBJECT.min(records - written);
                let mut writes = futures_util::stream::iter(0..n)
                    .map(|_| vault.write_record(subj.id, &student, &fields))
                    .buffer_unordered(64);
                while let Some(r) = writes.next().await {
                    r?;
                }
                if matches!(kind, Fixture::Sweep) {
                    let long_ago = "1990-06-30T00:00:00Z".parse()?;
                    vault.mark_left("bench", subj.id, long_ago).await?;
                }
                written += n;
            }
        }
        Fixture::Audit => {
            let mut appends = futures_util::stream::iter(0..count)
                .map(|i| vault.record_operator_event("bench", "bench.event", format!("entry {i}")))
                .buffer_unordered(512);
            while let Some(r) = appends.next().await {
                r?;
            }
        }
    }
    println!(
        "{}",
        serde_json::json!({ "count": count, "seconds": started.elapsed().as_secs_f64() })
    );
    Ok(())
}

/// Nanoseconds per value: pgp_sym_decrypt inside PostgreSQL (no transfer of the values), and
/// the vault's open of the same values, each under its own DEK (the vault's worst case).
async fn pgcrypto(url: &str, values: usize, runs: usize) -> anyhow::Result<()> {
    let db = Database::connect(url)
        .await
        .context("cannot connect to PostgreSQL")?;
    db.execute_unprepared("CREATE EXTENSION IF NOT EXISTS pgcrypto")
        .await
        .context("pgcrypto is not available (the postgresql-contrib files)")?;
    db.execute_unprepared(
        "DROP TABLE IF EXISTS bench_pgcrypto; CREATE TABLE bench_pgcrypto (id int, ct bytea)",
    )
    .await?;
    let value = |i: usize| format!("{:-<60}{i:04}", "bench value");
    db.execute_unprepared(&format!(
        "INSERT INTO bench_pgcrypto SELECT i, pgp_sym_encrypt(rpad('bench value', 60, '-') || lpad(i::text, 4, '0'), 'bench-key') \
         FROM generate_series(0, {}) i",
        values - 1
    ))
    .await?;
    let mut pg = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let row = db
            .query_one_raw(sea_orm::Statement::from_string(
                db.get_database_backend(),
                "SELECT sum(length(pgp_sym_decrypt(ct, 'bench-key')))::bigint AS n FROM bench_pgcrypto",
            ))
            .await?
            .context("no row")?;
        let n: i64 = row.try_get("", "n")?;
        if n != (values * 64) as i64 {
            bail!("pgcrypto decrypted {n} bytes, expected {}", values * 64);
        }
        pg.push(t.elapsed().as_nanos() as f64 / values as f64);
    }
    db.execute_unprepared("DROP TABLE bench_pgcrypto").await?;

    let cat = Category::parse("identity")?;
    let keyring = Keyring::generate(std::slice::from_ref(&cat), chrono::Utc::now())?;
    let rng = ring::rand::SystemRandom::new();
    let field = FieldName::parse("full_name")?;
    let sealed: Vec<_> = (0..values)
        .map(|i| {
            let id = RecordId::new_random();
            let mut keys = RecordKeys::new(id);
            let ct = keys.seal(&keyring, &rng, &field, &cat, value(i).as_bytes())?;
            Ok((id, keys.take_new(), ct))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut vault = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut bytes = 0;
        for (id, deks, ct) in &sealed {
            let mut keys = RecordKeys::new(*id);
            for w in deks {
                keys.unwrap(&keyring, w)?;
            }
            bytes += keys.open(&field, &cat, ct).context("no key")??.len();
        }
        if bytes != values * 64 {
            bail!("the vault opened {bytes} bytes, expected {}", values * 64);
        }
        vault.push(t.elapsed().as_nanos() as f64 / values as f64);
    }
    println!(
        "{}",
        serde_json::json!({ "values": values, "pgcrypto_ns": pg, "vault_ns": vault })
    );
    Ok(())
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Bare { data_url, listen } => serve_bare(&data_url, &listen).await,
        Cmd::Fixture {
            kind,
            count,
            data_dir,
            data_url,
            keys_url,
            identity,
            policies,
        } => {
            let cfg = match (data_url, keys_url, data_dir) {
                (Some(data_url), Some(keys_url), _) => StoreConfig { data_url, keys_url },
                (None, None, Some(dir)) => StoreConfig::sqlite_dir(&dir)?,
                _ => bail!("give --data-dir, or both --data-url and --keys-url"),
            };
            fixture(kind, count, cfg, identity, policies).await
        }
        Cmd::Pgcrypto {
            pg_url,
            values,
            runs,
        } => pgcrypto(&pg_url, values, runs).await,
    }
}
