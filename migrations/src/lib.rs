//! Schema migrations for the vault's two stores.
//!
//! The data store (subjects, records, field ciphertext) and the key store (the sealed keyring and
//! the wrapped DEKs) live in separate databases, so each has its own migrator: a backup of one
//! never carries the other's tables.
#![forbid(unsafe_code)]

pub use sea_orm_migration::MigratorTrait;
use sea_orm_migration::prelude::*;

mod m20261127_000001_data_store;
mod m20261127_000002_key_store;
mod m20261127_000003_access;
mod m20261127_000004_retention;
mod m20261127_000005_transfers;
mod m20261203_000006_iin_per_school;
mod m20261210_000007_keyring_chain;
mod m20261210_000008_keyring_pin;
mod m20261211_000009_audit_anchor;
mod m20261211_000010_request_action;
mod m20261212_000011_iin_index_key;
mod m20261213_000012_keyring_shares;

/// Migrations of the data store.
#[derive(Debug)]
pub struct DataMigrator;

#[async_trait::async_trait]
impl MigratorTrait for DataMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000001_data_store::Migration),
            Box::new(m20261127_000003_access::Migration),
            Box::new(m20261127_000004_retention::Migration),
            Box::new(m20261127_000005_transfers::Migration),
            Box::new(m20261203_000006_iin_per_school::Migration),
            Box::new(m20261210_000008_keyring_pin::Migration),
            Box::new(m20261211_000010_request_action::Migration),
            Box::new(m20261212_000011_iin_index_key::Migration),
        ]
    }
}

/// Migrations of the key store.
#[derive(Debug)]
pub struct KeyMigrator;

#[async_trait::async_trait]
impl MigratorTrait for KeyMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261127_000002_key_store::Migration),
            Box::new(m20261210_000007_keyring_chain::Migration),
            Box::new(m20261211_000009_audit_anchor::Migration),
            Box::new(m20261213_000012_keyring_shares::Migration),
        ]
    }
}
