//! TLS termination for an approved tunnel, then an HTTP server (h2 and HTTP/1.1) whose
//! every request goes through [`crate::handle::tunnel_request`].

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::App;
use crate::error::io_chain;
use crate::inject::Route;
use crate::policy::Target;

/// The client's TLS handshake with our leaf must finish in this time.
const CLIENT_TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to read a request head inside the tunnel, also the keep-alive idle limit.
const TUNNEL_HEAD_TIMEOUT: Duration = Duration::from_secs(120);
/// Larger request heads get 431 (h1) or a stream error (h2).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_H2_STREAMS: u32 = 256;

/// An approved, intercepted connection: who it is from, where it may go, which credential
/// (if any) belongs to that destination.
pub struct Tunnel {
    pub client: IpAddr,
    pub target: Target,
    pub route: Option<Route>,
}

pub async fn serve_tunnel<IO>(app: Arc<App>, io: IO, tunnel: Tunnel)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = tunnel.target.host.clone();
    let config = match app.ca.server_config(&host) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(%host, "cannot mint a certificate: {e}");
            return;
        }
    };
    let tls = match tokio::time::timeout(CLIENT_TLS_TIMEOUT, TlsAcceptor::from(config).accept(io))
        .await
    {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::info!(
                %host,
                "client TLS handshake failed (does the client trust the proxy CA?): {}",
                io_chain(&e)
            );
            return;
        }
        Err(_) => {
            tracing::info!(%host, "client TLS handshake timed out after {CLIENT_TLS_TIMEOUT:?}");
            return;
        }
    };
    let tunnel = Arc::new(tunnel);
    let service = service_fn(move |req| {
        let app = app.clone();
        let tunnel = tunnel.clone();
        async move { Ok::<_, Infallible>(crate::handle::tunnel_request(&app, &tunnel, req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(TUNNEL_HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .max_concurrent_streams(MAX_H2_STREAMS);
    if let Err(e) = builder
        .serve_connection_with_upgrades(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%host, "tunnel connection ended: {e}");
    }
}
