//! Key store, part 3: the audit anchor. One row: the newest signed head of the data store's
//! audit chain (sequence, hash, time, the audit key's Ed25519 signature over them), kept in the
//! other database so that an administrator of the data store alone cannot cut the newest
//! entries, rewind the head and the checkpoints, and have `verify` call the log intact. The
//! vault only ever moves it forward.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AuditAnchor {
    Table,
    Id,
    Seq,
    Hash,
    At,
    Signature,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.create_table(
            Table::create()
                .table(AuditAnchor::Table)
                .col(integer(AuditAnchor::Id).primary_key())
                .col(big_integer(AuditAnchor::Seq))
                .col(blob(AuditAnchor::Hash))
                .col(timestamp_with_time_zone(AuditAnchor::At))
                .col(blob(AuditAnchor::Signature))
                .to_owned(),
        )
        .await
    }

    /// Going back forgets the anchor: `verify` then checks the log against the data store alone,
    /// as before the anchor existed.
    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.drop_table(Table::drop().table(AuditAnchor::Table).to_owned())
            .await
    }
}
