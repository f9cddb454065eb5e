//! Data store, part 3: retention. Legal holds exempt a subject or record from sweeps; the shred
//! log lists every crypto-shred so that restoring an older backup can re-apply them.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum LegalHolds {
    Table,
    Id,
    SubjectId,
    RecordId,
    Reason,
    PlacedBy,
    PlacedAt,
    ReleasedAt,
    ReleaseReason,
}

#[derive(DeriveIden)]
enum ShredLog {
    Table,
    Seq,
    RecordId,
    Categories,
    Rule,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(LegalHolds::Table)
                .col(string_len(LegalHolds::Id, 36).primary_key())
                .col(string_len(LegalHolds::SubjectId, 36))
                .col(string_len_null(LegalHolds::RecordId, 36))
                .col(text(LegalHolds::Reason))
                .col(string_len(LegalHolds::PlacedBy, 64))
                .col(timestamp_with_time_zone(LegalHolds::PlacedAt))
                .col(timestamp_with_time_zone_null(LegalHolds::ReleasedAt))
                .col(text_null(LegalHolds::ReleaseReason))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(ShredLog::Table)
                .col(big_pk_auto(ShredLog::Seq))
                .col(string_len(ShredLog::RecordId, 36))
                .col(text(ShredLog::Categories))
                .col(string_len(ShredLog::Rule, 200))
                .col(timestamp_with_time_zone(ShredLog::At))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(ShredLog::Table).to_owned())
            .await?;
        m.drop_table(Table::drop().table(LegalHolds::Table).to_owned())
            .await
    }
}
