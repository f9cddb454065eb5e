//! M-of-N custodians. A keyring sealed to a quorum is an ordinary age file sealed to one
//! X25519 recipient, the quorum key; the quorum key's secret (its `AGE-SECRET-KEY-1...` text) is
//! split with Shamir's scheme over GF(256) (the `blahaj` crate) into one share per custodian, and
//! each share is sealed as an age file to that custodian's own recipient. Any M custodians
//! together rebuild the quorum key; fewer learn nothing of it.
//!
//! The age file key itself is not split: the age crate does not expose it, and splitting the
//! quorum identity keeps the keyring a file the standard `age -d -i quorum.txt` opens once the
//! key is rebuilt.
//!
//! Every share is checked before it is used: x-coordinate 1 to 255 (0 would be the secret
//! itself), a SHA-256 commitment to it stored at dealing (bound to the quorum key, so a share of
//! another keyring is refused by name), and the rebuilt secret must be the identity whose
//! public key the keyring is sealed to.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use age::secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::keys::custodian::{CustodianRecipient, KeyringError, Unlock};

/// The text form of a decrypted share: `school-vault-share-v1:<x>:<hex>`.
const SHARE_TAG: &str = "school-vault-share-v1";
const COMMITMENT_DOMAIN: &[u8] = b"school-vault/share-commitment/v1\0";
/// The length of the secret shared: an age X25519 identity in its Bech32 text.
const SECRET_LEN: usize = 74;
/// More custodians than this is a committee, not a ceremony; and each share is one age file.
pub const MAX_CUSTODIANS: usize = 32;

/// One custodian's share, decrypted. No Debug, Display or Serialize: M of them open the vault.
pub struct Share {
    x: u8,
    y: Zeroizing<Vec<u8>>,
}

impl Share {
    /// Parses the text a custodian's share file holds once decrypted (what `vaultctl keyring
    /// unseal` sends). Never echoes the input.
    pub fn parse(text: &str) -> Result<Share, KeyringError> {
        let bad = |why| KeyringError::ShareRefused { x: None, why };
        let mut parts = text.trim().splitn(3, ':');
        if parts.next() != Some(SHARE_TAG) {
            return Err(bad(
                "it is not a vault share (expected text starting school-vault-share-v1:)",
            ));
        }
        let x: u8 = parts
            .next()
            .and_then(|x| x.parse().ok())
            .ok_or(bad("its number is not 1 to 255"))?;
        if x == 0 {
            return Err(bad("share number 0 would be the secret itself"));
        }
        let hex_y = parts.next().ok_or(bad("it has no value"))?;
        let y = Zeroizing::new(hex::decode(hex_y).map_err(|_| KeyringError::ShareRefused {
            x: Some(x),
            why: "its value is not hexadecimal",
        })?);
        if y.len() != SECRET_LEN {
            return Err(KeyringError::ShareRefused {
                x: Some(x),
                why: "its value has the wrong length (cut short, or from another tool)",
            });
        }
        Ok(Share { x, y })
    }

    /// The share's number (its x-coordinate), 1 to 255. Public.
    pub fn number(&self) -> u8 {
        self.x
    }

    /// The text form, in a buffer zeroed on drop.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!("{SHARE_TAG}:{}:{}", self.x, hex::encode(&*self.y)))
    }

    fn commitment(&self, quorum_key: &CustodianRecipient) -> [u8; 32] {
        commitment(quorum_key, self.x, &self.y)
    }
}

