//! The one group-commit primitive both writers (records, audit entries) batch with.

use tokio::sync::mpsc;

/// Waits for one item, then takes every item already waiting, up to `max`: what a group
/// commit writes at once. `None` once every sender is gone.
pub(crate) async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, max: usize) -> Option<Vec<T>> {
    let mut batch = vec![rx.recv().await?];
    while batch.len() < max {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
    Some(batch)
}
