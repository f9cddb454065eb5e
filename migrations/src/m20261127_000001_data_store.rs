//! Data store: subjects, records and the sealed fields of each record. Nothing here is a key.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Subjects {
    Table,
    Id,
    SchoolId,
    Kind,
    IinIndex,
    CreatedAt,
    LeftAt,
}

#[derive(DeriveIden)]
enum Records {
    Table,
    Id,
    SubjectId,
    SchoolId,
    RecordType,
    Version,
    State,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RecordFields {
    Table,
    RecordId,
    Field,
    Category,
    Ciphertext,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Subjects::Table)
                    .col(string_len(Subjects::Id, 36).primary_key())
                    .col(string_len(Subjects::SchoolId, 64))
                    .col(string_len(Subjects::Kind, 32))
                    // HMAC of the IIN under the keyring's blind-index key, never the IIN itself.
                    .col(blob_null(Subjects::IinIndex))
                    .col(timestamp_with_time_zone(Subjects::CreatedAt))
                    .col(timestamp_with_time_zone_null(Subjects::LeftAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_subjects_iin_index")
                    .table(Subjects::Table)
                    .col(Subjects::IinIndex)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(Records::Table)
                    .col(string_len(Records::Id, 36).primary_key())
                    .col(string_len(Records::SubjectId, 36))
                    .col(string_len(Records::SchoolId, 64))
                    .col(string_len(Records::RecordType, 64))
                    .col(big_integer(Records::Version))
                    .col(string_len(Records::State, 16))
                    .col(timestamp_with_time_zone(Records::CreatedAt))
                    .col(timestamp_with_time_zone(Records::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_records_subject")
                            .from(Records::Table, Records::SubjectId)
                            .to(Subjects::Table, Subjects::Id),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_records_subject")
                    .table(Records::Table)
                    .col(Records::SubjectId)
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(RecordFields::Table)
                    .col(string_len(RecordFields::RecordId, 36))
                    .col(string_len(RecordFields::Field, 64))
                    .col(string_len(RecordFields::Category, 64))
                    .col(blob(RecordFields::Ciphertext))
                    .primary_key(
                        Index::create()
                            .col(RecordFields::RecordId)
                            .col(RecordFields::Field),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_record_fields_record")
                            .from(RecordFields::Table, RecordFields::RecordId)
                            .to(Records::Table, Records::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(RecordFields::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Records::Table).to_owned())
            .await?;
        manager
            .drop_table(Table::drop().table(Subjects::Table).to_owned())
            .await
    }
}
