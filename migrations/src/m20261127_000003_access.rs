//! Data store, part 2: who may decrypt what and the evidence of it. Principals and their roles,
//! consents and legal grounds, access requests and approvals, break-glass, and the hash-chained
//! audit log with signed checkpoints. Tokens are stored only as hashes; no value is stored here.
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Subjects {
    Table,
    BlockedAt,
}

#[derive(DeriveIden)]
enum Principals {
    Table,
    Id,
    Name,
    TokenHash,
    CreatedAt,
    RevokedAt,
}

#[derive(DeriveIden)]
enum PrincipalRoles {
    Table,
    PrincipalId,
    Scope,
    Role,
}

#[derive(DeriveIden)]
enum Consents {
    Table,
    Id,
    SubjectId,
    Operator,
    OperatorBin,
    GivenBy,
    GuardianId,
    Method,
    EvidenceRef,
    TextVersion,
    Categories,
    ThirdParty,
    CrossBorder,
    Publication,
    GivenAt,
    TermUntil,
    RecordedBy,
    WithdrawnAt,
    WithdrawalDeadline,
    RefusalReason,
}

#[derive(DeriveIden)]
enum LegalGrounds {
    Table,
    Id,
    SubjectId,
    Category,
    Ground,
    Reference,
    RecordedBy,
    RecordedAt,
    EndedAt,
}

#[derive(DeriveIden)]
enum AccessRequests {
    Table,
    Id,
    Requester,
    SchoolId,
    SubjectId,
    RecordId,
    Categories,
    Purpose,
    Justification,
    Status,
    CreatedAt,
    DecidedBy,
    DecidedAt,
    Reason,
    ExpiresAt,
    UsesLeft,
}

#[derive(DeriveIden)]
enum BreakGlass {
    Table,
    Id,
    Principal,
    SchoolId,
    SubjectId,
    Justification,
    OpenedAt,
    ExpiresAt,
    ReviewedBy,
    ReviewedAt,
    ReviewNote,
}

#[derive(DeriveIden)]
enum AuditLog {
    Table,
    Seq,
    At,
    Actor,
    Action,
    SchoolId,
    SubjectId,
    RecordId,
    Categories,
    Purpose,
    Outcome,
    Reason,
    PrevHash,
    Hash,
}

#[derive(DeriveIden)]
enum AuditHead {
    Table,
    Id,
    Seq,
    Hash,
}

