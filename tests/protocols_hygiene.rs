//! Request hygiene inside a tunnel (issue 3, point 5): misdirected requests get 421, TRACE and
//! TRACK on a credential route get 405, ambiguous framing or duplicate Host gets 400, an
//! oversized header section gets 431, and none of them reaches the upstream.
//!
//! The smuggling tests send raw bytes on one tunnel: an accepted request, the attack (with a
//! second request hidden in its body under one of the two framings), and a closing request.
//! Whatever the proxy makes of the bytes, the upstream must have seen exactly one request per
//! request the proxy answered from upstream, and never the attack itself.

mod support;

use http::StatusCode;

use support::body;
use support::client::{Curl, RawResponse, TunnelClient, collect, exchange};
use support::h2::H2Client;
use support::pki::TestCa;
use support::proxy::{Proxy, ProxyBuilder};
use support::secrets::fake_secret;
use support::upstream::Upstream;
use support::{https_url, tls_lab};

const HOST: &str = "api.openai.com";
/// One byte more than the proxy's limit on a request's header section (64 KiB).
const OVER_LIMIT: usize = 64 * 1024 + 1;
/// Well below the limit, and above the 16 KiB default of common HTTP/2 stacks.
const UNDER_LIMIT: usize = 32 * 1024;

/// A proxy holding the OpenAI credential, in front of an HTTP/1.1-only upstream: HTTP/1.1 is
/// where framing tricks would reach a second parser.
async fn h1_lab() -> (TestCa, Upstream, Proxy) {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .allow_port(upstream.port())
        .secret("OPENAI_API_KEY", &fake_secret("openai"))
        .spawn();
    (ca, upstream, proxy)
}

// ---------------------------------------------------------------------------------------------
// 421: the request names another host than the tunnel

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_authority_mismatch_is_refused_and_nothing_is_forwarded() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder
        .secret("OPENAI_API_KEY", &fake_secret("openai"))
        .spawn();
    let port = upstream.port();
    let client = H2Client::open(&proxy, HOST, port).await;

    let misdirected = [
        format!("https://other.test:{port}/echo?other-host"),
        format!("https://{HOST}:1/echo?other-port"),
    ];
    for uri in &misdirected {
        let request = http::Request::get(uri)
            .body(body::empty())
            .expect("request");
        match client.try_send(request).await {
            Ok(response) => assert_eq!(
                response.status(),
                StatusCode::MISDIRECTED_REQUEST,
                "{uri}: {response:?}"
            ),
            // A reset stream is the other accepted refusal.
            Err(e) => assert!(e.contains("Reset") || e.contains("reset"), "{uri}: {e}"),
        }
    }
    // `:authority` right, `host` header wrong.
    let request = client
        .request("GET", "/echo?host-header")
        .header("host", format!("other.test:{port}"))
        .body(body::empty())
        .expect("request");
    match client.try_send(request).await {
        Ok(response) => assert_eq!(response.status(), StatusCode::MISDIRECTED_REQUEST),
        Err(e) => assert!(
            e.contains("Reset") || e.contains("reset"),
            "host header: {e}"
        ),
    }

    // Only the stream was refused: the connection still serves its own host.
    let response = client.get("/echo?valid").await;
    assert_eq!(response.status(), StatusCode::OK);
    collect(response.into_body()).await;
    assert_eq!(upstream.single_request().path, "/echo?valid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_host_or_absolute_uri_mismatch_is_refused_and_nothing_is_forwarded() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    let requests = [
        format!("GET /echo HTTP/1.1\r\nHost: other.test:{port}\r\nConnection: close\r\n\r\n"),
        format!("GET /echo HTTP/1.1\r\nHost: {HOST}:1\r\nConnection: close\r\n\r\n"),
        format!(
            "GET https://other.test:{port}/echo HTTP/1.1\r\nHost: {HOST}:{port}\r\n\
             Connection: close\r\n\r\n"
        ),
    ];
    for request in &requests {
        let responses = exchange(&proxy, HOST, port, request.as_bytes()).await;
        assert_eq!(responses.len(), 1, "{request:?}: {responses:#?}");
        assert_eq!(responses[0].status, 421, "{request:?}: {responses:#?}");
    }
    upstream.assert_untouched();
}

