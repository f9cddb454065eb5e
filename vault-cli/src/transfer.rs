//! `vaultctl transfer`: cross-border transfers, their grounds, and the disclosure ledger.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use vault_core::{
    Category, Country, CustodianRecipient, Purpose, SubjectId, TransferDecision, TransferRequest,
};

use crate::ctx::Ctx;
use crate::output::{Format, json_line, outln};
use crate::parse;

#[derive(Args, Debug)]
pub struct TransferArgs {
    #[arg(long, value_parser = parse::subject_id)]
    subject: SubjectId,
    /// Destination country, ISO 3166-1 alpha-2 (e.g. DE).
    #[arg(long, value_parser = parse::country)]
    to: Country,
    /// Comma-separated categories, e.g. identity,academic.
    #[arg(long, value_delimiter = ',', value_parser = parse::listed_category)]
    categories: Vec<Category>,
    /// Who receives the data.
    #[arg(long)]
    recipient: String,
    #[arg(long, value_parser = parse::purpose)]
    purpose: Purpose,
}

impl TransferArgs {
    fn request(&self) -> TransferRequest {
        TransferRequest {
            subject: self.subject,
            to: self.to.clone(),
            categories: self.categories.clone(),
            recipient: self.recipient.clone(),
            purpose: self.purpose.clone(),
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
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
        #[arg(long, value_parser = parse::subject_id)]
        subject: SubjectId,
        #[arg(long, value_parser = parse::country)]
        to: Country,
        #[arg(long)]
        ground: String,
        #[arg(long)]
        reference: String,
    },
    /// A subject's disclosure ledger: to whom, where, what, why, on which basis, when.
    ///
    /// Example: vaultctl transfer ledger --subject 67e5... --identity custodian.txt
    Ledger {
        #[arg(long, value_parser = parse::subject_id)]
        subject: SubjectId,
        /// text: columns for a person; json: one JSON object per line, for a script.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

/// A refused transfer is an answer, not a failure: it gets its own exit code (3, see `main`).
#[derive(Debug)]
pub struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused: {}", self.0)
    }
}

impl std::error::Error for Refused {}

pub async fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    let vault = ctx.vault().await?;
    let session = ctx.session(&vault).await?;
    match cmd {
        Cmd::Check(t) => match session.check_transfer(&t.request()).await? {
            TransferDecision::Allowed { rule, notify_by } => {
                outln!(out, "allowed: {rule}");
                if let Some(d) = notify_by {
                    outln!(out, "the subject must be told of the transfer by {d}");
                }
            }
            TransferDecision::Refused { rule } => {
                return Err(Refused(rule).into());
            }
        },
        Cmd::Export {
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
            let (decision, package) = session.export_transfer(&t.request(), &key).await?;
            match decision {
                TransferDecision::Refused { rule } => {
                    return Err(Refused(rule).into());
                }
                TransferDecision::Allowed { rule, notify_by } => {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .open(&path)
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    std::io::Write::write_all(&mut f, &package).and_then(|_| f.sync_all())?;
                    outln!(out, "exported to {} ({}): {rule}", t.recipient, t.to);
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
        Cmd::Ground {
            subject,
            to,
            ground,
            reference,
        } => {
            session
                .record_transfer_ground(subject, &to, &ground, &reference)
                .await?;
            outln!(out, "ground {ground} recorded for transfers to {to}");
        }
        Cmd::Ledger {
            subject,
            format: Format::Json,
        } => {
            for d in session.disclosures(subject).await? {
                json_line(
                    out,
                    &serde_json::json!({"at": d.at, "country": d.country.to_string(),
                        "recipient": d.recipient, "categories": d.categories, "purpose": d.purpose.to_string(),
                        "basis": d.basis.to_string(), "notify_by": d.notify_by.map(|x| x.to_string())}),
                );
            }
        }
        Cmd::Ledger {
            subject,
            format: Format::Text,
        } => {
            for d in session.disclosures(subject).await? {
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
    Ok(())
}
