//! What the privacy officer and the custodian ask of the vault from the command line: the list
//! of persons with access (Order 179/НҚ), filtered audit queries, and incident reports for a
//! breach notification (Law 94-V Art. 25(2)(8), Order 481/НҚ).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};

use crate::access::model::{Principal, PrincipalId};
use crate::access::policy::{Action, Decision, Role, Scope};
use crate::audit::chain::{AuditError, AuditEvent, AuditLog, AuditRecord, Outcome};
use crate::audit::merkle::Tree;
use crate::audit::tlog::{AuditProof, Checkpoint, NoteKey, PROOF_FORMAT, ProvenEntry};
use crate::domain::Purpose;
use crate::domain::{Category, SchoolId, SubjectId};
use crate::error::VaultError;
use crate::records::vault::{FieldView, Subject, Vault};
use crate::store::repo::{audit, principals};

/// One person or app with access, for the list the law asks the operator to keep. Its id, name
/// and roles, not a `Principal`: a listed principal must not be usable to open a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrincipalEntry {
    pub id: PrincipalId,
    pub name: String,
    pub roles: Vec<(Scope, Role)>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Which audit entries to list. Empty fields do not filter.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub subject: Option<SubjectId>,
    pub actor: Option<String>,
    pub category: Option<Category>,
    pub outcome: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

/// One subject a principal touched in the window, with what is needed to notify them.
/// `Debug` names the contact fields present, never their values.
pub struct IncidentSubject {
    pub subject: Subject,
    pub categories: BTreeSet<String>,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub accesses: u64,
    /// Identity and contact fields (name, IIN, phones, address, guardians), decrypted for the
    /// notification. Personal data: handle as such.
    pub contacts: BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for IncidentSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IncidentSubject")
            .field("subject", &self.subject)
            .field("categories", &self.categories)
            .field("first", &self.first)
            .field("last", &self.last)
            .field("accesses", &self.accesses)
            .field("contacts", &self.contacts.keys().collect::<Vec<_>>())
            .finish()
    }
}

#[derive(Debug)]
pub struct IncidentReport {
    pub principal: PrincipalId,
    pub since: DateTime<Utc>,
    pub until: DateTime<Utc>,
    pub detected_at: DateTime<Utc>,
    /// One working day after detection: the authorised body must be told by then.
    pub notify_authority_by: NaiveDate,
    pub subjects: Vec<IncidentSubject>,
}

/// What one principal did to one subject's data, accumulated over the window.
struct Touch {
    categories: BTreeSet<String>,
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    accesses: u64,
}

impl Vault {
    /// Everyone who has or had access, with roles and dates.
    pub async fn list_principals(&self) -> Result<Vec<PrincipalEntry>, VaultError> {
        principals::list(&self.stores().data).await
    }

    crate::unscoped! {
        /// Audit entries matching the filter, oldest first, undecided: for fixtures.
        async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditRecord>, VaultError> {
            let mut entries = audit::query(&self.stores().data, f).await?;
            entries.retain(|r| {
                f.category
                    .as_ref()
                    .is_none_or(|c| r.categories.iter().any(|x| x == c.as_str()))
            });
            Ok(entries)
        }
    }

