//! `/unseal`: the unseal ceremony of a keyring sealed to a quorum of custodians. A server that
//! starts on such a keyring holds no key: it serves only this, `/healthz`, `/readyz` (503
//! `sealed`) and `/openapi.json`, and answers everything else 503 `sealed`, until M custodians
//! have each given their share (`vaultctl keyring unseal`). Then it opens the vault and the full
//! app takes the same listener. An open server answers `GET /unseal` with `sealed: false` and a
//! share with 409 `not_sealed`.
//!
//! No token is asked for a share: while sealed, no principal can be checked, and the share is
//! its own credential (checked against the commitment stored when it was dealt; a wrong one is
//! refused and audited). A share never appears in a log line or an answer.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use vault_core::{QuorumKey, Share, UnsealProgress, Unsealed, Unsealer, VaultError};
use zeroize::Zeroizing;

use super::input;
use super::output::UnsealStatus;
use crate::problem::ApiError;

/// The rebuilt quorum key on its way to the main task, which opens the vault on its own
/// runtime (a worker's runtime ends with the sealed app) and answers whether it opened.
pub type OpenRequest = (QuorumKey, tokio::sync::oneshot::Sender<Result<(), String>>);

/// What the sealed server's app holds: the unsealer, and where the rebuilt key goes.
pub struct SealedState {
    pub unsealer: Unsealer,
    pub open: tokio::sync::mpsc::Sender<OpenRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ShareBody {
    share: String,
}

fn progress_json(p: &UnsealProgress) -> UnsealStatus {
    UnsealStatus {
        sealed: true,
        threshold: Some(p.threshold),
        custodians: Some(p.custodians),
        given: Some(p.given.clone()),
    }
}

fn unsealed() -> UnsealStatus {
    UnsealStatus {
        sealed: false,
        threshold: None,
        custodians: None,
        given: None,
    }
}

/// The routes of a sealed server.
pub fn sealed_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/unseal", web::get().to(sealed_status))
        .route("/unseal", web::post().to(give_share))
        .route("/readyz", web::get().to(sealed_ready));
}

/// The `/unseal` routes of an open server.
pub fn open_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/unseal", web::get().to(open_status))
        .route("/unseal", web::post().to(not_sealed));
}

/// Every other request to a sealed server.
pub async fn sealed() -> Result<HttpResponse, ApiError> {
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "sealed",
        "the vault is sealed: its keyring opens only when enough custodians have given their shares (`vaultctl keyring unseal`)",
    );
    e.retry_after = Some(5);
    Err(e)
}

async fn sealed_status(s: web::Data<SealedState>) -> HttpResponse {
    HttpResponse::Ok().json(progress_json(&s.unsealer.progress().await))
}

async fn sealed_ready(s: web::Data<SealedState>) -> Result<HttpResponse, ApiError> {
    let p = s.unsealer.progress().await;
    let mut e = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "sealed",
        format!(
            "the vault is sealed: {} of the {} shares needed have been given; each custodian gives theirs with `vaultctl keyring unseal`",
            p.given.len(),
            p.threshold
        ),
    );
    e.retry_after = Some(5);
    Err(e)
}

async fn give_share(
    s: web::Data<SealedState>,
    req: HttpRequest,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let body: ShareBody = input::json(&req, payload).await?;
    let text = Zeroizing::new(body.share);
    let share = Share::parse(&text).map_err(share_error)?;
    match s.unsealer.give(share).await {
        Ok(Unsealed::Waiting(p)) => Ok(HttpResponse::Ok().json(progress_json(&p))),
        Ok(Unsealed::Complete(key)) => {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let opened = match s.open.send((key, tx)).await {
                Ok(()) => rx
                    .await
                    .unwrap_or_else(|_| Err("the server is stopping".into())),
                Err(_) => Err("the server is stopping".into()),
            };
            match opened {
                // The full app takes the listener once this answer has gone.
                Ok(()) => Ok(HttpResponse::Ok().json(unsealed())),
                Err(why) => Err(ApiError::internal(anyhow::anyhow!(
                    "the shares rebuilt the quorum key, but the vault did not open: {why}"
                ))),
            }
        }
        Err(VaultError::Keyring(e)) => Err(share_error(e)),
        Err(e) => Err(ApiError::internal(e)),
    }
}

fn share_error(e: vault_core::KeyringError) -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "share_refused",
        e.to_string(),
    )
    .with_field("share")
}

async fn open_status() -> HttpResponse {
    HttpResponse::Ok().json(unsealed())
}

async fn not_sealed(req: HttpRequest, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    // The body is checked as on a sealed server, so a bad one is told as bad either way.
    let body: ShareBody = input::json(&req, payload).await?;
    drop(Zeroizing::new(body.share));
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "not_sealed",
        "the vault is not sealed: no share is needed",
    ))
}
