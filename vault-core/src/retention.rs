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
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use crate::audit::{AuditEvent, Outcome};
use crate::catalog::RetentionTrigger;
use crate::domain::{Category, RecordId, SchoolId, SubjectId};
use crate::store::StoreError;
use crate::store::entities::{dek, legal_hold, record, record_field, shred_log, subject};
use crate::vault::{Vault, VaultError};

/// Records shredded per pair of transactions in a sweep: a tenth of the sweep, so progress is
/// reported about ten times, between these bounds.
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

/// The expired, unheld categories of one record, as a sweep collects them.
struct Due {
    subject: SubjectId,
    school: SchoolId,
    items: Vec<(Category, String)>,
}

/// What a sweep did (or, with `dry_run`, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub dry_run: bool,
    /// Records and the categories shredded in each.
    pub shredded: Vec<(RecordId, Vec<Category>)>,
    /// Expired (record, category) pairs left alone because of a legal hold.
    pub held: usize,
}

fn hold_from_row(m: legal_hold::Model) -> Result<LegalHold, VaultError> {
    Ok(LegalHold {
        subject: SubjectId::parse(&m.subject_id)
            .map_err(|_| VaultError::CorruptRow("subject id"))?,
        record: m
            .record_id
            .as_deref()
            .map(RecordId::parse)
            .transpose()
            .map_err(|_| VaultError::CorruptRow("record id"))?,
        id: m.id,
        reason: m.reason,
        placed_by: m.placed_by,
        placed_at: m.placed_at,
        released_at: m.released_at,
        release_reason: m.release_reason,
    })
}

impl Vault {
    /// Records that a subject left the school (or a staff member left): the trigger of most
    /// retention periods.
    pub async fn mark_left(
        &self,
        actor: &str,
        subject: SubjectId,
        at: DateTime<Utc>,
    ) -> Result<(), VaultError> {
        self.subject(subject).await?;
        subject::Entity::update_many()
            .col_expr(subject::Column::LeftAt, Expr::value(at))
            .filter(subject::Column::Id.eq(subject.to_string()))
            .exec(&self.stores().data)
            .await
            .map_err(StoreError::data)?;
        let mut ev = AuditEvent::new(actor, "subject.left", Outcome::Done);
        ev.subject = Some(subject);
        ev.reason = Some(format!("left on {}", at.date_naive()));
        self.audit().append(vec![ev]).await?;
        Ok(())
    }

    /// Places a legal hold on a subject, or on one of its records.
    pub async fn place_hold(
        &self,
        actor: &str,
        subject: SubjectId,
        record: Option<RecordId>,
        reason: &str,
    ) -> Result<LegalHold, VaultError> {
        self.subject(subject).await?;
        if let Some(r) = record
            && self.record_meta_any(r).await?.subject != subject
        {
            return Err(VaultError::Invalid(format!(
                "record {r} is not a record of subject {subject}"
            )));
        }
        let reason = reason.trim();
        if reason.chars().count() < 5 {
            return Err(VaultError::Invalid(
                "a legal hold needs a reason (a case number, a court order)".into(),
            ));
        }
        let id = uuid::Uuid::new_v4().to_string();
        legal_hold::Entity::insert(legal_hold::ActiveModel {
            id: Set(id.clone()),
            subject_id: Set(subject.to_string()),
            record_id: Set(record.map(|r| r.to_string())),
            reason: Set(reason.to_owned()),
            placed_by: Set(actor.to_owned()),
            placed_at: Set(self.now()),
            released_at: Set(None),
            release_reason: Set(None),
        })
        .exec_without_returning(&self.stores().data)
        .await
        .map_err(StoreError::data)?;
        let mut ev = AuditEvent::new(actor, "hold.place", Outcome::Done);
        ev.subject = Some(subject);
        ev.record = record;
        ev.reason = Some(format!("hold {id}"));
        self.audit().append(vec![ev]).await?;
        self.hold(&id).await
    }

    async fn hold(&self, id: &str) -> Result<LegalHold, VaultError> {
        legal_hold::Entity::find_by_id(id.to_owned())
            .one(&self.stores().data)
            .await
            .map_err(StoreError::data)?
            .ok_or_else(|| VaultError::NotFound(format!("legal hold {id}")))
            .and_then(hold_from_row)
    }

    /// Releases a hold, with a reason.
    pub async fn release_hold(
        &self,
        actor: &str,
        id: &str,
        reason: &str,
    ) -> Result<LegalHold, VaultError> {
        let h = self.hold(id).await?;
        if h.released_at.is_some() {
            return Err(VaultError::Invalid(format!(
                "legal hold {id} was already released"
            )));
        }
        if reason.trim().chars().count() < 5 {
            return Err(VaultError::Invalid(
                "releasing a hold needs a reason".into(),
            ));
        }
        legal_hold::Entity::update_many()
            .col_expr(legal_hold::Column::ReleasedAt, Expr::value(self.now()))
            .col_expr(
                legal_hold::Column::ReleaseReason,
                Expr::value(reason.trim()),
            )
            .filter(legal_hold::Column::Id.eq(id))
            .exec(&self.stores().data)
            .await
            .map_err(StoreError::data)?;
        let mut ev = AuditEvent::new(actor, "hold.release", Outcome::Done);
        ev.subject = Some(h.subject);
        ev.record = h.record;
        ev.reason = Some(format!("hold {id}"));
        self.audit().append(vec![ev]).await?;
        self.hold(id).await
    }

