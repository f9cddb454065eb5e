//! `vaultctl audit`: verify the audit log's hash chain, and query it.

use anyhow::{Result, bail};
use clap::Subcommand;
use vault_core::{AuditFilter, Category, PrincipalId, SubjectId};

use crate::ctx::Ctx;
use crate::output::outln;
use crate::parse::{self, Time};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Check the hash chain and signed checkpoints against the anchor in the key store (and the
    /// witness file, if given); exit code 1 and the first bad entry, or the missing tail, if not.
    ///
    /// Example: vaultctl audit verify --identity custodian.txt --witness /mnt/witness/vault-1.jsonl
    Verify {
        /// A server's audit witness file (one JSON line per anchor): the log must hold the
        /// entry its newest line names, with that hash.
        #[arg(long, env = "VAULT_AUDIT_WITNESS")]
        witness: Option<std::path::PathBuf>,
    },
    /// List audit entries, oldest first, as an auditor (--token-file or VAULT_TOKEN): the
    /// entries of the schools where that auditor reads the log; the query is itself audited.
    ///
    /// Example: vaultctl audit log --subject 67e55044-10b1-426f-9247-bb680e5fe0c8 --since 2026-09-01 --token-file auditor.token
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
        Cmd::Verify { witness } => {
            if let Some(w) = &witness
                && !w.is_file()
            {
                bail!("the witness file {} does not exist", w.display());
            }
            let vault = ctx.vault().await?;
            if witness.is_some() {
                vault
                    .configure_audit_anchors(vault_core::AnchorOptions {
                        witness_file: witness,
                        ..Default::default()
                    })
                    .await?;
            }
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
            let entries = ctx.session(&vault).await?.audit_log(&f).await?;
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
