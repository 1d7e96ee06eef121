//! Recording upstream servers. Each one is a real server on 127.0.0.1:0 (TLS via tokio-rustls,
//! or plain TCP) served by hyper-util's auto builder so HTTP/2 tests can reuse it. It records
//! every request it receives and counts TCP accepts and completed TLS handshakes, so tests
//! assert on what actually reached the upstream rather than on what the client saw.
//!
//! Routes: `/echo`, `/status/{code}`, `/redirect`, `/bytes/{n}`, `/upload`, plus `/gate`
//! (response held half-sent until the test releases it) and `/gate-upload` (signals once the
//! first request-body chunk arrived) for streaming tests. For the protocol tests: `/sse?n=N`
//! (one event per `SSE_INTERVAL`, send times recorded), `/ws` (WebSocket echo),
//! `/barrier/{n}` (answers only once n requests are in flight at the same time),
//! `/encoded` (an opaque `Content-Encoding: gzip` body) and `/close` (`Connection: close`).
//!
//! The ALPN offered decides the protocol strictly: `h2` is served as HTTP/2 only, `http/1.1`
//! as HTTP/1.1 only, so an "h1-only" upstream really cannot be spoken to in h2.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::HandshakeKind;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::IO_TIMEOUT;
use super::body::{self, BodyDigest, PrngBody, TestBody};
use super::pki::{self, Leaf, TestCa, UPSTREAM_NAMES};
use super::{sse, ws};

/// The test upstream accepts far larger heads than the proxy, so a proxy-side limit (431) is
/// never confused with an upstream one.
const UPSTREAM_MAX_HEAD: usize = 1024 * 1024;

/// The body `/encoded` sends, labelled `Content-Encoding: gzip`. It is not valid gzip on
/// purpose: a proxy that tried to decode it would fail, and one that passes it through
/// delivers these exact bytes.
pub const ENCODED_BODY: &[u8] = b"\x1f\x8b opaque-compressed-bytes-the-proxy-must-not-touch";

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Which accepted TCP connection carried it (1-based, in accept order).
    pub conn_id: usize,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub version: Version,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1), as received.
    pub authority: String,
    /// Every header line in order, duplicates included; names are lowercase.
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Recorded {
    /// All values of header `name` (case-insensitive), duplicates included.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        !self.header_values(name).is_empty()
    }

    /// Does any header value contain `needle`?
    pub fn any_header_contains(&self, needle: &str) -> bool {
        self.headers.iter().any(|(_, v)| v.contains(needle))
    }
}

struct State {
    requests: Mutex<Vec<Recorded>>,
    tcp_accepts: AtomicUsize,
    tls_handshakes: AtomicUsize,
    /// Permits released by the test to let `/gate` finish its response.
    gate: Semaphore,
    /// Permit added when `/gate-upload` has received its first body chunk.
    upload_started: Semaphore,
    /// TLS handshakes that resumed an earlier session.
    tls_resumed: AtomicUsize,
    /// When `/sse` handed each event to the connection, in order.
    sse_sent: Arc<Mutex<Vec<Instant>>>,
    /// How many `/barrier/{n}` requests have arrived so far.
    barrier: watch::Sender<usize>,
}

impl Default for State {
    fn default() -> Self {
        State {
            requests: Mutex::default(),
            tcp_accepts: AtomicUsize::new(0),
            tls_handshakes: AtomicUsize::new(0),
            gate: Semaphore::new(0),
            upload_started: Semaphore::new(0),
            tls_resumed: AtomicUsize::new(0),
            sse_sent: Arc::default(),
            barrier: watch::Sender::new(0),
        }
    }
}

