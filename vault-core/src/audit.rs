//! The audit log: append-only, hash-chained, with checkpoints signed by the keyring's audit key.
//! Every entry says who, when, which school, subject, record and categories, the purpose, the
//! outcome and the reason; never a value.
//!
//! Appends from concurrent requests are batched into one transaction by a background task; each
//! caller waits until its entry is committed, so a decrypted value is never returned before its
//! audit entry is durable. The chain head row is locked (`UPDATE`) first in every batch, which
//! serialises writers on SQLite and across several servers sharing one PostgreSQL.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait,
    QueryFilter, QueryOrder, TransactionTrait,
};
use tokio::sync::{mpsc, oneshot};

use crate::clock::Clock;
use crate::domain::{Category, Purpose, RecordId, SchoolId, SubjectId};
use crate::store::entities::{audit_checkpoint, audit_entry, audit_head};

const HASH_DOMAIN: &[u8] = b"school-vault/audit/v1\0";
const CHECKPOINT_DOMAIN: &[u8] = b"school-vault/audit-checkpoint/v1\0";
const MAX_BATCH: usize = 256;

/// What happened, in a few words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Allowed,
    Denied,
    ApprovalRequired,
    Done,
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::ApprovalRequired => "approval_required",
            Outcome::Done => "done",
            Outcome::Refused => "refused",
        }
    }
}

/// One event to record. Built by the services from ids and codes only.
#[derive(Clone, Debug)]
pub struct AuditEvent {
    pub actor: String,
    pub action: &'static str,
    pub school: Option<SchoolId>,
    pub subject: Option<SubjectId>,
    pub record: Option<RecordId>,
    pub categories: Vec<Category>,
    pub purpose: Option<Purpose>,
    pub outcome: Outcome,
    pub reason: Option<String>,
}

impl AuditEvent {
    pub fn new(actor: impl Into<String>, action: &'static str, outcome: Outcome) -> Self {
        AuditEvent {
            actor: actor.into(),
            action,
            school: None,
            subject: None,
            record: None,
            categories: Vec::new(),
            purpose: None,
            outcome,
            reason: None,
        }
    }
}

/// A stored entry, as read back for history and verification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub seq: i64,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub action: String,
    pub school: Option<String>,
    pub subject: Option<String>,
    pub record: Option<String>,
    pub categories: Vec<String>,
    pub purpose: Option<String>,
    pub outcome: String,
    pub reason: Option<String>,
}

/// The first thing `verify` found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditProblem {
    /// The entry's content does not match its hash: a field was edited.
    Altered { seq: i64 },
    /// The entry with this number is missing.
    Missing { seq: i64 },
    /// The entry does not follow the one before it: entries were removed or reordered.
    OutOfOrder { seq: i64 },
    /// The log ends before the last signed checkpoint or the chain head: entries at the end
    /// were removed.
    Truncated { last: i64, expected: i64 },
    /// A checkpoint's signature is not the audit key's, or it names a hash the chain lacks.
    BadCheckpoint { seq: i64 },
}

impl std::fmt::Display for AuditProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditProblem::Altered { seq } => write!(f, "entry {seq} was altered"),
            AuditProblem::Missing { seq } => write!(f, "entry {seq} is missing"),
            AuditProblem::OutOfOrder { seq } => write!(
                f,
                "entry {seq} does not follow entry {}: entries were removed or reordered",
                seq - 1
            ),
            AuditProblem::Truncated { last, expected } => write!(
                f,
                "the log ends at entry {last} but was signed up to entry {expected}: entries were removed"
            ),
            AuditProblem::BadCheckpoint { seq } => {
                write!(f, "the signed checkpoint at entry {seq} does not verify")
            }
        }
    }
}

/// The result of `verify`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    pub entries: u64,
    pub checkpoints: u64,
    pub problem: Option<AuditProblem>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error("the audit log could not be written: {0}")]
    Write(String),
    #[error("the audit writer has stopped")]
    Closed,
    #[error("the audit log could not be read")]
    Read(#[source] sea_orm::DbErr),
}

