//! What the two group commits (new records, audit entries) tell about themselves, for a
//! server's metrics. The domain knows no metrics library: a server hands in an observer, and
//! reads the queue depths when it is scraped.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// One of the vault's group-commit writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum GroupCommit {
    /// New records, their DEKs and their audit entries.
    Records,
    /// Audit entries on their own (reads, decisions, custodian acts).
    Audit,
}

impl GroupCommit {
    /// Every writer, for label sets that must be complete from the first scrape.
    pub const ALL: [GroupCommit; 2] = [GroupCommit::Records, GroupCommit::Audit];

    /// The stable name of a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupCommit::Records => "records",
            GroupCommit::Audit => "audit",
        }
    }
}

/// Told of every batch a group commit wrote, or failed to write.
pub trait CommitObserver: Send + Sync {
    /// `items` records or audit entries, committed (`ok`) or not, in `took`.
    fn committed(&self, writer: GroupCommit, items: usize, took: Duration, ok: bool);
}

/// How many writes wait in each writer's queue right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDepths {
    /// Records waiting for their batch.
    pub records: usize,
    /// Audit appends waiting for theirs.
    pub audit: usize,
}

/// The observer slot both writers share; set once, by the server, after the vault opens.
#[derive(Clone, Default)]
pub(crate) struct Observers(Arc<OnceLock<Arc<dyn CommitObserver>>>);

impl Observers {
    /// False when an observer was already set.
    pub(crate) fn set(&self, o: Arc<dyn CommitObserver>) -> bool {
        self.0.set(o).is_ok()
    }

    /// Times one batch and reports it when the write finishes.
    pub(crate) fn start(&self, writer: GroupCommit, items: usize) -> Timed<'_> {
        Timed {
            observers: self,
            writer,
            items,
            started: Instant::now(),
        }
    }
}

/// A batch being written.
pub(crate) struct Timed<'a> {
    observers: &'a Observers,
    writer: GroupCommit,
    items: usize,
    started: Instant,
}

impl Timed<'_> {
    pub(crate) fn finish(self, ok: bool) {
        if let Some(o) = self.observers.0.get() {
            o.committed(self.writer, self.items, self.started.elapsed(), ok);
        }
    }
}
