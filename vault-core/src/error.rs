//! The one error the vault's services answer with. Below every service, so the modules that
//! return it (the store layer's repositories among them) depend on no service.

use crate::access::policy::{DenyReason, PolicyError, Role};
use crate::audit::chain::AuditError;
use crate::catalog::CatalogError;
use crate::domain::{
    Category, DomainError, FieldName, RecordId, RecordType, SchoolId, SubjectId, SubjectKind,
};
use crate::keys::custodian::KeyringError;
use crate::keys::envelope::CryptoError;
use crate::store::StoreError;

/// Everything the vault service can refuse or fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Keyring(#[from] KeyringError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "record type '{0}' is not in the catalog: the vault stores only what the approved list names"
    )]
    UnknownRecordType(RecordType),
    #[error(
        "field '{field}' is not in the catalog for record type '{record_type}': the vault stores only what the approved list names"
    )]
    UnknownField {
        record_type: RecordType,
        field: FieldName,
    },
    #[error("field '{field}' has a value of the wrong kind: expected {expected}")]
    InvalidValue {
        field: FieldName,
        expected: &'static str,
    },
    #[error("a record needs at least one field")]
    EmptyRecord,
    #[error("the keyring changed three times while this record was being written: try again")]
    KeyringBusy,
    #[error(
        "record type '{record_type}' is for {expected} subjects, but subject {subject} is a {actual}"
    )]
    WrongSubjectKind {
        record_type: RecordType,
        subject: SubjectId,
        expected: SubjectKind,
        actual: SubjectKind,
    },
    #[error("subject {0} does not exist")]
    SubjectNotFound(SubjectId),
    #[error("record {0} does not exist")]
    RecordNotFound(RecordId),
    #[error("record {0} was shredded: its data cannot be recovered")]
    RecordShredded(RecordId),
    #[error(
        "record {record} is at version {current}, not {expected}: read it again and reapply the change"
    )]
    StaleVersion {
        record: RecordId,
        expected: u64,
        current: u64,
    },
    #[error("a subject with this IIN already exists")]
    DuplicateIin,
    #[error("the key store already holds a keyring: refusing to overwrite it")]
    KeyringExists,
    #[error("the key store holds no keyring: initialise one first (vaultctl keyring init)")]
    KeyringMissing,
    #[error("the {category} key of record {record} failed to open: the key store was altered")]
    DekTampered {
        record: RecordId,
        category: Category,
        #[source]
        source: KeyringError,
    },
    #[error("field '{field}' of record {record} failed to open: {source}")]
    FieldTampered {
        record: RecordId,
        field: FieldName,
        #[source]
        source: CryptoError,
    },
    #[error("the data store holds a malformed row: {0}")]
    CorruptRow(&'static str),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("missing, unknown or revoked token")]
    Unauthenticated,
    #[error("{category}: {reason}")]
    Forbidden {
        category: Category,
        reason: DenyReason,
    },
    #[error("{category} needs a director's approval: request access first")]
    ApprovalRequired { category: Category },
    #[error(
        "{category} is a special category and this subject has no consent or legal ground on file for it: record one first"
    )]
    NoLegalBasis { category: Category },
    #[error("subject {0} is blocked: its data is kept but not processed until unblocked")]
    Blocked(SubjectId),
    #[error("nobody may approve or review their own request")]
    SelfApproval,
    #[error("only a director of school {school} or the general director may decide this")]
    NotApprover { school: SchoolId },
    #[error("{0} does not exist")]
    NotFound(String),
    #[error("only an auditor may read the audit log")]
    NotAuditor,
    #[error(
        "this vault has principals already: a new one is added by a principal who administers principals (a director of the school, or the general director); give that person's --token-file"
    )]
    PrincipalsExist,
    #[error(
        "you may not give the role {role}@{scope}: that needs principal_admin there (a director of that school); a network-wide role, or one that approves, administers principals, holds keys, reads the audit log, shreds, transfers or unblocks, is given by the general director"
    )]
    MayNotAdminister { role: Role, scope: String },
    #[error("{0}")]
    Invalid(String),
}
