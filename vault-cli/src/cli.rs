//! The command tree: the global options and one subcommand per command group.

use anyhow::{Context as _, Result};
use clap::{CommandFactory as _, Parser, Subcommand};

use crate::ctx::{Ctx, GlobalArgs};
use crate::output::outln;
use crate::{audit, backup, catalog, incident, keyring, principal, retention, transfer};

#[derive(Parser, Debug)]
#[command(
    name = "vaultctl",
    version,
    about = "Custodian and privacy-officer tool of the school records vault"
)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check the catalog of approved data and the access policy.
    #[command(subcommand)]
    Catalog(catalog::Cmd),
    /// Manage the keyring: init, status, rotation, recipients.
    #[command(subcommand)]
    Keyring(keyring::Cmd),
    /// Manage principals (staff and school apps) and their tokens.
    #[command(subcommand)]
    Principal(principal::Cmd),
    /// Verify and query the audit log.
    #[command(subcommand)]
    Audit(audit::Cmd),
    /// Breach response.
    #[command(subcommand)]
    Incident(incident::Cmd),
    /// Retention: what expires when, legal holds, and the crypto-shredding sweep.
    #[command(subcommand)]
    Retention(retention::Cmd),
    /// Cross-border transfers: check, export, grounds, the disclosure ledger.
    #[command(subcommand)]
    Transfer(transfer::Cmd),
    /// Back up both stores, consistently and online, encrypted to the custodians' age keys.
    ///
    /// Example: vaultctl backup --out /backups/vault-2026-11-27
    Backup(backup::BackupArgs),
    /// Replace both stores with a backup, then re-apply every shred made after it. Stop the
    /// servers first.
    ///
    /// Example: vaultctl restore --from /backups/vault-2026-11-27 --identity custodian.txt --force
    Restore(backup::RestoreArgs),
    /// Print a shell completion script.
    ///
    /// Example: vaultctl completions bash > /etc/bash_completion.d/vaultctl
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page vaultctl(1), or with --out write it and one page per subcommand
    /// (vaultctl-keyring-rotate.1, ...) into a folder.
    ///
    /// Example: vaultctl man --out /usr/local/share/man/man1
    Man {
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
}

impl Cli {
    /// Runs the command; what it prints goes to `out`, written out by `main` when it ends.
    pub async fn run(self, out: &mut String) -> Result<()> {
        // Checking a proof needs the audit public key alone: no policies, stores or keyring.
        // Nor do the completions and the manual: they are the command tree itself.
        match self.command {
            Command::Audit(audit::Cmd::CheckProof(args)) => return audit::check_proof(args, out),
            Command::Completions { shell } => {
                let mut buf = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "vaultctl", &mut buf);
                out.push_str(&String::from_utf8_lossy(&buf));
                return Ok(());
            }
            Command::Man { out: Some(dir) } => {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                clap_mangen::generate_to(Cli::command(), &dir)
                    .with_context(|| format!("writing the manual pages into {}", dir.display()))?;
                // The folder may hold other programs' pages (a system man1): count ours.
                let pages = std::fs::read_dir(&dir)?
                    .filter_map(|e| e.ok())
                    .filter(|e| {
                        let name = e.file_name().to_string_lossy().into_owned();
                        name.starts_with("vaultctl") && name.ends_with(".1")
                    })
                    .count();
                outln!(out, "wrote {pages} manual pages into {}", dir.display());
                return Ok(());
            }
            Command::Man { out: None } => {
                let mut buf = Vec::new();
                clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
                out.push_str(&String::from_utf8_lossy(&buf));
                return Ok(());
            }
            _ => {}
        }
        let ctx = Ctx::new(self.global).await?;
        match self.command {
            Command::Catalog(cmd) => catalog::run(cmd, &ctx, out),
            Command::Keyring(cmd) => keyring::run(cmd, &ctx, out).await,
            Command::Principal(cmd) => principal::run(cmd, &ctx, out).await,
            Command::Audit(cmd) => audit::run(cmd, &ctx, out).await,
            Command::Incident(cmd) => incident::run(cmd, &ctx, out).await,
            Command::Retention(cmd) => retention::run(cmd, &ctx, out).await,
            Command::Transfer(cmd) => transfer::run(cmd, &ctx, out).await,
            Command::Backup(args) => backup::backup(args, &ctx, out).await,
            Command::Restore(args) => backup::restore(args, &ctx, out).await,
            Command::Completions { .. } | Command::Man { .. } => Ok(()),
        }
    }
}
