//! `/v1/access-requests`: ask to open sealed categories; approve, deny, revoke; the pending list.

use actix_web::HttpRequest;
use actix_web::web;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use vault_core::{ApprovalAct, NewAccessRequest, Purpose, RecordId, RequestId, SubjectId};

use super::auth::Caller;
use super::input::{categories, json, parse};
use super::output::{RequestList, created, ok, request_out};
use super::{Res, State};
use crate::problem::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateAccessRequest {
    subject: String,
    record: Option<String>,
    categories: Vec<String>,
    purpose: String,
    /// `read` (the default) or `transfer`: the act the approval will open.
    action: Option<String>,
    justification: String,
}

impl CreateAccessRequest {
    pub(super) fn domain(self) -> Result<NewAccessRequest, ApiError> {
        Ok(NewAccessRequest {
            subject: parse(SubjectId::parse(&self.subject), "subject")?,
            record: self
                .record
                .as_deref()
                .map(|r| parse(RecordId::parse(r), "record"))
                .transpose()?,
            categories: categories(&self.categories)?,
            purpose: parse(Purpose::parse(&self.purpose), "purpose")?,
            act: match self.action.as_deref() {
                None => ApprovalAct::Read,
                Some(a) => parse(ApprovalAct::parse(a), "action")?,
            },
            justification: self.justification,
        })
    }
}

pub async fn create_access_request(
    s: State,
    who: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let new = json::<CreateAccessRequest>(&req, payload).await?.domain()?;
    Ok(created(request_out(
        &who.session(&s).request_access(new).await?,
    )))
}

pub async fn pending_requests(s: State, who: Caller) -> Res {
    let list = who.session(&s).pending_requests().await?;
    Ok(ok(RequestList {
        requests: list.iter().map(request_out).collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Approve {
    expires_at: DateTime<Utc>,
    uses: u32,
}

pub async fn approve(
    s: State,
    who: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let id = parse(RequestId::parse(&id), "id")?;
    let b: Approve = json(&req, payload).await?;
    Ok(ok(request_out(
        &who.session(&s).approve(id, b.expires_at, b.uses).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Deny {
    reason: String,
}

pub async fn deny(
    s: State,
    who: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let id = parse(RequestId::parse(&id), "id")?;
    let b: Deny = json(&req, payload).await?;
    Ok(ok(request_out(&who.session(&s).deny(id, &b.reason).await?)))
}

pub async fn revoke(s: State, who: Caller, id: web::Path<String>) -> Res {
    let id = parse(RequestId::parse(&id), "id")?;
    Ok(ok(request_out(&who.session(&s).revoke_approval(id).await?)))
}
