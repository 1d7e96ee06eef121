//! Counters for `/metrics` (Prometheus text format). Relaxed atomics: each is an
//! independent tally, read without a lock.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dns::DnsStats;
use crate::upstream::UpstreamStats;

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_explicit: Counter,
    pub connections_transparent: Counter,
    pub denied: Counter,
    pub requests: Counter,
    pub injected: Counter,
    pub upstream_errors: Counter,
    /// Reloads applied / rejected (the last good configuration stayed).
    pub reloads: Counter,
    pub reload_failures: Counter,
    /// Set once the sandbox DNS server starts.
    pub dns: OnceLock<Arc<DnsStats>>,
}

#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Values that live in other parts of the proxy, read when `/metrics` is asked.
#[derive(Debug, Default)]
pub struct Live<'a> {
    /// The CA's mint count.
    pub leaves: u64,
    pub upstream: Option<&'a UpstreamStats>,
    pub pooled: u64,
    pub open_connections: u64,
    pub refused_connections: u64,
    pub shed_connections: u64,
}

impl Metrics {
    /// The exposition text.
    pub fn render(&self, live: &Live<'_>) -> String {
        let leaves = live.leaves;
        let mut out = String::new();
        let mut metric = |kind: &str, name: &str, help: &str, labels: &str, value: u64| {
            let _ = writeln!(out, "# HELP paude_proxy_{name} {help}");
            let _ = writeln!(out, "# TYPE paude_proxy_{name} {kind}");
            let _ = writeln!(out, "paude_proxy_{name}{labels} {value}");
        };
        metric(
            "counter",
            "connections_total",
            "Client connections accepted.",
            "{entry=\"explicit\"}",
            self.connections_explicit.get(),
        );
        metric(
            "counter",
            "transparent_connections_total",
            "Redirected connections accepted.",
            "",
            self.connections_transparent.get(),
        );
        metric(
            "counter",
            "denied_total",
            "Requests and connections refused by the policy.",
            "",
            self.denied.get(),
        );
        metric(
            "counter",
            "requests_total",
            "Requests forwarded upstream.",
            "",
            self.requests.get(),
        );
        metric(
            "counter",
            "injected_total",
            "Requests that carried an injected credential.",
            "",
            self.injected.get(),
        );
        metric(
            "counter",
            "upstream_errors_total",
            "Upstream failures answered with 502.",
            "",
            self.upstream_errors.get(),
        );
        metric(
            "counter",
            "reloads_total",
            "Configuration reloads applied.",
            "",
            self.reloads.get(),
        );
        metric(
            "counter",
            "reload_failures_total",
            "Configuration reloads rejected; the previous configuration stayed in force.",
            "",
            self.reload_failures.get(),
        );
        metric(
            "counter",
            "leaf_certificates_minted_total",
            "Leaf certificates minted.",
            "",
            leaves,
        );
        metric(
            "counter",
            "connections_refused_total",
            "Client connections closed at once because PAUDE_PROXY_MAX_CONNECTIONS was reached.",
            "",
            live.refused_connections,
        );
        metric(
            "counter",
            "connections_shed_total",
            "Idle client connections closed to free file descriptors.",
            "",
            live.shed_connections,
        );
        if let Some(u) = live.upstream {
            for (reason, value) in [
                ("unsent", u.retries_unsent.get()),
                ("refused", u.retries_refused.get()),
                ("stale", u.retries_stale.get()),
            ] {
                metric(
                    "counter",
                    "upstream_retries_total",
                    "Requests sent again on a fresh connection, by why that was safe.",
                    &format!("{{reason=\"{reason}\"}}"),
                    value,
                );
            }
            metric(
                "counter",
                "upstream_response_timeouts_total",
                "Requests answered 504: no response head within PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT.",
                "",
                u.response_timeouts.get(),
            );
            metric(
                "counter",
                "upstream_pool_shed_total",
                "Pooled upstream connections closed to free file descriptors.",
                "",
                u.pool_evicted.get(),
            );
        }
        metric(
            "gauge",
            "open_connections",
            "Client connections open now.",
            "",
            live.open_connections,
        );
        metric(
            "gauge",
            "upstream_pooled_connections",
            "Upstream connections in the pool now.",
            "",
            live.pooled,
        );
        if let Some(dns) = self.dns.get() {
            let d = dns.snapshot();
            for (name, value) in [
                ("queries", d.queries),
                ("malformed", d.malformed),
                ("oversized", d.oversized),
                ("rate_limited", d.rate_limited),
                ("blocked", d.blocked),
                ("upstream_failed", d.upstream_failed),
                ("overloaded", d.overloaded),
            ] {
                metric(
                    "counter",
                    &format!("dns_{name}_total"),
                    "Sandbox DNS server.",
                    "",
                    value,
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.denied.inc();
        m.denied.inc();
        let text = m.render(&Live {
            leaves: 3,
            ..Live::default()
        });
        assert!(text.contains("\npaude_proxy_denied_total 2\n"), "{text}");
        assert!(text.contains("paude_proxy_leaf_certificates_minted_total 3"));
        assert!(text.contains("# TYPE paude_proxy_requests_total counter"));
        assert!(
            !text.contains("dns_"),
            "no DNS section without a DNS server"
        );
    }
}
