//! Key store, part 2: the keyring's chain. One row per keyring generation with public values
//! only: the generation's chain public key, its signature by the previous generation's chain key
//! (the first generation of a chain signs itself) and the SHA-256 of its sealed keyring. The
//! sealed keyrings of old generations are still overwritten, never kept: a retired KEK stays
//! gone; only their links remain, so `vaultctl keyring verify` checks the chain from its start.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyringChain {
    Table,
    Generation,
    PublicKey,
    Signature,
    SealedSha256,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(KeyringChain::Table)
                .col(big_integer(KeyringChain::Generation).primary_key())
                .col(blob(KeyringChain::PublicKey))
                .col(blob(KeyringChain::Signature))
                .col(blob(KeyringChain::SealedSha256))
                .col(timestamp_with_time_zone(KeyringChain::CreatedAt))
                .to_owned(),
        )
        .await
    }

    /// Going back forgets the chain: the keyring then opens as one made before it, and the data
    /// store's pin (data migration `keyring_pin`) must be dropped with it.
    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(KeyringChain::Table).to_owned())
            .await
    }
}
