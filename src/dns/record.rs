//! The answer record: which addresses the sandbox was told for which names.
//!
//! The transparent-mode SNI <-> IP check asks "was address X given to client C for name N?".
//! Answering from what the client was actually told (instead of re-resolving) is what avoids
//! Squid's host-forgery false positives with CDN and geo-DNS answers.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lru::LruCache;

/// One name can legitimately map to many addresses over time (CDN rotation), but a bound keeps
/// a hostile upstream from growing one entry without limit.
const MAX_ADDRS_PER_ENTRY: usize = 64;
/// Upper bound on how long any entry lives, so a huge TTL or grace from a caller can neither
/// overflow `Instant` arithmetic nor pin an address for ever.
const MAX_ENTRY_LIFE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the record knows about (client, name, address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Evidence {
    /// The address was handed to this client for this name and TTL + grace has not passed.
    Given,
    /// Never handed out for this (client, name), or the entry was evicted.
    NotGiven,
    /// It was handed out, but TTL + grace has passed.
    Expired,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    client: IpAddr,
    name: Box<str>,
}

#[derive(Debug, Clone, Copy)]
struct GivenAddr {
    addr: IpAddr,
    /// TTL + grace after the answer was handed out.
    valid_until: Instant,
}

/// Bounded map `(client ip, name) -> {address, expiry}`; the least recently recorded entry is
/// evicted first. The clock is a parameter so tests and callers decide what "now" is.
#[derive(Debug)]
pub struct AnswerRecord {
    grace: Duration,
    entries: Mutex<LruCache<Key, Vec<GivenAddr>>>,
}

impl AnswerRecord {
    /// `capacity` (at least 1) bounds the number of (client, name) entries.
    pub fn new(capacity: usize, grace: Duration) -> Self {
        let capacity = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        Self {
            grace,
            entries: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// Notes that `addrs` were handed to `client` for `name` with `ttl`, at `now`.
    /// Addresses from earlier answers stay until their own expiry: the client may still
    /// hold them in its cache.
    pub fn record(
        &self,
        client: IpAddr,
        name: &str,
        addrs: &[IpAddr],
        ttl: Duration,
        now: Instant,
    ) {
        if addrs.is_empty() {
            return;
        }
        let life = ttl.saturating_add(self.grace).min(MAX_ENTRY_LIFE);
        let valid_until = now + life;
        let key = key(client, name);
        let mut entries = self.lock();
        let list = entries.get_or_insert_mut(key, Vec::new);
        for addr in addrs.iter().map(IpAddr::to_canonical) {
            match list.iter_mut().find(|given| given.addr == addr) {
                Some(given) => given.valid_until = given.valid_until.max(valid_until),
                None => list.push(GivenAddr { addr, valid_until }),
            }
        }
        if list.len() > MAX_ADDRS_PER_ENTRY {
            // Keep the addresses that stay valid longest; the dropped ones expire first anyway.
            list.sort_by_key(|given| std::cmp::Reverse(given.valid_until));
            list.truncate(MAX_ADDRS_PER_ENTRY);
        }
    }

    /// Was `addr` given to `client` for `name`, as of `now`?
    /// `name` is compared case-insensitively and without a trailing dot.
    pub fn check(&self, client: IpAddr, name: &str, addr: IpAddr, now: Instant) -> Evidence {
        let addr = addr.to_canonical();
        let entries = self.lock();
        let Some(list) = entries.peek(&key(client, name)) else {
            return Evidence::NotGiven;
        };
        match list.iter().find(|given| given.addr == addr) {
            None => Evidence::NotGiven,
            Some(given) if now <= given.valid_until => Evidence::Given,
            Some(_) => Evidence::Expired,
        }
    }

    /// Number of (client, name) entries held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<Key, Vec<GivenAddr>>> {
        // A panic while holding the lock can at worst leave one entry half-updated; the map is
        // still a valid map, so keep serving rather than taking DNS down with it.
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn key(client: IpAddr, name: &str) -> Key {
    // IPv4 clients on a dual-stack socket show up as ::ffff:a.b.c.d; the TCP side may see the
    // plain IPv4 form. Canonical form makes both agree.
    Key {
        client: client.to_canonical(),
        name: name
            .trim_end_matches('.')
            .to_ascii_lowercase()
            .into_boxed_str(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C1: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));
    const C2: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 6));

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn given_not_given_expired_follow_ttl_plus_grace() {
        let record = AnswerRecord::new(16, Duration::from_secs(600));
        let t0 = Instant::now();
        record.record(
            C1,
            "api.example.com",
            &[ip("192.0.2.1")],
            Duration::from_secs(60),
            t0,
        );

        let at = |secs| t0 + Duration::from_secs(secs);
        assert_eq!(
            record.check(C1, "api.example.com", ip("192.0.2.1"), t0),
            Evidence::Given
        );
        assert_eq!(
            record.check(C1, "api.example.com", ip("192.0.2.1"), at(660)),
            Evidence::Given
        );
        assert_eq!(
            record.check(C1, "api.example.com", ip("192.0.2.1"), at(661)),
            Evidence::Expired
        );
        assert_eq!(
            record.check(C1, "api.example.com", ip("192.0.2.2"), t0),
            Evidence::NotGiven
        );
        // Another client, or another name, was never told this address.
        assert_eq!(
            record.check(C2, "api.example.com", ip("192.0.2.1"), t0),
            Evidence::NotGiven
        );
        assert_eq!(
            record.check(C1, "other.example.com", ip("192.0.2.1"), t0),
            Evidence::NotGiven
        );
    }

    #[test]
    fn names_and_client_forms_are_normalised() {
        let record = AnswerRecord::new(16, Duration::ZERO);
        let t0 = Instant::now();
        let mapped_client: IpAddr = ip("::ffff:10.0.0.5");
        record.record(
            mapped_client,
            "API.Example.COM.",
            &[ip("::ffff:192.0.2.1")],
            Duration::from_secs(5),
            t0,
        );
        assert_eq!(
            record.check(C1, "api.example.com", ip("192.0.2.1"), t0),
            Evidence::Given
        );
    }

    #[test]
    fn older_answers_stay_valid_until_their_own_expiry() {
        let record = AnswerRecord::new(16, Duration::ZERO);
        let t0 = Instant::now();
        record.record(
            C1,
            "cdn.example",
            &[ip("192.0.2.1")],
            Duration::from_secs(100),
            t0,
        );
        record.record(
            C1,
            "cdn.example",
            &[ip("192.0.2.2")],
            Duration::from_secs(10),
            t0,
        );
        let t50 = t0 + Duration::from_secs(50);
        assert_eq!(
            record.check(C1, "cdn.example", ip("192.0.2.1"), t50),
            Evidence::Given
        );
        assert_eq!(
            record.check(C1, "cdn.example", ip("192.0.2.2"), t50),
            Evidence::Expired
        );
    }

    #[test]
    fn capacity_evicts_least_recently_recorded() {
        let record = AnswerRecord::new(2, Duration::ZERO);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(60);
        record.record(C1, "a.example", &[ip("192.0.2.1")], ttl, t0);
        record.record(C1, "b.example", &[ip("192.0.2.2")], ttl, t0);
        record.record(C1, "c.example", &[ip("192.0.2.3")], ttl, t0);
        assert_eq!(record.len(), 2);
        assert_eq!(
            record.check(C1, "a.example", ip("192.0.2.1"), t0),
            Evidence::NotGiven
        );
        assert_eq!(
            record.check(C1, "c.example", ip("192.0.2.3"), t0),
            Evidence::Given
        );
    }

    #[test]
    fn addresses_per_entry_are_bounded() {
        let record = AnswerRecord::new(4, Duration::ZERO);
        let t0 = Instant::now();
        for i in 0..200u32 {
            let addr = IpAddr::from(std::net::Ipv4Addr::from(0xC000_0200 + i));
            record.record(
                C1,
                "big.example",
                &[addr],
                Duration::from_secs(u64::from(i) + 1),
                t0,
            );
        }
        // The longest-lived addresses survive, the shortest-lived are dropped.
        let last = IpAddr::from(std::net::Ipv4Addr::from(0xC000_0200 + 199));
        let first = IpAddr::from(std::net::Ipv4Addr::from(0xC000_0200));
        assert_eq!(record.check(C1, "big.example", last, t0), Evidence::Given);
        assert_eq!(
            record.check(C1, "big.example", first, t0),
            Evidence::NotGiven
        );
    }

    #[test]
    fn huge_ttl_does_not_overflow() {
        let record = AnswerRecord::new(4, Duration::MAX);
        let t0 = Instant::now();
        record.record(C1, "x.example", &[ip("192.0.2.1")], Duration::MAX, t0);
        assert_eq!(
            record.check(C1, "x.example", ip("192.0.2.1"), t0),
            Evidence::Given
        );
    }
}
