//! Consents (`/v1/subjects/{id}/consents`, `/v1/consents/{id}/withdraw`) and the legal
//! grounds that stand in for consent (`/v1/subjects/{id}/legal-grounds`).

use actix_web::HttpRequest;
use actix_web::web;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use vault_core::{Category, ConsentGiver, ConsentId, LegalGround, NewConsent, SubjectId};

use super::auth::Caller;
use super::input::{categories, json, parse};
use super::output::{ConsentList, LegalGroundOut, consent_out, created, ok};
use super::{Res, State};
use crate::problem::ApiError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordConsent {
    given_by: String,
    guardian: Option<String>,
    #[serde(default)]
    confirmed_adult: bool,
    method: String,
    evidence_ref: String,
    text_version: String,
    categories: Vec<String>,
    third_party: bool,
    cross_border: bool,
    publication: bool,
    term_until: Option<DateTime<Utc>>,
}

impl RecordConsent {
    pub(super) fn domain(self, subject: SubjectId) -> Result<NewConsent, ApiError> {
        let given_by = match (self.given_by.as_str(), self.guardian.as_deref()) {
            ("guardian", Some(g)) => {
                ConsentGiver::Guardian(parse(SubjectId::parse(g), "guardian")?)
            }
            ("subject", None) => ConsentGiver::Subject {
                confirmed_adult: self.confirmed_adult,
            },
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_input",
                    "given_by is \"guardian\" (with a guardian subject id) or \"subject\" (without)",
                )
                .with_field("given_by"));
            }
        };
        Ok(NewConsent {
            subject,
            given_by,
            method: self.method,
            evidence_ref: self.evidence_ref,
            text_version: self.text_version,
            categories: categories(&self.categories)?,
            third_party: self.third_party,
            cross_border: self.cross_border,
            publication: self.publication,
            term_until: self.term_until,
        })
    }
}

pub async fn record_consent(
    s: State,
    who: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let new = json::<RecordConsent>(&req, payload)
        .await?
        .domain(subject)?;
    let c = who.session(&s).record_consent(new).await?;
    Ok(created(consent_out(&c)))
}

pub async fn list_consents(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let list = who.session(&s).consents(subject).await?;
    Ok(ok(ConsentList {
        consents: list.iter().map(consent_out).collect(),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Withdraw {
    refusal_reason: Option<String>,
}

pub async fn withdraw_consent(
    s: State,
    who: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let id = parse(ConsentId::parse(&id), "id")?;
    let b: Withdraw = json(&req, payload).await?;
    Ok(ok(consent_out(
        &who.session(&s)
            .withdraw_consent(id, b.refusal_reason.as_deref())
            .await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RecordGround {
    category: String,
    ground: String,
    reference: String,
}

impl RecordGround {
    pub(super) fn domain(&self) -> Result<(Category, LegalGround), ApiError> {
        Ok((
            parse(Category::parse(&self.category), "category")?,
            LegalGround::parse(&self.ground)?,
        ))
    }
}

pub async fn record_ground(
    s: State,
    who: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let b: RecordGround = json(&req, payload).await?;
    let (category, ground) = b.domain()?;
    who.session(&s)
        .record_legal_ground(subject, &category, ground, &b.reference)
        .await?;
    Ok(created(LegalGroundOut {
        subject: subject.to_string(),
        category: category.as_str().to_owned(),
        ground: ground.as_str().to_owned(),
    }))
}
