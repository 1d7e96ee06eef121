//! Per-request handling inside an intercepted tunnel: check, inject, forward.

use http::{Request, Response};
use hyper::body::Incoming;

use crate::App;
use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::headers;
use crate::intercept::Tunnel;
use crate::upstream::Scheme;

pub async fn tunnel_request(app: &App, tunnel: &Tunnel, req: Request<Incoming>) -> Response<Body> {
    match forward(app, tunnel, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn forward(
    app: &App,
    tunnel: &Tunnel,
    req: Request<Incoming>,
) -> Result<Response<Body>, ProxyError> {
    let target = &tunnel.target;
    headers::check_authority(&req, &target.host, target.port())?;
    headers::check_framing(&req)?;
    if tunnel.route.is_some() && headers::is_trace(req.method()) {
        return Err(ProxyError::MethodNotAllowed(format!(
            "{} is refused on {}: it would echo the credential",
            req.method(),
            target.host
        )));
    }
    let (mut parts, incoming) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_request_only(&mut parts.headers);
    if let Some(route) = &tunnel.route {
        route.apply(&mut parts.headers);
        tracing::info!(
            client = %tunnel.client,
            host = %target.host,
            method = %parts.method,
            path = parts.uri.path(),
            credential = %route.env_var,
            "injected"
        );
    } else {
        tracing::debug!(host = %target.host, method = %parts.method, path = parts.uri.path(), "forwarding");
    }
    let req = Request::from_parts(parts, body::stream(incoming));
    let mut resp = app.upstream.send(Scheme::Https, target, req).await?;
    headers::strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
}
