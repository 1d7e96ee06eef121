//! The token cache: one fetch at a time, shared by every request that needed it.
//!
//! - A token is used until shortly before it expires, then refreshed.
//! - Requests that find no usable token wait for the fetch in flight instead of starting
//!   their own: 20 concurrent first requests cause one fetch.
//! - After an upstream `401`, [`TokenSource::refresh_rejected`] forces one new fetch, unless
//!   another request already replaced the rejected token.
//! - A failed refresh keeps the last good token while it is still valid.
//! - A token that looks like a placeholder is refused: injecting it would only hide a
//!   misconfiguration (say, the proxy itself holding the agent's stub file).
//!
//! Provider-neutral: the provider supplies a [`Fetch`] and a label for messages.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue};

use crate::credential::fetch::{Fetch, FetchError, Fetched, Why};
use crate::credential::looks_like_placeholder;
use crate::scrub::Needles;
use crate::secret::Secret;

/// A token is refreshed this long before it expires (or halfway through its life, for
/// short-lived ones), so a request never leaves with a token about to die.
const REFRESH_MARGIN: Duration = Duration::from_secs(120);
/// One token request (with a client library's own retries) may take this long; then it has
/// failed. Libraries such as gcp_auth set no timeout of their own, and a silently dropped
/// SYN would otherwise hang every request waiting on the fetch.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed fetch, requests get the same failure for this long instead of each
/// starting a new fetch against an endpoint that is down.
const FAILURE_BACKOFF: Duration = Duration::from_secs(2);

/// Logged (debug) by every request that found no fresh token and joins or starts a fetch.
pub const WAITING_FOR_FETCH: &str = "no fresh token: waiting for the token fetch";

/// A usable token: the secret (formatted into a header by the route's injector), the
/// further headers its flow needs (values marked sensitive, so HPACK never indexes them),
/// every secret as a needle for scrubbing responses, and its generation, which identifies
/// it when an upstream rejects it.
#[derive(Clone)]
pub struct Bearer {
    pub token: Secret,
    pub extra: Arc<Vec<(HeaderName, HeaderValue)>>,
    pub needles: Needles,
    pub generation: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Why a request gets no token: the provider is broken, or nobody has signed in yet.
pub type Unavailable = FetchError;

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
    last_failure: Option<(Instant, FetchError)>,
}

impl State {
    /// The current token if it has not expired (it may be due for refresh).
    fn valid(&self, now: Instant) -> Option<Bearer> {
        self.current.clone().filter(|b| now < b.expires_at)
    }

    fn fresh(&self, now: Instant) -> Option<Bearer> {
        self.current.clone().filter(|b| now < b.refresh_at)
    }

    /// A recent failure, reused instead of a new fetch. Not for "signed out": looking for
    /// the credentials file again is cheap, and it should work the moment it appears.
    fn recent_failure(&self, now: Instant) -> Option<FetchError> {
        match &self.last_failure {
            Some((at, why @ FetchError::Failed(_)))
                if now.duration_since(*at) < FAILURE_BACKOFF =>
            {
                Some(why.clone())
            }
            _ => None,
        }
    }

