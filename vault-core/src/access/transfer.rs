//! Cross-border transfers (Law 94-V Art. 16, 7(6), 19). A check answers allowed or refused and
//! names the rule that decided; an export runs the same check, writes the allowed categories as
//! a package encrypted to the recipient's age key, and records it in the subject's disclosure
//! ledger with the date by which the subject must be told, where the consent promised it.

use std::collections::BTreeSet;
use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};

use crate::access::model::Principal;
use crate::access::policy::{Action, Decision};
use crate::audit::chain::{AuditEvent, Outcome};
use crate::domain::{Category, Country, Purpose, SubjectId};
use crate::error::VaultError;
use crate::keys::custodian::CustodianRecipient;
use crate::records::vault::{FieldView, Subject, Vault};
use crate::store::repo::transfers::{self, NewDisclosure};

/// Working days within which the subject is told of a transfer, where the consent promised it.
pub const TRANSFER_NOTICE_WORKING_DAYS: u32 = 10;

/// The Art. 16(3) grounds for a transfer to a state without adequate protection, besides
/// consent. The codes are the vault's; the docs map them to the law.
pub const TRANSFER_GROUNDS: &[&str] = &[
    "ratified_treaty",
    "court_or_law_enforcement",
    "vital_interests",
    "state_security",
];

/// What a transfer would send, and where.
#[derive(Clone, Debug)]
pub struct TransferRequest {
    pub subject: SubjectId,
    pub to: Country,
    pub categories: Vec<Category>,
    pub recipient: String,
    pub purpose: Purpose,
}

/// The answer, with the rule that decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransferDecision {
    Allowed {
        rule: String,
        notify_by: Option<NaiveDate>,
    },
    Refused {
        rule: String,
    },
}

/// One line of a subject's disclosure ledger.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disclosure {
    pub recipient: String,
    pub country: String,
    pub categories: Vec<String>,
    pub purpose: String,
    pub basis: String,
    pub at: DateTime<Utc>,
    pub notify_by: Option<NaiveDate>,
}

impl Vault {
    /// Records an Art. 16(3) ground for transfers of a subject's data to a country.
    pub(crate) async fn record_transfer_ground(
        &self,
        p: &Principal,
        subject: SubjectId,
        to: &Country,
        ground: &str,
        reference: &str,
    ) -> Result<(), VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let identity = Category::parse("identity")?;
        let why = Purpose::parse("legal_administrative")?;
        if self.decide(p, &subj.school, &identity, Action::Consent, &why) != Decision::Allow {
            return Err(VaultError::Forbidden {
                category: identity.clone(),
                reason: crate::access::policy::DenyReason::NotGranted {
                    action: Action::Consent,
                    category: identity,
                    purpose: why,
                },
            });
        }
        if !TRANSFER_GROUNDS.contains(&ground) {
            return Err(VaultError::Invalid(format!(
                "unknown transfer ground '{ground}': expected one of {}",
                TRANSFER_GROUNDS.join(", ")
            )));
        }
        if reference.trim().chars().count() < 3 {
            return Err(VaultError::Invalid(
                "a transfer ground needs a reference (treaty, order, case)".into(),
            ));
        }
        transfers::insert_ground(
            &self.stores().data,
            subject,
            to.as_str(),
            ground,
            reference.trim(),
            self.now(),
        )
        .await?;
        let mut ev = AuditEvent::new(p.id().to_string(), "transfer.ground", Outcome::Done);
        ev.school = Some(subj.school.clone());
        ev.subject = Some(subject);
        ev.reason = Some(format!("{ground} for {to}"));
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    /// Decides a transfer: never-leaving categories, purposes, protecting states, the subject's
    /// cross-border consent, a recorded ground, in that order.
    /// Whether a transfer may go ahead, by the rules of the destination. The caller's own right
    /// to send the data (grant, approval, block, legal basis) is decided by `export_transfer`.
    pub(crate) async fn check_transfer(
        &self,
        p: &Principal,
        r: &TransferRequest,
    ) -> Result<TransferDecision, VaultError> {
        let subj = self.scoped_subject(p, r.subject).await?;
        let cats = self.category_set(&r.categories, "a transfer")?;
        self.transfer_grants(p, &subj, &cats, &r.purpose)?;
        self.check_transfer_rules(r).await
    }

