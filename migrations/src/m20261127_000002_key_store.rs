//! Key store: the age-sealed keyring and the wrapped DEKs. Kept in its own database so that a
//! copy of the data store alone opens nothing.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Keyring {
    Table,
    Id,
    Generation,
    Sealed,
    Recipients,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Deks {
    Table,
    Id,
    RecordId,
    Category,
    KekVersion,
    Wrapped,
    CreatedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Keyring::Table)
                    // One row: the current keyring. Old generations are overwritten, never kept,
                    // so a retired KEK is really gone.
                    .col(integer(Keyring::Id).primary_key())
                    .col(big_integer(Keyring::Generation))
                    .col(blob(Keyring::Sealed))
                    // Public age recipients (one per line) it is sealed to, so that a rotation can
                    // re-seal to the same custodians; empty when sealed to a passphrase.
                    .col(text(Keyring::Recipients))
                    .col(timestamp_with_time_zone(Keyring::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Deks::Table)
                    .col(string_len(Deks::Id, 36).primary_key())
                    .col(string_len(Deks::RecordId, 36))
                    .col(string_len(Deks::Category, 64))
                    .col(integer(Deks::KekVersion))
                    .col(blob(Deks::Wrapped))
                    .col(timestamp_with_time_zone(Deks::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_deks_record_category")
                    .table(Deks::Table)
                    .col(Deks::RecordId)
                    .col(Deks::Category)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_deks_category_version")
                    .table(Deks::Table)
                    .col(Deks::Category)
                    .col(Deks::KekVersion)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Deks::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Keyring::Table).to_owned())
            .await
    }
}
