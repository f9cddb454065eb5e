//! Response bodies: one typed struct per JSON shape the API answers, built from the core's
//! types, and the 200/201 and ETag helpers. A body is a type, not a `json!` literal, so the
//! shape has one definition (the groundwork for an OpenAPI document generated from them).

use std::collections::BTreeMap;

use actix_web::HttpResponse;
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use serde_json::Value;
use vault_core::{
    AccessRequest, AuditRecord, BreakGlass, Consent, ConsentGiver, FieldView, RecordMeta,
    RecordView, Subject,
};

use crate::telemetry::Metrics;

#[derive(Serialize)]
pub(super) struct SubjectOut {
    id: String,
    school: String,
    kind: &'static str,
    created_at: DateTime<Utc>,
    left_at: Option<DateTime<Utc>>,
}

pub(super) fn subject_out(s: &Subject) -> SubjectOut {
    SubjectOut {
        id: s.id.to_string(),
        school: s.school.as_str().to_owned(),
        kind: s.kind.as_str(),
        created_at: s.created_at,
        left_at: s.left_at,
    }
}

#[derive(Serialize)]
pub(super) struct MetaOut {
    id: String,
    subject: String,
    school: String,
    record_type: String,
    version: u64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

pub(super) fn meta_out(m: &RecordMeta) -> MetaOut {
    MetaOut {
        id: m.id.to_string(),
        subject: m.subject.to_string(),
        school: m.school.as_str().to_owned(),
        record_type: m.record_type.as_str().to_owned(),
        version: m.version,
        created_at: m.created_at,
        updated_at: m.updated_at,
    }
}

pub(super) fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

#[derive(Serialize)]
pub(super) struct RecordOut {
    #[serde(flatten)]
    meta: MetaOut,
    fields: BTreeMap<String, FieldOut>,
}

/// A field as a read answers it: its value, or sealed with the reason.
#[derive(Serialize)]
#[serde(untagged)]
enum FieldOut {
    Open {
        category: String,
        value: Value,
    },
    Sealed {
        category: String,
        sealed: bool,
        reason: &'static str,
        detail: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        open_with: Option<OpenWith>,
    },
}

/// The access request that would open a field sealed for want of approval.
#[derive(Serialize)]
struct OpenWith {
    request: &'static str,
    body: OpenWithBody,
    approver: &'static str,
}

#[derive(Serialize)]
struct OpenWithBody {
    subject: String,
    record: String,
    categories: Vec<String>,
}

pub(super) fn record_out(metrics: &Metrics, v: &RecordView) -> RecordOut {
    let mut fields = BTreeMap::new();
    for (name, f) in &v.fields {
        let out = match f {
            FieldView::Open { category, value } => {
                metrics.field_decision("open");
                FieldOut::Open {
                    category: category.as_str().to_owned(),
                    value: value.to_json(),
                }
            }
            FieldView::Sealed { category, reason } => {
                metrics.field_decision(reason.as_str());
                let open_with = (reason.as_str() == "approval_required").then(|| OpenWith {
                    request: "POST /v1/access-requests",
                    body: OpenWithBody {
                        subject: v.meta.subject.to_string(),
                        record: v.meta.id.to_string(),
                        categories: vec![category.as_str().to_owned()],
                    },
                    approver: "a director of this school or the general director",
                });
                FieldOut::Sealed {
                    category: category.as_str().to_owned(),
                    sealed: true,
                    reason: reason.as_str(),
                    detail: reason.describe(),
                    open_with,
                }
            }
        };
        fields.insert(name.to_string(), out);
    }
    RecordOut {
        meta: meta_out(&v.meta),
        fields,
    }
}

#[derive(Serialize)]
pub(super) struct RequestOut {
    id: String,
    requester: String,
    school: String,
    subject: String,
    record: Option<String>,
    categories: Vec<String>,
    purpose: String,
    action: String,
    justification: String,
    status: String,
    created_at: DateTime<Utc>,
    decided_by: Option<String>,
    decided_at: Option<DateTime<Utc>>,
    reason: Option<String>,
    expires_at: Option<DateTime<Utc>>,
    uses_left: Option<u32>,
}

pub(super) fn request_out(r: &AccessRequest) -> RequestOut {
    RequestOut {
        id: r.id.to_string(),
        requester: r.requester.to_string(),
        school: r.school.as_str().to_owned(),
        subject: r.subject.to_string(),
        record: r.record.map(|x| x.to_string()),
        categories: r.categories.iter().map(|c| c.as_str().to_owned()).collect(),
        purpose: r.purpose.as_str().to_owned(),
        action: r.act.as_str().to_owned(),
        justification: r.justification.clone(),
        status: r.status.as_str().to_owned(),
        created_at: r.created_at,
        decided_by: r.decided_by.map(|x| x.to_string()),
        decided_at: r.decided_at,
        reason: r.reason.clone(),
        expires_at: r.expires_at,
        uses_left: r.uses_left,
    }
}

#[derive(Serialize)]
pub(super) struct BreakGlassOut {
    id: String,
    principal: String,
    school: String,
    subject: String,
    justification: String,
    opened_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    reviewed_by: Option<String>,
    reviewed_at: Option<DateTime<Utc>>,
    review_note: Option<String>,
}

pub(super) fn break_glass_out(b: &BreakGlass) -> BreakGlassOut {
    BreakGlassOut {
        id: b.id.to_string(),
        principal: b.principal.to_string(),
        school: b.school.as_str().to_owned(),
        subject: b.subject.to_string(),
        justification: b.justification.clone(),
        opened_at: b.opened_at,
        expires_at: b.expires_at,
        reviewed_by: b.reviewed_by.map(|x| x.to_string()),
        reviewed_at: b.reviewed_at,
        review_note: b.review_note.clone(),
    }
}

#[derive(Serialize)]
pub(super) struct ConsentOut {
    id: String,
    subject: String,
    operator: String,
    operator_bin: String,
    given_by: &'static str,
    guardian: Option<String>,
    method: String,
    evidence_ref: String,
    text_version: String,
    categories: Vec<String>,
    third_party: bool,
    cross_border: bool,
    publication: bool,
    given_at: DateTime<Utc>,
    term_until: Option<DateTime<Utc>>,
    withdrawn_at: Option<DateTime<Utc>>,
    withdrawal_deadline: Option<NaiveDate>,
    refusal_reason: Option<String>,
}

pub(super) fn consent_out(c: &Consent) -> ConsentOut {
    let (given_by, guardian) = match &c.given_by {
        ConsentGiver::Guardian(g) => ("guardian", Some(g.to_string())),
        ConsentGiver::Subject { .. } => ("subject", None),
    };
    ConsentOut {
        id: c.id.to_string(),
        subject: c.subject.to_string(),
        operator: c.operator.clone(),
        operator_bin: c.operator_bin.clone(),
        given_by,
        guardian,
        method: c.method.clone(),
        evidence_ref: c.evidence_ref.clone(),
        text_version: c.text_version.clone(),
        categories: c.categories.iter().map(|x| x.as_str().to_owned()).collect(),
        third_party: c.third_party,
        cross_border: c.cross_border,
        publication: c.publication,
        given_at: c.given_at,
        term_until: c.term_until,
        withdrawn_at: c.withdrawn_at,
        withdrawal_deadline: c.withdrawal_deadline,
        refusal_reason: c.refusal_reason.clone(),
    }
}

#[derive(Serialize)]
pub(super) struct AuditOut {
    seq: i64,
    at: DateTime<Utc>,
    actor: String,
    action: String,
    school: Option<String>,
    subject: Option<String>,
    record: Option<String>,
    categories: Vec<String>,
    purpose: Option<String>,
    outcome: String,
    reason: Option<String>,
}

pub(super) fn audit_out(a: &AuditRecord) -> AuditOut {
    AuditOut {
        seq: a.seq,
        at: a.at,
        actor: a.actor.clone(),
        action: a.action.clone(),
        school: a.school.clone(),
        subject: a.subject.clone(),
        record: a.record.clone(),
        categories: a.categories.clone(),
        purpose: a.purpose.clone(),
        outcome: a.outcome.clone(),
        reason: a.reason.clone(),
    }
}

pub(super) fn ok(v: impl Serialize) -> HttpResponse {
    HttpResponse::Ok().json(v)
}

pub(super) fn created(v: impl Serialize) -> HttpResponse {
    HttpResponse::Created().json(v)
}

/// `{"requests": [...]}`, `{"records": [...]}` and the other lists: one named array.
#[derive(Serialize)]
pub(super) struct RequestList {
    pub(super) requests: Vec<RequestOut>,
}

#[derive(Serialize)]
pub(super) struct BreakGlassList {
    pub(super) overdue: Vec<BreakGlassOut>,
}

#[derive(Serialize)]
pub(super) struct ConsentList {
    pub(super) consents: Vec<ConsentOut>,
}

#[derive(Serialize)]
pub(super) struct RecordList {
    pub(super) records: Vec<MetaOut>,
}

#[derive(Serialize)]
pub(super) struct AuditList {
    pub(super) entries: Vec<AuditOut>,
}

/// Everything held about a subject (Law 94-V Art. 24).
#[derive(Serialize)]
pub(super) struct Export {
    pub(super) subject: SubjectOut,
    pub(super) records: Vec<RecordOut>,
    pub(super) consents: Vec<ConsentOut>,
    pub(super) access_history: Vec<AuditOut>,
}

#[derive(Serialize)]
pub(super) struct LegalGroundOut {
    pub(super) subject: String,
    pub(super) category: String,
    pub(super) ground: String,
}

#[derive(Serialize)]
pub(super) struct Blocking {
    pub(super) subject: String,
    pub(super) blocked: bool,
}

#[derive(Serialize)]
pub(super) struct ShredOut {
    pub(super) record: String,
    pub(super) categories: Vec<String>,
    pub(super) keys_destroyed: u64,
    pub(super) fields_deleted: u64,
}

#[derive(Serialize)]
pub(super) struct AuditVerification {
    pub(super) entries: u64,
    pub(super) checkpoints: u64,
    pub(super) intact: bool,
    pub(super) problem: Option<String>,
}

#[derive(Serialize)]
pub(super) struct MeOut {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) roles: Vec<RoleOut>,
}

#[derive(Serialize)]
pub(super) struct RoleOut {
    pub(super) school: String,
    pub(super) role: String,
}

/// Whether the server is sealed and, while it is, the share numbers given so far.
#[derive(Serialize)]
pub(super) struct UnsealStatus {
    pub(super) sealed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) threshold: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) custodians: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) given: Option<Vec<u8>>,
}
