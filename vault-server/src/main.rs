//! `vault-server`: the HTTP front of the school records vault.
//!
//! `vault-server --dev` runs on the embedded default: SQLite in `./vault-data`, a dev custodian
//! identity, keyring and principals made on first start. Never use `--dev` for real data.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix_web::{HttpServer, web};
use anyhow::{Context, Result, bail};
use clap::Parser;
use serde::Deserialize;
use vault_core::{
    Catalog, Passphrase, Policy, Role, SchoolId, Scope, SealTo, StoreConfig, Stores, Unlock,
    Unsealer, Vault, VaultError,
};

use vault_server::api::{AppState, AuthFailures};
use vault_server::limits::RequestLimit;
use vault_server::startup;
use vault_server::telemetry::{CommitMetrics, Metrics};

/// The school records vault's HTTP server. Every option can also come from a `VAULT_`
/// environment variable or the `--config` file (flags and variables win over the file).
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Args {
    /// Development mode: a dev keyring and dev principals made on first start. Not for real data.
    #[arg(long)]
    dev: bool,
    /// A TOML file with any of: listen, data_dir, data_url, keys_url, identity, passphrase_file,
    /// policies, store_country, allow_store_outside_kz, trusted_proxies, audit_witness,
    /// audit_anchor_stdout, rate_limit, rate_limit_clients.
    #[arg(long, env = "VAULT_CONFIG")]
    config: Option<PathBuf>,
    /// Folder of the embedded SQLite stores (data.db, keys.db). Default: vault-data.
    #[arg(long, env = "VAULT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Data-store URL (PostgreSQL in production); overrides --data-dir.
    #[arg(long, env = "VAULT_DATA_URL")]
    data_url: Option<String>,
    /// Key-store URL; a separate database from the data store.
    #[arg(long, env = "VAULT_KEYS_URL")]
    keys_url: Option<String>,
    /// The custodian's age identity file that unseals the keyring.
    #[arg(long, env = "VAULT_IDENTITY")]
    identity: Option<PathBuf>,
    /// A file whose first line is the passphrase the keyring is sealed to (instead of --identity).
    #[arg(long, env = "VAULT_PASSPHRASE_FILE", conflicts_with = "identity")]
    passphrase_file: Option<PathBuf>,
    /// Folder of the catalog, casbin model and grants, and holidays. Default: policies.
    #[arg(long, env = "VAULT_POLICIES")]
    policies: Option<PathBuf>,
    /// Address to listen on; port 0 picks a free port (printed at start). Default: 127.0.0.1:8200.
    #[arg(long, env = "VAULT_LISTEN")]
    listen: Option<String>,
    /// ISO 3166 code of the country where the stores are (Law 94-V Art. 12(2)). Default: KZ.
    #[arg(long, env = "VAULT_STORE_COUNTRY")]
    store_country: Option<String>,
    /// Start even though the stores are declared outside Kazakhstan (logged and audited).
    #[arg(long, env = "VAULT_ALLOW_STORE_OUTSIDE_KZ")]
    allow_store_outside_kz: bool,
    /// Address of a reverse proxy (the school's TLS terminator) whose X-Forwarded-For names the
    /// real client, for limiting failed sign-ins per client. Repeat, or comma-separate.
    #[arg(long, env = "VAULT_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxy: Vec<std::net::IpAddr>,
    /// An append-only file on another volume that gets one JSON line per audit anchor (the
    /// signed head of the audit chain, also kept in the key store); `vaultctl audit verify
    /// --witness` checks the log against it.
    #[arg(long, env = "VAULT_AUDIT_WITNESS")]
    audit_witness: Option<PathBuf>,
    /// Also print each audit anchor's JSON line on standard output, for the host's log shipper.
    #[arg(long, env = "VAULT_AUDIT_ANCHOR_STDOUT")]
    audit_anchor_stdout: bool,
    /// How log lines are written on standard error: text for a person, or json (one object per
    /// line, with the request id, route, method, status, latency and principal id) for a log
    /// shipper. Neither ever carries a value, a token or a request body.
    #[arg(long, env = "VAULT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Requests per second one client address may make to the API, with bursts of twice that;
    /// 0 turns the limit off. Over it, a client gets 429 `rate_limited` with Retry-After.
    /// Liveness, readiness, metrics and /openapi.json are never limited. Default: 500.
    #[arg(long, env = "VAULT_RATE_LIMIT")]
    rate_limit: Option<u32>,
    /// Client addresses (and tokens) each limiter remembers at most, a fixed-size entry each; when
    /// full, those not over their limit are forgotten first. Default: 100000.
    #[arg(long, env = "VAULT_RATE_LIMIT_CLIENTS")]
    rate_limit_clients: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs on standard error, filtered by `VAULT_LOG` (default `info`).
fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("VAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sea_orm_migration=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        // Colour only for a person at a terminal; a file, a pipe or journald gets plain text.
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    data_url: Option<String>,
    keys_url: Option<String>,
    identity: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    policies: Option<PathBuf>,
    store_country: Option<String>,
    allow_store_outside_kz: Option<bool>,
    trusted_proxies: Option<Vec<std::net::IpAddr>>,
    audit_witness: Option<PathBuf>,
    audit_anchor_stdout: Option<bool>,
    rate_limit: Option<u32>,
    rate_limit_clients: Option<usize>,
}

/// The settings after merging flags, environment and the config file.
struct Settings {
    dev: bool,
    listen: String,
    data_dir: PathBuf,
    stores: Option<(String, String)>,
    identity: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    policies: PathBuf,
    store_country: String,
    allow_outside: bool,
    trusted_proxies: Vec<std::net::IpAddr>,
    audit_witness: Option<PathBuf>,
    audit_anchor_stdout: bool,
    rate_limit: u32,
    rate_limit_clients: usize,
}

/// Requests per second per client address unless configured.
const DEFAULT_RATE_LIMIT: u32 = 500;
/// More than this is no limit at all: say 0.
const MAX_RATE_LIMIT: u32 = 1_000_000;

fn settings(a: Args) -> Result<Settings> {
    let f: FileConfig = match &a.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading the config file {}", p.display()))?;
            toml::from_str(&text)
                .map_err(|e| anyhow::anyhow!("{}: {}", p.display(), e.message()))?
        }
        None => FileConfig::default(),
    };
    let data_url = a.data_url.or(f.data_url);
    let keys_url = a.keys_url.or(f.keys_url);
    let stores = match (data_url, keys_url) {
        (Some(d), Some(k)) => Some((d, k)),
        (None, None) => None,
        _ => bail!(
            "give both a data-store URL and a key-store URL, or neither (to use the data folder)"
        ),
    };
    let store_country = a
        .store_country
        .or(f.store_country)
        .unwrap_or_else(|| "KZ".into())
        .to_ascii_uppercase();
    if store_country.len() != 2 || !store_country.bytes().all(|b| b.is_ascii_uppercase()) {
        bail!("store_country must be a two-letter ISO 3166 code such as KZ");
    }
    let rate_limit = a.rate_limit.or(f.rate_limit).unwrap_or(DEFAULT_RATE_LIMIT);
    if rate_limit > MAX_RATE_LIMIT {
        bail!(
            "rate_limit {rate_limit} is more than {MAX_RATE_LIMIT} requests a second per client; give a smaller number, or 0 to turn the limit off"
        );
    }
    let identity = a.identity.or(f.identity);
    let passphrase_file = a.passphrase_file.or(f.passphrase_file);
    if identity.is_some() && passphrase_file.is_some() {
        bail!(
            "both identity and passphrase_file are set (flags, VAULT_ variables or the config file): the keyring is unsealed by one of them; remove the other"
        );
    }
    Ok(Settings {
        dev: a.dev,
        listen: a
            .listen
            .or(f.listen)
            .unwrap_or_else(|| "127.0.0.1:8200".into()),
        data_dir: a
            .data_dir
            .or(f.data_dir)
            .unwrap_or_else(|| "vault-data".into()),
        stores,
        identity,
        passphrase_file,
        policies: a
            .policies
            .or(f.policies)
            .unwrap_or_else(|| "policies".into()),
        store_country,
        allow_outside: a.allow_store_outside_kz || f.allow_store_outside_kz.unwrap_or(false),
        trusted_proxies: if a.trusted_proxy.is_empty() {
            f.trusted_proxies.unwrap_or_default()
        } else {
            a.trusted_proxy
        }
        .into_iter()
        .map(|ip| ip.to_canonical())
        .collect(),
        audit_witness: a.audit_witness.or(f.audit_witness),
        audit_anchor_stdout: a.audit_anchor_stdout || f.audit_anchor_stdout.unwrap_or(false),
        rate_limit,
        rate_limit_clients: a
            .rate_limit_clients
            .or(f.rate_limit_clients)
            .unwrap_or(vault_server::limits::MAX_TRACKED),
    })
}

