//! Subjects and records: the `Vault` that seals and stores them across the two stores, the group
//! writer, retention and crypto-shredding, backup and restore.

pub(crate) mod backup;
pub(crate) mod retention;
pub(crate) mod vault;
pub(crate) mod writer;
