//! The `/v1` routes. Each handler parses input, calls one core service, maps the result.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::FromRequest;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::web::{self, Bytes};
use actix_web::{HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use vault_core::{
    AccessRequest, AuditRecord, BearerToken, BreakGlass, BreakGlassId, Category, Consent,
    ConsentGiver, ConsentId, FieldChange, FieldName, FieldValue, FieldView, Iin, LegalGround,
    NewAccessRequest, NewConsent, NewSubject, Principal, Purpose, Purposes, RecordId, RecordMeta,
    RecordType, RecordView, RequestId, SchoolId, Session, Subject, SubjectId, SubjectKind, Vault,
};

use crate::problem::ApiError;
use crate::telemetry::Metrics;

/// Largest request body: a record with a photo fits; 10 MB does not.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Deepest JSON nesting accepted in a body.
pub const MAX_DEPTH: usize = 32;

pub struct AppState {
    pub vault: Vault,
    pub metrics: Arc<Metrics>,
    pub auth_failures: AuthFailures,
    /// Reverse proxies (the school's TLS terminator) whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
}

/// Failed authentications, in fixed one-minute windows, counted per (client address, token
/// prefix) and per client address. Behind a proxy every app arrives from the proxy's address,
/// so the client is taken from `X-Forwarded-For` when, and only when, the peer is a trusted
/// proxy; and one app presenting a stale token locks out only that token, not every other app
/// from the same address, while a client guessing many tokens is stopped by its address total.
pub struct AuthFailures {
    counts: std::sync::Mutex<HashMap<FailureKey, (Instant, u32)>>,
    hasher: std::hash::RandomState,
    capacity: usize,
}

impl Default for AuthFailures {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum FailureKey {
    Client(IpAddr),
    /// A keyed hash of the token's first characters: no token material is kept.
    Token(IpAddr, u64),
}

/// Failed authentications one token (by prefix) may make per minute from one client.
pub const AUTH_FAILURES_PER_MINUTE: u32 = 20;
/// Failed authentications one client address may make per minute, whatever the tokens.
pub const AUTH_FAILURES_PER_CLIENT: u32 = 200;
const WINDOW: Duration = Duration::from_secs(60);
/// Keys remembered at most. When full, expired windows go first, then keys not over their
/// limit: a client cycling addresses can never clear the count of one that is over it.
const MAX_TRACKED: usize = 100_000;
/// Characters of a token that identify which one it is (`vt_` and 9 more).
const TOKEN_PREFIX: usize = 12;

impl AuthFailures {
    /// A limiter that remembers at most `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        AuthFailures {
            counts: std::sync::Mutex::new(HashMap::new()),
            hasher: std::hash::RandomState::new(),
            capacity,
        }
    }

    fn keys(&self, client: IpAddr, token: Option<&str>) -> [(FailureKey, u32); 2] {
        let prefix = token.map(|t| t.chars().take(TOKEN_PREFIX).collect::<String>());
        let h = std::hash::BuildHasher::hash_one(&self.hasher, prefix.unwrap_or_default());
        [
            (FailureKey::Token(client, h), AUTH_FAILURES_PER_MINUTE),
            (FailureKey::Client(client), AUTH_FAILURES_PER_CLIENT),
        ]
    }

    /// Seconds to wait, if this client (or this token from it) is over its limit.
    fn blocked(&self, client: IpAddr, token: Option<&str>) -> Option<u64> {
        let m = self.counts.lock().ok()?;
        self.keys(client, token)
            .iter()
            .filter_map(|(k, limit)| {
                let (start, n) = m.get(k)?;
                let elapsed = start.elapsed();
                (elapsed < WINDOW && *n >= *limit).then(|| (WINDOW - elapsed).as_secs().max(1))
            })
            .max()
    }

    fn failed(&self, client: IpAddr, token: Option<&str>) {
        let Ok(mut m) = self.counts.lock() else {
            return;
        };
        let keys = self.keys(client, token);
        if m.len() + keys.len() > self.capacity {
            m.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        if m.len() + keys.len() > self.capacity {
            m.retain(|k, (_, n)| {
                let limit = match k {
                    FailureKey::Client(_) => AUTH_FAILURES_PER_CLIENT,
                    FailureKey::Token(..) => AUTH_FAILURES_PER_MINUTE,
                };
                *n >= limit
            });
        }
        for (k, _) in keys {
            if !m.contains_key(&k) && m.len() >= self.capacity {
                continue;
            }
            let e = m.entry(k).or_insert((Instant::now(), 0));
            if e.0.elapsed() >= WINDOW {
                *e = (Instant::now(), 0);
            }
            e.1 += 1;
        }
    }

    /// How many keys are tracked (for the memory-bound test).
    pub fn tracked(&self) -> usize {
        self.counts.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy. A client can put anything in that
/// header, so only the part the trusted proxies appended is believed.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    if !trusted.contains(&peer) {
        return Some(peer);
    }
    let mut hops = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    while let Some(hop) = hops.pop() {
        match hop.parse::<IpAddr>() {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            // A malformed hop: trust nothing further left than the proxy itself.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
}

type Res = Result<HttpResponse, ApiError>;
type State = web::Data<AppState>;

// ----- input ------------------------------------------------------------------------------------

/// Reads the body up to `MAX_BODY`; a larger one is a 413 before it is buffered.
async fn body(req: &HttpRequest, mut payload: web::Payload) -> Result<Bytes, ApiError> {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as Content-Type: application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )
    };
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > MAX_BODY
    {
        return Err(too_large());
    }
    let mut buf = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk =
            chunk.map_err(|_| ApiError::bad_request("bad_body", "the body could not be read"))?;
        if buf.len() + chunk.len() > MAX_BODY {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Nesting depth of a JSON text, counted outside strings.
fn depth(b: &[u8]) -> usize {
    let (mut d, mut max, mut in_str, mut esc) = (0usize, 0usize, false, false);
    for &c in b {
        if in_str {
            match (esc, c) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match c {
            b'"' => in_str = true,
            b'[' | b'{' => {
                d += 1;
                max = max.max(d);
            }
            b']' | b'}' => d = d.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// serde's messages quote the offending input; a body may hold personal data, so the quotes go.
fn scrub(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut in_q = false;
    for ch in msg.chars() {
        if ch == '"' {
            if !in_q {
                out.push_str("\"…\"");
            }
            in_q = !in_q;
        } else if !in_q {
            out.push(ch);
        }
    }
    out
}

async fn json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<T, ApiError> {
    let b = body(req, payload).await?;
    if depth(&b) > MAX_DEPTH {
        return Err(ApiError::bad_request(
            "too_deep",
            format!("JSON nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    serde_json::from_slice(&b)
        .map_err(|e| ApiError::bad_request("invalid_json", scrub(&e.to_string())))
}

fn bearer(h: &HeaderMap) -> Option<BearerToken> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))?;
    Some(BearerToken::new(t))
}

async fn principal(s: &State, req: &HttpRequest) -> Result<Principal, ApiError> {
    let ip = client_ip(req, &s.trusted_proxies);
    let token = bearer(req.headers());
    let shown = token.as_ref().map(BearerToken::expose);
    if let Some(wait) = ip.and_then(|ip| s.auth_failures.blocked(ip, shown)) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_failures",
            format!("too many failed authentications from this client: try again in {wait} s"),
        );
        e.retry_after = Some(wait);
        return Err(e);
    }
    let result = match &token {
        Some(token) => s.vault.authenticate(token).await.map_err(ApiError::from),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "send Authorization: Bearer <token>",
        )),
    };
    if let (Err(e), Some(ip)) = (&result, ip)
        && e.status == StatusCode::UNAUTHORIZED
    {
        s.auth_failures.failed(ip, shown);
    }
    result
}

fn state(req: &HttpRequest) -> Result<State, ApiError> {
    req.app_data::<State>()
        .cloned()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("the app state is not configured")))
}

/// The authenticated caller, from `Authorization: Bearer`. Every `/v1` handler takes one and
/// does its work through `Caller::session`, the core's one door to personal data.
pub struct Caller(Principal);

impl Caller {
    fn session<'v>(&self, s: &'v State) -> Session<'v> {
        s.vault.session(self.0.clone())
    }
}