    /// The principal's grant to send each category: refused outright, or the categories that
    /// still need a director's approval.
    fn transfer_grants(
        &self,
        p: &Principal,
        subj: &Subject,
        cats: &BTreeSet<Category>,
        purpose: &Purpose,
    ) -> Result<BTreeSet<Category>, VaultError> {
        let mut needs_approval = BTreeSet::new();
        for c in cats {
            match self.decide(p, &subj.school, c, Action::Transfer, purpose) {
                Decision::Allow => {}
                Decision::ApprovalRequired => {
                    needs_approval.insert(c.clone());
                }
                // The catalog's own refusals are the destination rules' to name.
                Decision::Deny(
                    crate::access::policy::DenyReason::PurposeNotAllowed { .. }
                    | crate::access::policy::DenyReason::NotCollected(_),
                ) => {}
                Decision::Deny(reason) => {
                    return Err(VaultError::Forbidden {
                        category: c.clone(),
                        reason,
                    });
                }
            }
        }
        Ok(needs_approval)
    }

    async fn check_transfer_rules(
        &self,
        r: &TransferRequest,
    ) -> Result<TransferDecision, VaultError> {
        if r.categories.is_empty() {
            return Err(VaultError::Invalid(
                "name the categories to transfer".into(),
            ));
        }
        if r.recipient.trim().is_empty() {
            return Err(VaultError::Invalid("name the recipient".into()));
        }
        for c in &r.categories {
            let def = self
                .catalog()
                .category(c)
                .filter(|d| d.tier != crate::catalog::Tier::NotCollected)
                .ok_or_else(|| {
                    VaultError::Invalid(format!("category '{c}' is not collected by the school"))
                })?;
            if !def.may_leave_country && r.to.as_str() != "KZ" {
                return Ok(TransferDecision::Refused {
                    rule: format!("never_leaves: the catalog keeps {c} data in Kazakhstan"),
                });
            }
            if !def.purposes.contains(&r.purpose) {
                return Ok(TransferDecision::Refused {
                    rule: format!(
                        "purpose_not_allowed: the catalog does not allow {c} data for {}",
                        r.purpose
                    ),
                });
            }
        }
        if r.to.as_str() == "KZ" {
            return Ok(TransferDecision::Allowed {
                rule: "domestic: not a cross-border transfer".into(),
                notify_by: None,
            });
        }
        if self.policy().protecting_states().contains(&r.to) {
            return Ok(TransferDecision::Allowed {
                rule: format!("protecting_state: {} is on the operator's list", r.to),
                notify_by: None,
            });
        }
        let now = self.now();
        for c in self.consents_of(r.subject).await? {
            let current = c.withdrawn_at.is_none() && c.term_until.is_none_or(|t| t > now);
            let covers = r.categories.iter().all(|x| c.categories.contains(x));
            if current && covers && c.cross_border {
                let notify_by = c.third_party.then(|| {
                    self.policy()
                        .add_working_days(now.date_naive(), TRANSFER_NOTICE_WORKING_DAYS)
                });
                return Ok(TransferDecision::Allowed {
                    rule: format!("consent: cross-border consent {}", c.id),
                    notify_by,
                });
            }
        }
        let ground = transfers::ground_for(&self.stores().data, r.subject, r.to.as_str()).await?;
        if let Some((ground, reference)) = ground {
            return Ok(TransferDecision::Allowed {
                rule: format!("ground: {ground} ({reference})"),
                notify_by: None,
            });
        }
        Ok(TransferDecision::Refused {
            rule: format!(
                "no_basis: {} is not a protecting state, and there is no cross-border consent or Art. 16(3) ground for this subject",
                r.to
            ),
        })
    }

