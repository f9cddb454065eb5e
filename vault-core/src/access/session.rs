//! The one door to personal data: a session bound to an authenticated principal.
//!
//! Every operation on a subject, record, consent, approval, break-glass access, history or
//! export is a method here, and nowhere else in the public API. Each starts from the scoped
//! lookup (a subject or record of a school where the principal holds no role is answered as not
//! found, exactly like a random id) and passes the one decision, (principal, school, categories,
//! action, purpose), before it reads or changes anything. A `Principal` cannot be built outside
//! this crate: only `Vault::sign_in` (a bearer token) and `Vault::create_principal` make one.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use crate::access::model::{
    AccessRequest, BearerToken, BreakGlass, BreakGlassId, Consent, ConsentId, LegalGround,
    NewAccessRequest, NewConsent, Principal, PrincipalId, Purposes, RequestId, SubjectExport,
};
use crate::access::policy::{Role, Scope};
use crate::access::transfer::{Disclosure, TransferDecision, TransferRequest};
use crate::audit::chain::{AuditRecord, AuditReport};
use crate::audit::reports::{AuditFilter, IncidentReport};
use crate::catalog::Catalog;
use crate::domain::Country;
use crate::domain::{Category, FieldName, Iin, Purpose, RecordId, RecordType, SubjectId};
use crate::error::VaultError;
use crate::keys::custodian::CustodianRecipient;
use crate::records::retention::LegalHold;
use crate::records::vault::{
    FieldChange, NewSubject, RecordMeta, RecordView, ShredReceipt, Subject, Vault,
};
use crate::value::FieldValue;

/// What one principal may do, for as long as the request that authenticated it lasts.
pub struct Session<'v> {
    vault: &'v Vault,
    principal: Principal,
}

impl std::fmt::Debug for Session<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("principal", &self.principal.id())
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A session for a principal this vault authenticated or created.
    pub fn session(&self, principal: Principal) -> Session<'_> {
        Session {
            vault: self,
            principal,
        }
    }

    /// Authenticates a bearer token and opens a session for its principal. Unknown, revoked and
    /// malformed tokens are all refused the same way.
    pub async fn sign_in(&self, token: &BearerToken) -> Result<Session<'_>, VaultError> {
        Ok(self.session(self.authenticate(token).await?))
    }
}

