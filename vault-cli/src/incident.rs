//! `vaultctl incident`: breach response.

use anyhow::{Result, bail};
use chrono::Utc;
use clap::Subcommand;
use vault_core::PrincipalId;

use crate::ctx::Ctx;
use crate::output::{csv, outln};
use crate::parse::{self, Time};

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Every subject whose data a principal touched in a window, with what is needed to notify
    /// them, and the deadline for telling the authorised body (1 working day after detection).
    ///
    /// Example: vaultctl incident report --principal 67e55044-... --since 2026-11-20 --format csv
    Report {
        #[arg(long, value_parser = parse::principal_id)]
        principal: PrincipalId,
        #[arg(long, value_parser = parse::time("since"))]
        since: Time,
        /// Default: now.
        #[arg(long, value_parser = parse::time("until"))]
        until: Option<Time>,
        /// json or csv.
        #[arg(long, default_value = "json")]
        format: String,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    let Cmd::Report {
        principal,
        since,
        until,
        format,
    } = cmd;
    let vault = ctx.vault().await?;
    let until = until.map_or_else(Utc::now, |t| t.at);
    let r = ctx
        .session(&vault)
        .await?
        .incident_report(principal, since.at, until)
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
    Ok(())
}
