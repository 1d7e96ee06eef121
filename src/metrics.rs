//! Counters for `/metrics` (Prometheus text format). Relaxed atomics: each is an
//! independent tally, read without a lock.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::dns::DnsStats;

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

impl Metrics {
    /// The exposition text; `leaves` is the CA's mint count.
    pub fn render(&self, leaves: u64) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, labels: &str, value: u64| {
            let _ = writeln!(out, "# HELP paude_proxy_{name} {help}");
            let _ = writeln!(out, "# TYPE paude_proxy_{name} counter");
            let _ = writeln!(out, "paude_proxy_{name}{labels} {value}");
        };
        counter(
            "connections_total",
            "Client connections accepted.",
            "{entry=\"explicit\"}",
            self.connections_explicit.get(),
        );
        counter(
            "transparent_connections_total",
            "Redirected connections accepted.",
            "",
            self.connections_transparent.get(),
        );
        counter(
            "denied_total",
            "Requests and connections refused by the policy.",
            "",
            self.denied.get(),
        );
        counter(
            "requests_total",
            "Requests forwarded upstream.",
            "",
            self.requests.get(),
        );
        counter(
            "injected_total",
            "Requests that carried an injected credential.",
            "",
            self.injected.get(),
        );
        counter(
            "upstream_errors_total",
            "Upstream failures answered with 502.",
            "",
            self.upstream_errors.get(),
        );
        counter(
            "reloads_total",
            "Configuration reloads applied.",
            "",
            self.reloads.get(),
        );
        counter(
            "reload_failures_total",
            "Configuration reloads rejected; the previous configuration stayed in force.",
            "",
            self.reload_failures.get(),
        );
        counter(
            "leaf_certificates_minted_total",
            "Leaf certificates minted.",
            "",
            leaves,
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
                counter(
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
        let text = m.render(3);
        assert!(text.contains("\npaude_proxy_denied_total 2\n"), "{text}");
        assert!(text.contains("paude_proxy_leaf_certificates_minted_total 3"));
        assert!(text.contains("# TYPE paude_proxy_requests_total counter"));
        assert!(
            !text.contains("dns_"),
            "no DNS section without a DNS server"
        );
    }
}
