//! Data store, part 7: an access request names the act it is for, `read` or `transfer`, so a
//! director's approval to read health data cannot be spent on sending it to a recipient. Rows
//! made before this migration were read requests.
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AccessRequests {
    Table,
    Action,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(AccessRequests::Table)
                .add_column(
                    ColumnDef::new(AccessRequests::Action)
                        .string()
                        .not_null()
                        .default("read"),
                )
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(AccessRequests::Table)
                .drop_column(AccessRequests::Action)
                .to_owned(),
        )
        .await
    }
}
