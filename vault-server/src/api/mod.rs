//! The `/v1` routes. Each handler parses input, calls one core service, maps the result.
//!
//! [`input`] reads and checks request bodies; [`auth`] says who is calling and for what
//! purpose; [`output`] gives each core type its JSON shape. Each resource has one module with
//! its handlers and the body types they accept; [`v1`] is the route table over them all.

use std::net::IpAddr;
use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::de::DeserializeOwned;
use vault_core::Vault;

use crate::problem::ApiError;
use crate::telemetry::Metrics;

mod access_requests;
mod audit;
mod auth;
mod break_glass;
mod consents;
mod input;
mod me;
mod output;
mod records;
mod subjects;
pub mod unseal;

pub use access_requests::{approve, create_access_request, deny, pending_requests, revoke};
pub use audit::verify_audit;
pub use auth::{
    AUTH_FAILURES_PER_CLIENT, AUTH_FAILURES_PER_TOKEN, AuthFailures, Caller, Why, client_ip,
};
pub use break_glass::{open_break_glass, overdue_break_glass, review_break_glass};
pub use consents::{list_consents, record_consent, record_ground, withdraw_consent};
pub use input::{MAX_BODY, MAX_DEPTH};
pub use me::me;
pub use records::{create_record, get_record, list_records, shred_record, update_record};
pub use subjects::{
    access_history, block, create_subject, export_subject, find_subject, get_subject, unblock,
};

pub struct AppState {
    pub vault: Vault,
    pub metrics: Arc<Metrics>,
    pub auth_failures: AuthFailures,
    /// Requests per client address (`--rate-limit`).
    pub request_limit: crate::limits::RequestLimit,
    /// Reverse proxies (the school's TLS terminator) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

type Res = Result<HttpResponse, ApiError>;
type State = web::Data<AppState>;

/// Parses bytes as every request body the API accepts, through the same checks (depth limit,
/// strict fields) as the handlers, and on into the domain values the handlers pass to the core
/// (ids, IINs, categories, purposes, record types, field names and values). For fuzzing: it
/// must never panic. Returns how many bodies parsed all the way.
pub fn parse_any_body(b: &[u8]) -> usize {
    fn one<T: DeserializeOwned, D>(
        b: &[u8],
        domain: impl FnOnce(T) -> Result<D, ApiError>,
    ) -> bool {
        input::depth(b) <= MAX_DEPTH
            && serde_json::from_slice::<T>(b)
                .ok()
                .is_some_and(|t| domain(t).is_ok())
    }
    fn none<T>(_: T) -> Result<(), ApiError> {
        Ok(())
    }
    let subject = vault_core::SubjectId::new_random();
    [
        one(b, subjects::CreateSubject::domain),
        one(b, subjects::FindSubject::domain),
        one(b, |r: records::CreateRecord| r.domain()),
        one(b, |r: records::UpdateRecord| r.domain()),
        one(b, access_requests::CreateAccessRequest::domain),
        one(b, none::<access_requests::Approve>),
        one(b, none::<access_requests::Deny>),
        one(b, |o: break_glass::OpenBreakGlass| o.domain()),
        one(b, none::<break_glass::Review>),
        one(b, |c: consents::RecordConsent| c.domain(subject)),
        one(b, none::<consents::Withdraw>),
        one(b, |g: consents::RecordGround| g.domain()),
    ]
    .iter()
    .filter(|x| **x)
    .count()
}

/// The `/v1` route table, for the server and for any test that builds the app in process.
pub fn v1(cfg: &mut web::ServiceConfig) {
    cfg.route("/me", web::get().to(me))
        .route("/subjects", web::post().to(create_subject))
        .route("/subjects/search", web::post().to(find_subject))
        .route("/subjects/{id}", web::get().to(get_subject))
        .route("/subjects/{id}/records", web::post().to(create_record))
        .route("/subjects/{id}/records", web::get().to(list_records))
        .route("/subjects/{id}/consents", web::post().to(record_consent))
        .route("/subjects/{id}/consents", web::get().to(list_consents))
        .route(
            "/subjects/{id}/legal-grounds",
            web::post().to(record_ground),
        )
        .route("/subjects/{id}/export", web::get().to(export_subject))
        .route("/subjects/{id}/block", web::post().to(block))
        .route("/subjects/{id}/unblock", web::post().to(unblock))
        .route(
            "/subjects/{id}/access-history",
            web::get().to(access_history),
        )
        .route("/records/{id}", web::get().to(get_record))
        .route("/records/{id}", web::patch().to(update_record))
        .route("/records/{id}", web::delete().to(shred_record))
        .route("/access-requests", web::post().to(create_access_request))
        .route("/access-requests/pending", web::get().to(pending_requests))
        .route("/access-requests/{id}/approve", web::post().to(approve))
        .route("/access-requests/{id}/deny", web::post().to(deny))
        .route("/access-requests/{id}/revoke", web::post().to(revoke))
        .route("/break-glass", web::post().to(open_break_glass))
        .route("/break-glass/overdue", web::get().to(overdue_break_glass))
        .route(
            "/break-glass/{id}/review",
            web::post().to(review_break_glass),
        )
        .route("/consents/{id}/withdraw", web::post().to(withdraw_consent))
        .route("/audit/verify", web::get().to(verify_audit));
}

pub async fn not_found() -> Res {
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no_route",
        "no such endpoint; see /openapi.json",
    ))
}
