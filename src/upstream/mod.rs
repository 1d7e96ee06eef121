//! Connections to approved destinations: dial only the approved addresses, verify TLS for
//! `Target::host` against system roots plus `PAUDE_PROXY_UPSTREAM_CA` (never the proxy's own
//! CA), speak h2 or HTTP/1.1 as the upstream chooses, pool what can be reused, and send a
//! request again when the upstream provably never acted on it.
//!
//! - [`dial`]: Happy Eyeballs over the approved addresses, TLS, the HTTP handshake;
//! - [`pool`]: idle and shared connections under a global cap;
//! - [`retry`]: when a failed send may be repeated, and the body kept for it;
//! - [`form`]: the request target and `Host` each protocol wants.

mod dial;
mod form;
mod pool;
pub mod retry;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use tokio_rustls::TlsConnector;
use tokio_util::task::TaskTracker;

pub use self::dial::happy_eyeballs_order;
use self::dial::{Sender, dial};
use self::pool::{Conn, Key, Pool};
use self::retry::{Failure, MAX_REPLAY_BODY, RetryReason, Tape};
use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use crate::limits::Limits;
use crate::metrics::Counter;
use crate::policy::Target;

/// HTTP/2 stream window, both directions (also used by the client-facing server).
pub const H2_STREAM_WINDOW: u32 = 1 << 20;
/// HTTP/2 connection window of the client-facing server (one client's own streams).
pub const H2_CONNECTION_WINDOW: u32 = 4 << 20;
/// HTTP/2 connection window towards upstreams, shared by every client of a host: 1 GiB,
/// far above the stream windows of all streams a server allows, so that flow control
/// isolates streams (a stalled reader holds at most its own stream window).
pub const H2_UPSTREAM_CONNECTION_WINDOW: u32 = 1 << 30;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    Https,
    Http,
}

