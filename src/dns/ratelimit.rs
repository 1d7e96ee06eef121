//! Per-client token bucket, so a looping agent cannot flood the upstream resolver.

use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use lru::LruCache;

use super::config::RateLimit;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Bounded: at most `max_clients` buckets; the least recently seen client is forgotten.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    buckets: Mutex<LruCache<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: RateLimit) -> Self {
        let max_clients = NonZeroUsize::new(limit.max_clients).unwrap_or(NonZeroUsize::MIN);
        Self {
            per_second: f64::from(limit.per_second),
            // A zero burst would refuse everything, which is never what an operator meant.
            burst: f64::from(limit.burst.max(1)),
            buckets: Mutex::new(LruCache::new(max_clients)),
        }
    }

    /// Takes one token for `client` at `now`; false when the client is over its limit.
    pub fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let client = client.to_canonical();
        let mut buckets = self.lock();
        let bucket = buckets.get_or_insert_mut(client, || Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        bucket.last = bucket.last.max(now);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn lock(&self) -> MutexGuard<'_, LruCache<IpAddr, Bucket>> {
        // Buckets are plain numbers; a poisoned lock cannot leave them in an unsafe state.
        self.buckets
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 6));

    fn limiter(per_second: u32, burst: u32, max_clients: usize) -> RateLimiter {
        RateLimiter::new(RateLimit {
            per_second,
            burst,
            max_clients,
        })
    }

    #[test]
    fn burst_then_refill_at_rate() {
        let limiter = limiter(10, 5, 16);
        let t0 = Instant::now();
        assert!((0..5).all(|_| limiter.allow(A, t0)));
        assert!(!limiter.allow(A, t0));
        // 100 ms at 10/s refills exactly one token.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.allow(A, t1));
        assert!(!limiter.allow(A, t1));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        assert_eq!((0..10).filter(|_| limiter.allow(A, later)).count(), 5);
    }

    #[test]
    fn clients_are_independent() {
        let limiter = limiter(0, 2, 16);
        let t0 = Instant::now();
        assert!(limiter.allow(A, t0) && limiter.allow(A, t0));
        assert!(!limiter.allow(A, t0));
        assert!(limiter.allow(B, t0));
    }

    #[test]
    fn forgotten_clients_start_with_a_full_bucket() {
        let limiter = limiter(0, 1, 1);
        let t0 = Instant::now();
        assert!(limiter.allow(A, t0));
        assert!(!limiter.allow(A, t0));
        assert!(limiter.allow(B, t0)); // evicts A
        assert!(limiter.allow(A, t0));
    }

    #[test]
    fn a_clock_going_backwards_does_not_mint_tokens() {
        let limiter = limiter(1000, 1, 4);
        let t1 = Instant::now() + Duration::from_secs(10);
        assert!(limiter.allow(A, t1));
        assert!(!limiter.allow(A, t1 - Duration::from_secs(5)));
        assert!(!limiter.allow(A, t1));
    }
}