/// In dev mode: on first start, a custodian identity, a keyring and one principal per role of
/// the school day, whose tokens are printed once and written (owner-only) for the tour.
async fn dev_bootstrap(
    stores: &Stores,
    catalog: &Catalog,
    data_dir: &Path,
) -> Result<(PathBuf, bool)> {
    let identity = data_dir.join("dev-custodian.txt");
    match Vault::sealed_keyring(stores).await {
        Ok(_) => Ok((identity, false)),
        Err(VaultError::KeyringMissing) => {
            std::fs::create_dir_all(data_dir)?;
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
            tracing::warn!(
                "DEV MODE: made a new keyring sealed to {}",
                identity.display()
            );
            Ok((identity, true))
        }
        Err(e) => Err(e).context("reading the keyring"),
    }
}

async fn dev_principals(vault: &Vault, data_dir: &Path) -> Result<()> {
    let school = Scope::School(SchoolId::parse("school-1")?);
    let people: [(&str, &str, Scope, Role); 6] = [
        (
            "DIRECTOR",
            "Dev director (school-1)",
            school.clone(),
            Role::Director,
        ),
        ("NURSE", "Dev nurse (school-1)", school.clone(), Role::Nurse),
        (
            "ADMISSIONS",
            "Dev admissions app (school-1)",
            school.clone(),
            Role::AppAdmissions,
        ),
        (
            "PRIVACY",
            "Dev privacy officer (school-1)",
            school.clone(),
            Role::PrivacyOfficer,
        ),
        ("TEACHER", "Dev teacher (school-1)", school, Role::Teacher),
        ("AUDITOR", "Dev auditor", Scope::Network, Role::Auditor),
    ];
    let mut env =
        String::from("# Dev tokens, made once at the first --dev start. Never for real data.\n");
    // The general director is the bootstrap principal (the only one the custodian's identity
    // alone may make); it adds everyone else, as an administrator would.
    let (admin, token) = vault
        .bootstrap_principal(
            "Dev general director",
            &[(Scope::Network, Role::GeneralDirector)],
        )
        .await?;
    env.push_str(&format!(
        "export VAULT_GENERAL_DIRECTOR_TOKEN={}\n",
        token.expose()
    ));
    let admin = vault.session(admin);
    for (var, name, scope, role) in people {
        let (_, token) = admin.create_principal(name, &[(scope, role)]).await?;
        env.push_str(&format!("export VAULT_{var}_TOKEN={}\n", token.expose()));
    }
    let path = data_dir.join("dev-tokens.env");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    std::io::Write::write_all(&mut opts.open(&path)?, env.as_bytes())?;
    tracing::warn!(
        "DEV MODE: made principals for a school day; their tokens are in {0} (load them with: source {0})",
        path.display()
    );
    Ok(())
}

