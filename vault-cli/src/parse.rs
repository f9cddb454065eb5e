//! Value parsers for the command line (`#[arg(value_parser = ...)]`): a value is parsed once,
//! where clap reads it, and a command only ever sees parsed values.
//!
//! A value they refuse is reported like any other wrong input, as `error: ...` with exit code 1
//! (see `main`), not as a clap usage error with exit code 2.

use chrono::{DateTime, NaiveDate, Utc};
use vault_core::{Category, Country, PrincipalId, Purpose, RecordId, Role, Scope, SubjectId};

/// Why a value given on the command line was refused: the whole message, naming the value,
/// and what caused it if that is worth a line of its own.
#[derive(Debug)]
pub struct BadValue {
    message: String,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl std::fmt::Display for BadValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BadValue {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}

impl BadValue {
    fn new(message: String) -> BadValue {
        BadValue {
            message,
            cause: None,
        }
    }

    /// The refusal of one of these parsers inside a clap error, if that is what it is.
    pub fn in_clap_error(e: &clap::Error) -> Option<&BadValue> {
        if e.kind() != clap::error::ErrorKind::ValueValidation {
            return None;
        }
        std::error::Error::source(e)?.downcast_ref::<BadValue>()
    }
}

/// The parse error of a `vault_core` type says what is wrong and shows the value.
fn core<T, E: std::fmt::Display>(r: Result<T, E>) -> Result<T, BadValue> {
    r.map_err(|e| BadValue::new(e.to_string()))
}

pub fn subject_id(s: &str) -> Result<SubjectId, BadValue> {
    core(SubjectId::parse(s))
}

pub fn principal_id(s: &str) -> Result<PrincipalId, BadValue> {
    core(PrincipalId::parse(s))
}

pub fn record_id(s: &str) -> Result<RecordId, BadValue> {
    core(RecordId::parse(s))
}

/// An ISO 3166-1 alpha-2 code, in either case.
pub fn country(s: &str) -> Result<Country, BadValue> {
    core(Country::parse(s))
}

pub fn category(s: &str) -> Result<Category, BadValue> {
    core(Category::parse(s))
}

/// One category of a comma-separated list: spaces around it are ignored.
pub fn listed_category(s: &str) -> Result<Category, BadValue> {
    core(Category::parse(s.trim()))
}

pub fn purpose(s: &str) -> Result<Purpose, BadValue> {
    core(Purpose::parse(s))
}

/// `--role ROLE@SCHOOL`, or `ROLE@*` for the whole network.
pub fn role_at(s: &str) -> Result<(Scope, Role), BadValue> {
    let (role, school) = s.split_once('@').ok_or_else(|| {
        BadValue::new(format!(
            "--role {s:?}: write ROLE@SCHOOL, e.g. nurse@school-1"
        ))
    })?;
    let scope = Scope::parse(school).map_err(|e| BadValue {
        message: format!("--role {s:?}"),
        cause: Some(e.into()),
    })?;
    Ok((scope, core(Role::parse(role))?))
}

/// A time as given on the command line.
#[derive(Clone, Debug)]
pub struct Time {
    pub at: DateTime<Utc>,
    /// The text it was given as, to echo back.
    pub given: String,
}

/// A parser for the time option `--{flag}`: an RFC 3339 time, or a date (from midnight UTC).
/// The flag is named in the error, with an example.
pub fn time(flag: &'static str) -> impl Fn(&str) -> Result<Time, BadValue> + Clone + Send + Sync {
    move |s| {
        let at = match DateTime::parse_from_rfc3339(s) {
            Ok(t) => t.with_timezone(&Utc),
            Err(_) => NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc())
                .ok_or_else(|| {
                    BadValue::new(format!(
                        "--{flag} {s:?} is not a time: use 2026-11-27 or 2026-11-27T09:00:00Z"
                    ))
                })?,
        };
        Ok(Time {
            at,
            given: s.to_owned(),
        })
    }
}
