//! The one forward path. Every request that leaves the proxy goes through [`forward`]:
//!
//! - hop-by-hop and request-only headers go;
//! - on a route, the credential is written in one place ([`Route::write`]) and the
//!   injection is logged and counted once;
//! - for a refreshing credential, a `401` to its token forces one refresh and one retry of
//!   the same request (bodies up to [`MAX_RETRY_BODY`] are kept for it; larger ones and gRPC
//!   streams are sent once);
//! - echoed secrets are masked in one place ([`scrub`]).
//!
//! WebSocket upgrades take [`relay_websocket`], beside it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;

use crate::App;
use crate::body::{self, Body, BoxError};
use crate::error::ProxyError;
use crate::headers;
use crate::inject::{Route, Value};
use crate::policy::Target;
use crate::scrub::Needles;
use crate::upstream::Scheme;

/// Request bodies up to this size are kept for a retry after `401`.
pub const MAX_RETRY_BODY: usize = 10 * 1024 * 1024;

/// Forwards a checked request to `target`. `route` is `Some` only on verified TLS paths.
pub async fn forward(
    app: &App,
    scheme: Scheme,
    target: &Target,
    route: Option<&Route>,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    if is_websocket(&req) {
        // Boxed: the relay's future is about 8 KiB and inline it would make every request's
        // future that large (and copied into place per request) for a rare branch.
        return Box::pin(relay_websocket(app, scheme, target, route, req)).await;
    }
    let (mut parts, incoming) = req.into_parts();
    // Every upgrade but WebSocket (h2c, TLS/1.0, ...) is refused by dropping its headers:
    // the request is served as plain HTTP/1.1, which every server must accept.
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_request_only(&mut parts.headers);
    app.metrics.requests.inc();
    let Some(route) = route else {
        tracing::debug!(host = %target.host, method = %parts.method, path = parts.uri.path(), "forwarding");
        let req = Request::from_parts(parts, incoming);
        return send(app, scheme, target, req).await;
    };
    let value = route.value().await?;
    injected(app, target, &parts, route, &value);
    if !route.refreshes() {
        let req = with_value(&parts, route, &value, incoming)?;
        return Ok(scrub(&value.needles, send(app, scheme, target, req).await?));
    }
    let whole = match buffer(&parts.headers, incoming).await? {
        Buffered::Whole(whole) => whole,
        Buffered::Streaming(body) => {
            tracing::debug!(host = %target.host, "request body too large or a stream: no retry after 401");
            let req = with_value(&parts, route, &value, body)?;
            let resp = scrub(&value.needles, send(app, scheme, target, req).await?);
            if resp.status() == StatusCode::UNAUTHORIZED {
                // No retry, but the next request should not carry the rejected token.
                if let Err(why) = route.refresh_rejected(&value).await {
                    tracing::warn!(host = %target.host, credential = %route.env_var, "upstream answered 401 and the token cannot be refreshed ({})", why.why());
                }
            }
            return Ok(resp);
        }
    };
    let req = with_value(&parts, route, &value, whole.to_body())?;
    let resp = scrub(&value.needles, send(app, scheme, target, req).await?);
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    let fresh = match route.refresh_rejected(&value).await {
        Ok(fresh) => fresh,
        Err(why) => {
            tracing::warn!(
                host = %target.host,
                credential = %route.env_var,
                "upstream answered 401 and the token cannot be refreshed ({}); passing the 401 on",
                why.why()
            );
            return Ok(resp);
        }
    };
    tracing::info!(
        host = %target.host,
        credential = %route.env_var,
        generation = fresh.generation,
        "upstream answered 401: retrying once with a refreshed token"
    );
    drop(resp);
    let req = with_value(&parts, route, &fresh, whole.to_body())?;
    Ok(scrub(&fresh.needles, send(app, scheme, target, req).await?))
}

/// The one log line and counter for an injection.
fn injected(app: &App, target: &Target, parts: &Parts, route: &Route, value: &Value) {
    app.metrics.injected.inc();
    tracing::info!(
        host = %target.host,
        method = %parts.method,
        path = parts.uri.path(),
        credential = %route.env_var,
        generation = value.generation,
        "injected"
    );
}

/// One upstream send, counted in the metrics like every other forward, hop-by-hop headers
/// of the answer removed.
async fn send(
    app: &App,
    scheme: Scheme,
    target: &Target,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let mut resp = app
        .upstream
        .send(scheme, target, req)
        .await
        .inspect_err(|_| app.metrics.upstream_errors.inc())?;
    headers::strip_hop_by_hop(resp.headers_mut());
    Ok(resp)
}

/// The request as it leaves: the client's head with the route's value written in.
fn with_value(
    parts: &Parts,
    route: &Route,
    value: &Value,
    body: Body,
) -> Result<Request<Body>, ProxyError> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    route.write(value, req.headers_mut())?;
    Ok(req)
}

/// Masks the route's credential wherever the upstream echoes it back (DESIGN.md §3.7).
/// WebSocket frames after a `101` are relayed as they are.
pub fn scrub(needles: &Needles, resp: Response<Body>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    needles.scrub_headers(&mut parts.headers);
    Response::from_parts(parts, needles.scrub_body(body))
}

/// A WebSocket handshake: injected like any request (no retry: the handshake's answer is
/// the connection), then the two upgraded streams are copied both ways.
pub async fn relay_websocket(
    app: &App,
    scheme: Scheme,
    target: &Target,
    route: Option<&Route>,
    mut req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (mut parts, incoming) = req.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_request_only(&mut parts.headers);
    parts
        .headers
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    parts
        .headers
        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    app.metrics.requests.inc();
    let (req, needles) = match route {
        Some(route) => {
            let value = route.value().await?;
            injected(app, target, &parts, route, &value);
            let req = with_value(&parts, route, &value, incoming)?;
            (req, Some(value.needles))
        }
        None => (Request::from_parts(parts, incoming), None),
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
    app.tasks.spawn(async move {
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

/// A complete request body, kept for a second send.
struct WholeBody {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl WholeBody {
    fn to_body(&self) -> Body {
        let trailers = self.trailers.clone();
        Full::new(self.data.clone())
            .map_err(|e| match e {})
            .with_trailers(async move { trailers.map(Ok::<_, BoxError>) })
            .boxed_unsync()
    }
}

enum Buffered {
    Whole(WholeBody),
    Streaming(Body),
}

/// Reads the body into memory if it is small enough and meant to end; otherwise returns a
/// body that replays what was read and streams the rest.
async fn buffer(headers: &HeaderMap, mut incoming: Body) -> Result<Buffered, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let is_grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"));
    let too_large = declared.is_some_and(|n| n > MAX_RETRY_BODY as u64);
    if too_large || (is_grpc && declared.is_none()) {
        return Ok(Buffered::Streaming(incoming));
    }
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = incoming.frame().await {
        let frame = frame.map_err(|e| ProxyError::BadRequest(format!("request body: {e}")))?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > MAX_RETRY_BODY {
                    let head = data.freeze();
                    return Ok(Buffered::Streaming(
                        Replay {
                            head: Some(head),
                            rest: incoming,
                        }
                        .boxed_unsync(),
                    ));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    Ok(Buffered::Whole(WholeBody {
        data: data.freeze(),
        trailers,
    }))
}

/// What was already read, then the rest of the client's body.
struct Replay {
    head: Option<Bytes>,
    rest: Body,
}

impl hyper::body::Body for Replay {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(head) = self.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}