async fn run(args: Args) -> Result<()> {
    let s = settings(args)?;
    let policy = Policy::load_dir(&s.policies)
        .await
        .context("loading the policies")?;
    let catalog = policy.catalog();
    let today = chrono::Utc::now().date_naive();
    if catalog.policy().review_overdue(today) {
        tracing::warn!(due = %catalog.policy().review_due(),
            "the data-protection policy's review is overdue: review it and update policies/catalog.toml");
    }
    // Law 94-V Art. 12(2): personal data of citizens is stored in databases in Kazakhstan.
    let outside = s.store_country != "KZ";
    if outside && !s.allow_outside {
        bail!(
            "the stores are declared to be in {}, outside Kazakhstan (Law 94-V Art. 12(2) requires storage in Kazakhstan); \
             move them, or set allow_store_outside_kz only with a documented legal basis",
            s.store_country
        );
    }
    let config = match &s.stores {
        Some((d, k)) => StoreConfig {
            data_url: d.clone(),
            keys_url: k.clone(),
        },
        None => StoreConfig::sqlite_dir(&s.data_dir)?,
    };
    let stores = Stores::open(&config).await.context("opening the stores")?;
    let mut first_dev_start = false;
    let unlock: Option<Unlock> = if s.dev {
        tracing::warn!(
            "DEV MODE: dev keyring and tokens in {}. Never store real personal data in a dev vault.",
            s.data_dir.display()
        );
        let (id, first) = dev_bootstrap(&stores, catalog, &s.data_dir).await?;
        first_dev_start = first;
        Some(Unlock::identity_file(&id)?)
    } else {
        match (&s.identity, &s.passphrase_file) {
            (Some(p), _) => Some(Unlock::identity_file(p)?),
            (None, Some(f)) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the passphrase file {}", f.display()))?;
                Some(Unlock::Passphrase(Passphrase::new(
                    text.lines().next().unwrap_or("").to_owned(),
                )))
            }
            (None, None) => None,
        }
    };
    let policy = Arc::new(policy);
    let listener =
        TcpListener::bind(&s.listen).with_context(|| format!("cannot listen on {}", s.listen))?;
    let addr = listener.local_addr()?;
    let unsealer = Unsealer::new(stores.clone(), policy.clone(), unlock.as_ref())
        .await
        .context("reading the keyring's quorum")?;
    // A sealed start has announced its address already: that line is printed once.
    let (vault, announced) = match (unsealer, unlock) {
        (Some(u), unlock) if u.progress().await.given.len() < usize::from(u.quorum().threshold) => {
            drop(unlock);
            (serve_sealed(&listener, addr, u).await?, true)
        }
        (_, Some(unlock)) => (
            Vault::open(stores, policy, unlock)
                .await
                .context("unsealing the keyring")?,
            false,
        ),
        (_, None) => bail!(
            "no custodian identity: pass --identity FILE or --passphrase-file FILE (or VAULT_IDENTITY), or --dev to try the vault"
        ),
    };
    if s.audit_witness.is_some() || s.audit_anchor_stdout {
        vault
            .configure_audit_anchors(vault_core::AnchorOptions {
                witness_file: s.audit_witness.clone(),
                stdout: s.audit_anchor_stdout,
                ..Default::default()
            })
            .await
            .context("configuring the audit witness")?;
    }
    if first_dev_start {
        dev_principals(&vault, &s.data_dir).await?;
    }
    if outside {
        tracing::warn!(country = %s.store_country, "OVERRIDE: starting with stores declared outside Kazakhstan");
        vault
            .record_operator_event(
                "operator",
                "config.store_outside_kz",
                format!("stores declared in {}; override set", s.store_country),
            )
            .await?;
    }

    let metrics = Arc::new(Metrics::default());
    vault.observe_commits(Arc::new(CommitMetrics(metrics.clone())));
    let state = web::Data::new(AppState {
        vault,
        metrics,
        auth_failures: AuthFailures::with_capacity(s.rate_limit_clients),
        request_limit: RequestLimit::per_second(s.rate_limit, s.rate_limit_clients),
        trusted_proxies: s.trusted_proxies.clone(),
    });
    tracing::info!(%addr, "vault-server listening");
    if !announced {
        println!("listening on http://{addr}");
    }
    HttpServer::new(move || startup::app(state.clone()))
        .shutdown_timeout(30)
        // A client that has not sent its request head within 5 s, or whose connection idles, is cut.
        .client_request_timeout(std::time::Duration::from_secs(5))
        .client_disconnect_timeout(std::time::Duration::from_secs(2))
        .keep_alive(std::time::Duration::from_secs(15))
        .listen(listener)?
        .run()
        .await?;
    Ok(())
}

