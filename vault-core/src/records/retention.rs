//! Retention (Law 94-V Art. 18): each category's rule in the catalog (a trigger and a period)
//! says when a record's data in that category expires; legal holds exempt a subject or a record;
//! a sweep crypto-shreds what expired and is not held, certifies each shred in the audit log and
//! appends it to the shred log, which a restore of an older backup re-applies.
//!
//! Shredding one category of a record destroys its DEK first (key store), then deletes its
//! ciphertext (data store). A crash between leaves ciphertext that no key opens, which reads as
//! shredded and is deleted by the next sweep: a sweep can always be run again.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDate, Utc};

use crate::access::model::Principal;
use crate::access::policy::Action;
use crate::audit::chain::{AuditEvent, Outcome};
use crate::catalog::RetentionTrigger;
use crate::domain::{Category, Purpose, RecordId, SchoolId, SubjectId};
use crate::error::VaultError;
use crate::records::vault::{Subject, Vault};
use crate::store::StoreError;
use crate::store::repo::retention::{self as repo, Shred};
use crate::store::repo::{deks, records, subjects};

/// The purpose leavers and legal holds are recorded for: the school's legal duties.
fn retention_purpose() -> Result<Purpose, VaultError> {
    Ok(Purpose::parse("legal_administrative")?)
}

/// A hold's (or release's) reason, trimmed: at least five characters, so it names a case.
fn hold_reason<'r>(reason: &'r str, what: &str) -> Result<&'r str, VaultError> {
    let r = reason.trim();
    if r.chars().count() < 5 {
        return Err(VaultError::Invalid(what.to_owned()));
    }
    Ok(r)
}

/// Records shredded per pair of transactions in a sweep: a tenth of what a page of records has
/// due, so a small sweep reports progress about ten times, between these bounds.
const SWEEP_CHUNK: (usize, usize) = (50, 1000);

/// One (record, category) with an expiry date.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetentionItem {
    pub record: RecordId,
    pub subject: SubjectId,
    pub school: SchoolId,
    pub category: Category,
    /// The rule that decided, e.g. "health: 5y after left_school".
    pub rule: String,
    pub expires_on: NaiveDate,
    pub held: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LegalHold {
    pub id: String,
    pub subject: SubjectId,
    pub record: Option<RecordId>,
    pub reason: String,
    pub placed_by: String,
    pub placed_at: DateTime<Utc>,
    pub released_at: Option<DateTime<Utc>>,
    pub release_reason: Option<String>,
}

/// The expired, unheld categories of one record, as a sweep collects them: (category, rule)
/// in category order.
struct Due {
    subject: SubjectId,
    school: SchoolId,
    items: Vec<(Category, String)>,
}

impl Due {
    fn categories(&self) -> Vec<Category> {
        self.items.iter().map(|(c, _)| c.clone()).collect()
    }
}

/// What a sweep did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub dry_run: bool,
    /// Records shredded (in whole or in part).
    pub records: usize,
    /// Expired (record, category) pairs left alone because of a legal hold.
    pub held: usize,
}

/// A sweep's progress, after each chunk (and after each page of records with nothing due).
#[derive(Debug)]
pub struct SweepProgress<'a> {
    /// The records of this chunk and the categories shredded in each.
    pub shredded: &'a [(RecordId, Vec<Category>)],
    /// Records shredded so far.
    pub records: usize,
    /// Active records planned so far, of those there were when the sweep began.
    pub records_checked: u64,
    pub records_total: u64,
}

/// How a sweep runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SweepOptions {
    /// Report what would be shredded, shred nothing.
    pub dry_run: bool,
    /// Records planned at a time: a sweep's memory is that of one page.
    pub records_per_page: u64,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            dry_run: false,
            records_per_page: PLAN_PAGE,
        }
    }
}

/// Records per page of a plan, unless a sweep says otherwise.
pub const PLAN_PAGE: u64 = 2_000;

/// One page of the plan: the items of up to a page of records.
struct PlanPage {
    items: Vec<RetentionItem>,
    records: u64,
}

/// A catalog rule as the plan applies it, with its text ("health: 5y after left_school").
type Rule = Option<(Category, crate::catalog::Retention, String)>;

/// Walks the active records in id order, a page at a time, and plans them.
struct Planner {
    page: u64,
    after: Option<String>,
    holds: Vec<LegalHold>,
    rules: BTreeMap<String, Rule>,
}

