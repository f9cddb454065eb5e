//! The keyring's chain: every generation of the keyring is signed by a key that only the
//! generation before it holds, so a keyring is accepted only as the successor of one the vault
//! already trusts. age encryption to public recipients proves nothing about who made a file;
//! this does.
//!
//! Each generation's plaintext carries its own Ed25519 chain seed (a fresh one every
//! generation). Its link, stored in the key store's `keyring_chain` table, is
//!
//! ```text
//! signature = Sign_{K(g-1)}( "school-vault/keyring-link/v1\0" ‖ g (i64 BE) ‖ SHA-256(sealed) ‖ pub(K(g)) )
//! ```
//!
//! and the first generation of a chain (its genesis) signs itself. The data store keeps a pin
//! (the genesis and the newest generation it has seen, public values only), so an
//! administrator who can write only one of the two stores can neither replace the chain
//! wholesale nor roll it back. Everything here is pure; the stores are read by the callers.

use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, Ed25519KeyPair, UnparsedPublicKey};

const LINK_DOMAIN: &[u8] = b"school-vault/keyring-link/v1\0";

/// One generation's link: public values only.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub generation: i64,
    /// The generation's own chain public key (Ed25519, 32 bytes).
    pub public_key: Vec<u8>,
    /// By the previous generation's chain key (the genesis: by its own).
    pub signature: Vec<u8>,
    /// SHA-256 of the sealed keyring (the age file) of this generation.
    pub sealed_sha256: Vec<u8>,
}

/// What the data store pins: the chain's genesis and the newest generation it has seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Pin {
    pub genesis_generation: i64,
    pub genesis_public_key: Vec<u8>,
    pub generation: i64,
    pub public_key: Vec<u8>,
    pub sealed_sha256: Vec<u8>,
}

/// What the process judging a stored keyring already trusts.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Known<'a> {
    /// Nothing yet: a process starting (the data store's pin is all it has).
    Nothing,
    /// A keyring made before the chain, at this generation.
    Unsigned { generation: i64 },
    /// A signed generation.
    Signed(&'a Link),
}

/// Why a stored keyring is refused. Names generations, never keys.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainProblem {
    #[error(
        "it is older than generation {known}, which the vault has already seen (generations only go up: this is a rollback)"
    )]
    Older { seen: i64, known: i64 },
    #[error(
        "it has the generation the vault holds ({generation}) but other bytes or another chain key"
    )]
    Replaced { generation: i64 },
    #[error("the key store's keyring_chain has no signed link for generation {generation}")]
    NoLink { generation: i64 },
    #[error(
        "the keyring_chain jumps from generation {after} to {next}: a link is missing or was added"
    )]
    Gap { after: i64, next: i64 },
    #[error(
        "the link of generation {generation} is not signed by the chain key of generation {signer}"
    )]
    BadSignature { generation: i64, signer: i64 },
    #[error(
        "the sealed keyring is not the one the link of generation {generation} signs (its SHA-256 differs)"
    )]
    SealedMismatch { generation: i64 },
    #[error(
        "the chain key inside the keyring is not the one the link of generation {generation} names"
    )]
    KeyMismatch { generation: i64 },
    #[error(
        "the keyring_chain no longer holds generation {generation} as the vault knows it: the chain was replaced"
    )]
    Diverged { generation: i64 },
    #[error(
        "the data store pins a chain that starts at generation {pinned}, and this one starts elsewhere or with another key: the chain was replaced"
    )]
    ChainReplaced { pinned: i64 },
    #[error(
        "the data store pins generation {generation} with another chain key or other sealed bytes"
    )]
    PinMismatch { generation: i64 },
    #[error(
        "the keyring carries no chain signature, but the data store pins a signed chain from generation {pinned} (an unsigned keyring is only accepted before the first signed one)"
    )]
    Unsigned { pinned: i64 },
    #[error(
        "the chain starting at generation {generation} is not pinned in the data store, and the unsigned keyring the vault holds cannot vouch for it"
    )]
    NotPinned { generation: i64 },
}

/// SHA-256 of a sealed keyring.
pub fn sealed_digest(sealed: &[u8]) -> Vec<u8> {
    digest(&SHA256, sealed).as_ref().to_vec()
}

fn message(generation: i64, sealed_sha256: &[u8], public_key: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(LINK_DOMAIN.len() + 8 + 32 + 32);
    m.extend_from_slice(LINK_DOMAIN);
    m.extend_from_slice(&generation.to_be_bytes());
    m.extend_from_slice(sealed_sha256);
    m.extend_from_slice(public_key);
    m
}