    /// Checks, then writes the allowed categories of every record of the subject as one JSON
    /// package encrypted to the recipient's age key, and records the disclosure.
    /// Exports a subject's data in the named categories to a recipient, as an age file only the
    /// recipient opens. Passes every decision a read does, as the principal who asked: the
    /// transfer grant, a director's approval for approval categories (one use for the whole
    /// package), the block, and for special categories a legal basis that allows transfer to a
    /// third party (Art. 7(6)); then the destination's rules.
    pub(crate) async fn export_transfer(
        &self,
        p: &Principal,
        r: &TransferRequest,
        recipient_key: &CustodianRecipient,
    ) -> Result<(TransferDecision, Vec<u8>), VaultError> {
        let subj = self.scoped_subject(p, r.subject).await?;
        let cats = self.category_set(&r.categories, "a transfer")?;
        let mut ev = AuditEvent::new(p.id().to_string(), "transfer.export", Outcome::Refused);
        ev.school = Some(subj.school.clone());
        ev.subject = Some(r.subject);
        ev.categories = cats.iter().cloned().collect();
        ev.purpose = Some(r.purpose.clone());
        let refuse = |mut ev: AuditEvent, err: VaultError| async move {
            ev.outcome = Outcome::Denied;
            ev.reason = Some(format!("to {} ({}): {err}", r.recipient, r.to));
            self.audit().append(vec![ev]).await?;
            Err::<(TransferDecision, Vec<u8>), VaultError>(err)
        };
        let mut needs_approval = match self.transfer_grants(p, &subj, &cats, &r.purpose) {
            Ok(n) => n,
            Err(e) => return refuse(ev, e).await,
        };
        let decision = self.check_transfer_rules(r).await?;
        let (rule, notify_by) = match &decision {
            TransferDecision::Refused { rule } => {
                ev.reason = Some(format!("to {} ({}): {rule}", r.recipient, r.to));
                self.audit().append(vec![ev]).await?;
                return Ok((decision, Vec::new()));
            }
            TransferDecision::Allowed { rule, notify_by } => (rule.clone(), *notify_by),
        };
        if subj.blocked {
            return refuse(ev, VaultError::Blocked(subj.id)).await;
        }
        let basis = self.legal_basis(subj.id).await?;
        if let Some(c) = cats
            .iter()
            .find(|c| self.needs_basis(c) && !basis.covers_third_party(c))
        {
            let err = VaultError::NoLegalBasis {
                category: c.clone(),
            };
            return refuse(ev, err).await;
        }
        // Spent last, once nothing else can refuse: one use opens every category it covers.
        let mut via = Vec::new();
        for (req, opened) in self
            .use_approvals(
                p,
                &subj,
                None,
                &needs_approval,
                &r.purpose,
                crate::access::policy::ApprovalAct::Transfer,
            )
            .await?
        {
            via.push(format!("approval {req}"));
            needs_approval.retain(|c| !opened.contains(c));
        }
        if let Some(c) = needs_approval.into_iter().next() {
            return refuse(ev, VaultError::ApprovalRequired { category: c }).await;
        }
        let allowed = cats;
        let mut records = Vec::new();
        for id in self.subject_record_ids(r.subject).await? {
            let view = self.read_record(id, &allowed).await?;
            let mut fields = serde_json::Map::new();
            for (name, f) in &view.fields {
                if let FieldView::Open { category, value } = f {
                    fields.insert(name.to_string(), serde_json::json!({ "category": category.as_str(), "value": value.to_json() }));
                }
            }
            if !fields.is_empty() {
                records.push(serde_json::json!({ "record": id.to_string(), "record_type": view.meta.record_type.as_str(), "fields": fields }));
            }
        }
        let now = self.now();
        let package = zeroize::Zeroizing::new(
            serde_json::json!({
                "operator": self.catalog().policy().operator, "operator_bin": self.catalog().policy().operator_bin,
                "subject": r.subject.to_string(), "recipient": r.recipient, "country": r.to.as_str(),
                "purpose": r.purpose.as_str(), "basis": rule, "exported_at": now,
                "categories": r.categories.iter().map(Category::as_str).collect::<Vec<_>>(), "records": records,
            })
            .to_string(),
        );
        let sealed = {
            let enc = age::Encryptor::with_recipients(std::iter::once(recipient_key.as_age()))
                .map_err(|e| {
                    VaultError::Invalid(format!("cannot encrypt to the recipient key: {e}"))
                })?;
            let mut out = Vec::new();
            let mut w = enc
                .wrap_output(&mut out)
                .map_err(|e| VaultError::Invalid(e.to_string()))?;
            w.write_all(package.as_bytes())
                .and_then(|_| w.finish().map(|_| ()))
                .map_err(|e| VaultError::Invalid(e.to_string()))?;
            out
        };
        transfers::insert_disclosure(
            &self.stores().data,
            NewDisclosure {
                subject: r.subject,
                recipient: r.recipient.trim(),
                country: r.to.as_str(),
                categories: &r.categories,
                purpose: &r.purpose,
                basis: rule.chars().take(200).collect(),
                at: now,
                notify_by,
            },
        )
        .await?;
        ev.outcome = Outcome::Allowed;
        ev.reason = Some(format!("to {} ({}): {rule}", r.recipient, r.to));
        if !via.is_empty() {
            ev.reason = ev.reason.map(|x| format!("{x}; {}", via.join("; ")));
        }
        self.audit().append(vec![ev]).await?;
        Ok((decision, sealed))
    }

    /// A subject's disclosure ledger (to whom, where, what, why, on which basis, when), for a
    /// principal who may read its consents; the read is recorded in the subject's history.
    pub(crate) async fn disclosures(
        &self,
        p: &Principal,
        subject: SubjectId,
    ) -> Result<Vec<Disclosure>, VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        let why = Purpose::parse("legal_administrative")?;
        self.require_on_subject(p, &subj, Action::ConsentRead, &why, "transfer.ledger")
            .await?;
        let ev = self.event(
            p,
            "transfer.ledger",
            Outcome::Done,
            &subj,
            None,
            Vec::new(),
            Some(&why),
        );
        self.audit().append(vec![ev]).await?;
        Ok(transfers::disclosures(&self.stores().data, subject).await?)
    }
}