// ---------------------------------------------------------------------------------------------
// 405: TRACE and TRACK would echo the credential

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_and_track_get_405_on_a_credential_route() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();

    let res = Curl::new(&proxy, &https_url(HOST, port, "/echo"))
        .method("TRACE")
        .run()
        .await;
    assert_eq!(res.http_code, 405, "{res:?}");

    let track = format!("TRACK /echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n");
    let responses = exchange(&proxy, HOST, port, track.as_bytes()).await;
    assert_eq!(responses.len(), 1, "{responses:#?}");
    assert_eq!(responses[0].status, 405, "{responses:#?}");

    let client = H2Client::open(&proxy, HOST, port).await;
    let request = client
        .request("TRACE", "/echo")
        .body(body::empty())
        .expect("request");
    assert_eq!(
        client.send(request).await.status(),
        StatusCode::METHOD_NOT_ALLOWED
    );

    upstream.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_is_forwarded_where_there_is_no_credential() {
    // ok.test has no route: there is nothing to echo, so TRACE is an ordinary method.
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder
        .secret("OPENAI_API_KEY", &fake_secret("openai"))
        .spawn();
    let mut client = TunnelClient::open(&proxy, "ok.test", upstream.port()).await;
    let request = client
        .request("TRACE", "/echo")
        .body(body::empty())
        .expect("request");
    let response = client.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(upstream.single_request().method, "TRACE");
}

// ---------------------------------------------------------------------------------------------
// 400: request smuggling shapes

/// The request hidden in an attack body; the upstream must never see it.
fn smuggled(port: u16) -> String {
    format!("GET /echo?smuggled HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n")
}

/// accepted request + `attack` + closing request, on one tunnel; returns the responses.
async fn run_attack(proxy: &Proxy, port: u16, attack: &str) -> Vec<RawResponse> {
    let first = format!("GET /echo?first HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n");
    let last =
        format!("GET /echo?last HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n");
    let bytes = [first.as_str(), attack, last.as_str()].concat();
    exchange(proxy, HOST, port, bytes.as_bytes()).await
}