struct Pending {
    events: Vec<AuditEvent>,
    done: oneshot::Sender<Result<(), String>>,
}

/// Handle to the batching audit writer.
#[derive(Clone)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<Pending>,
    public_key: Vec<u8>,
    chain: Arc<Chain>,
}

fn put(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
    buf.extend_from_slice(b);
}

fn put_opt(buf: &mut Vec<u8>, b: Option<&str>) {
    match b {
        None => buf.push(0),
        Some(s) => {
            buf.push(1);
            put(buf, s.as_bytes());
        }
    }
}

/// The chained hash of one entry: SHA-256 over the previous hash and every field, each
/// length-prefixed, so no edit, removal or reordering keeps the chain intact.
fn entry_hash(prev: &[u8], r: &AuditRecord) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(HASH_DOMAIN);
    put(&mut b, prev);
    b.extend_from_slice(&r.seq.to_be_bytes());
    b.extend_from_slice(&r.at.timestamp_micros().to_be_bytes());
    put(&mut b, r.actor.as_bytes());
    put(&mut b, r.action.as_bytes());
    put_opt(&mut b, r.school.as_deref());
    put_opt(&mut b, r.subject.as_deref());
    put_opt(&mut b, r.record.as_deref());
    put(&mut b, r.categories.join(",").as_bytes());
    put_opt(&mut b, r.purpose.as_deref());
    put(&mut b, r.outcome.as_bytes());
    put_opt(&mut b, r.reason.as_deref());
    digest(&SHA256, &b).as_ref().to_vec()
}

fn checkpoint_message(seq: i64, hash: &[u8]) -> Vec<u8> {
    let mut m = CHECKPOINT_DOMAIN.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(hash);
    m
}

fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    // PostgreSQL keeps microseconds: hash exactly what is stored.
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Stored rows as records.
pub(crate) fn records(rows: Vec<audit_entry::Model>) -> Vec<AuditRecord> {
    rows.into_iter().map(|m| to_record(m).0).collect()
}

fn to_record(m: audit_entry::Model) -> (AuditRecord, Vec<u8>, Vec<u8>) {
    (
        AuditRecord {
            seq: m.seq,
            at: m.at,
            actor: m.actor,
            action: m.action,
            school: m.school_id,
            subject: m.subject_id,
            record: m.record_id,
            categories: if m.categories.is_empty() {
                Vec::new()
            } else {
                m.categories.split(',').map(str::to_owned).collect()
            },
            purpose: m.purpose,
            outcome: m.outcome,
            reason: m.reason,
        },
        m.prev_hash,
        m.hash,
    )
}

/// What appends to the chain: the signing key and the clock. Shared by the audit writer task
/// and the record writer, which appends a create's entry in the record's own transaction.
pub(crate) struct Chain {
    signer: Ed25519KeyPair,
    clock: Arc<dyn Clock>,
}