    /// Audit entries matching the filter, for an auditor: with a subject, that subject's history
    /// (decided and recorded in it, like `access_history`); without, the entries of the schools
    /// where `p` may read the log, and entries that name no school only for a network-wide
    /// auditor. The query itself is an audit entry.
    pub(crate) async fn audit_log_as(
        &self,
        p: &Principal,
        f: &AuditFilter,
    ) -> Result<Vec<AuditRecord>, VaultError> {
        if let Some(subject) = f.subject {
            // Decides and records the read in the subject's history; the query below reads it.
            self.history_read_as(p, subject).await?;
        } else if !self.may_audit(p) {
            return Err(VaultError::NotAuditor);
        }
        let identity = Category::parse("identity")?;
        let why = Purpose::parse("audit")?;
        let network = p.roles().iter().any(|(s, r)| {
            *s == Scope::Network
                && self
                    .policy()
                    .holds_everywhere(*r, &identity, Action::AuditRead, &why)
        });
        let mut may: BTreeMap<String, bool> = BTreeMap::new();
        let mut entries = self.audit_query(f).await?;
        entries.retain(|r| match &r.school {
            None => network,
            Some(s) => *may.entry(s.clone()).or_insert_with(|| {
                SchoolId::parse(s).is_ok_and(|school| {
                    crate::access::ops::sees(p, &school)
                        && self.decide(p, &school, &identity, Action::AuditRead, &why)
                            == Decision::Allow
                })
            }),
        });
        if f.subject.is_none() {
            let mut ev = AuditEvent::new(p.actor(), "audit.query", Outcome::Done);
            ev.purpose = Some(why);
            ev.reason = Some(format!("{} entries listed", entries.len()));
            self.audit().append(vec![ev]).await?;
        }
        Ok(entries)
    }

    /// A subject's entries with inclusion proofs under a checkpoint of the whole log signed now
    /// and, with `since` (an older signed checkpoint), the proof that the log extends it.
    /// Decided and recorded like a read of the subject's history; refused over a log that does
    /// not verify, and over one that no longer extends `since`.
    pub(crate) async fn audit_proof_as(
        &self,
        p: &Principal,
        subject: SubjectId,
        since: Option<&str>,
    ) -> Result<AuditProof, VaultError> {
        let keys = self.audit().chain().keys();
        let note_keys = keys.note_keys();
        let pinned = since
            .map(|s| Checkpoint::open(s, &note_keys).map(|(c, _)| c))
            .transpose()
            .map_err(AuditError::from)?;
        self.history_read_as(p, subject).await?;
        if let Some(problem) = self.verify_audit().await?.problem {
            return Err(AuditError::Tampered(problem).into());
        }
        let (leaves, theirs) = AuditLog::leaves(&self.stores().data, &keys, subject).await?;
        let tree = Tree::new(leaves);
        let Some(key) = note_keys.last() else {
            return Err(VaultError::Invalid("the keyring holds no audit key".into()));
        };
        let head = Checkpoint {
            origin: key.name().to_owned(),
            size: tree.size(),
            root: tree.root_at(tree.size()),
        };
        let consistency = match (since, pinned) {
            (Some(text), Some(old)) => {
                if old.size > tree.size() || tree.root_at(old.size) != old.root {
                    return Err(AuditError::Rewritten { size: old.size }.into());
                }
                Some(AuditProof::consistency_of(
                    text,
                    &tree.consistency(old.size),
                ))
            }
            _ => None,
        };
        let entries = theirs
            .iter()
            .map(|r| ProvenEntry::of(r, &tree.inclusion((r.seq - 1) as u64)))
            .collect();
        Ok(AuditProof {
            format: PROOF_FORMAT.to_owned(),
            checkpoint: head.sign(key, keys.signer()),
            entries,
            consistency,
        })
    }

    /// The audit public keys, oldest first, as C2SP note verifier keys: what an outside auditor
    /// needs to check a proof. Public, so no decision.
    pub fn audit_public_keys(&self) -> Vec<NoteKey> {
        self.audit().chain().keys().note_keys()
    }