impl Planner {
    async fn new(vault: &Vault, page: u64) -> Result<Self, VaultError> {
        let holds = vault
            .holds()
            .await?
            .into_iter()
            .filter(|h| h.released_at.is_none())
            .collect();
        Ok(Planner {
            page: page.max(1),
            after: None,
            holds,
            rules: BTreeMap::new(),
        })
    }

    fn rule(&mut self, vault: &Vault, cat: &str) -> &Rule {
        self.rules.entry(cat.to_owned()).or_insert_with_key(|cat| {
            let category = Category::parse(cat).ok()?;
            let rule = vault.catalog().category(&category)?.retention.clone()?;
            let trigger = match rule.trigger {
                RetentionTrigger::LeftSchool => "left_school",
                RetentionTrigger::RecordCreated => "record_created",
            };
            let period = match (rule.period.months, rule.period.days) {
                (m, 0) if m % 12 == 0 => format!("{}y", m / 12),
                (m, 0) => format!("{m}m"),
                (0, d) => format!("{d}d"),
                (m, d) => format!("{m}m{d}d"),
            };
            let text = format!("{category}: {period} after {trigger}");
            Some((category, rule, text))
        })
    }

    /// The next page of active records and their items; `None` at the end.
    async fn next_page(&mut self, vault: &Vault) -> Result<Option<PlanPage>, VaultError> {
        let db = &vault.stores().data;
        // The page's bounds come off the primary key; its rows then come in one query over
        // that range (an index range, not a list of ids), with only the columns the rules need.
        let ids = records::active_ids_page(db, self.after.as_deref(), self.page).await?;
        let Some(last) = ids.last().cloned() else {
            return Ok(None);
        };
        let records_in_page = ids.len() as u64;
        drop(ids);
        let rows = records::plan_rows(db, self.after.as_deref(), &last).await?;
        self.after = Some(last);

        let mut items = Vec::new();
        for (rid, cat, subject, created_at, school, left_at) in rows {
            let Some((category, rule, text)) = self.rule(vault, &cat).clone() else {
                continue;
            };
            let from = match rule.trigger {
                RetentionTrigger::LeftSchool => left_at,
                RetentionTrigger::RecordCreated => Some(created_at),
            };
            let Some(from) = from else { continue };
            let Some(expires_on) = rule.period.after(from.date_naive()) else {
                continue;
            };
            let record = RecordId::parse(&rid).map_err(|_| VaultError::CorruptRow("record id"))?;
            let subject =
                SubjectId::parse(&subject).map_err(|_| VaultError::CorruptRow("subject id"))?;
            let school =
                SchoolId::parse(&school).map_err(|_| VaultError::CorruptRow("school id"))?;
            let held = self
                .holds
                .iter()
                .any(|h| h.subject == subject && h.record.is_none_or(|hr| hr == record));
            items.push(RetentionItem {
                record,
                subject,
                school,
                rule: text,
                category,
                expires_on,
                held,
            });
        }
        Ok(Some(PlanPage {
            items,
            records: records_in_page,
        }))
    }
}

impl Vault {
    /// Records that a subject left the school (or a staff member left): the trigger of most
    /// retention periods, so it is decided (`left` on the subject's identity) and audited with
    /// both the date given and the day it was recorded.
    pub(crate) async fn mark_left_as(
        &self,
        p: &Principal,
        subject: SubjectId,
        at: DateTime<Utc>,
    ) -> Result<(), VaultError> {
        let subj = self.scoped_subject(p, subject).await?;
        self.require_on_subject(
            p,
            &subj,
            Action::Left,
            &retention_purpose()?,
            "subject.left",
        )
        .await?;
        // A day in the future is refused: "left" records what happened, and a planned date
        // would move every expiry. A past day is allowed (a leaver recorded late): the entry
        // shows both dates.
        if at > self.now() {
            return Err(VaultError::Invalid(format!(
                "the day a subject left ({}) is in the future: record it on or after that day",
                at.date_naive()
            )));
        }
        self.set_left(p.actor(), &subj, at).await
    }

    crate::unscoped! {
        /// `mark_left` without a decision, for fixtures.
        async fn mark_left(
            &self,
            actor: &str,
            subject: SubjectId,
            at: DateTime<Utc>,
        ) -> Result<(), VaultError> {
            let subj = self.subject(subject).await?;
            self.set_left(actor.to_owned(), &subj, at).await
        }
    }

