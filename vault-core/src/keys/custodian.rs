//! The custodians' side of the keyring: who they are (age recipients), what they unseal it
//! with (identities, a passphrase), and every way that can fail.

use std::io::Write;
use std::path::Path;

use age::secrecy::SecretString;
use chrono::Utc;
use zeroize::Zeroizing;

use crate::domain::Category;
use crate::keys::envelope::CryptoError;

/// Why a keyring could not be made, sealed, unsealed or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyringError {
    #[error("no identity or passphrase given can unseal the keyring: {0}")]
    Unseal(#[source] age::DecryptError),
    #[error("the keyring could not be sealed: {0}")]
    Seal(String),
    #[error("the keyring file is damaged: {0}")]
    Corrupt(&'static str),
    #[error("cannot read the identity file {path}: {source}")]
    IdentityFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the identity file {path} holds no usable age identity (expected lines starting AGE-SECRET-KEY-1)"
    )]
    NoIdentity { path: String },
    #[error("invalid age recipient {0:?}: expected a public key starting age1")]
    Recipient(String),
    /// The input was a secret identity: it is never echoed back.
    #[error(
        "that is a secret identity (AGE-SECRET-KEY-1...), not a public recipient: give its public key (age-keygen -y FILE), and treat the secret as exposed"
    )]
    SecretGivenAsRecipient,
    #[error("the keyring has no key for category {0}: run `vaultctl keyring status` and rotate it")]
    NoKeyFor(Category),
    #[error("the keyring has no version {version} of the {category} key (retired or never made)")]
    NoVersion { category: Category, version: u32 },
    /// The stored keyring is not chained to the one this process knows, or is older: it is
    /// never used. Only generation numbers are named, never a key.
    #[error(
        "the key store's keyring (generation {seen}) is refused: {problem}. Nothing is sealed under it: writes stop until the key store holds a keyring chained to the one the vault knows. If no custodian made this change, the key store was written to behind the vault's back: put back the last good `keyring` and `keyring_chain` rows (from a backup: `vaultctl restore`), then check with `vaultctl keyring verify`"
    )]
    Refused {
        seen: i64,
        problem: crate::keys::keychain::ChainProblem,
    },
    /// A quorum cannot be dealt as asked (threshold, custodians).
    #[error("{0}")]
    QuorumSpec(String),
    /// A share given back is refused; names its number when it has one, never its value.
    #[error("{}", share_refused(*.x, .why))]
    ShareRefused { x: Option<u8>, why: &'static str },
    #[error(
        "the keyring is sealed to a quorum of custodians: {given} of the {threshold} shares needed were given. Each custodian gives their own (`vaultctl keyring unseal --identity FILE`, or one --identity per custodian to a local command)"
    )]
    NotEnoughShares { given: usize, threshold: u8 },
    #[error(
        "the shares given rebuild a key that is not the one the keyring is sealed to: the key store's shares were changed; restore the `keyring_shares` rows from a backup"
    )]
    QuorumMismatch,
    /// A change that would bypass the quorum (adding a recipient to a quorum-sealed keyring).
    #[error("{0}")]
    QuorumSealed(&'static str),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

fn share_refused(x: Option<u8>, why: &str) -> String {
    match x {
        Some(x) => format!("share {x} is refused: {why}"),
        None => format!("the share is refused: {why}"),
    }
}

/// A custodian's public age recipient (`age1...`). Public: safe to print.
#[derive(Clone, Debug)]
pub struct CustodianRecipient(pub(crate) age::x25519::Recipient);

impl PartialEq for CustodianRecipient {
    fn eq(&self, other: &Self) -> bool {
        self.to_string() == other.to_string()
    }
}

impl CustodianRecipient {
    pub fn parse(s: &str) -> Result<Self, KeyringError> {
        s.trim()
            .parse::<age::x25519::Recipient>()
            .map(CustodianRecipient)
            .map_err(|_| {
                // Anywhere in the text, not only at its start: a pasted identity file begins
                // with comment lines (found by the identity fuzz target).
                if s.to_ascii_uppercase().contains("AGE-SECRET-KEY") {
                    KeyringError::SecretGivenAsRecipient
                } else {
                    // A short prefix is enough to recognise the typo.
                    let mut shown: String = s.chars().take(20).collect();
                    if s.chars().count() > 20 {
                        shown.push('…');
                    }
                    KeyringError::Recipient(shown)
                }
            })
    }
}

impl CustodianRecipient {
    pub(crate) fn as_age(&self) -> &dyn age::Recipient {
        &self.0
    }
    pub(crate) fn from_age(r: age::x25519::Recipient) -> Self {
        CustodianRecipient(r)
    }
}

impl std::fmt::Display for CustodianRecipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A passphrase that seals or unseals the keyring. No Debug or Display.
pub struct Passphrase(SecretString);

impl Passphrase {
    pub fn new(s: String) -> Self {
        Passphrase(SecretString::from(s))
    }
    pub(crate) fn scrypt_recipient(&self) -> age::scrypt::Recipient {
        age::scrypt::Recipient::new(self.0.clone())
    }
    pub(crate) fn scrypt_identity(&self) -> age::scrypt::Identity {
        age::scrypt::Identity::new(self.0.clone())
    }
}

/// What unseals the keyring: the custodian's identities, or the passphrase.
pub enum Unlock {
    Identities(Vec<Box<dyn age::Identity + Send + Sync>>),
    Passphrase(Passphrase),
}

impl Unlock {
    /// Reads an age identity file, such as one made by `age-keygen -o key.txt`.
    pub fn identity_file(path: &Path) -> Result<Self, KeyringError> {
        let shown = path.display().to_string();
        let file = age::IdentityFile::from_file(shown.clone()).map_err(|source| {
            KeyringError::IdentityFile {
                path: shown.clone(),
                source,
            }
        })?;
        let ids = file
            .into_identities()
            .map_err(|_| KeyringError::NoIdentity {
                path: shown.clone(),
            })?;
        if ids.is_empty() {
            return Err(KeyringError::NoIdentity { path: shown });
        }
        Ok(Unlock::Identities(ids))
    }

    /// Reads several identity files (one per custodian of a quorum at a local ceremony).
    pub fn identity_files(paths: &[std::path::PathBuf]) -> Result<Self, KeyringError> {
        let mut all = Vec::new();
        for p in paths {
            if let Unlock::Identities(ids) = Self::identity_file(p)? {
                all.extend(ids);
            }
        }
        Ok(Unlock::Identities(all))
    }

    /// A freshly generated X25519 identity, kept in memory only.
    pub fn generate_identity() -> (Self, CustodianRecipient) {
        let id = age::x25519::Identity::generate();
        let recipient = CustodianRecipient(id.to_public());
        (Unlock::Identities(vec![Box::new(id)]), recipient)
    }

    /// Writes a new identity file in `age-keygen`'s format (owner-only permissions) and returns
    /// its public recipient. Refuses to overwrite an existing file.
    pub fn generate_identity_file(path: &Path) -> Result<CustodianRecipient, KeyringError> {
        use age::secrecy::ExposeSecret;
        let id = age::x25519::Identity::generate();
        let recipient = CustodianRecipient(id.to_public());
        let text = Zeroizing::new(format!(
            "# created: {}\n# public key: {}\n{}\n",
            Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            recipient,
            id.to_string().expose_secret()
        ));
        let io_err = |source| KeyringError::IdentityFile {
            path: path.display().to_string(),
            source,
        };
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(path).map_err(io_err)?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(io_err)?;
        Ok(recipient)
    }
}
