//! Who is calling and why: the `Caller` (from `Authorization: Bearer`) and `Why` (from
//! `X-Vault-Purpose`) extractors, the failed-authentication limiter and the client address.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderMap};
use actix_web::{FromRequest, HttpRequest};
use futures_util::future::LocalBoxFuture;
use vault_core::{BearerToken, Category, Principal, Purpose, Purposes, Session};

use super::State;
use super::input::parse;
use crate::limits::{ClientLimiter, MAX_TRACKED, client_key};
use crate::problem::ApiError;

/// Failed authentications, limited per (client address, token prefix) and per client address
/// (`crate::limits`, GCRA through `governor`). Behind a proxy every app arrives from the
/// proxy's address, so the client is taken from `X-Forwarded-For` when, and only when, the peer
/// is a trusted proxy; and one app presenting a stale token locks out only that token, not
/// every other app from the same address, while a client guessing many tokens is stopped by its
/// address total. A token that authenticated from an address in the last ten minutes is not
/// stopped by that address's total, so one client guessing behind a school's NAT does not lock
/// out the apps already working there (its own per-token limit still applies).
pub struct AuthFailures {
    tokens: ClientLimiter<(IpAddr, u64)>,
    clients: ClientLimiter<IpAddr>,
    /// (client, token prefix) pairs that authenticated, and when; at most `capacity`.
    good: Mutex<Recent>,
    capacity: usize,
    hasher: std::hash::RandomState,
}

type Recent = HashMap<(IpAddr, u64), Instant>;

/// How long a token that authenticated from an address stays exempt from its address total.
const GOOD_FOR: Duration = Duration::from_secs(600);

impl Default for AuthFailures {
    fn default() -> Self {
        Self::with_capacity(MAX_TRACKED)
    }
}

/// Failed authentications one token (by prefix) may make at once from one client.
pub const AUTH_FAILURES_PER_TOKEN: u32 = 20;
/// Failed authentications one client address may make at once, whatever the tokens.
pub const AUTH_FAILURES_PER_CLIENT: u32 = 200;
/// After its burst, a token or a client may fail once more every 3 s: 20 a minute.
const AUTH_FAILURE_EVERY: Duration = Duration::from_secs(3);
/// Characters of a token that identify which one it is (`vt_` and 9 more).
const TOKEN_PREFIX: usize = 12;

fn burst(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl AuthFailures {
    /// A limiter that remembers at most `capacity` keys of each kind.
    pub fn with_capacity(capacity: usize) -> Self {
        let every = AUTH_FAILURE_EVERY;
        AuthFailures {
            tokens: ClientLimiter::new(burst(AUTH_FAILURES_PER_TOKEN), every, capacity),
            clients: ClientLimiter::new(burst(AUTH_FAILURES_PER_CLIENT), every, capacity),
            good: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            hasher: std::hash::RandomState::new(),
        }
    }

    fn good(&self) -> MutexGuard<'_, Recent> {
        self.good.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This token authenticated from this client.
    fn succeeded(&self, client: IpAddr, token: Option<&str>) {
        let key = self.token_key(client_key(client), token);
        let mut good = self.good();
        if !good.contains_key(&key) && good.len() >= self.capacity {
            good.retain(|_, at| at.elapsed() < GOOD_FOR);
            if good.len() >= self.capacity {
                return;
            }
        }
        good.insert(key, Instant::now());
    }

    /// A keyed hash of the token's first characters: no token material is kept.
    fn token_key(&self, client: IpAddr, token: Option<&str>) -> (IpAddr, u64) {
        let prefix = token.map(|t| t.chars().take(TOKEN_PREFIX).collect::<String>());
        let h = std::hash::BuildHasher::hash_one(&self.hasher, prefix.unwrap_or_default());
        (client, h)
    }

    /// Seconds to wait, if this client (or this token from it) is over its limit.
    fn blocked(&self, client: IpAddr, token: Option<&str>) -> Option<u64> {
        let client = client_key(client);
        let key = self.token_key(client, token);
        let by_token = self.tokens.over(&key);
        let known = self
            .good()
            .get(&key)
            .is_some_and(|at| at.elapsed() < GOOD_FOR);
        let by_client = if known {
            None
        } else {
            self.clients.over(&client)
        };
        by_token
            .into_iter()
            .chain(by_client)
            .max()
            .map(|d| d.as_secs_f64().ceil().max(1.0) as u64)
    }

    fn failed(&self, client: IpAddr, token: Option<&str>) {
        let client = client_key(client);
        // Counted even past the limit: failures sent all at once passed `blocked` together,
        // and each must push the next allowed time out.
        let key = self.token_key(client, token);
        self.good().remove(&key);
        self.tokens.charge(&key);
        self.clients.charge(&client);
    }

    /// How many keys are tracked (for the memory-bound test).
    pub fn tracked(&self) -> usize {
        self.tokens.tracked() + self.clients.tracked()
    }
}

/// The client's address: the peer's, or, when the peer is a trusted proxy, the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy. A client can put anything in that
/// header, so only the part the trusted proxies appended is believed.
pub fn client_ip(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    // A server listening on [::] sees IPv4 peers as ::ffff:a.b.c.d: compare as IPv4.
    let peer = req.peer_addr()?.ip().to_canonical();
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
        match hop.parse::<IpAddr>().map(|ip| ip.to_canonical()) {
            Ok(ip) if trusted.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            // A malformed hop: trust nothing further left than the proxy itself.
            Err(_) => return Some(peer),
        }
    }
    Some(peer)
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
    if let (Ok(_), Some(ip)) = (&result, ip) {
        s.auth_failures.succeeded(ip, shown);
    }
    if let Ok(p) = &result {
        // The request's span (startup::app) names who made it, in every log line it writes.
        tracing::Span::current().record("principal", tracing::field::display(p.id()));
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
pub struct Caller(pub(super) Principal);

impl Caller {
    pub(super) fn session<'v>(&self, s: &'v State) -> Session<'v> {
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
pub struct Why(pub(super) Purpose);

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
pub(super) fn purposes(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_cycling_addresses_never_clear_one_over_its_limit() {
        let f = AuthFailures::with_capacity(100);
        let over: IpAddr = [127, 0, 0, 1].into();
        for _ in 0..AUTH_FAILURES_PER_TOKEN {
            f.failed(over, Some("vt_stale"));
        }
        assert!(f.blocked(over, Some("vt_stale")).is_some());
        for i in 0..10_000u32 {
            let [_, a, b, c] = i.to_be_bytes();
            f.failed([127, a, b, c.wrapping_add(2)].into(), Some("vt_guess"));
            assert!(f.tracked() <= 200, "memory stays bounded");
        }
        assert!(
            f.blocked(over, Some("vt_stale")).is_some(),
            "still over its limit"
        );
        assert!(f.blocked(over, Some("vt_other")).is_none());
    }
}
