//! The audit log: append-only, hash-chained, with checkpoints signed by the keyring's audit key.
//! Every entry says who, when, which school, subject, record and categories, the purpose, the
//! outcome and the reason; never a value.
//!
//! Appends from concurrent requests are batched into one transaction by a background task; each
//! caller waits until its entry is committed, so a decrypted value is never returned before its
//! audit entry is durable. The chain head row is locked (`UPDATE`) first in every batch, which
//! serialises writers on SQLite and across several servers sharing one PostgreSQL.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use ring::digest::{SHA256, digest};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use tokio::sync::{mpsc, oneshot};

use crate::audit::anchor::{AnchorSource, Anchors};
use crate::clock::Clock;
use crate::domain::{Category, Purpose, RecordId, SchoolId, SubjectId};
use crate::stats::{GroupCommit, Observers};
use crate::store::repo::audit as repo;
use crate::store::{Db, DbErr, Txn};

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
    /// A signed anchor kept outside the data store (the key store, the witness file, or this
    /// server's memory) names entry `to`, but the log ends at `from - 1`: entries `from` to `to`
    /// were removed, with the head and the checkpoints rewound to hide it.
    TailMissing {
        from: i64,
        to: i64,
        anchored_at: DateTime<Utc>,
        source: AnchorSource,
    },
    /// A signed anchor names a hash the log does not have at its seq: the log was cut there and
    /// written again.
    AnchorDiffers {
        seq: i64,
        anchored_at: DateTime<Utc>,
        source: AnchorSource,
    },
    /// The anchor in the key store or the witness file cannot be read or is not signed by the
    /// audit key.
    BadAnchor { source: AnchorSource },
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
            AuditProblem::TailMissing {
                from,
                to,
                anchored_at,
                source,
            } => {
                let at = anchored_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                if from == to {
                    write!(f, "entry {to} is missing")?;
                } else {
                    write!(f, "entries {from} to {to} are missing")?;
                }
                write!(
                    f,
                    "; the anchor of {at} {source} names {to}: entries at the end were removed"
                )
            }
            AuditProblem::AnchorDiffers {
                seq,
                anchored_at,
                source,
            } => {
                let at = anchored_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                write!(
                    f,
                    "entry {seq} is not the one the anchor of {at} {source} names: the log was cut there and written again"
                )
            }
            AuditProblem::BadAnchor { source } => write!(
                f,
                "the audit anchor {source} cannot be read or is not signed by the audit key"
            ),
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
    Read(#[source] DbErr),
    #[error("the audit log was tampered with: {0}; no proof is made over it")]
    Tampered(AuditProblem),
    #[error(transparent)]
    Proof(#[from] crate::audit::tlog::ProofError),
    #[error(
        "the log no longer extends the checkpoint of {size} entries given with --since: entries it covers were changed or removed"
    )]
    Rewritten { size: u64 },
}

struct Pending {
    events: Vec<AuditEvent>,
    done: oneshot::Sender<Result<(), String>>,
}

/// The audit-signing key and the public keys of those it replaced, oldest first. A checkpoint
/// or anchor is accepted under any of them, but along the chain the keys only move forward: once
/// a checkpoint is signed by a newer key, none signed by an older one is accepted after it, so a
/// custodian who left with a retired key cannot sign anything new.
pub(crate) struct AuditKeys {
    signer: Ed25519KeyPair,
    public: Vec<u8>,
    retired: Vec<[u8; 32]>,
}

impl AuditKeys {
    pub(crate) fn of(keyring: &crate::keys::keyring::Keyring) -> Result<Self, AuditError> {
        let signer = Ed25519KeyPair::from_seed_unchecked(keyring.audit_seed())
            .map_err(|_| AuditError::Write("invalid audit signing key".into()))?;
        Ok(AuditKeys {
            public: signer.public_key().as_ref().to_vec(),
            signer,
            retired: keyring.retired_audit_keys().to_vec(),
        })
    }

