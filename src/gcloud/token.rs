//! The token cache: one fetch at a time, shared by every request that needed it.
//!
//! - A token is used until shortly before it expires, then refreshed.
//! - Requests that find no usable token wait for the fetch in flight instead of starting
//!   their own: 20 concurrent first requests cause one fetch.
//! - After an upstream `401`, [`TokenSource::refresh_rejected`] forces one new fetch, unless
//!   another request already replaced the rejected token.
//! - A failed refresh keeps the last good token while it is still valid.
//! - A token that looks like a placeholder is refused: injecting it would only hide a
//!   misconfiguration (say, the proxy itself holding the stub ADC).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::HeaderValue;

use crate::gcloud::fetch::{Fetch, Fetched};
use crate::gcloud::looks_like_placeholder;
use crate::scrub::Needles;

/// A token is refreshed this long before it expires (or halfway through its life, for
/// short-lived ones), so a request never leaves with a token about to die.
const REFRESH_MARGIN: Duration = Duration::from_secs(120);
/// One token request (with gcp_auth's own retries) may take this long; then it has failed.
/// gcp_auth sets no timeout of its own, and a silently dropped SYN would otherwise hang
/// every request waiting on the fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed fetch, requests get the same failure for this long instead of each
/// starting a new fetch against an endpoint that is down.
const FAILURE_BACKOFF: Duration = Duration::from_secs(2);

/// Logged (debug) by every request that found no fresh token and joins or starts a fetch.
pub const WAITING_FOR_FETCH: &str = "no fresh Google token: waiting for the token fetch";

/// A usable token: the complete `Authorization` value, marked sensitive (so `Debug` prints
/// `Sensitive` and HPACK never indexes it), the token as a needle for scrubbing responses,
/// and its generation, which identifies it when an upstream rejects it.
#[derive(Clone)]
pub struct Bearer {
    pub value: HeaderValue,
    pub needles: Needles,
    pub generation: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bearer")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    current: Option<Bearer>,
    /// Completed fetches, successful or not: a waiter that sees this change knows a fetch
    /// finished while it waited, and takes that fetch's outcome.
    completed: u64,
    last_failure: Option<(Instant, String)>,
}

impl State {
    /// The current token if it has not expired (it may be due for refresh).
    fn valid(&self, now: Instant) -> Option<Bearer> {
        self.current.clone().filter(|b| now < b.expires_at)
    }

    fn fresh(&self, now: Instant) -> Option<Bearer> {
        self.current.clone().filter(|b| now < b.refresh_at)
    }

    fn recent_failure(&self, now: Instant) -> Option<String> {
        match &self.last_failure {
            Some((at, why)) if now.duration_since(*at) < FAILURE_BACKOFF => Some(why.clone()),
            _ => None,
        }
    }

    /// What a request gets from the last fetch's outcome: a still-valid token, else the
    /// failure.
    fn outcome(&self, now: Instant) -> Result<Bearer, String> {
        if let Some(b) = self.valid(now) {
            return Ok(b);
        }
        Err(self
            .last_failure
            .as_ref()
            .map(|(_, why)| why.clone())
            .unwrap_or_else(|| "no token yet".into()))
    }
}

pub struct TokenSource {
    fetcher: Arc<dyn Fetch>,
    state: Mutex<State>,
    /// Held for the duration of a fetch: the single-flight gate.
    fetching: tokio::sync::Mutex<()>,
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSource")
            .field("endpoint", &self.fetcher.endpoint())
            .finish_non_exhaustive()
    }
}

