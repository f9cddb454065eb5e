//! `vaultctl audit`: verify the audit log's hash chain, and query it.

use anyhow::{Context as _, Result, bail};
use clap::Subcommand;
use vault_core::{AuditFilter, Category, PrincipalId, SubjectId};

use crate::ctx::Ctx;
use crate::output::{Format, outln};
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
    /// Give a subject's audit entries with inclusion proofs under a checkpoint of the whole log
    /// signed now (C2SP tlog-checkpoint), as an auditor (--token-file); with --since, also the
    /// proof that the log extends an older checkpoint you kept. Refused over a log that does
    /// not verify. Check the result with `vaultctl audit check-proof` (or any RFC 6962 tool).
    ///
    /// Example: vaultctl audit prove --subject 67e55044-10b1-426f-9247-bb680e5fe0c8 --since kept.checkpoint --out proof.json --identity custodian.txt --token-file auditor.token
    Prove {
        #[arg(long, value_parser = parse::subject_id)]
        subject: SubjectId,
        /// A checkpoint kept from an earlier proof (the "checkpoint" text of its JSON, or the
        /// file --checkpoint-out wrote).
        #[arg(long)]
        since: Option<std::path::PathBuf>,
        /// Write the proof here (JSON) instead of standard output.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Also write the new signed checkpoint alone here, to keep for the next --since.
        #[arg(long)]
        checkpoint_out: Option<std::path::PathBuf>,
    },
    /// Print the audit public keys (oldest first) as note verifier keys, for an outside auditor
    /// who checks proofs.
    ///
    /// Example: vaultctl audit public-key --identity custodian.txt > audit.vkey
    PublicKey,
    /// Check a proof from `vaultctl audit prove` with the audit public keys alone: the
    /// checkpoint's signature, each entry's inclusion and the consistency proof. Needs no
    /// stores, keyring or policies; exit code 1 and what failed if the proof does not hold.
    ///
    /// Example: vaultctl audit check-proof proof.json --public-key-file audit.vkey --since kept.checkpoint
    CheckProof(CheckProofArgs),
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
        /// text: columns for a person; json: one JSON object per line, for a script.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

#[derive(clap::Args, Debug)]
pub struct CheckProofArgs {
    /// The proof (JSON) written by `vaultctl audit prove`.
    proof: std::path::PathBuf,
    /// A file of note verifier keys, one per line, oldest first, as `vaultctl audit public-key`
    /// prints them: the proof's checkpoint must be signed by the last (a retired key signs
    /// nothing new); an older kept checkpoint by any.
    #[arg(long, required_unless_present = "public_key")]
    public_key_file: Option<std::path::PathBuf>,
    /// A note verifier key (name+keyid+base64); may be given more than once, oldest first,
    /// after those of --public-key-file.
    #[arg(long)]
    public_key: Vec<String>,
    /// Your own copy of an older checkpoint: the proof must show the log extends it.
    #[arg(long)]
    since: Option<std::path::PathBuf>,
}

fn read(path: &std::path::Path, what: &str) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} {}", path.display()))
}

/// `vaultctl audit check-proof`: no store is opened.
pub fn check_proof(a: CheckProofArgs, out: &mut String) -> Result<()> {
    let mut keys = Vec::new();
    if let Some(f) = &a.public_key_file {
        for line in read(f, "the public key file")?.lines() {
            if !line.trim().is_empty() {
                keys.push(vault_core::NoteKey::parse(line)?);
            }
        }
    }
    for k in &a.public_key {
        keys.push(vault_core::NoteKey::parse(k)?);
    }
    if keys.is_empty() {
        bail!(
            "no public key given: pass --public-key-file with the output of vaultctl audit public-key"
        );
    }
    let proof: vault_core::AuditProof = serde_json::from_str(&read(&a.proof, "the proof")?)
        .with_context(|| {
            format!(
                "{} is not a proof written by vaultctl audit prove",
                a.proof.display()
            )
        })?;
    let since = a
        .since
        .as_deref()
        .map(|p| read(p, "the checkpoint"))
        .transpose()?;
    let c = vault_core::check_audit_proof(&proof, &keys, since.as_deref())
        .context("the proof does not hold")?;
    outln!(
        out,
        "proof holds: {} entries of subject {} included in the tree of {} entries of {}",
        c.entries,
        c.subject.as_deref().unwrap_or("-"),
        c.size,
        c.origin
    );
    if let Some(old) = c.extends {
        if since.is_some() {
            outln!(
                out,
                "the tree extends your checkpoint of {old} entries: nothing it covers was changed or removed"
            );
        } else {
            outln!(
                out,
                "the tree extends the proof's own checkpoint of {old} entries (not yours: give --since with the copy you kept)"
            );
        }
    }
    Ok(())
}

pub async fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    match cmd {
        // `Cli::run` answers it before loading the policies; here for a whole match.
        Cmd::CheckProof(a) => return check_proof(a, out),
        Cmd::PublicKey => {
            let vault = ctx.vault().await?;
            for k in vault.audit_public_keys() {
                outln!(out, "{k}");
            }
        }
        Cmd::Prove {
            subject,
            since,
            out: to,
            checkpoint_out,
        } => {
            let since = since
                .as_deref()
                .map(|p| read(p, "the checkpoint"))
                .transpose()?;
            let vault = ctx.vault().await?;
            let proof = ctx
                .session(&vault)
                .await?
                .audit_proof(subject, since.as_deref())
                .await?;
            let json = serde_json::to_string_pretty(&proof)?;
            if let Some(p) = &checkpoint_out {
                std::fs::write(p, &proof.checkpoint)
                    .with_context(|| format!("writing the checkpoint to {}", p.display()))?;
            }
            match &to {
                Some(p) => {
                    std::fs::write(p, format!("{json}\n"))
                        .with_context(|| format!("writing the proof to {}", p.display()))?;
                }
                None => outln!(out, "{json}"),
            }
        }
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
            match format {
                Format::Json => {
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
                Format::Text => {
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
            }
        }
    }
    Ok(())
}
