//! Per-request handling: check, inject, forward. One function serves the intercepted tunnel
//! and the cleartext `http://` path, so a fix here is a fix for every entry.

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::headers;
use crate::inject::Route;
use crate::intercept::Tunnel;
use crate::policy::Target;
use crate::upstream::Scheme;

pub async fn tunnel_request(app: &App, tunnel: &Tunnel, req: Request<Incoming>) -> Response<Body> {
    let target = &tunnel.target;
    // Request rules (issue 12): the connection checks again and the rules over method and path.
    let ctx = crate::gate::RequestCtx::new(tunnel.mode, tunnel.facts(), &req);
    let route = crate::gate::route_now(app, tunnel.client, tunnel.route.as_ref());
    let checked = headers::check_authority(&req, &target.host, target.port())
        .and_then(|()| headers::check_framing(&req))
        .and_then(|()| crate::gate::check(app, &ctx));
    let allowed = match checked {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let result = match () {
        () if route.is_some() && headers::is_trace(req.method()) => {
            Err(ProxyError::MethodNotAllowed(format!(
                "{} is refused on {}: it would echo the credential",
                req.method(),
                target.host
            )))
        }
        // Google token requests are answered here, never forwarded (gcloud::vend).
        () => match crate::gcloud::vend::try_vend(app, &target.host, req).await {
            Ok(vended) => Ok(vended),
            Err(req) => forward(app, Scheme::Https, target, route, req).await,
        },
    };
    let resp = result.unwrap_or_else(ProxyError::into_response);
    crate::gate::finish(app, ctx, &allowed, route, resp)
}

/// Forwards a checked request to `target`. `route` is `Some` only on verified TLS paths.
pub async fn forward(
    app: &App,
    scheme: Scheme,
    target: &Target,
    route: Option<&Route>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let websocket = is_websocket(&req);
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    // Every other upgrade (h2c, TLS/1.0, ...) is refused by dropping its headers: the
    // request is served as plain HTTP/1.1, which every server must accept.
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_request_only(&mut parts.headers);
    if websocket {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    app.metrics.requests.inc();
    if let Some(route) = route
        && let Some(credential) = route.gcloud()
        && client_upgrade.is_none()
    {
        // Injection with refresh-and-retry on 401 (gcloud::retry).
        let mut resp =
            crate::gcloud::retry::send(app, scheme, target, route, credential, parts, incoming)
                .await?;
        headers::strip_hop_by_hop(resp.headers_mut());
        return Ok(resp);
    }
    let needles = match route {
        Some(route) => {
            let needles = route.inject(&mut parts.headers).await?;
            app.metrics.injected.inc();
            tracing::info!(
                host = %target.host,
                method = %parts.method,
                path = parts.uri.path(),
                credential = %route.env_var,
                "injected"
            );
            Some(needles)
        }
        None => {
            tracing::debug!(host = %target.host, method = %parts.method, path = parts.uri.path(), "forwarding");
            None
        }
    };
    let req = Request::from_parts(parts, body::stream(incoming));
    let Some(client_upgrade) = client_upgrade else {
        let mut resp = app
            .upstream
            .send(scheme, target, req)
            .await
            .inspect_err(|_| app.metrics.upstream_errors.inc())?;
        headers::strip_hop_by_hop(resp.headers_mut());
        return Ok(match &needles {
            Some(n) => scrub(n, resp),
            None => resp,
        });
    };
    let mut resp = app
        .upstream
        .send_upgrade(scheme, target, req)
        .await
        .inspect_err(|_| app.metrics.upstream_errors.inc())?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        headers::strip_hop_by_hop(resp.headers_mut());
        let resp = resp.map(body::stream);
        return Ok(match &needles {
            Some(n) => scrub(n, resp),
            None => resp,
        });
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let host = target.host.clone();
    tokio::spawn(async move {
        match tokio::try_join!(client_upgrade, upstream_upgrade) {
            Ok((client, upstream)) => {
                let (mut c, mut u) = (TokioIo::new(client), TokioIo::new(upstream));
                match tokio::io::copy_bidirectional(&mut c, &mut u).await {
                    Ok((up, down)) => tracing::debug!(%host, up, down, "websocket closed"),
                    Err(e) => tracing::debug!(%host, "websocket ended: {e}"),
                }
            }
            Err(e) => tracing::info!(%host, "websocket upgrade failed: {e}"),
        }
    });
    // The 101 keeps its Connection/Upgrade headers: they are the handshake.
    Ok(resp.map(|_| body::empty()))
}

/// Masks the route's credential wherever the upstream echoes it back (DESIGN.md §3.7).
/// WebSocket frames after a `101` are relayed as they are.
pub(crate) fn scrub(needles: &crate::scrub::Needles, resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    needles.scrub_headers(&mut parts.headers);
    Response::from_parts(parts, needles.scrub_body(body))
}

/// An HTTP/1.1 WebSocket handshake (RFC 6455 §4.1).
fn is_websocket<B>(req: &Request<B>) -> bool {
    let has_token = |name: header::HeaderName, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
}
