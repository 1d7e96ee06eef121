//! Counters for /metrics. Relaxed atomics: each is an independent tally.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct DnsStats {
    queries: AtomicU64,
    malformed: AtomicU64,
    oversized: AtomicU64,
    rate_limited: AtomicU64,
    blocked: AtomicU64,
    upstream_failed: AtomicU64,
    overloaded: AtomicU64,
}

/// A point-in-time copy of [`DnsStats`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DnsCounters {
    /// Packets that parsed as DNS queries (UDP and TCP).
    pub queries: u64,
    /// Packets dropped because they did not parse, or were not a single-question query.
    pub malformed: u64,
    /// Packets or TCP frames dropped for exceeding the size bound.
    pub oversized: u64,
    /// Queries refused by the per-client rate limit.
    pub rate_limited: u64,
    /// Queries answered NXDOMAIN because the policy does not allow the name.
    pub blocked: u64,
    /// Allowed queries that got SERVFAIL because the upstream failed or timed out.
    pub upstream_failed: u64,
    /// UDP queries or TCP connections dropped because the in-flight bound was reached.
    pub overloaded: u64,
}

impl DnsStats {
    pub fn snapshot(&self) -> DnsCounters {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        DnsCounters {
            queries: get(&self.queries),
            malformed: get(&self.malformed),
            oversized: get(&self.oversized),
            rate_limited: get(&self.rate_limited),
            blocked: get(&self.blocked),
            upstream_failed: get(&self.upstream_failed),
            overloaded: get(&self.overloaded),
        }
    }

    pub(crate) fn query(&self) {
        self.queries.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn malformed(&self) {
        self.malformed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn oversized(&self) {
        self.oversized.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn blocked(&self) {
        self.blocked.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn upstream_failed(&self) {
        self.upstream_failed.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
    }
}
