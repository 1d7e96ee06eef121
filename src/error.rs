//! One error type for everything that can go wrong with a request, each with its blame,
//! and the one function that turns it into a response and a log line.

use std::fmt;
use std::io;

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::body::Body;
use crate::policy::DenyReason;

/// Who caused the failure; decides the status family and the log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The agent sent something we refuse or cannot parse.
    Client,
    /// The destination failed: unreachable, bad certificate, broken HTTP.
    Upstream,
    /// A bug or resource problem on our side.
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{0}")]
    Denied(DenyReason),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Misdirected(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("cannot resolve {host}: {detail}")]
    Resolve { host: String, detail: String },
    #[error("cannot connect to upstream {target}: {detail}")]
    Connect { target: String, detail: String },
    #[error("TLS with upstream {host} failed: {detail}")]
    UpstreamTls { host: String, detail: String },
    #[error("upstream {host} failed: {detail}")]
    UpstreamHttp { host: String, detail: String },
    /// No response head within `PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT`.
    #[error(
        "upstream {host} sent no response within {after:?} (PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT)"
    )]
    UpstreamTimeout {
        host: String,
        after: std::time::Duration,
    },
    /// No access token for a refreshing route (token endpoint down, credential revoked,
    /// ...). `label` names whose token ("Google"). `detail` never holds a secret: it is
    /// built from fetch errors, not token values.
    #[error("no {label} access token for {credential}: {detail}")]
    NoToken {
        label: &'static str,
        credential: String,
        detail: String,
    },
    /// Nobody has signed in yet (the credentials file does not exist): a `401`, so the
    /// agent prompts for a login instead of reporting a broken gateway.
    #[error(
        "not signed in: {credential} ({detail}); sign in on the host, the proxy picks the credential up without a restart"
    )]
    NotSignedIn { credential: String, detail: String },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::Denied(_)
            | ProxyError::BadRequest(_)
            | ProxyError::Misdirected(_)
            | ProxyError::MethodNotAllowed(_)
            | ProxyError::NotSignedIn { .. } => Blame::Client,
            ProxyError::Resolve { .. }
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamHttp { .. }
            | ProxyError::UpstreamTimeout { .. }
            | ProxyError::NoToken { .. } => Blame::Upstream,
            ProxyError::Internal(_) => Blame::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Denied(_) => StatusCode::FORBIDDEN,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::NotSignedIn { .. } => StatusCode::UNAUTHORIZED,
            ProxyError::Resolve { .. }
            | ProxyError::Connect { .. }
            | ProxyError::UpstreamTls { .. }
            | ProxyError::UpstreamHttp { .. }
            | ProxyError::NoToken { .. } => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response the client gets, and the log line we write. The text never contains a
    /// credential: no variant is ever built from a header value we inject.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        match self.blame() {
            // Denials were logged with their context by `App::deny`.
            Blame::Client if matches!(self, ProxyError::Denied(_)) => {}
            Blame::Client => tracing::info!(status = status.as_u16(), "refused: {self}"),
            Blame::Upstream => tracing::warn!(status = status.as_u16(), "upstream failure: {self}"),
            Blame::Internal => tracing::error!(status = status.as_u16(), "{self}"),
        }
        let mut resp = text_response(status, format!("paude-proxy: {self}\n"));
        mark_kind(&mut resp, self.kind());
        resp
    }

    /// The `X-Proxy-Error` value of a denial.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            ProxyError::Denied(reason) => Some(reason.kind()),
            _ => None,
        }
    }
}

/// `X-Proxy-Error: <kind>` on a refusal: one value per kind of denial, on every 403.
pub fn mark_kind(resp: &mut Response<Body>, kind: Option<&'static str>) {
    if let Some(kind) = kind {
        resp.headers_mut().insert(
            header::HeaderName::from_static("x-proxy-error"),
            header::HeaderValue::from_static(kind),
        );
    }
}

pub fn text_response(status: StatusCode, text: String) -> Response<Body> {
    let mut resp = Response::new(
        Full::new(Bytes::from(text))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Renders an error and its sources on one line (rustls and hyper hide the useful part in
/// `source()`).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        cur = s.source();
    }
    out
}

/// An I/O error from a TLS stream carries the rustls error inside; bring it out.
pub fn io_chain(e: &io::Error) -> String {
    match e.get_ref() {
        Some(inner) => chain(inner),
        None => e.to_string(),
    }
}

impl ProxyError {
    /// The upstream's HTTP layer failed (reset, framing, protocol error).
    pub fn upstream_http(host: &impl fmt::Display, e: &hyper::Error) -> ProxyError {
        ProxyError::UpstreamHttp {
            host: host.to_string(),
            detail: chain(e),
        }
    }
}

impl From<DenyReason> for ProxyError {
    fn from(r: DenyReason) -> Self {
        ProxyError::Denied(r)
    }
}