/// Serves the sealed app on `listener` until enough custodians have given their shares, then
/// stops it (letting the last answer go out) and hands back the opened vault. Connections that
/// arrive meanwhile wait in the listener's queue for the full app.
async fn serve_sealed(
    listener: &TcpListener,
    addr: std::net::SocketAddr,
    u: Unsealer,
) -> Result<Vault> {
    let p = u.progress().await;
    tracing::warn!(
        threshold = p.threshold,
        custodians = p.custodians,
        given = p.given.len(),
        "SEALED: the keyring is sealed to a quorum of custodians; give shares with `vaultctl keyring unseal --server http://{addr}`"
    );
    println!("listening on http://{addr}");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<vault_server::api::unseal::OpenRequest>(1);
    let state = web::Data::new(vault_server::api::unseal::SealedState {
        unsealer: u,
        open: tx,
    });
    let app_state = state.clone();
    let server = HttpServer::new(move || startup::sealed_app(app_state.clone()))
        .workers(1)
        // One request a connection: no kept-alive connection reaches the sealed app after the
        // handover.
        .keep_alive(actix_web::http::KeepAlive::Disabled)
        .client_request_timeout(std::time::Duration::from_secs(5))
        .listen(listener.try_clone()?)?
        .run();
    let handle = server.handle();
    let mut running = actix_web::rt::spawn(server);
    loop {
        tokio::select! {
            request = rx.recv() => {
                let Some((key, reply)) = request else {
                    bail!("the sealed server stopped before it was unsealed");
                };
                // Opened here, on the main runtime, where the vault's writers live on.
                match state.unsealer.open(key).await {
                    Ok(vault) => {
                        let _ = reply.send(Ok(()));
                        tracing::info!("the vault is unsealed; the full app takes over");
                        handle.stop(true).await;
                        let _ = running.await;
                        return Ok(vault);
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the quorum key was rebuilt but the vault did not open; still sealed");
                        let _ = reply.send(Err(e.to_string()));
                    }
                }
            }
            done = &mut running => {
                done.context("the sealed server failed")?.context("the sealed server failed")?;
                bail!("stopped while sealed")
            }
        }
    }
}

#[actix_web::main]
async fn main() {
    let args = Args::parse();
    let format = args.log_format;
    init_logs(format);
    if let Err(e) = run(args).await {
        if format == LogFormat::Json {
            let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
            tracing::error!(error = %e, causes = ?causes, "vault-server stopped");
        } else {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
        }
        std::process::exit(1);
    }
}