    /// What a request gets from the last fetch's outcome: a still-valid token, else the
    /// failure.
    fn outcome(&self, now: Instant) -> Result<Bearer, FetchError> {
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
    /// Whose tokens these are, for log lines ("Google").
    label: &'static str,
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
    pub fn new(label: &'static str, fetcher: Arc<dyn Fetch>) -> TokenSource {
        TokenSource {
            fetcher,
            label,
            state: Mutex::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn endpoint(&self) -> String {
        self.fetcher.endpoint()
    }

    pub fn label(&self) -> &'static str {
        self.label
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The state is plain data updated in single assignments; a panic elsewhere cannot
        // leave it half-written.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A token to inject now. Errors are one line without secrets.
    pub async fn token(&self) -> Result<Bearer, Unavailable> {
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
        match self.fetch_now(Why::Due).await {
            Ok(b) => Ok(b),
            // Keep the last good token while it lasts.
            Err(why) => self.state().valid(Instant::now()).ok_or(why),
        }
    }

    /// The upstream answered `401` to the token of `rejected`: get a different one. Returns
    /// the replacement (which another request may already have fetched), or the reason
    /// there is none; the rejected token is kept either way, as the last good one.
    pub async fn refresh_rejected(&self, rejected: u64) -> Result<Bearer, Unavailable> {
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
        self.fetch_now(Why::Rejected).await
    }

    /// Runs one fetch; the caller holds the gate.
    async fn fetch_now(&self, why: Why) -> Result<Bearer, Unavailable> {
        let started = Instant::now();
        let result = match tokio::time::timeout(FETCH_TIMEOUT, self.fetcher.fetch(why)).await {
            Ok(Ok(fetched)) => accept(fetched).map_err(FetchError::Failed),
            Ok(Err(why)) => Err(why),
            Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}").into()),
        };
        let mut s = self.state();
        s.completed += 1;
        match result {
            Ok((token, extra, needles, lifetime, margin)) => {
                let generation = s.completed;
                let bearer = Bearer {
                    token,
                    extra: Arc::new(extra),
                    needles,
                    generation,
                    refresh_at: started + lifetime.saturating_sub(margin),
                    expires_at: started + lifetime,
                };
                s.current = Some(bearer.clone());
                s.last_failure = None;
                tracing::info!(
                    endpoint = %self.fetcher.endpoint(),
                    lifetime_s = lifetime.as_secs(),
                    generation,
                    "fetched a {} access token",
                    self.label
                );
                Ok(bearer)
            }
            Err(FetchError::SignedOut(why)) => {
                tracing::info!("no {} access token: {why}", self.label);
                let why = FetchError::SignedOut(why);
                s.last_failure = Some((Instant::now(), why.clone()));
                Err(why)
            }
            Err(FetchError::Failed(why)) => {
                let why = format!("token endpoint {}: {why}", self.fetcher.endpoint());
                tracing::warn!("cannot get a {} access token: {why}", self.label);
                let why = FetchError::Failed(why);
                s.last_failure = Some((Instant::now(), why.clone()));
                Err(why)
            }
        }
    }
}

fn margin(lifetime: Duration) -> Duration {
    REFRESH_MARGIN.min(lifetime / 2)
}

type Accepted = (
    Secret,
    Vec<(HeaderName, HeaderValue)>,
    Needles,
    Duration,
    Duration,
);

/// Checks a fetched token (and its extra headers) and builds what requests need.
fn accept(fetched: Fetched) -> Result<Accepted, String> {
    let token = fetched.access_token.expose().trim();
    if looks_like_placeholder(token) {
        return Err(format!(
            "the endpoint returned a placeholder-looking token ({} characters); refusing to \
             inject it (does the proxy hold the agent's stub credentials instead of real ones?)",
            token.len()
        ));
    }
    if fetched.lifetime.is_zero() {
        return Err("the endpoint returned a token that has already expired".into());
    }
    if HeaderValue::from_str(&format!("Bearer {token}")).is_err() {
        return Err("the endpoint returned a token with characters not allowed in a header".into());
    }
    let mut needles = vec![token.as_bytes().to_vec()];
    let mut extra = Vec::with_capacity(fetched.extra.len());
    for (name, value) in fetched.extra {
        let mut v = HeaderValue::from_str(value.expose().trim())
            .map_err(|_| format!("the value for {name} has characters not allowed in a header"))?;
        v.set_sensitive(true);
        needles.push(value.expose().trim().as_bytes().to_vec());
        extra.push((name, v));
    }
    let stand_ins = fetched
        .stand_ins
        .iter()
        .map(|(secret, stand_in)| (secret.expose().trim().as_bytes().to_vec(), *stand_in))
        .collect();
    let margin = fetched.margin.unwrap_or_else(|| margin(fetched.lifetime));
    Ok((
        Secret::new(token),
        extra,
        Needles::with_stand_ins(needles, stand_ins),
        fetched.lifetime,
        margin,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::fetch::FetchFuture;
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
        fn fetch(&self, _why: Why) -> FetchFuture<'_> {
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
                Ok(Fetched::token(Secret::new(token), self.lifetime))
            })
        }
        fn endpoint(&self) -> String {
            "fake".into()
        }
    }

    fn source(fake: &Arc<Fake>) -> Arc<TokenSource> {
        Arc::new(TokenSource::new("Test", fake.clone()))
    }

    #[tokio::test]
    async fn cached_until_refresh_time_then_refetched() {
        let fake = Fake::new(Duration::from_secs(3600));
        let src = source(&fake);
        let a = src.token().await.unwrap();
        let b = src.token().await.unwrap();
        assert_eq!(fake.calls(), 1);
        assert_eq!(a.token, b.token);
        assert!(format!("{a:?}").find("tok-").is_none());

        // Pretend the refresh time has come.
        src.state().current.as_mut().unwrap().refresh_at = Instant::now();
        let c = src.token().await.unwrap();
        assert_eq!(fake.calls(), 2);
        assert_ne!(c.token, a.token);
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
        assert!(err.why().contains("endpoint down"), "{err:?}");
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
            err.why().contains("fake") && err.why().contains("endpoint down"),
            "{err:?}"
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
            assert!(err.why().contains("placeholder"), "{err:?}");
            assert!(!err.why().contains(token), "{err:?}");
        }
    }

    #[test]
    fn margin_is_bounded_by_half_the_lifetime() {
        assert_eq!(margin(Duration::from_secs(3600)), REFRESH_MARGIN);
        assert_eq!(margin(Duration::from_secs(60)), Duration::from_secs(30));
    }
}
