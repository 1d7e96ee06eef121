//! Forwarding on a `gcloud` route: the real token goes in, and when the upstream answers
//! `401` (the token was revoked or expired early) the proxy refreshes it once and sends the
//! same request again, so the agent never sees a failure it could not fix itself.
//!
//! A retry needs the body twice, so bodies up to [`MAX_RETRY_BODY`] are buffered. Larger
//! ones, and gRPC streams (whose request body may stay open while responses flow), are
//! streamed once without a retry.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming, SizeHint};

use crate::App;
use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use crate::gcloud::GcloudCredential;
use crate::handle::scrub;
use crate::inject::Route;
use crate::policy::Target;
use crate::upstream::Scheme;

/// Request bodies up to this size are kept for a retry after `401`.
pub const MAX_RETRY_BODY: usize = 10 * 1024 * 1024;

/// Sends `parts` + `incoming` to `target` with a Google token in `route.header`, retrying
/// once with a refreshed token after a `401`.
pub async fn send(
    app: &App,
    scheme: Scheme,
    target: &Target,
    route: &Route,
    credential: &GcloudCredential,
    parts: Parts,
    incoming: Incoming,
) -> Result<Response<Body>, ProxyError> {
    let no_token = |detail: String| ProxyError::NoToken {
        credential: route.env_var.clone(),
        detail,
    };
    let bearer = credential.tokens.token().await.map_err(no_token)?;
    app.metrics.injected.inc();
    tracing::info!(
        host = %target.host,
        method = %parts.method,
        path = parts.uri.path(),
        credential = %route.env_var,
        generation = bearer.generation,
        "injected"
    );
    let body = match buffer(&parts.headers, incoming).await? {
        Buffered::Whole(whole) => whole,
        Buffered::Streaming(body) => {
            tracing::debug!(host = %target.host, "request body too large or a stream: no retry after 401");
            let req = rebuild(&parts, route, &bearer.value, body);
            let resp = scrub(
                &bearer.needles,
                send_counted(app, scheme, target, req).await?,
            );
            if resp.status() == StatusCode::UNAUTHORIZED {
                // No retry, but the next request should not carry the rejected token.
                if let Err(why) = credential.tokens.refresh_rejected(bearer.generation).await {
                    tracing::warn!(host = %target.host, credential = %route.env_var, "upstream answered 401 and the token cannot be refreshed ({why})");
                }
            }
            return Ok(resp);
        }
    };
    let req = rebuild(&parts, route, &bearer.value, body.to_body());
    let resp = scrub(
        &bearer.needles,
        send_counted(app, scheme, target, req).await?,
    );
    if resp.status() != StatusCode::UNAUTHORIZED {
        return Ok(resp);
    }
    let fresh = match credential.tokens.refresh_rejected(bearer.generation).await {
        Ok(fresh) => fresh,
        Err(why) => {
            tracing::warn!(
                host = %target.host,
                credential = %route.env_var,
                "upstream answered 401 and the token cannot be refreshed ({why}); passing the 401 on"
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
    let req = rebuild(&parts, route, &fresh.value, body.to_body());
    Ok(scrub(
        &fresh.needles,
        send_counted(app, scheme, target, req).await?,
    ))
}

/// One upstream send, counted in the metrics like every other forward.
async fn send_counted(
    app: &App,
    scheme: Scheme,
    target: &Target,
    req: Request<Body>,
) -> Result<Response<Body>, ProxyError> {
    app.upstream
        .send(scheme, target, req)
        .await
        .inspect_err(|_| app.metrics.upstream_errors.inc())
}

fn rebuild(parts: &Parts, route: &Route, auth: &HeaderValue, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    // Every spelling and copy the client sent goes; exactly one real value is set.
    req.headers_mut().remove(&route.header);
    req.headers_mut().insert(route.header.clone(), auth.clone());
    req
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
async fn buffer(headers: &HeaderMap, mut incoming: Incoming) -> Result<Buffered, ProxyError> {
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
        return Ok(Buffered::Streaming(crate::body::stream(incoming)));
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
    rest: Incoming,
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
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(BoxError::from)
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
