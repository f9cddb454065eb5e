//! `/v1/break-glass`: emergency access, opened with a justification and reviewed afterwards.

use actix_web::HttpRequest;
use actix_web::web;
use serde::Deserialize;
use vault_core::{BreakGlassId, SubjectId};

use super::auth::Caller;
use super::input::{json, parse};
use super::output::{BreakGlassList, break_glass_out, created, ok};
use super::{Res, State};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct OpenBreakGlass {
    subject: String,
    justification: String,
}

impl OpenBreakGlass {
    pub(super) fn domain(&self) -> Result<SubjectId, crate::problem::ApiError> {
        parse(SubjectId::parse(&self.subject), "subject")
    }
}

pub async fn open_break_glass(
    s: State,
    who: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let b: OpenBreakGlass = json(&req, payload).await?;
    let subject = b.domain()?;
    Ok(created(break_glass_out(
        &who.session(&s)
            .open_break_glass(subject, &b.justification)
            .await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Review {
    note: String,
}

pub async fn review_break_glass(
    s: State,
    who: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let id = parse(BreakGlassId::parse(&id), "id")?;
    let b: Review = json(&req, payload).await?;
    Ok(ok(break_glass_out(
        &who.session(&s).review_break_glass(id, &b.note).await?,
    )))
}

pub async fn overdue_break_glass(s: State, who: Caller) -> Res {
    let list = who.session(&s).overdue_break_glass().await?;
    Ok(ok(BreakGlassList {
        overdue: list.iter().map(break_glass_out).collect(),
    }))
}