impl Chain {
    /// Appends `events` inside `txn`: locks the head, links and inserts the entries, moves the
    /// head and signs a checkpoint. The caller commits.
    pub(crate) async fn append_in<'e>(
        &self,
        txn: &DatabaseTransaction,
        events: impl IntoIterator<Item = &'e AuditEvent>,
    ) -> Result<(), sea_orm::DbErr> {
        let events: Vec<&AuditEvent> = events.into_iter().collect();
        if events.is_empty() {
            return Ok(());
        }
        // Take the chain's write lock and read the head in one statement.
        let head = audit_head::Entity::update_many()
            .col_expr(audit_head::Column::Seq, Expr::col(audit_head::Column::Seq))
            .filter(audit_head::Column::Id.eq(1))
            .exec_with_returning(txn)
            .await?
            .pop()
            .ok_or_else(|| sea_orm::DbErr::RecordNotFound("audit_head".into()))?;
        let (mut seq, mut prev) = (head.seq, head.hash);
        let at = micros(self.clock.now());
        let mut rows = Vec::new();
        for ev in events {
            seq += 1;
            let r = AuditRecord {
                seq,
                at,
                actor: ev.actor.clone(),
                action: ev.action.to_owned(),
                school: ev.school.as_ref().map(|s| s.as_str().to_owned()),
                subject: ev.subject.map(|s| s.to_string()),
                record: ev.record.map(|r| r.to_string()),
                categories: ev
                    .categories
                    .iter()
                    .map(|c| c.as_str().to_owned())
                    .collect(),
                purpose: ev.purpose.as_ref().map(|p| p.as_str().to_owned()),
                outcome: ev.outcome.as_str().to_owned(),
                reason: ev.reason.clone(),
            };
            let hash = entry_hash(&prev, &r);
            rows.push(audit_entry::ActiveModel {
                seq: Set(r.seq),
                at: Set(r.at),
                actor: Set(r.actor),
                action: Set(r.action),
                school_id: Set(r.school),
                subject_id: Set(r.subject),
                record_id: Set(r.record),
                categories: Set(r.categories.join(",")),
                purpose: Set(r.purpose),
                outcome: Set(r.outcome),
                reason: Set(r.reason),
                prev_hash: Set(prev),
                hash: Set(hash.clone()),
            });
            prev = hash;
        }
        // Bounded statements: a sweep certifies up to a thousand records in one append.
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(500).collect();
            audit_entry::Entity::insert_many(chunk)
                .exec_without_returning(txn)
                .await?;
        }
        audit_head::Entity::update_many()
            .col_expr(audit_head::Column::Seq, Expr::value(seq))
            .col_expr(audit_head::Column::Hash, Expr::value(prev.clone()))
            .filter(audit_head::Column::Id.eq(1))
            .exec(txn)
            .await?;
        let sig = self.signer.sign(&checkpoint_message(seq, &prev));
        audit_checkpoint::Entity::insert(audit_checkpoint::ActiveModel {
            seq: Set(seq),
            hash: Set(prev),
            signature: Set(sig.as_ref().to_vec()),
            at: Set(at),
        })
        .exec_without_returning(txn)
        .await?;
        Ok(())
    }
}

async fn write_batch(
    db: &DatabaseConnection,
    chain: &Chain,
    batch: &[Pending],
) -> Result<(), sea_orm::DbErr> {
    let txn = db.begin().await?;
    chain
        .append_in(&txn, batch.iter().flat_map(|p| &p.events))
        .await?;
    txn.commit().await
}

impl AuditLog {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn start(
        db: DatabaseConnection,
        seed: &[u8; 32],
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AuditError> {
        let signer = Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| AuditError::Write("invalid audit signing key".into()))?;
        let public_key = signer.public_key().as_ref().to_vec();
        let chain = Arc::new(Chain { signer, clock });
        let (tx, mut rx) = mpsc::channel::<Pending>(4096);
        let writer_chain = chain.clone();
        tokio::spawn(async move {
            let chain = writer_chain;
            while let Some(batch) = crate::writer::next_batch(&mut rx, MAX_BATCH).await {
                let result = write_batch(&db, &chain, &batch).await.map_err(|e| {
                    tracing::error!(error = %e, "audit batch failed");
                    e.to_string()
                });
                for p in batch {
                    let _ = p.done.send(result.clone());
                }
            }
        });
        Ok(AuditLog {
            tx,
            public_key,
            chain,
        })
    }

    /// The chain, for appends inside another transaction.
    pub(crate) fn chain(&self) -> Arc<Chain> {
        self.chain.clone()
    }

