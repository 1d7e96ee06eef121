//! Connections to approved destinations: dial only `Target::addr`, verify TLS for
//! `Target::host` against system roots plus `PAUDE_PROXY_UPSTREAM_CA` (never the proxy's own
//! CA), speak h2 or HTTP/1.1 as the upstream chooses, and pool what can be reused.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri, Version, header};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::body::{Body, BoxError};
use crate::error::{ProxyError, io_chain};
use crate::policy::Target;

/// A TCP connect that takes longer is a 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const UPSTREAM_TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle pooled connections older than this are dropped rather than reused (most servers
/// close keep-alive connections after 60 to 120 s; reusing one just as it closes fails).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Enough for a busy HTTP/1.1-only upstream: a smaller cap closes connections above it and
/// dials them again under load (measured: 64 clients, cap 32 → half the throughput).
const POOL_MAX_IDLE_PER_KEY: usize = 256;
/// Bound on remembered HTTP/1.1-only targets; past it, new ones just take the gate.
const MAX_LEARNED: usize = 4096;

/// HTTP/2 flow-control windows, both directions (also used by the client-facing server).
pub const H2_STREAM_WINDOW: u32 = 1 << 20;
pub const H2_CONNECTION_WINDOW: u32 = 4 << 20;

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

pub struct Upstream {
    tls: TlsConnector,
    /// ALPN `http/1.1` only: a WebSocket handshake needs an HTTP/1.1 connection of its own.
    tls_h1: TlsConnector,
    pool: Arc<Pool>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    scheme: Scheme,
    target: Target,
}

#[derive(Default)]
struct Pool {
    idle: Mutex<HashMap<Key, Vec<(Conn, Instant)>>>,
    /// Targets known to speak HTTP/1.1 only (they need no connect gate).
    h1_only: Mutex<HashSet<Key>>,
    gates: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<()>>>>,
}

enum Conn {
    H1(http1::SendRequest<Body>),
    /// Shared: every user clones the handle and the connection stays in the pool.
    H2(http2::SendRequest<Body>),
}

impl Upstream {
    pub fn new(roots: RootCertStore) -> Upstream {
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
            pool: Arc::new(Pool::default()),
        }
    }

    /// Sends `req` (any URI form; it is rewritten for the connection's protocol) to
    /// `target` and returns the response with its body streaming.
    pub async fn send(
        &self,
        scheme: Scheme,
        target: &Target,
        mut req: Request<Body>,
    ) -> Result<Response<Body>, ProxyError> {
        let key = Key {
            scheme,
            target: target.clone(),
        };
        let mut conn = self.acquire(&key).await?;
        let upstream_err = |e: hyper::Error| ProxyError::upstream_http(&target.host, &e);
        let resp = match &mut conn {
            Conn::H1(sender) => {
                to_h1(&mut req, target, scheme);
                sender.send_request(req).await.map_err(upstream_err)?
            }
            Conn::H2(sender) => {
                to_h2(&mut req, target, scheme);
                sender.send_request(req).await.map_err(upstream_err)?
            }
        };
        let (parts, body) = resp.into_parts();
        let body = match conn {
            Conn::H1(sender) => ReturnOnEnd {
                inner: body,
                sender: Some(sender),
                key: Some(key),
                pool: self.pool.clone(),
            }
            .boxed_unsync(),
            Conn::H2(_) => crate::body::stream(body),
        };
        Ok(Response::from_parts(parts, body))
    }

    /// Closes idle connections past their idle limit and dead ones. Called periodically, so
    /// that idle sockets do not linger until their target is used again.
    pub fn reap_idle(&self) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.retain(|_, list| {
            list.retain(|(c, since)| since.elapsed() < POOL_IDLE_TIMEOUT && !c.is_closed());
            !list.is_empty()
        });
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
        let fresh = self.connect(key, &self.tls).await?;
        let is_h2 = matches!(fresh, Conn::H2(_));
        self.pool.learn(key, is_h2);
        if let Conn::H2(sender) = &fresh {
            // Shared from the start: concurrent requests multiplex on it.
            self.pool.put(key.clone(), Conn::H2(sender.clone()));
        }
        Ok(fresh)
    }

    /// Sends an upgrade request (WebSocket) on a fresh HTTP/1.1 connection that is never
    /// pooled: after a 101 the connection belongs to the relayed bytes.
    pub async fn send_upgrade(
        &self,
        scheme: Scheme,
        target: &Target,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let key = Key {
            scheme,
            target: target.clone(),
        };
        let Conn::H1(mut sender) = self.connect(&key, &self.tls_h1).await? else {
            return Err(ProxyError::UpstreamHttp {
                host: target.host.to_string(),
                detail: "negotiated HTTP/2 on an HTTP/1.1-only connection".into(),
            });
        };
        to_h1(&mut req, target, scheme);
        sender
            .send_request(req)
            .await
            .map_err(|e| ProxyError::upstream_http(&target.host, &e))
    }

    async fn connect(&self, key: &Key, tls: &TlsConnector) -> Result<Conn, ProxyError> {
        let target = &key.target;
        let conn_err = |detail: String| ProxyError::Connect {
            target: format!("{} ({})", target.host.with_port(target.port()), target.addr),
            detail,
        };
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target.addr))
            .await
            .map_err(|_| conn_err(format!("no answer within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| conn_err(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        if key.scheme == Scheme::Http {
            return h1(TokioIo::new(tcp), &target.host.to_string()).await;
        }
        let tls_err = |detail: String| ProxyError::UpstreamTls {
            host: target.host.to_string(),
            detail,
        };
        let name = match target.host.ip() {
            Some(ip) => ServerName::IpAddress(ip.into()),
            None => ServerName::try_from(target.host.as_str().to_string())
                .map_err(|e| tls_err(e.to_string()))?,
        };
        let tls = tokio::time::timeout(UPSTREAM_TLS_TIMEOUT, tls.connect(name, tcp))
            .await
            .map_err(|_| tls_err(format!("no handshake within {UPSTREAM_TLS_TIMEOUT:?}")))?
            .map_err(|e| tls_err(io_chain(&e)))?;
        let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        if is_h2 {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                // Larger windows: hyper's 64 KiB default caps a bulk download at one window
                // per round trip. Fixed rather than adaptive: BDP pings cost on small requests.
                .initial_stream_window_size(H2_STREAM_WINDOW)
                .initial_connection_window_size(H2_CONNECTION_WINDOW)
                .handshake(io)
                .await
                .map_err(|e| tls_err(crate::error::chain(&e)))?;
            let host = target.host.to_string();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%host, "upstream h2 connection ended: {e}");
                }
            });
            Ok(Conn::H2(sender))
        } else {
            h1(io, &target.host.to_string()).await
        }
    }
}