/// The link of generation `generation`, signed by `signer` (the previous generation's chain
/// key, or for a genesis the new generation's own).
pub(crate) fn sign(
    signer: &Ed25519KeyPair,
    generation: i64,
    sealed: &[u8],
    public_key: Vec<u8>,
) -> Link {
    let sealed_sha256 = sealed_digest(sealed);
    let signature = signer
        .sign(&message(generation, &sealed_sha256, &public_key))
        .as_ref()
        .to_vec();
    Link {
        generation,
        public_key,
        signature,
        sealed_sha256,
    }
}

/// Whether `link` is signed by the holder of `signer_public` (32 bytes).
pub fn verify_link(signer_public: &[u8], link: &Link) -> bool {
    UnparsedPublicKey::new(&ED25519, signer_public)
        .verify(
            &message(link.generation, &link.sealed_sha256, &link.public_key),
            &link.signature,
        )
        .is_ok()
}

/// Checks a whole chain, oldest first: the genesis signs itself, every later link is signed by
/// the one before, and generations follow one another without a gap.
pub fn verify_chain(links: &[Link]) -> Result<(), ChainProblem> {
    let Some(first) = links.first() else {
        return Ok(());
    };
    if !verify_link(&first.public_key, first) {
        return Err(ChainProblem::BadSignature {
            generation: first.generation,
            signer: first.generation,
        });
    }
    for w in links.windows(2) {
        let (prev, next) = (&w[0], &w[1]);
        if next.generation != prev.generation + 1 {
            return Err(ChainProblem::Gap {
                after: prev.generation,
                next: next.generation,
            });
        }
        if !verify_link(&prev.public_key, next) {
            return Err(ChainProblem::BadSignature {
                generation: next.generation,
                signer: prev.generation,
            });
        }
    }
    Ok(())
}