    async fn set_left(
        &self,
        actor: String,
        subj: &Subject,
        at: DateTime<Utc>,
    ) -> Result<(), VaultError> {
        subjects::set_left(&self.stores().data, subj.id, at).await?;
        let mut ev = AuditEvent::new(actor, "subject.left", Outcome::Done);
        ev.school = Some(subj.school.clone());
        ev.subject = Some(subj.id);
        ev.reason = Some(format!(
            "left on {}, recorded on {}",
            at.date_naive(),
            self.now().date_naive()
        ));
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    /// Places a legal hold on a subject, or on one of its records (`hold` on its identity).
    pub(crate) async fn place_hold_as(
        &self,
        p: &Principal,
        subject: SubjectId,
        record: Option<RecordId>,
        reason: &str,
    ) -> Result<LegalHold, VaultError> {
        let reason = hold_reason(
            reason,
            "a legal hold needs a reason (a case number, a court order)",
        )?;
        let subj = self.scoped_subject(p, subject).await?;
        self.require_on_subject(p, &subj, Action::Hold, &retention_purpose()?, "hold.place")
            .await?;
        if let Some(r) = record {
            // Another school's record is as unknown as a random id.
            self.scoped_record_any(p, r).await?;
        }
        self.insert_hold(p.actor(), &subj, record, reason).await
    }

    crate::unscoped! {
        /// `place_hold` without a decision, for fixtures.
        async fn place_hold(
            &self,
            actor: &str,
            subject: SubjectId,
            record: Option<RecordId>,
            reason: &str,
        ) -> Result<LegalHold, VaultError> {
            let reason = hold_reason(reason, "a legal hold needs a reason (a case number, a court order)")?;
            let subj = self.subject(subject).await?;
            self.insert_hold(actor.to_owned(), &subj, record, reason).await
        }
    }

    async fn insert_hold(
        &self,
        actor: String,
        subj: &Subject,
        record: Option<RecordId>,
        reason: &str,
    ) -> Result<LegalHold, VaultError> {
        if let Some(r) = record
            && self.record_meta_any(r).await?.subject != subj.id
        {
            return Err(VaultError::Invalid(format!(
                "record {r} is not a record of subject {}",
                subj.id
            )));
        }
        let id = uuid::Uuid::new_v4().to_string();
        let hold = LegalHold {
            id: id.clone(),
            subject: subj.id,
            record,
            reason: reason.to_owned(),
            placed_by: actor.clone(),
            placed_at: self.now(),
            released_at: None,
            release_reason: None,
        };
        repo::insert_hold(&self.stores().data, &hold).await?;
        let mut ev = AuditEvent::new(actor, "hold.place", Outcome::Done);
        ev.school = Some(subj.school.clone());
        ev.subject = Some(subj.id);
        ev.record = record;
        ev.reason = Some(format!("hold {id}"));
        self.audit().append(vec![ev]).await?;
        self.hold(&id).await
    }

    async fn hold(&self, id: &str) -> Result<LegalHold, VaultError> {
        repo::hold(&self.stores().data, id)
            .await?
            .ok_or_else(|| VaultError::NotFound(format!("legal hold {id}")))
    }

    /// Releases a hold, with a reason. A hold on a subject of a school where the principal
    /// holds no role is answered as not found, like a random id.
    pub(crate) async fn release_hold_as(
        &self,
        p: &Principal,
        id: &str,
        reason: &str,
    ) -> Result<LegalHold, VaultError> {
        let reason = hold_reason(reason, "releasing a hold needs a reason")?;
        let h = self.hold(id).await?;
        let subj = self
            .scoped_subject(p, h.subject)
            .await
            .map_err(|_| VaultError::NotFound(format!("legal hold {id}")))?;
        self.require_on_subject(
            p,
            &subj,
            Action::Hold,
            &retention_purpose()?,
            "hold.release",
        )
        .await?;
        self.end_hold(p.actor(), &subj, h, reason).await
    }

    crate::unscoped! {
        /// `release_hold` without a decision, for fixtures.
        async fn release_hold(
            &self,
            actor: &str,
            id: &str,
            reason: &str,
        ) -> Result<LegalHold, VaultError> {
            let reason = hold_reason(reason, "releasing a hold needs a reason")?;
            let h = self.hold(id).await?;
            let subj = self.subject(h.subject).await?;
            self.end_hold(actor.to_owned(), &subj, h, reason).await
        }
    }

    async fn end_hold(
        &self,
        actor: String,
        subj: &Subject,
        h: LegalHold,
        reason: &str,
    ) -> Result<LegalHold, VaultError> {
        if h.released_at.is_some() {
            return Err(VaultError::Invalid(format!(
                "legal hold {} was already released",
                h.id
            )));
        }
        repo::release_hold(&self.stores().data, &h.id, self.now(), reason).await?;
        let mut ev = AuditEvent::new(actor, "hold.release", Outcome::Done);
        ev.school = Some(subj.school.clone());
        ev.subject = Some(subj.id);
        ev.record = h.record;
        ev.reason = Some(format!("hold {}", h.id));
        self.audit().append(vec![ev]).await?;
        self.hold(&h.id).await
    }

    /// The holds of the schools where the principal places holds, active first.
    pub(crate) async fn holds_as(&self, p: &Principal) -> Result<Vec<LegalHold>, VaultError> {
        let identity = Category::parse("identity")?;
        let why = retention_purpose()?;
        let mut hs = Vec::new();
        for h in repo::holds(&self.stores().data).await? {
            let school = self.subject(h.subject).await?.school;
            if crate::access::ops::sees(p, &school)
                && self.decide(p, &school, &identity, Action::Hold, &why)
                    == crate::access::policy::Decision::Allow
            {
                hs.push(h);
            }
        }
        hs.sort_by_key(|h| h.released_at.is_some());
        Ok(hs)
    }

    crate::unscoped! {
        /// Every hold, active first.
        async fn holds(&self) -> Result<Vec<LegalHold>, VaultError> {
            let mut hs = repo::holds(&self.stores().data).await?;
            hs.sort_by_key(|h| h.released_at.is_some());
            Ok(hs)
        }
    }

    /// What expires when: every (record, category) whose rule gives a date, with its hold
    /// status, soonest first. It holds the whole plan in memory; a sweep pages instead.
    pub async fn retention_plan(&self) -> Result<Vec<RetentionItem>, VaultError> {
        let mut planner = Planner::new(self, PLAN_PAGE).await?;
        let mut out = Vec::new();
        while let Some(page) = planner.next_page(self).await? {
            out.extend(page.items);
        }
        out.sort_by(|a, b| {
            (a.expires_on, a.record, &a.category).cmp(&(b.expires_on, b.record, &b.category))
        });
        Ok(out)
    }

    /// Crypto-shreds every expired, unheld (record, category) as of now. Records are planned
    /// a page at a time, so memory stays flat however many records are due; `progress` is told
    /// after each chunk what was shredded (or, for a dry run, would be).
    pub async fn sweep(
        &self,
        opts: SweepOptions,
        progress: &mut (dyn FnMut(&SweepProgress<'_>) + Send),
    ) -> Result<SweepReport, VaultError> {
        let SweepOptions {
            dry_run,
            records_per_page,
        } = opts;
        let today = self.now().date_naive();
        let mut planner = Planner::new(self, records_per_page).await?;
        let records_total = records::count_active(&self.stores().data).await?;
        let mut report = SweepReport {
            dry_run,
            records: 0,
            held: 0,
        };
        let mut records_checked = 0;
        while let Some(page) = planner.next_page(self).await? {
            records_checked += page.records;
            let mut by_record: BTreeMap<RecordId, Due> = BTreeMap::new();
            for i in page.items.into_iter().filter(|i| i.expires_on <= today) {
                if i.held {
                    report.held += 1;
                    continue;
                }
                by_record
                    .entry(i.record)
                    .or_insert(Due {
                        subject: i.subject,
                        school: i.school,
                        items: Vec::new(),
                    })
                    .items
                    .push((i.category, i.rule));
            }
            let due: Vec<(RecordId, Due)> = by_record
                .into_iter()
                .map(|(r, mut d)| {
                    d.items.sort();
                    (r, d)
                })
                .collect();
            // A chunk of records shares one key-store and one data-store transaction:
            // per-record commits capped the sweep at the disk's fsync rate.
            let chunk_len = (due.len() / 10).clamp(SWEEP_CHUNK.0, SWEEP_CHUNK.1);
            for chunk in due.chunks(chunk_len) {
                if !dry_run {
                    self.shred_chunk(chunk).await?;
                }
                let shredded: Vec<(RecordId, Vec<Category>)> = chunk
                    .iter()
                    .map(|(rid, d)| (*rid, d.categories()))
                    .collect();
                report.records += chunk.len();
                progress(&SweepProgress {
                    shredded: &shredded,
                    records: report.records,
                    records_checked,
                    records_total,
                });
            }
            if due.is_empty() {
                progress(&SweepProgress {
                    shredded: &[],
                    records: report.records,
                    records_checked,
                    records_total,
                });
            }
        }
        Ok(report)
    }

    /// Shreds the due categories of a chunk of records: their DEKs first (one key-store
    /// transaction), then their fields, states and shred-log rows (one data-store transaction),
    /// with one shred certificate per record in the audit log. A crash between the two
    /// transactions leaves ciphertext no key opens; the next sweep finds it due and finishes.
    /// Deletes run per set of due categories, not per record: records expire in cohorts.
    async fn shred_chunk(&self, chunk: &[(RecordId, Due)]) -> Result<(), VaultError> {
        let ids: Vec<String> = chunk.iter().map(|(r, _)| r.to_string()).collect();
        let due_of: BTreeMap<String, BTreeSet<String>> = chunk
            .iter()
            .map(|(r, d)| {
                let cats = d.items.iter().map(|(c, _)| c.as_str().to_owned()).collect();
                (r.to_string(), cats)
            })
            .collect();
        // Records grouped by their set of due categories: one DELETE per group and store.
        let mut groups: BTreeMap<&BTreeSet<String>, Vec<String>> = BTreeMap::new();
        for (rid, cats) in &due_of {
            groups.entry(cats).or_default().push(rid.clone());
        }
        // (record, category) pairs held now, to certify what each record lost and kept.
        let count_due = |pairs: &[(String, String)]| -> BTreeMap<String, (u64, u64)> {
            let mut n: BTreeMap<String, (u64, u64)> = BTreeMap::new();
            for (rid, cat) in pairs {
                let e = n.entry(rid.clone()).or_default();
                if due_of.get(rid).is_some_and(|d| d.contains(cat)) {
                    e.0 += 1;
                } else {
                    e.1 += 1;
                }
            }
            n
        };

        let held = deks::destroy_groups(&self.stores().keys, ids.clone(), &groups).await?;
        crate::crash::point("sweep.keys_destroyed");
        let destroyed = count_due(&held);

        let now = self.now();
        let txn = crate::store::begin(&self.stores().data)
            .await
            .map_err(StoreError::data)?;
        let present = records::field_pairs(&txn, ids.clone()).await?;
        let fields = count_due(&present);
        records::delete_field_groups(&txn, &groups).await?;
        let gone: Vec<String> = ids
            .iter()
            .filter(|r| fields.get(*r).is_none_or(|(_, kept)| *kept == 0))
            .cloned()
            .collect();
        if !gone.is_empty() {
            records::mark_shredded_all(&txn, gone, now).await?;
        }
        let mut events = Vec::with_capacity(chunk.len());
        let mut log = Vec::with_capacity(chunk.len());
        for (rid, d) in chunk {
            let key = rid.to_string();
            let destroyed = destroyed.get(&key).map_or(0, |n| n.0);
            let (deleted, kept) = fields.get(&key).copied().unwrap_or_default();
            let cats = d.categories();
            let rule = d
                .items
                .iter()
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            log.push(Shred {
                record: key,
                categories: cats.clone(),
                rule: rule.chars().take(200).collect(),
                at: now,
            });
            let mut ev = AuditEvent::new("custodian", "retention.shred", Outcome::Done);
            ev.school = Some(d.school.clone());
            ev.subject = Some(d.subject);
            ev.record = Some(*rid);
            ev.categories = cats;
            ev.reason = Some(format!(
                "shred certificate: rule {rule}; {destroyed} keys destroyed, {deleted} fields deleted{}",
                if kept == 0 { "; record shredded" } else { "" }
            ));
            events.push(ev);
        }
        repo::log_shreds(&txn, log).await?;
        // The certificates commit with the deletions: no shred goes uncertified.
        self.audit()
            .chain()
            .append_in(&txn, &events)
            .await
            .map_err(StoreError::data)?;
        txn.commit().await.map_err(StoreError::data)?;
        Ok(())
    }

    /// The shred log: (record, categories, rule, when), oldest first.
    pub async fn shred_log(
        &self,
    ) -> Result<Vec<(RecordId, Vec<Category>, String, DateTime<Utc>)>, VaultError> {
        repo::shred_log(&self.stores().data).await
    }
}