fn commitment(quorum_key: &CustodianRecipient, x: u8, y: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(COMMITMENT_DOMAIN);
    ctx.update(quorum_key.to_string().as_bytes());
    ctx.update(&[0, x]);
    ctx.update(y);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// One dealt share as the key store keeps it: public values and an age file to the custodian.
#[derive(Clone)]
pub(crate) struct DealtShare {
    pub x: u8,
    pub custodian: CustodianRecipient,
    pub sealed: Vec<u8>,
    pub commitment: [u8; 32],
}

/// Who holds the shares of a quorum-sealed keyring, and how many must come together. Public.
#[derive(Clone, Debug, PartialEq)]
pub struct Quorum {
    pub threshold: u8,
    /// The recipient the keyring is sealed to; its secret exists only while M shares are joined.
    pub key: CustodianRecipient,
    /// (share number, custodian) for every share.
    pub holders: Vec<(u8, CustodianRecipient)>,
}

/// A quorum with its sealed shares: what the key store holds, or a new one just dealt.
#[derive(Clone)]
pub struct QuorumSeal {
    pub(crate) quorum: Quorum,
    pub(crate) shares: Vec<DealtShare>,
}

impl QuorumSeal {
    /// Makes a new quorum key and deals its shares to `custodians`, any `threshold` of whom
    /// unseal the keyring. The key's secret is dropped here: from now on only shares exist.
    pub fn deal(threshold: u8, custodians: &[CustodianRecipient]) -> Result<Self, KeyringError> {
        let n = custodians.len();
        let spec = |m: String| Err(KeyringError::QuorumSpec(m));
        if n > MAX_CUSTODIANS {
            return spec(format!(
                "{n} custodians: at most {MAX_CUSTODIANS} can share the keyring"
            ));
        }
        if threshold < 2 {
            return spec(
                "a threshold of 1 is the same as sealing to every custodian: use --recipient without --threshold, or a threshold of 2 or more".into(),
            );
        }
        if usize::from(threshold) > n {
            return spec(format!(
                "a threshold of {threshold} needs at least {threshold} custodians (--recipient), {n} given"
            ));
        }
        for (i, c) in custodians.iter().enumerate() {
            if custodians[..i].contains(c) {
                return spec(format!(
                    "{c} is named twice: each custodian holds one share"
                ));
            }
        }
        let id = age::x25519::Identity::generate();
        let key = CustodianRecipient::from_age(id.to_public());
        let secret = Zeroizing::new(id.to_string().expose_secret().as_bytes().to_vec());
        if secret.len() != SECRET_LEN {
            return Err(KeyringError::Corrupt(
                "an age identity of an unexpected length",
            ));
        }
        let mut shares = Vec::with_capacity(n);
        for (share, custodian) in blahaj::Sharks(threshold)
            .dealer(&secret)
            .zip(custodians.iter())
        {
            let bytes = Zeroizing::new(Vec::<u8>::from(&share));
            let (x, y) = (bytes[0], &bytes[1..]);
            let share = Share {
                x,
                y: Zeroizing::new(y.to_vec()),
            };
            shares.push(DealtShare {
                x,
                custodian: custodian.clone(),
                sealed: seal_share(&share, custodian)?,
                commitment: share.commitment(&key),
            });
        }
        let holders = shares.iter().map(|s| (s.x, s.custodian.clone())).collect();
        Ok(QuorumSeal {
            quorum: Quorum {
                threshold,
                key,
                holders,
            },
            shares,
        })
    }

    pub fn quorum(&self) -> &Quorum {
        &self.quorum
    }

    /// Each share's number and commitment, as the keyring itself records them.
    pub(crate) fn commitments(&self) -> Vec<(u8, [u8; 32])> {
        self.shares.iter().map(|d| (d.x, d.commitment)).collect()
    }

    /// Checks a share given back against the commitment stored when it was dealt.
    pub(crate) fn check(&self, share: &Share) -> Result<&DealtShare, KeyringError> {
        let dealt =
            self.shares
                .iter()
                .find(|d| d.x == share.x)
                .ok_or(KeyringError::ShareRefused {
                    x: Some(share.x),
                    why: "this keyring has no share of that number",
                })?;
        let ok: bool = subtle::ConstantTimeEq::ct_eq(
            &share.commitment(&self.quorum.key)[..],
            &dealt.commitment[..],
        )
        .into();
        if !ok {
            return Err(KeyringError::ShareRefused {
                x: Some(share.x),
                why: "it is not the share dealt for this keyring (changed, or from another keyring or an older dealing)",
            });
        }
        Ok(dealt)
    }

    /// Every share sealed to one of `identities`, decrypted and checked. A share that does not
    /// decrypt under them is someone else's and is skipped; one that decrypts but fails its
    /// check is an error.
    pub(crate) fn open_with(
        &self,
        identities: &[Box<dyn age::Identity + Send + Sync>],
    ) -> Result<Vec<Share>, KeyringError> {
        let mut out = Vec::new();
        for d in &self.shares {
            let Ok(dec) = age::Decryptor::new_buffered(&d.sealed[..]) else {
                return Err(KeyringError::ShareRefused {
                    x: Some(d.x),
                    why: "its age file in the key store is damaged",
                });
            };
            let Ok(mut r) =
                dec.decrypt(identities.iter().map(|i| i.as_ref() as &dyn age::Identity))
            else {
                continue;
            };
            let mut text = Zeroizing::new(String::new());
            r.read_to_string(&mut text)
                .map_err(|_| KeyringError::ShareRefused {
                    x: Some(d.x),
                    why: "its age file in the key store failed authentication",
                })?;
            let share = Share::parse(&text)?;
            self.check(&share)?;
            out.push(share);
        }
        Ok(out)
    }

    /// Rebuilds the quorum key from at least `threshold` distinct, checked shares, and proves
    /// it is the key the keyring is sealed to.
    pub(crate) fn combine<'a>(
        &self,
        shares: impl IntoIterator<Item = &'a Share>,
    ) -> Result<Unlock, KeyringError> {
        let mut distinct: BTreeMap<u8, &Share> = BTreeMap::new();
        for s in shares {
            self.check(s)?;
            distinct.insert(s.x, s);
        }
        if distinct.len() < usize::from(self.quorum.threshold) {
            return Err(KeyringError::NotEnoughShares {
                given: distinct.len(),
                threshold: self.quorum.threshold,
            });
        }
        let parts: Vec<blahaj::Share> = distinct
            .values()
            .take(usize::from(self.quorum.threshold))
            .map(|s| {
                let mut b = Zeroizing::new(Vec::with_capacity(1 + s.y.len()));
                b.push(s.x);
                b.extend_from_slice(&s.y);
                blahaj::Share::try_from(&b[..])
                    .map_err(|_| KeyringError::Corrupt("a share that does not decode"))
            })
            .collect::<Result<_, _>>()?;
        let secret = Zeroizing::new(
            blahaj::Sharks(self.quorum.threshold)
                .recover(&parts)
                .map_err(|_| KeyringError::Corrupt("the shares do not combine"))?,
        );
        let id = std::str::from_utf8(&secret)
            .ok()
            .and_then(|t| t.parse::<age::x25519::Identity>().ok())
            .ok_or(KeyringError::QuorumMismatch)?;
        if CustodianRecipient::from_age(id.to_public()) != self.quorum.key {
            return Err(KeyringError::QuorumMismatch);
        }
        Ok(Unlock::Identities(vec![Box::new(id)]))
    }
}

