//! Crash points: the places in a multi-step operation (between the two stores, inside a
//! transaction before it commits) where a crash test must be able to stop the process and know
//! that it stopped mid-operation.
//!
//! Only with the `test-hooks` feature (test builds), and only when `VAULT_TEST_CRASH_AT` names
//! the point (`name`, or `name:N` for its N-th time in this process): the process says so on
//! stderr and aborts at once, as a SIGKILL would stop it, with no destructor, commit or flush.
//! Without the feature every point is an empty function.

#[cfg(feature = "test-hooks")]
pub(crate) fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Ok(wanted) = std::env::var("VAULT_TEST_CRASH_AT") else {
        return;
    };
    let (wanted, nth) = match wanted.split_once(':') {
        Some((w, n)) => (w.to_owned(), n.parse::<u64>().unwrap_or(1)),
        None => (wanted, 1),
    };
    if wanted != name {
        return;
    }
    let hit = HITS.fetch_add(1, Ordering::SeqCst) + 1;
    if hit == nth {
        eprintln!("crash point {name} #{nth} reached");
        std::process::abort();
    }
}

#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub(crate) fn point(_name: &str) {}
