//! Header hygiene shared by every forwarding path: what never crosses the proxy, and the
//! request shapes that are refused because two parsers could read them differently.

use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Request};

use crate::error::ProxyError;
use crate::host::{Host, parse_authority};

/// Hop-by-hop (RFC 9110 §7.6.1) and proxy-only headers. `te` is handled separately
/// because `te: trailers` must survive for gRPC. Names, not strings: removing by `&str`
/// parses the name again on every request (it showed in the per-request profile).
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHORIZATION,
    header::PROXY_AUTHENTICATE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Headers that would tell the upstream about the sandbox, or that it must not trust.
const REQUEST_ONLY: [HeaderName; 3] = [
    header::VIA,
    HeaderName::from_static("x-forwarded-for"),
    header::FORWARDED,
];

/// Removes hop-by-hop headers, including those the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(&header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, header::HeaderValue::from_static("trailers"));
    }
}

pub fn strip_request_only(headers: &mut HeaderMap) {
    for name in &REQUEST_ONLY {
        headers.remove(name);
    }
}

/// Refuses framing that a front end and a back end could disagree on (request smuggling).
pub fn check_framing<B>(req: &Request<B>) -> Result<(), ProxyError> {
    let h = req.headers();
    if h.contains_key(header::TRANSFER_ENCODING) && h.contains_key(header::CONTENT_LENGTH) {
        return Err(ProxyError::BadRequest(
            "both Content-Length and Transfer-Encoding are set".into(),
        ));
    }
    let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
    if let Some(first) = lengths.next()
        && lengths.any(|v| v != first)
    {
        return Err(ProxyError::BadRequest(
            "conflicting Content-Length headers".into(),
        ));
    }
    Ok(())
}

/// Every request must name the host the connection was approved for, in its URI authority
/// (absolute form, HTTP/2 `:authority`) and in `Host`. The port may be omitted.
pub fn check_authority<B>(req: &Request<B>, host: &Host, port: u16) -> Result<(), ProxyError> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let (host_header, extra) = (hosts.next(), hosts.next());
    if extra.is_some() {
        return Err(ProxyError::BadRequest("more than one Host header".into()));
    }
    let host_header = host_header
        .map(|h| {
            h.to_str()
                .map_err(|_| ProxyError::BadRequest("Host header is not ASCII".into()))
        })
        .transpose()?;
    let named = [req.uri().authority().map(|a| a.as_str()), host_header];
    if named.iter().all(Option::is_none) {
        return Err(ProxyError::BadRequest(
            "request names no host (no Host header)".into(),
        ));
    }
    for raw in named.into_iter().flatten() {
        let (h, p) = parse_authority(raw, Some(port))
            .map_err(|e| ProxyError::BadRequest(format!("bad host '{raw}': {e}")))?;
        if h != *host || p != port {
            return Err(ProxyError::Misdirected(format!(
                "this connection is for {}, the request names {raw}",
                host.with_port(port)
            )));
        }
    }
    Ok(())
}

/// TRACE echoes the request, credential included, back to the client.
pub fn is_trace(method: &Method) -> bool {
    method == Method::TRACE || method.as_str().eq_ignore_ascii_case("TRACK")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn hop_by_hop_goes_te_trailers_stays() {
        let r = req(
            "/",
            &[
                ("connection", "close, x-secret-hop"),
                ("x-secret-hop", "1"),
                ("keep-alive", "5"),
                ("proxy-authorization", "Basic x"),
                ("te", "trailers, deflate"),
                ("upgrade", "h2c"),
                ("x-keep", "1"),
            ],
        );
        let mut h = r.headers().clone();
        strip_hop_by_hop(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, vec!["te", "x-keep"]);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn framing_table() {
        assert!(check_framing(&req("/", &[("content-length", "5")])).is_ok());
        assert!(
            check_framing(&req(
                "/",
                &[("content-length", "5"), ("content-length", "5")]
            ))
            .is_ok()
        );
        assert!(
            check_framing(&req(
                "/",
                &[("content-length", "5"), ("content-length", "6")]
            ))
            .is_err()
        );
        assert!(
            check_framing(&req(
                "/",
                &[("content-length", "5"), ("transfer-encoding", "chunked")]
            ))
            .is_err()
        );
    }

    #[test]
    fn authority_table() {
        let host = Host::parse("api.example.test").unwrap();
        let ok = [
            req("/", &[("host", "api.example.test")]),
            req("/", &[("host", "API.example.test.:443")]),
            req("https://api.example.test/v1", &[]),
            req(
                "https://api.example.test:443/v1",
                &[("host", "api.example.test")],
            ),
        ];
        for r in ok {
            assert!(check_authority(&r, &host, 443).is_ok(), "{r:?}");
        }
        let misdirected = [
            req("/", &[("host", "evil.com")]),
            req("/", &[("host", "api.example.test:8443")]),
            req("https://evil.com/", &[("host", "api.example.test")]),
            req("https://api.example.test/", &[("host", "evil.com")]),
        ];
        for r in misdirected {
            assert!(
                matches!(
                    check_authority(&r, &host, 443),
                    Err(ProxyError::Misdirected(_))
                ),
                "{r:?}"
            );
        }
        let bad = [
            req("/", &[]),
            req(
                "/",
                &[("host", "api.example.test"), ("host", "api.example.test")],
            ),
            req("/", &[("host", "a b")]),
        ];
        for r in bad {
            assert!(
                matches!(
                    check_authority(&r, &host, 443),
                    Err(ProxyError::BadRequest(_))
                ),
                "{r:?}"
            );
        }
    }
}
