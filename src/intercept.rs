//! TLS termination for an approved tunnel, then an HTTP server (h2 and HTTP/1.1) whose
//! every request goes through [`crate::handle::tunnel_request`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio_rustls::server::TlsStream;

use crate::App;
use crate::body::Body;
use crate::client_hello::Replay;
use crate::conns::{self, ConnHandle};
use crate::error::{ProxyError, io_chain, text_response};
use crate::framing::{FramingCheck, Watched};
use crate::host::Host;
use crate::policy::Target;
use crate::preface::Spoken;

/// The client's TLS handshake with our leaf must finish in this time.
const CLIENT_TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to read a request head inside the tunnel, also the keep-alive idle limit.
const TUNNEL_HEAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Larger request heads get 431 (h1) or a stream error (h2).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_H2_STREAMS: u32 = 256;

/// An approved, intercepted connection: who it is from, where it may go, and whether its
/// requests may get a credential (each request picks its route).
pub struct Tunnel {
    pub mode: crate::gate::Mode,
    pub client: IpAddr,
    pub target: Target,
    pub credentials: Credentials,
    /// The client connection it runs on: busy while a request is in flight.
    pub conn: ConnHandle,
}

/// Whether requests in a tunnel may get a credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// The tunnel's name was verified (CONNECT authority or SNI): routes apply.
    Eligible,
    /// No name TLS verification could check (a bare IP without SNI): never.
    Never,
}

impl Tunnel {
    /// The facts the tunnel was admitted on, for the per-request re-check.
    pub fn facts(&self) -> crate::policy::Facts {
        crate::policy::Facts {
            client: self.client,
            host: self.target.host.clone(),
            port: self.target.port(),
            entry: crate::policy::Entry::Tls,
        }
    }
}

pub async fn serve_tunnel<IO>(app: Arc<App>, io: IO, tunnel: Tunnel)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = tunnel.target.host.clone();
    // Boxed, as the serving below: the handshake's state is freed once it is done instead
    // of staying part of the connection's task for its whole life.
    let Some(tls) = Box::pin(accept(&app, io, &host)).await else {
        return;
    };
    let conn = tunnel.conn.clone();
    let idle = app.limits.client_idle;
    let tunnel = Arc::new(tunnel);
    let framing = Arc::new(FramingCheck::default());
    let alpn = alpn(&tls);
    let io = Watched::new(tls, framing.clone());
    let service = service_fn(move |req: Request<Incoming>| {
        let app = app.clone();
        let tunnel = tunnel.clone();
        let framing = framing.clone();
        async move {
            let busy = tunnel.conn.busy();
            if req.version() < Version::HTTP_2
                && let Err(e) = framing.next_request()
            {
                return Ok::<_, Infallible>(tunnel.conn.hold_until_sent(e.into_response(), busy));
            }
            // Boxed: hyper keeps a slot the size of this future for the connection's whole
            // life, idle or not; a pointer there instead of the request's large state machine
            // keeps an idle connection small.
            let h2 = req.version() == Version::HTTP_2;
            let mut resp = Box::pin(crate::handle::tunnel_request(&app, &tunnel, req)).await;
            if h2 {
                // HTTP/1.1 batches ready chunks itself; h2 sends each frame on its own.
                resp = resp.map(crate::coalesce::coalesce);
            }
            Ok(tunnel.conn.hold_until_sent(resp, busy))
        }
    });
    serve_http(alpn, io, service, &host, &conn, idle).await;
}

/// Completes the client's handshake only to answer every request with `err` (a 403 with
/// its reason): used where a refusal happens before there is any HTTP to answer, in
/// transparent mode. Nothing goes upstream.
pub async fn serve_denied<IO>(app: Arc<App>, io: IO, host: Host, err: ProxyError, conn: ConnHandle)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(tls) = Box::pin(accept(&app, io, &host)).await else {
        return;
    };
    let (status, text, kind) = (err.status(), format!("paude-proxy: {err}\n"), err.kind());
    let service = service_fn(move |_req| {
        let mut resp = text_response(status, text.clone());
        crate::error::mark_kind(&mut resp, kind);
        resp.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("close"),
        );
        async move { Ok::<_, Infallible>(resp) }
    });
    let idle = app.limits.client_idle;
    serve_http(alpn(&tls), tls, service, &host, &conn, idle).await;
}

