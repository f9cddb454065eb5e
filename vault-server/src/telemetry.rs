//! Request ids, structured request logs and Prometheus metrics. Logs carry the route pattern,
//! never the path with its ids, never a header value or a body.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

const BUCKETS: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

#[derive(Default)]
struct Hist {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The methods the API serves, and `other` for anything a client makes up.
fn known_method(m: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"];
    KNOWN.into_iter().find(|k| *k == m).unwrap_or("other")
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, &'static str, u16), Hist>>,
    fields: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    /// Records one request. `route` is a route pattern (a closed set: the route table, or
    /// `unmatched`), and the method is folded into a closed set too, so no client can grow the
    /// label space: 3,000 made-up methods once grew `/metrics` to 160 MB.
    pub fn observe(&self, route: &str, method: &str, status: u16, took: Duration) {
        let secs = took.as_secs_f64();
        let method = known_method(method);
        if let Ok(mut m) = self.requests.lock() {
            let h = m.entry((route.to_owned(), method, status)).or_default();
            h.count += 1;
            h.sum += secs;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    h.buckets[i] += 1;
                }
            }
        }
    }

    /// Counts one field's decision on a read: open, or sealed with its reason code.
    pub fn field_decision(&self, outcome: &'static str) {
        if let Ok(mut m) = self.fields.lock() {
            *m.entry(outcome).or_default() += 1;
        }
    }

    /// The Prometheus text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let _ = writeln!(
            out,
            "# HELP vault_http_requests_total HTTP requests by route, method and status."
        );
        let _ = writeln!(out, "# TYPE vault_http_requests_total counter");
        let _ = writeln!(
            out,
            "# HELP vault_http_request_duration_seconds HTTP request latency."
        );
        let _ = writeln!(out, "# TYPE vault_http_request_duration_seconds histogram");
        if let Ok(m) = self.requests.lock() {
            for ((route, method, status), h) in m.iter() {
                let l = format!(
                    r#"route="{}",method="{}",status="{}""#,
                    esc(route),
                    esc(method),
                    status
                );
                let _ = writeln!(out, "vault_http_requests_total{{{l}}} {}", h.count);
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "vault_http_request_duration_seconds_bucket{{{l},le=\"{b}\"}} {}",
                        h.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "vault_http_request_duration_seconds_bucket{{{l},le=\"+Inf\"}} {}",
                    h.count
                );
                let _ = writeln!(
                    out,
                    "vault_http_request_duration_seconds_sum{{{l}}} {}",
                    h.sum
                );
                let _ = writeln!(
                    out,
                    "vault_http_request_duration_seconds_count{{{l}}} {}",
                    h.count
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP vault_field_decisions_total Fields read, by outcome (open or the reason they stayed sealed)."
        );
        let _ = writeln!(out, "# TYPE vault_field_decisions_total counter");
        if let Ok(m) = self.fields.lock() {
            for (outcome, n) in m.iter() {
                let _ = writeln!(
                    out,
                    "vault_field_decisions_total{{outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        out
    }
}

/// A request id from the client's `X-Request-Id` if it is a short token, else a new one.
pub fn request_id(given: Option<&str>) -> String {
    match given {
        Some(s)
            if !s.is_empty()
                && s.len() <= 64
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
        {
            s.to_owned()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    }
}