impl FromRequest for Caller {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let s = state(&req)?;
            principal(&s, &req).await.map(Caller)
        })
    }
}

/// The purpose a read or write names, from `X-Vault-Purpose`.
pub struct Why(Purpose);

impl FromRequest for Why {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        std::future::ready(state(req).and_then(|s| purpose(&s, req)).map(Why))
    }
}

/// The purpose every read and write must name, from `X-Vault-Purpose`.
fn purpose(s: &State, req: &HttpRequest) -> Result<Purpose, ApiError> {
    let raw = req
        .headers()
        .get("x-vault-purpose")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::bad_request(
                "purpose_required",
                format!(
                    "name the purpose in the X-Vault-Purpose header, one of: {}",
                    allowed_purposes(s)
                ),
            )
            .with_field("X-Vault-Purpose")
        })?;
    known_purpose(s, raw.trim()).ok_or_else(|| {
        ApiError::bad_request(
            "unknown_purpose",
            format!("unknown purpose; use one of: {}", allowed_purposes(s)),
        )
        .with_field("X-Vault-Purpose")
    })
}

fn allowed_purposes(s: &State) -> String {
    s.vault
        .catalog()
        .purposes()
        .map(|p| p.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn known_purpose(s: &State, raw: &str) -> Option<Purpose> {
    Purpose::parse(raw)
        .ok()
        .filter(|p| s.vault.catalog().purpose(p).is_some())
}

/// The header's purpose, with the body's purpose per category on top of it.
fn purposes(
    s: &State,
    default: Purpose,
    per: &BTreeMap<String, String>,
) -> Result<Purposes, ApiError> {
    let mut out = BTreeMap::new();
    for (c, p) in per {
        let c = parse(Category::parse(c), "purposes")?;
        let p = known_purpose(s, p).ok_or_else(|| {
            ApiError::bad_request(
                "unknown_purpose",
                format!(
                    "purposes.{c}: unknown purpose; use one of: {}",
                    allowed_purposes(s)
                ),
            )
            .with_field("purposes")
        })?;
        out.insert(c, p);
    }
    Ok(Purposes::with(default, out))
}

fn parse<T, E: std::fmt::Display>(r: Result<T, E>, field: &str) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::bad_request("invalid_input", e.to_string()).with_field(field))
}

