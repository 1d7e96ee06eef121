//! The admin listener (`PAUDE_PROXY_ADMIN_LISTEN`): `/healthz` and `/metrics` for
//! orchestrators, `POST /reload` for operators. It must not be exposed to agents.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::App;
use crate::body::Body;
use crate::error::text_response;

const ADMIN_HEAD_TIMEOUT: Duration = Duration::from_secs(10);
const ADMIN_MAX_HEAD: usize = 8 * 1024;

pub async fn serve_admin(app: Arc<App>, stream: TcpStream, _peer: SocketAddr) {
    let service = service_fn(move |req| {
        let app = app.clone();
        async move { Ok::<_, Infallible>(answer(&app, &req)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEAD_TIMEOUT)
        .max_buf_size(ADMIN_MAX_HEAD)
        // Checked on the parsed head, not only between reads (see connect.rs).
        .max_header_size(ADMIN_MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    if let Err(e) = conn.await {
        tracing::debug!("admin connection ended: {e}");
    }
}

fn answer(app: &App, req: &Request<Incoming>) -> Response<Body> {
    if req.uri().path() == "/reload" {
        if req.method() != Method::POST {
            return text_response(StatusCode::METHOD_NOT_ALLOWED, "POST /reload\n".into());
        }
        return match crate::reload::reload(app) {
            Ok(summary) => text_response(StatusCode::OK, format!("reloaded: {summary}\n")),
            Err(e) => text_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("reload rejected, previous configuration kept: {e}\n"),
            ),
        };
    }
    if req.method() != Method::GET {
        return text_response(StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
    }
    match req.uri().path() {
        "/healthz" => text_response(StatusCode::OK, "ok\n".into()),
        "/metrics" => {
            let live = crate::metrics::Live {
                leaves: app.ca.minted(),
                upstream: Some(&app.upstream.stats),
                pooled: app.upstream.pooled() as u64,
                open_connections: app.conns.len() as u64,
                refused_connections: app.conns.refused.get(),
                shed_connections: app.conns.shed.get(),
            };
            let mut resp = text_response(StatusCode::OK, app.metrics.render(&live));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            resp
        }
        _ => text_response(StatusCode::NOT_FOUND, "try /healthz or /metrics\n".into()),
    }
}