    pub(crate) fn signer(&self) -> &Ed25519KeyPair {
        &self.signer
    }

    /// The current public key.
    pub(crate) fn public(&self) -> &[u8] {
        &self.public
    }

    /// The C2SP note keys of every audit key, oldest first, under the log's name (fixed by the
    /// first key).
    pub(crate) fn note_keys(&self) -> Vec<crate::audit::tlog::NoteKey> {
        let first = self.known().next().unwrap_or(&self.public);
        let name = crate::audit::tlog::origin(first);
        self.known()
            .filter_map(|k| <[u8; 32]>::try_from(k).ok())
            .map(|k| crate::audit::tlog::NoteKey::of(&name, k))
            .collect()
    }

    /// Every key, oldest first; the current one last.
    fn known(&self) -> impl Iterator<Item = &[u8]> {
        self.retired
            .iter()
            .map(|k| k.as_slice())
            .chain(std::iter::once(self.public.as_slice()))
    }

    /// The position (oldest first) of the first key from `from` on that signed `message`.
    pub(crate) fn signer_of(&self, message: &[u8], signature: &[u8], from: usize) -> Option<usize> {
        self.known()
            .enumerate()
            .skip(from)
            .find(|(_, k)| {
                UnparsedPublicKey::new(&ED25519, k)
                    .verify(message, signature)
                    .is_ok()
            })
            .map(|(i, _)| i)
    }
}

/// The keys a process signs and verifies with; replaced when it loads a keyring whose audit key
/// was rotated.
pub(crate) type SharedAuditKeys = Arc<RwLock<Arc<AuditKeys>>>;

pub(crate) fn current(keys: &SharedAuditKeys) -> Arc<AuditKeys> {
    match keys.read() {
        Ok(k) => k.clone(),
        Err(p) => p.into_inner().clone(),
    }
}

/// Handle to the batching audit writer.
#[derive(Clone)]
pub(crate) struct AuditLog {
    tx: mpsc::Sender<Pending>,
    chain: Arc<Chain>,
}

/// A length-prefixed field (u32 big-endian length, then the bytes); shared with the proof
/// leaves (`tlog::leaf_bytes`).
pub(crate) fn put(buf: &mut Vec<u8>, b: &[u8]) {
    buf.extend_from_slice(&(b.len() as u32).to_be_bytes());
    buf.extend_from_slice(b);
}

