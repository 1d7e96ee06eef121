//! The request target and `Host` each upstream protocol wants: origin-form plus `Host` for
//! HTTP/1.1, an absolute URI (hyper derives `:scheme` and `:authority`) for HTTP/2.

use http::uri::PathAndQuery;
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
    // Built from parts: the path is reused as it is (no copy, no second parse).
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let scheme_part = match scheme {
        Scheme::Https => http::uri::Scheme::HTTPS,
        Scheme::Http => http::uri::Scheme::HTTP,
    };
    let uri = Uri::builder()
        .scheme(scheme_part)
        .authority(authority(target, scheme))
        .path_and_query(path)
        .build();
    *req.uri_mut() = uri.unwrap_or_else(|_| Uri::from_static("/"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Host;

    fn target(host: &str, port: u16) -> Target {
        Target {
            host: Host::parse(host).unwrap(),
            port,
            addrs: vec![],
        }
    }

    fn request(uri: &str) -> Request<Body> {
        let mut req = Request::new(crate::body::empty());
        *req.uri_mut() = uri.parse().unwrap();
        req.headers_mut()
            .insert(header::HOST, "client.example.test".parse().unwrap());
        req
    }

    #[test]
    fn each_protocol_gets_its_form() {
        let cases = [
            // (incoming URI, host, port, scheme, h2 URI, h1 URI, h1 Host)
            (
                "/v1/x?a=1&b=%20",
                "api.example.test",
                443,
                Scheme::Https,
                "https://api.example.test/v1/x?a=1&b=%20",
                "/v1/x?a=1&b=%20",
                "api.example.test",
            ),
            (
                "https://api.example.test:8443/p",
                "api.example.test",
                8443,
                Scheme::Https,
                "https://api.example.test:8443/p",
                "/p",
                "api.example.test:8443",
            ),
            ("/", "::1", 80, Scheme::Http, "http://[::1]/", "/", "[::1]"),
        ];
        for (uri, host, port, scheme, h2, h1, h1_host) in cases {
            let t = target(host, port);
            let mut req = request(uri);
            to_h2(&mut req, &t, scheme);
            assert_eq!(req.uri(), h2, "{uri}");
            assert_eq!(req.version(), Version::HTTP_2);
            assert!(req.headers().get(header::HOST).is_none());
            let mut req = request(uri);
            to_h1(&mut req, &t, scheme);
            assert_eq!(req.uri(), h1, "{uri}");
            assert_eq!(req.headers()[header::HOST], h1_host, "{uri}");
        }
    }
}
