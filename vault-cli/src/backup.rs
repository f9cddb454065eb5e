//! `vaultctl backup` and `vaultctl restore`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use vault_core::Vault;

use crate::ctx::Ctx;
use crate::output::outln;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// A new folder for the backup.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    #[arg(long)]
    from: PathBuf,
    /// Confirms that every row of both stores is replaced.
    #[arg(long)]
    force: bool,
}

pub async fn backup(args: BackupArgs, ctx: &Ctx, out: &mut String) -> Result<()> {
    let dir = args.out;
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
    Ok(())
}

pub async fn restore(args: RestoreArgs, ctx: &Ctx, out: &mut String) -> Result<()> {
    let RestoreArgs { from, force } = args;
    if !force {
        bail!(
            "restore replaces every row of both stores with the backup's: stop the servers, then run again with --force"
        );
    }
    let unlock = ctx.unlock()?;
    let stores = ctx.stores().await?;
    let r = vault_core::restore(&stores, &from, &unlock).await?;
    let vault = Vault::open(stores, ctx.policy().clone(), unlock).await?;
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
    Ok(())
}
