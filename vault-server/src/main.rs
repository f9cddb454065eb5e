//! `vault-server`: the HTTP front of the school records vault.
//!
//! `vault-server --dev` runs on the embedded default: SQLite in `./vault-data`, a dev custodian
//! identity and keyring made on first start. Never use `--dev` for real data.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, Result, bail};
use clap::Parser;
use vault_core::{Catalog, Policy, SealTo, StoreConfig, Stores, Unlock, Vault, VaultError};

/// The school records vault's HTTP server.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Development mode: SQLite in --data-dir, a dev keyring made on first start. Not for real data.
    #[arg(long)]
    dev: bool,
    /// Folder of the embedded SQLite stores (data.db, keys.db).
    #[arg(long, env = "VAULT_DATA_DIR", default_value = "vault-data")]
    data_dir: PathBuf,
    /// Data-store URL (PostgreSQL in production); overrides --data-dir.
    #[arg(long, env = "VAULT_DATA_URL", requires = "keys_url")]
    data_url: Option<String>,
    /// Key-store URL; a separate database from the data store.
    #[arg(long, env = "VAULT_KEYS_URL", requires = "data_url")]
    keys_url: Option<String>,
    /// The custodian's age identity file that unseals the keyring.
    #[arg(long, env = "VAULT_IDENTITY")]
    identity: Option<PathBuf>,
    /// Folder of the catalog, casbin model and grants, and holidays.
    #[arg(long, env = "VAULT_POLICIES", default_value = "policies")]
    policies: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, env = "VAULT_LISTEN", default_value = "127.0.0.1:8200")]
    listen: String,
}

struct AppState {
    vault: Vault,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({ "status": "ok" }))
}

async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match state.vault.check_ready().await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        Err(e) => {
            tracing::error!(error = ?anyhow::Error::new(e), "readiness check failed");
            HttpResponse::ServiceUnavailable()
                .content_type("application/problem+json")
                .json(serde_json::json!({
                    "type": "about:blank",
                    "title": "Service unavailable",
                    "status": 503,
                    "code": "not_ready",
                    "detail": "a store is unreachable; see the server log",
                }))
        }
    }
}

/// In dev mode, makes the custodian identity and keyring on first start.
async fn dev_keyring(
    stores: &Stores,
    catalog: &Catalog,
    data_dir: &std::path::Path,
) -> Result<PathBuf> {
    let identity = data_dir.join("dev-custodian.txt");
    match Vault::sealed_keyring(stores).await {
        Ok(_) => Ok(identity),
        Err(VaultError::KeyringMissing) => {
            let recipient = Unlock::generate_identity_file(&identity)
                .with_context(|| format!("creating the dev identity {}", identity.display()))?;
            Vault::init_keyring(
                stores,
                catalog,
                &SealTo::Recipients(vec![recipient]),
                chrono::Utc::now(),
            )
            .await
            .context("creating the dev keyring")?;
            eprintln!(
                "DEV MODE: made a new keyring sealed to {}",
                identity.display()
            );
            Ok(identity)
        }
        Err(e) => Err(e).context("reading the keyring"),
    }
}

async fn run(args: Args) -> Result<()> {
    let policy = Policy::load_dir(&args.policies)
        .await
        .context("loading the policies")?;
    let catalog = policy.catalog();
    let today = chrono::Utc::now().date_naive();
    if catalog.policy().review_overdue(today) {
        tracing::warn!(
            due = %catalog.policy().review_due(),
            "the data-protection policy's review is overdue: review it and update policies/catalog.toml"
        );
    }
    let config = match (&args.data_url, &args.keys_url) {
        (Some(d), Some(k)) => StoreConfig {
            data_url: d.clone(),
            keys_url: k.clone(),
        },
        _ => StoreConfig::sqlite_dir(&args.data_dir)?,
    };
    let stores = Stores::open(&config).await.context("opening the stores")?;
    let identity = if args.dev {
        eprintln!("==================================================================");
        eprintln!(
            " DEV MODE: SQLite in {}, a dev keyring on local disk.",
            args.data_dir.display()
        );
        eprintln!(" Never store real personal data in a dev vault.");
        eprintln!("==================================================================");
        dev_keyring(&stores, catalog, &args.data_dir).await?
    } else {
        match args.identity {
            Some(p) => p,
            None => bail!(
                "no custodian identity: pass --identity FILE (or VAULT_IDENTITY), or --dev to try the vault"
            ),
        }
    };
    let unlock = Unlock::identity_file(&identity)?;
    let vault = Vault::open(stores, Arc::new(policy), &unlock)
        .await
        .context("unsealing the keyring")?;
    drop(unlock);

    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let state = web::Data::new(AppState { vault });
    tracing::info!(%addr, "vault-server listening");
    println!("listening on http://{addr}");
    HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
    })
    .listen(listener)?
    .run()
    .await?;
    Ok(())
}

#[actix_web::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VAULT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("error: {e}");
        for cause in e.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
        std::process::exit(1);
    }
}