fn categories(v: &[String]) -> Result<Vec<Category>, ApiError> {
    v.iter()
        .map(|c| parse(Category::parse(c), "categories"))
        .collect()
}

/// Parses bytes as every request body the API accepts, through the same checks (depth limit,
/// strict fields) as the handlers. For fuzzing: it must never panic. Returns how many parsed.
pub fn parse_any_body(b: &[u8]) -> usize {
    fn one<T: DeserializeOwned>(b: &[u8]) -> bool {
        depth(b) <= MAX_DEPTH && serde_json::from_slice::<T>(b).is_ok()
    }
    [
        one::<CreateSubject>(b),
        one::<FindSubject>(b),
        one::<CreateRecord>(b),
        one::<UpdateRecord>(b),
        one::<CreateAccessRequest>(b),
        one::<Approve>(b),
        one::<Deny>(b),
        one::<OpenBreakGlass>(b),
        one::<Review>(b),
        one::<RecordConsent>(b),
        one::<Withdraw>(b),
        one::<RecordGround>(b),
    ]
    .iter()
    .filter(|x| **x)
    .count()
}

// ----- output -----------------------------------------------------------------------------------

fn subject_json(s: &Subject) -> Value {
    json!({ "id": s.id.to_string(), "school": s.school.as_str(), "kind": s.kind.as_str(),
            "created_at": s.created_at, "left_at": s.left_at })
}

fn meta_json(m: &RecordMeta) -> Value {
    json!({ "id": m.id.to_string(), "subject": m.subject.to_string(), "school": m.school.as_str(),
            "record_type": m.record_type.as_str(), "version": m.version,
            "created_at": m.created_at, "updated_at": m.updated_at })
}

fn etag(version: u64) -> String {
    format!("\"v{version}\"")
}