/// Builds the upstream root store: system roots and extra roots, minus every certificate
/// carrying the proxy CA's public key (it may have been installed into system trust for
/// the agent's sake; trusting it upstream would let the proxy vouch for itself).
pub fn root_store(
    extra: &[CertificateDer<'static>],
    own_ca_spki: &[u8],
) -> (RootCertStore, usize, Vec<String>) {
    let native = rustls_native_certs::load_native_certs();
    let mut warnings: Vec<String> = native.errors.iter().map(|e| e.to_string()).collect();
    let mut store = RootCertStore::empty();
    let mut excluded = 0;
    for cert in native.certs.into_iter().chain(extra.iter().cloned()) {
        let is_own = x509_parser::parse_x509_certificate(&cert)
            .map(|(_, c)| c.tbs_certificate.subject_pki.raw == own_ca_spki)
            .unwrap_or(false);
        if is_own {
            excluded += 1;
            continue;
        }
        if let Err(e) = store.add(cert) {
            warnings.push(format!("skipping an unusable root certificate: {e}"));
        }
    }
    (store, excluded, warnings)
}

/// What the pool and the retries did, for `/metrics`.
#[derive(Debug, Default)]
pub struct UpstreamStats {
    pub retries_unsent: Counter,
    pub retries_refused: Counter,
    pub retries_stale: Counter,
    pub response_timeouts: Counter,
    pub pool_evicted: Counter,
}

impl UpstreamStats {
    fn retried(&self, why: RetryReason) {
        match why {
            RetryReason::Unsent => self.retries_unsent.inc(),
            RetryReason::Refused => self.retries_refused.inc(),
            RetryReason::Stale => self.retries_stale.inc(),
        }
    }
}

pub struct Upstream {
    tls: TlsConnector,
    /// ALPN `http/1.1` only: a WebSocket handshake needs an HTTP/1.1 connection of its own.
    tls_h1: TlsConnector,
    pool: Arc<Pool>,
    limits: Limits,
    /// Owns every connection driver task, so shutdown can wait for them.
    tasks: TaskTracker,
    pub stats: UpstreamStats,
}

/// A send that failed, with what is needed to decide about sending it again.
struct Failed {
    error: ProxyError,
    /// The request, when hyper gave it back unsent.
    unsent: Option<Request<Body>>,
    refused: bool,
    /// The connection it failed on.
    conn: u64,
}

impl Upstream {
    pub fn new(roots: RootCertStore, limits: Limits, tasks: TaskTracker) -> Upstream {
        let mut cfg =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| b.with_root_certificates(roots).with_no_client_auth())
                // The ring provider always supports the default versions.
                .expect("ring supports TLS 1.2 and 1.3");
        let mut h1_only = cfg.clone();
        h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Upstream {
            tls: TlsConnector::from(Arc::new(cfg)),
            tls_h1: TlsConnector::from(Arc::new(h1_only)),
            pool: Arc::new(Pool::new(limits.max_idle_upstream, limits.upstream_idle)),
            limits,
            tasks,
            stats: UpstreamStats::default(),
        }
    }

    /// Sends `req` (any URI form; it is rewritten for the connection's protocol) to
    /// `target` and returns the response with its body streaming. A request the upstream
    /// provably never acted on is sent once more on a fresh connection ([`retry`]).
    pub async fn send(
        &self,
        scheme: Scheme,
        target: &Target,
        req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let key = Key {
            scheme,
            target: target.clone(),
        };
        let idempotent = retry::is_idempotent(req.method());
        let (parts, body) = req.into_parts();
        let (body, tape) = retry::record(body, MAX_REPLAY_BODY);
        let head = parts.clone();
        let conn = self.acquire(&key).await?;
        let reused = conn.reused;
        let failed = match self
            .send_on(&key, conn, Request::from_parts(parts, body), &tape)
            .await
        {
            Ok(resp) => return Ok(resp),
            Err(f) => f,
        };
        let failure = Failure {
            unsent: failed.unsent.is_some(),
            refused: failed.refused,
            reused,
            idempotent,
        };
        let Some(why) = retry::retry_reason(failure) else {
            return Err(failed.error);
        };
        let again = match failed.unsent {
            Some(req) => req,
            None => match tape.replay().await {
                Some(body) => Request::from_parts(head, body),
                None => {
                    return Err(annotate(
                        failed.error,
                        "not sent again: the request body was too large to keep or was not handed back in time",
                    ));
                }
            },
        };
        self.stats.retried(why);
        tracing::debug!(host = %target.host, reason = why.label(), "sending the request again on a fresh connection: {}", failed.error);
        let conn = self.acquire_fresh(&key, failed.conn).await?;
        self.send_on(&key, conn, again, &tape)
            .await
            .map_err(|f| annotate(f.error, "also failed when sent again on a fresh connection"))
    }

    /// One attempt on one connection, bounded by the response-header timeout.
    async fn send_on(
        &self,
        key: &Key,
        conn: Conn,
        mut req: Request<Body>,
        tape: &Tape,
    ) -> Result<Response<Body>, Failed> {
        let target = &key.target;
        let Conn { id, mut sender, .. } = conn;
        let sent = match &mut sender {
            Sender::H1(s) => {
                form::to_h1(&mut req, target, key.scheme);
                let fut = s.try_send_request(req);
                tokio::time::timeout(self.limits.response_header, fut).await
            }
            Sender::H2(s) => {
                form::to_h2(&mut req, target, key.scheme);
                let fut = s.try_send_request(req.map(crate::coalesce::coalesce));
                tokio::time::timeout(self.limits.response_header, fut).await
            }
        };
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(mut e)) => {
                // A connection that failed a request is not offered to anyone else.
                self.pool.forget(key, id);
                let unsent = e.take_message();
                let error = e.into_error();
                return Err(Failed {
                    refused: retry::refused_by_server(&error),
                    error: ProxyError::upstream_http(&target.host, &error),
                    unsent,
                    conn: id,
                });
            }
            Err(_) => {
                self.stats.response_timeouts.inc();
                self.pool.forget(key, id);
                return Err(Failed {
                    error: ProxyError::UpstreamTimeout {
                        host: target.host.to_string(),
                        after: self.limits.response_header,
                    },
                    unsent: None,
                    refused: false,
                    conn: id,
                });
            }
        };
        // A response head arrived: no retry can follow, the kept body can go.
        tape.discard();
        let (parts, body) = resp.into_parts();
        let body = match sender {
            Sender::H1(sender) => ReturnOnEnd {
                inner: body,
                conn: Some((id, sender)),
                key: Some(key.clone()),
                pool: self.pool.clone(),
            }
            .boxed_unsync(),
            Sender::H2(_) => crate::body::stream(body),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// A pooled connection, or a new one. While a target's protocol is unknown or known to be
    /// h2, new connections are made one at a time per target, so a burst of first requests
    /// shares one h2 connection instead of dialling once each; HTTP/1.1 targets dial in
    /// parallel, since an h1 connection serves one request at a time anyway.
    async fn acquire(&self, key: &Key) -> Result<Conn, ProxyError> {
        if let Some(c) = self.pool.checkout(key).await {
            return Ok(c);
        }
        let gate = self.pool.gate(key);
        let _turn = match &gate {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        if gate.is_some()
            && let Some(c) = self.pool.checkout(key).await
        {
            return Ok(c);
        }
        self.dial_new(key).await
    }

    /// A connection made after `failed` (for a retry). For HTTP/2 that may be one another
    /// retry just dialled (the gate keeps a burst of refused streams to one new connection);
    /// for HTTP/1.1 it is always new, since every idle one may be as stale as the first.
    async fn acquire_fresh(&self, key: &Key, failed: u64) -> Result<Conn, ProxyError> {
        let gate = self.pool.gate(key);
        let _turn = match &gate {
            Some(g) => Some(g.lock().await),
            None => None,
        };
        if gate.is_some()
            && let Some(c) = self.pool.checkout(key).await
            && matches!(c.sender, Sender::H2(_))
            && c.id > failed
        {
            return Ok(c);
        }
        self.dial_new(key).await
    }

    /// A new connection; an h2 one is shared through the pool from the start.
    async fn dial_new(&self, key: &Key) -> Result<Conn, ProxyError> {
        // Boxed: dialling (Happy Eyeballs, TLS, the HTTP handshake) is a 6.5 KiB future, and
        // inline it would make every request's future that large, copied into place on each
        // request (callgrind: 11k instructions of memcpy per keep-alive request) for a
        // branch that pooled requests never take.
        let sender = Box::pin(dial(key.scheme, &key.target, &self.tls, &self.tasks)).await?;
        let id = self.pool.new_id();
        self.pool.learn(key, matches!(sender, Sender::H2(_)));
        if let Sender::H2(s) = &sender {
            // Concurrent requests multiplex on it.
            self.pool.put(key.clone(), id, Sender::H2(s.clone()));
        }
        Ok(Conn {
            id,
            sender,
            reused: false,
        })
    }

    /// Sends an upgrade request (WebSocket) on a fresh HTTP/1.1 connection that is never
    /// pooled: after a 101 the connection belongs to the relayed bytes.
    pub async fn send_upgrade(
        &self,
        scheme: Scheme,
        target: &Target,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let Sender::H1(mut sender) = dial(scheme, target, &self.tls_h1, &self.tasks).await? else {
            return Err(ProxyError::UpstreamHttp {
                host: target.host.to_string(),
                detail: "negotiated HTTP/2 on an HTTP/1.1-only connection".into(),
            });
        };
        form::to_h1(&mut req, target, scheme);
        match tokio::time::timeout(self.limits.response_header, sender.send_request(req)).await {
            Ok(sent) => sent.map_err(|e| ProxyError::upstream_http(&target.host, &e)),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                host: target.host.to_string(),
                after: self.limits.response_header,
            }),
        }
    }

    /// Closes idle connections past their idle limit and dead ones. Called periodically, so
    /// that idle sockets do not linger until their target is used again.
    pub fn reap_idle(&self) {
        self.pool.reap();
    }

    /// Closes up to `n` pooled connections, the longest idle first (out of file descriptors).
    pub fn shed_idle(&self, n: usize) -> usize {
        let shed = self.pool.shed(n);
        for _ in 0..shed {
            self.stats.pool_evicted.inc();
        }
        shed
    }

    /// Closes every pooled connection, so their driver tasks end (shutdown).
    pub fn close_all(&self) -> usize {
        self.pool.clear()
    }

    pub fn pooled(&self) -> usize {
        self.pool.idle_count()
    }
}

