//! The whole application: the operational routes (`/healthz`, `/readyz`, `/metrics`,
//! `/openapi.json`), `/v1`, the no-route fallback, and the middleware that gives every request
//! an id, a log line and a metrics sample. `main.rs` hands [`app`] to `HttpServer::new`.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{Service, ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpMessage, HttpResponse, web};
use tracing::Instrument;

use actix_web::ResponseError;
use futures_util::future::Either;

use crate::api::{self, AppState};
use crate::limits;
use crate::problem::ApiError;
use crate::telemetry;

/// The OpenAPI document, checked into `docs/` and served as is.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// The configured app over `state`, for one server worker (or a test in process).
pub fn app(
    state: web::Data<AppState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let metrics = state.metrics.clone();
    let limits = state.clone();
    App::new()
        .app_data(state)
        .wrap_fn(move |req, srv| {
            let started = Instant::now();
            let rid = telemetry::request_id(
                req.headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok()),
            );
            let method = req.method().to_string();
            let span =
                tracing::info_span!("request", id = %rid, principal = tracing::field::Empty);
            req.extensions_mut().insert(rid.clone());
            let over = if limits::unlimited(req.path()) {
                None
            } else {
                api::client_ip(req.request(), &limits.trusted_proxies)
                    .and_then(|ip| limits.request_limit.admit(ip).err())
            };
            let call = match over {
                None => Either::Left(srv.call(req)),
                Some(wait) => {
                    let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
                    let mut e = ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        format!("too many requests from this client: try again in {secs} s"),
                    );
                    e.retry_after = Some(secs);
                    let res = e.error_response();
                    Either::Right(req.into_response(res))
                }
            };
            let metrics = metrics.clone();
            async move {
                let mut res = match call {
                    Either::Left(fut) => fut.await?.map_into_left_body(),
                    Either::Right(res) => res.map_into_right_body(),
                };
                let route = res
                    .request()
                    .match_pattern()
                    .unwrap_or_else(|| "unmatched".into());
                let status = res.status().as_u16();
                metrics.observe(route.clone(), &method, status, started.elapsed());
                tracing::info!(%method, %route, status, ms = started.elapsed().as_millis() as u64, "request");
                if let Ok(v) = HeaderValue::from_str(&rid) {
                    res.headers_mut()
                        .insert(HeaderName::from_static("x-request-id"), v);
                }
                Ok(res)
            }
            .instrument(span)
        })
        .configure(operational)
        .service(web::scope("/v1").configure(api::v1))
        .default_service(web::to(api::not_found))
}

/// The routes outside `/v1`: liveness, readiness, metrics, the API description and the
/// unseal ceremony's status.
pub fn operational(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics_text))
        .route("/openapi.json", web::get().to(openapi))
        .configure(api::unseal::open_routes);
}

/// The app of a server whose keyring is sealed to a quorum, until enough custodians have
/// given their shares: liveness, readiness (503 `sealed`), the API description and `/unseal`;
/// everything else 503 `sealed`.
pub fn sealed_app(
    state: web::Data<api::unseal::SealedState>,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new()
        .app_data(state)
        .route("/healthz", web::get().to(healthz))
        .route("/openapi.json", web::get().to(openapi))
        .configure(api::unseal::sealed_routes)
        .default_service(web::to(api::unseal::sealed))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.vault.check_ready().await.map_err(|e| {
        let refused = matches!(
            e,
            vault_core::VaultError::Keyring(vault_core::KeyringError::Refused { .. })
        );
        let mut err = ApiError::internal(e);
        err.status = StatusCode::SERVICE_UNAVAILABLE;
        if refused {
            // Loud: the cause goes to the log with the request, and the audit log has it.
            err.code = "keyring_refused";
            err.detail = "the key store holds a keyring that is not chained to the one this server holds (or an older one): nothing is written until a custodian puts it right; see the server log".into();
        } else {
            err.code = "not_ready";
            err.detail = "a store is unreachable; see the server log".into();
        }
        err
    })?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })))
}

async fn metrics_text(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(state.metrics.render(state.vault.queue_depths()))
}

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}