pub struct Upstream {
    addr: SocketAddr,
    state: Arc<State>,
    accept_task: JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Upstream {
    /// TLS upstream with a leaf from `ca` covering every name in `UPSTREAM_NAMES`.
    pub async fn https(ca: &TestCa) -> Self {
        Self::https_with_leaf(&ca.leaf(UPSTREAM_NAMES)).await
    }

    /// TLS upstream that only speaks HTTP/1.1 (ALPN http/1.1), for the proxy's h1 path.
    pub async fn https_h1_only(ca: &TestCa) -> Self {
        let leaf = ca.leaf(UPSTREAM_NAMES);
        Self::https_with_config(pki::server_config_with_alpn(&leaf, &[b"http/1.1"])).await
    }

    /// TLS upstream that only speaks HTTP/2 (ALPN h2), for the proxy's h1 -> h2 translation.
    pub async fn https_h2_only(ca: &TestCa) -> Self {
        let leaf = ca.leaf(UPSTREAM_NAMES);
        Self::https_with_config(pki::server_config_with_alpn(&leaf, &[b"h2"])).await
    }

    pub async fn https_with_leaf(leaf: &Leaf) -> Self {
        Self::https_with_config(pki::server_config(leaf)).await
    }

    pub async fn https_with_config(config: Arc<ServerConfig>) -> Self {
        Self::start(Some(TlsAcceptor::from(config))).await
    }

    /// Plain-HTTP variant of the same server, for `http://` proxying tests.
    pub async fn http() -> Self {
        Self::start(None).await
    }

    /// TLS upstream like [`Upstream::https`], listening on `bind` (e.g. `[::1]:0` for an
    /// IPv6-only service) instead of 127.0.0.1.
    pub async fn https_bound(ca: &TestCa, names: &[&str], bind: &str) -> Self {
        let config = pki::server_config(&ca.leaf(names));
        Self::start_on(Some(TlsAcceptor::from(config)), bind).await
    }

    async fn start(tls: Option<TlsAcceptor>) -> Self {
        Self::start_on(tls, "127.0.0.1:0").await
    }

    async fn start_on(tls: Option<TlsAcceptor>, bind: &str) -> Self {
        let listener = TcpListener::bind(bind).await.expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let state = Arc::new(State::default());
        let accept_task = tokio::spawn(accept_loop(listener, tls, state.clone()));
        Upstream {
            addr,
            state,
            accept_task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("requests lock").clone()
    }

    /// The only recorded request; panics with the full record otherwise.
    pub fn single_request(&self) -> Recorded {
        let requests = self.requests();
        assert_eq!(
            requests.len(),
            1,
            "expected exactly one upstream request: {requests:#?}"
        );
        requests.into_iter().next().expect("one request")
    }

    pub fn tcp_accepts(&self) -> usize {
        self.state.tcp_accepts.load(Ordering::SeqCst)
    }

    pub fn tls_handshakes(&self) -> usize {
        self.state.tls_handshakes.load(Ordering::SeqCst)
    }

    /// Completed TLS handshakes that resumed a session (the client's session cache worked).
    pub fn tls_resumed(&self) -> usize {
        self.state.tls_resumed.load(Ordering::SeqCst)
    }

    /// When each `/sse` event was handed to the connection, in send order.
    pub fn sse_sent(&self) -> Vec<Instant> {
        self.state.sse_sent.lock().expect("sse lock").clone()
    }

    /// How many `/sse` events have been sent so far.
    pub fn sse_sent_count(&self) -> usize {
        self.state.sse_sent.lock().expect("sse lock").len()
    }

    /// Asserts that nothing at all reached this upstream: no TCP connection, no request.
    pub fn assert_untouched(&self) {
        assert_eq!(self.tcp_accepts(), 0, "upstream accepted a TCP connection");
        assert!(
            self.requests().is_empty(),
            "upstream got requests: {:#?}",
            self.requests()
        );
    }

    /// Lets one pending `/gate` response send its second half.
    pub fn release_gate(&self) {
        self.state.gate.add_permits(1);
    }

    /// Waits until a `/gate-upload` request delivered its first body chunk to the upstream.
    pub async fn wait_upload_started(&self) {
        let permit = tokio::time::timeout(IO_TIMEOUT, self.state.upload_started.acquire())
            .await
            .expect("upstream never received the first upload chunk (proxy buffers the body?)")
            .expect("semaphore open");
        permit.forget();
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, state: Arc<State>) {
    loop {
        let Ok((tcp, _peer)) = listener.accept().await else {
            continue;
        };
        let conn_id = state.tcp_accepts.fetch_add(1, Ordering::SeqCst) + 1;
        let state = state.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve(tcp, state, conn_id, Protocol::Detect).await,
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await
                    else {
                        return;
                    };
                    state.tls_handshakes.fetch_add(1, Ordering::SeqCst);
                    let tls = stream.get_ref().1;
                    if tls.handshake_kind() == Some(HandshakeKind::Resumed) {
                        state.tls_resumed.fetch_add(1, Ordering::SeqCst);
                    }
                    let protocol = match tls.alpn_protocol() {
                        Some(b"h2") => Protocol::H2,
                        Some(_) => Protocol::H1,
                        None => Protocol::Detect,
                    };
                    serve(stream, state, conn_id, protocol).await;
                }
            }
        });
    }
}

