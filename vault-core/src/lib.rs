//! The school records vault's domain: the catalog, the envelope, the keyring, the two stores
//! and the services the HTTP server and `vaultctl` call. It knows nothing of HTTP or argv.
#![forbid(unsafe_code)]

/// Public to the end-to-end tests and the bench's fixtures (feature `test-hooks`), crate-private
/// otherwise: the unscoped building blocks under the sessions. A build without the feature has
/// no public way to read or change personal data except through a `Session`.
macro_rules! unscoped {
    ($(#[$m:meta])* async fn $($rest:tt)*) => {
        #[cfg(feature = "test-hooks")]
        $(#[$m])* pub async fn $($rest)*
        #[cfg(not(feature = "test-hooks"))]
        #[allow(dead_code)]
        $(#[$m])* pub(crate) async fn $($rest)*
    };
    ($(#[$m:meta])* fn $($rest:tt)*) => {
        #[cfg(feature = "test-hooks")]
        $(#[$m])* pub fn $($rest)*
        #[cfg(not(feature = "test-hooks"))]
        #[allow(dead_code)]
        $(#[$m])* pub(crate) fn $($rest)*
    };
}
pub(crate) use unscoped;

mod access;
mod anchor;
mod audit;
mod backup;
mod catalog;
mod clock;
mod crash;
mod domain;
mod envelope;
mod keychain;
mod keyring;
mod keys;
mod merkle;
mod policy;
mod quorum;
mod reindex;
mod reports;
mod retention;
mod session;
mod store;
mod tlog;
mod transfer;
mod value;
mod vault;
mod writer;

pub use access::{
    AccessRequest, BREAK_GLASS_REVIEW_DUE, BREAK_GLASS_WINDOW, BearerToken, BreakGlass,
    BreakGlassId, Consent, ConsentGiver, ConsentId, LegalGround, NewAccessRequest, NewConsent,
    Principal, PrincipalId, Purposes, RequestId, RequestStatus, SubjectExport,
    WITHDRAWAL_WORKING_DAYS,
};
pub use anchor::{Anchor, AnchorOptions, AnchorSource, settle_audit_anchors};
pub use audit::{AuditError, AuditEvent, AuditProblem, AuditRecord, AuditReport, Outcome};
pub use backup::{
    BackupManifest, CarriedOver, RestoreOptions, RestoreReport, RestoredAudit, backup, restore,
    restore_with,
};
pub use catalog::{
    Catalog, CatalogError, CategoryDef, FieldDef, FieldType, Period, PolicyInfo, PurposeDef,
    RecordTypeDef, Retention, RetentionTrigger, Tier,
};
pub use clock::{Clock, ManualClock, SystemClock};
pub use domain::{
    Category, DekId, DomainError, FieldName, Iin, Purpose, RecordId, RecordType, SchoolId,
    SubjectId, SubjectKind,
};
pub use envelope::{
    CryptoError, DEK_FORMAT_V1, Dek, FIELD_FORMAT_V1, RecordKeys, WrappedDek, wrapped_kek_version,
};
pub use keychain::{ChainProblem, Link, sealed_digest, verify_chain, verify_link};
pub use keyring::{
    BlindIndex, CustodianRecipient, KekInfo, Keyring, KeyringError, Passphrase, SealTo, Unlock,
};
pub use keys::{
    ChainEntry, ChainReport, OrphanReport, QuorumKey, RewrapProgress, UnsealProgress, Unsealed,
    Unsealer, custodian_shares,
};
pub use policy::{
    Action, ApprovalAct, Decision, DenyReason, Grant, Policy, PolicyError, Role, Scope,
    check_policy_texts,
};
pub use quorum::{MAX_CUSTODIANS, Quorum, QuorumSeal, Share};
pub use reindex::IndexRotation;
pub use reports::{AuditFilter, IncidentReport, IncidentSubject, PrincipalEntry};
pub use retention::{
    LegalHold, PLAN_PAGE, RetentionItem, SweepOptions, SweepProgress, SweepReport,
};
pub use session::Session;
pub use store::{StoreConfig, StoreError, Stores, redact_url};
pub use tlog::{
    AuditProof, Checkpoint, ConsistencyProof, NoteKey, PROOF_FORMAT, ProofCheck, ProofError,
    ProvenEntry, check_audit_proof,
};
pub use transfer::{
    Country, Disclosure, TRANSFER_GROUNDS, TRANSFER_NOTICE_WORKING_DAYS, TransferDecision,
    TransferRequest,
};
pub use value::{FieldValue, MAX_VALUE_BYTES};
pub use vault::{
    FieldChange, FieldView, KekStatus, NewSubject, RecordMeta, RecordView, SealReason,
    ShredReceipt, Subject, Vault, VaultError,
};
