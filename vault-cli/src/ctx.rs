//! What the commands share: the global options, the policies, the stores, unsealing the
//! keyring, and the principal a command acts as.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;
use vault_core::{BearerToken, Passphrase, Policy, Session, StoreConfig, Stores, Unlock, Vault};

// The options every command takes. (No doc comment: on a flattened struct it would be help text.)
#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
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
    /// The custodian's age identity file (from age-keygen) that unseals the keyring. For a
    /// keyring sealed M-of-N, repeat it once per custodian present.
    #[arg(long, global = true, env = "VAULT_IDENTITY")]
    identity: Vec<PathBuf>,
    /// A file whose first line is the keyring's passphrase (to seal it at init, or to unseal).
    #[arg(long, global = true, env = "VAULT_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    /// Commands that read or export personal data (transfer, incident) act as a named
    /// principal: a file whose first line is that person's token (or set VAULT_TOKEN).
    #[arg(long, global = true, env = "VAULT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// No progress bars on standard error (they are drawn only on a terminal anyway).
    #[arg(long, short, global = true, env = "VAULT_QUIET")]
    quiet: bool,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
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

impl StoreArgs {
    fn config(&self) -> Result<StoreConfig> {
        Ok(match (&self.data_url, &self.keys_url) {
            (Some(d), Some(k)) => StoreConfig {
                data_url: d.clone(),
                keys_url: k.clone(),
            },
            (None, None) => StoreConfig::sqlite_dir(&self.data_dir)?,
            _ => bail!("give both --data-url and --keys-url, or neither (to use --data-dir)"),
        })
    }
}

/// The context a command runs in: the global options and the loaded policies.
pub struct Ctx {
    stores: StoreArgs,
    identity: Vec<PathBuf>,
    passphrase_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
    quiet: bool,
    policy: Arc<Policy>,
}

impl Ctx {
    /// Loads the policies: every command checks them first, whatever it goes on to do.
    pub async fn new(a: GlobalArgs) -> Result<Ctx> {
        let policy = Policy::load_dir(&a.policies)
            .await
            .context("loading the policies")?;
        Ok(Ctx {
            stores: a.stores,
            identity: a.identity,
            passphrase_file: a.passphrase_file,
            token_file: a.token_file,
            quiet: a.quiet,
            policy: Arc::new(policy),
        })
    }

    /// A progress bar for a long job; hidden with --quiet or off a terminal.
    pub fn progress(&self, what: &'static str, unit: &'static str) -> crate::output::Progress {
        crate::output::Progress::new(self.quiet, what, unit)
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    /// The --passphrase-file given, if any.
    pub fn passphrase_file(&self) -> Option<&Path> {
        self.passphrase_file.as_deref()
    }

    pub async fn stores(&self) -> Result<Stores> {
        Stores::open(&self.stores.config()?)
            .await
            .context("opening the stores")
    }

    pub fn unlock(&self) -> Result<Unlock> {
        match (self.identity.is_empty(), &self.passphrase_file) {
            (false, _) => Ok(Unlock::identity_files(&self.identity)?),
            (true, Some(p)) => Ok(Unlock::Passphrase(passphrase(p)?)),
            (true, None) => bail!(
                "this command unseals the keyring: give --identity FILE (or --passphrase-file FILE)"
            ),
        }
    }

    pub async fn vault(&self) -> Result<Vault> {
        let unlock = self.unlock()?;
        Ok(Vault::open(self.stores().await?, Arc::clone(&self.policy), unlock).await?)
    }

    /// Whether a token was given (--token-file or VAULT_TOKEN) for the commands that act as a
    /// principal when one is given.
    pub fn has_token(&self) -> bool {
        self.token_file.is_some()
            || std::env::var("VAULT_TOKEN").is_ok_and(|t| !t.trim().is_empty())
    }

    /// The person this command acts as. The custodian's identity only unseals the keyring: what
    /// may be read or sent is decided for this principal, as for a request to the server.
    pub async fn session<'v>(&self, vault: &'v Vault) -> Result<Session<'v>> {
        let token = match (&self.token_file, std::env::var("VAULT_TOKEN")) {
            (Some(f), _) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the token file {}", f.display()))?;
                BearerToken::new(text.lines().next().unwrap_or(""))
            }
            (None, Ok(t)) if !t.trim().is_empty() => BearerToken::new(&t),
            _ => bail!(
                "this command reads personal data, so it acts as a named principal: give --token-file FILE (or VAULT_TOKEN) with the token `vaultctl principal add` printed for that person"
            ),
        };
        vault
            .sign_in(&token)
            .await
            .context("the token is unknown or revoked")
    }

    /// The passphrase to seal the keyring to again after a change, when it is sealed to one.
    pub fn reseal_passphrase(&self) -> Result<Option<Passphrase>> {
        self.passphrase_file().map(passphrase).transpose()
    }
}

/// The first line of a passphrase file, at least 12 characters.
pub fn passphrase(path: &Path) -> Result<Passphrase> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the passphrase file {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.len() < 12 {
        bail!(
            "the passphrase in {} is shorter than 12 characters",
            path.display()
        );
    }
    Ok(Passphrase::new(line))
}
