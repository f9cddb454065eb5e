//! `vaultctl`: the key custodian's and privacy officer's command line. It works on the stores
//! and the keyring directly; no server needs to run, and it is safe while servers serve.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, NaiveDate, Utc};
use clap::{Args, Parser, Subcommand};
use vault_core::{
    AuditFilter, BearerToken, Catalog, Category, CustodianRecipient, Passphrase, Policy,
    PrincipalId, Role, Scope, SealTo, Session, StoreConfig, Stores, SubjectId, Unlock, Vault,
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
    /// The custodian's age identity file (from age-keygen) that unseals the keyring.
    #[arg(long, global = true, env = "VAULT_IDENTITY")]
    identity: Option<PathBuf>,
    /// A file whose first line is the keyring's passphrase (to seal it at init, or to unseal).
    #[arg(long, global = true, env = "VAULT_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    /// Commands that read or export personal data (transfer, incident) act as a named
    /// principal: a file whose first line is that person's token (or set VAULT_TOKEN).
    #[arg(long, global = true, env = "VAULT_TOKEN_FILE")]
    token_file: Option<PathBuf>,
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
    /// Check the catalog of approved data and the access policy.
    #[command(subcommand)]
    Catalog(CatalogCmd),
    /// Manage the keyring: init, status, rotation, recipients.
    #[command(subcommand)]
    Keyring(KeyringCmd),
    /// Manage principals (staff and school apps) and their tokens.
    #[command(subcommand)]
    Principal(PrincipalCmd),
    /// Verify and query the audit log.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Breach response.
    #[command(subcommand)]
    Incident(IncidentCmd),
    /// Retention: what expires when, legal holds, and the crypto-shredding sweep.
    #[command(subcommand)]
    Retention(RetentionCmd),
    /// Cross-border transfers: check, export, grounds, the disclosure ledger.
    #[command(subcommand)]
    Transfer(TransferCmd),
    /// Back up both stores, consistently and online, encrypted to the custodians' age keys.
    ///
    /// Example: vaultctl backup --out /backups/vault-2026-11-27
    Backup {
        /// A new folder for the backup.
        #[arg(long)]
        out: PathBuf,
    },
    /// Replace both stores with a backup, then re-apply every shred made after it. Stop the
    /// servers first.
    ///
    /// Example: vaultctl restore --from /backups/vault-2026-11-27 --identity custodian.txt --force
    Restore {
        #[arg(long)]
        from: PathBuf,
        /// Confirms that every row of both stores is replaced.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args, Debug)]
struct TransferArgs {
    #[arg(long)]
    subject: String,
    /// Destination country, ISO 3166-1 alpha-2 (e.g. DE).
    #[arg(long)]
    to: String,
    /// Comma-separated categories, e.g. identity,academic.
    #[arg(long, value_delimiter = ',')]
    categories: Vec<String>,
    /// Who receives the data.
    #[arg(long)]
    recipient: String,
    #[arg(long)]
    purpose: String,
}

#[derive(Subcommand, Debug)]
enum TransferCmd {
    /// Is this transfer abroad lawful? Prints allowed or refused and the rule that decided;
    /// exit code 0 when allowed, 3 when refused.
    ///
    /// Example: vaultctl transfer check --subject 67e5... --to DE --categories identity,academic --recipient "Partner school" --purpose education
    Check(TransferArgs),
    /// Check, then write the allowed categories as a package encrypted to the recipient's age
    /// key and record it in the subject's disclosure ledger. Exit code 3 when refused.
    ///
    /// Example: vaultctl transfer export --subject 67e5... --to DE --categories identity,academic --recipient "Partner school" --purpose education --recipient-key age1... --out package.age
    Export {
        #[command(flatten)]
        t: TransferArgs,
        /// The recipient's age public key.
        #[arg(long)]
        recipient_key: String,
        /// Where to write the package; an existing file is not overwritten.
        #[arg(long)]
        out: PathBuf,
    },
    /// Record an Art. 16(3) ground for a subject's transfers to a country.
    ///
    /// Example: vaultctl transfer ground --subject 67e5... --to RU --ground ratified_treaty --reference "Treaty No. 12"
    Ground {
        #[arg(long)]
        subject: String,
        #[arg(long)]
        to: String,
        #[arg(long)]
        ground: String,
        #[arg(long)]
        reference: String,
    },
    /// A subject's disclosure ledger: to whom, where, what, why, on which basis, when.
    ///
    /// Example: vaultctl transfer ledger --subject 67e5... --identity custodian.txt
    Ledger {
        #[arg(long)]
        subject: String,
    },
}

fn transfer_request(t: &TransferArgs) -> Result<vault_core::TransferRequest> {
    Ok(vault_core::TransferRequest {
        subject: SubjectId::parse(&t.subject)?,
        to: vault_core::Country::parse(&t.to)?,
        categories: t
            .categories
            .iter()
            .map(|c| Category::parse(c.trim()))
            .collect::<Result<_, _>>()?,
        recipient: t.recipient.clone(),
        purpose: vault_core::Purpose::parse(&t.purpose)?,
    })
}

/// A refused transfer is an answer, not a failure: it gets its own exit code.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

#[derive(Subcommand, Debug)]
enum RetentionCmd {
    /// Record that a subject left the school: most retention periods run from this date.
    ///
    /// Example: vaultctl retention left --subject 67e55044-... --on 2026-06-30 --identity custodian.txt
    Left {
        #[arg(long)]
        subject: String,
        #[arg(long)]
        on: String,
    },
    /// List what expires when, per record and category, with the rule and any legal hold.
    ///
    /// Example: vaultctl retention plan --until 2027-12-31 --identity custodian.txt
    Plan {
        /// Only what expires by this date.
        #[arg(long)]
        until: Option<String>,
    },
    /// Crypto-shred everything expired and not held: keys destroyed, ciphertext deleted, a shred
    /// certificate per record in the audit log. Safe to stop and run again.
    ///
    /// Example: vaultctl retention sweep --dry-run --identity custodian.txt
    Sweep {
        /// Show what would be shredded, shred nothing.
        #[arg(long)]
        dry_run: bool,
        /// Records planned at a time. Memory grows with it: a sweep of 100,000 records peaks at
        /// about 35 MiB with the default, 85 MiB with 10,000.
        #[arg(long, default_value_t = vault_core::PLAN_PAGE,
              value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
        records_per_page: u64,
    },
    /// Legal holds: exempt a subject or a record from sweeps.
    #[command(subcommand)]
    Hold(HoldCmd),
}

#[derive(Subcommand, Debug)]
enum HoldCmd {
    /// Example: vaultctl retention hold add --subject 67e55044-... --reason "court case 2-118/2026"
    Add {
        #[arg(long)]
        subject: String,
        /// Only this record of the subject.
        #[arg(long)]
        record: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// Example: vaultctl retention hold list --identity custodian.txt
    List,
    /// Example: vaultctl retention hold release 3f2a... --reason "case closed"
    Release {
        id: String,
        #[arg(long)]
        reason: String,
    },
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
    /// Create the keyring, sealed to custodian age recipients or to --passphrase-file. Refuses to
    /// overwrite an existing keyring.
    ///
    /// Example: vaultctl keyring init --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    Init {
        /// A custodian's public key (from `age-keygen`); repeat for several custodians.
        #[arg(long = "recipient")]
        recipients: Vec<String>,
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
    Status,
    /// Add a new version of a category's key; new data keys use it at once.
    ///
    /// Example: vaultctl keyring rotate --category health --identity custodian.txt
    Rotate {
        #[arg(long)]
        category: String,
    },
    /// Move data keys of older versions onto the newest, in batches. Field data is never
    /// decrypted. Safe to stop (Ctrl-C, a crash) and run again: it continues where it stopped.
    ///
    /// Example: vaultctl keyring rewrap --category health --identity custodian.txt
    Rewrap {
        /// Only this category (default: all).
        #[arg(long)]
        category: Option<String>,
        /// Data keys per transaction.
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
    /// Destroy an old key version. Refused while any data key still uses it.
    ///
    /// Example: vaultctl keyring retire --category health --version 1 --identity custodian.txt
    Retire {
        #[arg(long)]
        category: String,
        #[arg(long)]
        version: u32,
    },
    /// Add, remove or list the custodians the keyring is sealed to (re-encrypts only the keyring).
    #[command(subcommand)]
    Recipient(RecipientCmd),
    /// Remove orphan data keys: keys whose record the data store does not hold, left by a
    /// create that died between its two commits. They open nothing; this only tidies.
    ///
    /// Example: vaultctl keyring gc --dry-run --identity custodian.txt
    Gc {
        /// Only keys made more than this many hours ago (at least 1), so no create in flight
        /// is touched.
        #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..=87_600))]
        older_than_hours: u32,
        /// Count the orphans, remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RecipientCmd {
    /// Example: vaultctl keyring recipient add age1... --identity custodian.txt
    Add { recipient: String },
    /// Example: vaultctl keyring recipient remove age1... --identity custodian.txt
    Remove { recipient: String },
    /// Example: vaultctl keyring recipient list --identity custodian.txt
    List,
}

#[derive(Subcommand, Debug)]
enum PrincipalCmd {
    /// Create a principal; its token is printed once and never again.
    ///
    /// Example: vaultctl principal add --name "Nurse Aigul" --role nurse@school-1 --identity custodian.txt
    Add {
        #[arg(long)]
        name: String,
        /// ROLE@SCHOOL, or ROLE@* for the whole network; repeatable.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
    },
    /// The list of persons with access (Order 179/НҚ): names, roles, created, revoked.
    ///
    /// Example: vaultctl principal list --identity custodian.txt
    List,
    /// Revoke a principal's token at once, on every server.
    ///
    /// Example: vaultctl principal revoke 67e55044-10b1-426f-9247-bb680e5fe0c8 --identity custodian.txt
    Revoke { id: String },
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Check the hash chain and signed checkpoints; exit code 1 and the first bad entry if not.
    ///
    /// Example: vaultctl audit verify --identity custodian.txt
    Verify,
    /// List audit entries, oldest first.
    ///
    /// Example: vaultctl audit log --subject 67e55044-10b1-426f-9247-bb680e5fe0c8 --since 2026-09-01
    Log {
        #[arg(long)]
        subject: Option<String>,
        /// A principal id.
        #[arg(long)]
        principal: Option<String>,
        #[arg(long)]
        category: Option<String>,
        /// allowed, denied, approval_required, done, refused.
        #[arg(long)]
        outcome: Option<String>,
        /// RFC 3339 time or a date (YYYY-MM-DD, from midnight UTC).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

#[derive(Subcommand, Debug)]
enum IncidentCmd {
    /// Every subject whose data a principal touched in a window, with what is needed to notify
    /// them, and the deadline for telling the authorised body (1 working day after detection).
    ///
    /// Example: vaultctl incident report --principal 67e55044-... --since 2026-11-20 --format csv
    Report {
        #[arg(long)]
        principal: String,
        #[arg(long)]
        since: String,
        /// Default: now.
        #[arg(long)]
        until: Option<String>,
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
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

fn passphrase(path: &PathBuf) -> Result<Passphrase> {
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

fn review_line(catalog: &Catalog) -> String {
    let p = catalog.policy();
    let today = Utc::now().date_naive();
    if p.review_overdue(today) {
        format!(
            "WARNING: the policy review was due {} and is overdue",
            p.review_due()
        )
    } else {
        format!("policy review due {}", p.review_due())
    }
}

fn time(s: &str, what: &str) -> Result<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
        .with_context(|| {
            format!("--{what} {s:?} is not a time: use 2026-11-27 or 2026-11-27T09:00:00Z")
        })
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

struct Ctx {
    cli_stores: StoreArgs,
    identity: Option<PathBuf>,
    passphrase_file: Option<PathBuf>,
    token_file: Option<PathBuf>,
}

impl Ctx {
    async fn stores(&self) -> Result<Stores> {
        Stores::open(&store_config(&self.cli_stores)?)
            .await
            .context("opening the stores")
    }
    fn unlock(&self) -> Result<Unlock> {
        match (&self.identity, &self.passphrase_file) {
            (Some(i), _) => Ok(Unlock::identity_file(i)?),
            (None, Some(p)) => Ok(Unlock::Passphrase(passphrase(p)?)),
            (None, None) => bail!(
                "this command unseals the keyring: give --identity FILE (or --passphrase-file FILE)"
            ),
        }
    }
    async fn vault(&self, policy: Policy) -> Result<Vault> {
        let unlock = self.unlock()?;
        Ok(Vault::open(self.stores().await?, Arc::new(policy), unlock).await?)
    }
    /// The person this command acts as. The custodian's identity only unseals the keyring: what
    /// may be read or sent is decided for this principal, as for a request to the server.
    async fn session<'v>(&self, vault: &'v Vault) -> Result<Session<'v>> {
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
    fn reseal_passphrase(&self) -> Result<Option<Passphrase>> {
        self.passphrase_file.as_ref().map(passphrase).transpose()
    }
}

async fn run(cli: Cli, out: &mut String) -> Result<()> {
    let policy = Policy::load_dir(&cli.policies)
        .await
        .context("loading the policies")?;
    let ctx = Ctx {
        cli_stores: cli.stores,
        identity: cli.identity,
        passphrase_file: cli.passphrase_file,
        token_file: cli.token_file,
    };
    match cli.command {
        Command::Catalog(CatalogCmd::Check) => {
            let catalog = policy.catalog();
            outln!(
                out,
                "catalog OK: {} record types, {} categories ({} collected), {} purposes",
                catalog.record_types().count(),
                catalog.categories().count(),
                catalog.collected_categories().count(),
                catalog.purposes().count()
            );
            outln!(out, "policy OK: {} grants", policy.grants().len());
            outln!(out, "{}", review_line(catalog));
        }
        Command::Keyring(KeyringCmd::Init { recipients }) => {
            let seal_to = match (&ctx.passphrase_file, recipients.is_empty()) {
                (Some(f), true) => SealTo::Passphrase(passphrase(f)?, None),
                (None, false) => SealTo::Recipients(
                    recipients
                        .iter()
                        .map(|r| CustodianRecipient::parse(r))
                        .collect::<Result<_, _>>()?,
                ),
                (Some(_), false) => bail!("seal to recipients or to a passphrase, not both"),
                (None, true) => {
                    bail!("name at least one --recipient age1... (or --passphrase-file)")
                }
            };
            let stores = ctx.stores().await?;
            Vault::init_keyring(&stores, policy.catalog(), &seal_to, Utc::now()).await?;
            outln!(
                out,
                "keyring created with a key for each of {} categories",
                policy.catalog().collected_categories().count()
            );
        }
        Command::Keyring(KeyringCmd::Export { out: path }) => {
            let stores = ctx.stores().await?;
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
        Command::Keyring(KeyringCmd::Status) => {
            let vault = ctx.vault(policy).await?;
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
        Command::Keyring(KeyringCmd::Rotate { category }) => {
            let vault = ctx.vault(policy).await?;
            let c = Category::parse(&category)?;
            let v = vault.rotate_kek(&c, ctx.reseal_passphrase()?).await?;
            outln!(
                out,
                "{c}: version {v} is now used for new data keys; run `vaultctl keyring rewrap --category {c}` to move the old ones"
            );
        }
        Command::Keyring(KeyringCmd::Rewrap { category, batch }) => {
            let vault = ctx.vault(policy).await?;
            let c = category.as_deref().map(Category::parse).transpose()?;
            let mut report = |p: vault_core::RewrapProgress| {
                eprint!("\rrewrapped {} data keys, {} left   ", p.moved, p.remaining);
            };
            let done = vault.rewrap(c.as_ref(), batch, &mut report).await?;
            eprintln!();
            outln!(
                out,
                "rewrapped {} data keys; {} left on older versions",
                done.moved,
                done.remaining
            );
        }
        Command::Keyring(KeyringCmd::Retire { category, version }) => {
            let vault = ctx.vault(policy).await?;
            let c = Category::parse(&category)?;
            vault
                .retire_kek(&c, version, ctx.reseal_passphrase()?)
                .await?;
            outln!(out, "{c}: version {version} destroyed");
        }
        Command::Keyring(KeyringCmd::Gc {
            older_than_hours,
            dry_run,
        }) => {
            let vault = ctx.vault(policy).await?;
            let r = vault
                .collect_orphan_deks(
                    chrono::Duration::hours(i64::from(older_than_hours)),
                    dry_run,
                )
                .await?;
            outln!(
                out,
                "{} orphan data keys {} of {} older than {older_than_hours} hours",
                r.orphans,
                if dry_run {
                    "found (dry run, none removed)"
                } else {
                    "removed"
                },
                r.checked
            );
        }
        Command::Keyring(KeyringCmd::Recipient(cmd)) => {
            let vault = ctx.vault(policy).await?;
            match cmd {
                RecipientCmd::Add { recipient } => {
                    vault
                        .add_recipient(CustodianRecipient::parse(&recipient)?)
                        .await?;
                    outln!(out, "the keyring is now also sealed to {recipient}");
                }
                RecipientCmd::Remove { recipient } => {
                    vault
                        .remove_recipient(&CustodianRecipient::parse(&recipient)?)
                        .await?;
                    outln!(out, "the keyring is no longer sealed to {recipient}");
                }
                RecipientCmd::List => {
                    for r in vault.recipients().await? {
                        outln!(out, "{r}");
                    }
                }
            }
        }
        Command::Principal(cmd) => {
            let vault = ctx.vault(policy).await?;
            match cmd {
                PrincipalCmd::Add { name, roles } => {
                    let mut parsed = Vec::new();
                    for r in &roles {
                        let (role, school) = r.split_once('@').with_context(|| {
                            format!("--role {r:?}: write ROLE@SCHOOL, e.g. nurse@school-1")
                        })?;
                        parsed.push((
                            Scope::parse(school).with_context(|| format!("--role {r:?}"))?,
                            Role::parse(role).map_err(anyhow::Error::msg)?,
                        ));
                    }
                    let (p, token) = vault.create_principal(&name, &parsed).await?;
                    outln!(out, "principal {} created", p.id());
                    outln!(
                        out,
                        "token (shown once; give it to its holder now): {}",
                        token.expose()
                    );
                }
                PrincipalCmd::List => {
                    outln!(
                        out,
                        "{:<36}  {:<30}  {:<10}  {:<10}  ROLES",
                        "ID",
                        "NAME",
                        "CREATED",
                        "REVOKED"
                    );
                    for e in vault.list_principals().await? {
                        let roles: Vec<String> = e
                            .principal
                            .roles()
                            .iter()
                            .map(|(s, r)| format!("{r}@{}", s.as_str()))
                            .collect();
                        outln!(
                            out,
                            "{:<36}  {:<30}  {:<10}  {:<10}  {}",
                            e.principal.id(),
                            e.principal.name(),
                            e.created_at.format("%Y-%m-%d"),
                            e.revoked_at
                                .map(|t| t.format("%Y-%m-%d").to_string())
                                .unwrap_or_else(|| "-".into()),
                            roles.join(" ")
                        );
                    }
                }
                PrincipalCmd::Revoke { id } => {
                    vault.revoke_principal(PrincipalId::parse(&id)?).await?;
                    outln!(out, "principal {id} revoked");
                }
            }
        }
        Command::Audit(AuditCmd::Verify) => {
            let vault = ctx.vault(policy).await?;
            let r = vault.verify_audit().await?;
            match r.problem {
                None => outln!(
                    out,
                    "audit log intact: {} entries, {} signed checkpoints",
                    r.entries,
                    r.checkpoints
                ),
                Some(p) => bail!("the audit log was tampered with: {p}"),
            }
        }
        Command::Audit(AuditCmd::Log {
            subject,
            principal,
            category,
            outcome,
            since,
            until,
            format,
        }) => {
            let vault = ctx.vault(policy).await?;
            let f = AuditFilter {
                subject: subject.as_deref().map(SubjectId::parse).transpose()?,
                actor: principal
                    .as_deref()
                    .map(|p| PrincipalId::parse(p).map(|p| p.to_string()))
                    .transpose()?,
                category: category.as_deref().map(Category::parse).transpose()?,
                outcome,
                since: since.as_deref().map(|s| time(s, "since")).transpose()?,
                until: until.as_deref().map(|s| time(s, "until")).transpose()?,
            };
            let entries = vault.audit_query(&f).await?;
            match format.as_str() {
                "json" => {
                    for e in entries {
                        outln!(
                            out,
                            "{}",
                            serde_json::json!({"seq": e.seq, "at": e.at, "actor": e.actor, "action": e.action,
                            "school": e.school, "subject": e.subject, "record": e.record, "categories": e.categories,
                            "purpose": e.purpose, "outcome": e.outcome, "reason": e.reason})
                        );
                    }
                }
                "text" => {
                    for e in entries {
                        outln!(
                            out,
                            "{:>6} {} {:<36} {:<22} {:<18} {} {}",
                            e.seq,
                            e.at.format("%Y-%m-%d %H:%M:%S"),
                            e.actor,
                            e.action,
                            e.outcome,
                            e.categories.join(","),
                            e.reason.unwrap_or_default()
                        );
                    }
                }
                other => bail!("--format {other:?}: use text or json"),
            }
        }
        Command::Backup { out: dir } => {
            let stores = ctx.stores().await?;
            let m = vault_core::backup(&stores, &dir, ctx.reseal_passphrase()?.as_ref()).await?;
            let total: u64 = m.rows.values().sum();
            outln!(
                out,
                "backed up {total} rows of {} tables to {}",
                m.rows.len(),
                dir.display()
            );
            outln!(
                out,
                "keep the key-store part (keys.jsonl.age) for 7 days at most: it can bring back data shredded after it was taken"
            );
        }
        Command::Restore { from, force } => {
            if !force {
                bail!(
                    "restore replaces every row of both stores with the backup's: stop the servers, then run again with --force"
                );
            }
            let unlock = ctx.unlock()?;
            let stores = ctx.stores().await?;
            let r = vault_core::restore(&stores, &from, &unlock).await?;
            let vault = Vault::open(stores, Arc::new(policy), unlock).await?;
            vault
                .record_operator_event(
                    "custodian",
                    "backup.restore",
                    format!(
                        "from {}; {} shreds re-applied",
                        from.display(),
                        r.shreds_replayed
                    ),
                )
                .await?;
            outln!(
                out,
                "restored {} rows; re-applied {} shreds made after the backup",
                r.rows,
                r.shreds_replayed
            );
        }
        Command::Transfer(cmd) => {
            let vault = ctx.vault(policy).await?;
            let session = ctx.session(&vault).await?;
            match cmd {
                TransferCmd::Check(t) => {
                    match session.check_transfer(&transfer_request(&t)?).await? {
                        vault_core::TransferDecision::Allowed { rule, notify_by } => {
                            outln!(out, "allowed: {rule}");
                            if let Some(d) = notify_by {
                                outln!(out, "the subject must be told of the transfer by {d}");
                            }
                        }
                        vault_core::TransferDecision::Refused { rule } => {
                            return Err(Refused(rule).into());
                        }
                    }
                }
                TransferCmd::Export {
                    t,
                    recipient_key,
                    out: path,
                } => {
                    let key = CustodianRecipient::parse(&recipient_key)?;
                    if path.exists() {
                        bail!(
                            "{} exists: choose a new file for the package",
                            path.display()
                        );
                    }
                    let (decision, package) = session
                        .export_transfer(&transfer_request(&t)?, &key)
                        .await?;
                    match decision {
                        vault_core::TransferDecision::Refused { rule } => {
                            return Err(Refused(rule).into());
                        }
                        vault_core::TransferDecision::Allowed { rule, notify_by } => {
                            let mut f = std::fs::OpenOptions::new()
                                .write(true)
                                .create_new(true)
                                .open(&path)
                                .with_context(|| format!("cannot create {}", path.display()))?;
                            std::io::Write::write_all(&mut f, &package)
                                .and_then(|_| f.sync_all())?;
                            outln!(
                                out,
                                "exported to {} ({}): {rule}",
                                t.recipient,
                                t.to.to_uppercase()
                            );
                            outln!(
                                out,
                                "package: {} ({} bytes, encrypted to {recipient_key})",
                                path.display(),
                                package.len()
                            );
                            if let Some(d) = notify_by {
                                outln!(out, "the subject must be told of the transfer by {d}");
                            }
                        }
                    }
                }
                TransferCmd::Ground {
                    subject,
                    to,
                    ground,
                    reference,
                } => {
                    session
                        .record_transfer_ground(
                            SubjectId::parse(&subject)?,
                            &vault_core::Country::parse(&to)?,
                            &ground,
                            &reference,
                        )
                        .await?;
                    outln!(
                        out,
                        "ground {ground} recorded for transfers to {}",
                        to.to_uppercase()
                    );
                }
                TransferCmd::Ledger { subject } => {
                    for d in session.disclosures(SubjectId::parse(&subject)?).await? {
                        outln!(
                            out,
                            "{}  {}  {}  {}  {}  {}  notify by {}",
                            d.at.format("%Y-%m-%d %H:%M"),
                            d.country,
                            d.recipient,
                            d.categories.join(","),
                            d.purpose,
                            d.basis,
                            d.notify_by
                                .map(|x| x.to_string())
                                .unwrap_or_else(|| "-".into())
                        );
                    }
                }
            }
        }
        Command::Retention(cmd) => {
            let vault = ctx.vault(policy).await?;
            match cmd {
                RetentionCmd::Left { subject, on } => {
                    let s = SubjectId::parse(&subject)?;
                    vault.mark_left("custodian", s, time(&on, "on")?).await?;
                    outln!(out, "subject {s} left on {on}");
                }
                RetentionCmd::Plan { until } => {
                    let until = until
                        .as_deref()
                        .map(|u| time(u, "until"))
                        .transpose()?
                        .map(|t| t.date_naive());
                    outln!(
                        out,
                        "{:<10}  {:<36}  {:<18}  {:<6}  RULE",
                        "EXPIRES",
                        "RECORD",
                        "CATEGORY",
                        "HELD"
                    );
                    for i in vault.retention_plan().await? {
                        if until.is_some_and(|u| i.expires_on > u) {
                            continue;
                        }
                        outln!(
                            out,
                            "{:<10}  {:<36}  {:<18}  {:<6}  {}",
                            i.expires_on,
                            i.record,
                            i.category,
                            if i.held { "held" } else { "-" },
                            i.rule
                        );
                    }
                }
                RetentionCmd::Sweep {
                    dry_run,
                    records_per_page,
                } => {
                    // Each chunk's records go to stdout as soon as the chunk is committed: the
                    // list can be long, and if the sweep is stopped it tells what was done.
                    let verb = if dry_run { "would shred" } else { "shredded" };
                    let stdout = std::io::stdout();
                    let mut reported = false;
                    let mut report = |p: &vault_core::SweepProgress<'_>| {
                        use std::io::Write as _;
                        let mut lines = String::new();
                        for (rid, cats) in p.shredded {
                            let cats: Vec<&str> = cats.iter().map(|c| c.as_str()).collect();
                            outln!(lines, "{verb} {rid}: {}", cats.join(","));
                        }
                        let mut o = stdout.lock();
                        let _ = o.write_all(lines.as_bytes()).and_then(|_| o.flush());
                        eprint!(
                            "\rchecked {}/{} records; {verb} {}   ",
                            p.records_checked, p.records_total, p.records
                        );
                        reported = true;
                    };
                    let opts = vault_core::SweepOptions {
                        dry_run,
                        records_per_page,
                    };
                    let r = vault.sweep(opts, &mut report).await?;
                    if reported {
                        eprintln!();
                    }
                    outln!(
                        out,
                        "{} records {}; {} expired items kept under legal hold",
                        r.records,
                        if dry_run {
                            "would be shredded (dry run)"
                        } else {
                            "shredded"
                        },
                        r.held
                    );
                }
                RetentionCmd::Hold(HoldCmd::Add {
                    subject,
                    record,
                    reason,
                }) => {
                    let h = vault
                        .place_hold(
                            "custodian",
                            SubjectId::parse(&subject)?,
                            record
                                .as_deref()
                                .map(vault_core::RecordId::parse)
                                .transpose()?,
                            &reason,
                        )
                        .await?;
                    outln!(out, "hold {} placed", h.id);
                }
                RetentionCmd::Hold(HoldCmd::List) => {
                    for h in vault.holds().await? {
                        outln!(
                            out,
                            "{}  subject {}  record {}  {}  {}",
                            h.id,
                            h.subject,
                            h.record
                                .map(|r| r.to_string())
                                .unwrap_or_else(|| "(all)".into()),
                            if h.released_at.is_some() {
                                "released"
                            } else {
                                "active"
                            },
                            h.reason
                        );
                    }
                }
                RetentionCmd::Hold(HoldCmd::Release { id, reason }) => {
                    vault.release_hold("custodian", &id, &reason).await?;
                    outln!(out, "hold {id} released");
                }
            }
        }
        Command::Incident(IncidentCmd::Report {
            principal,
            since,
            until,
            format,
        }) => {
            let vault = ctx.vault(policy).await?;
            let p = PrincipalId::parse(&principal)?;
            let since = time(&since, "since")?;
            let until = until
                .as_deref()
                .map(|u| time(u, "until"))
                .transpose()?
                .unwrap_or_else(Utc::now);
            let r = ctx
                .session(&vault)
                .await?
                .incident_report(p, since, until)
                .await?;
            match format.as_str() {
                "json" => {
                    let subjects: Vec<_> = r.subjects.iter().map(|s| serde_json::json!({
                        "subject": s.subject.id.to_string(), "school": s.subject.school.as_str(), "kind": s.subject.kind.as_str(),
                        "categories": s.categories, "first_access": s.first, "last_access": s.last, "accesses": s.accesses,
                        "contacts": s.contacts })).collect();
                    outln!(
                        out,
                        "{}",
                        serde_json::to_string_pretty(&serde_json::json!({
                        "principal": r.principal.to_string(), "since": r.since, "until": r.until, "detected_at": r.detected_at,
                        "notify_authority_by": r.notify_authority_by, "subjects": subjects }))?
                    );
                }
                "csv" => {
                    outln!(
                        out,
                        "subject,school,kind,categories,first_access,last_access,accesses,full_name,iin,phones,address,guardians"
                    );
                    for s in &r.subjects {
                        let c = |k: &str| {
                            s.contacts
                                .get(k)
                                .map(|v| {
                                    v.as_str()
                                        .map(str::to_owned)
                                        .unwrap_or_else(|| v.to_string())
                                })
                                .unwrap_or_default()
                        };
                        outln!(
                            out,
                            "{},{},{},{},{},{},{},{},{},{},{},{}",
                            s.subject.id,
                            s.subject.school,
                            s.subject.kind,
                            csv(&s.categories.iter().cloned().collect::<Vec<_>>().join(";")),
                            s.first.to_rfc3339(),
                            s.last.to_rfc3339(),
                            s.accesses,
                            csv(&c("full_name")),
                            csv(&c("iin")),
                            csv(&c("phones")),
                            csv(&c("address")),
                            csv(&c("guardians"))
                        );
                    }
                    eprintln!(
                        "notify the authorised body by {} (1 working day after detection)",
                        r.notify_authority_by
                    );
                }
                other => bail!("--format {other:?}: use json or csv"),
            }
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
        Err(e) if e.downcast_ref::<Refused>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
