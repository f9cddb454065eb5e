//! Who may do what. casbin evaluates the role grants in `policies/model.conf` and
//! `policies/policy.csv`; the vault adds what casbin cannot say: the catalog's purposes, the
//! director's approval, and (per subject, in the service) the legal basis.
//!
//! casbin-rs's `enforce` costs 100 to 240 µs here; a read touches several categories. Answers are
//! cached per (role, school, category, action, purpose): role assignments live in the principals
//! table, not in casbin, so granting or revoking a role never makes a cached answer wrong. The
//! cache is dropped only when the policy files are reloaded (a new `Policy`).

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use casbin::{CoreApi, DefaultModel, Enforcer, MemoryAdapter, MgmtApi};
use chrono::{Datelike, NaiveDate, Weekday};

use crate::catalog::{Catalog, CatalogError, Tier};
use crate::domain::{Category, Purpose, SchoolId};

/// A policy file that could not be loaded: which file, which line, why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("{file}:{line}: {reason}")]
    Invalid {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("cannot read {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the casbin model in {file} is invalid: {reason}")]
    Model { file: String, reason: String },
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

macro_rules! str_enum {
    ($(#[$doc:meta])* $t:ident, $what:literal, { $($v:ident = $s:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $t { $($v),* }

        impl $t {
            pub const ALL: &'static [$t] = &[$($t::$v),*];

            pub fn parse(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok($t::$v),)*
                    other => Err(format!(
                        concat!("unknown ", $what, " '{}': expected one of {}"),
                        other.chars().take(64).collect::<String>(),
                        [$($s),*].join(", ")
                    )),
                }
            }

            pub fn as_str(self) -> &'static str {
                match self { $($t::$v => $s),* }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    };
}

str_enum!(
    /// A role a principal holds in a school (or network-wide).
    Role, "role", {
        GeneralDirector = "general_director",
        Director = "director",
        PrivacyOfficer = "privacy_officer",
        KeyCustodian = "key_custodian",
        HrOfficer = "hr_officer",
        Teacher = "teacher",
        ClassTeacher = "class_teacher",
        Nurse = "nurse",
        Psychologist = "psychologist",
        Admissions = "admissions",
        Auditor = "auditor",
        AppTimetable = "app_timetable",
        AppLms = "app_lms",
        AppNurseOffice = "app_nurse_office",
        AppHr = "app_hr",
        AppAdmissions = "app_admissions",
    }
);

str_enum!(
    /// What a principal wants to do with a category.
    Action, "action", {
        Write = "write",
        Read = "read",
        Update = "update",
        Shred = "shred",
        Approve = "approve",
        Export = "export",
        BreakGlass = "break_glass",
        Consent = "consent",
        KeyAdmin = "key_admin",
        AuditRead = "audit_read",
        Search = "search",
        ConsentRead = "consent_read",
        Block = "block",
        Unblock = "unblock",
        Transfer = "transfer",
        Left = "left",
        Hold = "hold",
        PrincipalAdmin = "principal_admin",
        View = "view",
    }
);

impl Action {
    /// Actions on data values, which the catalog's purposes govern.
    fn processes_data(self) -> bool {
        matches!(
            self,
            Action::Write
                | Action::Read
                | Action::Update
                | Action::Export
                | Action::Search
                | Action::Transfer
        )
    }
}

str_enum!(
    /// What an access request asks a director to allow: reading the categories, or sending
    /// them to a recipient. An approval is spent only by the act it was given for.
    ApprovalAct, "approval act", {
        Read = "read",
        Transfer = "transfer",
    }
);

impl ApprovalAct {
    /// The action the decision is asked for.
    pub fn action(self) -> Action {
        match self {
            ApprovalAct::Read => Action::Read,
            ApprovalAct::Transfer => Action::Transfer,
        }
    }
}

/// Where a role is held: one school, or every school of the network.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    School(SchoolId),
    Network,
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self, crate::domain::DomainError> {
        if s == "*" {
            Ok(Scope::Network)
        } else {
            SchoolId::parse(s).map(Scope::School)
        }
    }
    pub fn as_str(&self) -> &str {
        match self {
            Scope::School(s) => s.as_str(),
            Scope::Network => "*",
        }
    }
    pub fn covers(&self, school: &SchoolId) -> bool {
        match self {
            Scope::School(s) => s == school,
            Scope::Network => true,
        }
    }
}

