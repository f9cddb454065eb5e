//! Request input: the body (size limit, content type), its JSON depth, serde's messages with
//! the quoted input scrubbed, and the field parsers every handler shares.

use actix_web::HttpRequest;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::web::{self, Bytes};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use vault_core::Category;

use crate::problem::ApiError;

/// Largest request body: a record with a photo fits; 10 MB does not.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// Deepest JSON nesting accepted in a body.
pub const MAX_DEPTH: usize = 32;

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
pub(super) fn depth(b: &[u8]) -> usize {
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

/// The body as `T`: JSON content type, at most `MAX_BODY` bytes and `MAX_DEPTH` levels.
pub(super) async fn json<T: DeserializeOwned>(
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

/// A parse error becomes a 400 `invalid_input` naming the field.
pub(super) fn parse<T, E: std::fmt::Display>(r: Result<T, E>, field: &str) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::bad_request("invalid_input", e.to_string()).with_field(field))
}

pub(super) fn categories(v: &[String]) -> Result<Vec<Category>, ApiError> {
    v.iter()
        .map(|c| parse(Category::parse(c), "categories"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::access_requests::Approve;

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
