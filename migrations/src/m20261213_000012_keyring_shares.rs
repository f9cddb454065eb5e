//! Key store, part 4: the custodians' shares of a keyring sealed M-of-N. The keyring is then
//! sealed to one age recipient, the quorum key, whose secret is split with Shamir's scheme; each
//! row holds one share as an age file to one custodian's recipient, and a SHA-256 commitment to
//! the share, so that a share given back at unseal is checked before it is used. No row holds
//! anything a custodian's identity has not sealed. An empty table: the keyring is sealed to
//! recipients or a passphrase directly (any one unseals it).
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum KeyringShares {
    Table,
    /// The share's x-coordinate, 1 to 255.
    X,
    Threshold,
    /// The quorum key's public recipient (age1...), the same on every row.
    QuorumRecipient,
    /// The custodian's public recipient the share is sealed to.
    Custodian,
    Sealed,
    Commitment,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(KeyringShares::Table)
                .col(integer(KeyringShares::X).primary_key())
                .col(integer(KeyringShares::Threshold))
                .col(text(KeyringShares::QuorumRecipient))
                .col(text(KeyringShares::Custodian))
                .col(blob(KeyringShares::Sealed))
                .col(blob(KeyringShares::Commitment))
                .col(timestamp_with_time_zone(KeyringShares::CreatedAt))
                .to_owned(),
        )
        .await
    }

    /// Going back loses the shares: run it only on a keyring sealed to recipients or a
    /// passphrase (a quorum-sealed keyring would then open for nobody).
    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(KeyringShares::Table).to_owned())
            .await
    }
}
