//! Answers the proxy gives itself instead of forwarding: token vending (the agent's own
//! token requests get placeholders), metadata-server emulation, and the sandbox-DNS names
//! those answers need pinned. Providers implement [`Vendor`]; the request path asks every
//! vendor in one loop ([`Vendors::answer`]) and never names a provider.

use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;

use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::host::Host;
use crate::policy::Target;
use crate::upstream::Upstream;

/// A grant or a metadata request is a few hundred bytes; a client sending more is not one
/// worth reading to the end (hyper then closes the connection instead of reusing it).
pub const MAX_GRANT_BYTES: usize = 64 * 1024;

/// How the request reached the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// Inside an intercepted, approved TLS tunnel.
    Tls,
    /// Cleartext HTTP, before any policy check (the metadata server lives at a link-local
    /// address the SSRF guard would refuse).
    PlainHttp,
}

/// What a vendor looks at to decide whether a request is its to answer.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    pub via: Via,
    pub host: &'a Host,
    pub port: u16,
    pub method: &'a Method,
    pub path: &'a str,
}

/// What a vendor may use to answer: the upstream pool, for a login exchange that must reach
/// the real endpoint, and the approved target (`None` on plain HTTP).
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub upstream: &'a Upstream,
    pub target: Option<&'a Target>,
}

pub type VendFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a>>;

pub trait Vendor: Send + Sync {
    /// A short name for log lines ("Google token endpoint").
    fn name(&self) -> &'static str;
    /// True when the request is this vendor's to answer. Pure.
    fn claims(&self, ask: &Ask<'_>) -> bool;
    /// The answer; called only after [`Vendor::claims`] said yes.
    fn answer<'a>(&'a self, ctx: Ctx<'a>, req: Request<Incoming>) -> VendFuture<'a>;
    /// Names the sandbox DNS must answer with a fixed address for this vendor to be found.
    fn pinned(&self) -> Vec<(String, IpAddr)> {
        Vec::new()
    }
}

/// Every configured vendor, asked in order.
#[derive(Clone, Default)]
pub struct Vendors(Vec<Arc<dyn Vendor>>);

impl fmt::Debug for Vendors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|v| v.name()))
            .finish()
    }
}

impl Vendors {
    pub fn push(&mut self, vendor: Arc<dyn Vendor>) {
        self.0.push(vendor);
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Vendor>> {
        self.0.iter()
    }

    /// Every pinned sandbox-DNS name.
    pub fn pinned(&self) -> Vec<(String, IpAddr)> {
        self.0.iter().flat_map(|v| v.pinned()).collect()
    }

    /// True when a vendor pins `name` (the sandbox DNS answers it even if the allowlist
    /// does not name it).
    pub fn pins(&self, name: &str) -> bool {
        self.pinned().iter().any(|(n, _)| n == name)
    }

    /// The answer of the first vendor that claims `req`, or the request back for the
    /// normal path.
    pub async fn answer(
        &self,
        ctx: Ctx<'_>,
        via: Via,
        host: &Host,
        port: u16,
        req: Request<Incoming>,
    ) -> Result<Result<Response<Body>, ProxyError>, Request<Incoming>> {
        let ask = Ask {
            via,
            host,
            port,
            method: req.method(),
            path: req.uri().path(),
        };
        let Some(vendor) = self.0.iter().find(|v| v.claims(&ask)) else {
            return Err(req);
        };
        let path = req.uri().path().to_string();
        let result = vendor.answer(ctx, req).await;
        let status = result.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
        tracing::info!(%host, path, status, vendor = vendor.name(), "answered by the proxy (not forwarded)");
        Ok(result)
    }
}

/// Reads a small request body (a grant); `None` when it is larger than [`MAX_GRANT_BYTES`]
/// or broken.
pub async fn read_grant(req: Request<Incoming>) -> Option<bytes::Bytes> {
    Limited::new(req.into_body(), MAX_GRANT_BYTES)
        .collect()
        .await
        .ok()
        .map(|c| c.to_bytes())
}

/// Reads a whole body of at most `max` bytes (an upstream's token answer).
pub async fn read_limited(mut body: Body, max: usize) -> Result<bytes::Bytes, String> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("unreadable: {e}"))?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(format!("larger than {max} bytes"));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// A JSON answer that must not be cached.
pub fn json_response(status: http::StatusCode, json: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(json));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}