/// One line per response for failure messages: status, then the method and path the
/// upstream echoed (not its headers, which hold the credential), or the proxy's own text.
fn summary(responses: &[RawResponse]) -> String {
    responses
        .iter()
        .map(
            |r| match serde_json::from_slice::<serde_json::Value>(&r.body) {
                Ok(echo) => format!(
                    "{} upstream echo: {} {}",
                    r.status, echo["method"], echo["path"]
                ),
                Err(_) => format!("{} {}", r.status, r.body_text().trim_end()),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

/// First the invariant that matters for smuggling: the upstream saw exactly the requests
/// the proxy answered with an upstream response, one each. Then the refusal itself: the
/// attack got 400 right after the accepted first request, and no attack reached upstream.
fn assert_refused_and_one_upstream_request_per_accepted(
    upstream: &Upstream,
    responses: &[RawResponse],
) {
    let all = summary(responses);
    // Accepted requests, by the path the upstream echoed back (refusals are the proxy's own
    // text and carry no path).
    let mut accepted: Vec<String> = responses
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| {
            let echo: serde_json::Value = serde_json::from_slice(&r.body).expect("echo JSON");
            echo["path"].as_str().expect("path").to_owned()
        })
        .collect();
    let requests = upstream.requests();
    let mut forwarded: Vec<String> = requests.iter().map(|r| r.path.clone()).collect();
    accepted.sort();
    forwarded.sort();
    assert_eq!(
        forwarded, accepted,
        "upstream requests differ from accepted client requests; responses:\n{all}"
    );

    assert!(responses.len() >= 2, "responses:\n{all}");
    assert_eq!(responses[0].status, 200, "first request; responses:\n{all}");
    assert_eq!(responses[1].status, 400, "attack; responses:\n{all}");
    for got in &requests {
        assert_eq!(got.method, "GET", "the attack reached upstream: {got:#?}");
        assert_eq!(got.body_len, 0, "a body reached upstream: {got:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_gets_400_and_nothing_extra_goes_upstream() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    // Chunked framing ends the body at "0\r\n\r\n" and leaves the hidden request as the next
    // one; Content-Length framing swallows it as body. Both framings consume every byte.
    let body = format!("0\r\n\r\n{}", smuggled(port));
    let attack = format!(
        "POST /echo?attack HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );

    let responses = run_attack(&proxy, port, &attack).await;

    assert_refused_and_one_upstream_request_per_accepted(&upstream, &responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_encoding_before_content_length_gets_400_and_nothing_extra_goes_upstream() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    let body = format!("0\r\n\r\n{}", smuggled(port));
    let attack = format!(
        "POST /echo?attack HTTP/1.1\r\nHost: {HOST}:{port}\r\nTransfer-Encoding: chunked\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );

    let responses = run_attack(&proxy, port, &attack).await;

    assert_refused_and_one_upstream_request_per_accepted(&upstream, &responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_content_lengths_get_400_and_nothing_extra_goes_upstream() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    // Length 0 leaves the hidden request as the next one; the other length swallows it.
    let body = smuggled(port);
    let attack = format!(
        "POST /echo?attack HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Length: 0\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );

    let responses = run_attack(&proxy, port, &attack).await;

    assert_refused_and_one_upstream_request_per_accepted(&upstream, &responses);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_host_headers_get_400_and_nothing_extra_goes_upstream() {
    for second_host_is_the_same in [false, true] {
        // A fresh lab per variant, so each one's upstream record stands alone.
        let (_ca, upstream, proxy) = h1_lab().await;
        let port = upstream.port();
        let second_host = match second_host_is_the_same {
            true => format!("{HOST}:{port}"),
            false => format!("other.test:{port}"),
        };
        let attack = format!(
            "POST /echo?attack HTTP/1.1\r\nHost: {HOST}:{port}\r\nHost: {second_host}\r\n\
             Content-Length: 3\r\n\r\nx=1"
        );
        let responses = run_attack(&proxy, port, &attack).await;
        assert_refused_and_one_upstream_request_per_accepted(&upstream, &responses);
    }
}

// ---------------------------------------------------------------------------------------------
// 431: header section over the limit

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_gets_431_on_http1_and_nothing_is_forwarded() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    let big = "a".repeat(OVER_LIMIT);
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );

    let responses = exchange(&proxy, HOST, port, request.as_bytes()).await;

    assert_eq!(responses.len(), 1, "{responses:#?}");
    assert_eq!(responses[0].status, 431, "{responses:#?}");
    upstream.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_is_refused_on_h2_and_nothing_is_forwarded() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let client = H2Client::open(&proxy, HOST, upstream.port()).await;
    let request = client
        .request("GET", "/echo")
        .header("x-big", "a".repeat(OVER_LIMIT))
        .body(body::empty())
        .expect("request");

    match client.try_send(request).await {
        Ok(response) => assert_eq!(
            response.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ),
        // A stream error is the other accepted refusal.
        Err(e) => assert!(e.contains("Reset") || e.contains("reset"), "{e}"),
    }
    upstream.assert_untouched();
}

/// The control for the two tests above: the refusal is the proxy's limit, not a general
/// inability to carry big headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_header_below_the_limit_is_forwarded_intact_on_http1_and_h2() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let big = "b".repeat(UNDER_LIMIT);

    let mut h1 = TunnelClient::open(&proxy, HOST, upstream.port()).await;
    let request = h1
        .request("GET", "/echo?h1")
        .header("x-big", &big)
        .body(body::empty())
        .expect("request");
    let response = h1.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    collect(response.into_body()).await;

    let h2 = H2Client::open(&proxy, HOST, upstream.port()).await;
    let request = h2
        .request("GET", "/echo?h2")
        .header("x-big", &big)
        .body(body::empty())
        .expect("request");
    let response = h2.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    collect(response.into_body()).await;

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for got in &requests {
        assert_eq!(got.header_values("x-big"), vec![big.clone()]);
    }
}

/// The explicit listener's own HTTP/1.1 parser has the same limit, even when the whole
/// oversized head arrives in one write (hyper's buffer cap alone is checked only between
/// reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_header_section_gets_431_at_the_explicit_listener_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    let big = "a".repeat(OVER_LIMIT);
    let request = format!(
        "GET http://{HOST}:{port}/echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Big: {big}\r\n\
         Connection: close\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(proxy.addr())
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the proxy answers");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "{}",
        answer.lines().next().unwrap_or("")
    );
    upstream.assert_untouched();
}

/// A client that offers no ALPN inside the tunnel, writing `bytes` in one piece; the
/// responses until the proxy closes.
async fn exchange_without_alpn(proxy: &Proxy, port: u16, bytes: &[u8]) -> Vec<RawResponse> {
    use support::client::{open_tls_without_alpn, read_response};
    use tokio::io::AsyncWriteExt;
    let mut tls = open_tls_without_alpn(proxy, HOST, port).await;
    let _ = tls.write_all(bytes).await;
    let mut responses = Vec::new();
    loop {
        let response = read_response(&mut tls, false).await;
        if response.status == 0 {
            return responses;
        }
        responses.push(response);
    }
}

/// Without ALPN the proxy tells HTTP/1.1 from h2 by the first bytes (src/preface.rs) and
/// serves HTTP/1.1 as it does with ALPN: keep-alive requests are answered in order...
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_alpn_http1_requests_are_served_in_order() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    let request = format!(
        "GET /echo?n=1 HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n\
         GET /echo?n=2 HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n"
    );

    let responses = exchange_without_alpn(&proxy, port, request.as_bytes()).await;

    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200], "{responses:#?}");
    let paths: Vec<String> = upstream.requests().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/echo?n=1", "/echo?n=2"]);
}

/// ...and with the same head limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_alpn_an_oversized_head_in_one_write_gets_431() {
    let (_ca, upstream, proxy) = h1_lab().await;
    let port = upstream.port();
    let big = "a".repeat(OVER_LIMIT);
    let request = format!(
        "GET /echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
    );

    let responses = exchange_without_alpn(&proxy, port, request.as_bytes()).await;

    assert_eq!(responses.len(), 1, "{responses:#?}");
    assert_eq!(responses[0].status, 431, "{responses:#?}");
    upstream.assert_untouched();
}
