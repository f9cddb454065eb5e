//! Request ids, structured request logs and the metrics `/metrics` serves, in OpenMetrics text
//! through `prometheus-client`. Logs carry the route pattern, never the path with its ids, never
//! a header value or a body.
//!
//! Every label comes from a closed set, so no client can grow the label space: the route is a
//! pattern of the route table (or `unmatched`), the method one of the seven the API serves (or
//! `other`), the status one the server itself answered, the outcome a reason code. Before the
//! sets were closed, 3,000 made-up methods grew `/metrics` to 160 MB.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use vault_core::{CommitObserver, GroupCommit, QueueDepths};

/// Request latency buckets, in seconds: 1 ms to 2.5 s.
const LATENCY: [f64; 9] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 2.5];

/// The methods the API serves, and `other` for anything a client makes up.
fn known_method(m: &str) -> &'static str {
    const KNOWN: [&str; 7] = ["GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS"];
    KNOWN.into_iter().find(|k| *k == m).unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriterLabels {
    writer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommitLabels {
    writer: &'static str,
    outcome: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// The server's metrics. One per process, shared by every worker.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<RequestLabels>,
    fields: Family<OutcomeLabels, Counter>,
    batch_sizes: HistogramFamily<WriterLabels>,
    commit_latency: HistogramFamily<CommitLabels>,
    queue_depth: Family<WriterLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "vault_http_requests",
            "HTTP requests by route pattern, method and status",
            requests.clone(),
        );
        let latency: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(|| Histogram::new(LATENCY));
        registry.register_with_unit(
            "vault_http_request_duration",
            "HTTP request latency by route pattern, method and status",
            Unit::Seconds,
            latency.clone(),
        );
        let fields = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "vault_field_decisions",
            "Fields read, by outcome: open, or the reason they stayed sealed",
            fields.clone(),
        );
        let batch_sizes: HistogramFamily<WriterLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 9)));
        registry.register(
            "vault_group_commit_batch_size",
            "Records or audit entries per group-commit batch, by writer",
            batch_sizes.clone(),
        );
        let commit_latency: HistogramFamily<CommitLabels> =
            Family::new_with_constructor(|| Histogram::new(LATENCY));
        registry.register_with_unit(
            "vault_group_commit_duration",
            "Time to write one group-commit batch, by writer and outcome",
            Unit::Seconds,
            commit_latency.clone(),
        );
        let queue_depth = Family::<WriterLabels, Gauge>::default();
        registry.register(
            "vault_group_commit_queue_depth",
            "Writes waiting for a group-commit batch, by writer",
            queue_depth.clone(),
        );
        registry.register_collector(Box::new(ProcessCollector));
        let m = Metrics {
            registry,
            requests,
            latency,
            fields,
            batch_sizes,
            commit_latency,
            queue_depth,
        };
        // Every writer appears from the first scrape, so a dashboard never sees a gap.
        for w in GroupCommit::ALL {
            drop(m.queue_depth.get_or_create(&writer(w)));
            drop(m.batch_sizes.get_or_create(&writer(w)));
        }
        m
    }

    /// Records one request. `route` is a route pattern (or `unmatched`); the method is folded
    /// into the closed set.
    pub fn observe(&self, route: String, method: &str, status: u16, took: Duration) {
        let labels = RequestLabels {
            route,
            method: known_method(method),
            status,
        };
        self.requests.get_or_create(&labels).inc();
        self.latency
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Counts one field's decision on a read: open, or sealed with its reason code.
    pub fn field_decision(&self, outcome: &'static str) {
        self.fields.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// The OpenMetrics text, with the queue depths as they are now.
    pub fn render(&self, depths: QueueDepths) -> String {
        self.queue_depth
            .get_or_create(&writer(GroupCommit::Records))
            .set(depths.records as i64);
        self.queue_depth
            .get_or_create(&writer(GroupCommit::Audit))
            .set(depths.audit as i64);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        out
    }
}

fn writer(w: GroupCommit) -> WriterLabels {
    WriterLabels { writer: w.as_str() }
}

/// The vault's group commits report each batch here.
pub struct CommitMetrics(pub Arc<Metrics>);

impl CommitObserver for CommitMetrics {
    fn committed(&self, w: GroupCommit, items: usize, took: Duration, ok: bool) {
        self.0
            .batch_sizes
            .get_or_create(&writer(w))
            .observe(items as f64);
        let outcome = if ok { "committed" } else { "failed" };
        self.0
            .commit_latency
            .get_or_create(&CommitLabels {
                writer: w.as_str(),
                outcome,
            })
            .observe(took.as_secs_f64());
    }
}

/// The usual `process_*` metrics, read from `/proc/self` at each scrape (Linux only; elsewhere
/// none are written).
#[derive(Debug)]
struct ProcessCollector;

/// Clock ticks per second of `/proc/self/stat`: 100 on every Linux this runs on (reading
/// `sysconf(_SC_CLK_TCK)` would need `unsafe`).
const TICKS: f64 = 100.0;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(p) = ProcessStats::read() else {
            return Ok(());
        };
        let c = ConstCounter::new(p.cpu_seconds);
        c.encode(enc.encode_descriptor(
            "process_cpu",
            "User and system CPU time spent",
            Some(&Unit::Seconds),
            c.metric_type(),
        )?)?;
        let gauges: [(&str, &str, Option<Unit>, f64); 6] = [
            (
                "process_resident_memory",
                "Resident memory size",
                Some(Unit::Bytes),
                p.rss_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size",
                Some(Unit::Bytes),
                p.vm_bytes,
            ),
            (
                "process_open_fds",
                "Open file descriptors",
                None,
                p.open_fds,
            ),
            (
                "process_max_fds",
                "The limit on open file descriptors",
                None,
                p.max_fds,
            ),
            ("process_threads", "OS threads", None, p.threads),
            (
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(Unit::Seconds),
                p.start_time,
            ),
        ];
        for (name, help, unit, v) in gauges {
            let g = ConstGauge::new(v);
            g.encode(enc.encode_descriptor(name, help, unit.as_ref(), g.metric_type())?)?;
        }
        Ok(())
    }
}

