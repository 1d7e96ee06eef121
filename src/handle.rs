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
    // Request rules (issue 12): the connection checks again, then the rules over method
    // and path; nothing below runs for a refused request.
    let ctx = crate::gate::RequestCtx::new(tunnel.mode, tunnel.facts(), &req);
    let checked = headers::check_authority(&req, &target.host, target.port())
        .and_then(|()| headers::check_framing(&req))
        .and_then(|()| crate::gate::check(app, &ctx));
    let allowed = match checked {
        Ok(a) => a,
        Err(e) => {
            crate::gate::refused(app, &ctx, &e);
            return e.into_response();
        }
    };
    // The route for this request, among those the client's policy lets it use.
    let policy = app.policy.load_full();
    let routes = app.routes.load_full();
    let route = match tunnel.credentials {
        Credentials::Eligible => routes.select_among(
            &target.host,
            req.method(),
            req.uri().path(),
            req.headers(),
            |var| crate::policy::credential_allowed(&policy, tunnel.client, var),
        ),
        Credentials::Never => None,
    };
    let audit = &ctx;
    let result = async {
        // Answers the proxy gives itself (token vending) come first; nothing is forwarded.
        let ctx = Ctx {
            upstream: &app.upstream,
            target: Some(target),
        };
        let req = match routes
            .vendors
            .answer(ctx, Via::Tls, &target.host, target.port(), req)
            .await
        {
            Ok(answered) => return answered,
            Err(req) => req,
        };
        if route.is_some() && headers::is_trace(req.method()) {
            return Err(ProxyError::MethodNotAllowed(format!(
                "{} is refused on {}: it would echo the credential",
                req.method(),
                target.host
            )));
        }
        forward(app, Scheme::Https, target, route, audit.count_upload(req)).await
    }
    .await;
    let resp = result.unwrap_or_else(ProxyError::into_response);
    crate::gate::finish(app, ctx, &allowed, route, resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The request future is boxed into place once per request (intercept.rs), so its size
    /// is copied per request: rare branches (dialling, the WebSocket relay) are boxed where
    /// they are awaited. 5.4 KiB today; it was 10.6 KiB before, which cost 11k instructions
    /// of memcpy per keep-alive request (callgrind).
    const REQUEST_FUTURE_MAX_BYTES: usize = 6 << 10;

    /// The size of the future `f` returns, without calling it.
    fn future_size<'a, A, B, C, F: std::future::Future>(_: fn(&'a A, &'a B, C) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn the_request_future_stays_small() {
        let size = future_size(tunnel_request);
        eprintln!("tunnel_request future: {size} bytes");
        assert!(size <= REQUEST_FUTURE_MAX_BYTES, "{size} bytes");
    }
}