/// Why a request was denied. Stable codes for the API, and a message for people.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DenyReason {
    /// The catalog does not allow this purpose for this category, whatever the role.
    PurposeNotAllowed {
        category: Category,
        purpose: Purpose,
    },
    /// The school does not collect this category at all.
    NotCollected(Category),
    /// The principal holds no role in this school.
    NoRoleInSchool(SchoolId),
    /// None of the principal's roles grants this action on this category for this purpose.
    NotGranted {
        action: Action,
        category: Category,
        purpose: Purpose,
    },
}

impl DenyReason {
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::PurposeNotAllowed { .. } => "purpose_not_allowed",
            DenyReason::NotCollected(_) => "not_collected",
            DenyReason::NoRoleInSchool(_) => "no_role_in_school",
            DenyReason::NotGranted { .. } => "not_granted",
        }
    }
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyReason::PurposeNotAllowed { category, purpose } => write!(
                f,
                "the catalog does not allow processing {category} data for the purpose {purpose}"
            ),
            DenyReason::NotCollected(c) => write!(f, "the school does not collect {c} data"),
            DenyReason::NoRoleInSchool(s) => write!(f, "you hold no role in school {s}"),
            DenyReason::NotGranted {
                action,
                category,
                purpose,
            } => write!(
                f,
                "none of your roles may {action} {category} data for the purpose {purpose}"
            ),
        }
    }
}

/// The policy's answer for one category.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Allowed once a director of the school (or the general director) approves a request.
    ApprovalRequired,
    Deny(DenyReason),
}

/// One grant line of `policy.csv`, for listing and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub role: Role,
    pub school: String,
    pub category: String,
    pub action: Action,
    pub purpose: String,
}

type CacheKey = (Role, String, Category, Action, Purpose);

/// The loaded policy: catalog, casbin grants, public holidays.
pub struct Policy {
    catalog: Catalog,
    enforcer: Enforcer,
    cache: RwLock<HashMap<CacheKey, bool>>,
    holidays: BTreeSet<NaiveDate>,
    grants: Vec<Grant>,
    /// (child, parent) role inheritances.
    inherits: Vec<(Role, Role)>,
    protecting_states: BTreeSet<crate::domain::Country>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("grants", &self.grants.len())
            .field("holidays", &self.holidays.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<String, PolicyError> {
    std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
        file: path.display().to_string(),
        source,
    })
}

impl Policy {
    /// Loads `catalog.toml`, `model.conf`, `policy.csv` and `holidays-kz.toml` from a folder.
    pub async fn load_dir(dir: &Path) -> Result<Policy, PolicyError> {
        let p = |n: &str| -> PathBuf { dir.join(n) };
        let catalog = Catalog::load(&p("catalog.toml"))?;
        let transfer = p("transfer.toml");
        let states = parse_transfer(&transfer.display().to_string(), &read(&transfer)?)?;
        let mut policy = Self::from_parts(
            catalog,
            (
                &p("model.conf").display().to_string(),
                &read(&p("model.conf"))?,
            ),
            (
                &p("policy.csv").display().to_string(),
                &read(&p("policy.csv"))?,
            ),
            (
                &p("holidays-kz.toml").display().to_string(),
                &read(&p("holidays-kz.toml"))?,
            ),
        )
        .await?;
        policy.protecting_states = states;
        Ok(policy)
    }