/// Adds what the proxy did to an upstream error's detail.
fn annotate(e: ProxyError, note: &str) -> ProxyError {
    match e {
        ProxyError::UpstreamHttp { host, detail } => ProxyError::UpstreamHttp {
            host,
            detail: format!("{detail} ({note})"),
        },
        other => other,
    }
}

/// An HTTP/1.1 response body that gives its connection back to the pool once the body has
/// been read to the end, and only then: a body that errored or was abandoned half-way
/// leaves the connection in an unknown framing state, so it is dropped.
struct ReturnOnEnd {
    inner: Incoming,
    conn: Option<(u64, hyper::client::conn::http1::SendRequest<Body>)>,
    key: Option<Key>,
    pool: Arc<Pool>,
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let (Some((id, sender)), Some(key)) = (self.conn.take(), self.key.take()) {
            self.pool.put(key, id, Sender::H1(sender));
        }
    }
}

impl hyper::body::Body for ReturnOnEnd {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.give_back(),
            Poll::Ready(Some(Err(_))) => {
                self.conn = None;
            }
            _ => {}
        }
        polled.map_err(BoxError::from)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReturnOnEnd {
    fn drop(&mut self) {
        // hyper may never poll a body it knows is empty (HEAD, 204, Content-Length: 0).
        if self.inner.is_end_stream() {
            self.give_back();
        }
    }
}