/// Which HTTP version a connection is served with.
enum Protocol {
    /// ALPN chose h2: HTTP/2 only.
    H2,
    /// ALPN chose http/1.1: HTTP/1.1 only.
    H1,
    /// No ALPN (plain TCP): whatever the client's first bytes say.
    Detect,
}

async fn serve<S>(stream: S, state: Arc<State>, conn_id: usize, protocol: Protocol)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| handle(req, state.clone(), conn_id));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_buf_size(UPSTREAM_MAX_HEAD);
    builder
        .http2()
        .max_header_list_size(UPSTREAM_MAX_HEAD as u32);
    let builder = match protocol {
        Protocol::H2 => builder.http2_only(),
        Protocol::H1 => builder.http1_only(),
        Protocol::Detect => builder,
    };
    // Errors here are client disconnects; the record already holds what arrived.
    let _ = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .await;
}

fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

async fn handle(
    mut req: Request<Incoming>,
    state: Arc<State>,
    conn_id: usize,
) -> Result<Response<TestBody>, Infallible> {
    // Taken before the request is consumed: hyper hands the upgraded connection to it.
    let on_upgrade = (req.uri().path() == "/ws").then(|| hyper::upgrade::on(&mut req));
    let (parts, mut incoming) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".to_owned());
    let gate_upload = parts.uri.path() == "/gate-upload";

    let mut digest = BodyDigest::default();
    let mut body_error = false;
    while let Some(frame) = incoming.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    let first = digest.len == 0 && !data.is_empty();
                    digest.update(data);
                    if gate_upload && first {
                        state.upload_started.add_permits(1);
                    }
                }
            }
            Err(_) => {
                body_error = true;
                break;
            }
        }
    }
    let (body_len, body_sha256) = digest.finish();
    let record = Recorded {
        conn_id,
        method: parts.method.as_str().to_owned(),
        path: path.clone(),
        version: parts.version,
        authority: parts
            .uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned())
            })
            .unwrap_or_default(),
        headers: header_list(&parts.headers),
        body_len,
        body_sha256: body_sha256.clone(),
    };
    state
        .requests
        .lock()
        .expect("requests lock")
        .push(record.clone());
    if body_error {
        return Ok(text(StatusCode::BAD_REQUEST, "request body error\n"));
    }
    if let Some(on_upgrade) = on_upgrade {
        return Ok(ws::echo_upgrade(&record, on_upgrade));
    }
    if let Some(refusal) = wait_at_barrier(&record, &state).await {
        return Ok(refusal);
    }
    Ok(route(&record, &state))
}

