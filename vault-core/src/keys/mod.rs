//! Keys: the envelope's primitives (AES-256-GCM under KEKs and DEKs), the keyring that holds the
//! KEKs inside age, the custodians who unseal it (alone or as a quorum), the signed chain of its
//! generations, and the custodian's operations on it. Field values are sealed and opened here,
//! never decided: who may open what is `access`.

pub(crate) mod custodian;
pub(crate) mod custody;
pub(crate) mod envelope;
pub(crate) mod keychain;
pub(crate) mod keyring;
pub(crate) mod open;
pub(crate) mod quorum;
pub(crate) mod record_keys;
pub(crate) mod reindex;
