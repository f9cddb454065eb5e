//! Data store, part 5: an IIN is unique per school, not across the network. A student who moves
//! school is enrolled again by the new school; refusing that enrolment told the new school that
//! the child is enrolled elsewhere, which it has no business knowing.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Subjects {
    Table,
    SchoolId,
    IinIndex,
}

const OLD: &str = "ux_subjects_iin_index";
const NEW: &str = "ux_subjects_school_iin_index";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(Index::drop().name(OLD).table(Subjects::Table).to_owned())
            .await?;
        m.create_index(
            Index::create()
                .name(NEW)
                .table(Subjects::Table)
                .col(Subjects::SchoolId)
                .col(Subjects::IinIndex)
                .unique()
                .to_owned(),
        )
        .await?;
        // Lookups by IIN alone (a network-wide search) still use an index.
        m.create_index(
            Index::create()
                .name("ix_subjects_iin_index")
                .table(Subjects::Table)
                .col(Subjects::IinIndex)
                .to_owned(),
        )
        .await
    }

    /// Fails if two schools now hold the same IIN: going back would need one of them removed.
    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_index(
            Index::drop()
                .name("ix_subjects_iin_index")
                .table(Subjects::Table)
                .to_owned(),
        )
        .await?;
        m.drop_index(Index::drop().name(NEW).table(Subjects::Table).to_owned())
            .await?;
        m.create_index(
            Index::create()
                .name(OLD)
                .table(Subjects::Table)
                .col(Subjects::IinIndex)
                .unique()
                .to_owned(),
        )
        .await
    }
}