/// The stream comes boxed: it is over a kilobyte (rustls' connection state), and every
/// future it is moved through would otherwise keep room for it for the connection's life.
async fn accept<IO>(app: &App, io: IO, host: &Host) -> Option<Box<TlsStream<IO>>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let config = match app.ca.server_config(host) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%host, "cannot mint a certificate: {e}");
            return None;
        }
    };
    match tokio::time::timeout(CLIENT_TLS_TIMEOUT, TlsAcceptor::from(config).accept(io)).await {
        Ok(Ok(tls)) => Some(Box::new(tls)),
        Ok(Err(e)) => {
            tracing::info!(
                %host,
                "client TLS handshake failed (does the client trust the proxy CA?): {}",
                io_chain(&e)
            );
            None
        }
        Err(_) => {
            tracing::info!(%host, "client TLS handshake timed out after {CLIENT_TLS_TIMEOUT:?}");
            None
        }
    }
}

/// What the client asked for in its handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Alpn {
    H1,
    H2,
    /// No ALPN: h2 with prior knowledge or HTTP/1.1, told apart by the first bytes.
    Unsaid,
}

fn alpn<IO>(tls: &TlsStream<IO>) -> Alpn {
    match tls.get_ref().1.alpn_protocol() {
        Some(b"h2") => Alpn::H2,
        Some(_) => Alpn::H1,
        None => Alpn::Unsaid,
    }
}

/// What every serving function below needs of the tunnel's service: one name for bounds
/// they would otherwise each spell out.
trait TunnelService:
    hyper::service::Service<
        Request<Incoming>,
        Response = Response<Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Unpin
    + 'static
{
}

impl<S> TunnelService for S where
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Unpin
        + 'static
{
}

/// h2 or HTTP/1.1, whichever the client speaks (ALPN or prior knowledge), until the client
/// leaves, the connection idles out, or it is asked to close.
///
/// Each protocol is served by its own boxed future, sized for that protocol only: an idle
/// HTTP/1.1 connection does not carry room for h2's state (or the reverse), and the
/// connection's task stays small.
async fn serve_http<IO, S>(
    alpn: Alpn,
    io: IO,
    service: S,
    host: &Host,
    conn: &ConnHandle,
    idle: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: TunnelService,
{
    match alpn {
        Alpn::H1 => serve_as(Spoken::Http1, io, service, host, conn, idle).await,
        Alpn::H2 => serve_as(Spoken::H2, io, service, host, conn, idle).await,
        // Its own function, boxed: the sniffing stays out of the connection's task.
        Alpn::Unsaid => Box::pin(serve_unsaid(io, service, host, conn, idle)).await,
    }
}

/// Serves the protocol the client speaks; each is its own boxed future.
async fn serve_as<IO, S>(
    spoken: Spoken,
    io: IO,
    service: S,
    host: &Host,
    conn: &ConnHandle,
    idle: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: TunnelService,
{
    match spoken {
        Spoken::Http1 => {
            // Parks while idle, so an idle HTTP/1.1 connection holds none of hyper's buffers.
            let served = crate::park::serve_h1(io, service, h1_builder(), conn, idle);
            ended(host, Box::pin(served).await);
        }
        Spoken::H2 => {
            let served = h2_builder().serve_connection(TokioIo::new(io), service);
            ended(host, Box::pin(conns::serve(served, conn, idle)).await);
        }
    }
}

/// No ALPN: the first bytes say h2 with prior knowledge or HTTP/1.1 ([`crate::preface`]);
/// then the connection is served as if it had said so.
async fn serve_unsaid<IO, S>(mut io: IO, service: S, host: &Host, conn: &ConnHandle, idle: Duration)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: TunnelService,
{
    // The same bounds as a connection that said its protocol: the idle limit (a client
    // that sends nothing is idle) and the head timeout, whichever ends first.
    let sniffed = tokio::select! {
        biased;
        () = conn.closing() => return,
        () = conn.idle_for(idle) => return,
        r = tokio::time::timeout(TUNNEL_HEAD_TIMEOUT, crate::preface::sniff(&mut io)) => r,
    };
    let (spoken, first) = match sniffed {
        Ok(Ok(Some(found))) => found,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => return ended(host, Err(e)),
        Err(_) => {
            tracing::debug!(%host, "no request within {TUNNEL_HEAD_TIMEOUT:?}: closing");
            return;
        }
    };
    serve_as(spoken, Replay::new(first, io), service, host, conn, idle).await;
}

fn ended<E: std::fmt::Display>(host: &Host, served: Result<(), E>) {
    if let Err(e) = served {
        tracing::debug!(%host, "tunnel connection ended: {e}");
    }
}

fn h1_builder() -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(TUNNEL_HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        // Checked on the parsed head: the buffer limit above is only checked between reads,
        // so one read could carry a head past it.
        .max_header_size(MAX_HEAD_BYTES);
    b
}

fn h2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_H2_STREAMS)
        // Larger windows for h2 uploads, as upstream.
        .initial_stream_window_size(crate::upstream::H2_STREAM_WINDOW)
        .initial_connection_window_size(crate::upstream::H2_CONNECTION_WINDOW);
    b
}