/// `/barrier/{n}`: holds the request until n barrier requests have arrived, so a test can
/// prove they were all in flight at once. Returns a 504 (instead of hanging) if they never
/// all arrive, and `None` when the request may proceed (or is not a barrier request).
async fn wait_at_barrier(record: &Recorded, state: &State) -> Option<Response<TestBody>> {
    let n: usize = record
        .path
        .split('?')
        .next()?
        .strip_prefix("/barrier/")?
        .parse()
        .ok()?;
    state.barrier.send_modify(|arrived| *arrived += 1);
    let mut rx = state.barrier.subscribe();
    let all_arrived = tokio::time::timeout(IO_TIMEOUT, rx.wait_for(|arrived| *arrived >= n))
        .await
        .is_ok_and(|r| r.is_ok());
    if all_arrived {
        return None;
    }
    let arrived = *state.barrier.borrow();
    Some(text(
        StatusCode::GATEWAY_TIMEOUT,
        &format!("barrier: only {arrived} of {n} requests arrived\n"),
    ))
}

fn text(status: StatusCode, body: &str) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(body::full(body.to_owned()))
        .expect("response")
}

fn json(value: serde_json::Value) -> Response<TestBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(body::full(value.to_string()))
        .expect("response")
}

fn route(record: &Recorded, state: &Arc<State>) -> Response<TestBody> {
    let path = record.path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["echo"] | ["barrier", _] => json(serde_json::json!({
            "method": record.method,
            "path": record.path,
            "headers": record.headers,
            "body_len": record.body_len,
            "body_sha256": record.body_sha256,
        })),
        ["upload"] | ["gate-upload"] => json(serde_json::json!({
            "body_len": record.body_len,
            "body_sha256": record.body_sha256,
        })),
        ["status", code] => status_route(code),
        ["redirect"] => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", "/echo?followed=1")
            .body(body::full("redirecting\n"))
            .expect("response"),
        ["bytes", n] => match n.parse::<u64>() {
            Ok(n) => Response::new(PrngBody::new(n).boxed()),
            Err(_) => text(StatusCode::BAD_REQUEST, "bad length\n"),
        },
        ["gate"] => gate_route(state.clone()),
        ["sse"] => sse::route(&record.path, state.sse_sent.clone()),
        ["encoded"] => Response::builder()
            .header("content-type", "application/json")
            .header("content-encoding", "gzip")
            .header("vary", "accept-encoding")
            .body(body::full(ENCODED_BODY))
            .expect("response"),
        ["close"] => Response::builder()
            .header("connection", "close")
            .body(body::full("closing\n"))
            .expect("response"),
        _ => text(StatusCode::NOT_FOUND, "no such route\n"),
    }
}

/// `/status/{code}`: that status with a distinctive body and header, so a test can check both
/// pass through unchanged.
fn status_route(code: &str) -> Response<TestBody> {
    let Ok(status) = code.parse::<u16>().map(StatusCode::from_u16) else {
        return text(StatusCode::BAD_REQUEST, "bad status\n");
    };
    let Ok(status) = status else {
        return text(StatusCode::BAD_REQUEST, "bad status\n");
    };
    let mut builder = Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("x-upstream-status", code);
    if status == StatusCode::TOO_MANY_REQUESTS {
        builder = builder.header("retry-after", "7");
    }
    builder
        .body(body::full(status_body(status.as_u16())))
        .expect("response")
}

pub fn status_body(code: u16) -> String {
    format!("upstream says {code}: this body must pass through unchanged\n")
}

pub const GATE_FIRST: &str = "first-half\n";
pub const GATE_SECOND: &str = "second-half\n";

/// `/gate`: sends GATE_FIRST, then waits for `release_gate` before GATE_SECOND. A proxy that
/// buffers whole responses never delivers the first half, so the test's wait fails.
fn gate_route(state: Arc<State>) -> Response<TestBody> {
    let (tx, body) = body::channel_body();
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(GATE_FIRST.as_bytes()))
            .await
            .is_err()
        {
            return;
        }
        if let Ok(permit) = state.gate.acquire().await {
            permit.forget();
            let _ = tx.send(Bytes::from_static(GATE_SECOND.as_bytes())).await;
        }
    });
    Response::new(body.boxed())
}