impl TokenSource {
    pub fn new(fetcher: Arc<dyn Fetch>) -> TokenSource {
        TokenSource {
            fetcher,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn endpoint(&self) -> String {
        self.fetcher.endpoint()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data updated in single assignments; a panic elsewhere cannot
        // leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token to inject now. Errors are one line without secrets.
    pub async fn token(&self) -> Result<Bearer, String> {
        let seen = {
            let s = self.state();
            let now = Instant::now();
            if let Some(b) = s.fresh(now) {
                return Ok(b);
            }
            if let Some(why) = s.recent_failure(now) {
                return s.valid(now).ok_or(why);
            }
            s.completed
        };
        // Tests count this line to know every request is waiting before the fetch ends.
        tracing::debug!("{WAITING_FOR_FETCH}");
        let _gate = self.fetching.lock().await;
        {
            let s = self.state();
            if s.completed != seen {
                return s.outcome(Instant::now());
            }
        }
        match self.fetch_now().await {
            Ok(b) => Ok(b),
            // Keep the last good token while it lasts.
            Err(why) => self.state().valid(Instant::now()).ok_or(why),
        }
    }

    /// The upstream answered `401` to the token of `rejected`: get a different one. Returns
    /// the replacement (which another request may already have fetched), or the reason
    /// there is none; the rejected token is kept either way, as the last good one.
    pub async fn refresh_rejected(&self, rejected: u64) -> Result<Bearer, String> {
        let seen = {
            let s = self.state();
            if let Some(b) = s.valid(Instant::now()).filter(|b| b.generation != rejected) {
                return Ok(b);
            }
            if let Some(why) = s.recent_failure(Instant::now()) {
                return Err(why);
            }
            s.completed
        };
        let _gate = self.fetching.lock().await;
        {
            let s = self.state();
            let now = Instant::now();
            if let Some(b) = s.valid(now).filter(|b| b.generation != rejected) {
                return Ok(b);
            }
            if s.completed != seen {
                return Err(s
                    .recent_failure(now)
                    .unwrap_or_else(|| "the refreshed token was the rejected one".into()));
            }
        }
        self.fetch_now().await
    }

    /// Runs one fetch; the caller holds the gate.
    async fn fetch_now(&self) -> Result<Bearer, String> {
        let started = Instant::now();
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.fetcher.fetch()).await {
            Ok(Ok(fetched)) => accept(fetched),
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
        };
        let mut s = self.state();
        s.completed += 1;
        match result {
            Ok((value, needles, lifetime)) => {
                let generation = s.completed;
                let bearer = Bearer {
                    value,
                    needles,
                    generation,
                    refresh_at: started + lifetime.saturating_sub(margin(lifetime)),
                    expires_at: started + lifetime,
                };
                s.current = Some(bearer.clone());
                s.last_failure = None;
                tracing::info!(
                    endpoint = %self.fetcher.endpoint(),
                    lifetime_s = lifetime.as_secs(),
                    generation,
                    "fetched a Google access token"
                );
                Ok(bearer)
            }
            Err(why) => {
                let why = format!("token endpoint {}: {why}", self.fetcher.endpoint());
                tracing::warn!("cannot get a Google access token: {why}");
                s.last_failure = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

fn margin(lifetime: Duration) -> Duration {
    REFRESH_MARGIN.min(lifetime / 2)
}

/// Checks a fetched token and builds its header value.
fn accept(fetched: Fetched) -> Result<(HeaderValue, Needles, Duration), String> {
    let token = fetched.access_token.expose();
    if looks_like_placeholder(token) {
        return Err(format!(
            "the endpoint returned a placeholder-looking token ({} characters); refusing to \
             inject it (does the proxy hold the agent's stub ADC instead of a real one?)",
            token.trim().len()
        ));
    }
    if fetched.lifetime.is_zero() {
        return Err("the endpoint returned a token that has already expired".into());
    }
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| "the endpoint returned a token with characters not allowed in a header")?;
    value.set_sensitive(true);
    let needles = Needles::new([token.trim().as_bytes().to_vec()]);
    Ok((value, needles, fetched.lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gcloud::fetch::FetchFuture;
    use crate::secret::Secret;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out `tok-<n>-…` tokens, or fails while `fail` is set; counts calls.
    struct Fake {
        calls: AtomicUsize,
        fail: std::sync::atomic::AtomicBool,
        lifetime: Duration,
        token: Option<&'static str>,
    }

    impl Fake {
        fn new(lifetime: Duration) -> Arc<Fake> {
            Arc::new(Fake {
                calls: AtomicUsize::new(0),
                fail: false.into(),
                lifetime,
                token: None,
            })
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl Fetch for Fake {
        fn fetch(&self) -> FetchFuture<'_> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
                // Yield so concurrent callers really pile up behind the gate.
                tokio::task::yield_now().await;
                if self.fail.load(Ordering::SeqCst) {
                    return Err("endpoint down".into());
                }
                let token = match self.token {
                    Some(t) => t.to_string(),
                    None => format!("tok-{n}-abcdefghijklmnopqrstuvwxyz"),
                };
                Ok(Fetched {
                    access_token: Secret::new(token),
                    lifetime: self.lifetime,
                })
            })
        }
        fn endpoint(&self) -> String {
            "fake".into()
        }
    }

    fn source(fake: &Arc<Fake>) -> Arc<TokenSource> {
        Arc::new(TokenSource::new(fake.clone()))
    }

    #[tokio::test]
    async fn cached_until_refresh_time_then_refetched() {
        let fake = Fake::new(Duration::from_secs(3600));
        let src = source(&fake);
        let a = src.token().await.unwrap();
        let b = src.token().await.unwrap();
        assert_eq!(fake.calls(), 1);
        assert_eq!(a.value, b.value);
        assert!(a.value.is_sensitive());
        assert!(format!("{a:?}").find("tok-").is_none());

        // Pretend the refresh time has come.
        src.state().current.as_mut().unwrap().refresh_at = Instant::now();
        let c = src.token().await.unwrap();
        assert_eq!(fake.calls(), 2);
        assert_ne!(c.value, a.value);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_requests_share_one_fetch() {
        let fake = Fake::new(Duration::from_secs(3600));
        let src = source(&fake);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let src = src.clone();
                tokio::spawn(async move { src.token().await.map(|b| b.generation) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), 1);
        }
        assert_eq!(fake.calls(), 1);
    }

    #[tokio::test]
    async fn forced_refresh_once_even_when_many_were_rejected() {
        let fake = Fake::new(Duration::from_secs(3600));
        let src = source(&fake);
        let first = src.token().await.unwrap();
        let second = src.refresh_rejected(first.generation).await.unwrap();
        assert_ne!(second.generation, first.generation);
        // A second request rejected with the same old token takes the new one.
        let third = src.refresh_rejected(first.generation).await.unwrap();
        assert_eq!(third.generation, second.generation);
        assert_eq!(fake.calls(), 2);
    }

    #[tokio::test]
    async fn failed_refresh_keeps_the_last_good_token() {
        let fake = Fake::new(Duration::from_secs(3600));
        let src = source(&fake);
        let first = src.token().await.unwrap();
        fake.fail.store(true, Ordering::SeqCst);
        let err = src.refresh_rejected(first.generation).await.unwrap_err();
        assert!(err.contains("endpoint down"), "{err}");
        // Due for refresh, refresh fails: the still-valid token is used.
        src.state().current.as_mut().unwrap().refresh_at = Instant::now();
        src.state().last_failure = None;
        let again = src.token().await.unwrap();
        assert_eq!(again.generation, first.generation);
    }

    #[tokio::test]
    async fn no_token_and_endpoint_down_is_an_error_and_backs_off() {
        let fake = Fake::new(Duration::from_secs(3600));
        fake.fail.store(true, Ordering::SeqCst);
        let src = source(&fake);
        let err = src.token().await.unwrap_err();
        assert!(
            err.contains("fake") && err.contains("endpoint down"),
            "{err}"
        );
        assert!(src.token().await.is_err());
        assert_eq!(
            fake.calls(),
            1,
            "second request within the backoff reuses the failure"
        );
    }

    #[tokio::test]
    async fn placeholder_tokens_are_never_accepted() {
        for token in ["paude-proxy-managed", "short-token"] {
            let fake = Arc::new(Fake {
                token: Some(token),
                ..Arc::into_inner(Fake::new(Duration::from_secs(3600))).unwrap()
            });
            let err = source(&fake).token().await.unwrap_err();
            assert!(err.contains("placeholder"), "{err}");
            assert!(!err.contains(token), "{err}");
        }
    }

    #[test]
    fn margin_is_bounded_by_half_the_lifetime() {
        assert_eq!(margin(Duration::from_secs(3600)), REFRESH_MARGIN);
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(30));
    }
}
