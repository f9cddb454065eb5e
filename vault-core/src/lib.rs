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
mod audit;
mod batch;
mod catalog;
mod clock;
mod crash;
mod domain;
mod error;
mod keys;
mod records;
mod stats;
mod store;
mod value;

pub use crate::access::model::{
    AccessRequest, BREAK_GLASS_REVIEW_DUE, BREAK_GLASS_WINDOW, BearerToken, BreakGlass,
    BreakGlassId, Consent, ConsentGiver, ConsentId, LegalGround, NewAccessRequest, NewConsent,
    Principal, PrincipalId, Purposes, RequestId, RequestStatus, SubjectExport,
    WITHDRAWAL_WORKING_DAYS,
};
pub use crate::access::policy::{
    Action, ApprovalAct, Decision, DenyReason, Grant, Policy, PolicyError, Role, Scope,
    check_policy_texts,
};
pub use crate::access::session::Session;
pub use crate::access::transfer::{
    Disclosure, TRANSFER_GROUNDS, TRANSFER_NOTICE_WORKING_DAYS, TransferDecision, TransferRequest,
};
pub use crate::audit::anchor::{Anchor, AnchorOptions, AnchorSource, settle_audit_anchors};
pub use crate::audit::chain::{
    AuditError, AuditEvent, AuditProblem, AuditRecord, AuditReport, Outcome,
};
pub use crate::audit::reports::{AuditFilter, IncidentReport, IncidentSubject, PrincipalEntry};
pub use crate::audit::tlog::{
    AuditProof, Checkpoint, ConsistencyProof, NoteKey, PROOF_FORMAT, ProofCheck, ProofError,
    ProvenEntry, check_audit_proof,
};
pub use crate::catalog::{
    Catalog, CatalogError, CategoryDef, FieldDef, FieldType, Period, PolicyInfo, PurposeDef,
    RecordTypeDef, Retention, RetentionTrigger, Tier,
};
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::domain::{
    Category, Country, DekId, DomainError, FieldName, Iin, Purpose, RecordId, RecordType, SchoolId,
    SubjectId, SubjectKind,
};
pub use crate::error::VaultError;
pub use crate::keys::custodian::{CustodianRecipient, KeyringError, Passphrase, Unlock};
pub use crate::keys::custody::{
    ChainEntry, ChainReport, OrphanReport, QuorumKey, RewrapProgress, UnsealProgress, Unsealed,
    Unsealer, custodian_shares,
};
pub use crate::keys::envelope::{CryptoError, DEK_FORMAT_V1, FIELD_FORMAT_V1, wrapped_kek_version};
// Key types: public only to the fuzz targets, the bench's fixtures and the tests that attack the
// key store (feature `test-hooks`). A build of the server or `vaultctl` alone cannot name a KEK,
// a DEK or the keyring; it reaches them only through a `Vault` and its sessions.
#[cfg(feature = "test-hooks")]
pub use crate::keys::envelope::{Dek, WrappedDek};
pub use crate::keys::keychain::{ChainProblem, Link, sealed_digest, verify_chain, verify_link};
#[cfg(feature = "test-hooks")]
pub use crate::keys::keyring::{BlindIndex, Keyring};
pub use crate::keys::keyring::{KekInfo, SealTo};
pub use crate::keys::quorum::{MAX_CUSTODIANS, Quorum, QuorumSeal, Share};
#[cfg(feature = "test-hooks")]
pub use crate::keys::record_keys::RecordKeys;
pub use crate::keys::reindex::IndexRotation;
pub use crate::records::backup::{
    BackupManifest, CarriedOver, CopyProgress, RestoreOptions, RestoreReport, RestoredAudit,
    backup, backup_reporting, restore, restore_reporting, restore_with,
};
pub use crate::records::retention::{
    LegalHold, PLAN_PAGE, RetentionItem, SweepOptions, SweepProgress, SweepReport,
};
pub use crate::records::vault::{
    FieldChange, FieldView, KekStatus, NewSubject, RecordMeta, RecordView, SealReason,
    ShredReceipt, Subject, Vault,
};
pub use crate::stats::{CommitObserver, GroupCommit, QueueDepths};
pub use crate::store::{StoreConfig, StoreError, Stores, redact_url};
pub use crate::value::{FieldValue, MAX_VALUE_BYTES};
