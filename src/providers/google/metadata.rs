//! GCE metadata-server emulation. Go clients and some SDKs ask the metadata server for a
//! token instead of reading ADC. Such requests (explicit `http://` requests, or plain HTTP
//! redirected in transparent mode) are answered here, never forwarded, and only when a
//! gcloud credential is configured; otherwise the SSRF guard refuses `169.254.169.254` as
//! usual.

use std::net::{IpAddr, Ipv4Addr};

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::host::Host;
use crate::providers::google::vend::VENDED_TOKEN_JSON;
use crate::vend::{Ask, Ctx, VendFuture, Vendor, Via};

pub const METADATA_HOST: &str = "metadata.google.internal";
pub const METADATA_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);
pub const METADATA_PORT: u16 = 80;

/// What the emulation says the agent's service account is: a placeholder, not the real
/// account, which the agent has no use for.
pub const PLACEHOLDER_EMAIL: &str = "paude-proxy-managed@paude-proxy.invalid";

const FLAVOR: &str = "metadata-flavor";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";
const EMAIL_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/email";
const PROJECT_PATH: &str = "/computeMetadata/v1/project/project-id";

/// True when `host:port` is the metadata server. Pure, for both entry modes.
pub fn answers(host: &Host, port: u16) -> bool {
    port == METADATA_PORT
        && (host.as_str() == METADATA_HOST
            || host.ip().map(|ip| ip.to_canonical()) == Some(IpAddr::V4(METADATA_IP)))
}

/// The emulated metadata server (present only when a gcloud credential is configured):
/// what it may reveal is the project id, never a key or a token.
pub struct MetadataServer {
    pub project_id: Option<String>,
}

impl Vendor for MetadataServer {
    fn name(&self) -> &'static str {
        "GCE metadata emulation"
    }

    /// Plain HTTP only: the metadata server is `http://`, and it answers before the SSRF
    /// guard would refuse 169.254.169.254.
    fn claims(&self, ask: &Ask<'_>) -> bool {
        ask.via == Via::PlainHttp && answers(ask.host, ask.port)
    }

    fn answer<'a>(&'a self, _ctx: Ctx<'a>, req: Request<Incoming>) -> VendFuture<'a> {
        let resp = respond(self.project_id.as_deref(), &req);
        Box::pin(async move { Ok(resp) })
    }

    fn pinned(&self) -> Vec<(String, IpAddr)> {
        // The sandbox must find the server by name; the connection then reaches the proxy.
        vec![(METADATA_HOST.to_string(), IpAddr::V4(METADATA_IP))]
    }
}

/// The emulated server. Like the real one it insists on `Metadata-Flavor: Google` (a
/// browser-style SSRF cannot set it) and labels every answer with the same header, which
/// is how clients recognise a metadata server.
pub fn respond<B>(project_id: Option<&str>, req: &Request<B>) -> Response<Body> {
    let flavored = req
        .headers()
        .get_all(FLAVOR)
        .iter()
        .any(|v| v.as_bytes().eq_ignore_ascii_case(b"Google"));
    if !flavored {
        let mut resp = answer(
            StatusCode::FORBIDDEN,
            "text/plain",
            "Missing required header: Metadata-Flavor: Google\n".into(),
        );
        // Every 403 the proxy writes says which kind of refusal it is.
        crate::error::mark_kind(&mut resp, Some("metadata-flavor-required"));
        return resp;
    }
    match req.uri().path() {
        TOKEN_PATH => answer(StatusCode::OK, "application/json", VENDED_TOKEN_JSON.into()),
        EMAIL_PATH => answer(StatusCode::OK, "application/text", PLACEHOLDER_EMAIL.into()),
        PROJECT_PATH => match project_id {
            Some(p) => answer(StatusCode::OK, "application/text", p.to_string()),
            None => not_found(),
        },
        _ => not_found(),
    }
}

fn not_found() -> Response<Body> {
    answer(StatusCode::NOT_FOUND, "text/plain", "Not Found\n".into())
}

fn answer(status: StatusCode, content_type: &'static str, text: String) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(FLAVOR, header::HeaderValue::from_static("Google"));
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_destinations_are_the_metadata_server() {
        let h = |s: &str| Host::parse(s).unwrap();
        assert!(answers(&h("metadata.google.internal"), 80));
        assert!(answers(&h("Metadata.Google.Internal."), 80));
        assert!(answers(&h("169.254.169.254"), 80));
        assert!(answers(&h("::ffff:169.254.169.254"), 80));
        assert!(!answers(&h("169.254.169.254"), 8080));
        assert!(!answers(&h("metadata.google.internal"), 443));
        assert!(!answers(&h("169.254.169.253"), 80));
        assert!(!answers(&h("metadata.google.internal.evil.com"), 80));
    }
}
