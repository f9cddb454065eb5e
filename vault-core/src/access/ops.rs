//! Who may decrypt what, per request: principals and their tokens, the legal basis of special
//! categories (consent or a recorded ground), director approvals, break-glass, and the reads and
//! writes that go through these decisions. Every decision leaves an audit entry.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::access::policy::{Action, ApprovalAct, Decision, Role, Scope};
use crate::audit::chain::{AuditEvent, Outcome};
use crate::domain::{
    Category, FieldName, Purpose, RecordId, RecordType, SchoolId, SubjectId, SubjectKind,
};
use crate::error::VaultError;
use crate::records::vault::{
    FieldChange, FieldView, RecordMeta, RecordView, SealReason, ShredReceipt, Subject, Vault,
};
use crate::store::repo::consents::{ConsentRow, GroundRow};
use crate::store::repo::records::FieldRow;
use crate::store::repo::{break_glass, consents, principals, requests, subjects};
use crate::value::FieldValue;

use super::model::*;

/// A subject the acting principal holds a role for. Only `Vault::scoped_subject` builds one, so
/// every decision, audit entry and change that takes it started from the scoped lookup: a subject
/// of another school never gets this far and is answered as not found.
pub(crate) struct Scoped(Subject);

impl std::ops::Deref for Scoped {
    type Target = Subject;
    fn deref(&self) -> &Subject {
        &self.0
    }
}

impl Scoped {
    pub(crate) fn into_inner(self) -> Subject {
        self.0
    }
}

/// Whether any of the principal's roles is held in `school` (or network-wide).
pub(crate) fn sees(p: &Principal, school: &SchoolId) -> bool {
    p.roles.iter().any(|(s, _)| s.covers(school))
}

// Catalog names the decisions below are made on. The catalog validates at load that each exists.
const IDENTITY: &str = "identity";
const HEALTH: &str = "health";
const AUDIT: &str = "audit";
const LEGAL_ADMINISTRATIVE: &str = "legal_administrative";
const MEDICAL_EMERGENCY: &str = "medical_emergency";
const SUBJECT_ACCESS: &str = "subject_access";

fn category(name: &'static str) -> Result<Category, VaultError> {
    pr(Category::parse(name), "category")
}

fn purpose(name: &'static str) -> Result<Purpose, VaultError> {
    pr(Purpose::parse(name), "purpose")
}

/// The school a scope names; network-wide roles are asked about a placeholder school, which
/// their grants (school `*`) cover like any other.
fn scope_school(scope: &Scope) -> Option<SchoolId> {
    match scope {
        Scope::School(s) => Some(s.clone()),
        Scope::Network => SchoolId::parse("network").ok(),
    }
}

/// The school every one of `roles` is held in, if they are all held in one.
fn one_school(roles: &[(Scope, Role)]) -> Option<SchoolId> {
    let mut schools = roles.iter().map(|(s, _)| match s {
        Scope::School(school) => Some(school.clone()),
        Scope::Network => None,
    });
    let first = schools.next()??;
    schools.all(|s| s.as_ref() == Some(&first)).then_some(first)
}

fn first_school(p: &Principal) -> Result<SchoolId, VaultError> {
    p.roles
        .iter()
        .find_map(|(s, _)| scope_school(s))
        .ok_or(VaultError::Unauthenticated)
}

/// The context of one request, for decisions and their audit entries.
struct Act<'a> {
    p: &'a Principal,
    subj: &'a Scoped,
    record: Option<RecordId>,
    purpose: &'a Purpose,
    audit_action: &'static str,
}

/// A subject's consents and open legal grounds at one instant.
pub(crate) struct LegalBasis {
    now: DateTime<Utc>,
    consents: Vec<ConsentRow>,
    grounds: Vec<GroundRow>,
}

impl LegalBasis {
    pub(crate) fn covers(&self, category: &Category) -> bool {
        let now = self.now;
        let by_consent = self.consents.iter().any(|c| {
            c.lists(category)
                && c.given_at <= now
                && c.term_until.is_none_or(|t| t > now)
                // A withdrawal ends the basis, unless it was refused with a recorded reason.
                && (c.withdrawn_at.is_none() || c.refusal_reason.is_some())
        });
        by_consent || self.grounds.iter().any(|g| g.is_for(category))
    }

    /// Whether the category may go to a third party (Art. 7(6)): a recorded ground, or a
    /// current consent that says yes to transfer to third parties.
    pub(crate) fn covers_third_party(&self, category: &Category) -> bool {
        let now = self.now;
        let by_consent = self.consents.iter().any(|c| {
            c.third_party
                && c.lists(category)
                && c.given_at <= now
                && c.term_until.is_none_or(|t| t > now)
                && (c.withdrawn_at.is_none() || c.refusal_reason.is_some())
        });
        by_consent || self.grounds.iter().any(|g| g.is_for(category))
    }
}

/// The legal basis, loaded at the first category that needs it and not before.
#[derive(Default)]
struct LazyBasis(Option<LegalBasis>);

impl LazyBasis {
    async fn get(&mut self, vault: &Vault, subject: SubjectId) -> Result<&LegalBasis, VaultError> {
        let basis = match self.0.take() {
            Some(b) => b,
            None => vault.legal_basis(subject).await?,
        };
        Ok(self.0.insert(basis))
    }
}

fn pr<T>(r: Result<T, crate::domain::DomainError>, what: &'static str) -> Result<T, VaultError> {
    r.map_err(|_| VaultError::CorruptRow(what))
}

/// Free text from callers (justifications, reasons): bounded, so a log or a row cannot be flooded.
fn text(field: &'static str, s: &str, min: usize) -> Result<String, VaultError> {
    let t = s.trim();
    if t.chars().count() < min {
        return Err(VaultError::Invalid(format!(
            "{field} must be at least {min} characters"
        )));
    }
    if t.len() > 2000 {
        return Err(VaultError::Invalid(format!(
            "{field} must be at most 2000 bytes"
        )));
    }
    Ok(t.to_owned())
}

impl Vault {
    // ----- principals -------------------------------------------------------------------------

    crate::unscoped! {
        /// Creates a principal with roles and returns its bearer token, shown only this once;
        /// for the tests' fixtures. Everyone else goes through `bootstrap_principal` (the first
        /// one) or `Session::create_principal` (decided).
        async fn create_principal(
            &self,
            name: &str,
            roles: &[(Scope, Role)],
        ) -> Result<(Principal, BearerToken), VaultError> {
            self.insert_principal("admin", name, roles, false).await
        }
    }

    /// The first principal of a new vault, made with the custodian's identity alone: allowed
    /// only while the vault has no principal at all (revoked ones count), so the custodian
    /// cannot mint someone later to act as. Every later principal is made by a principal who
    /// holds `principal_admin` in each school it gives a role in.
    pub async fn bootstrap_principal(
        &self,
        name: &str,
        roles: &[(Scope, Role)],
    ) -> Result<(Principal, BearerToken), VaultError> {
        let refused = || async {
            // A custodian trying to mint someone to act as is worth a line in the log.
            let mut ev = AuditEvent::new("bootstrap", "principal.create", Outcome::Denied);
            ev.school = one_school(roles);
            ev.reason = Some("principals exist already: refused without an administrator".into());
            self.audit().append(vec![ev]).await?;
            Err(VaultError::PrincipalsExist)
        };
        if principals::any(&self.stores().data).await? {
            return refused().await;
        }
        // Checked again, and inserted, under the table's write lock: two bootstraps at once
        // make one principal, not two.
        match self.insert_principal("bootstrap", name, roles, true).await {
            Err(VaultError::PrincipalsExist) => refused().await,
            other => other,
        }
    }