/// Judges the stored keyring (generation `generation`, sealed bytes hashing to `sealed_sha256`)
/// against the stored chain (oldest first), the data store's pin and what the caller already
/// trusts. Answers the link to trust (`None`: an unsigned keyring, accepted only while nothing
/// pins a chain and nothing signed was known), or why it is refused. The caller then checks
/// that the unsealed keyring's chain key is the link's (`ChainProblem::KeyMismatch`).
pub(crate) fn judge(
    links: &[Link],
    pin: Option<&Pin>,
    generation: i64,
    sealed_sha256: &[u8],
    known: Known<'_>,
) -> Result<Option<Link>, ChainProblem> {
    // Generations only go up: below what this process or the data store has seen is a rollback.
    let known_generation = match known {
        Known::Nothing => None,
        Known::Unsigned { generation } => Some(generation),
        Known::Signed(l) => Some(l.generation),
    };
    if let Some(k) = known_generation {
        if generation < k {
            return Err(ChainProblem::Older {
                seen: generation,
                known: k,
            });
        }
        if generation == k {
            // The caller accepts the very keyring it holds before asking.
            return Err(ChainProblem::Replaced { generation });
        }
    }
    if let Some(p) = pin
        && generation < p.generation
    {
        return Err(ChainProblem::Older {
            seen: generation,
            known: p.generation,
        });
    }

    let Some(tip) = links.last() else {
        if let Some(p) = pin {
            return Err(ChainProblem::Unsigned {
                pinned: p.genesis_generation,
            });
        }
        return match known {
            Known::Nothing => Ok(None),
            // A newer keyring must be signed, whatever the vault held before.
            Known::Unsigned { .. } | Known::Signed(_) => Err(ChainProblem::NoLink { generation }),
        };
    };
    verify_chain(links)?;
    if tip.generation > generation {
        return Err(ChainProblem::Older {
            seen: generation,
            known: tip.generation,
        });
    }
    if tip.generation < generation {
        return Err(ChainProblem::NoLink { generation });
    }
    if tip.sealed_sha256 != sealed_sha256 {
        return Err(ChainProblem::SealedMismatch { generation });
    }
    let genesis = &links[0];

    match known {
        Known::Nothing => {}
        Known::Signed(k) => {
            if links.iter().find(|l| l.generation == k.generation) != Some(k) {
                return Err(ChainProblem::Diverged {
                    generation: k.generation,
                });
            }
        }
        Known::Unsigned { generation: k } => {
            // An unsigned keyring signs nothing: only the data store's pin, written by the
            // custodian who made the first signed generation, vouches for the new chain.
            let pinned = pin.is_some_and(|p| {
                p.genesis_generation == genesis.generation
                    && p.genesis_public_key == genesis.public_key
            });
            if genesis.generation <= k || !pinned {
                return Err(ChainProblem::NotPinned {
                    generation: genesis.generation,
                });
            }
        }
    }

    if let Some(p) = pin {
        if genesis.generation != p.genesis_generation || genesis.public_key != p.genesis_public_key
        {
            return Err(ChainProblem::ChainReplaced {
                pinned: p.genesis_generation,
            });
        }
        let pinned = links.iter().find(|l| l.generation == p.generation);
        if !pinned
            .is_some_and(|l| l.public_key == p.public_key && l.sealed_sha256 == p.sealed_sha256)
        {
            return Err(ChainProblem::PinMismatch {
                generation: p.generation,
            });
        }
    }
    Ok(Some(tip.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::KeyPair;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
    }

    fn public(k: &Ed25519KeyPair) -> Vec<u8> {
        k.public_key().as_ref().to_vec()
    }

    /// A genesis at generation 1 and `n - 1` successors, with each generation's sealed bytes.
    fn chain(n: i64) -> (Vec<Link>, Vec<Vec<u8>>) {
        let keys: Vec<Ed25519KeyPair> = (0..n).map(|_| key()).collect();
        let mut links = Vec::new();
        let mut sealed = Vec::new();
        for g in 1..=n {
            let i = (g - 1) as usize;
            let bytes = format!("age-encryption.org/v1 generation {g}").into_bytes();
            let signer = if i == 0 { &keys[0] } else { &keys[i - 1] };
            links.push(sign(signer, g, &bytes, public(&keys[i])));
            sealed.push(bytes);
        }
        (links, sealed)
    }

    fn pin_of(links: &[Link], at: usize) -> Pin {
        Pin {
            genesis_generation: links[0].generation,
            genesis_public_key: links[0].public_key.clone(),
            generation: links[at].generation,
            public_key: links[at].public_key.clone(),
            sealed_sha256: links[at].sealed_sha256.clone(),
        }
    }

    #[test]
    fn a_good_chain_is_accepted_from_start_and_from_a_known_link() {
        let (links, sealed) = chain(4);
        let tip = sealed_digest(&sealed[3]);
        let pin = pin_of(&links, 1);
        assert_eq!(
            judge(&links, Some(&pin), 4, &tip, Known::Nothing),
            Ok(Some(links[3].clone()))
        );
        assert_eq!(
            judge(&links, Some(&pin), 4, &tip, Known::Signed(&links[2])),
            Ok(Some(links[3].clone()))
        );
        assert_eq!(
            judge(&links, None, 4, &tip, Known::Nothing),
            Ok(Some(links[3].clone()))
        );
    }

    /// One flipped byte of a signature, of the sealed bytes or of a public key: refused.
    #[test]
    fn one_flipped_byte_anywhere_is_refused() {
        let (links, sealed) = chain(3);
        let tip = sealed_digest(&sealed[2]);
        for at in 0..3 {
            for pos in [0, 31, 63] {
                let mut bad = links.clone();
                bad[at].signature[pos] ^= 0x01;
                let got = judge(&bad, None, 3, &tip, Known::Nothing);
                assert!(
                    matches!(got, Err(ChainProblem::BadSignature { generation, .. }) if generation == at as i64 + 1),
                    "signature of link {at}, byte {pos}: {got:?}"
                );
            }
            for pos in [0, 17, 31] {
                let mut bad = links.clone();
                bad[at].public_key[pos] ^= 0x01;
                let got = judge(&bad, None, 3, &tip, Known::Nothing);
                assert!(
                    matches!(got, Err(ChainProblem::BadSignature { .. })),
                    "public key of link {at}, byte {pos}: {got:?}"
                );
            }
        }
        for pos in [0, 10, sealed[2].len() - 1] {
            let mut bytes = sealed[2].clone();
            bytes[pos] ^= 0x01;
            let got = judge(&links, None, 3, &sealed_digest(&bytes), Known::Nothing);
            assert_eq!(
                got,
                Err(ChainProblem::SealedMismatch { generation: 3 }),
                "sealed byte {pos}"
            );
        }
        // The stored digest itself edited to match other bytes: the signature no longer holds.
        let mut bad = links.clone();
        let mut bytes = sealed[2].clone();
        bytes[0] ^= 0x01;
        bad[2].sealed_sha256 = sealed_digest(&bytes);
        assert!(matches!(
            judge(&bad, None, 3, &sealed_digest(&bytes), Known::Nothing),
            Err(ChainProblem::BadSignature { generation: 3, .. })
        ));
    }

    /// A keyring made elsewhere (its own genesis, signed by its own key), given the next
    /// generation number: refused by a process that knows the real chain and by one that has
    /// only the data store's pin.
    #[test]
    fn a_foreign_chain_is_refused() {
        let (links, _) = chain(2);
        let (foreign, foreign_sealed) = chain(3);
        let tip = sealed_digest(&foreign_sealed[2]);
        assert_eq!(
            judge(&foreign, None, 3, &tip, Known::Signed(&links[1])),
            Err(ChainProblem::Diverged { generation: 2 })
        );
        let pin = pin_of(&links, 1);
        assert_eq!(
            judge(&foreign, Some(&pin), 3, &tip, Known::Nothing),
            Err(ChainProblem::ChainReplaced { pinned: 1 })
        );
        // The real chain with a forged third link signed by a stranger's key.
        let stranger = key();
        let mut forged = links.clone();
        forged.push(sign(&stranger, 3, b"forged", public(&stranger)));
        assert_eq!(
            judge(
                &forged,
                Some(&pin),
                3,
                &sealed_digest(b"forged"),
                Known::Signed(&links[1])
            ),
            Err(ChainProblem::BadSignature {
                generation: 3,
                signer: 2
            })
        );
        // The row alone moved up, with no link for it.
        assert_eq!(
            judge(&links, Some(&pin), 3, &tip, Known::Signed(&links[1])),
            Err(ChainProblem::NoLink { generation: 3 })
        );
    }

    #[test]
    fn generations_only_go_up() {
        let (links, sealed) = chain(3);
        let old = sealed_digest(&sealed[1]);
        // What a running process knows.
        assert_eq!(
            judge(&links[..2], None, 2, &old, Known::Signed(&links[2])),
            Err(ChainProblem::Older { seen: 2, known: 3 })
        );
        // What the data store pins, for a process starting.
        assert_eq!(
            judge(
                &links[..2],
                Some(&pin_of(&links, 2)),
                2,
                &old,
                Known::Nothing
            ),
            Err(ChainProblem::Older { seen: 2, known: 3 })
        );
        // What the chain itself says, when only the row was put back.
        assert_eq!(
            judge(&links, None, 2, &old, Known::Nothing),
            Err(ChainProblem::Older { seen: 2, known: 3 })
        );
        // The same generation with other bytes.
        assert_eq!(
            judge(&links, None, 3, &old, Known::Signed(&links[2])),
            Err(ChainProblem::Replaced { generation: 3 })
        );
    }

    #[test]
    fn unsigned_keyrings_only_before_the_first_signed_one() {
        let (links, sealed) = chain(2);
        assert_eq!(judge(&[], None, 5, b"x", Known::Nothing), Ok(None));
        assert_eq!(
            judge(&[], Some(&pin_of(&links, 1)), 5, b"x", Known::Nothing),
            Err(ChainProblem::Unsigned { pinned: 1 })
        );
        assert_eq!(
            judge(&[], None, 6, b"x", Known::Unsigned { generation: 5 }),
            Err(ChainProblem::NoLink { generation: 6 })
        );
        assert_eq!(
            judge(&[], None, 3, b"x", Known::Signed(&links[1])),
            Err(ChainProblem::NoLink { generation: 3 })
        );
        // A first signed generation after an unsigned one counts only when the data store pins it.
        let tip = sealed_digest(&sealed[1]);
        assert_eq!(
            judge(&links, None, 2, &tip, Known::Unsigned { generation: 0 }),
            Err(ChainProblem::NotPinned { generation: 1 })
        );
        assert_eq!(
            judge(
                &links,
                Some(&pin_of(&links, 0)),
                2,
                &tip,
                Known::Unsigned { generation: 0 }
            ),
            Ok(Some(links[1].clone()))
        );
    }

    #[test]
    fn a_gap_or_a_pin_of_other_bytes_is_refused() {
        let (links, sealed) = chain(4);
        let tip = sealed_digest(&sealed[3]);
        let gapped = vec![links[0].clone(), links[2].clone(), links[3].clone()];
        assert_eq!(
            judge(&gapped, None, 4, &tip, Known::Nothing),
            Err(ChainProblem::Gap { after: 1, next: 3 })
        );
        let mut pin = pin_of(&links, 2);
        pin.sealed_sha256[0] ^= 1;
        assert_eq!(
            judge(&links, Some(&pin), 4, &tip, Known::Nothing),
            Err(ChainProblem::PinMismatch { generation: 3 })
        );
    }

    /// A pin at the tip itself (the state right after a custodian's change) holds; a pin of the
    /// same genesis generation under another genesis key does not vouch for this chain.
    #[test]
    fn a_pin_at_the_tip_holds_and_one_of_another_genesis_key_does_not() {
        let (links, sealed) = chain(3);
        let tip = sealed_digest(&sealed[2]);
        assert_eq!(
            judge(&links, Some(&pin_of(&links, 2)), 3, &tip, Known::Nothing),
            Ok(Some(links[2].clone()))
        );
        let (other, _) = chain(1);
        let mut pin = pin_of(&links, 0);
        pin.genesis_public_key = other[0].public_key.clone();
        assert_eq!(
            judge(
                &links,
                Some(&pin),
                3,
                &tip,
                Known::Unsigned { generation: 0 }
            ),
            Err(ChainProblem::NotPinned { generation: 1 })
        );
    }
}
