//! The access boundary, for every operation of `docs/openapi.json`. A table has one row per
//! operation: how to call it, and what `policies/policy.csv` must grant a role for the call to
//! pass. The test fails if the document and the table disagree, so a new route needs a row.
//!
//! Against one real server per backend, with a victim student in school-1 (IIN, guardian,
//! consent, a record with identity, contact and health, an access request, a break-glass):
//!
//! - cross-school: each id-taking operation is called by a school-2 principal holding the role
//!   that would be allowed in its own school, with the victim's real ids and with random ones.
//!   Both answers must be the same `404 not_found`, word for word once ids are masked. The same
//!   again with a blocked school-1 subject and a shredded school-1 record: no state shows;
//! - wrong role: each operation is called by every school-1 dev role that policy.csv grants
//!   nothing for it, and must get a `403` problem with the row's stable code; a record of a
//!   blocked subject too, for a read.
//!
//! After every refused call neither store changed (every non-audit table, row by row, rendered
//! as text by SQL) and the victim's history gained nothing (cross-school) or only the caller's
//! denied entries (wrong role).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;

use common::{Resp, Server, start};
use serde_json::{Value, json};
use vault_core::{
    BearerToken, ManualClock, RecordType, Role, SchoolId, Scope, StoreConfig, Stores, SubjectId,
    Unlock, Vault,
};
use vault_tests::{Backend, make_iin, on_both_backends, policy};

on_both_backends!(matrix);

const LA: &str = "legal_administrative";
const SA: &str = "subject_access";