#[derive(DeriveIden)]
enum AuditCheckpoints {
    Table,
    Seq,
    Hash,
    Signature,
    At,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, m: &SchemaManager) -> Result<(), DbErr> {
        m.alter_table(
            Table::alter()
                .table(Subjects::Table)
                .add_column(timestamp_with_time_zone_null(Subjects::BlockedAt))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Principals::Table)
                .col(string_len(Principals::Id, 36).primary_key())
                .col(string_len(Principals::Name, 200))
                .col(blob(Principals::TokenHash))
                .col(timestamp_with_time_zone(Principals::CreatedAt))
                .col(timestamp_with_time_zone_null(Principals::RevokedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ux_principals_token_hash")
                .table(Principals::Table)
                .col(Principals::TokenHash)
                .unique()
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(PrincipalRoles::Table)
                .col(string_len(PrincipalRoles::PrincipalId, 36))
                .col(string_len(PrincipalRoles::Scope, 64))
                .col(string_len(PrincipalRoles::Role, 32))
                .primary_key(
                    Index::create()
                        .col(PrincipalRoles::PrincipalId)
                        .col(PrincipalRoles::Scope)
                        .col(PrincipalRoles::Role),
                )
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(Consents::Table)
                .col(string_len(Consents::Id, 36).primary_key())
                .col(string_len(Consents::SubjectId, 36))
                .col(string_len(Consents::Operator, 200))
                .col(string_len(Consents::OperatorBin, 12))
                .col(string_len(Consents::GivenBy, 16))
                .col(string_len_null(Consents::GuardianId, 36))
                .col(string_len(Consents::Method, 32))
                .col(string_len(Consents::EvidenceRef, 200))
                .col(string_len(Consents::TextVersion, 64))
                .col(text(Consents::Categories))
                .col(boolean(Consents::ThirdParty))
                .col(boolean(Consents::CrossBorder))
                .col(boolean(Consents::Publication))
                .col(timestamp_with_time_zone(Consents::GivenAt))
                .col(timestamp_with_time_zone_null(Consents::TermUntil))
                .col(string_len(Consents::RecordedBy, 36))
                .col(timestamp_with_time_zone_null(Consents::WithdrawnAt))
                .col(date_null(Consents::WithdrawalDeadline))
                .col(text_null(Consents::RefusalReason))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_consents_subject")
                .table(Consents::Table)
                .col(Consents::SubjectId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(LegalGrounds::Table)
                .col(string_len(LegalGrounds::Id, 36).primary_key())
                .col(string_len(LegalGrounds::SubjectId, 36))
                .col(string_len(LegalGrounds::Category, 64))
                .col(string_len(LegalGrounds::Ground, 64))
                .col(string_len(LegalGrounds::Reference, 200))
                .col(string_len(LegalGrounds::RecordedBy, 36))
                .col(timestamp_with_time_zone(LegalGrounds::RecordedAt))
                .col(timestamp_with_time_zone_null(LegalGrounds::EndedAt))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_legal_grounds_subject")
                .table(LegalGrounds::Table)
                .col(LegalGrounds::SubjectId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AccessRequests::Table)
                .col(string_len(AccessRequests::Id, 36).primary_key())
                .col(string_len(AccessRequests::Requester, 36))
                .col(string_len(AccessRequests::SchoolId, 64))
                .col(string_len(AccessRequests::SubjectId, 36))
                .col(string_len_null(AccessRequests::RecordId, 36))
                .col(text(AccessRequests::Categories))
                .col(string_len(AccessRequests::Purpose, 64))
                .col(text(AccessRequests::Justification))
                .col(string_len(AccessRequests::Status, 16))
                .col(timestamp_with_time_zone(AccessRequests::CreatedAt))
                .col(string_len_null(AccessRequests::DecidedBy, 36))
                .col(timestamp_with_time_zone_null(AccessRequests::DecidedAt))
                .col(text_null(AccessRequests::Reason))
                .col(timestamp_with_time_zone_null(AccessRequests::ExpiresAt))
                .col(integer_null(AccessRequests::UsesLeft))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_access_requests_requester_subject")
                .table(AccessRequests::Table)
                .col(AccessRequests::Requester)
                .col(AccessRequests::SubjectId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(BreakGlass::Table)
                .col(string_len(BreakGlass::Id, 36).primary_key())
                .col(string_len(BreakGlass::Principal, 36))
                .col(string_len(BreakGlass::SchoolId, 64))
                .col(string_len(BreakGlass::SubjectId, 36))
                .col(text(BreakGlass::Justification))
                .col(timestamp_with_time_zone(BreakGlass::OpenedAt))
                .col(timestamp_with_time_zone(BreakGlass::ExpiresAt))
                .col(string_len_null(BreakGlass::ReviewedBy, 36))
                .col(timestamp_with_time_zone_null(BreakGlass::ReviewedAt))
                .col(text_null(BreakGlass::ReviewNote))
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AuditLog::Table)
                .col(big_integer(AuditLog::Seq).primary_key())
                .col(timestamp_with_time_zone(AuditLog::At))
                .col(string_len(AuditLog::Actor, 64))
                .col(string_len(AuditLog::Action, 64))
                .col(string_len_null(AuditLog::SchoolId, 64))
                .col(string_len_null(AuditLog::SubjectId, 36))
                .col(string_len_null(AuditLog::RecordId, 36))
                .col(text(AuditLog::Categories))
                .col(string_len_null(AuditLog::Purpose, 64))
                .col(string_len(AuditLog::Outcome, 32))
                .col(text_null(AuditLog::Reason))
                .col(blob(AuditLog::PrevHash))
                .col(blob(AuditLog::Hash))
                .to_owned(),
        )
        .await?;
        m.create_index(
            Index::create()
                .name("ix_audit_subject")
                .table(AuditLog::Table)
                .col(AuditLog::SubjectId)
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AuditHead::Table)
                .col(integer(AuditHead::Id).primary_key())
                .col(big_integer(AuditHead::Seq))
                .col(blob(AuditHead::Hash))
                .to_owned(),
        )
        .await?;
        // The chain starts from a known all-zero hash at sequence 0.
        m.exec_stmt(
            Query::insert()
                .into_table(AuditHead::Table)
                .columns([AuditHead::Id, AuditHead::Seq, AuditHead::Hash])
                .values_panic([1.into(), 0i64.into(), vec![0u8; 32].into()])
                .to_owned(),
        )
        .await?;
        m.create_table(
            Table::create()
                .table(AuditCheckpoints::Table)
                .col(big_integer(AuditCheckpoints::Seq).primary_key())
                .col(blob(AuditCheckpoints::Hash))
                .col(blob(AuditCheckpoints::Signature))
                .col(timestamp_with_time_zone(AuditCheckpoints::At))
                .to_owned(),
        )
        .await
    }

    async fn down(&self, m: &SchemaManager) -> Result<(), DbErr> {
        for t in [
            AuditCheckpoints::Table.into_iden(),
            AuditHead::Table.into_iden(),
            AuditLog::Table.into_iden(),
            BreakGlass::Table.into_iden(),
            AccessRequests::Table.into_iden(),
            LegalGrounds::Table.into_iden(),
            Consents::Table.into_iden(),
            PrincipalRoles::Table.into_iden(),
            Principals::Table.into_iden(),
        ] {
            m.drop_table(Table::drop().table(t).to_owned()).await?;
        }
        m.alter_table(
            Table::alter()
                .table(Subjects::Table)
                .drop_column(Subjects::BlockedAt)
                .to_owned(),
        )
        .await
    }
}
