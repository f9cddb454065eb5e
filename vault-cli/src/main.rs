//! `vaultctl`: the key custodian's and privacy officer's command line. It works on the stores
//! and the keyring directly; no server needs to run.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use vault_core::{
    Catalog, CustodianRecipient, Passphrase, Policy, SealTo, StoreConfig, Stores, Unlock, Vault,
};

#[derive(Parser, Debug)]
#[command(
    name = "vaultctl",
    version,
    about = "Custodian and privacy-officer tool of the school records vault"
)]
struct Cli {
    #[command(flatten)]
    stores: StoreArgs,
    /// Folder of the catalog, casbin model and grants, and holidays.
    #[arg(
        long,
        global = true,
        env = "VAULT_POLICIES",
        default_value = "policies"
    )]
    policies: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug)]
struct StoreArgs {
    /// Folder of the embedded SQLite stores.
    #[arg(
        long,
        global = true,
        env = "VAULT_DATA_DIR",
        default_value = "vault-data"
    )]
    data_dir: PathBuf,
    /// Data-store URL (PostgreSQL); overrides --data-dir.
    #[arg(long, global = true, env = "VAULT_DATA_URL")]
    data_url: Option<String>,
    /// Key-store URL (PostgreSQL); overrides --data-dir.
    #[arg(long, global = true, env = "VAULT_KEYS_URL")]
    keys_url: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the catalog of approved data.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Manage the keyring.
    #[command(subcommand)]
    Keyring(KeyringCmd),
}

#[derive(Subcommand, Debug)]
enum CatalogCmd {
    /// Validate the catalog and the access policy, and summarise them.
    ///
    /// Example: vaultctl catalog check --policies policies
    Check,
}

#[derive(Subcommand, Debug)]
enum KeyringCmd {
    /// Create the keyring, sealed to custodian age recipients or a passphrase. Refuses to
    /// overwrite an existing keyring.
    ///
    /// Example: vaultctl keyring init --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    Init {
        /// A custodian's public key (from `age-keygen`); repeat for several custodians.
        #[arg(long = "recipient", required_unless_present = "passphrase_file")]
        recipients: Vec<String>,
        /// Seal to the passphrase in this file instead (first line).
        #[arg(long, conflicts_with = "recipients")]
        passphrase_file: Option<PathBuf>,
    },
    /// Write the sealed keyring (an age file) for an off-site emergency copy. It stays sealed:
    /// only a custodian's identity opens it, e.g. with `age -d -i custodian.txt keyring.age`.
    ///
    /// Example: vaultctl keyring export --out /media/usb/keyring-2026-11.age
    Export {
        /// Where to write it; an existing file is not overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show categories, KEK versions, DEK counts per version and the policy review date.
    ///
    /// Example: vaultctl keyring status --identity custodian.txt
    Status {
        /// The custodian's age identity file.
        #[arg(long, env = "VAULT_IDENTITY")]
        identity: PathBuf,
    },
}

/// Collects output so that a closed pipe (`vaultctl ... | head`) ends quietly instead of panicking.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}

fn store_config(a: &StoreArgs) -> Result<StoreConfig> {
    Ok(match (&a.data_url, &a.keys_url) {
        (Some(d), Some(k)) => StoreConfig {
            data_url: d.clone(),
            keys_url: k.clone(),
        },
        (None, None) => StoreConfig::sqlite_dir(&a.data_dir)?,
        _ => bail!("give both --data-url and --keys-url, or neither (to use --data-dir)"),
    })
}

fn review_line(catalog: &Catalog) -> String {
    let p = catalog.policy();
    let today = chrono::Utc::now().date_naive();
    if p.review_overdue(today) {
        format!(
            "WARNING: the policy review was due {} and is overdue",
            p.review_due()
        )
    } else {
        format!("policy review due {}", p.review_due())
    }
}

async fn run(cli: Cli, out: &mut String) -> Result<()> {
    let policy = Policy::load_dir(&cli.policies)
        .await
        .context("loading the policies")?;
    let catalog = policy.catalog().clone();
    match cli.command {
        Command::Catalog(CatalogCmd::Check) => {
            outln!(
                out,
                "catalog OK: {} record types, {} categories ({} collected), {} purposes",
                catalog.record_types().count(),
                catalog.categories().count(),
                catalog.collected_categories().count(),
                catalog.purposes().count()
            );
            outln!(out, "policy OK: {} grants", policy.grants().len());
            outln!(out, "{}", review_line(&catalog));
        }
        Command::Keyring(KeyringCmd::Init {
            recipients,
            passphrase_file,
        }) => {
            let seal_to = match passphrase_file {
                Some(f) => {
                    let text = std::fs::read_to_string(&f)
                        .with_context(|| format!("reading the passphrase file {}", f.display()))?;
                    let line = text.lines().next().unwrap_or("").to_owned();
                    if line.len() < 12 {
                        bail!(
                            "the passphrase in {} is shorter than 12 characters",
                            f.display()
                        );
                    }
                    SealTo::Passphrase(Passphrase::new(line), None)
                }
                None => SealTo::Recipients(
                    recipients
                        .iter()
                        .map(|r| CustodianRecipient::parse(r))
                        .collect::<Result<_, _>>()?,
                ),
            };
            let stores = Stores::open(&store_config(&cli.stores)?).await?;
            Vault::init_keyring(&stores, &catalog, &seal_to, chrono::Utc::now()).await?;
            outln!(
                out,
                "keyring created with a key for each of {} categories",
                catalog.collected_categories().count()
            );
        }
        Command::Keyring(KeyringCmd::Export { out: path }) => {
            let stores = Stores::open(&store_config(&cli.stores)?).await?;
            let sealed = Vault::sealed_keyring(&stores).await?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| {
                    format!("cannot create {} (it must not exist yet)", path.display())
                })?;
            std::io::Write::write_all(&mut f, &sealed)
                .and_then(|_| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            outln!(
                out,
                "wrote the sealed keyring to {} ({} bytes)",
                path.display(),
                sealed.len()
            );
        }
        Command::Keyring(KeyringCmd::Status { identity }) => {
            let stores = Stores::open(&store_config(&cli.stores)?).await?;
            let unlock = Unlock::identity_file(&identity)?;
            let vault = Vault::open(stores, Arc::new(policy), &unlock).await?;
            outln!(
                out,
                "{:<20} {:>7} {:<20} {:>8}",
                "CATEGORY",
                "VERSION",
                "CREATED",
                "DEKS"
            );
            for s in vault.key_status().await? {
                outln!(
                    out,
                    "{:<20} {:>7} {:<20} {:>8}",
                    s.kek.category,
                    s.kek.version,
                    s.kek.created.format("%Y-%m-%d %H:%M"),
                    s.deks
                );
            }
            outln!(out, "{}", review_line(vault.catalog()));
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut out = String::new();
    let result = rt.block_on(run(cli, &mut out));
    {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        if let Err(e) = stdout
            .write_all(out.as_bytes())
            .and_then(|_| stdout.flush())
            && e.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("error: cannot write output: {e}");
            return ExitCode::FAILURE;
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