/// (category, action, purpose): one grant a call needs.
type Grant = (&'static str, &'static str, &'static str);

/// What a role must be granted for the call to pass its role check.
#[derive(Clone, Copy)]
enum Need {
    /// Every one of these.
    All(&'static [Grant]),
    /// At least one (a read opens what it may and is refused only if it may open nothing).
    Any(&'static [Grant]),
    /// Every role of the school may call it; why it cannot be refused for a wrong role.
    Everyone(&'static str),
}

/// A dev role whose answer the grants alone do not decide.
#[derive(Clone, Copy)]
enum Except {
    /// Refused with this code instead of the row's.
    Code(&'static str),
    /// Allowed although the grants say no.
    Allowed(&'static str),
}

/// How a school-2 principal probes school-1's data.
#[derive(Clone, Copy)]
enum Cross {
    /// With the victim's ids and with random ones, as this school-2 role: both `404`.
    Ids(&'static str),
    /// With school-1 in the body and with a school that does not exist, as this school-2 role:
    /// both `403 no_role_in_school`. A school id is no personal-data handle.
    School(&'static str),
    /// A list: as this role, school-1's sees the victim's item and school-2's sees none of
    /// school-1's (the array under the key).
    List(&'static str, &'static str),
    /// Takes and finds no id: why.
    NotApplicable(&'static str),
}

#[derive(Clone, Copy)]
struct Op {
    id: &'static str,
    method: &'static str,
    /// With `$subject`, `$guardian`, `$record`, `$consent`, `$request`, `$break_glass`,
    /// `$iin`, `$school`, `$expires`, `$s2subject` for the ids of the call.
    path: &'static str,
    purpose: Option<&'static str>,
    if_match: bool,
    body: Option<&'static str>,
    need: Need,
    /// The code of the 403 a role without the grants gets.
    code: &'static str,
    except: &'static [(&'static str, Except)],
    cross: Cross,
    /// A second cross-school probe: a school-2 subject, with school-1's ids elsewhere in the call.
    mixed: Option<(&'static str, &'static str)>,
}

const BASE: Op = Op {
    id: "",
    method: "GET",
    path: "",
    purpose: None,
    if_match: false,
    body: None,
    need: Need::Everyone(""),
    code: "not_granted",
    except: &[],
    cross: Cross::NotApplicable(""),
    mixed: None,
};

/// Operations that touch no personal data, with why.
const EXEMPT: &[(&str, &str)] = &[(
    "me",
    "the caller's own id, name and roles; no subject, record or school data",
)];

/// Paths outside `/v1`: operations endpoints.
const NOT_V1: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/unseal",
];

const CONSENT_BODY: &str = r#"{"given_by":"guardian","guardian":"$guardian","method":"paper",
 "evidence_ref":"scan 2026/78","text_version":"v3","categories":["health"],
 "third_party":false,"cross_border":false,"publication":false}"#;

/// Shredding is decided on every category of the record type, and identity.
const SHRED: &[Grant] = &[
    ("academic", "shred", LA),
    ("attendance", "shred", LA),
    ("contact", "shred", LA),
    ("disciplinary", "shred", LA),
    ("education_history", "shred", LA),
    ("ethnicity", "shred", LA),
    ("health", "shred", LA),
    ("identity", "shred", LA),
    ("psychological", "shred", LA),
    ("religion", "shred", LA),
];

const AUDIT_READ: &[Grant] = &[("identity", "audit_read", "audit")];
const APPROVE_HEALTH: &[Grant] = &[("health", "approve", "education")];
const CONSENT_HEALTH: &[Grant] = &[("health", "consent", LA)];

const TABLE: &[Op] = &[
    Op {
        id: "createSubject",
        method: "POST",
        path: "/v1/subjects",
        body: Some(r#"{"school":"$school","kind":"student"}"#),
        need: Need::All(&[("identity", "write", LA)]),
        cross: Cross::School("admissions"),
        ..BASE
    },
    Op {
        id: "findSubject",
        method: "POST",
        path: "/v1/subjects/search",
        purpose: Some(LA),
        body: Some(r#"{"iin":"$iin"}"#),
        need: Need::All(&[("identity", "search", LA)]),
        cross: Cross::Ids("admissions"),
        ..BASE
    },
    Op {
        id: "getSubject",
        path: "/v1/subjects/$subject",
        need: Need::All(&[("identity", "view", LA)]),
        cross: Cross::Ids("director"),
        ..BASE
    },
    Op {
        id: "createRecord",
        method: "POST",
        path: "/v1/subjects/$subject/records",
        purpose: Some(LA),
        body: Some(r#"{"record_type":"student","fields":{"full_name":"MATRIX-probe"}}"#),
        need: Need::All(&[("identity", "write", LA)]),
        cross: Cross::Ids("admissions"),
        ..BASE
    },
    Op {
        id: "listRecords",
        path: "/v1/subjects/$subject/records",
        need: Need::All(&[("identity", "view", LA)]),
        cross: Cross::Ids("director"),
        ..BASE
    },
    Op {
        id: "recordConsent",
        method: "POST",
        path: "/v1/subjects/$subject/consents",
        body: Some(CONSENT_BODY),
        need: Need::All(CONSENT_HEALTH),
        cross: Cross::Ids("admissions"),
        mixed: Some(("/v1/subjects/$s2subject/consents", CONSENT_BODY)),
        ..BASE
    },
    Op {
        id: "listConsents",
        path: "/v1/subjects/$subject/consents",
        need: Need::All(&[("identity", "consent_read", LA)]),
        cross: Cross::Ids("admissions"),
        ..BASE
    },
    Op {
        id: "recordLegalGround",
        method: "POST",
        path: "/v1/subjects/$subject/legal-grounds",
        body: Some(
            r#"{"category":"health","ground":"vital_interests","reference":"order 12/2026"}"#,
        ),
        need: Need::All(CONSENT_HEALTH),
        cross: Cross::Ids("privacy_officer"),
        ..BASE
    },
    Op {
        id: "exportSubject",
        path: "/v1/subjects/$subject/export",
        need: Need::All(&[
            ("contact", "export", SA),
            ("health", "export", SA),
            ("identity", "export", SA),
        ]),
        cross: Cross::Ids("privacy_officer"),
        ..BASE
    },
    Op {
        id: "blockSubject",
        method: "POST",
        path: "/v1/subjects/$subject/block",
        need: Need::All(&[("identity", "block", LA)]),
        cross: Cross::Ids("privacy_officer"),
        ..BASE
    },
    Op {
        id: "unblockSubject",
        method: "POST",
        path: "/v1/subjects/$subject/unblock",
        need: Need::All(&[("identity", "unblock", LA)]),
        cross: Cross::Ids("privacy_officer"),
        ..BASE
    },
    Op {
        id: "accessHistory",
        path: "/v1/subjects/$subject/access-history",
        need: Need::All(AUDIT_READ),
        code: "not_auditor",
        cross: Cross::Ids("auditor"),
        ..BASE
    },
    Op {
        id: "getRecord",
        path: "/v1/records/$record",
        purpose: Some(LA),
        need: Need::Any(&[
            ("identity", "read", LA),
            ("contact", "read", LA),
            ("health", "read", LA),
        ]),
        cross: Cross::Ids("director"),
        ..BASE
    },
    Op {
        id: "updateRecord",
        method: "PATCH",
        path: "/v1/records/$record",
        purpose: Some(LA),
        if_match: true,
        body: Some(r#"{"fields":{"full_name":"MATRIX-renamed"}}"#),
        need: Need::All(&[("identity", "update", LA)]),
        cross: Cross::Ids("admissions"),
        ..BASE
    },
    Op {
        id: "shredRecord",
        method: "DELETE",
        path: "/v1/records/$record",
        purpose: Some(LA),
        need: Need::All(SHRED),
        cross: Cross::Ids("privacy_officer"),
        ..BASE
    },
    Op {
        id: "createAccessRequest",
        method: "POST",
        path: "/v1/access-requests",
        body: Some(
            r#"{"subject":"$subject","record":"$record","categories":["health"],
 "purpose":"education","justification":"hearing support plan for the new term"}"#,
        ),
        need: Need::All(&[("health", "read", "education")]),
        cross: Cross::Ids("nurse"),
        mixed: Some((
            "/v1/access-requests",
            r#"{"subject":"$s2subject","record":"$record","categories":["health"],
 "purpose":"education","justification":"hearing support plan for the new term"}"#,
        )),
        ..BASE
    },
    Op {
        id: "pendingRequests",
        path: "/v1/access-requests/pending",
        need: Need::Everyone(
            "lists only the requests the caller may decide: empty for a role that approves nothing",
        ),
        cross: Cross::List("director", "requests"),
        ..BASE
    },
    Op {
        id: "approveRequest",
        method: "POST",
        path: "/v1/access-requests/$request/approve",
        body: Some(r#"{"expires_at":"$expires","uses":1}"#),
        need: Need::All(APPROVE_HEALTH),
        code: "not_approver",
        except: &[("nurse", Except::Code("self_approval"))],
        cross: Cross::Ids("director"),
        ..BASE
    },
    Op {
        id: "denyRequest",
        method: "POST",
        path: "/v1/access-requests/$request/deny",
        body: Some(r#"{"reason":"not needed this term"}"#),
        need: Need::All(APPROVE_HEALTH),
        code: "not_approver",
        except: &[("nurse", Except::Code("self_approval"))],
        cross: Cross::Ids("director"),
        ..BASE
    },
    Op {
        id: "revokeApproval",
        method: "POST",
        path: "/v1/access-requests/$request/revoke",
        need: Need::All(APPROVE_HEALTH),
        code: "not_approver",
        except: &[(
            "nurse",
            Except::Allowed("the requester may withdraw their own request"),
        )],
        cross: Cross::Ids("director"),
        ..BASE
    },
    Op {
        id: "openBreakGlass",
        method: "POST",
        path: "/v1/break-glass",
        body: Some(
            r#"{"subject":"$subject","justification":"anaphylaxis in the gym: where is the epipen"}"#,
        ),
        need: Need::All(&[("health", "break_glass", "medical_emergency")]),
        cross: Cross::Ids("nurse"),
        ..BASE
    },
    Op {
        id: "overdueBreakGlass",
        path: "/v1/break-glass/overdue",
        need: Need::Everyone(
            "lists only the accesses the caller may review: empty for a role that reviews nothing",
        ),
        cross: Cross::List("director", "overdue"),
        ..BASE
    },
    Op {
        id: "reviewBreakGlass",
        method: "POST",
        path: "/v1/break-glass/$break_glass/review",
        body: Some(r#"{"note":"checked with the nurse: justified"}"#),
        need: Need::All(&[("health", "approve", "medical_emergency")]),
        code: "not_approver",
        except: &[("nurse", Except::Code("self_approval"))],
        cross: Cross::Ids("director"),
        ..BASE
    },
    Op {
        id: "withdrawConsent",
        method: "POST",
        path: "/v1/consents/$consent/withdraw",
        body: Some("{}"),
        need: Need::All(CONSENT_HEALTH),
        cross: Cross::Ids("privacy_officer"),
        ..BASE
    },
    Op {
        id: "verifyAudit",
        path: "/v1/audit/verify",
        need: Need::All(AUDIT_READ),
        code: "not_auditor",
        cross: Cross::NotApplicable(
            "takes and finds no id: the answer is the chain's integrity and counts",
        ),
        ..BASE
    },
];

/// The dev principals of school-1, as the harness names them, with their policy role.
const DEV: [(&str, &str); 7] = [
    ("director", "director"),
    ("nurse", "nurse"),
    ("admissions", "app_admissions"),
    ("privacy", "privacy_officer"),
    ("teacher", "teacher"),
    ("general_director", "general_director"),
    ("auditor", "auditor"),
];

/// The school-2 principals made for the cross-school calls.
const SCHOOL2: [(&str, Role); 5] = [
    ("director", Role::Director),
    ("nurse", Role::Nurse),
    ("admissions", Role::Admissions),
    ("privacy_officer", Role::PrivacyOfficer),
    ("auditor", Role::Auditor),
];

/// Evidence, not state: a denied call is audited (docs/API.md), and an audit checkpoint moves
/// the anchor in the key store.
const AUDIT_TABLES: [&str; 4] = [
    "audit_log",
    "audit_head",
    "audit_checkpoints",
    "audit_anchor",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

// ----- policy.csv, read independently of the vault ----------------------------------------------

struct Grants {
    p: Vec<[String; 5]>,
    g: Vec<(String, String)>,
}

impl Grants {
    fn load() -> Grants {
        let text = std::fs::read_to_string(repo().join("policies/policy.csv")).unwrap();
        let (mut p, mut g) = (Vec::new(), Vec::new());
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<String> = line.split(',').map(|x| x.trim().to_owned()).collect();
            match f[0].as_str() {
                "p" => {
                    assert_eq!(f.len(), 6, "{line}");
                    // The derivation below ignores schools: every grant is for every school.
                    assert_eq!(f[2], "*", "a school-specific grant: {line}");
                    p.push([
                        f[1].clone(),
                        f[2].clone(),
                        f[3].clone(),
                        f[4].clone(),
                        f[5].clone(),
                    ]);
                }
                "g" => {
                    assert_eq!(f.len(), 3, "{line}");
                    g.push((f[1].clone(), f[2].clone()));
                }
                other => panic!("unknown policy line kind {other}: {line}"),
            }
        }
        assert!(p.len() > 50, "policy.csv read");
        Grants { p, g }
    }

    /// The role and every role it inherits.
    fn roles(&self, role: &str) -> BTreeSet<String> {
        let mut out = BTreeSet::from([role.to_owned()]);
        loop {
            let more: Vec<String> = self
                .g
                .iter()
                .filter(|(c, parent)| out.contains(c) && !out.contains(parent))
                .map(|(_, parent)| parent.clone())
                .collect();
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }

    fn granted(&self, role: &str, (cat, act, pur): Grant) -> bool {
        let roles = self.roles(role);
        self.p.iter().any(|[sub, _, c, a, p]| {
            roles.contains(sub) && (c == "*" || c == cat) && a == act && (p == "*" || p == pur)
        })
    }

    /// `Ok` if the role passes the row's role check, else the code it must be refused with.
    fn answer(&self, op: &Op, name: &str, role: &str) -> Result<(), &'static str> {
        if let Some((_, e)) = op.except.iter().find(|(n, _)| *n == name) {
            return match e {
                Except::Code(c) => Err(c),
                Except::Allowed(_) => Ok(()),
            };
        }
        let ok = match op.need {
            Need::All(gs) => gs.iter().all(|g| self.granted(role, *g)),
            Need::Any(gs) => gs.iter().any(|g| self.granted(role, *g)),
            Need::Everyone(_) => true,
        };
        if ok { Ok(()) } else { Err(op.code) }
    }
}

// ----- the document against the table -----------------------------------------------------------

fn check_table_against_document() {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join("docs/openapi.json")).unwrap())
            .unwrap();
    let mut ops: BTreeMap<String, Value> = BTreeMap::new();
    let mut problems = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let methods = [
            "get", "put", "post", "delete", "options", "head", "patch", "trace",
        ];
        for (m, o) in item.as_object().unwrap() {
            if !methods.contains(&m.as_str()) {
                continue;
            }
            if !path.starts_with("/v1/") {
                if !NOT_V1.contains(&path.as_str()) {
                    problems.push(format!("{} {path}: outside /v1 and not listed", m));
                }
                continue;
            }
            let Some(id) = o["operationId"].as_str() else {
                problems.push(format!("{} {path}: no operationId", m.to_uppercase()));
                continue;
            };
            let mut o = o.clone();
            o["x-method"] = json!(m.to_uppercase());
            o["x-path"] = json!(path);
            if ops.insert(id.to_owned(), o).is_some() {
                problems.push(format!("operationId {id} twice"));
            }
        }
    }
    let rows: BTreeSet<&str> = TABLE.iter().map(|o| o.id).collect();
    assert_eq!(rows.len(), TABLE.len(), "an operationId has two rows");
    for id in ops.keys() {
        if !rows.contains(id.as_str()) && !EXEMPT.iter().any(|(e, _)| e == id) {
            problems.push(format!(
                "{id}: in the document, but the matrix has no row for it"
            ));
        }
    }
    for (e, _) in EXEMPT {
        if !ops.contains_key(*e) {
            problems.push(format!("{e}: exempt, but not in the document"));
        }
    }
    for op in TABLE {
        let Some(d) = ops.get(op.id) else {
            problems.push(format!(
                "{}: a row, but no such operation in the document",
                op.id
            ));
            continue;
        };
        let path = op
            .path
            .split('/')
            .map(|s| if s.starts_with('$') { "{id}" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        if d["x-method"] != op.method || d["x-path"] != path.as_str() {
            problems.push(format!(
                "{}: the row says {} {path}, the document {} {}",
                op.id, op.method, d["x-method"], d["x-path"]
            ));
        }
        let header = |name: &str| {
            d["parameters"].as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["in"] == "header" && p["name"].as_str() == Some(name))
            })
        };
        if header("X-Vault-Purpose") != op.purpose.is_some() {
            problems.push(format!(
                "{}: X-Vault-Purpose differs from the document",
                op.id
            ));
        }
        if header("If-Match") != op.if_match {
            problems.push(format!("{}: If-Match differs from the document", op.id));
        }
        if d.get("requestBody").is_some() != op.body.is_some() {
            problems.push(format!(
                "{}: the request body differs from the document",
                op.id
            ));
        }
        if let Some(b) = op.body {
            let filled = Ids::fake().fill(b);
            if serde_json::from_str::<Value>(&filled).is_err() {
                problems.push(format!("{}: the row's body is not JSON: {filled}", op.id));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "docs/openapi.json and the matrix disagree:\n{}",
        problems.join("\n")
    );
}

/// The rows must prove something, and say what the catalog says.
fn check_table_against_policy(grants: &Grants) {
    let catalog = vault_tests::catalog();
    let student = catalog
        .record_type(&RecordType::parse("student").unwrap())
        .unwrap();
    let cats: BTreeSet<&str> = student.fields().map(|f| f.category.as_str()).collect();
    let shred: BTreeSet<&str> = SHRED.iter().map(|g| g.0).collect();
    assert_eq!(
        cats, shred,
        "SHRED must list every category of a student record"
    );
    for op in TABLE {
        if let Need::Everyone(why) = op.need {
            assert!(!why.is_empty(), "{}: say why every role may call it", op.id);
            continue;
        }
        let refused = DEV
            .iter()
            .filter(|(n, r)| grants.answer(op, n, r).is_err())
            .count();
        assert!(
            refused > 0,
            "{}: no dev role is refused; mark it Everyone",
            op.id
        );
        assert!(refused < DEV.len(), "{}: every dev role is refused", op.id);
        if let Cross::Ids(role) | Cross::School(role) = op.cross {
            assert!(
                grants.answer(op, role, role).is_ok(),
                "{}: the school-2 {role} would not be allowed even in its own school",
                op.id
            );
        }
    }
}

// ----- ids ---------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Ids {
    subject: String,
    guardian: String,
    record: String,
    consent: String,
    request: String,
    break_glass: String,
    iin: String,
    school: String,
    expires: String,
    s2subject: String,
}

fn random_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

impl Ids {
    fn fake() -> Ids {
        Ids {
            subject: random_id(),
            guardian: random_id(),
            record: random_id(),
            consent: random_id(),
            request: random_id(),
            break_glass: random_id(),
            iin: make_iin("090915", 6),
            school: "school-77".into(),
            expires: (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
            s2subject: random_id(),
        }
    }

    /// The same call with every school-1 id replaced by one nobody holds.
    fn twin(&self) -> Ids {
        Ids {
            expires: self.expires.clone(),
            s2subject: self.s2subject.clone(),
            ..Ids::fake()
        }
    }

    fn pairs(&self) -> [(&'static str, &str); 10] {
        [
            ("$subject", &self.subject),
            ("$guardian", &self.guardian),
            ("$record", &self.record),
            ("$consent", &self.consent),
            ("$request", &self.request),
            ("$break_glass", &self.break_glass),
            ("$iin", &self.iin),
            ("$school", &self.school),
            ("$expires", &self.expires),
            ("$s2subject", &self.s2subject),
        ]
    }

    fn fill(&self, t: &str) -> String {
        let mut s = t.to_owned();
        for (k, v) in self.pairs() {
            s = s.replace(k, v);
        }
        assert!(!s.contains('$'), "an unknown placeholder in {t}");
        s
    }

    /// Masks the ids (and IIN and school) of the call in an answer.
    fn mask(&self, text: &str) -> String {
        let mut s = text.to_owned();
        for (k, v) in self.pairs() {
            if k != "$expires" {
                s = s.replace(v, &format!("<{}>", &k[1..]));
            }
        }
        s
    }
}

// ----- the stores, row by row --------------------------------------------------------------------

/// A `sqlite3` or `psql` session on one store, kept open for the whole test: a process per
/// query would cost more than the server's answers.
struct Db {
    pg: bool,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const END: &str = "__matrix_end__";

impl Db {
    fn open(pg: bool, target: &str) -> Db {
        let mut cmd = if pg {
            let mut c = Command::new("psql");
            c.args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                target,
            ]);
            c
        } else {
            let mut c = Command::new("sqlite3");
            c.args(["-readonly", "-batch", "-bail", target]);
            c
        };
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "`{}` is needed to compare the stores row by row ({e}): apt-get install {}",
                    if pg { "psql" } else { "sqlite3" },
                    if pg { "postgresql-client" } else { "sqlite3" }
                )
            });
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        Db {
            pg,
            child,
            stdin,
            stdout,
        }
    }

    /// The rows of one query, as the tool prints them.
    fn query(&mut self, sql: &str) -> String {
        let end = if self.pg { "\\echo" } else { ".print" };
        writeln!(self.stdin, "{sql};\n{end} {END}").unwrap();
        self.stdin.flush().unwrap();
        let mut out = String::new();
        loop {
            let mut line = String::new();
            let n = self.stdout.read_line(&mut line).unwrap();
            assert!(
                n > 0,
                "the query failed (its error is above): {}",
                sql.chars().take(200).collect::<String>()
            );
            if line.trim_end() == END {
                return out;
            }
            out.push_str(&line);
        }
    }

    /// One query rendering every row of every table but the audit log's as text, plus the
    /// table list, sorted.
    fn snapshot_sql(&mut self, store: &str) -> (String, Vec<String>) {
        let mut tables: BTreeMap<String, Vec<String>> = BTreeMap::new();
        match self.pg {
            false => {
                let rows = self.query(
                    "SELECT m.name || '|' || p.name FROM sqlite_master m \
                     JOIN pragma_table_info(m.name) p WHERE m.type = 'table' \
                     ORDER BY m.name, p.cid",
                );
                for l in rows.lines() {
                    let (t, c) = l.split_once('|').unwrap();
                    tables.entry(t.to_owned()).or_default().push(c.to_owned());
                }
            }
            true => {
                let rows = self.query(
                    "SELECT table_name FROM information_schema.tables \
                     WHERE table_schema = 'public' AND table_type = 'BASE TABLE' ORDER BY 1",
                );
                for t in rows.lines() {
                    tables.insert(t.to_owned(), Vec::new());
                }
            }
        }
        let all: Vec<String> = tables.keys().cloned().collect();
        let mut parts = Vec::new();
        for (t, cols) in &tables {
            // sqlite_sequence moves with every audit entry (AUTOINCREMENT); each table it counts
            // for is compared row by row anyway.
            if AUDIT_TABLES.contains(&t.as_str()) || t.starts_with("sqlite_") {
                continue;
            }
            assert!(
                t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{t}"
            );
            parts.push(match self.pg {
                false => format!(
                    "SELECT '{t}|' || {} FROM \"{t}\"",
                    cols.iter()
                        .map(|c| format!("quote(\"{c}\")"))
                        .collect::<Vec<_>>()
                        .join(" || '|' || ")
                ),
                true => format!("SELECT '{t}|' || snap_row::text FROM \"{t}\" AS snap_row"),
            });
        }
        parts.push(match self.pg {
            false => "SELECT 'schema|' || type || '|' || name FROM sqlite_master".to_owned(),
            true => "SELECT 'schema|' || table_name::text FROM information_schema.tables \
                          WHERE table_schema = 'public'"
                .to_owned(),
        });
        eprintln!("matrix: {store} store: {} tables compared", parts.len() - 1);
        (format!("{} ORDER BY 1", parts.join(" UNION ALL ")), all)
    }
}

struct Snapshots {
    stores: Vec<(&'static str, Db, String)>,
}

impl Snapshots {
    fn new(s: &Server) -> Snapshots {
        let dir = s.stores.dir.path().join("vault-data");
        let (data, keys) = match s.stores.backend {
            Backend::Sqlite => (
                Db::open(false, &dir.join("data.db").display().to_string()),
                Db::open(false, &dir.join("keys.db").display().to_string()),
            ),
            Backend::Postgres => (
                Db::open(true, &s.stores.config.data_url),
                Db::open(true, &s.stores.config.keys_url),
            ),
        };
        let mut stores = Vec::new();
        for (name, mut db) in [("data", data), ("key", keys)] {
            let (sql, tables) = db.snapshot_sql(name);
            let want: &[&str] = if name == "data" {
                &[
                    "subjects",
                    "records",
                    "record_fields",
                    "consents",
                    "access_requests",
                    "break_glass",
                    "principals",
                    "audit_log",
                    "audit_head",
                    "audit_checkpoints",
                ]
            } else {
                &["deks"]
            };
            for t in want {
                assert!(
                    tables.iter().any(|x| x == t),
                    "{name} store has no table {t}: {tables:?}"
                );
            }
            stores.push((name, db, sql));
        }
        Snapshots { stores }
    }

    fn take(&mut self) -> Vec<String> {
        self.stores
            .iter_mut()
            .map(|(_, db, sql)| db.query(sql))
            .collect()
    }

    /// What changed, line by line, shortened.
    fn diff(&self, before: &[String], after: &[String]) -> String {
        let mut out = Vec::new();
        for (((name, _, _), b), a) in self.stores.iter().zip(before).zip(after) {
            let bl: BTreeSet<&str> = b.lines().collect();
            let al: BTreeSet<&str> = a.lines().collect();
            let short = |l: &str| l.chars().take(160).collect::<String>();
            for l in bl.difference(&al).take(4) {
                out.push(format!("{name} store, gone or changed: {}", short(l)));
            }
            for l in al.difference(&bl).take(4) {
                out.push(format!("{name} store, new or changed: {}", short(l)));
            }
        }
        out.join("; ")
    }
}

// ----- calls and checks --------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    CrossSchool,
    WrongRole,
    Open,
}

struct Matrix<'a> {
    s: &'a Server,
    core: Vault,
    snaps: Snapshots,
    base: Vec<String>,
    /// School-1 subjects whose history must not gain entries.
    watched: Vec<SubjectId>,
    seen: i64,
    /// Principal ids of the dev roles, for the audit entries' actor.
    actors: BTreeMap<String, String>,
    failures: Vec<String>,
    calls: BTreeMap<&'static str, usize>,
    /// The victim's break-glass opened two days ago, overdue for review.
    overdue: String,
}

fn short(r: &Resp) -> String {
    format!(
        "{} {}",
        r.status,
        r.text().chars().take(300).collect::<String>()
    )
}

/// `Ok` if the answer is this problem.
fn is_problem(r: &Resp, status: u16, code: &str) -> Result<(), String> {
    let ct = r.headers.get("content-type").map(String::as_str);
    if r.status != status || ct != Some("application/problem+json") {
        return Err(short(r));
    }
    let j: Value = serde_json::from_slice(&r.body).map_err(|_| short(r))?;
    if j["code"] != code || j["status"] != status {
        return Err(short(r));
    }
    Ok(())
}

impl Matrix<'_> {
    fn send(&self, op: &Op, who: &str, ids: &Ids, path: &str, body: Option<&str>) -> Resp {
        let path = ids.fill(path);
        let body = body.map(|b| ids.fill(b));
        let mut h: Vec<(&str, &str)> = Vec::new();
        if body.is_some() {
            h.push(("Content-Type", "application/json"));
        }
        if let Some(p) = op.purpose {
            h.push(("X-Vault-Purpose", p));
        }
        if op.if_match {
            h.push(("If-Match", "\"v1\""));
        }
        self.s.call(
            op.method,
            &path,
            Some(who),
            &h,
            body.as_deref().map(str::as_bytes),
        )
    }

    fn fail(&mut self, msg: String) {
        eprintln!("matrix: FAILED {msg}");
        self.failures.push(msg);
    }

    /// After a call that must have changed nothing: the stores are as before, and the watched
    /// history gained nothing (cross-school) or only denied entries of `actor`.
    async fn unchanged(&mut self, what: &str, kind: Kind, actor: Option<&str>) {
        *self
            .calls
            .entry(match kind {
                Kind::CrossSchool => "cross-school",
                Kind::WrongRole => "wrong-role",
                Kind::Open => "open",
            })
            .or_default() += 1;
        let now = self.snaps.take();
        if now != self.base {
            let d = self.snaps.diff(&self.base, &now);
            self.fail(format!("{what}: a store changed: {d}"));
            self.base = now;
        }
        let mut new = Vec::new();
        for s in &self.watched {
            new.extend(
                self.core
                    .access_history(*s)
                    .await
                    .unwrap()
                    .into_iter()
                    .filter(|e| e.seq > self.seen),
            );
        }
        if let Some(max) = new.iter().map(|e| e.seq).max() {
            self.seen = max;
        }
        let bad: Vec<String> = new
            .iter()
            .filter(|e| {
                kind != Kind::WrongRole
                    || e.outcome != "denied"
                    || actor.is_some_and(|a| e.actor != a)
            })
            .map(|e| format!("{} {} by {}", e.action, e.outcome, e.actor))
            .collect();
        if kind != Kind::Open && !bad.is_empty() {
            self.fail(format!(
                "{what}: the victim's history gained {}",
                bad.join(", ")
            ));
        }
    }

    /// Twice from school-2, with real and with random ids: the same refusal, the same words.
    async fn cross_pair(
        &mut self,
        op: &Op,
        label: &str,
        token: &str,
        (path, body): (&str, Option<&str>),
        ids: &Ids,
        (status, code): (u16, &str),
    ) -> bool {
        let twin = ids.twin();
        let real = self.send(op, token, ids, path, body);
        self.unchanged(&format!("{label} (real ids)"), Kind::CrossSchool, None)
            .await;
        let fake = self.send(op, token, &twin, path, body);
        self.unchanged(&format!("{label} (random ids)"), Kind::CrossSchool, None)
            .await;
        let mut ok = true;
        if let Err(got) = is_problem(&real, status, code) {
            self.fail(format!(
                "{label} with the victim's ids: expected {status} {code}, got {got}"
            ));
            ok = false;
        }
        if let Err(got) = is_problem(&fake, status, code) {
            self.fail(format!(
                "{label} with random ids: expected {status} {code}, got {got}"
            ));
            ok = false;
        }
        let (a, b) = (ids.mask(&real.text()), twin.mask(&fake.text()));
        if real.status != fake.status || a != b {
            self.fail(format!(
                "{label}: real and random ids are told apart: {} {a} vs {} {b}",
                real.status, fake.status
            ));
            ok = false;
        }
        ok
    }

    async fn list_check(
        &mut self,
        op: &Op,
        role: &str,
        key: &str,
        s2: &BTreeMap<&str, String>,
        ids: &Ids,
    ) -> bool {
        let mut ok = true;
        let victim_item = if key == "requests" {
            ids.request.clone()
        } else {
            self.overdue.clone()
        };
        let victim_item = victim_item.as_str();
        // School-1's own sees the victim's item: the list shows what it should.
        let mine = self.send(op, role, ids, op.path, None);
        self.unchanged(&format!("{} as school-1 {role}", op.id), Kind::Open, None)
            .await;
        let has = |r: &Resp, id: &str| {
            r.json()[key]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["id"] == id))
        };
        if mine.status != 200 || !has(&mine, victim_item) {
            self.fail(format!(
                "{} as school-1 {role}: expected its item {victim_item}, got {}",
                op.id,
                short(&mine)
            ));
            ok = false;
        }
        let theirs = self.send(op, &s2[role], ids, op.path, None);
        self.unchanged(
            &format!("{} as school-2 {role}", op.id),
            Kind::CrossSchool,
            None,
        )
        .await;
        let items = if theirs.status == 200 {
            theirs.json()[key].as_array().cloned()
        } else {
            None
        };
        match items {
            None => {
                self.fail(format!(
                    "{} as school-2 {role}: expected 200 with {key}, got {}",
                    op.id,
                    short(&theirs)
                ));
                ok = false;
            }
            Some(items) => {
                let leaked: Vec<&Value> =
                    items.iter().filter(|x| x["school"] != "school-2").collect();
                if !leaked.is_empty() {
                    self.fail(format!(
                        "{} as school-2 {role}: sees school-1's {leaked:?}",
                        op.id
                    ));
                    ok = false;
                }
                if items.is_empty() {
                    self.fail(format!(
                        "{} as school-2 {role}: not even its own school's item",
                        op.id
                    ));
                    ok = false;
                }
            }
        }
        ok
    }
}

fn created(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 201, "{what}: {}", r.text());
    r.json()
}