/// An optional field: byte 0 when absent, byte 1 and the field when present.
pub(crate) fn put_opt(buf: &mut Vec<u8>, b: Option<&str>) {
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

/// What appends to the chain: the signing key and the clock. Shared by the audit writer task
/// and the record writer, which appends a create's entry in the record's own transaction.
pub(crate) struct Chain {
    keys: SharedAuditKeys,
    clock: Arc<dyn Clock>,
    anchors: Anchors,
    /// The head this process last signed: while the head is still there, no other process
    /// appended since, and the newest checkpoint needs no look.
    last_signed: Mutex<Option<(i64, Vec<u8>)>>,
    /// Another process signs with an audit key this one does not know (it rotated the key):
    /// this one chains its entries without checkpoints until it loads the new keyring.
    stale: AtomicBool,
}

impl Chain {
    /// Appends `events` inside `txn`: locks the head, links and inserts the entries, moves the
    /// head and signs a checkpoint. The caller commits.
    pub(crate) async fn append_in<'e>(
        &self,
        txn: &Txn,
        events: impl IntoIterator<Item = &'e AuditEvent>,
    ) -> Result<(), DbErr> {
        let events: Vec<&AuditEvent> = events.into_iter().collect();
        if events.is_empty() {
            return Ok(());
        }
        let at = micros(self.clock.now());
        let (before, (seq, prev)) = link_entries(txn, at, events).await?;
        let keys = current(&self.keys);
        if !self.may_sign(txn, &keys, before).await? {
            return Ok(());
        }
        let sig = keys.signer().sign(&checkpoint_message(seq, &prev));
        repo::insert_checkpoint(txn, seq, prev.clone(), sig.as_ref().to_vec(), at).await?;
        *lock(&self.last_signed) = Some((seq, prev.clone()));
        // Anchored outside the data store once the anchor task sees this checkpoint committed.
        self.anchors.checkpoint(seq, &prev, at);
        Ok(())
    }

    /// Whether this process's key may sign after the head `before`: yes unless another process
    /// appended since and its newest checkpoint is signed by a key this one does not know (a
    /// newer one: signing with the older key now would break the chain's key order).
    async fn may_sign(
        &self,
        txn: &Txn,
        keys: &AuditKeys,
        before: (i64, Vec<u8>),
    ) -> Result<bool, DbErr> {
        if before.0 == 0 || lock(&self.last_signed).as_ref() == Some(&before) {
            return Ok(true);
        }
        let Some(cp) = repo::latest_checkpoint(txn).await? else {
            return Ok(true);
        };
        if keys
            .signer_of(&checkpoint_message(cp.seq, &cp.hash), &cp.signature, 0)
            .is_some()
        {
            self.stale.store(false, Ordering::Relaxed);
            return Ok(true);
        }
        if !self.stale.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                seq = cp.seq,
                "the newest audit checkpoint is signed by an audit key this process does not know (rotated by another process?): entries are chained without checkpoints until this process loads the new keyring (at its next readiness check or key operation)"
            );
        }
        Ok(false)
    }

    /// The keys this process signs and verifies with.
    pub(crate) fn keys(&self) -> Arc<AuditKeys> {
        current(&self.keys)
    }

    /// Signs with `keys` from now on (a keyring whose audit key was rotated was loaded).
    pub(crate) fn use_keys(&self, keys: AuditKeys) {
        let changed = current(&self.keys).public != keys.public;
        let mut g = match self.keys.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(keys);
        if changed {
            self.stale.store(false, Ordering::Relaxed);
            tracing::info!("the audit log is signed by the rotated audit key from now on");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The chain head: the last entry's seq and hash.
type Head = (i64, Vec<u8>);

/// Links `events` onto the chain inside `txn` (locks the head, inserts, moves the head) and
/// answers the heads before and after; no checkpoint.
async fn link_entries(
    txn: &Txn,
    at: DateTime<Utc>,
    events: Vec<&AuditEvent>,
) -> Result<(Head, Head), DbErr> {
    // Take the chain's write lock and read the head in one statement.
    let before = repo::lock_head(txn).await?;
    let (mut seq, mut prev) = before.clone();
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
        rows.push((r, prev, hash.clone()));
        prev = hash;
    }
    repo::insert_entries(txn, rows).await?;
    repo::move_head(txn, seq, prev.clone()).await?;
    Ok((before, (seq, prev)))
}

/// Appends `events` without a signed checkpoint, for what must be recorded when the process
/// holds no trusted audit key (a keyring refused at start). The entries are chained like any
/// other, so an edit or removal still breaks the chain, and the next signed checkpoint covers
/// them.
pub(crate) async fn append_unsigned(
    db: &Db,
    clock: &dyn Clock,
    events: &[AuditEvent],
) -> Result<(), DbErr> {
    if events.is_empty() {
        return Ok(());
    }
    let txn = crate::store::begin(db).await?;
    link_entries(&txn, micros(clock.now()), events.iter().collect()).await?;
    txn.commit().await
}

async fn write_batch(db: &Db, chain: &Chain, batch: &[Pending]) -> Result<(), DbErr> {
    let txn = crate::store::begin(db).await?;
    chain
        .append_in(&txn, batch.iter().flat_map(|p| &p.events))
        .await?;
    txn.commit().await
}

impl AuditLog {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn start(
        stores: &crate::store::Stores,
        keys: AuditKeys,
        clock: Arc<dyn Clock>,
        observers: Observers,
    ) -> Result<Self, AuditError> {
        let db = stores.data.clone();
        let keys: SharedAuditKeys = Arc::new(RwLock::new(Arc::new(keys)));
        let anchors = Anchors::start(db.clone(), stores.keys.clone(), keys.clone());
        let chain = Arc::new(Chain {
            keys,
            clock,
            anchors,
            last_signed: Mutex::new(None),
            stale: AtomicBool::new(false),
        });
        let (tx, mut rx) = mpsc::channel::<Pending>(4096);
        let writer_chain = chain.clone();
        tokio::spawn(async move {
            let chain = writer_chain;
            while let Some(batch) = crate::batch::next_batch(&mut rx, MAX_BATCH).await {
                let entries = batch.iter().map(|p| p.events.len()).sum();
                let timed = observers.start(GroupCommit::Audit, entries);
                let result = write_batch(&db, &chain, &batch).await.map_err(|e| {
                    tracing::error!(error = %e, "audit batch failed");
                    e.to_string()
                });
                timed.finish(result.is_ok());
                for p in batch {
                    let _ = p.done.send(result.clone());
                }
            }
        });
        Ok(AuditLog { tx, chain })
    }

    /// Appends waiting for a batch.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// The chain, for appends inside another transaction.
    pub(crate) fn chain(&self) -> Arc<Chain> {
        self.chain.clone()
    }

    /// The anchor task's handle.
    pub(crate) fn anchors(&self) -> &Anchors {
        &self.chain.anchors
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
    /// stays flat in the length of the log (only the checkpoints are held). Then, if the data
    /// store alone finds nothing wrong, checks the chain against every anchor it can read
    /// outside the data store: each must name an entry the log holds, with that entry's hash.
    pub(crate) async fn verify(&self, db: &Db) -> Result<AuditReport, AuditError> {
        // Read before the log, so an anchor written meanwhile names no entry the walk missed.
        let mut anchors = match self.anchors().readable().await {
            Ok(a) => a,
            Err(source) => {
                let mut r = self.verify_chain(db, &[]).await?;
                if r.problem.is_none() {
                    r.problem = Some(AuditProblem::BadAnchor { source });
                }
                return Ok(r);
            }
        };
        anchors.sort_by_key(|(a, _)| a.seq);
        self.verify_chain(db, &anchors).await
    }

    async fn verify_chain(
        &self,
        db: &Db,
        anchors: &[(crate::audit::anchor::Anchor, AnchorSource)],
    ) -> Result<AuditReport, AuditError> {
        use futures_util::TryStreamExt as _;
        let mut next_anchor = anchors.iter().peekable();
        let cps = repo::checkpoints(db).await.map_err(AuditError::Read)?;
        let keys = current(&self.chain.keys);
        // The oldest key a checkpoint may still be signed by: keys only move forward.
        let mut key_floor = 0usize;
        let mut next_cp = cps.iter().peekable();
        let mut expected_seq = 1i64;
        let mut prev = vec![0u8; 32];
        let mut entries = 0u64;
        let mut checkpoints = 0u64;
        let mut problem = None;
        {
            let rows = repo::stream(db).await.map_err(AuditError::Read)?;
            let mut rows = std::pin::pin!(rows);
            while let Some((r, stored_prev, stored_hash)) =
                rows.try_next().await.map_err(AuditError::Read)?
            {
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
                    let signed = keys.signer_of(
                        &checkpoint_message(cp.seq, &cp.hash),
                        &cp.signature,
                        key_floor,
                    );
                    if let Some(i) = signed {
                        key_floor = i;
                    }
                    if signed.is_none() || cp.seq != r.seq || cp.hash != stored_hash {
                        problem = Some(AuditProblem::BadCheckpoint { seq: cp.seq });
                        break;
                    }
                    checkpoints += 1;
                }
                if problem.is_some() {
                    break;
                }
                // Anchors at this entry must name its hash.
                while let Some((a, source)) = next_anchor.next_if(|(a, _)| a.seq <= r.seq) {
                    if a.hash != stored_hash {
                        problem = Some(AuditProblem::AnchorDiffers {
                            seq: a.seq,
                            anchored_at: a.at,
                            source: *source,
                        });
                        break;
                    }
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
            let head = repo::head_seq(db).await.map_err(AuditError::Read)?;
            if let Some(h) = head
                && h != last
            {
                problem = Some(AuditProblem::Truncated { last, expected: h });
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
        if problem.is_none() {
            // Anchors beyond the last entry: name the range up to the furthest one (the key
            // store's before the witness's before this process's, for the same seq).
            let mut beyond: Vec<_> = next_anchor.collect();
            beyond.sort_by_key(|(a, s)| (std::cmp::Reverse(a.seq), *s as u8));
            if let Some((a, source)) = beyond.first() {
                problem = Some(AuditProblem::TailMissing {
                    from: last + 1,
                    to: a.seq,
                    anchored_at: a.at,
                    source: *source,
                });
            }
        }
        Ok(AuditReport {
            entries,
            checkpoints,
            problem,
        })
    }

    /// The leaf hash of every entry up to the newest signed checkpoint, in order, and the
    /// entries about `subject` among them: the tree a proof is made from. The same pass checks
    /// the chain of those entries against that checkpoint, signed by the current audit key, so
    /// no entry the key did not sign (rows added after it, or edited since `verify` read them)
    /// reaches a proof.
    pub(crate) async fn leaves(
        db: &Db,
        keys: &AuditKeys,
        subject: SubjectId,
    ) -> Result<(Vec<crate::audit::merkle::Hash>, Vec<AuditRecord>), AuditError> {
        use futures_util::TryStreamExt as _;
        let Some(cp) = repo::newest_checkpoint(db)
            .await
            .map_err(AuditError::Read)?
        else {
            return Ok((Vec::new(), Vec::new()));
        };
        // Which key: `verify`, just before, checked that keys only move forward.
        let signed = keys.signer_of(&checkpoint_message(cp.seq, &cp.hash), &cp.signature, 0);
        if signed.is_none() {
            return Err(AuditError::Tampered(AuditProblem::BadCheckpoint {
                seq: cp.seq,
            }));
        }
        let subject = subject.to_string();
        let mut leaves = Vec::new();
        let mut theirs = Vec::new();
        let mut prev = vec![0u8; 32];
        let rows = repo::stream(db).await.map_err(AuditError::Read)?;
        let mut rows = std::pin::pin!(rows);
        while let Some((r, stored_prev, stored_hash)) =
            rows.try_next().await.map_err(AuditError::Read)?
        {
            if r.seq > cp.seq {
                break;
            }
            let seq = leaves.len() as i64 + 1;
            if r.seq != seq {
                return Err(AuditError::Tampered(AuditProblem::Missing { seq }));
            }
            if stored_prev != prev || entry_hash(&prev, &r) != stored_hash {
                return Err(AuditError::Tampered(AuditProblem::Altered { seq }));
            }
            prev = stored_hash;
            leaves.push(crate::audit::tlog::entry_leaf(&r));
            if r.subject.as_deref() == Some(subject.as_str()) {
                theirs.push(r);
            }
        }
        if leaves.len() as i64 != cp.seq || prev != cp.hash {
            return Err(AuditError::Tampered(AuditProblem::Truncated {
                last: leaves.len() as i64,
                expected: cp.seq,
            }));
        }
        Ok((leaves, theirs))
    }

    /// Every entry about a subject, oldest first: the subject's access history.
    pub(crate) async fn for_subject(
        db: &Db,
        subject: SubjectId,
    ) -> Result<Vec<AuditRecord>, AuditError> {
        repo::for_subject(db, subject)
            .await
            .map_err(AuditError::Read)
    }

    /// Every entry, oldest first (for tests and exports of small logs).
    pub(crate) async fn all(db: &Db) -> Result<Vec<AuditRecord>, AuditError> {
        repo::all(db).await.map_err(AuditError::Read)
    }
}
