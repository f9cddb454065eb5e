//! Response bodies: the JSON shape of each core type, and the 200/201 and ETag helpers.

use actix_web::HttpResponse;
use serde_json::{Value, json};
use vault_core::{
    AccessRequest, AuditRecord, BreakGlass, Consent, ConsentGiver, FieldView, RecordMeta,
    RecordView, Subject,
};

use crate::telemetry::Metrics;

pub(super) fn subject_json(s: &Subject) -> Value {
    json!({ "id": s.id.to_string(), "school": s.school.as_str(), "kind": s.kind.as_str(),
            "created_at": s.created_at, "left_at": s.left_at })
}

pub(super) fn meta_json(m: &RecordMeta) -> Value {
    json!({ "id": m.id.to_string(), "subject": m.subject.to_string(), "school": m.school.as_str(),
            "record_type": m.record_type.as_str(), "version": m.version,
            "created_at": m.created_at, "updated_at": m.updated_at })
}

pub(super) fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

pub(super) fn record_json(metrics: &Metrics, v: &RecordView) -> Value {
    let mut fields = serde_json::Map::new();
    for (name, f) in &v.fields {
        let out = match f {
            FieldView::Open { category, value } => {
                metrics.field_decision("open");
                json!({ "category": category.as_str(), "value": value.to_json() })
            }
            FieldView::Sealed { category, reason } => {
                metrics.field_decision(reason.as_str());
                let mut o = json!({ "category": category.as_str(), "sealed": true,
                                    "reason": reason.as_str(), "detail": reason.describe() });
                if reason.as_str() == "approval_required" {
                    o["open_with"] = json!({
                        "request": "POST /v1/access-requests",
                        "body": { "subject": v.meta.subject.to_string(), "record": v.meta.id.to_string(),
                                  "categories": [category.as_str()] },
                        "approver": "a director of this school or the general director",
                    });
                }
                o
            }
        };
        fields.insert(name.to_string(), out);
    }
    let mut j = meta_json(&v.meta);
    j["fields"] = Value::Object(fields);
    j
}

pub(super) fn request_json(r: &AccessRequest) -> Value {
    json!({ "id": r.id.to_string(), "requester": r.requester.to_string(), "school": r.school.as_str(),
            "subject": r.subject.to_string(), "record": r.record.map(|x| x.to_string()),
            "categories": r.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "purpose": r.purpose.as_str(), "action": r.act.as_str(),
            "justification": r.justification, "status": r.status.as_str(),
            "created_at": r.created_at, "decided_by": r.decided_by.map(|x| x.to_string()),
            "decided_at": r.decided_at, "reason": r.reason, "expires_at": r.expires_at,
            "uses_left": r.uses_left })
}

pub(super) fn break_glass_json(b: &BreakGlass) -> Value {
    json!({ "id": b.id.to_string(), "principal": b.principal.to_string(), "school": b.school.as_str(),
            "subject": b.subject.to_string(), "justification": b.justification,
            "opened_at": b.opened_at, "expires_at": b.expires_at,
            "reviewed_by": b.reviewed_by.map(|x| x.to_string()), "reviewed_at": b.reviewed_at,
            "review_note": b.review_note })
}

pub(super) fn consent_json(c: &Consent) -> Value {
    let (given_by, guardian) = match &c.given_by {
        ConsentGiver::Guardian(g) => ("guardian", Some(g.to_string())),
        ConsentGiver::Subject { .. } => ("subject", None),
    };
    json!({ "id": c.id.to_string(), "subject": c.subject.to_string(), "operator": c.operator,
            "operator_bin": c.operator_bin, "given_by": given_by, "guardian": guardian,
            "method": c.method, "evidence_ref": c.evidence_ref, "text_version": c.text_version,
            "categories": c.categories.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            "third_party": c.third_party, "cross_border": c.cross_border, "publication": c.publication,
            "given_at": c.given_at, "term_until": c.term_until, "withdrawn_at": c.withdrawn_at,
            "withdrawal_deadline": c.withdrawal_deadline, "refusal_reason": c.refusal_reason })
}

pub(super) fn audit_json(a: &AuditRecord) -> Value {
    json!({ "seq": a.seq, "at": a.at, "actor": a.actor, "action": a.action, "school": a.school,
            "subject": a.subject, "record": a.record, "categories": a.categories,
            "purpose": a.purpose, "outcome": a.outcome, "reason": a.reason })
}

pub(super) fn ok(v: Value) -> HttpResponse {
    HttpResponse::Ok().json(v)
}

pub(super) fn created(v: Value) -> HttpResponse {
    HttpResponse::Created().json(v)
}
