//! Per-request handling inside an intercepted tunnel: check, ask the vendors, pick the
//! route, forward. The cleartext `http://` paths call [`crate::forward::forward`] directly
//! (never with a credential), so a fix in the forward path is a fix for every entry.

use http::{Request, Response};
use hyper::body::Incoming;

use crate::App;
use crate::body::Body;
use crate::error::ProxyError;
use crate::forward::forward;
use crate::headers;
use crate::intercept::{Credentials, Tunnel};
use crate::upstream::Scheme;
use crate::vend::{Ctx, Via};

pub async fn tunnel_request(app: &App, tunnel: &Tunnel, req: Request<Incoming>) -> Response<Body> {
    let target = &tunnel.target;
    let result = async {
        headers::check_authority(&req, &target.host, target.port())?;
        headers::check_framing(&req)?;
        // Answers the proxy gives itself (token vending) come first; nothing is forwarded.
        let ctx = Ctx {
            upstream: &app.upstream,
            target: Some(target),
        };
        let req = match app
            .routes
            .vendors
            .answer(ctx, Via::Tls, &target.host, target.port(), req)
            .await
        {
            Ok(answered) => return answered,
            Err(req) => req,
        };
        let route = match tunnel.credentials {
            Credentials::Eligible => {
                app.routes
                    .select(&target.host, req.method(), req.uri().path(), req.headers())
            }
            Credentials::Never => None,
        };
        if route.is_some() && headers::is_trace(req.method()) {
            return Err(ProxyError::MethodNotAllowed(format!(
                "{} is refused on {}: it would echo the credential",
                req.method(),
                target.host
            )));
        }
        forward(app, Scheme::Https, target, route, req).await
    }
    .await;
    result.unwrap_or_else(ProxyError::into_response)
}
