//! Data store, part 6: the pin of the keyring's chain. One row: the chain's first generation
//! and its public key, and the newest generation the vault has accepted with its public key and
//! the SHA-256 of its sealed keyring. Kept in the data store, not beside the chain in the key
//! store, so that whoever can write only the key store can neither replace the chain wholesale
//! nor roll it back: a keyring older than the pin, or a chain that does not start where the pin
//! says, is refused.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyringPin {
    Table,
    Id,
    GenesisGeneration,
    GenesisPublicKey,
    Generation,
    PublicKey,
    SealedSha256,
    UpdatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(KeyringPin::Table)
                .col(integer(KeyringPin::Id).primary_key())
                .col(big_integer(KeyringPin::GenesisGeneration))
                .col(blob(KeyringPin::GenesisPublicKey))
                .col(big_integer(KeyringPin::Generation))
                .col(blob(KeyringPin::PublicKey))
                .col(blob(KeyringPin::SealedSha256))
                .col(timestamp_with_time_zone(KeyringPin::UpdatedAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(KeyringPin::Table).to_owned())
            .await
    }
}