/// A break-glass opened 48 hours ago (a vault over the same stores, its clock set back), so it
/// is overdue for review.
async fn overdue_break_glass(s: &Server, token: &str, subject: &str) -> String {
    let data = s.stores.dir.path().join("vault-data");
    let config = match s.stores.backend {
        Backend::Sqlite => StoreConfig::sqlite_dir(&data).unwrap(),
        Backend::Postgres => s.stores.config.clone(),
    };
    let clock = Arc::new(ManualClock::new(
        chrono::Utc::now() - chrono::Duration::hours(48),
    ));
    let vault = Vault::open_with_clock(
        Stores::open(&config).await.unwrap(),
        policy().await,
        Unlock::identity_file(&data.join("dev-custodian.txt")).unwrap(),
        clock,
    )
    .await
    .unwrap();
    let p = vault.authenticate(&BearerToken::new(token)).await.unwrap();
    vault
        .session(p)
        .open_break_glass(
            SubjectId::parse(subject).unwrap(),
            "seizure on the school trip, two days ago",
        )
        .await
        .unwrap()
        .id
        .to_string()
}

async fn matrix(backend: Backend) {
    let started = std::time::Instant::now();
    check_table_against_document();
    let grants = Grants::load();
    check_table_against_policy(&grants);

    let mut s = start(backend).await;
    let core = s.core().await;

    // ----- school-1: the victim and everything about it, as the dev principals -----
    let iin = make_iin("150304", 5);
    let subject = created(
        &s.post(
            "/v1/subjects",
            "admissions",
            None,
            json!({"school": "school-1", "kind": "student", "iin": iin}),
        ),
        "victim",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let guardian = created(
        &s.post(
            "/v1/subjects",
            "admissions",
            None,
            json!({"school": "school-1", "kind": "guardian"}),
        ),
        "guardian",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let consent = created(
        &s.post(
            &format!("/v1/subjects/{subject}/consents"),
            "admissions",
            None,
            json!({"given_by": "guardian", "guardian": guardian, "method": "paper",
                   "evidence_ref": "scan 2026/77", "text_version": "v3", "categories": ["health"],
                   "third_party": false, "cross_border": false, "publication": false}),
        ),
        "consent",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rec = s.post(
        &format!("/v1/subjects/{subject}/records"),
        "admissions",
        Some(LA),
        json!({"record_type": "student", "fields": {
            "full_name": "MATRIX-Aigerim Bekova", "address": "MATRIX-Abay 10, Almaty",
            "special_educational_needs": "MATRIX-hearing aid"}}),
    );
    assert_eq!(rec.headers.get("etag").map(String::as_str), Some("\"v1\""));
    let record = created(&rec, "record")["id"].as_str().unwrap().to_owned();
    let request = created(
        &s.post(
            "/v1/access-requests",
            "nurse",
            None,
            json!({"subject": subject, "record": record, "categories": ["health"],
                   "purpose": "education", "justification": "hearing support plan for the new term"}),
        ),
        "access request",
    );
    assert_eq!(request["status"], "pending");
    let request = request["id"].as_str().unwrap().to_owned();
    let break_glass = created(
        &s.post(
            "/v1/break-glass",
            "nurse",
            None,
            json!({"subject": subject, "justification": "anaphylaxis in the gym: epipen given"}),
        ),
        "break-glass",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // ----- school-2: a principal per role, and its own student, request and break-glass -----
    let school2 = Scope::School(SchoolId::parse("school-2").unwrap());
    let mut s2: BTreeMap<&str, String> = BTreeMap::new();
    for (name, role) in SCHOOL2 {
        let (_, token) = core
            .create_principal(&format!("school-2 {name}"), &[(school2.clone(), role)])
            .await
            .unwrap();
        s2.insert(name, token.expose().to_owned());
        s.secrets.push(token.expose().to_owned());
    }
    let s2subject = created(
        &s.post(
            "/v1/subjects",
            &s2["admissions"],
            None,
            json!({"school": "school-2", "kind": "student"}),
        ),
        "school-2 student",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    created(
        &s.post(
            "/v1/access-requests",
            &s2["nurse"],
            None,
            json!({"subject": s2subject, "categories": ["health"], "purpose": "education",
                   "justification": "school-2's own request for a support plan"}),
        ),
        "school-2 access request",
    );
    let overdue = overdue_break_glass(&s, &s.tokens["nurse"], &subject).await;
    overdue_break_glass(&s, &s2["nurse"], &s2subject).await;

    let ids = Ids {
        subject: subject.clone(),
        guardian: guardian.clone(),
        record,
        consent,
        request,
        break_glass,
        iin: iin.clone(),
        school: "school-1".into(),
        expires: (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339(),
        s2subject,
    };
    // A second school-1 student: one record shredded, another kept, then blocked.
    let b = created(
        &s.post(
            "/v1/subjects",
            "admissions",
            None,
            json!({"school": "school-1", "kind": "student"}),
        ),
        "blocked student",
    )["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut b_records = Vec::new();
    for name in ["MATRIX-to be shredded", "MATRIX-Daniyar Omarov"] {
        let r = s.post(
            &format!("/v1/subjects/{b}/records"),
            "admissions",
            Some(LA),
            json!({"record_type": "student", "fields": {"full_name": name,
                   "address": "MATRIX-Satpayev 5"}}),
        );
        b_records.push(created(&r, "record")["id"].as_str().unwrap().to_owned());
    }
    let shred = s.call(
        "DELETE",
        &format!("/v1/records/{}", b_records[0]),
        Some("privacy"),
        &[("X-Vault-Purpose", LA)],
        None,
    );
    assert_eq!(shred.status, 200, "{}", shred.text());
    let block = s.post(
        &format!("/v1/subjects/{b}/block"),
        "privacy",
        None,
        json!({}),
    );
    assert_eq!(block.status, 200, "{}", block.text());
    let blocked = Ids {
        subject: b.clone(),
        record: b_records[1].clone(),
        ..ids.clone()
    };
    let shredded = Ids {
        subject: b.clone(),
        record: b_records[0].clone(),
        ..ids.clone()
    };
    let mut actors = BTreeMap::new();
    for (name, _) in DEV {
        let me = s.get("/v1/me", name, None);
        assert_eq!(me.status, 200, "{}", me.text());
        actors.insert(
            name.to_owned(),
            me.json()["id"].as_str().unwrap().to_owned(),
        );
    }

    let mut snaps = Snapshots::new(&s);
    let base = snaps.take();
    let watched = vec![
        SubjectId::parse(&subject).unwrap(),
        SubjectId::parse(&guardian).unwrap(),
        SubjectId::parse(&b).unwrap(),
    ];
    let mut seen = 0;
    for w in &watched {
        for e in core.access_history(*w).await.unwrap() {
            seen = seen.max(e.seq);
        }
    }
    let mut m = Matrix {
        s: &s,
        core,
        snaps,
        base,
        watched,
        seen,
        actors,
        failures: Vec::new(),
        calls: BTreeMap::new(),
        overdue: overdue.clone(),
    };

    // ----- the matrix -----
    let mut report = Vec::new();
    for op in TABLE {
        let failed_before = m.failures.len();
        let cross = match op.cross {
            Cross::Ids(role) => {
                let n = if op.id == "findSubject" { "IIN" } else { "ids" };
                let before = m.calls.get("cross-school").copied().unwrap_or(0);
                let mut ok = true;
                let mentions = |p: &str| {
                    op.path.contains(p)
                        || op.body.is_some_and(|b| b.contains(p))
                        || op
                            .mixed
                            .is_some_and(|(mp, mb)| mp.contains(p) || mb.contains(p))
                };
                // The victim; then a blocked subject and its record, and a shredded record,
                // wherever the call names a subject or a record: neither state shows.
                let mut sets = vec![("victim", &ids)];
                if mentions("$subject") || mentions("$record") {
                    sets.push(("blocked subject", &blocked));
                }
                if mentions("$record") {
                    sets.push(("shredded record", &shredded));
                }
                for (what, set) in sets {
                    ok &= m
                        .cross_pair(
                            op,
                            &format!("{} as school-2 {role}, {what}", op.id),
                            &s2[role],
                            (op.path, op.body),
                            set,
                            (404, "not_found"),
                        )
                        .await;
                    if let Some((path, body)) = op.mixed {
                        ok &= m
                            .cross_pair(
                                op,
                                &format!("{} as school-2 {role} on its own subject, {what}", op.id),
                                &s2[role],
                                (path, Some(body)),
                                set,
                                (404, "not_found"),
                            )
                            .await;
                    }
                }
                let calls = m.calls.get("cross-school").copied().unwrap_or(0) - before;
                format!(
                    "cross-school {role} {} ({calls} calls, school-1's {n} vs random: 404 not_found)",
                    if ok { "ok" } else { "FAILED" }
                )
            }
            Cross::School(role) => {
                let ok = m
                    .cross_pair(
                        op,
                        &format!("{} as school-2 {role}", op.id),
                        &s2[role],
                        (op.path, op.body),
                        &ids,
                        (403, "no_role_in_school"),
                    )
                    .await;
                format!(
                    "cross-school {role} {} (school-1 vs a school that does not exist: 403 no_role_in_school)",
                    if ok { "ok" } else { "FAILED" }
                )
            }
            Cross::List(role, key) => {
                let ok = m.list_check(op, role, key, &s2, &ids).await;
                format!(
                    "cross-school {role} {} (school-2 sees none of school-1's {key}; school-1 sees the victim's)",
                    if ok { "ok" } else { "FAILED" }
                )
            }
            Cross::NotApplicable(why) => format!("cross-school n/a ({why})"),
        };
        let wrong = match op.need {
            Need::Everyone(why) => {
                // Cannot be refused for a role; each dev role gets a 200 and changes nothing.
                let mut bad = Vec::new();
                for (name, _) in DEV {
                    let r = m.send(op, name, &ids, op.path, op.body);
                    m.unchanged(&format!("{} as {name}", op.id), Kind::Open, None)
                        .await;
                    if r.status != 200 {
                        m.fail(format!(
                            "{} as {name}: expected 200, got {}",
                            op.id,
                            short(&r)
                        ));
                        bad.push(name);
                    }
                }
                format!(
                    "wrong-role n/a, open to every role ({why}): {}",
                    if bad.is_empty() {
                        format!("{} × 200 ok", DEV.len())
                    } else {
                        format!("FAILED for {}", bad.join(","))
                    }
                )
            }
            _ => {
                let mut parts = Vec::new();
                for (name, role) in DEV {
                    if let Some((_, Except::Allowed(why))) =
                        op.except.iter().find(|(n, _)| *n == name)
                    {
                        parts.push(format!("{name} allowed ({why})"));
                    }
                    let Err(code) = grants.answer(op, name, role) else {
                        continue;
                    };
                    let r = m.send(op, name, &ids, op.path, op.body);
                    let actor = m.actors[name].clone();
                    m.unchanged(
                        &format!("{} as {name}", op.id),
                        Kind::WrongRole,
                        Some(&actor),
                    )
                    .await;
                    match is_problem(&r, 403, code) {
                        Ok(()) => parts.push(format!("{name} ok (403 {code})")),
                        Err(got) => {
                            m.fail(format!(
                                "{} as {name} (wrong role): expected 403 {code}, got {got}",
                                op.id
                            ));
                            parts.push(format!("{name} FAILED"));
                        }
                    }
                }
                format!("wrong-role {}", parts.join(", "))
            }
        };
        let verdict = if m.failures.len() == failed_before {
            "ok"
        } else {
            "FAILED"
        };
        report.push(format!("matrix: {} {verdict}: {cross}; {wrong}", op.id));
    }
    // A blocked subject's record, read by a role that may open none of it: refused like any
    // other record, not answered with fields sealed as "blocked".
    let op = TABLE.iter().find(|o| o.id == "getRecord").unwrap();
    let mut parts = Vec::new();
    for (name, role) in DEV {
        let Err(code) = grants.answer(op, name, role) else {
            continue;
        };
        let r = m.send(op, name, &blocked, op.path, None);
        let actor = m.actors[name].clone();
        m.unchanged(
            &format!("getRecord of a blocked subject as {name}"),
            Kind::WrongRole,
            Some(&actor),
        )
        .await;
        match is_problem(&r, 403, code) {
            Ok(()) => parts.push(format!("{name} ok (403 {code})")),
            Err(got) => {
                m.fail(format!(
                    "getRecord of a blocked subject as {name} (wrong role): expected 403 {code}, got {got}"
                ));
                parts.push(format!("{name} FAILED"));
            }
        }
    }
    report.push(format!(
        "matrix: getRecord of a blocked subject: wrong-role {}",
        parts.join(", ")
    ));
    for (e, why) in EXEMPT {
        report.push(format!("matrix: {e} exempt ({why})"));
    }

    // The chain is intact after all those refusals, and the back-dated break-glass is the one
    // the school-1 director saw as overdue.
    let v = s.get("/v1/audit/verify", "auditor", None);
    assert_eq!(v.status, 200, "{}", v.text());
    assert_eq!(v.json()["intact"], true, "{}", v.text());
    let over = s.get("/v1/break-glass/overdue", "director", None).json();
    assert!(
        over["overdue"]
            .as_array()
            .unwrap()
            .iter()
            .any(|b| b["id"] == overdue.as_str())
    );

    let failures = std::mem::take(&mut m.failures);
    let calls = std::mem::take(&mut m.calls);
    drop(m);
    let mut err = std::io::stderr().lock();
    for l in &report {
        writeln!(err, "{l}").unwrap();
    }
    writeln!(
        err,
        "matrix ({backend:?}): {} operations ({} exempt), {} cross-school calls, {} wrong-role calls, {} open calls, {} failures, {:.1} s",
        TABLE.len() + EXEMPT.len(),
        EXEMPT.len(),
        calls.get("cross-school").unwrap_or(&0),
        calls.get("wrong-role").unwrap_or(&0),
        calls.get("open").unwrap_or(&0),
        failures.len(),
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    drop(err);
    s.stop(&[&iin, "MATRIX-hearing aid", "MATRIX-Abay 10"]);
    assert!(
        failures.is_empty(),
        "the access boundary failed {} times:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
