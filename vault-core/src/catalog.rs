//! The catalog: the school's approved list of data. Record types and their fields, each field's
//! category, each category's tier, purposes, retention and rules. It is the vault's record of
//! processing: a field it does not list cannot be stored.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{Months, NaiveDate};
use serde::Deserialize;
use toml::Spanned;

use crate::domain::{Category, FieldName, Purpose, RecordType, SubjectKind};

/// A catalog that could not be loaded: which file, where in it, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{file}:{line}: {place}: {reason}")]
pub struct CatalogError {
    pub file: String,
    /// 1-based line; 0 when the problem has no single place in the file.
    pub line: usize,
    /// Dotted path of the offending entry, e.g. `record_types.student.fields[3]`.
    pub place: String,
    pub reason: String,
}

/// How sensitive a category is, which decides the rules it gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Personal,
    Restricted,
    Special,
    /// Listed so that the vault can name it when refusing: the school does not collect it.
    NotCollected,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Personal => "personal",
            Tier::Restricted => "restricted",
            Tier::Special => "special",
            Tier::NotCollected => "not_collected",
        }
    }
}

/// The event from which a retention period runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionTrigger {
    /// The subject left the school (a student graduated or moved, a staff member left).
    LeftSchool,
    /// The record was created.
    RecordCreated,
}

/// A retention period in whole months and days.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub months: u32,
    pub days: u32,
}

impl Period {
    /// Parses `30d`, `6m` or `5y`.
    pub fn parse(s: &str) -> Option<Period> {
        let s = s.trim();
        let (num, unit) = s.split_at(s.len().checked_sub(1)?);
        let n: u32 = num.parse().ok()?;
        if n == 0 {
            return None;
        }
        match unit {
            "d" => Some(Period { months: 0, days: n }),
            "m" => Some(Period { months: n, days: 0 }),
            "y" => n.checked_mul(12).map(|months| Period { months, days: 0 }),
            _ => None,
        }
    }

    /// The date this period after `from` ends.
    pub fn after(&self, from: NaiveDate) -> Option<NaiveDate> {
        from.checked_add_months(Months::new(self.months))?
            .checked_add_days(chrono::Days::new(u64::from(self.days)))
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub trigger: RetentionTrigger,
    pub period: Period,
}

/// What a field holds, checked on every write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    Text,
    Date,
    Number,
    Boolean,
    Iin,
    /// Structured data (lists, tables of marks): any JSON value.
    Json,
}

#[derive(Clone, Debug)]
pub struct CategoryDef {
    pub name: Category,
    pub tier: Tier,
    pub description: String,
    pub purposes: BTreeSet<Purpose>,
    /// Needs consent on file or a named legal ground (special categories always do).
    pub legal_basis: bool,
    /// Decrypting needs a director's approval.
    pub director_approval: bool,
    /// May be transferred abroad at all (subject to the transfer rules).
    pub may_leave_country: bool,
    pub retention: Option<Retention>,
}

#[derive(Clone, Debug)]
pub struct FieldDef {
    pub name: FieldName,
    pub category: Category,
    pub field_type: FieldType,
    pub description: String,
}

#[derive(Clone, Debug)]
pub struct RecordTypeDef {
    pub name: RecordType,
    pub subject_kind: SubjectKind,
    pub description: String,
    fields: BTreeMap<FieldName, FieldDef>,
}

impl RecordTypeDef {
    pub fn field(&self, name: &FieldName) -> Option<&FieldDef> {
        self.fields.get(name)
    }
    pub fn fields(&self) -> impl Iterator<Item = &FieldDef> {
        self.fields.values()
    }
}

#[derive(Clone, Debug)]
pub struct PurposeDef {
    pub name: Purpose,
    pub description: String,
}

/// The policy document's own facts, carried by the catalog.
#[derive(Clone, Debug)]
pub struct PolicyInfo {
    pub operator: String,
    pub operator_bin: String,
    pub implemented: NaiveDate,
    pub reviewed: NaiveDate,
    pub review_every_years: u32,
}

impl PolicyInfo {
    /// When the next review is due.
    pub fn review_due(&self) -> NaiveDate {
        self.reviewed
            .checked_add_months(Months::new(self.review_every_years * 12))
            .unwrap_or(NaiveDate::MAX)
    }
    pub fn review_overdue(&self, today: NaiveDate) -> bool {
        today > self.review_due()
    }
}