fn record_json(metrics: &Metrics, v: &RecordView) -> Value {
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

fn request_json(r: &AccessRequest) -> Value {
    json!({ "id": r.id.to_string(), "requester": r.requester.to_string(), "school": r.school.as_str(),
            "subject": r.subject.to_string(), "record": r.record.map(|x| x.to_string()),
            "categories": r.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            "purpose": r.purpose.as_str(), "justification": r.justification, "status": r.status.as_str(),
            "created_at": r.created_at, "decided_by": r.decided_by.map(|x| x.to_string()),
            "decided_at": r.decided_at, "reason": r.reason, "expires_at": r.expires_at,
            "uses_left": r.uses_left })
}

fn break_glass_json(b: &BreakGlass) -> Value {
    json!({ "id": b.id.to_string(), "principal": b.principal.to_string(), "school": b.school.as_str(),
            "subject": b.subject.to_string(), "justification": b.justification,
            "opened_at": b.opened_at, "expires_at": b.expires_at,
            "reviewed_by": b.reviewed_by.map(|x| x.to_string()), "reviewed_at": b.reviewed_at,
            "review_note": b.review_note })
}

fn consent_json(c: &Consent) -> Value {
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

fn audit_json(a: &AuditRecord) -> Value {
    json!({ "seq": a.seq, "at": a.at, "actor": a.actor, "action": a.action, "school": a.school,
            "subject": a.subject, "record": a.record, "categories": a.categories,
            "purpose": a.purpose, "outcome": a.outcome, "reason": a.reason })
}

fn ok(v: Value) -> HttpResponse {
    HttpResponse::Ok().json(v)
}

fn created(v: Value) -> HttpResponse {
    HttpResponse::Created().json(v)
}

// ----- handlers ---------------------------------------------------------------------------------

pub async fn me(who: Caller) -> Res {
    let p = &who.0;
    Ok(ok(json!({ "id": p.id().to_string(), "name": p.name(),
        "roles": p.roles().iter().map(|(sc, r)| json!({ "school": sc.as_str(), "role": r.as_str() })).collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateSubject {
    school: String,
    kind: String,
    iin: Option<String>,
}

pub async fn create_subject(s: State, who: Caller, req: HttpRequest, payload: web::Payload) -> Res {
    let b: CreateSubject = json(&req, payload).await?;
    let school = parse(SchoolId::parse(&b.school), "school")?;
    let kind = parse(SubjectKind::parse(&b.kind), "kind")?;
    let iin = b
        .iin
        .as_deref()
        .map(|i| parse(Iin::parse(i), "iin"))
        .transpose()?;
    let subj = who
        .session(&s)
        .create_subject(NewSubject { school, kind, iin })
        .await?;
    Ok(created(subject_json(&subj)))
}

pub async fn get_subject(s: State, who: Caller, id: web::Path<String>) -> Res {
    let id = parse(SubjectId::parse(&id), "id")?;
    Ok(ok(subject_json(&who.session(&s).subject(id).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FindSubject {
    iin: String,
}

/// Lookup by IIN goes in a POST body, never a URL, so the IIN stays out of access logs.
pub async fn find_subject(
    s: State,
    who: Caller,
    why: Why,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let b: FindSubject = json(&req, payload).await?;
    let iin = parse(Iin::parse(&b.iin), "iin")?;
    match who.session(&s).find_subject(&iin, &why.0).await? {
        Some(subj) => Ok(ok(subject_json(&subj))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no subject with this IIN",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRecord {
    record_type: String,
    fields: BTreeMap<String, Value>,
    #[serde(default)]
    purposes: BTreeMap<String, String>,
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
    let rt = parse(RecordType::parse(&b.record_type), "record_type")?;
    let mut fields = BTreeMap::new();
    for (k, v) in &b.fields {
        fields.insert(field_name(k)?, FieldValue::from_json(v));
    }
    let purposes = purposes(&s, why.0, &b.purposes)?;
    let meta = who
        .session(&s)
        .write_record(subject, &rt, &fields, &purposes)
        .await?;
    Ok(HttpResponse::Created()
        .insert_header((header::ETAG, etag(meta.version)))
        .insert_header((header::LOCATION, format!("/v1/records/{}", meta.id)))
        .json(meta_json(&meta)))
}

pub async fn list_records(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let ids = who.session(&s).records(subject).await?;
    Ok(ok(
        json!({ "records": ids.iter().map(meta_json).collect::<Vec<_>>() }),
    ))
}

pub async fn get_record(s: State, who: Caller, why: Why, id: web::Path<String>) -> Res {
    let id = parse(RecordId::parse(&id), "id")?;
    let view = who.session(&s).read_record(id, &why.0).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(view.meta.version)))
        .json(record_json(&s.metrics, &view)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRecord {
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
    let mut changes = BTreeMap::new();
    for (k, v) in &b.fields {
        let change = if v.is_null() {
            FieldChange::Remove
        } else {
            FieldChange::Set(FieldValue::from_json(v))
        };
        changes.insert(field_name(k)?, change);
    }
    let purposes = purposes(&s, why.0, &b.purposes)?;
    let meta = who
        .session(&s)
        .update_record(id, version, &changes, &purposes)
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::ETAG, etag(meta.version)))
        .json(meta_json(&meta)))
}

pub async fn shred_record(s: State, who: Caller, why: Why, id: web::Path<String>) -> Res {
    let id = parse(RecordId::parse(&id), "id")?;
    let r = who.session(&s).shred_record(id, &why.0).await?;
    Ok(ok(json!({ "record": r.record.to_string(),
        "categories": r.categories.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "keys_destroyed": r.deks_destroyed, "fields_deleted": r.fields_deleted })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateAccessRequest {
    subject: String,
    record: Option<String>,
    categories: Vec<String>,
    purpose: String,
    justification: String,
}

pub async fn create_access_request(
    s: State,
    who: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let b: CreateAccessRequest = json(&req, payload).await?;
    let new = NewAccessRequest {
        subject: parse(SubjectId::parse(&b.subject), "subject")?,
        record: b
            .record
            .as_deref()
            .map(|r| parse(RecordId::parse(r), "record"))
            .transpose()?,
        categories: categories(&b.categories)?,
        purpose: parse(Purpose::parse(&b.purpose), "purpose")?,
        justification: b.justification,
    };
    Ok(created(request_json(
        &who.session(&s).request_access(new).await?,
    )))
}

pub async fn pending_requests(s: State, who: Caller) -> Res {
    let list = who.session(&s).pending_requests().await?;
    Ok(ok(
        json!({ "requests": list.iter().map(request_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Approve {
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
    Ok(ok(request_json(
        &who.session(&s).approve(id, b.expires_at, b.uses).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Deny {
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
    Ok(ok(request_json(
        &who.session(&s).deny(id, &b.reason).await?,
    )))
}

pub async fn revoke(s: State, who: Caller, id: web::Path<String>) -> Res {
    let id = parse(RequestId::parse(&id), "id")?;
    Ok(ok(request_json(
        &who.session(&s).revoke_approval(id).await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBreakGlass {
    subject: String,
    justification: String,
}

pub async fn open_break_glass(
    s: State,
    who: Caller,
    req: HttpRequest,
    payload: web::Payload,
) -> Res {
    let b: OpenBreakGlass = json(&req, payload).await?;
    let subject = parse(SubjectId::parse(&b.subject), "subject")?;
    Ok(created(break_glass_json(
        &who.session(&s)
            .open_break_glass(subject, &b.justification)
            .await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Review {
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
    Ok(ok(break_glass_json(
        &who.session(&s).review_break_glass(id, &b.note).await?,
    )))
}

pub async fn overdue_break_glass(s: State, who: Caller) -> Res {
    let list = who.session(&s).overdue_break_glass().await?;
    Ok(ok(
        json!({ "overdue": list.iter().map(break_glass_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordConsent {
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

pub async fn record_consent(
    s: State,
    who: Caller,
    req: HttpRequest,
    id: web::Path<String>,
    payload: web::Payload,
) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let b: RecordConsent = json(&req, payload).await?;
    let given_by = match (b.given_by.as_str(), b.guardian.as_deref()) {
        ("guardian", Some(g)) => ConsentGiver::Guardian(parse(SubjectId::parse(g), "guardian")?),
        ("subject", None) => ConsentGiver::Subject {
            confirmed_adult: b.confirmed_adult,
        },
        _ => {
            return Err(ApiError::bad_request(
                "invalid_input",
                "given_by is \"guardian\" (with a guardian subject id) or \"subject\" (without)",
            )
            .with_field("given_by"));
        }
    };
    let c = who
        .session(&s)
        .record_consent(NewConsent {
            subject,
            given_by,
            method: b.method,
            evidence_ref: b.evidence_ref,
            text_version: b.text_version,
            categories: categories(&b.categories)?,
            third_party: b.third_party,
            cross_border: b.cross_border,
            publication: b.publication,
            term_until: b.term_until,
        })
        .await?;
    Ok(created(consent_json(&c)))
}

pub async fn list_consents(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let list = who.session(&s).consents(subject).await?;
    Ok(ok(
        json!({ "consents": list.iter().map(consent_json).collect::<Vec<_>>() }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Withdraw {
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
    Ok(ok(consent_json(
        &who.session(&s)
            .withdraw_consent(id, b.refusal_reason.as_deref())
            .await?,
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordGround {
    category: String,
    ground: String,
    reference: String,
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
    let category = parse(Category::parse(&b.category), "category")?;
    let ground = LegalGround::parse(&b.ground)?;
    who.session(&s)
        .record_legal_ground(subject, &category, ground, &b.reference)
        .await?;
    Ok(created(
        json!({ "subject": subject.to_string(), "category": category.as_str(), "ground": ground.as_str() }),
    ))
}

pub async fn export_subject(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let e = who.session(&s).export_subject(subject).await?;
    Ok(ok(json!({
        "subject": subject_json(&e.subject),
        "records": e.records.iter().map(|r| record_json(&s.metrics, r)).collect::<Vec<_>>(),
        "consents": e.consents.iter().map(consent_json).collect::<Vec<_>>(),
        "access_history": e.history.iter().map(audit_json).collect::<Vec<_>>(),
    })))
}

pub async fn block(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    who.session(&s).block(subject).await?;
    Ok(ok(
        json!({ "subject": subject.to_string(), "blocked": true }),
    ))
}

pub async fn unblock(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    who.session(&s).unblock(subject).await?;
    Ok(ok(
        json!({ "subject": subject.to_string(), "blocked": false }),
    ))
}

pub async fn access_history(s: State, who: Caller, id: web::Path<String>) -> Res {
    let subject = parse(SubjectId::parse(&id), "id")?;
    let list = who.session(&s).access_history(subject).await?;
    Ok(ok(
        json!({ "entries": list.iter().map(audit_json).collect::<Vec<_>>() }),
    ))
}

pub async fn verify_audit(s: State, who: Caller) -> Res {
    let r = who.session(&s).verify_audit().await?;
    Ok(ok(
        json!({ "entries": r.entries, "checkpoints": r.checkpoints, "intact": r.problem.is_none(),
                  "problem": r.problem.map(|p| p.to_string()) }),
    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_cycling_addresses_never_clear_one_over_its_limit() {
        let f = AuthFailures::with_capacity(100);
        let over: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..AUTH_FAILURES_PER_MINUTE {
            f.failed(over, Some("vt_stale"));
        }
        assert!(f.blocked(over, Some("vt_stale")).is_some());
        for i in 0..10_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            f.failed([127, a, b, c.wrapping_add(2)].into(), Some("vt_guess"));
            assert!(f.tracked() <= 100, "memory stays bounded");
        }
        assert!(
            f.blocked(over, Some("vt_stale")).is_some(),
            "still over its limit"
        );
        assert!(f.blocked(over, Some("vt_other")).is_none());
    }

    #[test]
    fn depth_counts_outside_strings() {
        assert_eq!(depth(br#"{"a":[1,{"b":2}]}"#), 3);
        assert_eq!(depth(br#"{"a":"[[[[[[\"]]]"}"#), 1);
        assert_eq!(depth(&b"[".repeat(100)), 100);
    }

    #[test]
    fn serde_messages_lose_quoted_input() {
        let e = serde_json::from_str::<Approve>(r#"{"expires_at":"MARKER-secret","uses":1}"#)
            .err()
            .expect("not a date");
        let s = scrub(&e.to_string());
        assert!(!s.contains("MARKER"), "{s}");
    }
}
