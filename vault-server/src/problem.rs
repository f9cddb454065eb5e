//! Errors as `application/problem+json` (RFC 9457) with a stable machine `code`. A 500 says
//! nothing internal; its cause chain goes to the log, under the request's id.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use vault_core::VaultError;

#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub code: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    /// For 500s: the cause, logged, never sent.
    pub internal: Option<anyhow::Error>,
    /// For 429s: seconds until the client may try again.
    pub retry_after: Option<u64>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.detail)
    }
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            field: None,
            internal: None,
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn with_field(mut self, f: impl Into<String>) -> Self {
        self.field = Some(f.into());
        self
    }
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        ApiError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "internal",
            detail: "the vault could not complete the request; the cause is in the server log under this request's id".into(),
            field: None,
            internal: Some(e.into()),
            retry_after: None,
        }
    }
}

fn title(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Error")
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        if let Some(e) = &self.internal {
            tracing::error!(error = format!("{e:#}"), "request failed");
        }
        let body = Problem {
            kind: format!("https://school-vault.kz/problems/{}", self.code),
            title: title(self.status),
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail.clone(),
            field: self.field.clone(),
        };
        let mut r = HttpResponse::build(self.status);
        r.content_type("application/problem+json");
        if self.status == StatusCode::UNAUTHORIZED {
            r.insert_header(("WWW-Authenticate", "Bearer"));
        }
        if let Some(s) = self.retry_after {
            r.insert_header(("Retry-After", s.to_string()));
        }
        r.json(body)
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            VaultError::Domain(_) => ApiError::bad_request("invalid_input", msg),
            // The key store's keyring is not chained to the one this server holds: nothing is
            // sealed under it. The cause is in the server log and the audit log, not here.
            VaultError::Keyring(vault_core::KeyringError::Refused { .. }) => ApiError::new(
                S::SERVICE_UNAVAILABLE,
                "keyring_refused",
                "the vault refused the key store's keyring and stores nothing until a custodian puts it right; see the server log",
            ),
            VaultError::UnknownRecordType(_) => {
                ApiError::bad_request("unknown_record_type", msg).with_field("record_type")
            }
            VaultError::UnknownField { field, .. } => {
                ApiError::bad_request("unknown_field", msg).with_field(format!("fields.{field}"))
            }
            VaultError::InvalidValue { field, .. } => {
                ApiError::bad_request("invalid_value", msg).with_field(format!("fields.{field}"))
            }
            VaultError::EmptyRecord => {
                ApiError::bad_request("empty_record", msg).with_field("fields")
            }
            VaultError::WrongSubjectKind { .. } => ApiError::bad_request("wrong_subject_kind", msg),
            VaultError::Invalid(_) => ApiError::bad_request("invalid_request", msg),
            VaultError::SubjectNotFound(_)
            | VaultError::RecordNotFound(_)
            | VaultError::NotFound(_) => ApiError::new(S::NOT_FOUND, "not_found", msg),
            VaultError::RecordShredded(_) => ApiError::new(S::GONE, "shredded", msg),
            VaultError::StaleVersion { .. } => {
                ApiError::new(S::PRECONDITION_FAILED, "stale_version", msg)
            }
            VaultError::DuplicateIin => ApiError::new(S::CONFLICT, "duplicate_iin", msg),
            VaultError::Unauthenticated => ApiError::new(S::UNAUTHORIZED, "unauthenticated", msg),
            VaultError::Forbidden { reason, .. } => ApiError::new(S::FORBIDDEN, reason.code(), msg),
            VaultError::ApprovalRequired { .. } => {
                ApiError::new(S::FORBIDDEN, "approval_required", msg)
            }
            VaultError::NoLegalBasis { .. } => ApiError::new(S::FORBIDDEN, "no_legal_basis", msg),
            VaultError::Blocked(_) => ApiError::new(S::FORBIDDEN, "blocked", msg),
            VaultError::SelfApproval => ApiError::new(S::FORBIDDEN, "self_approval", msg),
            VaultError::NotApprover { .. } => ApiError::new(S::FORBIDDEN, "not_approver", msg),
            VaultError::NotAuditor => ApiError::new(S::FORBIDDEN, "not_auditor", msg),
            VaultError::MayNotAdminister { .. } => {
                ApiError::new(S::FORBIDDEN, "may_not_administer", msg)
            }
            VaultError::PrincipalsExist => ApiError::new(S::CONFLICT, "principals_exist", msg),
            other => ApiError::internal(other),
        }
    }
}