    /// Builds a policy from texts; each `(name, text)` names its file in errors.
    pub async fn from_parts(
        catalog: Catalog,
        model: (&str, &str),
        policy: (&str, &str),
        holidays: (&str, &str),
    ) -> Result<Policy, PolicyError> {
        let m = DefaultModel::from_str(model.1)
            .await
            .map_err(|e| PolicyError::Model {
                file: model.0.into(),
                reason: e.to_string(),
            })?;
        let mut enforcer = Enforcer::new(m, MemoryAdapter::default())
            .await
            .map_err(|e| PolicyError::Model {
                file: model.0.into(),
                reason: e.to_string(),
            })?;
        let (grants, inherits) = parse_policy_csv(policy.0, policy.1, &catalog)?;
        for g in &grants {
            let line = vec![
                g.role.as_str().to_owned(),
                g.school.clone(),
                g.category.clone(),
                g.action.as_str().to_owned(),
                g.purpose.clone(),
            ];
            enforcer
                .add_policy(line)
                .await
                .map_err(|e| PolicyError::Model {
                    file: policy.0.into(),
                    reason: e.to_string(),
                })?;
        }
        for (child, parent) in &inherits {
            enforcer
                .add_grouping_policy(vec![child.as_str().to_owned(), parent.as_str().to_owned()])
                .await
                .map_err(|e| PolicyError::Model {
                    file: policy.0.into(),
                    reason: e.to_string(),
                })?;
        }
        Ok(Policy {
            catalog,
            enforcer,
            cache: RwLock::new(HashMap::new()),
            holidays: parse_holidays(holidays.0, holidays.1)?,
            grants,
            inherits,
            protecting_states: BTreeSet::new(),
        })
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// The operator's list of states that ensure protection of personal data (Art. 16).
    pub fn protecting_states(&self) -> &BTreeSet<crate::domain::Country> {
        &self.protecting_states
    }

    pub fn grants(&self) -> &[Grant] {
        &self.grants
    }

    /// Whether `role`, or a role it inherits, holds `action` on any line of the policy.
    pub(crate) fn role_holds(&self, role: Role, action: Action) -> bool {
        let mut roles = vec![role];
        let mut i = 0;
        while let Some(r) = roles.get(i).copied() {
            for (child, parent) in &self.inherits {
                if *child == r && !roles.contains(parent) {
                    roles.push(*parent);
                }
            }
            i += 1;
        }
        self.grants
            .iter()
            .any(|g| g.action == action && roles.contains(&g.role))
    }

    /// Whether `role` holds `action` on `category` for `purpose` in every school (a grant
    /// line whose school is `*`): for acts that reach the whole network, such as giving a
    /// network-wide role.
    pub(crate) fn holds_everywhere(
        &self,
        role: Role,
        category: &Category,
        action: Action,
        purpose: &Purpose,
    ) -> bool {
        self.granted(role, "*", category, action, purpose)
    }

    /// Whether `role` is granted `action` on `category` for `purpose` in `school`, from cache.
    fn granted(
        &self,
        role: Role,
        school: &str,
        category: &Category,
        action: Action,
        purpose: &Purpose,
    ) -> bool {
        let key = (
            role,
            school.to_owned(),
            category.clone(),
            action,
            purpose.clone(),
        );
        if let Ok(cache) = self.cache.read()
            && let Some(v) = cache.get(&key)
        {
            return *v;
        }
        let v = self
            .enforcer
            .enforce((
                role.as_str(),
                school,
                category.as_str(),
                action.as_str(),
                purpose.as_str(),
            ))
            // A casbin evaluation error denies: fail closed.
            .unwrap_or(false);
        if let Ok(mut cache) = self.cache.write() {
            cache.insert(key, v);
        }
        v
    }

    /// The answer for a principal holding `roles`, acting in `school`.
    pub fn decide(
        &self,
        roles: &[(Scope, Role)],
        school: &SchoolId,
        category: &Category,
        action: Action,
        purpose: &Purpose,
    ) -> Decision {
        let Some(def) = self.catalog.category(category) else {
            return Decision::Deny(DenyReason::NotCollected(category.clone()));
        };
        if def.tier == Tier::NotCollected {
            return Decision::Deny(DenyReason::NotCollected(category.clone()));
        }
        if action.processes_data() && !def.purposes.contains(purpose) {
            return Decision::Deny(DenyReason::PurposeNotAllowed {
                category: category.clone(),
                purpose: purpose.clone(),
            });
        }
        let held: Vec<Role> = roles
            .iter()
            .filter(|(s, _)| s.covers(school))
            .map(|(_, r)| *r)
            .collect();
        if held.is_empty() {
            return Decision::Deny(DenyReason::NoRoleInSchool(school.clone()));
        }
        let granted = held
            .iter()
            .any(|r| self.granted(*r, school.as_str(), category, action, purpose));
        if !granted {
            return Decision::Deny(DenyReason::NotGranted {
                action,
                category: category.clone(),
                purpose: purpose.clone(),
            });
        }
        // The subject's own access request is a legal duty (Art. 24): the privacy officer's export
        // for it needs no approval. Everything else in an approval category does.
        let statutory_export = action == Action::Export && purpose.as_str() == "subject_access";
        if def.director_approval
            && matches!(action, Action::Read | Action::Export | Action::Transfer)
            && !statutory_export
        {
            return Decision::ApprovalRequired;
        }
        Decision::Allow
    }

    /// Whether the day is a working day: not a weekend, not a listed public holiday.
    pub fn is_working_day(&self, d: NaiveDate) -> bool {
        !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !self.holidays.contains(&d)
    }

    /// The date `n` working days after `from` (not counting `from` itself).
    pub fn add_working_days(&self, from: NaiveDate, n: u32) -> NaiveDate {
        let mut d = from;
        let mut left = n;
        while left > 0 {
            d = d.succ_opt().unwrap_or(d);
            if self.is_working_day(d) {
                left -= 1;
            }
        }
        d
    }
}

/// Grants and role inheritances (child, parent) read from `policy.csv`.
type ParsedPolicy = (Vec<Grant>, Vec<(Role, Role)>);

/// Checks the texts of `policy.csv`, `holidays-kz.toml` and `transfer.toml` without building an
/// enforcer: the parsers that `load_dir` uses, for fuzzing and for `vaultctl catalog check`.
pub fn check_policy_texts(
    catalog: &Catalog,
    csv: &str,
    holidays: &str,
    transfer: &str,
) -> Result<usize, PolicyError> {
    let (grants, _) = parse_policy_csv("policy.csv", csv, catalog)?;
    parse_holidays("holidays-kz.toml", holidays)?;
    parse_transfer("transfer.toml", transfer)?;
    Ok(grants.len())
}

fn parse_policy_csv(
    file: &str,
    text: &str,
    catalog: &Catalog,
) -> Result<ParsedPolicy, PolicyError> {
    let err = |line: usize, reason: String| PolicyError::Invalid {
        file: file.into(),
        line,
        reason,
    };
    let mut grants = Vec::new();
    let mut inherits = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = l.split(',').map(str::trim).collect();
        match cols.first() {
            Some(&"p") => {
                let [_, role, school, cat, act, pur] = cols[..] else {
                    return Err(err(
                        line,
                        format!(
                            "a grant has 6 columns (p, role, school, category, action, purpose), found {}",
                            cols.len()
                        ),
                    ));
                };
                let role = Role::parse(role).map_err(|e| err(line, e))?;
                if school != "*" && SchoolId::parse(school).is_err() {
                    return Err(err(line, format!("invalid school '{school}'")));
                }
                if cat != "*" {
                    let known = Category::parse(cat).ok().and_then(|c| catalog.category(&c));
                    if known.is_none() {
                        return Err(err(
                            line,
                            format!("unknown category '{cat}': the catalog does not list it"),
                        ));
                    }
                }
                let action = Action::parse(act).map_err(|e| err(line, e))?;
                if pur != "*"
                    && Purpose::parse(pur)
                        .ok()
                        .and_then(|p| catalog.purpose(&p))
                        .is_none()
                {
                    return Err(err(
                        line,
                        format!("unknown purpose '{pur}': the catalog does not list it"),
                    ));
                }
                grants.push(Grant {
                    role,
                    school: school.to_owned(),
                    category: cat.to_owned(),
                    action,
                    purpose: pur.to_owned(),
                });
            }
            Some(&"g") => {
                let [_, child, parent] = cols[..] else {
                    return Err(err(
                        line,
                        "an inheritance line has 3 columns (g, role, inherited role)".into(),
                    ));
                };
                let child = Role::parse(child).map_err(|e| err(line, e))?;
                let parent = Role::parse(parent).map_err(|e| err(line, e))?;
                if child == parent {
                    return Err(err(line, "a role cannot inherit itself".into()));
                }
                inherits.push((child, parent));
            }
            _ => {
                return Err(err(
                    line,
                    "a line starts with 'p' (grant), 'g' (inheritance) or '#' (comment)".into(),
                ));
            }
        }
    }
    Ok((grants, inherits))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransfer {
    protecting_states: Vec<String>,
}

fn parse_transfer(file: &str, text: &str) -> Result<BTreeSet<crate::domain::Country>, PolicyError> {
    let raw: RawTransfer = toml::from_str(text).map_err(|e| PolicyError::Invalid {
        file: file.into(),
        line: e
            .span()
            .map_or(0, |s| text[..s.start].matches('\n').count() + 1),
        reason: e.message().to_owned(),
    })?;
    raw.protecting_states
        .iter()
        .map(|c| {
            crate::domain::Country::parse(c).map_err(|e| PolicyError::Invalid {
                file: file.into(),
                line: text
                    .find(c.as_str())
                    .map_or(0, |o| text[..o].matches('\n').count() + 1),
                reason: e.to_string(),
            })
        })
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHolidays {
    years: std::collections::BTreeMap<String, Vec<String>>,
}

fn parse_holidays(file: &str, text: &str) -> Result<BTreeSet<NaiveDate>, PolicyError> {
    let raw: RawHolidays = toml::from_str(text).map_err(|e| PolicyError::Invalid {
        file: file.into(),
        line: e
            .span()
            .map_or(0, |s| text[..s.start].matches('\n').count() + 1),
        reason: e.message().to_owned(),
    })?;
    let mut out = BTreeSet::new();
    for (year, days) in raw.years {
        for d in days {
            let date =
                NaiveDate::parse_from_str(&d, "%Y-%m-%d").map_err(|_| PolicyError::Invalid {
                    file: file.into(),
                    line: text
                        .find(&d)
                        .map_or(0, |o| text[..o].matches('\n').count() + 1),
                    reason: format!("'{d}' is not a date YYYY-MM-DD"),
                })?;
            if date.year().to_string() != year {
                return Err(PolicyError::Invalid {
                    file: file.into(),
                    line: text
                        .find(&d)
                        .map_or(0, |o| text[..o].matches('\n').count() + 1),
                    reason: format!("{d} is listed under year {year}"),
                });
            }
            out.insert(date);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> Policy {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(Policy::load_dir(&dir))
            .expect("the shipped policies load")
    }

    fn names(c: &str, p: &str) -> (Category, Purpose) {
        (
            Category::parse(c).expect("category"),
            Purpose::parse(p).expect("purpose"),
        )
    }

    /// A role holds what its own lines and the roles it inherits grant (the general director
    /// approves as a director does, through `g, general_director, director`), and nothing more.
    #[test]
    fn roles_hold_what_they_inherit_and_nothing_else() {
        let p = shipped();
        assert!(p.role_holds(Role::Director, Action::Approve));
        assert!(p.role_holds(Role::GeneralDirector, Action::Approve));
        assert!(p.role_holds(Role::AppAdmissions, Action::Write));
        assert!(!p.role_holds(Role::Teacher, Action::Approve));
        assert!(!p.role_holds(Role::Auditor, Action::Write));
        assert!(!p.role_holds(Role::AppAdmissions, Action::Approve));
        let (identity, why) = names("identity", "legal_administrative");
        assert!(p.holds_everywhere(
            Role::GeneralDirector,
            &identity,
            Action::PrincipalAdmin,
            &why
        ));
        assert!(!p.holds_everywhere(Role::Teacher, &identity, Action::PrincipalAdmin, &why));
        assert!(!p.grants().is_empty());
        assert!(
            p.protecting_states().is_empty(),
            "the shipped list is empty"
        );
        assert!(format!("{p:?}").starts_with("Policy { grants: "), "{p:?}");
    }

    /// Only the subject's own export is statutory: a transfer of health data, even for the
    /// subject-access purpose, still waits for the director.
    #[test]
    fn only_the_subjects_own_export_skips_the_approval() {
        let p = shipped();
        let (health, access) = names("health", "subject_access");
        let school = SchoolId::parse("school-1").expect("school");
        let roles = [(Scope::School(school.clone()), Role::PrivacyOfficer)];
        let ask = |action| p.decide(&roles, &school, &health, action, &access);
        assert_eq!(ask(Action::Export), Decision::Allow);
        assert_eq!(ask(Action::Transfer), Decision::ApprovalRequired);
    }

    /// Scopes read back as written; each refusal explains itself in words and a stable code.
    #[test]
    fn scopes_and_reasons_read_back() {
        assert_eq!(
            Scope::parse("*").map(|s| s.as_str().to_owned()),
            Ok("*".to_owned())
        );
        assert_eq!(
            Scope::parse("school-2").map(|s| s.as_str().to_owned()),
            Ok("school-2".to_owned())
        );
        let (health, why) = names("health", "education");
        let r = DenyReason::NotGranted {
            action: Action::Read,
            category: health,
            purpose: why,
        };
        assert_eq!(r.code(), "not_granted");
        let text = r.to_string();
        assert!(
            text.contains("read") && text.contains("health") && text.contains("education"),
            "{text}"
        );
    }
}
