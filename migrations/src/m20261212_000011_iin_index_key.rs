//! Data store, part 8: each subject's IIN index names the blind-index key it was made under (an
//! 8-byte identifier, never the key), so rotating that key (`vaultctl keyring rotate-index`)
//! knows which subjects it has moved and can stop and resume. Rows made before this migration
//! are under the keyring's current key, which they leave empty.
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::blob_null;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Subjects {
    Table,
    IinKey,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Subjects::Table)
                .add_column(blob_null(Subjects::IinKey))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Subjects::Table)
                .drop_column(Subjects::IinKey)
                .to_owned(),
        )
        .await
    }
}
