//! `/v1/subjects`: create, get, search by IIN, export, block and unblock, access history.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::web;
use serde::Deserialize;
use vault_core::{Iin, NewSubject, SchoolId, SubjectId, SubjectKind};

use super::auth::{Caller, Why};
use super::input::{json, parse};
use super::output::{
    AuditList, Blocking, Export, audit_out, consent_out, created, ok, record_out, subject_out,
};
use super::{Res, State};
use crate::problem::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateSubject {
    school: String,
    kind: String,
    iin: Option<String>,
}

impl CreateSubject {
    pub(super) fn domain(self) -> Result<NewSubject, ApiError> {
        Ok(NewSubject {
            school: parse(SchoolId::parse(&self.school), "school")?,
            kind: parse(SubjectKind::parse(&self.kind), "kind")?,
            iin: self
                .iin
                .as_deref()
                .map(|i| parse(Iin::parse(i), "iin"))
                .transpose()?,
        })
    }
}

pub async fn create_subject(s: State, who: Caller, req: HttpRequest, payload: web::Payload) -> Res {
    let new = json::<CreateSubject>(&req, payload).await?.domain()?;
    let subj = who.session(&s).create_subject(new).await?;
    Ok(created(subject_out(&subj)))
}

pub async fn get_subject(s: State, who: Caller, id: web::Path<String>) -> Res {
    let id = parse(SubjectId::parse(&id), "id")?;
    Ok(ok(subject_out(&who.session(&s).subject(id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FindSubject {
    iin: String,
}

impl FindSubject {
    pub(super) fn domain(self) -> Result<Iin, ApiError> {
        parse(Iin::parse(&self.iin), "iin")
    }
}

/// Lookup by IIN goes in a POST body, never a URL, so the IIN stays out of access logs.
pub async fn find_subject(
    s: State,
    who: Caller,
    why: Why,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let iin = json::<FindSubject>(&req, payload).await?.domain()?;
    match who.session(&s).find_subject(&iin, &why.0).await? {
        Some(subj) => Ok(ok(subject_out(&subj))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no subject with this IIN",
        )),
    }
}

pub async fn export_subject(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let e = who.session(&s).export_subject(subject).await?;
    Ok(ok(Export {
        subject: subject_out(&e.subject),
        records: e
            .records
            .iter()
            .map(|r| record_out(&s.metrics, r))
            .collect(),
        consents: e.consents.iter().map(consent_out).collect(),
        access_history: e.history.iter().map(audit_out).collect(),
    }))
}

pub async fn block(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    who.session(&s).block(subject).await?;
    Ok(ok(Blocking {
        subject: subject.to_string(),
        blocked: true,
    }))
}

pub async fn unblock(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    who.session(&s).unblock(subject).await?;
    Ok(ok(Blocking {
        subject: subject.to_string(),
        blocked: false,
    }))
}

pub async fn access_history(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let list = who.session(&s).access_history(subject).await?;
    Ok(ok(AuditList {
        entries: list.iter().map(audit_out).collect(),
    }))
}