/// The file a backup of a quorum-sealed vault carries beside its sealed stores: the backup
/// is sealed to the quorum key, so a restore onto an empty machine needs the shares too. Every
/// share in it is an age file to one custodian: the file alone opens nothing.
#[derive(serde::Serialize, serde::Deserialize)]
struct SharesFile {
    format: u8,
    threshold: u8,
    quorum_key: String,
    shares: Vec<SharesFileEntry>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SharesFileEntry {
    x: u8,
    custodian: String,
    sealed_hex: String,
    commitment_hex: String,
}

impl QuorumSeal {
    pub(crate) fn to_file(&self) -> Result<Vec<u8>, KeyringError> {
        let f = SharesFile {
            format: 1,
            threshold: self.quorum.threshold,
            quorum_key: self.quorum.key.to_string(),
            shares: self
                .shares
                .iter()
                .map(|d| SharesFileEntry {
                    x: d.x,
                    custodian: d.custodian.to_string(),
                    sealed_hex: hex::encode(&d.sealed),
                    commitment_hex: hex::encode(d.commitment),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&f).map_err(|e| KeyringError::Seal(e.to_string()))
    }

    pub(crate) fn from_file(bytes: &[u8]) -> Result<Self, KeyringError> {
        let bad = KeyringError::Corrupt("the backup's shares.json is damaged");
        let f: SharesFile = serde_json::from_slice(bytes).map_err(|_| bad)?;
        if f.format != 1 || f.threshold < 2 || usize::from(f.threshold) > f.shares.len() {
            return Err(KeyringError::Corrupt("the backup's shares.json is damaged"));
        }
        let key = CustodianRecipient::parse(&f.quorum_key)?;
        let mut shares = Vec::with_capacity(f.shares.len());
        for e in f.shares {
            let commitment: [u8; 32] = hex::decode(&e.commitment_hex)
                .ok()
                .and_then(|c| c.try_into().ok())
                .ok_or(KeyringError::Corrupt("the backup's shares.json is damaged"))?;
            if e.x == 0 || shares.iter().any(|d: &DealtShare| d.x == e.x) {
                return Err(KeyringError::Corrupt("the backup's shares.json is damaged"));
            }
            shares.push(DealtShare {
                x: e.x,
                custodian: CustodianRecipient::parse(&e.custodian)?,
                sealed: hex::decode(&e.sealed_hex)
                    .map_err(|_| KeyringError::Corrupt("the backup's shares.json is damaged"))?,
                commitment,
            });
        }
        let holders = shares.iter().map(|d| (d.x, d.custodian.clone())).collect();
        Ok(QuorumSeal {
            quorum: Quorum {
                threshold: f.threshold,
                key,
                holders,
            },
            shares,
        })
    }

    /// What unseals a quorum-sealed file: the quorum key rebuilt from the shares `unlock`'s
    /// identities open. A passphrase opens no share.
    pub(crate) fn unlock_with(&self, unlock: &Unlock) -> Result<Unlock, KeyringError> {
        let Unlock::Identities(ids) = unlock else {
            return Err(KeyringError::NotEnoughShares {
                given: 0,
                threshold: self.quorum.threshold,
            });
        };
        self.combine(&self.open_with(ids)?)
    }
}

fn seal_share(share: &Share, to: &CustodianRecipient) -> Result<Vec<u8>, KeyringError> {
    let text = share.to_text();
    let enc = age::Encryptor::with_recipients(std::iter::once(to.as_age()))
        .map_err(|e| KeyringError::Seal(e.to_string()))?;
    let mut out = Vec::with_capacity(text.len() + 256);
    let mut w = enc
        .wrap_output(&mut out)
        .map_err(|e| KeyringError::Seal(e.to_string()))?;
    w.write_all(text.as_bytes())
        .and_then(|_| w.finish().map(|_| ()))
        .map_err(|e| KeyringError::Seal(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn custodians(
        n: usize,
    ) -> (
        Vec<Box<dyn age::Identity + Send + Sync>>,
        Vec<CustodianRecipient>,
    ) {
        let ids: Vec<age::x25519::Identity> =
            (0..n).map(|_| age::x25519::Identity::generate()).collect();
        let rs = ids
            .iter()
            .map(|i| CustodianRecipient::from_age(i.to_public()))
            .collect();
        (
            ids.into_iter()
                .map(|i| Box::new(i) as Box<dyn age::Identity + Send + Sync>)
                .collect(),
            rs,
        )
    }

    fn open_one(seal: &QuorumSeal, id: Box<dyn age::Identity + Send + Sync>) -> Share {
        let mut v = seal.open_with(&[id]).unwrap();
        assert_eq!(v.len(), 1);
        v.remove(0)
    }

    #[test]
    fn any_two_of_three_rebuild_the_key_and_one_does_not() {
        let (ids, rs) = custodians(3);
        let seal = QuorumSeal::deal(2, &rs).unwrap();
        let shares: Vec<Share> = ids.into_iter().map(|i| open_one(&seal, i)).collect();
        assert_eq!(
            shares.iter().map(Share::number).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        for pair in [[0, 1], [0, 2], [1, 2]] {
            let two: Vec<Share> = pair
                .iter()
                .map(|&i| Share::parse(&shares[i].to_text()).unwrap())
                .collect();
            assert!(seal.combine(&two).is_ok(), "{pair:?}");
        }
        let one = [Share::parse(&shares[0].to_text()).unwrap()];
        assert!(matches!(
            seal.combine(&one),
            Err(KeyringError::NotEnoughShares {
                given: 1,
                threshold: 2
            })
        ));
        // The same share twice is one share.
        let twice = [
            Share::parse(&shares[1].to_text()).unwrap(),
            Share::parse(&shares[1].to_text()).unwrap(),
        ];
        assert!(matches!(
            seal.combine(&twice),
            Err(KeyringError::NotEnoughShares { given: 1, .. })
        ));
    }

    #[test]
    fn a_changed_share_is_refused_by_number_and_never_echoed() {
        let (mut ids, rs) = custodians(3);
        let seal = QuorumSeal::deal(2, &rs).unwrap();
        let share = open_one(&seal, ids.remove(0));
        let text = share.to_text();
        // Flip one bit in every byte of the value in turn.
        let head = text.rfind(':').unwrap() + 1;
        for at in head..text.len() {
            let mut b = text.as_bytes().to_vec();
            b[at] = if b[at] == b'0' { b'1' } else { b'0' };
            let changed = String::from_utf8(b).unwrap();
            let err = seal.check(&Share::parse(&changed).unwrap()).err().unwrap();
            assert!(
                matches!(err, KeyringError::ShareRefused { x: Some(1), .. }),
                "{err}"
            );
            assert!(!err.to_string().contains(&changed[head..]), "{err}");
        }
        for bad in [
            "school-vault-share-v1:0:00",
            "school-vault-share-v1:256:00",
            "school-vault-share-v1:1:zz",
            "school-vault-share-v1:1:00",
            "AGE-SECRET-KEY-1QQQQ",
            "",
        ] {
            let err = Share::parse(bad).err().unwrap();
            assert!(
                matches!(err, KeyringError::ShareRefused { .. }),
                "{bad}: {err}"
            );
        }
        let zero = format!("school-vault-share-v1:0:{}", "00".repeat(SECRET_LEN));
        assert!(Share::parse(&zero).is_err());
    }

    #[test]
    fn a_share_of_another_dealing_is_refused() {
        let (mut ids, rs) = custodians(2);
        let old = QuorumSeal::deal(2, &rs).unwrap();
        let new = QuorumSeal::deal(2, &rs).unwrap();
        let s = open_one(&old, ids.remove(0));
        assert!(new.check(&s).is_err());
    }

    #[test]
    fn thresholds_and_custodian_lists_are_checked() {
        let (_, rs) = custodians(3);
        assert!(QuorumSeal::deal(1, &rs).is_err());
        assert!(QuorumSeal::deal(4, &rs).is_err());
        assert!(QuorumSeal::deal(2, &[rs[0].clone(), rs[0].clone()]).is_err());
        let (_, many) = custodians(MAX_CUSTODIANS + 1);
        assert!(QuorumSeal::deal(2, &many).is_err());
        let q = QuorumSeal::deal(3, &rs).unwrap();
        assert_eq!(q.quorum().holders.len(), 3);
        assert!(!rs.contains(&q.quorum().key));
    }
}
