//! Data store, part 4: cross-border transfers. The disclosure ledger records every transfer of a
//! subject's data (to whom, where, what, why, on which basis, when, notification due); transfer
//! grounds record an Art. 16(3) ground for a subject and a destination.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Disclosures {
    Table,
    Id,
    SubjectId,
    Recipient,
    Country,
    Categories,
    Purpose,
    Basis,
    At,
    NotifyBy,
}

#[derive(DeriveIden)]
enum TransferGrounds {
    Table,
    Id,
    SubjectId,
    Country,
    Ground,
    Reference,
    RecordedAt,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(Disclosures::Table)
                .col(string_len(Disclosures::Id, 36).primary_key())
                .col(string_len(Disclosures::SubjectId, 36))
                .col(string_len(Disclosures::Recipient, 200))
                .col(string_len(Disclosures::Country, 2))
                .col(text(Disclosures::Categories))
                .col(string_len(Disclosures::Purpose, 64))
                .col(string_len(Disclosures::Basis, 200))
                .col(timestamp_with_time_zone(Disclosures::At))
                .col(date_null(Disclosures::NotifyBy))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_disclosures_subject")
                .table(Disclosures::Table)
                .col(Disclosures::SubjectId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(TransferGrounds::Table)
                .col(string_len(TransferGrounds::Id, 36).primary_key())
                .col(string_len(TransferGrounds::SubjectId, 36))
                .col(string_len(TransferGrounds::Country, 2))
                .col(string_len(TransferGrounds::Ground, 64))
                .col(string_len(TransferGrounds::Reference, 200))
                .col(timestamp_with_time_zone(TransferGrounds::RecordedAt))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(TransferGrounds::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(Disclosures::Table).to_owned())
            .await
    }
}