    /// Whether `p` may give `role` held in `scope`: `principal_admin` in that school, or, for a
    /// network-wide role, a network-wide role of its own that holds it. Separation of duties:
    /// a role that approves, administers principals, holds keys, reads the audit log, shreds,
    /// transfers or unblocks is given only by a network-wide administrator (the general
    /// director), so a school's director cannot make a second director to approve their own
    /// requests, nor a privacy officer, auditor or custodian of their choosing.
    pub(crate) fn may_administer(
        &self,
        p: &Principal,
        scope: &Scope,
        role: Role,
    ) -> Result<bool, VaultError> {
        let identity = category(IDENTITY)?;
        let why = purpose(LEGAL_ADMINISTRATIVE)?;
        let network = p.roles.iter().any(|(s, r)| {
            *s == Scope::Network
                && self
                    .policy()
                    .holds_everywhere(*r, &identity, Action::PrincipalAdmin, &why)
        });
        if network {
            return Ok(true);
        }
        let powerful = [
            Action::Approve,
            Action::PrincipalAdmin,
            Action::KeyAdmin,
            Action::AuditRead,
            Action::Shred,
            Action::Transfer,
            Action::Unblock,
        ]
        .into_iter()
        .any(|a| self.policy().role_holds(role, a));
        Ok(match scope {
            Scope::School(school) => {
                !powerful
                    && self.decide(p, school, &identity, Action::PrincipalAdmin, &why)
                        == Decision::Allow
            }
            Scope::Network => false,
        })
    }

    /// Creates a principal on `by`'s authority: `by` must administer principals in every
    /// scope the new roles name. Refused attempts are audited.
    pub(crate) async fn create_principal_as(
        &self,
        by: &Principal,
        name: &str,
        roles: &[(Scope, Role)],
    ) -> Result<(Principal, BearerToken), VaultError> {
        for (scope, role) in roles {
            if !self.may_administer(by, scope, *role)? {
                let mut ev = AuditEvent::new(by.actor(), "principal.create", Outcome::Denied);
                ev.school = one_school(roles);
                ev.reason = Some(format!("may not give {role}@{}", scope.as_str()));
                self.audit().append(vec![ev]).await?;
                return Err(VaultError::MayNotAdminister {
                    role: *role,
                    scope: scope.as_str().to_owned(),
                });
            }
        }
        self.insert_principal(&by.actor(), name, roles, false).await
    }

