//! `/v1/subjects/{id}/records` and `/v1/records/{id}`: create, list, read, update, shred.

use std::collections::BTreeMap;

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::web;
use actix_web::{HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::Value;
use vault_core::{FieldChange, FieldName, FieldValue, RecordId, RecordType, SubjectId};

use super::auth::{Caller, Why, purposes};
use super::input::{json, parse};
use super::output::{RecordList, ShredOut, etag, meta_out, ok, record_out};
use super::{Res, State};
use crate::problem::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRecord {
    record_type: String,
    fields: BTreeMap<String, Value>,
    #[serde(default)]
    purposes: BTreeMap<String, String>,
}

impl CreateRecord {
    /// The record type and fields; the purposes are checked against the catalog by the handler.
    pub(super) fn domain(&self) -> Result<(RecordType, BTreeMap<FieldName, FieldValue>), ApiError> {
        let rt = parse(RecordType::parse(&self.record_type), "record_type")?;
        let mut fields = BTreeMap::new();
        for (k, v) in &self.fields {
            fields.insert(field_name(k)?, FieldValue::from_json(v));
        }
        Ok((rt, fields))
    }
}

impl UpdateRecord {
    /// A value sets the field; `null` removes it.
    pub(super) fn domain(&self) -> Result<BTreeMap<FieldName, FieldChange>, ApiError> {
        let mut changes = BTreeMap::new();
        for (k, v) in &self.fields {
            let change = if v.is_null() {
                FieldChange::Remove
            } else {
                FieldChange::Set(FieldValue::from_json(v))
            };
            changes.insert(field_name(k)?, change);
        }
        Ok(changes)
    }
}

fn field_name(n: &str) -> Result<FieldName, ApiError> {
    FieldName::parse(n)
        .map_err(|e| ApiError::bad_request("invalid_input", e.to_string()).with_field("fields"))
}

pub async fn create_record(
    s: State,
    who: Caller,
    why: Why,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let b: CreateRecord = json(&req, payload).await?;
    let (rt, fields) = b.domain()?;
    let purposes = purposes(&s, why.0, &b.purposes)?;
    let meta = who
        .session(&s)
        .write_record(subject, &rt, &fields, &purposes)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, etag(meta.version)))
        .insert_header((header::LOCATION, format!("/v1/records/{}", meta.id)))
        .json(meta_out(&meta)))
}

pub async fn list_records(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let ids = who.session(&s).records(subject).await?;
    Ok(ok(RecordList {
        records: ids.iter().map(meta_out).collect(),
    }))
}

pub async fn get_record(s: State, who: Caller, why: Why, id: web::Path<String>) -> Res {
    let id = parse(RecordId::parse(&id), "id")?;
    let view = who.session(&s).read_record(id, &why.0).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(view.meta.version)))
        .json(record_out(&s.metrics, &view)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct UpdateRecord {
    /// A value sets the field; `null` removes it.
    fields: BTreeMap<String, Value>,
    #[serde(default)]
    purposes: BTreeMap<String, String>,
}

pub async fn update_record(
    s: State,
    who: Caller,
    why: Why,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let id = parse(RecordId::parse(&id), "id")?;
    let raw = req.headers().get(header::IF_MATCH).and_then(|v| v.to_str().ok()).ok_or_else(|| {
        ApiError::new(StatusCode::PRECONDITION_REQUIRED, "if_match_required",
            "send If-Match with the ETag from your last read, so a concurrent change is not overwritten")
        .with_field("If-Match")
    })?;
    let version = raw
        .trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .strip_prefix('v')
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_if_match",
                "If-Match must be an ETag such as \"v3\"",
            )
            .with_field("If-Match")
        })?;
    let b: UpdateRecord = json(&req, payload).await?;
    let changes = b.domain()?;
    let purposes = purposes(&s, why.0, &b.purposes)?;
    let meta = who
        .session(&s)
        .update_record(id, version, &changes, &purposes)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(meta.version)))
        .json(meta_out(&meta)))
}

pub async fn shred_record(s: State, who: Caller, why: Why, id: web::Path<String>) -> Res {
    let id = parse(RecordId::parse(&id), "id")?;
    let r = who.session(&s).shred_record(id, &why.0).await?;
    Ok(ok(ShredOut {
        record: r.record.to_string(),
        categories: r.categories.iter().map(|c| c.as_str().to_owned()).collect(),
        keys_destroyed: r.deks_destroyed,
        fields_deleted: r.fields_deleted,
    }))
}
