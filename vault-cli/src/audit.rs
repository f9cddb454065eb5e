//! `vaultctl audit`: verify the audit log's hash chain, and query it.

use anyhow::{Result, bail};
use clap::Subcommand;
use vault_core::{AuditFilter, Category, PrincipalId, SubjectId};

use crate::ctx::Ctx;
use crate::output::outln;
use crate::parse::{self, Time};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check the hash chain and signed checkpoints; exit code 1 and the first bad entry if not.
    ///
    /// Example: vaultctl audit verify --identity custodian.txt
    Verify,
    /// List audit entries, oldest first.
    ///
    /// Example: vaultctl audit log --subject 67e55044-10b1-426f-9247-bb680e5fe0c8 --since 2026-09-01
    Log {
        #[arg(long, value_parser = parse::subject_id)]
        subject: Option<SubjectId>,
        /// A principal id.
        #[arg(long, value_parser = parse::principal_id)]
        principal: Option<PrincipalId>,
        #[arg(long, value_parser = parse::category)]
        category: Option<Category>,
        /// allowed, denied, approval_required, done, refused.
        #[arg(long)]
        outcome: Option<String>,
        /// RFC 3339 time or a date (YYYY-MM-DD, from midnight UTC).
        #[arg(long, value_parser = parse::time("since"))]
        since: Option<Time>,
        #[arg(long, value_parser = parse::time("until"))]
        until: Option<Time>,
        /// text or json.
        #[arg(long, default_value = "text")]
        format: String,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    match cmd {
        Cmd::Verify => {
            let vault = ctx.vault().await?;
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
        Cmd::Log {
            subject,
            principal,
            category,
            outcome,
            since,
            until,
            format,
        } => {
            let vault = ctx.vault().await?;
            let f = AuditFilter {
                subject,
                actor: principal.map(|p| p.to_string()),
                category,
                outcome,
                since: since.map(|t| t.at),
                until: until.map(|t| t.at),
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
    }
    Ok(())
}