/// What `/proc/self` tells about this process.
#[derive(Debug, Default, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub rss_bytes: f64,
    pub vm_bytes: f64,
    pub open_fds: f64,
    pub max_fds: f64,
    pub threads: f64,
    pub start_time: f64,
}

impl ProcessStats {
    /// None where there is no `/proc` (not Linux) or it cannot be read.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
        let boot = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        Self::parse(&stat, &status, &limits, &boot, open_fds)
    }

    fn parse(
        stat: &str,
        status: &str,
        limits: &str,
        boot: &str,
        open_fds: f64,
    ) -> Option<ProcessStats> {
        // The command name (field 2) may hold spaces and parentheses: fields are counted from
        // the last `)`. After it, field 3 (state) is index 0.
        let rest = &stat[stat.rfind(')')? + 1..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| f.get(n - 3).and_then(|s| s.parse::<f64>().ok());
        let kb = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v * 1024.0)
        };
        let threads = status
            .lines()
            .find_map(|l| l.strip_prefix("Threads:"))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        let max_fds = limits
            .lines()
            .find_map(|l| l.strip_prefix("Max open files"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        let btime = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        Some(ProcessStats {
            cpu_seconds: (field(14)? + field(15)?) / TICKS,
            rss_bytes: kb("VmRSS:").unwrap_or(0.0),
            vm_bytes: kb("VmSize:").unwrap_or(0.0),
            open_fds,
            max_fds,
            threads,
            start_time: btime + field(22)? / TICKS,
        })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_stats_count_fields_after_the_last_parenthesis() {
        let stat = "4242 (vault (x) y) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 9 0 5000 123456 77";
        let status = "Name:\tvault\nVmSize:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t9\n";
        let limits = "Limit Soft Hard Units\nMax open files            1024                 4096                 files\n";
        let p =
            ProcessStats::parse(stat, status, limits, "cpu 1 2\nbtime 1700000000\n", 12.0).unwrap();
        assert_eq!(
            p,
            ProcessStats {
                cpu_seconds: 4.0,
                rss_bytes: 1024.0 * 1024.0,
                vm_bytes: 2048.0 * 1024.0,
                open_fds: 12.0,
                max_fds: 1024.0,
                threads: 9.0,
                start_time: 1_700_000_050.0,
            }
        );
        assert!(ProcessStats::parse("no parenthesis", status, limits, "", 1.0).is_none());
    }

    #[test]
    fn made_up_methods_fold_into_other() {
        let m = Metrics::new();
        for i in 0..500 {
            m.observe("unmatched".into(), &format!("M{i}"), 404, Duration::ZERO);
        }
        m.observe("/healthz".into(), "GET", 200, Duration::ZERO);
        let text = m.render(QueueDepths::default());
        assert!(text.contains(r#"method="other""#), "{text}");
        assert!(!text.contains("M499"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains(r#"vault_group_commit_queue_depth{writer="audit"} 0"#));
    }
}