impl<'v> Session<'v> {
    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    pub fn catalog(&self) -> &'v Catalog {
        self.vault.catalog()
    }

    // ----- subjects -----------------------------------------------------------------------------

    /// Enrols a subject in a school where the principal may write identity data.
    pub async fn create_subject(&self, new: NewSubject) -> Result<Subject, VaultError> {
        self.vault.create_subject_as(&self.principal, new).await
    }

    /// A subject of a school where the principal is granted `view`.
    pub async fn subject(&self, id: SubjectId) -> Result<Subject, VaultError> {
        self.vault.subject_as(&self.principal, id).await
    }

    /// Finds a subject by IIN, for a principal granted `search`; audited. A subject of a school
    /// where the principal may not search is answered as no subject at all.
    pub async fn find_subject(
        &self,
        iin: &Iin,
        purpose: &Purpose,
    ) -> Result<Option<Subject>, VaultError> {
        self.vault
            .find_subject_as(&self.principal, iin, purpose)
            .await
    }

    /// A subject's records, metadata only.
    pub async fn records(&self, subject: SubjectId) -> Result<Vec<RecordMeta>, VaultError> {
        self.vault
            .subject_records_as(&self.principal, subject)
            .await
    }

    /// Blocks a subject (Art. 25(2)(8)): stored, not processed.
    pub async fn block(&self, subject: SubjectId) -> Result<(), VaultError> {
        self.vault.set_blocked(&self.principal, subject, true).await
    }

    pub async fn unblock(&self, subject: SubjectId) -> Result<(), VaultError> {
        self.vault
            .set_blocked(&self.principal, subject, false)
            .await
    }

    /// Who accessed a subject's data, when and why; for an auditor of its school.
    pub async fn access_history(&self, subject: SubjectId) -> Result<Vec<AuditRecord>, VaultError> {
        self.vault.access_history_as(&self.principal, subject).await
    }

    /// Everything held about a subject, for the subject access request (Art. 24).
    pub async fn export_subject(&self, subject: SubjectId) -> Result<SubjectExport, VaultError> {
        self.vault.export_subject(&self.principal, subject).await
    }

    // ----- records ------------------------------------------------------------------------------

    pub async fn write_record(
        &self,
        subject: SubjectId,
        record_type: &RecordType,
        fields: &BTreeMap<FieldName, FieldValue>,
        purposes: impl Into<Purposes>,
    ) -> Result<RecordMeta, VaultError> {
        self.vault
            .write_record_as(
                &self.principal,
                subject,
                record_type,
                fields,
                &purposes.into(),
            )
            .await
    }

    /// Reads a record: each category opens, or comes back sealed with the reason.
    pub async fn read_record(
        &self,
        id: RecordId,
        purpose: &Purpose,
    ) -> Result<RecordView, VaultError> {
        self.vault
            .read_record_as(&self.principal, id, purpose)
            .await
    }

    pub async fn update_record(
        &self,
        id: RecordId,
        expected_version: u64,
        changes: &BTreeMap<FieldName, FieldChange>,
        purposes: impl Into<Purposes>,
    ) -> Result<RecordMeta, VaultError> {
        self.vault
            .update_record_as(
                &self.principal,
                id,
                expected_version,
                changes,
                &purposes.into(),
            )
            .await
    }

    pub async fn shred_record(
        &self,
        id: RecordId,
        purpose: &Purpose,
    ) -> Result<ShredReceipt, VaultError> {
        self.vault
            .shred_record_as(&self.principal, id, purpose)
            .await
    }

    // ----- legal basis --------------------------------------------------------------------------

    pub async fn record_consent(&self, new: NewConsent) -> Result<Consent, VaultError> {
        self.vault.record_consent(&self.principal, new).await
    }

    /// A subject's consents, for a principal granted `consent_read`; audited.
    pub async fn consents(&self, subject: SubjectId) -> Result<Vec<Consent>, VaultError> {
        self.vault.consents_as(&self.principal, subject).await
    }

    pub async fn withdraw_consent(
        &self,
        id: ConsentId,
        refusal: Option<&str>,
    ) -> Result<Consent, VaultError> {
        self.vault
            .withdraw_consent(&self.principal, id, refusal)
            .await
    }

    pub async fn record_legal_ground(
        &self,
        subject: SubjectId,
        category: &Category,
        ground: LegalGround,
        reference: &str,
    ) -> Result<(), VaultError> {
        self.vault
            .record_legal_ground(&self.principal, subject, category, ground, reference)
            .await
    }

    // ----- approvals and break-glass ------------------------------------------------------------

    pub async fn request_access(&self, new: NewAccessRequest) -> Result<AccessRequest, VaultError> {
        self.vault.request_access(&self.principal, new).await
    }

    /// Pending requests of the schools where the principal may approve, not its own.
    pub async fn pending_requests(&self) -> Result<Vec<AccessRequest>, VaultError> {
        self.vault.pending_requests(&self.principal).await
    }

    pub async fn approve(
        &self,
        id: RequestId,
        expires_at: DateTime<Utc>,
        uses: u32,
    ) -> Result<AccessRequest, VaultError> {
        self.vault
            .approve_request(&self.principal, id, expires_at, uses)
            .await
    }

    pub async fn deny(&self, id: RequestId, reason: &str) -> Result<AccessRequest, VaultError> {
        self.vault.deny_request(&self.principal, id, reason).await
    }

    pub async fn revoke_approval(&self, id: RequestId) -> Result<AccessRequest, VaultError> {
        self.vault.revoke_approval(&self.principal, id).await
    }

    pub async fn open_break_glass(
        &self,
        subject: SubjectId,
        justification: &str,
    ) -> Result<BreakGlass, VaultError> {
        self.vault
            .open_break_glass(&self.principal, subject, justification)
            .await
    }

    pub async fn review_break_glass(
        &self,
        id: BreakGlassId,
        note: &str,
    ) -> Result<BreakGlass, VaultError> {
        self.vault
            .review_break_glass(&self.principal, id, note)
            .await
    }

    /// Unreviewed break-glass accesses older than 24 hours, in the schools the principal reviews.
    pub async fn overdue_break_glass(&self) -> Result<Vec<BreakGlass>, VaultError> {
        self.vault.overdue_break_glass_as(&self.principal).await
    }

    // ----- transfers and incidents --------------------------------------------------------------

    /// Whether a transfer is allowed by the destination's rules (Art. 16).
    pub async fn check_transfer(
        &self,
        r: &TransferRequest,
    ) -> Result<TransferDecision, VaultError> {
        self.vault.check_transfer(&self.principal, r).await
    }

    /// A transfer package for the recipient's age key, after every decision a read passes.
    pub async fn export_transfer(
        &self,
        r: &TransferRequest,
        recipient_key: &CustodianRecipient,
    ) -> Result<(TransferDecision, Vec<u8>), VaultError> {
        self.vault
            .export_transfer(&self.principal, r, recipient_key)
            .await
    }

    /// Records an Art. 16(3) ground for transfers of a subject's data to a country.
    pub async fn record_transfer_ground(
        &self,
        subject: SubjectId,
        to: &Country,
        ground: &str,
        reference: &str,
    ) -> Result<(), VaultError> {
        self.vault
            .record_transfer_ground(&self.principal, subject, to, ground, reference)
            .await
    }

    /// A subject's disclosure ledger.
    pub async fn disclosures(&self, subject: SubjectId) -> Result<Vec<Disclosure>, VaultError> {
        self.vault.disclosures(&self.principal, subject).await
    }

    /// The subjects a principal touched in a window, with contacts for the breach notice.
    pub async fn incident_report(
        &self,
        principal: PrincipalId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<IncidentReport, VaultError> {
        self.vault
            .incident_report(&self.principal, principal, since, until)
            .await
    }

    // ----- audit --------------------------------------------------------------------------------

    /// Checks the audit chain, for an auditor.
    /// Audit entries matching a filter, for an auditor (see `Vault::audit_log_as`).
    pub async fn audit_log(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, VaultError> {
        self.vault.audit_log_as(&self.principal, f).await
    }

    /// The subject's audit entries with inclusion proofs under a newly signed checkpoint, and
    /// with `since` (an older checkpoint) the proof that the log extends it.
    pub async fn audit_proof(
        &self,
        subject: SubjectId,
        since: Option<&str>,
    ) -> Result<crate::audit::tlog::AuditProof, VaultError> {
        self.vault
            .audit_proof_as(&self.principal, subject, since)
            .await
    }

    // ----- principals ---------------------------------------------------------------------------

    /// Creates a principal with roles, if this principal administers principals in every
    /// scope they name; its token is returned this once.
    pub async fn create_principal(
        &self,
        name: &str,
        roles: &[(Scope, Role)],
    ) -> Result<(Principal, BearerToken), VaultError> {
        self.vault
            .create_principal_as(&self.principal, name, roles)
            .await
    }

    // ----- retention ----------------------------------------------------------------------------

    /// Records the day a subject left: the trigger of most retention periods.
    pub async fn mark_left(&self, subject: SubjectId, at: DateTime<Utc>) -> Result<(), VaultError> {
        self.vault.mark_left_as(&self.principal, subject, at).await
    }

    /// Places a legal hold on a subject or one of its records: nothing under it is shredded.
    pub async fn place_hold(
        &self,
        subject: SubjectId,
        record: Option<RecordId>,
        reason: &str,
    ) -> Result<LegalHold, VaultError> {
        self.vault
            .place_hold_as(&self.principal, subject, record, reason)
            .await
    }

    pub async fn release_hold(&self, id: &str, reason: &str) -> Result<LegalHold, VaultError> {
        self.vault
            .release_hold_as(&self.principal, id, reason)
            .await
    }

    /// The holds of the schools where this principal places holds.
    pub async fn holds(&self) -> Result<Vec<LegalHold>, VaultError> {
        self.vault.holds_as(&self.principal).await
    }

    pub async fn verify_audit(&self) -> Result<AuditReport, VaultError> {
        if !self.vault.may_audit(&self.principal) {
            return Err(VaultError::NotAuditor);
        }
        self.vault.verify_audit().await
    }
}