    /// Every hold, active first.
    pub async fn holds(&self) -> Result<Vec<LegalHold>, VaultError> {
        let mut hs: Vec<LegalHold> = legal_hold::Entity::find()
            .order_by_asc(legal_hold::Column::PlacedAt)
            .all(&self.stores().data)
            .await
            .map_err(StoreError::data)?
            .into_iter()
            .map(hold_from_row)
            .collect::<Result<_, _>>()?;
        hs.sort_by_key(|h| h.released_at.is_some());
        Ok(hs)
    }

    /// What expires when: every (record, category) whose rule gives a date, with its hold status.
    pub async fn retention_plan(&self) -> Result<Vec<RetentionItem>, VaultError> {
        // Only the columns the rules need, each id parsed once: the plan of a sweep covers every
        // active record, so its time and memory are the sweep's.
        type SubjectCols = (String, String, Option<DateTime<Utc>>);
        let mut subjects: BTreeMap<String, (SubjectId, SchoolId, Option<DateTime<Utc>>)> =
            BTreeMap::new();
        for (id, school, left_at) in subject::Entity::find()
            .select_only()
            .column(subject::Column::Id)
            .column(subject::Column::SchoolId)
            .column(subject::Column::LeftAt)
            .into_tuple::<SubjectCols>()
            .all(&self.stores().data)
            .await
            .map_err(StoreError::data)?
        {
            let sid = SubjectId::parse(&id).map_err(|_| VaultError::CorruptRow("subject id"))?;
            let school =
                SchoolId::parse(&school).map_err(|_| VaultError::CorruptRow("school id"))?;
            subjects.insert(id, (sid, school, left_at));
        }
        let mut records: BTreeMap<String, (RecordId, String, DateTime<Utc>)> = BTreeMap::new();
        for (id, subject_id, created_at) in record::Entity::find()
            .select_only()
            .column(record::Column::Id)
            .column(record::Column::SubjectId)
            .column(record::Column::CreatedAt)
            .filter(record::Column::State.eq("active"))
            .into_tuple::<(String, String, DateTime<Utc>)>()
            .all(&self.stores().data)
            .await
            .map_err(StoreError::data)?
        {
            let rid = RecordId::parse(&id).map_err(|_| VaultError::CorruptRow("record id"))?;
            records.insert(id, (rid, subject_id, created_at));
        }
        let pairs: Vec<(String, String)> = record_field::Entity::find()
            .select_only()
            .column(record_field::Column::RecordId)
            .column(record_field::Column::Category)
            .distinct()
            .into_tuple()
            .all(&self.stores().data)
            .await
            .map_err(StoreError::data)?;
        let holds: Vec<LegalHold> = self
            .holds()
            .await?
            .into_iter()
            .filter(|h| h.released_at.is_none())
            .collect();
        let mut rules: BTreeMap<String, Option<(Category, crate::catalog::Retention, String)>> =
            BTreeMap::new();
        let mut out = Vec::new();
        for (rid, cat) in pairs {
            let Some((record_id, subject, created_at)) = records.get(&rid) else {
                continue;
            };
            let Some((subject_id, school, left_at)) = subjects.get(subject) else {
                continue;
            };
            let rule = rules.entry(cat).or_insert_with_key(|cat| {
                let category = Category::parse(cat).ok()?;
                let rule = self.catalog().category(&category)?.retention.clone()?;
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
            });
            let Some((category, rule, text)) = rule else {
                continue;
            };
            let from = match rule.trigger {
                RetentionTrigger::LeftSchool => *left_at,
                RetentionTrigger::RecordCreated => Some(*created_at),
            };
            let Some(from) = from else { continue };
            let Some(expires_on) = rule.period.after(from.date_naive()) else {
                continue;
            };
            let held = holds
                .iter()
                .any(|h| h.subject == *subject_id && h.record.is_none_or(|hr| hr == *record_id));
            out.push(RetentionItem {
                record: *record_id,
                subject: *subject_id,
                school: school.clone(),
                rule: text.clone(),
                category: category.clone(),
                expires_on,
                held,
            });
        }
        out.sort_by(|a, b| {
            (a.expires_on, a.record, &a.category).cmp(&(b.expires_on, b.record, &b.category))
        });
        Ok(out)
    }

