//! The request target and `Host` each upstream protocol wants: origin-form plus `Host` for
//! HTTP/1.1, an absolute URI (hyper derives `:scheme` and `:authority`) for HTTP/2.

use http::{Request, Uri, Version, header};

use super::Scheme;
use crate::body::Body;
use crate::policy::Target;

pub(super) fn to_h1(req: &mut Request<Body>, target: &Target, scheme: Scheme) {
    let path = path_and_query(req);
    *req.uri_mut() = Uri::try_from(path).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    if let Ok(v) = header::HeaderValue::from_str(&authority(target, scheme)) {
        req.headers_mut().insert(header::HOST, v);
    }
}

pub(super) fn to_h2(req: &mut Request<Body>, target: &Target, scheme: Scheme) {
    let path = path_and_query(req);
    let scheme_str = match scheme {
        Scheme::Https => "https",
        Scheme::Http => "http",
    };
    let uri = format!("{scheme_str}://{}{path}", authority(target, scheme));
    *req.uri_mut() = Uri::try_from(uri).unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_2;
    req.headers_mut().remove(header::HOST);
}

fn path_and_query(req: &Request<Body>) -> String {
    req.uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string()
}

fn authority(target: &Target, scheme: Scheme) -> String {
    let default = match scheme {
        Scheme::Https => 443,
        Scheme::Http => 80,
    };
    target.host.authority(target.port(), default)
}
