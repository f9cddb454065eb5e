//! The audit anchor: the newest signed head of the audit chain, kept outside the data store.
//!
//! The chain, its head row and its signed checkpoints all live in the data store, so whoever can
//! write that store can cut the newest entries, rewind the head, delete the later checkpoints
//! and leave a chain that verifies. An anchor is `(seq, hash, time)` signed with the audit key
//! (its own domain string, so it is never mistaken for a checkpoint), written to the key store
//! (another database) and, when configured, appended to a witness file on another volume and
//! printed on standard output for the host's log shipper. `verify` checks the chain against the
//! newest anchor it can read and names the missing tail.
//!
//! Anchors go with checkpoints, off the request path: each signed checkpoint hands its head to
//! one anchor task per process, which keeps only the newest, confirms that its batch committed
//! (the checkpoint row is there with that hash), and writes it at most once per interval (1 s
//! by default). The anchor only moves forward: before it moves, the task checks that the log
//! still holds the entry named by the anchor it holds in memory and by the stored one; if
//! either is gone or differs, it writes nothing more (the evidence stays) and logs an error.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use ring::signature::Ed25519KeyPair;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::audit::chain::{AuditKeys, SharedAuditKeys, current};
use crate::store::repo::{audit as audit_repo, audit_anchor as repo};
use crate::store::{Db, DbErr};

const ANCHOR_DOMAIN: &[u8] = b"school-vault/audit-anchor/v1\0";
/// Candidates kept while their batches may still be committing.
const MAX_PENDING: usize = 1024;
/// A candidate whose checkpoint has not appeared by then was rolled back.
const PENDING_FOR: Duration = Duration::from_secs(60);

/// A signed head of the audit chain: the audit key's signature over (seq, hash, time).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub at: DateTime<Utc>,
    pub signature: Vec<u8>,
}

/// Where `verify` read an anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AnchorSource {
    /// The key store's anchor row.
    KeyStore,
    /// The newest line of the configured witness file.
    Witness,
    /// The newest anchor this process wrote or read (a running server keeps it).
    Memory,
}

impl std::fmt::Display for AnchorSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnchorSource::KeyStore => "in the key store",
            AnchorSource::Witness => "in the witness file",
            AnchorSource::Memory => "held by this server",
        })
    }
}

/// Where anchors go besides the key store, and how often.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnchorOptions {
    /// An append-only file (on another volume) that gets one JSON line per anchor, and that
    /// `verify` reads.
    pub witness_file: Option<PathBuf>,
    /// Also print each anchor's JSON line on standard output, for the host's log shipper.
    pub stdout: bool,
    /// At most one anchor per interval (the newest checkpoint's head); zero: every checkpoint.
    pub min_interval: Duration,
}

impl Default for AnchorOptions {
    fn default() -> Self {
        AnchorOptions {
            witness_file: None,
            stdout: false,
            min_interval: Duration::from_secs(1),
        }
    }
}

fn message(seq: i64, hash: &[u8], at: DateTime<Utc>) -> Vec<u8> {
    let mut m = ANCHOR_DOMAIN.to_vec();
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&(hash.len() as u32).to_be_bytes());
    m.extend_from_slice(hash);
    m.extend_from_slice(&at.timestamp_micros().to_be_bytes());
    m
}

impl Anchor {
    fn sign(signer: &Ed25519KeyPair, seq: i64, hash: Vec<u8>, at: DateTime<Utc>) -> Anchor {
        let signature = signer.sign(&message(seq, &hash, at)).as_ref().to_vec();
        Anchor {
            seq,
            hash,
            at,
            signature,
        }
    }

    /// The audit key, or one it replaced, signed this anchor.
    pub(crate) fn is_signed_by(&self, keys: &AuditKeys) -> bool {
        self.seq > 0
            && keys
                .signer_of(&message(self.seq, &self.hash, self.at), &self.signature, 0)
                .is_some()
    }

    /// One line of the witness file (and of standard output).
    fn to_line(&self, public_key: &[u8]) -> String {
        serde_json::json!({
            "kind": "audit_anchor",
            "seq": self.seq,
            "hash": hex::encode(&self.hash),
            "at": self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "signature": hex::encode(&self.signature),
            "public_key": hex::encode(public_key),
        })
        .to_string()
    }