    /// Appends events and waits until they are committed.
    pub(crate) async fn append(&self, events: Vec<AuditEvent>) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Pending { events, done })
            .await
            .map_err(|_| AuditError::Closed)?;
        rx.await
            .map_err(|_| AuditError::Closed)?
            .map_err(AuditError::Write)
    }

    /// Walks the whole chain and the checkpoints in one pass over one streamed query; memory
    /// stays flat in the length of the log (only the checkpoints are held).
    pub(crate) async fn verify(&self, db: &DatabaseConnection) -> Result<AuditReport, AuditError> {
        use futures_util::TryStreamExt as _;
        let cps = audit_checkpoint::Entity::find()
            .order_by_asc(audit_checkpoint::Column::Seq)
            .all(db)
            .await
            .map_err(AuditError::Read)?;
        let key = UnparsedPublicKey::new(&ED25519, &self.public_key);
        let mut next_cp = cps.iter().peekable();
        let mut expected_seq = 1i64;
        let mut prev = vec![0u8; 32];
        let mut entries = 0u64;
        let mut checkpoints = 0u64;
        let mut problem = None;
        {
            let mut rows = audit_entry::Entity::find()
                .order_by_asc(audit_entry::Column::Seq)
                .stream(db)
                .await
                .map_err(AuditError::Read)?;
            while let Some(m) = rows.try_next().await.map_err(AuditError::Read)? {
                let (r, stored_prev, stored_hash) = to_record(m);
                if r.seq != expected_seq {
                    problem = Some(AuditProblem::Missing { seq: expected_seq });
                    break;
                }
                if stored_prev != prev {
                    problem = Some(AuditProblem::OutOfOrder { seq: r.seq });
                    break;
                }
                if entry_hash(&prev, &r) != stored_hash {
                    problem = Some(AuditProblem::Altered { seq: r.seq });
                    break;
                }
                // Checkpoints at or before this entry: each must sign a hash the chain has.
                while let Some(cp) = next_cp.next_if(|cp| cp.seq <= r.seq) {
                    let signed = key
                        .verify(&checkpoint_message(cp.seq, &cp.hash), &cp.signature)
                        .is_ok();
                    if !signed || cp.seq != r.seq || cp.hash != stored_hash {
                        problem = Some(AuditProblem::BadCheckpoint { seq: cp.seq });
                        break;
                    }
                    checkpoints += 1;
                }
                if problem.is_some() {
                    break;
                }
                prev = stored_hash;
                expected_seq += 1;
                entries += 1;
            }
        }
        let last = expected_seq - 1;
        if problem.is_none() {
            let head = audit_head::Entity::find_by_id(1)
                .one(db)
                .await
                .map_err(AuditError::Read)?;
            if let Some(h) = head
                && h.seq != last
            {
                problem = Some(AuditProblem::Truncated {
                    last,
                    expected: h.seq,
                });
            }
        }
        if problem.is_none()
            && let Some(cp) = next_cp.next()
        {
            // A checkpoint beyond the last entry: entries at the end were removed.
            problem = Some(AuditProblem::Truncated {
                last,
                expected: cp.seq,
            });
        }
        Ok(AuditReport {
            entries,
            checkpoints,
            problem,
        })
    }

    /// Every entry about a subject, oldest first: the subject's access history.
    pub(crate) async fn for_subject(
        db: &DatabaseConnection,
        subject: SubjectId,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        Ok(audit_entry::Entity::find()
            .filter(audit_entry::Column::SubjectId.eq(subject.to_string()))
            .order_by_asc(audit_entry::Column::Seq)
            .all(db)
            .await
            .map_err(AuditError::Read)?
            .into_iter()
            .map(|m| to_record(m).0)
            .collect())
    }

    /// Every entry, oldest first (for tests and exports of small logs).
    pub(crate) async fn all(db: &DatabaseConnection) -> Result<Vec<AuditRecord>, AuditError> {
        Ok(audit_entry::Entity::find()
            .order_by_asc(audit_entry::Column::Seq)
            .all(db)
            .await
            .map_err(AuditError::Read)?
            .into_iter()
            .map(|m| to_record(m).0)
            .collect())
    }
}