/// The validated catalog.
#[derive(Clone, Debug)]
pub struct Catalog {
    policy: PolicyInfo,
    purposes: BTreeMap<Purpose, PurposeDef>,
    categories: BTreeMap<Category, CategoryDef>,
    record_types: BTreeMap<RecordType, RecordTypeDef>,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError {
            file: file.clone(),
            line: 0,
            place: "file".into(),
            reason: format!("cannot read it: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parses and validates catalog text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Catalog, CatalogError> {
        let raw: RawCatalog = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            CatalogError {
                file: file.into(),
                line,
                place: "syntax".into(),
                reason: e.message().to_string(),
            }
        })?;
        Validator { text, file }.validate(raw)
    }

    pub fn policy(&self) -> &PolicyInfo {
        &self.policy
    }
    pub fn category(&self, c: &Category) -> Option<&CategoryDef> {
        self.categories.get(c)
    }
    pub fn categories(&self) -> impl Iterator<Item = &CategoryDef> {
        self.categories.values()
    }
    /// Categories the school collects: the ones that get keys.
    pub fn collected_categories(&self) -> impl Iterator<Item = &Category> {
        self.categories
            .values()
            .filter(|c| c.tier != Tier::NotCollected)
            .map(|c| &c.name)
    }
    pub fn record_type(&self, t: &RecordType) -> Option<&RecordTypeDef> {
        self.record_types.get(t)
    }
    pub fn record_types(&self) -> impl Iterator<Item = &RecordTypeDef> {
        self.record_types.values()
    }
    pub fn purpose(&self, p: &Purpose) -> Option<&PurposeDef> {
        self.purposes.get(p)
    }
    pub fn purposes(&self) -> impl Iterator<Item = &PurposeDef> {
        self.purposes.values()
    }
    /// Whether the catalog allows processing `category` for `purpose`.
    pub fn purpose_allowed(&self, category: &Category, purpose: &Purpose) -> bool {
        self.categories
            .get(category)
            .is_some_and(|c| c.purposes.contains(purpose))
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(0, |t| t.matches('\n').count() + 1)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    policy: Spanned<RawPolicy>,
    purposes: BTreeMap<Spanned<String>, Spanned<RawPurpose>>,
    categories: BTreeMap<Spanned<String>, Spanned<RawCategory>>,
    record_types: BTreeMap<Spanned<String>, Spanned<RawRecordType>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    operator: String,
    operator_bin: String,
    implemented: Spanned<String>,
    reviewed: Spanned<String>,
    review_every_years: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPurpose {
    description: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCategory {
    tier: Tier,
    description: String,
    #[serde(default)]
    purposes: Vec<Spanned<String>>,
    #[serde(default)]
    legal_basis: bool,
    #[serde(default)]
    director_approval: bool,
    #[serde(default)]
    may_leave_country: bool,
    retention: Option<Spanned<RawRetention>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetention {
    trigger: RetentionTrigger,
    period: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRecordType {
    subject_kind: String,
    description: String,
    fields: Vec<Spanned<RawField>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawField {
    name: String,
    category: String,
    #[serde(rename = "type")]
    field_type: FieldType,
    #[serde(default)]
    description: String,
}

struct Validator<'a> {
    text: &'a str,
    file: &'a str,
}

impl Validator<'_> {
    fn err<T>(
        &self,
        at: usize,
        place: String,
        reason: impl Into<String>,
    ) -> Result<T, CatalogError> {
        Err(CatalogError {
            file: self.file.into(),
            line: line_of(self.text, at),
            place,
            reason: reason.into(),
        })
    }

    fn date(&self, s: &Spanned<String>, place: &str) -> Result<NaiveDate, CatalogError> {
        let v = s.get_ref();
        NaiveDate::parse_from_str(v, "%Y-%m-%d")
            .or_else(|_| NaiveDate::parse_from_str(&format!("{v}-01"), "%Y-%m-%d"))
            .or_else(|_| {
                self.err(
                    s.span().start,
                    place.into(),
                    "expected a date YYYY-MM-DD or YYYY-MM",
                )
            })
    }

    fn validate(&self, raw: RawCatalog) -> Result<Catalog, CatalogError> {
        let p = raw.policy.get_ref();
        let policy = PolicyInfo {
            operator: p.operator.clone(),
            operator_bin: p.operator_bin.clone(),
            implemented: self.date(&p.implemented, "policy.implemented")?,
            reviewed: self.date(&p.reviewed, "policy.reviewed")?,
            review_every_years: p.review_every_years,
        };
        if policy.operator_bin.len() != 12
            || !policy.operator_bin.bytes().all(|b| b.is_ascii_digit())
        {
            return self.err(
                raw.policy.span().start,
                "policy.operator_bin".into(),
                "a BIN has exactly 12 digits",
            );
        }
        if !(1..=10).contains(&policy.review_every_years) {
            return self.err(
                raw.policy.span().start,
                "policy.review_every_years".into(),
                "must be 1 to 10",
            );
        }

        let mut purposes = BTreeMap::new();
        for (name, def) in &raw.purposes {
            let place = format!("purposes.{}", name.get_ref());
            let Ok(pn) = Purpose::parse(name.get_ref()) else {
                return self.err(
                    name.span().start,
                    place,
                    "a purpose name uses a-z, 0-9 and '_'",
                );
            };
            purposes.insert(
                pn.clone(),
                PurposeDef {
                    name: pn,
                    description: def.get_ref().description.clone(),
                },
            );
        }

        let mut categories = BTreeMap::new();
        for (name, spanned) in &raw.categories {
            let place = format!("categories.{}", name.get_ref());
            let at = spanned.span().start;
            let Ok(cn) = Category::parse(name.get_ref()) else {
                return self.err(
                    name.span().start,
                    place,
                    "a category name uses a-z, 0-9 and '_'",
                );
            };
            let c = spanned.get_ref();
            let mut ps = BTreeSet::new();
            for (i, pname) in c.purposes.iter().enumerate() {
                let pp = format!("{place}.purposes[{i}]");
                let known = Purpose::parse(pname.get_ref())
                    .ok()
                    .filter(|p| purposes.contains_key(p));
                let Some(pu) = known else {
                    return self.err(
                        pname.span().start,
                        pp,
                        format!(
                            "unknown purpose '{}': add it under [purposes] or fix the name",
                            pname.get_ref()
                        ),
                    );
                };
                if !ps.insert(pu) {
                    return self.err(
                        pname.span().start,
                        pp,
                        format!("purpose '{}' is listed twice", pname.get_ref()),
                    );
                }
            }
            let retention = match &c.retention {
                Some(r) => {
                    let Some(period) = Period::parse(&r.get_ref().period) else {
                        return self.err(
                            r.span().start,
                            format!("{place}.retention.period"),
                            "expected a period such as 30d, 6m or 5y",
                        );
                    };
                    Some(Retention {
                        trigger: r.get_ref().trigger,
                        period,
                    })
                }
                None => None,
            };
            if c.tier == Tier::NotCollected {
                if !ps.is_empty() || retention.is_some() || c.director_approval || c.legal_basis {
                    return self.err(
                        at,
                        place,
                        "a not_collected category has no purposes, retention or rules: the school does not collect it",
                    );
                }
            } else {
                if ps.is_empty() {
                    return self.err(
                        at,
                        place,
                        format!("category '{}' has no purpose: list at least one purpose it is processed for", cn),
                    );
                }
                if retention.is_none() {
                    return self.err(
                        at,
                        place,
                        "a collected category needs a retention rule { trigger, period }",
                    );
                }
                if c.tier == Tier::Special && !c.legal_basis {
                    return self.err(
                        at,
                        place,
                        "a special category must set legal_basis = true (Art. 7, 9)",
                    );
                }
            }
            categories.insert(
                cn.clone(),
                CategoryDef {
                    name: cn,
                    tier: c.tier,
                    description: c.description.clone(),
                    purposes: ps,
                    legal_basis: c.legal_basis,
                    director_approval: c.director_approval,
                    may_leave_country: c.may_leave_country,
                    retention,
                },
            );
        }

        let mut record_types = BTreeMap::new();
        for (name, spanned) in &raw.record_types {
            let place = format!("record_types.{}", name.get_ref());
            let Ok(rn) = RecordType::parse(name.get_ref()) else {
                return self.err(
                    name.span().start,
                    place,
                    "a record type name uses a-z, 0-9 and '_'",
                );
            };
            let r = spanned.get_ref();
            let Ok(kind) = SubjectKind::parse(&r.subject_kind) else {
                return self.err(
                    spanned.span().start,
                    format!("{place}.subject_kind"),
                    "expected student, staff or guardian",
                );
            };
            let mut fields = BTreeMap::new();
            for (i, f) in r.fields.iter().enumerate() {
                let fp = format!("{place}.fields[{i}]");
                let at = f.span().start;
                let f = f.get_ref();
                let Ok(fname) = FieldName::parse(&f.name) else {
                    return self.err(
                        at,
                        fp,
                        format!("invalid field name '{}': use a-z, 0-9 and '_'", f.name),
                    );
                };
                let cat = Category::parse(&f.category)
                    .ok()
                    .and_then(|c| categories.get(&c));
                let Some(cat) = cat else {
                    return self.err(
                        at,
                        fp,
                        format!("field '{}' has unknown category '{}'", f.name, f.category),
                    );
                };
                if cat.tier == Tier::NotCollected {
                    return self.err(
                        at,
                        fp,
                        format!(
                            "field '{}' is in category '{}', which the school does not collect",
                            f.name, f.category
                        ),
                    );
                }
                let def = FieldDef {
                    name: fname.clone(),
                    category: cat.name.clone(),
                    field_type: f.field_type,
                    description: f.description.clone(),
                };
                if fields.insert(fname, def).is_some() {
                    return self.err(
                        at,
                        fp,
                        format!("duplicate field '{}' in record type '{}'", f.name, rn),
                    );
                }
            }
            if fields.is_empty() {
                return self.err(
                    spanned.span().start,
                    place,
                    "a record type needs at least one field",
                );
            }
            record_types.insert(
                rn.clone(),
                RecordTypeDef {
                    name: rn,
                    subject_kind: kind,
                    description: r.description.clone(),
                    fields,
                },
            );
        }
        if record_types.is_empty() {
            return self.err(
                0,
                "record_types".into(),
                "the catalog lists no record types",
            );
        }
        Ok(Catalog {
            policy,
            purposes,
            categories,
            record_types,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINI: &str = r#"
[policy]
operator = "Test School"
operator_bin = "123456789012"
implemented = "2019-03"
reviewed = "2022-07"
review_every_years = 3

[purposes.education]
description = "teaching"

[categories.identity]
tier = "personal"
description = "names"
purposes = ["education"]
retention = { trigger = "left_school", period = "5y" }

[categories.political_views]
tier = "not_collected"
description = "never collected"

[record_types.student]
subject_kind = "student"
description = "a pupil"
fields = [
  { name = "full_name", category = "identity", type = "text" },
]
"#;

    #[test]
    fn mini_catalog_loads() {
        let c = Catalog::parse(MINI, "mini.toml").unwrap();
        assert_eq!(
            c.policy().review_due(),
            NaiveDate::from_ymd_opt(2025, 7, 1).unwrap()
        );
        assert!(
            c.policy()
                .review_overdue(NaiveDate::from_ymd_opt(2026, 11, 27).unwrap())
        );
        assert_eq!(c.collected_categories().count(), 1);
    }

    #[test]
    fn period_parses() {
        assert_eq!(
            Period::parse("5y"),
            Some(Period {
                months: 60,
                days: 0
            })
        );
        assert_eq!(
            Period::parse("30d"),
            Some(Period {
                months: 0,
                days: 30
            })
        );
        for bad in ["", "y", "0y", "5w", "-1d", "5 y"] {
            assert_eq!(Period::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn political_views_field_refused() {
        let bad = MINI.replace(
            r#"{ name = "full_name", category = "identity", type = "text" },"#,
            r#"{ name = "full_name", category = "identity", type = "text" },
  { name = "party", category = "political_views", type = "text" },"#,
        );
        let e = Catalog::parse(&bad, "mini.toml").unwrap_err();
        assert!(e.reason.contains("does not collect"), "{e}");
        assert_eq!(e.place, "record_types.student.fields[1]");
    }
}
