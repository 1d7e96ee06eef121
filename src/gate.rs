//! The per-request gate: the rule check every request passes (h1 and h2 in a tunnel, the
//! WebSocket handshake, explicit and transparent plain HTTP) and the record an allowed one
//! leaves (audit line once its response body ends, learn entry at once). Refusals are
//! recorded by [`crate::App::deny`].

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::App;
use crate::audit_log::{AuditEvent, AuditLog, now_rfc3339};
use crate::body::{Body, BoxError};
use crate::error::ProxyError;
use crate::host::Host;
use crate::inject::Route;
use crate::policy::{self, Allowed, Entry, Facts, RequestLine};

/// How the connection reached the proxy, for the audit log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Explicit,
    Transparent,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Explicit => "explicit",
            Mode::Transparent => "transparent",
        }
    }
}

/// What the gate knows about one request: owned, so the audit record can outlive it.
pub struct RequestCtx {
    pub mode: Mode,
    pub facts: Facts,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Request-body bytes the client sent, counted as they pass ([`RequestCtx::count_upload`]).
    uploaded: Arc<AtomicU64>,
    pub started: Instant,
}

impl RequestCtx {
    pub fn new<B>(mode: Mode, facts: Facts, req: &Request<B>) -> RequestCtx {
        RequestCtx {
            mode,
            facts,
            method: req.method().as_str().to_string(),
            path: req.uri().path().to_string(),
            query: req.uri().query().map(str::to_string),
            uploaded: Arc::default(),
            started: Instant::now(),
        }
    }

    /// The request with its body counted into this context's upload total, for the audit
    /// log (the declared length would be absent for chunked uploads, and can lie).
    pub fn count_upload(&self, req: Request<hyper::body::Incoming>) -> Request<Body> {
        let uploaded = self.uploaded.clone();
        req.map(|inner| {
            http_body_util::BodyExt::boxed_unsync(Uploaded {
                inner: crate::body::stream(inner),
                uploaded,
            })
        })
    }

    /// The full URL, as the blocked log names a refused request.
    pub fn url(&self) -> String {
        let (scheme, default) = match self.facts.entry {
            Entry::Tls => ("https", 443),
            Entry::PlainHttp => ("http", 80),
        };
        let query = self
            .query
            .as_deref()
            .map(|q| format!("?{q}"))
            .unwrap_or_default();
        format!(
            "{scheme}://{}{}{query}",
            self.facts.host.authority(self.facts.port, default),
            self.path
        )
    }

    pub fn refusal(&self) -> Refusal<'_> {
        Refusal {
            mode: self.mode,
            client: self.facts.client,
            method: &self.method,
            what: self.url(),
            host: Some(&self.facts.host),
            port: self.facts.port,
            path: &self.path,
        }
    }
}

/// Everything [`App::deny`] records about a refusal.
pub struct Refusal<'a> {
    pub mode: Mode,
    pub client: IpAddr,
    pub method: &'a str,
    /// `host:port` for a connection, the full URL for a request.
    pub what: String,
    /// `None` when refused before a host was known (client filter).
    pub host: Option<&'a Host>,
    pub port: u16,
    /// Empty for a connection.
    pub path: &'a str,
}

/// The rule check (after the connection checks, again). A refusal is recorded and returned
/// as the error to answer with.
pub fn check(app: &App, ctx: &RequestCtx) -> Result<Allowed, ProxyError> {
    let policy = app.policy.load();
    let line = RequestLine {
        method: &ctx.method,
        path: &ctx.path,
        query: ctx.query.as_deref(),
    };
    policy::check_request(&policy, &ctx.facts, &line)
        .map_err(|reason| app.deny(&ctx.refusal(), reason))
}

/// Records a request refused before the rules were asked (misdirected, bad framing): the
/// audit log has a line for every request. Denials by the policy are recorded by
/// [`App::deny`] already.
pub fn refused(app: &App, ctx: &RequestCtx, err: &ProxyError) {
    let Some(audit) = &app.audit else { return };
    if matches!(err, ProxyError::Denied(_)) {
        return;
    }
    let host = ctx.facts.host.to_string();
    let agent = app
        .policy
        .load()
        .requests
        .agent(ctx.facts.client)
        .map(|a| a.name.clone());
    audit.record(&AuditEvent {
        time: now_rfc3339(),
        client: ctx.facts.client.to_string(),
        agent: agent.as_deref(),
        mode: ctx.mode.as_str(),
        host: &host,
        port: ctx.facts.port,
        method: &ctx.method,
        path: &ctx.path,
        status: err.status().as_u16(),
        bytes_up: None,
        bytes_down: 0,
        duration_ms: u64::try_from(ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        decision: "deny",
        by: "malformed-request".to_string(),
        reason: Some(err.to_string()),
        credential: None,
    });
}

/// Records an allowed request: a learn entry now, an audit line when the response body ends.
pub fn finish(
    app: &App,
    ctx: RequestCtx,
    allowed: &Allowed,
    route: Option<&Route>,
    resp: Response<Body>,
) -> Response<Body> {
    if app.learn.is_none() && app.audit.is_none() {
        return resp;
    }
    let agent = app
        .policy
        .load()
        .requests
        .agent(ctx.facts.client)
        .map(|a| a.name.clone());
    if let Some(learn) = &app.learn {
        learn.note(crate::learn::Seen {
            agent: agent.clone(),
            client: ctx.facts.client.to_string(),
            host: ctx.facts.host.to_string(),
            port: ctx.facts.port,
            method: ctx.method.clone(),
            path: crate::learn::path_shape(&ctx.path),
        });
    }
    let Some(audit) = app.audit.clone() else {
        return resp;
    };
    let pending = Pending {
        audit,
        ctx,
        agent,
        status: resp.status().as_u16(),
        by: allowed.to_string(),
        credential: route.map(|r| r.env_var.clone()),
    };
    resp.map(|body| {
        Counted {
            inner: body,
            bytes: 0,
            pending: Some(pending),
        }
        .boxed()
    })
}

struct Pending {
    audit: Arc<AuditLog>,
    ctx: RequestCtx,
    agent: Option<String>,
    status: u16,
    by: String,
    credential: Option<String>,
}

impl Pending {
    fn record(self, bytes_down: u64) {
        let host = self.ctx.facts.host.to_string();
        self.audit.record(&AuditEvent {
            time: now_rfc3339(),
            client: self.ctx.facts.client.to_string(),
            agent: self.agent.as_deref(),
            mode: self.ctx.mode.as_str(),
            host: &host,
            port: self.ctx.facts.port,
            method: &self.ctx.method,
            path: &self.ctx.path,
            status: self.status,
            bytes_up: Some(self.ctx.uploaded.load(Ordering::Relaxed)),
            bytes_down,
            duration_ms: u64::try_from(self.ctx.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            decision: "allow",
            by: self.by,
            reason: None,
            credential: self.credential.as_deref(),
        });
    }
}

/// A response body that counts what it delivers and records the audit line when it is done
/// (ended or dropped: a client that hangs up mid-body is still audited).
struct Counted {
    inner: Body,
    bytes: u64,
    pending: Option<Pending>,
}

impl Counted {
    fn boxed(self) -> Body {
        http_body_util::BodyExt::boxed_unsync(self)
    }
}

impl HttpBody for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.bytes += data.len() as u64;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.record(self.bytes);
        }
    }
}

/// A request body that adds what passes through to a shared count.
struct Uploaded {
    inner: Body,
    uploaded: Arc<AtomicU64>,
}

impl HttpBody for Uploaded {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.uploaded
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
