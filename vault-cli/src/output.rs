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

/// How a listing is printed: aligned columns for a person, or JSON Lines (one object per
/// line, per item) for a script.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Prints `v` as one line of JSON.
pub fn json_line(out: &mut String, v: &serde_json::Value) {
    outln!(out, "{v}");
}

/// A progress bar on standard error, with the rate and the time left when the total is known.
/// Drawn only for a person: nothing with `--quiet`, and nothing when stderr is not a terminal
/// (a pipe, a file, cron), so no control characters ever reach a log.
pub struct Progress(indicatif::ProgressBar);

impl Progress {
    pub fn new(quiet: bool, what: &'static str, unit: &'static str) -> Progress {
        use std::io::IsTerminal as _;
        let bar = if quiet || !std::io::stderr().is_terminal() {
            indicatif::ProgressBar::hidden()
        } else {
            indicatif::ProgressBar::new_spinner()
        };
        bar.set_prefix(what);
        bar.set_message(unit);
        bar.set_style(Self::style(false));
        Progress(bar)
    }

    fn style(known: bool) -> indicatif::ProgressStyle {
        let template = if known {
            "{prefix} [{bar:30}] {human_pos}/{human_len} {msg} ({per_sec}, {eta} left)"
        } else {
            "{prefix} {spinner} {human_pos} {msg} ({per_sec})"
        };
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    /// `done` of `total` (when known) so far.
    pub fn set(&self, done: u64, total: Option<u64>) {
        if let Some(total) = total
            && self.0.length() != Some(total)
        {
            self.0.set_style(Self::style(true));
            self.0.set_length(total);
        }
        self.0.set_position(done);
    }

    /// Runs `f` with the bar hidden, for output that must not tear it.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        self.0.suspend(f)
    }

    /// Clears the bar: what was done is printed on stdout by the command.
    pub fn finish(&self) {
        self.0.finish_and_clear();
    }
}
