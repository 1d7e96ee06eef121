//! The explicit proxy (`HTTPS_PROXY=http://proxy:3128`): `CONNECT host:port` becomes an
//! intercepted tunnel, `GET http://host/...` is forwarded as cleartext (never with a
//! credential), anything else gets a 400 that explains what this port is.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::App;
use crate::body::{self, Body};
use crate::conns::{self, ConnHandle};
use crate::error::ProxyError;
use crate::framing::{FramingCheck, Watched};
use crate::gate::{Mode, Refusal, RequestCtx};
use crate::headers;
use crate::host::{Host, parse_authority};
use crate::intercept::{Credentials, MAX_HEAD_BYTES, Tunnel, serve_tunnel};
use crate::policy::{self, Entry, Facts, Target};
use crate::resolve::is_local_addr;
use crate::upstream::Scheme;
use crate::vend::{Ctx, Via};

/// The first request head (CONNECT line or absolute-URI request) must arrive in this time.
const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve_client(app: Arc<App>, stream: TcpStream, peer: SocketAddr, conn: ConnHandle) {
    let _ = stream.set_nodelay(true);
    app.metrics.connections_explicit.inc();
    let client = peer.ip().to_canonical();
    let framing = Arc::new(FramingCheck::default());
    let io = Watched::new(stream, framing.clone());
    let idle = app.limits.client_idle;
    let handle = conn.clone();
    let service = service_fn(move |req| {
        let app = app.clone();
        let framing = framing.clone();
        let conn = conn.clone();
        async move {
            let busy = conn.busy();
            let resp = match framing.next_request() {
                // Boxed: hyper keeps a slot this future's size for the connection's life.
                Ok(()) => Box::pin(proxy_request(app, client, req, &conn)).await,
                Err(e) => e.into_response(),
            };
            Ok::<_, Infallible>(conn.hold_until_sent(resp, busy))
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        // The buffer cap is checked only between reads: a head that arrives whole in one
        // read would pass it. This one is checked on the parsed head.
        .max_header_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conns::serve(served, &handle, idle).await {
        tracing::debug!(%client, "client connection ended: {e}");
    }
}

/// What the request asks the proxy to do, from its request line alone.
pub(crate) enum Form {
    Connect(Host, u16),
    PlainHttp(Host, u16),
    AbsoluteHttps,
    NotProxy,
}

pub(crate) fn classify<B>(req: &Request<B>) -> Result<Form, ProxyError> {
    let uri = req.uri();
    if req.method() == Method::CONNECT {
        let authority = uri
            .authority()
            .ok_or_else(|| ProxyError::BadRequest("CONNECT needs host:port".into()))?;
        let (host, port) = parse_authority(authority.as_str(), None).map_err(|e| {
            ProxyError::BadRequest(format!("bad CONNECT target '{authority}': {e}"))
        })?;
        return Ok(Form::Connect(host, port));
    }
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(a)) => {
            let (host, port) = parse_authority(a.as_str(), Some(80))
                .map_err(|e| ProxyError::BadRequest(format!("bad host in '{uri}': {e}")))?;
            Ok(Form::PlainHttp(host, port))
        }
        (Some("https"), Some(_)) => Ok(Form::AbsoluteHttps),
        _ => Ok(Form::NotProxy),
    }
}

async fn proxy_request(
    app: Arc<App>,
    client: IpAddr,
    req: Request<Incoming>,
    conn: &ConnHandle,
) -> Response<Body> {
    match route_request(&app, client, req, conn).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn route_request(
    app: &Arc<App>,
    client: IpAddr,
    req: Request<Incoming>,
    conn: &ConnHandle,
) -> Result<Response<Body>, ProxyError> {
    let policy = app.policy.load();
    // The client filter comes first and covers every request form, even ones we would
    // refuse anyway, so a refused client learns nothing about the proxy.
    if !policy::client_allowed(&policy, client) {
        let reason = policy::DenyReason::ClientNotAllowed(client);
        let at = Refusal {
            mode: Mode::Explicit,
            client,
            method: req.method().as_str(),
            what: blocked_what(&req),
            host: None,
            port: 0,
            path: "",
        };
        return Err(app.deny(&at, reason));
    }
    match classify(&req)? {
        Form::Connect(host, port) => connect(app, client, req, host, port, conn.clone()).await,
        Form::PlainHttp(host, port) => plain_http(app, client, req, host, port).await,
        Form::AbsoluteHttps => Err(ProxyError::BadRequest(
            "https:// URLs go through a CONNECT tunnel: set HTTPS_PROXY to this proxy instead of sending the URL to it".into(),
        )),
        Form::NotProxy => Err(ProxyError::BadRequest(
            "this is paude-proxy, an HTTP proxy: send CONNECT host:443 (HTTPS_PROXY) or an absolute http:// URL (HTTP_PROXY)".into(),
        )),
    }
}

/// What the blocked log names: `host:port` for CONNECT, the URL otherwise.
fn blocked_what<B>(req: &Request<B>) -> String {
    if req.method() == Method::CONNECT {
        req.uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default()
    } else {
        req.uri().to_string()
    }
}

/// Runs the policy for `facts`: admit, resolve (only if admitted), pick an address.
async fn approve(app: &App, facts: Facts, method: &str, what: &str) -> Result<Target, ProxyError> {
    let policy = app.policy.load();
    let at = |path| Refusal {
        mode: Mode::Explicit,
        client: facts.client,
        method,
        what: what.to_string(),
        host: Some(&facts.host),
        port: facts.port,
        path,
    };
    // A plain-HTTP refusal names its path (for the audit log and learning mode).
    let path = what
        .parse::<http::Uri>()
        .ok()
        .filter(|_| facts.entry == Entry::PlainHttp)
        .map(|u| u.path().to_string())
        .unwrap_or_default();
    if let Err(reason) = policy::admit(&policy, &facts) {
        return Err(app.deny(&at(&path), reason));
    }
    let addrs = app.resolver.lookup(&facts.host).await?;
    match policy::pick_address(&policy, &facts.host, facts.port, &addrs, &is_local_addr) {
        Ok(addrs) => Ok(Target {
            host: facts.host.clone(),
            port: facts.port,
            addrs,
        }),
        Err(reason) => Err(app.deny(&at(&path), reason)),
    }
}

async fn connect(
    app: &Arc<App>,
    client: IpAddr,
    mut req: Request<Incoming>,
    host: Host,
    port: u16,
    conn: ConnHandle,
) -> Result<Response<Body>, ProxyError> {
    let what = host.with_port(port);
    let facts = Facts {
        client,
        host,
        port,
        entry: Entry::Tls,
    };
    let target = approve(app, facts, "CONNECT", &what).await?;
    tracing::info!(
        %client,
        target = %what,
        addr = %target,
        credential = app.routes.load().serves(&target.host).unwrap_or("-"),
        "allow CONNECT"
    );
    let upgrade = hyper::upgrade::on(&mut req);
    let app = app.clone();
    let tasks = app.tasks.clone();
    tasks.spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let tunnel = Tunnel {
                    mode: Mode::Explicit,
                    client,
                    target,
                    credentials: Credentials::Eligible,
                    conn,
                };
                serve_tunnel(app, TokioIo::new(upgraded), tunnel).await;
            }
            Err(e) => tracing::debug!(%client, "CONNECT upgrade failed: {e}"),
        }
    });
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// Cleartext HTTP: forwarded as is (minus hop-by-hop headers) and never given a credential,
/// since anything on the path could read it.
async fn plain_http(
    app: &Arc<App>,
    client: IpAddr,
    req: Request<Incoming>,
    host: Host,
    port: u16,
) -> Result<Response<Body>, ProxyError> {
    // Answers the proxy gives itself (the emulated metadata server) come before the SSRF
    // guard would refuse 169.254.169.254; nothing is forwarded.
    let ctx = Ctx {
        upstream: &app.upstream,
        target: None,
    };
    let routes = app.routes.load_full();
    let req = match routes
        .vendors
        .answer(ctx, Via::PlainHttp, &host, port, req)
        .await
    {
        Ok(answered) => return answered,
        Err(req) => req,
    };
    let what = req.uri().to_string();
    let method = req.method().clone();
    let facts = Facts {
        client,
        host,
        port,
        entry: Entry::PlainHttp,
    };
    let target = approve(app, facts.clone(), method.as_str(), &what).await?;
    let ctx = RequestCtx::new(Mode::Explicit, facts, &req);
    headers::check_authority(&req, &target.host, port)
        .and_then(|()| headers::check_framing(&req))
        .inspect_err(|e| crate::gate::refused(app, &ctx, e))?;
    let allowed = crate::gate::check(app, &ctx)?;
    tracing::info!(%client, url = %what, addr = %target, by = %allowed, "allow plain HTTP (no credential)");
    let resp = crate::forward::forward(app, Scheme::Http, &target, None, ctx.count_upload(req))
        .await
        .unwrap_or_else(ProxyError::into_response);
    Ok(crate::gate::finish(app, ctx, &allowed, None, resp))
}
