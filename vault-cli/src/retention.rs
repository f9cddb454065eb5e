//! `vaultctl retention`: what expires when, legal holds, and the crypto-shredding sweep.

use anyhow::Result;
use clap::Subcommand;
use serde_json::json;
use vault_core::{RecordId, SubjectId};

use crate::ctx::Ctx;
use crate::output::{Format, json_line, outln};
use crate::parse::{self, Time};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Record that a subject left the school: most retention periods run from this date. Acts
    /// as a principal granted `left` in the subject's school (admissions, HR, the director or
    /// the privacy officer); a date in the future is refused.
    ///
    /// Example: vaultctl retention left --subject 67e55044-... --on 2026-06-30 --identity custodian.txt --token-file admissions.token
    Left {
        #[arg(long, value_parser = parse::subject_id)]
        subject: SubjectId,
        #[arg(long, value_parser = parse::time("on"))]
        on: Time,
    },
    /// List what expires when, per record and category, with the rule and any legal hold.
    ///
    /// Example: vaultctl retention plan --until 2027-12-31 --identity custodian.txt
    Plan {
        /// Only what expires by this date.
        #[arg(long, value_parser = parse::time("until"))]
        until: Option<Time>,
        /// text: columns for a person; json: one JSON object per line, for a script.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
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
    /// Legal holds: exempt a subject or a record from sweeps. Acts as a principal granted
    /// `hold` in the subject's school (the director or the privacy officer).
    #[command(subcommand)]
    Hold(HoldCmd),
}

#[derive(Subcommand, Debug)]
pub enum HoldCmd {
    /// Example: vaultctl retention hold add --subject 67e55044-... --reason "court case 2-118/2026" --token-file privacy.token
    Add {
        #[arg(long, value_parser = parse::subject_id)]
        subject: SubjectId,
        /// Only this record of the subject.
        #[arg(long, value_parser = parse::record_id)]
        record: Option<RecordId>,
        #[arg(long)]
        reason: String,
    },
    /// Example: vaultctl retention hold list --identity custodian.txt
    List {
        /// text: columns for a person; json: one JSON object per line, for a script.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Example: vaultctl retention hold release 3f2a... --reason "case closed"
    Release {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    let vault = ctx.vault().await?;
    match cmd {
        Cmd::Left { subject: s, on } => {
            ctx.session(&vault).await?.mark_left(s, on.at).await?;
            outln!(out, "subject {s} left on {}", on.given);
        }
        Cmd::Plan {
            until,
            format: Format::Json,
        } => {
            let until = until.map(|t| t.at.date_naive());
            for i in vault.retention_plan().await? {
                if until.is_some_and(|u| i.expires_on > u) {
                    continue;
                }
                json_line(
                    out,
                    &json!({"expires_on": i.expires_on, "record": i.record.to_string(),
                            "category": i.category.to_string(), "held": i.held, "rule": i.rule.to_string()}),
                );
            }
        }
        Cmd::Plan {
            until,
            format: Format::Text,
        } => {
            let until = until.map(|t| t.at.date_naive());
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
        Cmd::Sweep {
            dry_run,
            records_per_page,
        } => {
            // Each chunk's records go to stdout as soon as the chunk is committed: the
            // list can be long, and if the sweep is stopped it tells what was done.
            let verb = if dry_run { "would shred" } else { "shredded" };
            let stdout = std::io::stdout();
            let bar = ctx.progress("sweep", "records checked");
            let mut report = |p: &vault_core::SweepProgress<'_>| {
                use std::io::Write as _;
                let mut lines = String::new();
                for (rid, cats) in p.shredded {
                    let cats: Vec<&str> = cats.iter().map(|c| c.as_str()).collect();
                    outln!(lines, "{verb} {rid}: {}", cats.join(","));
                }
                // Printed above the bar, so the bar is not torn by the lines.
                bar.suspend(|| {
                    let mut o = stdout.lock();
                    let _ = o.write_all(lines.as_bytes()).and_then(|_| o.flush());
                });
                bar.set(p.records_checked, Some(p.records_total));
            };
            let opts = vault_core::SweepOptions {
                dry_run,
                records_per_page,
            };
            let r = vault.sweep(opts, &mut report).await;
            bar.finish();
            let r = r?;
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
        Cmd::Hold(HoldCmd::Add {
            subject,
            record,
            reason,
        }) => {
            let h = ctx
                .session(&vault)
                .await?
                .place_hold(subject, record, &reason)
                .await?;
            outln!(out, "hold {} placed", h.id);
        }
        Cmd::Hold(HoldCmd::List {
            format: Format::Json,
        }) => {
            for h in ctx.session(&vault).await?.holds().await? {
                json_line(
                    out,
                    &json!({"id": h.id.to_string(), "subject": h.subject.to_string(),
                            "record": h.record.map(|r| r.to_string()),
                            "active": h.released_at.is_none(), "released_at": h.released_at,
                            "reason": h.reason}),
                );
            }
        }
        Cmd::Hold(HoldCmd::List {
            format: Format::Text,
        }) => {
            for h in ctx.session(&vault).await?.holds().await? {
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
        Cmd::Hold(HoldCmd::Release { id, reason }) => {
            ctx.session(&vault)
                .await?
                .release_hold(&id, &reason)
                .await?;
            outln!(out, "hold {id} released");
        }
    }
    Ok(())
}