    fn from_line(line: &str) -> Option<Anchor> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let at = DateTime::parse_from_rfc3339(v.get("at")?.as_str()?)
            .ok()?
            .with_timezone(&Utc);
        Some(Anchor {
            seq: v.get("seq")?.as_i64()?,
            hash: hex::decode(v.get("hash")?.as_str()?).ok()?,
            at,
            signature: hex::decode(v.get("signature")?.as_str()?).ok()?,
        })
    }
}

/// The newest anchor of a witness file: its last line that parses (a crash may leave a torn last
/// line). `Ok(None)` when the file does not exist or is empty; `Err` when it holds lines and none
/// of the last ones parses.
pub(crate) fn read_witness(path: &Path) -> Result<Option<Anchor>, String> {
    use std::io::{Read as _, Seek as _, SeekFrom};
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let len = f
        .metadata()
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .len();
    // The newest lines only: a line is about 400 bytes.
    let from = len.saturating_sub(64 * 1024);
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(from))
        .and_then(|_| f.read_to_end(&mut tail))
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&tail);
    let mut any = false;
    for line in text.lines().rev() {
        if line.trim().is_empty() {
            continue;
        }
        any = true;
        if let Some(a) = Anchor::from_line(line) {
            return Ok(Some(a));
        }
    }
    if any {
        Err(format!("{} holds no readable anchor", path.display()))
    } else {
        Ok(None)
    }
}

fn append_line(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())?;
    f.sync_data()
}

/// How many anchor tasks are running in this process (see `settle_audit_anchors`).
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static STOPPED: Notify = Notify::const_new();

/// Waits (up to `timeout`) until every anchor task of this process has written its last anchor
/// and stopped, which each does once its vault is dropped. A short-lived process (`vaultctl`)
/// calls this before it exits, so the head of what it appended is anchored.
pub async fn settle_audit_anchors(timeout: Duration) {
    let wait = async {
        loop {
            let stopped = STOPPED.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if RUNNING.load(Ordering::SeqCst) == 0 {
                return;
            }
            stopped.await;
        }
    };
    let _ = tokio::time::timeout(timeout, wait).await;
}

struct Candidate {
    seq: i64,
    hash: Vec<u8>,
    at: DateTime<Utc>,
    queued: Instant,
}

enum Msg {
    Candidate(Candidate),
    Flush(oneshot::Sender<()>),
}

struct Shared {
    data: Db,
    keys: Db,
    audit_keys: SharedAuditKeys,
    memory: Mutex<Option<Anchor>>,
    options: Mutex<AnchorOptions>,
    /// The anchor whose entry was found gone, logged once.
    broken: Mutex<Option<i64>>,
}

