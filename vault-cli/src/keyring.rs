//! `vaultctl keyring`: create, export, rotate, rewrap and retire keys, and the custodians the
//! keyring is sealed to.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use clap::Subcommand;
use serde_json::json;
use vault_core::{Category, CustodianRecipient, Quorum, QuorumSeal, SealTo, Vault};

use crate::ctx::{Ctx, passphrase};
use crate::output::{Format, json_line, outln, review_line};
use crate::parse;

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create the keyring, sealed to custodian age recipients or to --passphrase-file. Refuses to
    /// overwrite an existing keyring.
    ///
    /// Example: vaultctl keyring init --recipient age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p
    Init {
        /// A custodian's public key (from `age-keygen`); repeat for several custodians.
        #[arg(long = "recipient")]
        recipients: Vec<String>,
        /// Seal M-of-N: any this many of the --recipient custodians unseal it together, fewer
        /// cannot. Without it, any one custodian unseals it.
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..=32))]
        threshold: Option<u8>,
    },
    /// Seal the same keys to a new quorum of custodians (M-of-N), as a new signed generation:
    /// a new quorum key, a new share for each --recipient; old shares open nothing from then
    /// on. Every record stays readable. Running servers must be restarted and unsealed with the
    /// new shares. Also turns a keyring sealed to recipients into a quorum.
    ///
    /// Example: vaultctl keyring reshare --threshold 3 --recipient age1... (x5) --identity a.txt --identity b.txt
    Reshare {
        #[arg(long, value_parser = clap::value_parser!(u8).range(2..=32))]
        threshold: u8,
        /// A custodian's public key (from `age-keygen`); one per custodian of the new quorum.
        #[arg(long = "recipient", required = true)]
        recipients: Vec<String>,
    },
    /// Give your share to a sealed server: decrypts the share sealed to --identity (here, on
    /// this machine) and sends it to the server, which opens when enough custodians have given
    /// theirs. A share travels only over https:// or to a loopback address.
    ///
    /// Example: vaultctl keyring unseal --server http://127.0.0.1:8080 --identity custodian.txt
    Unseal {
        /// The sealed server's base URL.
        #[arg(long)]
        server: String,
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
    Status {
        /// text: columns for a person; json: one JSON object per line, for a script.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
    /// Add a new version of a category's key; new data keys use it at once.
    ///
    /// Example: vaultctl keyring rotate --category health --identity custodian.txt
    Rotate {
        #[arg(long, value_parser = parse::category)]
        category: Category,
    },
    /// Move data keys of older versions onto the newest, in batches. Field data is never
    /// decrypted. Safe to stop (Ctrl-C, a crash) and run again: it continues where it stopped.
    ///
    /// Example: vaultctl keyring rewrap --category health --identity custodian.txt
    Rewrap {
        /// Only this category (default: all).
        #[arg(long, value_parser = parse::category)]
        category: Option<Category>,
        /// Data keys per transaction.
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
    /// Destroy an old key version. Refused while any data key still uses it.
    ///
    /// Example: vaultctl keyring retire --category health --version 1 --identity custodian.txt
    Retire {
        #[arg(long, value_parser = parse::category)]
        category: Category,
        #[arg(long)]
        version: u32,
    },
    /// Rotate the blind-index key, under which subjects' IINs are kept (as an HMAC) for search:
    /// makes a new key (a new signed generation), re-indexes every subject from the IIN its
    /// records hold sealed, in batches, then destroys the old key (another generation). IIN
    /// search works throughout. Safe to stop (Ctrl-C, a crash) and run again: it continues
    /// where it stopped. Run it when a custodian leaves.
    ///
    /// Example: vaultctl keyring rotate-index --identity custodian.txt
    RotateIndex {
        /// Subjects per transaction.
        #[arg(long, default_value_t = 500)]
        batch: u64,
    },
    /// Rotate the audit-signing key: a new key signs every checkpoint and anchor from now on
    /// (a new signed generation); the old key's public half stays in the keyring so older
    /// checkpoints still verify, and nothing it signs after the rotation is accepted. A running
    /// server takes the new key at its next readiness check. Run it when a custodian leaves.
    ///
    /// Example: vaultctl keyring rotate-audit-key --identity custodian.txt
    RotateAuditKey,
    /// Check the keyring's chain from its first generation: each generation signed by the chain
    /// key of the one before, the stored keyring the one its newest link signs, and the data
    /// store's pin agreeing. Exits 1, naming what is wrong, when the key store was changed
    /// behind the vault's back (a keyring made elsewhere, or an older one put back).
    ///
    /// Example: vaultctl keyring verify --identity custodian.txt
    Verify,
    /// Store the same keys again as a new, signed generation. Needed once for a keyring made
    /// before keyring chains existed: until then the key store alone vouches for it.
    ///
    /// Example: vaultctl keyring reseal --identity custodian.txt
    Reseal,
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
pub enum RecipientCmd {
    /// Example: vaultctl keyring recipient add age1... --identity custodian.txt
    Add { recipient: String },
    /// Example: vaultctl keyring recipient remove age1... --identity custodian.txt
    Remove { recipient: String },
    /// Example: vaultctl keyring recipient list --identity custodian.txt
    List {
        /// text: columns for a person; json: one JSON object per line, for a script.
        #[arg(long, value_enum, default_value_t)]
        format: Format,
    },
}

pub async fn run(cmd: Cmd, ctx: &Ctx, out: &mut String) -> Result<()> {
    match cmd {
        Cmd::Init {
            recipients,
            threshold,
        } => {
            let seal_to = match (ctx.passphrase_file(), recipients.is_empty()) {
                (Some(_), _) if threshold.is_some() => {
                    bail!("--threshold deals shares to --recipient custodians, not to a passphrase")
                }
                (Some(f), true) => SealTo::Passphrase(passphrase(f)?, None),
                (None, false) => {
                    let rs = parse_recipients(&recipients)?;
                    match threshold {
                        Some(m) => SealTo::Quorum(QuorumSeal::deal(m, &rs)?),
                        None => SealTo::Recipients(rs),
                    }
                }
                (Some(_), false) => bail!("seal to recipients or to a passphrase, not both"),
                (None, true) => {
                    bail!("name at least one --recipient age1... (or --passphrase-file)")
                }
            };
            let stores = ctx.stores().await?;
            let catalog = ctx.policy().catalog();
            Vault::init_keyring(&stores, catalog, &seal_to, Utc::now()).await?;
            outln!(
                out,
                "keyring created with a key for each of {} categories",
                catalog.collected_categories().count()
            );
            if let SealTo::Quorum(q) = &seal_to {
                quorum_lines(out, q.quorum());
            }
        }
        Cmd::Reshare {
            threshold,
            recipients,
        } => {
            let rs = parse_recipients(&recipients)?;
            let vault = ctx.vault().await?;
            let q = vault.reshare(threshold, &rs).await?;
            outln!(
                out,
                "the keyring is sealed to a new quorum (the same keys, a new generation)"
            );
            quorum_lines(out, &q);
            outln!(
                out,
                "the old shares open nothing now: restart every running server and unseal it with the new shares"
            );
        }
        Cmd::Unseal { server } => {
            let base = server.trim_end_matches('/');
            check_share_route(base)?;
            let stores = ctx.stores().await?;
            let (quorum, shares) = vault_core::custodian_shares(&stores, &ctx.unlock()?).await?;
            let url = format!("{base}/unseal");
            for share in shares {
                let n = share.number();
                let body = zeroize::Zeroizing::new(
                    serde_json::json!({ "share": share.to_text().as_str() }).to_string(),
                );
                let answer = ureq::post(&url)
                    .config()
                    .http_status_as_error(false)
                    .build()
                    .content_type("application/json")
                    .send(body.as_bytes())
                    .with_context(|| format!("cannot reach {url}"))?;
                let status = answer.status().as_u16();
                let text = answer.into_body().read_to_string().unwrap_or_default();
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                match status {
                    200 if v["sealed"] == false => {
                        outln!(out, "share {n} given: the vault is unsealed");
                        return Ok(());
                    }
                    200 => outln!(
                        out,
                        "share {n} given: {} of {} shares, waiting for the other custodians",
                        v["given"].as_array().map_or(0, Vec::len),
                        quorum.threshold
                    ),
                    _ => bail!(
                        "share {n} was not taken ({status}): {}",
                        v["detail"].as_str().unwrap_or(text.as_str())
                    ),
                }
            }
        }
        Cmd::Export { out: path } => {
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
        Cmd::Status {
            format: Format::Json,
        } => {
            let vault = ctx.vault().await?;
            let keys: Vec<serde_json::Value> = vault
                .key_status()
                .await?
                .iter()
                .map(|s| {
                    json!({"category": s.kek.category.to_string(), "version": s.kek.version,
                           "created": s.kek.created, "deks": s.deks})
                })
                .collect();
            let review = vault.catalog().policy();
            json_line(
                out,
                &json!({
                    "keys": keys,
                    "blind_index_keys": if vault.index_rotation_pending() { 2 } else { 1 },
                    "index_rotation_pending": vault.index_rotation_pending(),
                    "quorum": vault.quorum().await?.map(|q| quorum_json(&q)),
                    "policy_review_due": review.review_due(),
                    "policy_review_overdue": review.review_overdue(Utc::now().date_naive()),
                }),
            );
        }
        Cmd::Status {
            format: Format::Text,
        } => {
            let vault = ctx.vault().await?;
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
            if vault.index_rotation_pending() {
                outln!(
                    out,
                    "blind-index keys: 2, a rotation is under way (finish it: `vaultctl keyring rotate-index`)"
                );
            } else {
                outln!(out, "blind-index keys: 1");
            }
            if let Some(q) = vault.quorum().await? {
                quorum_lines(out, &q);
            }
            outln!(out, "{}", review_line(vault.catalog()));
        }
        Cmd::Rotate { category: c } => {
            let vault = ctx.vault().await?;
            let v = vault.rotate_kek(&c, ctx.reseal_passphrase()?).await?;
            outln!(
                out,
                "{c}: version {v} is now used for new data keys; run `vaultctl keyring rewrap --category {c}` to move the old ones"
            );
        }
        Cmd::Rewrap { category, batch } => {
            let vault = ctx.vault().await?;
            let bar = ctx.progress("rewrap", "data keys");
            let mut report = |p: vault_core::RewrapProgress| {
                bar.set(p.moved, Some(p.moved + p.remaining));
            };
            let done = vault.rewrap(category.as_ref(), batch, &mut report).await;
            bar.finish();
            let done = done?;
            outln!(
                out,
                "rewrapped {} data keys; {} left on older versions",
                done.moved,
                done.remaining
            );
        }
        Cmd::Retire {
            category: c,
            version,
        } => {
            let vault = ctx.vault().await?;
            vault
                .retire_kek(&c, version, ctx.reseal_passphrase()?)
                .await?;
            outln!(out, "{c}: version {version} destroyed");
        }
        Cmd::RotateAuditKey => {
            let vault = ctx.vault().await?;
            let retired = vault.rotate_audit_key(ctx.reseal_passphrase()?).await?;
            outln!(
                out,
                "the audit log is signed by a new key from now on; {retired} retired audit keys are kept to verify older checkpoints (`vaultctl audit verify`)"
            );
        }
        Cmd::RotateIndex { batch } => {
            let vault = ctx.vault().await?;
            let bar = ctx.progress("re-index", "subjects");
            let mut report = |p: vault_core::IndexRotation| {
                bar.set(p.moved, Some(p.moved + p.remaining));
            };
            let done = vault
                .rotate_blind_index(batch, ctx.reseal_passphrase()?, &mut report)
                .await;
            bar.finish();
            let done = done?;
            if done.began {
                outln!(out, "a new blind-index key is in the keyring");
            } else {
                outln!(out, "continuing the blind-index rotation begun before");
            }
            outln!(out, "re-indexed {} subjects", done.moved);
            if !done.retired {
                bail!(
                    "{} subjects are still under the old blind-index key ({} of them with no record holding their IIN): the old key is kept so they stay searchable. Add their IIN to one of their records and run `vaultctl keyring rotate-index` again",
                    done.remaining,
                    done.unrecoverable
                );
            }
            outln!(
                out,
                "every subject is under the new key: the old blind-index key is destroyed"
            );
        }
        Cmd::Verify => {
            let vault = ctx.vault().await?;
            let report = vault.keyring_chain().await?;
            if report.entries.is_empty() {
                bail!(
                    "the keyring (generation {}) was made before keyring chains and carries no signature: run `vaultctl keyring reseal` to sign it",
                    report.generation
                );
            }
            outln!(
                out,
                "{:>10} {:>9} {:<16} {:<16}",
                "GENERATION",
                "SIGNED BY",
                "CHAIN KEY",
                "SEALED SHA-256"
            );
            for e in &report.entries {
                outln!(
                    out,
                    "{:>10} {:>9} {:<16} {:<16}",
                    e.generation,
                    e.signed_by,
                    &e.public_key[..16],
                    &e.sealed_sha256[..16]
                );
            }
            let first = report.entries.first().map_or(0, |e| e.generation);
            outln!(
                out,
                "the chain verifies from generation {first} to generation {}, the keyring the key store holds",
                report.generation
            );
            match report.pinned {
                Some((genesis, g)) => outln!(
                    out,
                    "the data store pins the chain from generation {genesis} up to generation {g}"
                ),
                None => outln!(out, "the data store pins no chain yet"),
            }
        }
        Cmd::Reseal => {
            let vault = ctx.vault().await?;
            let g = vault.reseal_keyring(ctx.reseal_passphrase()?).await?;
            outln!(
                out,
                "the keyring is stored again as generation {g}, signed; the data store pins it"
            );
        }
        Cmd::Gc {
            older_than_hours,
            dry_run,
        } => {
            let vault = ctx.vault().await?;
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
        Cmd::Recipient(cmd) => {
            let vault = ctx.vault().await?;
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
                RecipientCmd::List { format } => match (vault.quorum().await?, format) {
                    (Some(q), Format::Text) => quorum_lines(out, &q),
                    (Some(q), Format::Json) => json_line(out, &quorum_json(&q)),
                    (None, Format::Text) => {
                        for r in vault.recipients().await? {
                            outln!(out, "{r}");
                        }
                    }
                    (None, Format::Json) => {
                        for r in vault.recipients().await? {
                            json_line(out, &json!({ "recipient": r.to_string() }));
                        }
                    }
                },
            }
        }
    }
    Ok(())
}

fn parse_recipients(rs: &[String]) -> Result<Vec<CustodianRecipient>> {
    Ok(rs
        .iter()
        .map(|r| CustodianRecipient::parse(r))
        .collect::<Result<_, _>>()?)
}

fn quorum_json(q: &Quorum) -> serde_json::Value {
    let holders: Vec<serde_json::Value> = q
        .holders
        .iter()
        .map(|(x, c)| json!({"share": x, "recipient": c.to_string()}))
        .collect();
    json!({"threshold": q.threshold, "custodians": q.holders.len(), "holders": holders})
}

fn quorum_lines(out: &mut String, q: &Quorum) {
    outln!(
        out,
        "sealed to a quorum: any {} of {} custodians unseal it together",
        q.threshold,
        q.holders.len()
    );
    for (x, c) in &q.holders {
        outln!(out, "  share {x}: {c}");
    }
}

/// A share is half of the vault's keys for a 2-of-N quorum: it never crosses a network in clear.
fn check_share_route(base: &str) -> Result<()> {
    if base.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = base.strip_prefix("http://") else {
        bail!("--server must be an http:// or https:// URL, e.g. http://127.0.0.1:8080");
    };
    let host = rest.split('/').next().unwrap_or("");
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!(
            "a share must not cross the network in clear: use https:// (the school's TLS terminator) or run this on the server's host against http://127.0.0.1:PORT"
        );
    }
    Ok(())
}