    /// Crypto-shreds every expired, unheld (record, category) as of now.
    pub async fn sweep(
        &self,
        dry_run: bool,
        progress: &mut (dyn FnMut(usize, usize) + Send),
    ) -> Result<SweepReport, VaultError> {
        let today = self.now().date_naive();
        let due: Vec<RetentionItem> = self
            .retention_plan()
            .await?
            .into_iter()
            .filter(|i| i.expires_on <= today)
            .collect();
        let held = due.iter().filter(|i| i.held).count();
        let mut by_record: BTreeMap<RecordId, Due> = BTreeMap::new();
        for i in due.into_iter().filter(|i| !i.held) {
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
        let mut report = SweepReport {
            dry_run,
            shredded: Vec::new(),
            held,
        };
        let total = by_record.len();
        let due: Vec<(RecordId, Due)> = by_record.into_iter().collect();
        let mut done = 0;
        // A chunk of records shares one key-store and one data-store transaction and one audit
        // append: per-record commits capped the sweep at the disk's fsync rate.
        let chunk_len = (total / 10).clamp(SWEEP_CHUNK.0, SWEEP_CHUNK.1);
        for chunk in due.chunks(chunk_len) {
            if !dry_run {
                self.shred_chunk(chunk).await?;
            }
            for (rid, d) in chunk {
                let mut categories: Vec<Category> =
                    d.items.iter().map(|(c, _)| c.clone()).collect();
                categories.sort();
                report.shredded.push((*rid, categories));
            }
            done += chunk.len();
            progress(done, total);
        }
        Ok(report)
    }

    /// Shreds the due categories of a chunk of records: their DEKs first (one key-store
    /// transaction), then their fields, states and shred-log rows (one data-store transaction),
    /// with one shred certificate per record in the audit log. A crash between the two
    /// transactions leaves ciphertext no key opens; the next sweep finds it due and finishes.
    /// Statements are per set of due categories, not per record: records expire in cohorts.
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

        let txn = self.stores().keys.begin().await.map_err(StoreError::keys)?;
        let held: Vec<(String, String)> = dek::Entity::find()
            .select_only()
            .column(dek::Column::RecordId)
            .column(dek::Column::Category)
            .filter(dek::Column::RecordId.is_in(ids.clone()))
            .into_tuple()
            .all(&txn)
            .await
            .map_err(StoreError::keys)?;
        let destroyed = count_due(&held);
        for (cats, rids) in &groups {
            dek::Entity::delete_many()
                .filter(dek::Column::RecordId.is_in(rids.iter().cloned()))
                .filter(dek::Column::Category.is_in(cats.iter().cloned()))
                .exec(&txn)
                .await
                .map_err(StoreError::keys)?;
        }
        txn.commit().await.map_err(StoreError::keys)?;

        let now = self.now();
        let txn = self.stores().data.begin().await.map_err(StoreError::data)?;
        let present: Vec<(String, String)> = record_field::Entity::find()
            .select_only()
            .column(record_field::Column::RecordId)
            .column(record_field::Column::Category)
            .filter(record_field::Column::RecordId.is_in(ids.clone()))
            .into_tuple()
            .all(&txn)
            .await
            .map_err(StoreError::data)?;
        let fields = count_due(&present);
        for (cats, rids) in &groups {
            record_field::Entity::delete_many()
                .filter(record_field::Column::RecordId.is_in(rids.iter().cloned()))
                .filter(record_field::Column::Category.is_in(cats.iter().cloned()))
                .exec(&txn)
                .await
                .map_err(StoreError::data)?;
        }
        let gone: Vec<String> = ids
            .iter()
            .filter(|r| fields.get(*r).is_none_or(|(_, kept)| *kept == 0))
            .cloned()
            .collect();
        if !gone.is_empty() {
            record::Entity::update_many()
                .col_expr(record::Column::State, Expr::value("shredded"))
                .col_expr(record::Column::UpdatedAt, Expr::value(now))
                .filter(record::Column::Id.is_in(gone))
                .exec(&txn)
                .await
                .map_err(StoreError::data)?;
        }
        let mut events = Vec::with_capacity(chunk.len());
        let mut log = Vec::with_capacity(chunk.len());
        for (rid, d) in chunk {
            let key = rid.to_string();
            let destroyed = destroyed.get(&key).map_or(0, |n| n.0);
            let (deleted, kept) = fields.get(&key).copied().unwrap_or_default();
            let mut cats: Vec<Category> = d.items.iter().map(|(c, _)| c.clone()).collect();
            cats.sort();
            let rule = d
                .items
                .iter()
                .map(|(_, r)| r.as_str())
                .collect::<Vec<_>>()
                .join("; ");
            log.push(shred_log::ActiveModel {
                record_id: Set(key),
                categories: Set(cats
                    .iter()
                    .map(Category::as_str)
                    .collect::<Vec<_>>()
                    .join(",")),
                rule: Set(rule.chars().take(200).collect()),
                at: Set(now),
                ..Default::default()
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
        shred_log::Entity::insert_many(log)
            .exec_without_returning(&txn)
            .await
            .map_err(StoreError::data)?;
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
        shred_log::Entity::find()
            .order_by_asc(shred_log::Column::Seq)
            .all(&self.stores().data)
            .await
            .map_err(StoreError::data)?
            .into_iter()
            .map(|m| {
                Ok((
                    RecordId::parse(&m.record_id)
                        .map_err(|_| VaultError::CorruptRow("record id"))?,
                    m.categories
                        .split(',')
                        .filter_map(|c| Category::parse(c).ok())
                        .collect(),
                    m.rule,
                    m.at,
                ))
            })
            .collect()
    }
}