    async fn insert_principal(
        &self,
        actor: &str,
        name: &str,
        roles: &[(Scope, Role)],
        first: bool,
    ) -> Result<(Principal, BearerToken), VaultError> {
        let name = text("a principal's name", name, 1)?;
        if roles.is_empty() {
            return Err(VaultError::Invalid(
                "a principal needs at least one role".into(),
            ));
        }
        let mut raw = Zeroizing::new([0u8; 32]);
        self.rng()
            .fill(raw.as_mut())
            .map_err(|_| VaultError::Invalid("the random generator failed".into()))?;
        let token = BearerToken(Zeroizing::new(format!("vt_{}", hex::encode(&raw[..]))));
        let id = PrincipalId::new_random();
        let now = self.now();
        if first {
            let db = &self.stores().data;
            if !principals::insert_first(db, id, &name, token.hash(), now, roles).await? {
                return Err(VaultError::PrincipalsExist);
            }
        } else {
            principals::insert(&self.stores().data, id, &name, token.hash(), now, roles).await?;
        }
        let mut ev = AuditEvent::new(actor, "principal.create", Outcome::Done);
        // In the school's own log when every role is held there, so its auditor sees it.
        ev.school = one_school(roles);
        ev.reason = Some(format!(
            "principal {id}: {}",
            roles
                .iter()
                .map(|(s, r)| format!("{r}@{}", s.as_str()))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        self.audit().append(vec![ev]).await?;
        let mut roles = roles.to_vec();
        roles.sort();
        roles.dedup();
        Ok((Principal { id, name, roles }, token))
    }

    /// Finds the principal a token belongs to. Unknown, revoked and malformed tokens are all
    /// refused the same way.
    pub async fn authenticate(&self, token: &BearerToken) -> Result<Principal, VaultError> {
        let hash = token.hash();
        // One query for the principal and its roles: authentication runs on every request.
        let rows = principals::by_token_hash(&self.stores().data, hash.clone()).await?;
        let Some((row, _)) = rows.first() else {
            return Err(VaultError::Unauthenticated);
        };
        if !bool::from(row.token_hash.as_slice().ct_eq(hash.as_slice())) || row.revoked_at.is_some()
        {
            return Err(VaultError::Unauthenticated);
        }
        let id = row.principal_id()?;
        let name = row.name.clone();
        let roles = rows
            .into_iter()
            .filter_map(|(_, r)| r)
            .map(|r| r.decode())
            .collect::<Result<Vec<_>, VaultError>>()?;
        Ok(Principal { id, name, roles })
    }

    /// Revokes a principal's token at once, for every server sharing the store.
    pub async fn revoke_principal(&self, id: PrincipalId) -> Result<(), VaultError> {
        let r = principals::revoke(&self.stores().data, id, self.now()).await?;
        if r == 0 {
            return Err(VaultError::Invalid(format!(
                "principal {id} does not exist or is already revoked"
            )));
        }
        let mut ev = AuditEvent::new("admin", "principal.revoke", Outcome::Done);
        ev.reason = Some(format!("principal {id}"));
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    // ----- scoping ------------------------------------------------------------------------------

    /// A subject as seen by a principal: one of a school where it holds no role is answered as
    /// not found, the same as one that does not exist, so ids cannot be probed across schools.
    pub(crate) async fn scoped_subject(
        &self,
        p: &Principal,
        id: SubjectId,
    ) -> Result<Scoped, VaultError> {
        let subj = self.subject(id).await?;
        if !sees(p, &subj.school) {
            return Err(VaultError::SubjectNotFound(id));
        }
        Ok(Scoped(subj))
    }

    /// Like `scoped_subject`, for a live record. The school is checked before the record's
    /// state, so a shredded record of another school is as unknown as a random id.
    pub(crate) async fn scoped_record(
        &self,
        p: &Principal,
        id: RecordId,
    ) -> Result<(RecordMeta, Scoped), VaultError> {
        self.scoped_record_any(p, id).await?;
        let meta = self.record_meta(id).await?;
        let subj = self.scoped_subject(p, meta.subject).await?;
        Ok((meta, subj))
    }

    /// `scoped_record` for a record in any state, for the callers that decide before they say
    /// whether it was shredded.
    pub(crate) async fn scoped_record_any(
        &self,
        p: &Principal,
        id: RecordId,
    ) -> Result<(RecordMeta, Scoped), VaultError> {
        let meta = self.record_meta_any(id).await?;
        if !sees(p, &meta.school) {
            return Err(VaultError::RecordNotFound(id));
        }
        let subj = self.scoped_subject(p, meta.subject).await?;
        Ok((meta, subj))
    }

    /// Creates a subject, if the principal may write identity data in that school.
    pub(crate) async fn create_subject_as(
        &self,
        p: &Principal,
        new: crate::records::vault::NewSubject,
    ) -> Result<Subject, VaultError> {
        let identity = category(IDENTITY)?;
        let purpose = purpose(LEGAL_ADMINISTRATIVE)?;
        match self.decide(p, &new.school, &identity, Action::Write, &purpose) {
            Decision::Allow => {}
            Decision::ApprovalRequired => {
                return Err(VaultError::ApprovalRequired { category: identity });
            }
            Decision::Deny(reason) => {
                return Err(VaultError::Forbidden {
                    category: identity,
                    reason,
                });
            }
        }
        let subj = self.create_subject(new).await?;
        let ev = self.event(
            p,
            "subject.create",
            Outcome::Done,
            &subj,
            None,
            Vec::new(),
            None,
        );
        self.audit().append(vec![ev]).await?;
        Ok(subj)
    }

    /// A subject's records (metadata only), for a principal of its school.
    /// A subject's metadata (kind, school, dates, blocked), for a principal granted `view` in
    /// its school. No value is opened, but that a child is enrolled and blocked is personal
    /// data too, so the call is decided like any other; a refusal is audited.
    pub(crate) async fn subject_as(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<Subject, VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let why = purpose(LEGAL_ADMINISTRATIVE)?;
        self.require_on_subject(p, &subj, Action::View, &why, "subject.view")
            .await?;
        Ok(subj.into_inner())
    }

    pub(crate) async fn subject_records_as(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<Vec<RecordMeta>, VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let why = purpose(LEGAL_ADMINISTRATIVE)?;
        self.require_on_subject(p, &subj, Action::View, &why, "records.list")
            .await?;
        let mut out = Vec::new();
        let mut may: BTreeMap<RecordType, bool> = BTreeMap::new();
        for id in self.subject_record_ids(subject).await? {
            let meta = self.record_meta(id).await?;
            let shown = *may
                .entry(meta.record_type.clone())
                .or_insert_with(|| self.may_act_on_type(p, &subj.school, &meta.record_type));
            if shown {
                out.push(meta);
            }
        }
        Ok(out)
    }

    /// Whether the principal holds any grant on a category the record type holds, for any
    /// purpose: the existence of a record type (a psychological assessment, a medical file)
    /// says something of the child, so a role that could never act on one is not told of it.
    fn may_act_on_type(&self, p: &Principal, school: &SchoolId, rt: &RecordType) -> bool {
        let Some(def) = self.catalog().record_type(rt) else {
            return false;
        };
        let cats: BTreeSet<&Category> = def.fields().map(|f| &f.category).collect();
        cats.into_iter().any(|c| {
            let Some(cdef) = self.catalog().category(c) else {
                return false;
            };
            [
                Action::Read,
                Action::Update,
                Action::Write,
                Action::Shred,
                Action::Export,
                Action::Transfer,
            ]
            .into_iter()
            .any(|a| {
                cdef.purposes
                    .iter()
                    .any(|why| !matches!(self.decide(p, school, c, a, why), Decision::Deny(_)))
            })
        })
    }

    /// Overdue break-glass accesses of the schools where the principal reviews them.
    pub(crate) async fn overdue_break_glass_as(
        &self,
        p: &Principal,
    ) -> Result<Vec<BreakGlass>, VaultError> {
        let health = category(HEALTH)?;
        let purpose = purpose(MEDICAL_EMERGENCY)?;
        Ok(self
            .overdue_break_glass()
            .await?
            .into_iter()
            .filter(|b| {
                sees(p, &b.school)
                    && self.decide(p, &b.school, &health, Action::Approve, &purpose)
                        == Decision::Allow
            })
            .collect())
    }

    /// Whether the principal holds `action` on `category` for `purpose` in any school it has a
    /// role in; for an action whose target school is not known before the lookup (the audit
    /// log, an IIN search).
    pub(crate) fn may_anywhere(
        &self,
        p: &Principal,
        category: &Category,
        action: Action,
        purpose: &Purpose,
    ) -> bool {
        p.roles.iter().any(|(scope, role)| {
            let Some(school) = scope_school(scope) else {
                return false;
            };
            self.policy().decide(
                &[(Scope::School(school.clone()), *role)],
                &school,
                category,
                action,
                purpose,
            ) == Decision::Allow
        })
    }

    /// Whether the principal may read the audit log (the auditor role).
    pub(crate) fn may_audit(&self, p: &Principal) -> bool {
        let (Ok(identity), Ok(audit)) = (category(IDENTITY), purpose(AUDIT)) else {
            return false;
        };
        self.may_anywhere(p, &identity, Action::AuditRead, &audit)
    }

    /// A subject's access history, for an auditor of its school.
    pub(crate) async fn access_history_as(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<Vec<crate::audit::chain::AuditRecord>, VaultError> {
        self.history_read_as(p, subject).await?;
        self.access_history(subject).await
    }

    /// The decision and the audit entry of a read of a subject's history, without the read: for
    /// callers that query the history their own way (`audit_log_as`).
    pub(crate) async fn history_read_as(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<(), VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let audit = purpose(AUDIT)?;
        self.require_on_subject(p, &subj, Action::AuditRead, &audit, "audit.read")
            .await
            .map_err(|e| match e {
                VaultError::Forbidden { .. } => VaultError::NotAuditor,
                e => e,
            })?;
        let ev = self.event(
            p,
            "audit.read",
            Outcome::Done,
            &subj,
            None,
            Vec::new(),
            Some(&audit),
        );
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    /// Records an operator's decision that has no subject (such as a configuration override).
    pub async fn record_operator_event(
        &self,
        actor: &str,
        action: &'static str,
        reason: String,
    ) -> Result<(), VaultError> {
        let mut ev = AuditEvent::new(actor, action, Outcome::Done);
        ev.reason = Some(reason);
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    /// Everything held about a subject, decrypted for the privacy officer answering the
    /// subject's access request (Art. 24): every record, consents, and who accessed it when.
    /// Decided on identity and every category held, so a subject with no records is no gap.
    pub(crate) async fn export_subject(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<SubjectExport, VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let purpose = purpose(SUBJECT_ACCESS)?;
        let ids = self.subject_record_ids(subject).await?;
        let mut all = BTreeSet::from([category(IDENTITY)?]);
        for id in &ids {
            all.extend(self.record_categories(*id).await?);
        }
        self.require(
            &Act {
                p,
                subj: &subj,
                record: None,
                purpose: &purpose,
                audit_action: "subject.export",
            },
            &all,
            Action::Export,
        )
        .await?;
        let mut ev = self.event(
            p,
            "subject.export",
            Outcome::Allowed,
            &subj,
            None,
            all.iter().cloned().collect(),
            Some(&purpose),
        );
        ev.reason = Some(format!("{} records", ids.len()));
        // Durable before the export leaves.
        self.audit().append(vec![ev]).await?;
        let mut records = Vec::new();
        for id in ids {
            let cats = self.record_categories(id).await?;
            records.push(self.read_record(id, &cats).await?);
        }
        Ok(SubjectExport {
            consents: self.consents_of(subject).await?,
            history: self.access_history(subject).await?,
            subject: subj.into_inner(),
            records,
        })
    }

    /// A subject's consents, for a principal granted `consent_read` in its school.
    pub(crate) async fn consents_as(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<Vec<Consent>, VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let why = purpose(LEGAL_ADMINISTRATIVE)?;
        self.require_on_subject(p, &subj, Action::ConsentRead, &why, "consent.list")
            .await?;
        let list = self.consents_of(subject).await?;
        let mut ev = self.event(
            p,
            "consent.list",
            Outcome::Allowed,
            &subj,
            None,
            Vec::new(),
            Some(&why),
        );
        ev.reason = Some(format!("{} consents", list.len()));
        self.audit().append(vec![ev]).await?;
        Ok(list)
    }

    /// Finds a subject by IIN among the schools where the principal may search; one elsewhere
    /// is answered exactly like an IIN nobody holds.
    pub(crate) async fn find_subject_as(
        &self,
        p: &Principal,
        iin: &crate::domain::Iin,
        why: &Purpose,
    ) -> Result<Option<Subject>, VaultError> {
        let identity = category(IDENTITY)?;
        if !self.may_anywhere(p, &identity, Action::Search, why) {
            let reason = match self.policy().decide(
                &p.roles,
                &first_school(p)?,
                &identity,
                Action::Search,
                why,
            ) {
                Decision::Deny(r) => r,
                _ => crate::access::policy::DenyReason::NotGranted {
                    action: Action::Search,
                    category: identity.clone(),
                    purpose: why.clone(),
                },
            };
            let mut ev = AuditEvent::new(p.actor(), "subject.search", Outcome::Denied);
            ev.categories = vec![identity.clone()];
            ev.purpose = Some(why.clone());
            ev.reason = Some(reason.to_string());
            self.audit().append(vec![ev]).await?;
            return Err(VaultError::Forbidden {
                category: identity,
                reason,
            });
        }
        let candidates = self.subjects_by_iin(iin).await?;
        let found = candidates
            .into_iter()
            .find(|s| self.decide(p, &s.school, &identity, Action::Search, why) == Decision::Allow);
        let mut ev = AuditEvent::new(
            p.actor(),
            "subject.search",
            if found.is_some() {
                Outcome::Allowed
            } else {
                Outcome::Done
            },
        );
        ev.categories = vec![identity];
        ev.purpose = Some(why.clone());
        if let Some(s) = &found {
            ev.school = Some(s.school.clone());
            ev.subject = Some(s.id);
        } else {
            ev.reason = Some("no subject with this IIN".into());
        }
        self.audit().append(vec![ev]).await?;
        Ok(found)
    }

    // ----- decisions ----------------------------------------------------------------------------

    /// The policy's answer for one category, without per-subject checks.
    pub(crate) fn decide(
        &self,
        p: &Principal,
        school: &SchoolId,
        category: &Category,
        action: Action,
        purpose: &Purpose,
    ) -> Decision {
        self.policy()
            .decide(&p.roles, school, category, action, purpose)
    }

    /// Requires every category to be allowed outright for `action`; audits the refusal.
    async fn require(
        &self,
        a: &Act<'_>,
        cats: &BTreeSet<Category>,
        action: Action,
    ) -> Result<(), VaultError> {
        self.require_each(a, cats.iter().map(|c| (c, a.purpose)), action)
            .await
    }

    /// `require` with a purpose per category.
    async fn require_each<'c>(
        &self,
        a: &Act<'_>,
        cats: impl Iterator<Item = (&'c Category, &'c Purpose)>,
        action: Action,
    ) -> Result<(), VaultError> {
        for (c, why) in cats {
            let refusal = match self.decide(a.p, &a.subj.school, c, action, why) {
                Decision::Allow => None,
                Decision::ApprovalRequired => Some(VaultError::ApprovalRequired {
                    category: c.clone(),
                }),
                Decision::Deny(reason) => Some(VaultError::Forbidden {
                    category: c.clone(),
                    reason,
                }),
            };
            if let Some(err) = refusal {
                let mut ev = self.event(
                    a.p,
                    a.audit_action,
                    Outcome::Denied,
                    a.subj,
                    a.record,
                    vec![c.clone()],
                    Some(why),
                );
                ev.reason = Some(err.to_string());
                self.audit().append(vec![ev]).await?;
                return Err(err);
            }
        }
        Ok(())
    }

    /// Requires an action that names no field (block, history, consents, search) on a subject:
    /// decided on its identity category, like every other action, and audited when refused.
    pub(crate) async fn require_on_subject(
        &self,
        p: &Principal,
        subj: &Scoped,
        action: Action,
        purpose: &Purpose,
        audit_action: &'static str,
    ) -> Result<(), VaultError> {
        self.require(
            &Act {
                p,
                subj,
                record: None,
                purpose,
                audit_action,
            },
            &BTreeSet::from([category(IDENTITY)?]),
            action,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn event(
        &self,
        p: &Principal,
        action: &'static str,
        outcome: Outcome,
        subj: &Subject,
        record: Option<RecordId>,
        categories: Vec<Category>,
        purpose: Option<&Purpose>,
    ) -> AuditEvent {
        AuditEvent {
            actor: p.actor(),
            action,
            school: Some(subj.school.clone()),
            subject: Some(subj.id),
            record,
            categories,
            purpose: purpose.cloned(),
            outcome,
            reason: None,
        }
    }

    // ----- legal basis ----------------------------------------------------------------------

    /// Every consent and open ground of a subject, loaded once for all of a request's categories.
    pub(crate) async fn legal_basis(&self, subject: SubjectId) -> Result<LegalBasis, VaultError> {
        let (consents, grounds) = consents::basis(&self.stores().data, subject).await?;
        Ok(LegalBasis {
            now: self.now(),
            consents,
            grounds,
        })
    }

    pub(crate) fn needs_basis(&self, c: &Category) -> bool {
        self.catalog().category(c).is_some_and(|d| d.legal_basis)
    }

    /// Records a consent (Art. 8(4)). For a student, a guardian gives it unless the operator
    /// confirmed the student is an adult.
    pub(crate) async fn record_consent(
        &self,
        p: &Principal,
        new: NewConsent,
    ) -> Result<Consent, VaultError> {
        let subj = self.scoped_subject(p, new.subject).await?;
        let cats = self.category_set(&new.categories, "a consent")?;
        if cats.is_empty() {
            return Err(VaultError::Invalid(
                "a consent lists the data it covers: give at least one category".into(),
            ));
        }
        if !matches!(new.method.as_str(), "paper" | "e_signature" | "sms_code") {
            return Err(VaultError::Invalid(
                "consent method must be paper, e_signature or sms_code".into(),
            ));
        }
        let evidence = text("evidence_ref", &new.evidence_ref, 1)?;
        let version = text("text_version", &new.text_version, 1)?;
        match &new.given_by {
            ConsentGiver::Guardian(g) => {
                let gs = self.scoped_subject(p, *g).await?;
                if gs.kind != SubjectKind::Guardian {
                    return Err(VaultError::Invalid(format!(
                        "subject {g} is not a guardian"
                    )));
                }
            }
            ConsentGiver::Subject { confirmed_adult } => {
                if subj.kind == SubjectKind::Student && !confirmed_adult {
                    return Err(VaultError::Invalid(
                        "a student under 18 cannot consent alone: record the guardian's consent, or confirm the student is an adult".into(),
                    ));
                }
            }
        }
        let purpose = purpose(LEGAL_ADMINISTRATIVE)?;
        self.require(
            &Act {
                p,
                subj: &subj,
                record: None,
                purpose: &purpose,
                audit_action: "consent.record",
            },
            &cats,
            Action::Consent,
        )
        .await?;
        let id = ConsentId::new_random();
        let now = self.now();
        let policy = self.catalog().policy().clone();
        let consent = Consent {
            id,
            subject: subj.id,
            operator: policy.operator.clone(),
            operator_bin: policy.operator_bin.clone(),
            given_by: new.given_by.clone(),
            method: new.method.clone(),
            evidence_ref: evidence,
            text_version: version,
            categories: cats.iter().cloned().collect(),
            third_party: new.third_party,
            cross_border: new.cross_border,
            publication: new.publication,
            given_at: now,
            term_until: new.term_until,
            withdrawn_at: None,
            withdrawal_deadline: None,
            refusal_reason: None,
        };
        consents::insert(&self.stores().data, &consent, p.id).await?;
        let mut ev = self.event(
            p,
            "consent.record",
            Outcome::Done,
            &subj,
            None,
            cats.into_iter().collect(),
            None,
        );
        ev.reason = Some(format!("consent {id}"));
        self.audit().append(vec![ev]).await?;
        self.consent(id).await
    }

    pub(crate) async fn consent(&self, id: ConsentId) -> Result<Consent, VaultError> {
        consents::get(&self.stores().data, id)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("consent {id}")))
    }

    pub(crate) async fn consents_of(&self, subject: SubjectId) -> Result<Vec<Consent>, VaultError> {
        consents::of_subject(&self.stores().data, subject).await
    }

    /// Withdraws a consent: the basis ends now and processing must stop within 15 working days
    /// (the deadline is recorded). With `refusal`, the operator refuses to stop because a law
    /// requires keeping the data (Art. 8(2)); the reason is recorded and the basis continues.
    pub(crate) async fn withdraw_consent(
        &self,
        p: &Principal,
        id: ConsentId,
        refusal: Option<&str>,
    ) -> Result<Consent, VaultError> {
        let c = self.consent(id).await?;
        // Scoped before anything else is said about it: another school's consent is unknown.
        let subj = self
            .scoped_subject(p, c.subject)
            .await
            .map_err(|_| VaultError::NotFound(format!("consent {id}")))?;
        let cats: BTreeSet<Category> = c.categories.iter().cloned().collect();
        let purpose = purpose(LEGAL_ADMINISTRATIVE)?;
        self.require(
            &Act {
                p,
                subj: &subj,
                record: None,
                purpose: &purpose,
                audit_action: "consent.withdraw",
            },
            &cats,
            Action::Consent,
        )
        .await?;
        if c.withdrawn_at.is_some() {
            return Err(VaultError::Invalid(format!(
                "consent {id} was already withdrawn"
            )));
        }
        let refusal = refusal
            .map(|r| text("the refusal reason", r, 10))
            .transpose()?;
        let now = self.now();
        let deadline = self
            .policy()
            .add_working_days(now.date_naive(), WITHDRAWAL_WORKING_DAYS);
        consents::withdraw(&self.stores().data, id, now, deadline, refusal.clone()).await?;
        let outcome = if refusal.is_some() {
            Outcome::Refused
        } else {
            Outcome::Done
        };
        let mut ev = self.event(
            p,
            "consent.withdraw",
            outcome,
            &subj,
            None,
            c.categories.clone(),
            None,
        );
        ev.reason = Some(format!("consent {id}; stop processing by {deadline}"));
        self.audit().append(vec![ev]).await?;
        self.consent(id).await
    }

    /// Records a legal ground other than consent for (subject, category).
    pub(crate) async fn record_legal_ground(
        &self,
        p: &Principal,
        subject: SubjectId,
        category: &Category,
        ground: LegalGround,
        reference: &str,
    ) -> Result<(), VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let reference = text("the ground's reference", reference, 3)?;
        let purpose = purpose(LEGAL_ADMINISTRATIVE)?;
        self.require(
            &Act {
                p,
                subj: &subj,
                record: None,
                purpose: &purpose,
                audit_action: "ground.record",
            },
            &BTreeSet::from([category.clone()]),
            Action::Consent,
        )
        .await?;
        consents::insert_ground(
            &self.stores().data,
            subject,
            category,
            ground,
            reference,
            p.id,
            self.now(),
        )
        .await?;
        let mut ev = self.event(
            p,
            "ground.record",
            Outcome::Done,
            &subj,
            None,
            vec![category.clone()],
            None,
        );
        ev.reason = Some(format!("ground {}", ground.as_str()));
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    // ----- approvals -----------------------------------------------------------------------------

    /// Asks a director to approve opening categories of a subject (or one record) for a purpose.
    pub(crate) async fn request_access(
        &self,
        p: &Principal,
        new: NewAccessRequest,
    ) -> Result<AccessRequest, VaultError> {
        let subj = self.scoped_subject(p, new.subject).await?;
        if let Some(r) = new.record {
            let (meta, _) = self.scoped_record_any(p, r).await?;
            if meta.subject != subj.id {
                return Err(VaultError::RecordNotFound(r));
            }
        }
        let justification = text("the justification", &new.justification, 10)?;
        let cats = self.category_set(&new.categories, "an access request")?;
        if cats.is_empty() {
            return Err(VaultError::Invalid(
                "name at least one category to open".into(),
            ));
        }
        let cats: Vec<Category> = cats.into_iter().collect();
        for c in &cats {
            if let Decision::Deny(reason) =
                self.decide(p, &subj.school, c, new.act.action(), &new.purpose)
            {
                let mut ev = self.event(
                    p,
                    "access.request",
                    Outcome::Denied,
                    &subj,
                    new.record,
                    vec![c.clone()],
                    Some(&new.purpose),
                );
                ev.reason = Some(reason.to_string());
                self.audit().append(vec![ev]).await?;
                return Err(VaultError::Forbidden {
                    category: c.clone(),
                    reason,
                });
            }
        }
        if let Some(r) = new.record {
            // Said only to a principal who may read these categories at all.
            self.record_meta(r).await?;
        }
        let id = RequestId::new_random();
        let request = AccessRequest {
            id,
            requester: p.id,
            school: subj.school.clone(),
            subject: subj.id,
            record: new.record,
            categories: cats.clone(),
            purpose: new.purpose.clone(),
            act: new.act,
            justification,
            status: RequestStatus::Pending,
            created_at: self.now(),
            decided_by: None,
            decided_at: None,
            reason: None,
            expires_at: None,
            uses_left: None,
        };
        requests::insert(&self.stores().data, &request).await?;
        let mut ev = self.event(
            p,
            "access.request",
            Outcome::Done,
            &subj,
            new.record,
            cats,
            Some(&new.purpose),
        );
        ev.reason = Some(format!("request {id}"));
        self.audit().append(vec![ev]).await?;
        self.access_request(id).await
    }

    pub(crate) async fn access_request(&self, id: RequestId) -> Result<AccessRequest, VaultError> {
        requests::get(&self.stores().data, id)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("access request {id}")))
    }

    /// An access request of a school where the principal holds a role; any other is unknown.
    async fn scoped_request(
        &self,
        p: &Principal,
        id: RequestId,
    ) -> Result<(AccessRequest, Scoped), VaultError> {
        let unknown = || VaultError::NotFound(format!("access request {id}"));
        let r = self.access_request(id).await?;
        if !sees(p, &r.school) {
            return Err(unknown());
        }
        let subj = self
            .scoped_subject(p, r.subject)
            .await
            .map_err(|_| unknown())?;
        Ok((r, subj))
    }

    /// Pending requests a principal may decide: those of schools where it may approve.
    pub(crate) async fn pending_requests(
        &self,
        p: &Principal,
    ) -> Result<Vec<AccessRequest>, VaultError> {
        let rows = requests::pending(&self.stores().data).await?;
        let mut out = Vec::new();
        for r in rows {
            if r.requester != p.id && sees(p, &r.school) && self.may_approve(p, &r) {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn may_approve(&self, p: &Principal, r: &AccessRequest) -> bool {
        r.categories
            .iter()
            .all(|c| self.decide(p, &r.school, c, Action::Approve, &r.purpose) == Decision::Allow)
    }

    async fn decidable(
        &self,
        p: &Principal,
        id: RequestId,
        action: &'static str,
    ) -> Result<(AccessRequest, Scoped), VaultError> {
        let (r, subj) = self.scoped_request(p, id).await?;
        let refusal = if r.requester == p.id {
            Some(VaultError::SelfApproval)
        } else if !self.may_approve(p, &r) {
            Some(VaultError::NotApprover {
                school: r.school.clone(),
            })
        } else if r.status != RequestStatus::Pending {
            Some(VaultError::Invalid(format!(
                "request {id} is {}, not pending",
                r.status.as_str()
            )))
        } else {
            None
        };
        if let Some(e) = refusal {
            let mut ev = self.event(
                p,
                action,
                Outcome::Denied,
                &subj,
                r.record,
                r.categories.clone(),
                Some(&r.purpose),
            );
            ev.reason = Some(format!("request {id}: {e}"));
            self.audit().append(vec![ev]).await?;
            return Err(e);
        }
        Ok((r, subj))
    }

    /// Approves a pending request until `expires_at`, for `uses` reads.
    pub(crate) async fn approve_request(
        &self,
        p: &Principal,
        id: RequestId,
        expires_at: DateTime<Utc>,
        uses: u32,
    ) -> Result<AccessRequest, VaultError> {
        if uses == 0 || uses > 1000 {
            return Err(VaultError::Invalid(
                "an approval allows 1 to 1000 uses".into(),
            ));
        }
        if expires_at <= self.now() {
            return Err(VaultError::Invalid(
                "an approval must expire in the future".into(),
            ));
        }
        let (r, subj) = self.decidable(p, id, "access.approve").await?;
        let done =
            requests::approve(&self.stores().data, id, p.id, self.now(), expires_at, uses).await?;
        if done != 1 {
            return Err(VaultError::Invalid(format!(
                "request {id} was decided meanwhile"
            )));
        }
        self.request_decided(
            p,
            &r,
            &subj,
            "access.approve",
            format!(
                "request {id}: {uses} uses until {}",
                expires_at.to_rfc3339()
            ),
        )
        .await
    }

    /// Denies a pending request with a reason.
    pub(crate) async fn deny_request(
        &self,
        p: &Principal,
        id: RequestId,
        reason: &str,
    ) -> Result<AccessRequest, VaultError> {
        let reason = text("the reason", reason, 5)?;
        let (r, subj) = self.decidable(p, id, "access.deny").await?;
        requests::deny(&self.stores().data, id, p.id, self.now(), reason).await?;
        self.request_decided(p, &r, &subj, "access.deny", format!("request {id}"))
            .await
    }

    /// Revokes an approval: it opens nothing from now on, on every server.
    pub(crate) async fn revoke_approval(
        &self,
        p: &Principal,
        id: RequestId,
    ) -> Result<AccessRequest, VaultError> {
        let (r, subj) = self.scoped_request(p, id).await?;
        if r.requester != p.id && !self.may_approve(p, &r) {
            return Err(VaultError::NotApprover {
                school: r.school.clone(),
            });
        }
        let done = requests::revoke(&self.stores().data, id).await?;
        if done != 1 {
            return Err(VaultError::Invalid(format!(
                "request {id} is {}, not approved: only an approval can be revoked",
                r.status.as_str()
            )));
        }
        self.request_decided(p, &r, &subj, "access.revoke", format!("request {id}"))
            .await
    }

    /// Audits a decision on a request and returns the request as it now stands.
    async fn request_decided(
        &self,
        p: &Principal,
        r: &AccessRequest,
        subj: &Subject,
        action: &'static str,
        reason: String,
    ) -> Result<AccessRequest, VaultError> {
        let mut ev = self.event(
            p,
            action,
            Outcome::Done,
            subj,
            r.record,
            r.categories.clone(),
            Some(&r.purpose),
        );
        ev.reason = Some(reason);
        self.audit().append(vec![ev]).await?;
        self.access_request(r.id).await
    }

    /// Takes approvals of this principal for this record and purpose to open `wanted`: one use of
    /// an approval opens every wanted category it covers, so a request for health and
    /// disciplinary approved for one use is one read of both. Returns what each use opened.
    pub(crate) async fn use_approvals(
        &self,
        p: &Principal,
        subj: &Subject,
        record: Option<RecordId>,
        wanted: &BTreeSet<Category>,
        purpose: &Purpose,
        act: ApprovalAct,
    ) -> Result<Vec<(RequestId, BTreeSet<Category>)>, VaultError> {
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.now();
        let rows = requests::usable(&self.stores().data, p.id, subj.id, purpose, act, now).await?;
        let mut left = wanted.clone();
        let mut used = Vec::new();
        for r in rows {
            if left.is_empty() {
                break;
            }
            // An approval for one record opens only that record; one for the subject, any.
            let for_record = match (r.record_id.as_deref(), record) {
                (None, _) => true,
                (Some(rid), Some(rec)) => rid == rec.to_string(),
                (Some(_), None) => false,
            };
            let covered: BTreeSet<Category> = r
                .categories()?
                .into_iter()
                .filter(|c| left.contains(c))
                .collect();
            if !for_record || covered.is_empty() {
                continue;
            }
            // Atomic: two servers cannot both spend the last use.
            let taken = requests::take_use(&self.stores().data, &r.id).await?;
            if taken == 1 {
                left.retain(|c| !covered.contains(c));
                used.push((r.request_id()?, covered));
            }
        }
        Ok(used)
    }

    // ----- break-glass ------------------------------------------------------------------------

    /// Opens a subject's health data at once for a medical emergency. Flagged, and a director
    /// must review it.
    pub(crate) async fn open_break_glass(
        &self,
        p: &Principal,
        subject: SubjectId,
        justification: &str,
    ) -> Result<BreakGlass, VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let justification = text("the justification", justification, 10)?;
        let health = category(HEALTH)?;
        let purpose = purpose(MEDICAL_EMERGENCY)?;
        self.require(
            &Act {
                p,
                subj: &subj,
                record: None,
                purpose: &purpose,
                audit_action: "break_glass.open",
            },
            &BTreeSet::from([health.clone()]),
            Action::BreakGlass,
        )
        .await?;
        let id = BreakGlassId::new_random();
        let now = self.now();
        let opened = BreakGlass {
            id,
            principal: p.id,
            school: subj.school.clone(),
            subject: subj.id,
            justification,
            opened_at: now,
            expires_at: now + BREAK_GLASS_WINDOW,
            reviewed_by: None,
            reviewed_at: None,
            review_note: None,
        };
        break_glass::insert(&self.stores().data, &opened).await?;
        let mut ev = self.event(
            p,
            "break_glass.open",
            Outcome::Allowed,
            &subj,
            None,
            vec![health],
            Some(&purpose),
        );
        ev.reason = Some(format!("BREAK-GLASS {id}: review required"));
        self.audit().append(vec![ev]).await?;
        self.break_glass(id).await
    }

    pub(crate) async fn break_glass(&self, id: BreakGlassId) -> Result<BreakGlass, VaultError> {
        break_glass::get(&self.stores().data, id)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("break-glass access {id}")))
    }

    async fn active_break_glass(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<Option<BreakGlassId>, VaultError> {
        break_glass::open_at(&self.stores().data, p.id, subject, self.now()).await
    }

    /// A director of the school (not the one who opened it) reviews a break-glass access.
    pub(crate) async fn review_break_glass(
        &self,
        p: &Principal,
        id: BreakGlassId,
        note: &str,
    ) -> Result<BreakGlass, VaultError> {
        let bg = self.break_glass(id).await?;
        let unknown = || VaultError::NotFound(format!("break-glass access {id}"));
        if !sees(p, &bg.school) {
            return Err(unknown());
        }
        let subj = self
            .scoped_subject(p, bg.subject)
            .await
            .map_err(|_| unknown())?;
        let note = text("the review note", note, 5)?;
        let health = category(HEALTH)?;
        let purpose = purpose(MEDICAL_EMERGENCY)?;
        if bg.principal == p.id {
            return Err(VaultError::SelfApproval);
        }
        if self.decide(p, &bg.school, &health, Action::Approve, &purpose) != Decision::Allow {
            return Err(VaultError::NotApprover {
                school: bg.school.clone(),
            });
        }
        if bg.reviewed_at.is_some() {
            return Err(VaultError::Invalid(format!(
                "break-glass access {id} was already reviewed"
            )));
        }
        break_glass::review(&self.stores().data, id, p.id, self.now(), note).await?;
        let mut ev = self.event(
            p,
            "break_glass.review",
            Outcome::Done,
            &subj,
            None,
            vec![health],
            Some(&purpose),
        );
        ev.reason = Some(format!("break-glass {id}"));
        self.audit().append(vec![ev]).await?;
        self.break_glass(id).await
    }

    /// Break-glass accesses left unreviewed for more than 24 hours.
    pub(crate) async fn overdue_break_glass(&self) -> Result<Vec<BreakGlass>, VaultError> {
        let cutoff = self.now() - BREAK_GLASS_REVIEW_DUE;
        break_glass::unreviewed_before(&self.stores().data, cutoff).await
    }

    // ----- blocking ----------------------------------------------------------------------------

    /// Blocks or unblocks a subject (Art. 25(2)(8)): blocked data is stored but not processed.
    /// Block and unblock are separate grants (the privacy officer's), so whoever may record
    /// consents cannot lift a block set for a reported violation.
    pub(crate) async fn set_blocked(
        &self,
        p: &Principal,
        subject: SubjectId,
        blocked: bool,
    ) -> Result<(), VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let why = purpose(LEGAL_ADMINISTRATIVE)?;
        let (action, audit_action) = if blocked {
            (Action::Block, "subject.block")
        } else {
            (Action::Unblock, "subject.unblock")
        };
        self.require_on_subject(p, &subj, action, &why, audit_action)
            .await?;
        subjects::set_blocked(
            &self.stores().data,
            subject,
            if blocked { Some(self.now()) } else { None },
        )
        .await?;
        self.audit()
            .append(vec![self.event(
                p,
                audit_action,
                Outcome::Done,
                &subj,
                None,
                Vec::new(),
                Some(&why),
            )])
            .await?;
        Ok(())
    }

    // ----- reads and writes through decisions ---------------------------------------------------

    /// Reads a record for a purpose: each category opens, or comes back sealed with the reason.
    /// The audit entries are committed before any value is returned.
    pub(crate) async fn read_record_as(
        &self,
        p: &Principal,
        id: RecordId,
        purpose: &Purpose,
    ) -> Result<RecordView, VaultError> {
        let (meta, subj, rows) = match self.record_for_read(id, |school| sees(p, school)).await {
            Err(VaultError::RecordShredded(_)) => {
                return Err(self
                    .shredded_or_forbidden(p, id, Action::Read, purpose, "record.read")
                    .await);
            }
            r => r?,
        };
        let present: BTreeSet<Category> = rows.iter().filter_map(FieldRow::category).collect();
        let mut open = BTreeSet::new();
        let mut sealed: BTreeMap<Category, SealReason> = BTreeMap::new();
        let mut events = Vec::new();
        let mut via = Vec::new();
        let mut needs_approval = BTreeSet::new();
        let mut basis = LazyBasis::default();
        for c in &present {
            // The decision first: a role without the grant learns nothing, not even the block.
            let approval = match self.decide(p, &subj.school, c, Action::Read, purpose) {
                Decision::Deny(r) => {
                    sealed.insert(c.clone(), SealReason::Forbidden(r));
                    continue;
                }
                Decision::ApprovalRequired => true,
                Decision::Allow => false,
            };
            if subj.blocked {
                sealed.insert(c.clone(), SealReason::Blocked);
                continue;
            }
            // The legal basis is checked before any approval use is spent on the category.
            if self.needs_basis(c) && !basis.get(self, subj.id).await?.covers(c) {
                sealed.insert(c.clone(), SealReason::NoLegalBasis);
                continue;
            }
            if approval {
                needs_approval.insert(c.clone());
            } else {
                open.insert(c.clone());
            }
        }
        if !needs_approval.is_empty()
            && purpose.as_str() == MEDICAL_EMERGENCY
            && let Ok(health) = category(HEALTH)
            && needs_approval.contains(&health)
            && let Some(bg) = self.active_break_glass(p, subj.id).await?
        {
            via.push(format!("break-glass {bg}"));
            needs_approval.remove(&health);
            open.insert(health);
        }
        for (req, cats) in self
            .use_approvals(
                p,
                &subj,
                Some(id),
                &needs_approval,
                purpose,
                ApprovalAct::Read,
            )
            .await?
        {
            via.push(format!("approval {req}"));
            needs_approval.retain(|c| !cats.contains(c));
            open.extend(cats);
        }
        for c in needs_approval {
            sealed.insert(c, SealReason::ApprovalRequired);
        }
        if !open.is_empty() {
            let mut ev = self.event(
                p,
                "record.read",
                Outcome::Allowed,
                &subj,
                Some(id),
                open.iter().cloned().collect(),
                Some(purpose),
            );
            if !via.is_empty() {
                ev.reason = Some(via.join("; "));
            }
            events.push(ev);
        }
        let mut by_reason: BTreeMap<String, (Outcome, Vec<Category>)> = BTreeMap::new();
        for (c, r) in &sealed {
            let outcome = if *r == SealReason::ApprovalRequired {
                Outcome::ApprovalRequired
            } else {
                Outcome::Denied
            };
            by_reason
                .entry(r.describe())
                .or_insert((outcome, Vec::new()))
                .1
                .push(c.clone());
        }
        for (reason, (outcome, cats)) in by_reason {
            let mut ev = self.event(
                p,
                "record.read",
                outcome,
                &subj,
                Some(id),
                cats,
                Some(purpose),
            );
            ev.reason = Some(reason);
            events.push(ev);
        }
        // A read that no role of the principal may make at all (every category forbidden, or,
        // for a record without fields, identity) is refused, not answered with a record of
        // sealed markers: the caller learns it holds no grant, and nothing else.
        let refusal = if present.is_empty() {
            match self.decide(p, &subj.school, &category(IDENTITY)?, Action::Read, purpose) {
                Decision::Deny(r) => Some((category(IDENTITY)?, r)),
                _ => None,
            }
        } else if open.is_empty() {
            let mut all = sealed.iter().map(|(c, r)| match r {
                SealReason::Forbidden(d) => Some((c.clone(), d.clone())),
                _ => None,
            });
            let first = all.next().flatten();
            if all.all(|x| x.is_some()) {
                first
            } else {
                None
            }
        } else {
            None
        };
        if let Some((c, reason)) = refusal {
            if events.is_empty() {
                let mut ev = self.event(
                    p,
                    "record.read",
                    Outcome::Denied,
                    &subj,
                    Some(id),
                    vec![c.clone()],
                    Some(purpose),
                );
                ev.reason = Some(reason.to_string());
                events.push(ev);
            }
            self.audit().append(events).await?;
            return Err(VaultError::Forbidden {
                category: c,
                reason,
            });
        }
        // Durable before any value leaves.
        self.audit().append(events).await?;
        let mut view = self.open_fields(meta, rows, &open).await?;
        for f in view.fields.values_mut() {
            if let FieldView::Sealed { category, reason } = f
                && let Some(r) = sealed.get(category)
            {
                *reason = r.clone();
            }
        }
        Ok(view)
    }

    /// Refuses a write to a blocked subject, a category whose purpose or grant does not allow
    /// it, or a special category without a legal basis; audits the refusal.
    async fn check_write(
        &self,
        a: &Act<'_>,
        cats: &BTreeMap<Category, Purpose>,
        action: Action,
    ) -> Result<(), VaultError> {
        // The grants first: a role that may not write learns nothing of the subject's state.
        self.require_each(a, cats.iter(), action).await?;
        if a.subj.blocked {
            let mut ev = self.event(
                a.p,
                a.audit_action,
                Outcome::Denied,
                a.subj,
                a.record,
                cats.keys().cloned().collect(),
                Some(a.purpose),
            );
            ev.reason = Some("subject is blocked".into());
            self.audit().append(vec![ev]).await?;
            return Err(VaultError::Blocked(a.subj.id));
        }
        let mut basis = LazyBasis::default();
        for (c, why) in cats {
            if self.needs_basis(c) && !basis.get(self, a.subj.id).await?.covers(c) {
                let mut ev = self.event(
                    a.p,
                    a.audit_action,
                    Outcome::Denied,
                    a.subj,
                    a.record,
                    vec![c.clone()],
                    Some(why),
                );
                ev.reason = Some(format!("no legal basis for {c}"));
                self.audit().append(vec![ev]).await?;
                return Err(VaultError::NoLegalBasis {
                    category: c.clone(),
                });
            }
        }
        Ok(())
    }

    /// Each category a write names, with the purpose it is written for.
    fn purposes_of(
        &self,
        record_type: &RecordType,
        names: impl Iterator<Item = FieldName>,
        purposes: &Purposes,
    ) -> Result<BTreeMap<Category, Purpose>, VaultError> {
        let rt = self
            .catalog()
            .record_type(record_type)
            .ok_or_else(|| VaultError::UnknownRecordType(record_type.clone()))?;
        let mut out = BTreeMap::new();
        for n in names {
            let c = rt.field(&n).map(|f| f.category.clone()).ok_or_else(|| {
                VaultError::UnknownField {
                    record_type: record_type.clone(),
                    field: n,
                }
            })?;
            let why = purposes.of(&c).clone();
            out.insert(c, why);
        }
        if let Some(c) = purposes.per_category.keys().find(|c| !out.contains_key(c)) {
            return Err(VaultError::Invalid(format!(
                "a purpose is given for {c}, but no field of the {record_type} record written is in that category: remove it from purposes"
            )));
        }
        Ok(out)
    }

    /// One audit entry per purpose of a write: who wrote which categories why.
    fn write_events(
        &self,
        p: &Principal,
        action: &'static str,
        subj: &Subject,
        record: RecordId,
        cats: &BTreeMap<Category, Purpose>,
    ) -> Vec<AuditEvent> {
        let mut by_purpose: BTreeMap<&Purpose, Vec<Category>> = BTreeMap::new();
        for (c, why) in cats {
            by_purpose.entry(why).or_default().push(c.clone());
        }
        by_purpose
            .into_iter()
            .map(|(why, cats)| {
                self.event(
                    p,
                    action,
                    Outcome::Allowed,
                    subj,
                    Some(record),
                    cats,
                    Some(why),
                )
            })
            .collect()
    }

    /// Writes a record, if every category may be written for its purpose and special categories
    /// have a legal basis.
    pub(crate) async fn write_record_as(
        &self,
        p: &Principal,
        subject: SubjectId,
        record_type: &RecordType,
        fields: &BTreeMap<FieldName, FieldValue>,
        purposes: &Purposes,
    ) -> Result<RecordMeta, VaultError> {
        // Input first: an empty write is refused the same way for everyone, before any state
        // (the block) could be told.
        if fields.is_empty() {
            return Err(VaultError::EmptyRecord);
        }
        let subj = self.scoped_subject(p, subject).await?;
        let cats = self.purposes_of(record_type, fields.keys().cloned(), purposes)?;
        self.check_write(
            &Act {
                p,
                subj: &subj,
                record: None,
                purpose: &purposes.default,
                audit_action: "record.write",
            },
            &cats,
            Action::Write,
        )
        .await?;
        // The entries are committed with the record, in the same transaction.
        self.write_record_for(&subj, record_type, fields, |meta| {
            self.write_events(p, "record.write", &subj, meta.id, &cats)
        })
        .await
    }

    /// Updates a record, with the same checks as a write.
    pub(crate) async fn update_record_as(
        &self,
        p: &Principal,
        id: RecordId,
        expected_version: u64,
        changes: &BTreeMap<FieldName, FieldChange>,
        purposes: &Purposes,
    ) -> Result<RecordMeta, VaultError> {
        if changes.is_empty() {
            return Err(VaultError::EmptyRecord);
        }
        let (meta, subj) = match self.scoped_record(p, id).await {
            Err(VaultError::RecordShredded(_)) => {
                return Err(self
                    .shredded_or_forbidden(
                        p,
                        id,
                        Action::Update,
                        &purposes.default,
                        "record.update",
                    )
                    .await);
            }
            r => r?,
        };
        let cats = self.purposes_of(&meta.record_type, changes.keys().cloned(), purposes)?;
        self.check_write(
            &Act {
                p,
                subj: &subj,
                record: Some(id),
                purpose: &purposes.default,
                audit_action: "record.update",
            },
            &cats,
            Action::Update,
        )
        .await?;
        let entries = self.write_events(p, "record.update", &subj, id, &cats);
        self.update_record_for(id, expected_version, changes, entries)
            .await
    }

    /// Crypto-shreds a record on a principal's authority, leaving a shred certificate in the log.
    /// Decided on every category the record type can hold, not only those it holds now: an
    /// empty record is no way around the shred grant.
    pub(crate) async fn shred_record_as(
        &self,
        p: &Principal,
        id: RecordId,
        purpose: &Purpose,
    ) -> Result<ShredReceipt, VaultError> {
        let (meta, subj) = self.scoped_record_any(p, id).await?;
        let mut cats = self.record_categories(id).await?;
        if let Some(rt) = self.catalog().record_type(&meta.record_type) {
            cats.extend(rt.fields().map(|f| f.category.clone()));
        }
        cats.insert(category(IDENTITY)?);
        self.require(
            &Act {
                p,
                subj: &subj,
                record: Some(id),
                purpose,
                audit_action: "record.shred",
            },
            &cats,
            Action::Shred,
        )
        .await?;
        self.shred_record_for(id, |receipt| {
            let mut ev = self.event(
                p,
                "record.shred",
                Outcome::Done,
                &subj,
                Some(id),
                receipt.categories.clone(),
                Some(purpose),
            );
            ev.reason = Some(format!(
                "shred certificate: {} keys destroyed, {} fields deleted",
                receipt.deks_destroyed, receipt.fields_deleted
            ));
            vec![ev]
        })
        .await
    }

    /// What a shredded record of the principal's school is told as: `410` to a role that could
    /// have acted on it, `403` (audited like any refusal) to one that holds no grant for
    /// `action` on any category the record type can hold, so the shred is no state a role
    /// without the grant learns.
    async fn shredded_or_forbidden(
        &self,
        p: &Principal,
        id: RecordId,
        action: Action,
        purpose: &Purpose,
        audit_action: &'static str,
    ) -> VaultError {
        let found = async {
            let (meta, subj) = self.scoped_record_any(p, id).await?;
            let mut cats: BTreeSet<Category> = self
                .catalog()
                .record_type(&meta.record_type)
                .map(|rt| rt.fields().map(|f| f.category.clone()).collect())
                .unwrap_or_default();
            cats.insert(category(IDENTITY)?);
            // A role that may act on some category hears of the shred; one that may act on
            // none is refused as for a live record, through the same audited refusal.
            let all_denied = cats.iter().all(|c| {
                matches!(
                    self.decide(p, &subj.school, c, action, purpose),
                    Decision::Deny(_)
                )
            });
            if !all_denied {
                return Ok(VaultError::RecordShredded(id));
            }
            let act = Act {
                p,
                subj: &subj,
                record: Some(id),
                purpose,
                audit_action,
            };
            let first = cats.into_iter().take(1).collect();
            Ok::<_, VaultError>(match self.require(&act, &first, action).await {
                Err(e) => e,
                Ok(()) => VaultError::RecordShredded(id),
            })
        };
        match found.await {
            Ok(e) | Err(e) => e,
        }
    }

    /// A set of categories named in a request: duplicates collapse, and each must be one the
    /// school collects, so the set is never larger than the catalog.
    pub(crate) fn category_set(
        &self,
        cats: &[Category],
        what: &str,
    ) -> Result<BTreeSet<Category>, VaultError> {
        let mut out = BTreeSet::new();
        for c in cats {
            if !self.catalog().collected_categories().any(|k| k == c) {
                return Err(VaultError::Invalid(format!(
                    "{what} names category '{c}', which the school does not collect"
                )));
            }
            out.insert(c.clone());
        }
        Ok(out)
    }
}
