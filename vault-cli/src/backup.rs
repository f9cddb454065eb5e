//! `vaultctl backup` and `vaultctl restore`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;
use vault_core::{RestoredAudit, Vault};

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
    /// Confirms that the stores' rows are replaced by the backup's (today's revocations,
    /// blocks, withdrawals, spent approvals, shreds and audit log are kept).
    #[arg(long)]
    force: bool,
    /// Restore even when today's audit log does not continue the backup's: its entries leave
    /// the store (written first to --audit-archive), and the restore's audit entry names the
    /// range removed.
    #[arg(long, requires = "audit_archive")]
    replace_audit_log: bool,
    /// With --replace-audit-log: a new file where the live audit log is written, sealed like a
    /// backup, before it is replaced.
    #[arg(long)]
    audit_archive: Option<PathBuf>,
}

pub async fn backup(args: BackupArgs, ctx: &Ctx, out: &mut String) -> Result<()> {
    let dir = args.out;
    let stores = ctx.stores().await?;
    let bar = ctx.progress("backup", "rows");
    let m =
        vault_core::backup_reporting(&stores, &dir, ctx.reseal_passphrase()?.as_ref(), &mut |p| {
            bar.set(p.rows, p.total)
        })
        .await;
    bar.finish();
    let m = m?;
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
    let RestoreArgs {
        from,
        force,
        replace_audit_log,
        audit_archive,
    } = args;
    if !force {
        bail!(
            "restore replaces every row of both stores with the backup's: stop the servers, then run again with --force"
        );
    }
    let unlock = ctx.unlock()?;
    let stores = ctx.stores().await?;
    let opts = vault_core::RestoreOptions {
        replace_audit_log,
        audit_archive,
    };
    let bar = ctx.progress("restore", "rows");
    let r = vault_core::restore_reporting(&stores, &from, &unlock, opts, &mut |p| {
        bar.set(p.rows, p.total)
    })
    .await;
    bar.finish();
    let r = r?;
    let vault = Vault::open(stores, ctx.policy().clone(), unlock).await?;
    let c = r.carried_over;
    let audit = match r.audit {
        RestoredAudit::Kept { since_backup } => {
            format!("audit log kept ({since_backup} entries since the backup)")
        }
        RestoredAudit::Loaded => "audit log loaded from the backup (the live one was empty)".into(),
        RestoredAudit::Replaced {
            first,
            last,
            archive,
        } => format!(
            "audit entries {first} to {last} of the replaced log were removed from the store, after being written to {}",
            archive.display()
        ),
    };
    let kept = format!(
        "kept today's {} revocations, {} blocks, {} consent withdrawals, {} approval states, {} legal holds, {} unreviewed break-glass accesses",
        c.revocations, c.blocks, c.withdrawals, c.approvals, c.holds, c.break_glass
    );
    vault
        .record_operator_event(
            "custodian",
            "backup.restore",
            format!(
                "from {}; {} shreds re-applied; {kept}; {audit}",
                from.display(),
                r.shreds_replayed
            ),
        )
        .await?;
    outln!(
        out,
        "restored {} rows; re-applied {} shreds made after the backup; {kept}; {audit}",
        r.rows,
        r.shreds_replayed
    );
    Ok(())
}
