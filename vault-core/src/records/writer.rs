//! Group commit for new records. One durable transaction per record caps writes at the disk's
//! fsync rate (about 1,200 a second on SQLite here), so concurrent creates are handed to one
//! writer task that commits them together: one key-store transaction for all their DEKs, then
//! one data-store transaction for all their records and fields. Each caller is answered only
//! after both commits, so an acknowledged record is as durable as before; nothing is relaxed.
//!
//! The audit entry of each create is appended to the chain in the same data-store transaction as
//! the record: no record without its entry, and no separate audit commit.
//!
//! If a batch fails, its records are written again one by one, so one bad record (say, its
//! subject was deleted meanwhile) fails alone and its neighbours still land.

use tokio::sync::{mpsc, oneshot};

use std::sync::Arc;

use crate::audit::chain::{AuditEvent, Chain};
use crate::batch::next_batch;
use crate::stats::{GroupCommit, Observers};
use crate::store::repo::records::{BatchRows, NewRows};
use crate::store::repo::{deks, keyring};
use crate::store::{StoreError, Stores};

/// Records per batch; bounded so a statement never nears the databases' parameter limits.
const MAX_BATCH: usize = 128;

/// One sealed record, ready to store.
pub(crate) struct NewRecord {
    /// The keyring generation its DEKs were wrapped under.
    pub generation: i64,
    /// Its DEKs, the record and its fields.
    pub rows: NewRows,
    /// Audit entries committed in the same transaction as the record.
    pub audit: Vec<AuditEvent>,
}

/// What became of one record.
#[derive(Debug)]
pub(crate) enum Written {
    Stored,
    /// A custodian changed the keyring after this record was sealed: seal it again.
    StaleKeyring,
}

struct Pending {
    rec: NewRecord,
    done: oneshot::Sender<Result<Written, StoreError>>,
}

/// Handle to the writer task.
#[derive(Clone)]
pub(crate) struct RecordWriter {
    tx: mpsc::Sender<Pending>,
}

/// Records a writer's queue holds at most; a create waits for room beyond it.
const QUEUE: usize = 1024;

impl RecordWriter {
    /// Starts the writer on the current tokio runtime.
    pub(crate) fn start(stores: Stores, chain: Arc<Chain>, observers: Observers) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(QUEUE);
        tokio::spawn(async move {
            while let Some(batch) = next_batch(&mut rx, MAX_BATCH).await {
                let timed = observers.start(GroupCommit::Records, batch.len());
                let ok = write_batch(&stores, &chain, batch).await;
                timed.finish(ok);
            }
        });
        RecordWriter { tx }
    }

    /// Records waiting for a batch.
    pub(crate) fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Stores one record and waits until it is durable in both stores.
    pub(crate) async fn write(&self, rec: NewRecord) -> Result<Written, StoreError> {
        let (done, rx) = oneshot::channel();
        let closed = || StoreError::Closed("record writer");
        self.tx
            .send(Pending { rec, done })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// Writes one batch; false when the batch as a whole failed.
async fn write_batch(stores: &Stores, chain: &Chain, batch: Vec<Pending>) -> bool {
    let recs: Vec<&NewRecord> = batch.iter().map(|p| &p.rec).collect();
    match commit(stores, chain, &recs).await {
        Ok(outcomes) => {
            for (p, w) in batch.into_iter().zip(outcomes) {
                let _ = p.done.send(Ok(w));
            }
            true
        }
        Err(e) if batch.len() == 1 => {
            if let Some(p) = batch.into_iter().next() {
                let _ = p.done.send(Err(e));
            }
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, records = batch.len(), "a write batch failed; writing its records one by one");
            for p in batch {
                let r = commit(stores, chain, &[&p.rec])
                    .await
                    .map(|mut w| w.pop().unwrap_or(Written::StaleKeyring));
                let _ = p.done.send(r);
            }
            false
        }
    }
}

/// Commits the records sealed under the current keyring generation, DEKs first; reports the
/// others as stale. On a data-store failure the batch's DEKs are removed again.
async fn commit(
    stores: &Stores,
    chain: &Chain,
    recs: &[&NewRecord],
) -> Result<Vec<Written>, StoreError> {
    let txn = crate::store::begin(&stores.keys)
        .await
        .map_err(StoreError::keys)?;
    keyring::lock_for_write(&txn)
        .await
        .map_err(StoreError::keys)?;
    let generation = keyring::generation(&txn).await.map_err(StoreError::keys)?;
    let outcomes: Vec<Written> = recs
        .iter()
        .map(|r| {
            if Some(r.generation) == generation {
                Written::Stored
            } else {
                Written::StaleKeyring
            }
        })
        .collect();
    let fresh: Vec<&NewRecord> = recs
        .iter()
        .zip(&outcomes)
        .filter(|(_, w)| matches!(w, Written::Stored))
        .map(|(r, _)| *r)
        .collect();
    if fresh.is_empty() {
        txn.rollback().await.map_err(StoreError::keys)?;
        return Ok(outcomes);
    }
    let rows: Vec<&NewRows> = fresh.iter().map(|r| &r.rows).collect();
    let mut rows = BatchRows::of(&rows);
    let dek_ids = rows.dek_ids();
    rows.insert_deks(&txn).await.map_err(StoreError::keys)?;
    txn.commit().await.map_err(StoreError::keys)?;
    crate::crash::point("create.keys_committed");

    let events: Vec<&AuditEvent> = fresh.iter().flat_map(|r| &r.audit).collect();
    let data = async {
        let txn = crate::store::begin(&stores.data).await?;
        rows.insert_records(&txn).await?;
        chain.append_in(&txn, events).await?;
        txn.commit().await
    }
    .await;
    if let Err(e) = data {
        if let Err(e) = deks::delete_ids(&stores.keys, dek_ids).await {
            // Unused DEKs protect no data; leaving them is safe, only untidy.
            tracing::warn!(error = %e, "could not remove DEKs of a failed write");
        }
        return Err(StoreError::data(e));
    }
    Ok(outcomes)
}
