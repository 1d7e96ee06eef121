//! The explicit listener's request line and the tunnel's authority check, as they see a
//! request head hyper parsed (httparse + `http::Uri`, as hyper does). Properties: never
//! panics; a CONNECT or http:// target is a normalised host and a non-zero port that
//! round-trip; a request the authority check accepts names exactly the approved host:port.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::{Host, RequestForm, check_authority, classify_request, parse_authority};

const MAX_HEADERS: usize = 64;

fn request(data: &[u8]) -> Option<http::Request<()>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    parsed.parse(data).ok()?;
    let uri = http::Uri::try_from(parsed.path?).ok()?;
    let mut builder = http::Request::builder().method(parsed.method?).uri(uri);
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    builder.body(()).ok()
}

fn check_target(host: &Host, port: u16) {
    assert_ne!(port, 0);
    assert_eq!(Host::parse(host.as_str()).as_ref(), Ok(host));
    assert_eq!(
        parse_authority(&host.with_port(port), None),
        Ok((host.clone(), port))
    );
}

fuzz_target!(|data: &[u8]| {
    let Some(req) = request(data) else { return };
    let form = classify_request(&req);
    let (host, port) = match form {
        Ok(RequestForm::Connect(h, p)) | Ok(RequestForm::PlainHttp(h, p)) => {
            check_target(&h, p);
            (h, p)
        }
        // A request inside a tunnel to a fixed target: the authority check decides.
        _ => (Host::parse("api.example.com").expect("valid"), 443),
    };
    if check_authority(&req, &host, port).is_ok() {
        let named: Vec<String> = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .into_iter()
            .chain(
                req.headers()
                    .get_all(http::header::HOST)
                    .iter()
                    .filter_map(|v| v.to_str().ok().map(str::to_string)),
            )
            .collect();
        assert!(!named.is_empty(), "accepted a request that names no host");
        for raw in named {
            assert_eq!(
                parse_authority(&raw, Some(port)),
                Ok((host.clone(), port)),
                "accepted {raw:?} for {}",
                host.with_port(port)
            );
        }
    }
});
