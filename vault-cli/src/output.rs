//! Helpers for what the commands print.

use chrono::Utc;
use vault_core::Catalog;

/// Collects output so that a closed pipe (`vaultctl ... | head`) ends quietly instead of panicking.
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($out, $($arg)*);
    }};
}
pub(crate) use outln;

/// When the policy is next due for review, or a warning that the review is overdue.
pub fn review_line(catalog: &Catalog) -> String {
    let p = catalog.policy();
    let today = Utc::now().date_naive();
    if p.review_overdue(today) {
        format!(
            "WARNING: the policy review was due {} and is overdue",
            p.review_due()
        )
    } else {
        format!("policy review due {}", p.review_due())
    }
}

/// One CSV field, quoted when it has to be.
pub fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}