async fn h1<IO>(io: IO, host: &str) -> Result<Conn, ProxyError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| ProxyError::upstream_http(&host, &e))?;
    let host = host.to_string();
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%host, "upstream connection ended: {e}");
        }
    });
    Ok(Conn::H1(sender))
}

/// Origin-form URI and a `Host` header naming the target, as HTTP/1.1 wants.
fn to_h1(req: &mut Request<Body>, target: &Target, scheme: Scheme) {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    let authority = authority(target, scheme);
    if let Ok(v) = header::HeaderValue::from_str(&authority) {
        req.headers_mut().insert(header::HOST, v);
    }
}

/// Absolute URI (hyper derives `:scheme` and `:authority` from it) and no `Host`.
fn to_h2(req: &mut Request<Body>, target: &Target, scheme: Scheme) {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let scheme_str = match scheme {
        Scheme::Https => "https",
        Scheme::Http => "http",
    };
    let uri = format!("{scheme_str}://{}{path}", authority(target, scheme));
    *req.uri_mut() = Uri::try_from(uri).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut().remove(header::HOST);
}

fn authority(target: &Target, scheme: Scheme) -> String {
    let default = match scheme {
        Scheme::Https => 443,
        Scheme::Http => 80,
    };
    target.host.authority(target.port(), default)
}

impl Pool {
    async fn checkout(&self, key: &Key) -> Option<Conn> {
        loop {
            let candidate = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let list = idle.get_mut(key)?;
                list.retain(|(c, since)| since.elapsed() < POOL_IDLE_TIMEOUT && !c.is_closed());
                match list.last_mut() {
                    // In use counts as not idle: refresh the timestamp.
                    Some((Conn::H2(s), since)) => {
                        *since = Instant::now();
                        Some(Conn::H2(s.clone()))
                    }
                    Some((Conn::H1(_), _)) => list.pop().map(|(c, _)| c),
                    None => None,
                }
            };
            match candidate? {
                Conn::H1(mut s) => {
                    // Waits for the previous response's end to be processed; fails if the
                    // server closed the connection meanwhile, and then we try the next one.
                    if s.ready().await.is_ok() {
                        return Some(Conn::H1(s));
                    }
                }
                Conn::H2(mut s) => {
                    if s.ready().await.is_ok() {
                        return Some(Conn::H2(s));
                    }
                    self.forget_h2(key);
                }
            }
        }
    }

    /// The per-target connect gate, or `None` for HTTP/1.1-only targets.
    fn gate(&self, key: &Key) -> Option<Arc<tokio::sync::Mutex<()>>> {
        if self
            .h1_only
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
        {
            return None;
        }
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        // Forget gates nobody holds, so the map stays as small as the set of busy targets.
        gates.retain(|_, g| Arc::strong_count(g) > 1);
        Some(gates.entry(key.clone()).or_default().clone())
    }

    fn learn(&self, key: &Key, is_h2: bool) {
        let mut h1 = self.h1_only.lock().unwrap_or_else(|p| p.into_inner());
        if is_h2 {
            h1.remove(key);
        } else if h1.len() < MAX_LEARNED {
            h1.insert(key.clone());
        }
    }

    fn put(&self, key: Key, conn: Conn) {
        if conn.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(key).or_default();
        if list.len() < POOL_MAX_IDLE_PER_KEY {
            list.push((conn, Instant::now()));
        }
    }

    fn forget_h2(&self, key: &Key) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = idle.get_mut(key) {
            list.retain(|(c, _)| !matches!(c, Conn::H2(_)) || !c.is_closed());
        }
    }
}

impl Conn {
    fn is_closed(&self) -> bool {
        match self {
            Conn::H1(s) => s.is_closed(),
            Conn::H2(s) => s.is_closed(),
        }
    }
}

/// An HTTP/1.1 response body that gives its connection back to the pool once the body has
/// been read to the end, and only then: a body that errored or was abandoned half-way
/// leaves the connection in an unknown framing state, so it is dropped.
struct ReturnOnEnd {
    inner: Incoming,
    sender: Option<http1::SendRequest<Body>>,
    key: Option<Key>,
    pool: Arc<Pool>,
}

impl ReturnOnEnd {
    fn give_back(&mut self) {
        if let (Some(sender), Some(key)) = (self.sender.take(), self.key.take()) {
            self.pool.put(key, Conn::H1(sender));
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
                self.sender = None;
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