/// Handle to the anchor task. Cloned into the chain, which hands it each checkpoint's head.
#[derive(Clone)]
pub(crate) struct Anchors {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Anchors {
    /// Starts the anchor task on the current tokio runtime.
    pub(crate) fn start(data: Db, keys: Db, audit_keys: SharedAuditKeys) -> Self {
        let shared = Arc::new(Shared {
            data,
            keys,
            audit_keys,
            memory: Mutex::new(None),
            options: Mutex::new(AnchorOptions::default()),
            broken: Mutex::new(None),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        RUNNING.fetch_add(1, Ordering::SeqCst);
        let task = shared.clone();
        tokio::spawn(async move {
            run(&task, rx).await;
            RUNNING.fetch_sub(1, Ordering::SeqCst);
            STOPPED.notify_waiters();
        });
        Anchors { tx, shared }
    }

    /// A checkpoint was signed at `seq` (its batch may not have committed yet).
    pub(crate) fn checkpoint(&self, seq: i64, hash: &[u8], at: DateTime<Utc>) {
        let _ = self.tx.send(Msg::Candidate(Candidate {
            seq,
            hash: hash.to_vec(),
            at,
            queued: Instant::now(),
        }));
    }

    /// Writes the newest committed checkpoint's anchor now and waits for it.
    pub(crate) async fn flush(&self) {
        let (done, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).is_ok() {
            let _ = rx.await;
        }
    }

    pub(crate) fn configure(&self, o: AnchorOptions) {
        *lock(&self.shared.options) = o;
    }

    /// Every anchor `verify` can read: the key store's, the witness file's newest, and this
    /// process's, each with where it came from. An unreadable or unsigned one is an `Err` naming
    /// its source.
    pub(crate) async fn readable(&self) -> Result<Vec<(Anchor, AnchorSource)>, AnchorSource> {
        let mut out = Vec::new();
        let keys = current(&self.shared.audit_keys);
        match repo::get(&self.shared.keys).await {
            Ok(Some(row)) => {
                let a = from_row(row);
                if !a.is_signed_by(&keys) {
                    return Err(AnchorSource::KeyStore);
                }
                out.push((a, AnchorSource::KeyStore));
            }
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "the key store's audit anchor cannot be read");
                return Err(AnchorSource::KeyStore);
            }
        }
        let witness = lock(&self.shared.options).witness_file.clone();
        if let Some(path) = witness {
            match tokio::task::spawn_blocking(move || read_witness(&path)).await {
                Ok(Ok(Some(a))) if a.is_signed_by(&keys) => {
                    out.push((a, AnchorSource::Witness));
                }
                Ok(Ok(None)) => {}
                Ok(Ok(Some(_))) | Ok(Err(_)) | Err(_) => return Err(AnchorSource::Witness),
            }
        }
        if let Some(a) = lock(&self.shared.memory).clone()
            && !out.iter().any(|(o, _)| *o == a)
        {
            out.push((a, AnchorSource::Memory));
        }
        Ok(out)
    }
}

fn from_row(r: repo::AnchorRow) -> Anchor {
    Anchor {
        seq: r.seq,
        hash: r.hash,
        at: r.at,
        signature: r.signature,
    }
}

async fn run(s: &Shared, mut rx: mpsc::UnboundedReceiver<Msg>) {
    // What the key store holds now is what this process knows to start with.
    if let Ok(Some(row)) = repo::get(&s.keys).await {
        let a = from_row(row);
        if a.is_signed_by(&current(&s.audit_keys)) {
            let mut m = lock(&s.memory);
            if m.as_ref().is_none_or(|m| m.seq < a.seq) {
                *m = Some(a);
            }
        }
    }
    let mut pending: Vec<Candidate> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<()>> = Vec::new();
    let mut last_write: Option<Instant> = None;
    let mut closed = false;
    loop {
        let interval = lock(&s.options).min_interval;
        let due = last_write.is_none_or(|t| t.elapsed() >= interval);
        if !pending.is_empty() && (due || closed || !waiters.is_empty()) {
            s.advance(&mut pending).await;
            last_write = Some(Instant::now());
        }
        for w in waiters.drain(..) {
            let _ = w.send(());
        }
        if closed {
            return;
        }
        let msg = if pending.is_empty() {
            rx.recv().await
        } else {
            // A candidate whose batch is still committing is looked for again soon, not in a
            // busy loop.
            let wait = interval.max(Duration::from_millis(20));
            let deadline = last_write.map_or_else(Instant::now, |t| t + wait);
            tokio::select! {
                m = rx.recv() => m,
                () = tokio::time::sleep_until(deadline.into()) => continue,
            }
        };
        let mut next = msg;
        loop {
            match next {
                None => closed = true,
                Some(Msg::Candidate(c)) => pending.push(c),
                Some(Msg::Flush(w)) => waiters.push(w),
            }
            match rx.try_recv() {
                Ok(m) => next = Some(m),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
    }
}

impl Shared {
    /// Anchors the newest committed candidate and drops the older ones.
    async fn advance(&self, pending: &mut Vec<Candidate>) {
        pending.retain(|c| c.queued.elapsed() < PENDING_FOR);
        pending.sort_by_key(|c| c.seq);
        let mut chosen = None;
        for i in (0..pending.len()).rev() {
            let c = &pending[i];
            match audit_repo::checkpoint_hash(&self.data, c.seq).await {
                Ok(Some(h)) if h == c.hash => {
                    chosen = Some(i);
                    break;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the audit anchor waits: the data store cannot be read");
                    return;
                }
            }
        }
        if let Some(i) = chosen {
            let c = pending.remove(i);
            pending.drain(..i);
            if let Err(e) = self.write(c).await {
                tracing::warn!(error = %e, "the audit anchor could not be written to the key store");
            }
        }
        if pending.len() > MAX_PENDING {
            pending.drain(..pending.len() - MAX_PENDING);
        }
    }

    /// Whether the log still holds the entry `a` names, with `a`'s hash.
    async fn holds(&self, a: &Anchor) -> Result<bool, DbErr> {
        Ok(audit_repo::hash_at(&self.data, a.seq).await?.as_deref() == Some(&a.hash[..]))
    }

    fn gone(&self, a: &Anchor, source: AnchorSource) {
        let mut broken = lock(&self.broken);
        if *broken != Some(a.seq) {
            *broken = Some(a.seq);
            tracing::error!(
                seq = a.seq,
                at = %a.at,
                "the audit log no longer holds the entry the anchor {source} names: entries were removed or rewritten; anchoring stopped, run vaultctl audit verify"
            );
        }
    }

    async fn write(&self, c: Candidate) -> Result<(), DbErr> {
        let keys = current(&self.audit_keys);
        let known = lock(&self.memory).clone();
        if let Some(p) = &known {
            if p.seq >= c.seq {
                return Ok(());
            }
            if !self.holds(p).await? {
                self.gone(p, AnchorSource::Memory);
                return Ok(());
            }
        }
        for _ in 0..3 {
            let stored = repo::get(&self.keys).await?.map(from_row);
            if let Some(st) = &stored {
                let signed = st.is_signed_by(&keys);
                if st.seq >= c.seq {
                    // Another process is ahead: learn its anchor if it is sound.
                    if signed && self.holds(st).await? {
                        let mut m = lock(&self.memory);
                        if m.as_ref().is_none_or(|m| m.seq < st.seq) {
                            *m = Some(st.clone());
                        }
                    }
                    return Ok(());
                }
                if !signed {
                    tracing::error!(
                        seq = st.seq,
                        "the key store's audit anchor is not signed by the audit key; it is replaced by a signed one"
                    );
                } else if !self.holds(st).await? {
                    self.gone(st, AnchorSource::KeyStore);
                    return Ok(());
                }
                if let Some(p) = &known
                    && st.seq < p.seq
                {
                    tracing::warn!(
                        stored = st.seq,
                        known = p.seq,
                        "the key store's audit anchor was moved back; it is moved forward again"
                    );
                }
            }
            let a = Anchor::sign(keys.signer(), c.seq, c.hash.clone(), c.at);
            if repo::compare_and_set(
                &self.keys,
                stored.as_ref().map(|s| s.seq),
                a.seq,
                a.hash.clone(),
                a.at,
                a.signature.clone(),
            )
            .await?
            {
                self.witness(&a).await;
                let mut m = lock(&self.memory);
                if m.as_ref().is_none_or(|m| m.seq < a.seq) {
                    *m = Some(a);
                }
                return Ok(());
            }
        }
        Ok(())
    }

    async fn witness(&self, a: &Anchor) {
        let o = lock(&self.options).clone();
        if o.witness_file.is_none() && !o.stdout {
            return;
        }
        let line = a.to_line(current(&self.audit_keys).public());
        if o.stdout {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}").and_then(|_| out.flush());
        }
        if let Some(path) = o.witness_file {
            let shown = path.display().to_string();
            match tokio::task::spawn_blocking(move || append_line(&path, &line)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::error!(file = %shown, error = %e, "the audit witness file cannot be written");
                }
                Err(e) => {
                    tracing::error!(file = %shown, error = %e, "the audit witness file cannot be written");
                }
            }
        }
    }
}

impl Anchors {
    /// Opens the witness file (creating it if missing; it must be writable now), takes its
    /// newest anchor as what this process knows, and configures the destinations.
    pub(crate) async fn configure_with_witness(&self, o: AnchorOptions) -> Result<(), String> {
        if let Some(path) = o.witness_file.clone() {
            let shown = path.display().to_string();
            let newest = tokio::task::spawn_blocking(move || {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
                read_witness(&path)
            })
            .await
            .map_err(|e| format!("{shown}: {e}"))??;
            if let Some(a) = newest
                && a.is_signed_by(&current(&self.shared.audit_keys))
            {
                let mut m = lock(&self.shared.memory);
                if m.as_ref().is_none_or(|m| m.seq < a.seq) {
                    *m = Some(a);
                }
            }
        }
        self.configure(o);
        Ok(())
    }

    /// Anchors the newest committed checkpoint now and answers the anchor this process holds.
    pub(crate) async fn sync(&self) -> Option<Anchor> {
        self.flush().await;
        lock(&self.shared.memory).clone()
    }
}
