//! HTTP/2 client connections (hyper), for the multiplexed keep-alive row.

use std::io;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::dial::{Alpn, Dialer};
use super::timed;

pub type Sender = http2::SendRequest<Empty<Bytes>>;

/// Opens an h2 connection and spawns its driver; the returned sender can be cloned per stream.
pub async fn connect(dialer: &Dialer) -> io::Result<Sender> {
    let tls = dialer.open(Alpn::H2).await?;
    let (sender, conn) = timed("h2 handshake", async {
        http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(io::Error::other)
    })
    .await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One GET; returns the status and the body length.
pub async fn get(sender: &mut Sender, dialer: &Dialer, path: &str) -> io::Result<(u16, u64)> {
    let req = Request::get(format!("https://{}{path}", dialer.authority))
        .header(http::header::AUTHORIZATION, dialer.auth.as_str())
        .header(http::header::USER_AGENT, "paude-bench")
        .body(Empty::new())
        .map_err(io::Error::other)?;
    timed("h2 request", async {
        sender.ready().await.map_err(io::Error::other)?;
        let resp = sender.send_request(req).await.map_err(io::Error::other)?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(io::Error::other)?;
            len += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        Ok((status, len))
    })
    .await
}