    /// Every subject whose data `principal` touched in [since, until), with categories, times and
    /// the identity and contact data needed to notify them; and the authority's deadline.
    /// Which subjects a principal (or its leaked token) touched in a window, with the contacts
    /// to notify them (Art. 25(2)(8)). Made by `by`, who needs the export grant for legal
    /// requirements in each subject's school; subjects of other schools are left out, blocked
    /// subjects are listed without contacts, and each subject's history shows the report.
    pub(crate) async fn incident_report(
        &self,
        by: &Principal,
        principal: PrincipalId,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<IncidentReport, VaultError> {
        if until <= since {
            return Err(VaultError::Invalid("--until must be after --since".into()));
        }
        let identity = Category::parse("identity")?;
        let why = Purpose::parse("legal_administrative")?;
        if !self.may_anywhere(by, &identity, Action::Export, &why) {
            return Err(VaultError::Forbidden {
                category: identity.clone(),
                reason: crate::access::policy::DenyReason::NotGranted {
                    action: Action::Export,
                    category: identity,
                    purpose: why,
                },
            });
        }
        let detected_at = self.now();
        let entries = self
            .audit_query(&AuditFilter {
                actor: Some(principal.to_string()),
                since: Some(since),
                until: Some(until),
                ..AuditFilter::default()
            })
            .await?;
        let mut by_subject: BTreeMap<String, Touch> = BTreeMap::new();
        for e in entries
            .iter()
            .filter(|e| e.outcome == "allowed" || e.outcome == "done")
        {
            let Some(s) = &e.subject else { continue };
            let t = by_subject.entry(s.clone()).or_insert(Touch {
                categories: BTreeSet::new(),
                first: e.at,
                last: e.at,
                accesses: 0,
            });
            t.categories.extend(e.categories.iter().cloned());
            t.first = t.first.min(e.at);
            t.last = t.last.max(e.at);
            t.accesses += 1;
        }
        let contact_cats: BTreeSet<Category> = ["identity", "contact"]
            .iter()
            .filter_map(|c| Category::parse(c).ok())
            .collect();
        let mut subjects = Vec::new();
        let mut events = Vec::new();
        for (sid, t) in by_subject {
            let id = SubjectId::parse(&sid).map_err(|_| VaultError::CorruptRow("subject id"))?;
            let Ok(subject) = self.scoped_subject(by, id).await else {
                continue;
            };
            let allowed = contact_cats.iter().all(|c| {
                self.decide(by, &subject.school, c, Action::Export, &why) == Decision::Allow
            });
            if !allowed {
                continue;
            }
            let mut ev = self.event(
                by,
                "incident.report",
                Outcome::Allowed,
                &subject,
                None,
                contact_cats.iter().cloned().collect(),
                Some(&why),
            );
            ev.reason = Some(format!(
                "incident report on principal {principal}, {} to {}",
                since.to_rfc3339(),
                until.to_rfc3339()
            ));
            events.push(ev);
            let mut contacts = BTreeMap::new();
            let ids = if subject.blocked {
                Vec::new()
            } else {
                self.subject_record_ids(id).await?
            };
            let subject = subject.into_inner();
            for rid in ids {
                let view = self.read_record(rid, &contact_cats).await?;
                for (name, f) in view.fields {
                    if let FieldView::Open { value, .. } = f
                        && matches!(
                            name.as_str(),
                            "full_name"
                                | "iin"
                                | "phones"
                                | "contacts"
                                | "address"
                                | "email"
                                | "guardians"
                        )
                    {
                        contacts.insert(name.to_string(), value.to_json());
                    }
                }
            }
            subjects.push(IncidentSubject {
                subject,
                categories: t.categories,
                first: t.first,
                last: t.last,
                accesses: t.accesses,
                contacts,
            });
        }
        let notify_authority_by = self.policy().add_working_days(detected_at.date_naive(), 1);
        let mut ev = AuditEvent::new(by.id().to_string(), "incident.report", Outcome::Done);
        ev.categories = contact_cats.into_iter().collect();
        ev.reason = Some(format!(
            "principal {principal}, {} subjects, {} to {}; notify the authority by {notify_authority_by}",
            subjects.len(),
            since.to_rfc3339(),
            until.to_rfc3339()
        ));
        events.push(ev);
        // Durable before any contact leaves.
        self.audit().append(events).await?;
        Ok(IncidentReport {
            principal,
            since,
            until,
            detected_at,
            notify_authority_by,
            subjects,
        })
    }
}
