//! Loading the keyring: made once at first start, then opened as the signed successor of the
//! generation this process (and the data store's pin) trusts, never an older or unchained one.

use chrono::{DateTime, Utc};

use crate::audit::chain::{AuditEvent, Outcome};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::error::VaultError;
use crate::keys::custodian::{KeyringError, Unlock};
use crate::keys::keychain::{self, ChainProblem, Known, Link};
use crate::keys::keyring::{Keyring, SealTo};
use crate::store::Stores;
use crate::store::repo::keyring;

/// What a process trusts of the keyring it holds.
#[derive(Clone, Debug)]
pub(crate) struct Tip {
    pub generation: i64,
    /// SHA-256 of the sealed keyring it was unsealed from.
    pub sealed_sha256: Vec<u8>,
    /// Its signed link; `None` for a keyring made before the chain.
    pub link: Option<Link>,
}

pub(crate) fn refused(seen: i64, problem: ChainProblem) -> VaultError {
    VaultError::Keyring(KeyringError::Refused { seen, problem })
}

pub(crate) fn refusal_event(seen: i64, known: Option<i64>, problem: &ChainProblem) -> AuditEvent {
    let mut ev = AuditEvent::new("vault", "keyring.refused", Outcome::Refused);
    ev.reason = Some(match known {
        Some(k) => {
            format!("keyring generation {seen} refused (the vault holds generation {k}): {problem}")
        }
        None => format!("keyring generation {seen} refused at start: {problem}"),
    });
    ev
}

/// Moves the data store's pin up to `tip`. A failure is logged, not fatal: the key store
/// already holds the generation, and the next open moves the pin.
pub(crate) async fn pin_tip(stores: &Stores, genesis: &Link, tip: &Link, now: DateTime<Utc>) {
    match keyring::advance_pin(&stores.data, genesis, tip, now).await {
        Ok(_) => {}
        Err(e) => tracing::warn!(
            error = %e,
            generation = tip.generation,
            "could not pin the keyring generation in the data store; the next start pins it"
        ),
    }
}

/// Makes a fresh keyring for every category the catalog collects, stores it sealed as
/// generation 1 with its self-signed link, and pins it in the data store. Refuses when the key
/// store already has a keyring, or the data store already pins one (its data belongs to it).
pub(crate) async fn init_keyring(
    stores: &Stores,
    catalog: &Catalog,
    seal_to: &SealTo,
    now: DateTime<Utc>,
) -> Result<(), VaultError> {
    if keyring::sealed(&stores.keys).await?.is_some() {
        return Err(VaultError::KeyringExists);
    }
    if let Some(p) = keyring::pin(&stores.data).await? {
        return Err(VaultError::Invalid(format!(
            "the data store already pins a keyring (generation {}, its chain starting at generation {}): its data belongs to that keyring, so a new one is refused. Put that keyring's key store back (vaultctl restore), or give a new, empty data store for a new vault",
            p.generation, p.genesis_generation
        )));
    }
    let mut k = Keyring::generate(catalog.collected_categories(), now)?;
    k.set_sealed_to(seal_to);
    let sealed = k.seal(seal_to)?;
    let (Some(signer), Some(public)) = (k.chain_signer(), k.chain_public_key()) else {
        return Err(VaultError::Keyring(KeyringError::Corrupt(
            "a new keyring has no chain key",
        )));
    };
    let link = keychain::sign(&signer, 1, &sealed, public);
    keyring::insert_first(&stores.keys, sealed, seal_to, &link, now)
        .await
        // A concurrent init that won the race shows up as a primary-key conflict.
        .map_err(|_| VaultError::KeyringExists)?;
    keyring::insert_pin(&stores.data, &link, &link, now).await?;
    Ok(())
}

/// Reads, judges and unseals the stored keyring for a process starting: its chain must verify
/// from its genesis and agree with the data store's pin. A refusal is logged and audited (with
/// no checkpoint: no audit key is trusted yet) and nothing is opened.
///
/// A keyring sealed to a quorum is unsealed with the quorum key, rebuilt from the shares the
/// given identities open (or given directly, as the server's unsealer does); the unlock
/// answered is what unsealed it, kept to unseal newer generations.
pub(crate) async fn open_keyring(
    stores: &Stores,
    unlock: Unlock,
    clock: &dyn Clock,
) -> Result<(Keyring, Tip, Unlock), VaultError> {
    let row = keyring::sealed(&stores.keys)
        .await?
        .ok_or(VaultError::KeyringMissing)?;
    let sha = keychain::sealed_digest(&row.sealed);
    let links = keyring::chain(&stores.keys).await?;
    let pin = keyring::pin(&stores.data).await?;
    let refuse = |problem: ChainProblem| async move {
        tracing::error!(
            generation = row.generation,
            %problem,
            "REFUSED the key store's keyring: it is not chained to the keyring the vault knows"
        );
        let ev = refusal_event(row.generation, None, &problem);
        if let Err(e) = crate::audit::chain::append_unsigned(&stores.data, clock, &[ev]).await {
            tracing::error!(error = %e, "could not record the refusal in the audit log");
        }
        refused(row.generation, problem)
    };
    let link = match keychain::judge(&links, pin.as_ref(), row.generation, &sha, Known::Nothing) {
        Ok(l) => l,
        Err(p) => return Err(refuse(p).await),
    };
    // What was given opens the keyring directly (a custodian of a keyring sealed to
    // recipients, or the rebuilt quorum key itself): share rows are then never looked at, so
    // rows an administrator put in the key store can neither seal the vault nor steer it.
    let (k, unlock) = match Keyring::unseal(&row.sealed, &unlock) {
        Ok(k) => (k, unlock),
        Err(KeyringError::Unseal(e)) => {
            let Some(q) = keyring::quorum(&stores.keys).await? else {
                return Err(KeyringError::Unseal(e).into());
            };
            let Unlock::Identities(ids) = &unlock else {
                return Err(KeyringError::NotEnoughShares {
                    given: 0,
                    threshold: q.quorum().threshold,
                }
                .into());
            };
            let shares = q.open_with(ids)?;
            let key = q.combine(&shares)?;
            (Keyring::unseal(&row.sealed, &key)?, key)
        }
        Err(e) => return Err(e.into()),
    };
    match (&link, links.first()) {
        (Some(l), Some(genesis)) => {
            if k.chain_public_key().as_deref() != Some(l.public_key.as_slice()) {
                return Err(refuse(ChainProblem::KeyMismatch {
                    generation: l.generation,
                })
                .await);
            }
            pin_tip(stores, genesis, l, clock.now()).await;
        }
        _ => tracing::warn!(
            generation = row.generation,
            "the keyring carries no chain signature (it was made before the chain): until it is saved again, the key store alone vouches for it; run `vaultctl keyring reseal` to sign it"
        ),
    }
    Ok((
        k,
        Tip {
            generation: row.generation,
            sealed_sha256: sha,
            link,
        },
        unlock,
    ))
}
