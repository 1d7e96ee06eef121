//! HTTP/2 through the proxy (issue 3): h2 on the client side (ALPN and prior knowledge),
//! many streams on one connection, and translation between h1 and h2 when the client and the
//! upstream disagree. Every test checks what the upstream received, not only the answer.

mod support;

use bytes::Bytes;
use http::{StatusCode, Version};
use tokio::task::JoinSet;

use support::body::{self, channel_body, prng_sha256, sha256_hex};
use support::client::{Curl, TunnelClient, collect, digest};
use support::h2::H2Client;
use support::pki::TestCa;
use support::proxy::ProxyBuilder;
use support::secrets::{dummy, fake_secret};
use support::upstream::{Recorded, Upstream};
use support::{https_url, tls_lab};

const HOST: &str = "api.openai.com";
const STREAMS: usize = 20;

fn bearer(secret: &str) -> Vec<String> {
    vec![format!("Bearer {secret}")]
}

/// The fields `/echo` (and `/barrier`) return.
fn echoed(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("echo JSON")
}

/// Asserts the upstream got exactly the real credential and none of the client's dummy.
fn assert_injected(got: &Recorded, real: &str, fake: &str) {
    assert_eq!(got.header_values("authorization"), bearer(real), "{got:#?}");
    assert!(
        !got.any_header_contains(fake),
        "dummy value reached upstream: {got:#?}"
    );
}

/// A proxy with OPENAI_API_KEY set, in front of `upstream` (trusted via `ca`).
fn proxy_for(ca: &TestCa, upstream: &Upstream, real: &str) -> support::proxy::Proxy {
    ProxyBuilder::new()
        .trust(ca)
        .allow_port(upstream.port())
        .secret("OPENAI_API_KEY", real)
        .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http2_negotiates_h2_with_the_proxy_and_the_credential_is_injected() {
    let (_ca, upstream, builder) = tls_lab().await;
    let (real, fake) = (fake_secret("openai"), dummy("openai"));
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();

    let res = Curl::new(&proxy, &https_url(HOST, upstream.port(), "/echo"))
        .arg("--http2")
        .header(&format!("Authorization: Bearer {fake}"))
        .run()
        .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    assert_eq!(
        res.http_version, "2",
        "curl did not speak h2 to the proxy: {res:?}"
    );
    let got = upstream.single_request();
    assert_injected(&got, &real, &fake);
    // The upstream offers h2 too; the proxy negotiated it independently of curl.
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(echoed(&res.body)["path"], "/echo");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_multiplexes_twenty_concurrent_streams_on_one_connection() {
    let (_ca, upstream, builder) = tls_lab().await;
    let (real, fake) = (fake_secret("openai"), dummy("openai"));
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();
    let client = H2Client::open(&proxy, HOST, upstream.port()).await;
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]), "proxy refused h2");

    // No warm-up: the 20 streams arrive while no upstream connection exists yet, and the
    // proxy must still dial once and multiplex them all on that connection.
    // `/barrier/20` answers none of them until all 20 are at the upstream at once: if the
    // proxy serialised the streams anywhere, the first would wait forever (and get 504).
    let client = std::sync::Arc::new(client);
    let mut streams = JoinSet::new();
    for i in 0..STREAMS {
        let client = client.clone();
        let fake = fake.clone();
        streams.spawn(async move {
            let request = client
                .request("GET", &format!("/barrier/{STREAMS}?i={i}"))
                .header("authorization", format!("Bearer {fake}"))
                .body(body::empty())
                .expect("request");
            let response = client.send(request).await;
            let status = response.status();
            (i, status, collect(response.into_body()).await)
        });
    }
    let mut answered = Vec::new();
    while let Some(joined) = streams.join_next().await {
        let (i, status, body) = joined.expect("stream task");
        assert_eq!(
            status,
            StatusCode::OK,
            "stream {i}: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(
            echoed(&body)["path"],
            format!("/barrier/{STREAMS}?i={i}"),
            "stream {i} got another stream's answer"
        );
        answered.push(i);
    }
    answered.sort_unstable();
    assert_eq!(answered, (0..STREAMS).collect::<Vec<_>>());

    let requests = upstream.requests();
    assert_eq!(requests.len(), STREAMS, "{requests:#?}");
    for got in &requests {
        assert_injected(got, &real, &fake);
        assert_eq!(got.version, Version::HTTP_2);
    }
    assert_eq!(
        upstream.tcp_accepts(),
        1,
        "a cold burst of 20 streams should share one upstream h2 connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_client_to_an_http1_only_upstream() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    let (real, fake) = (fake_secret("openai"), dummy("openai"));
    let proxy = proxy_for(&ca, &upstream, &real);
    let client = H2Client::open(&proxy, HOST, upstream.port()).await;
    assert_eq!(client.alpn.as_deref(), Some(&b"h2"[..]));

    let payload = "sent over h2, received over HTTP/1.1";
    let request = client
        .request("POST", "/echo?from=h2")
        .header("authorization", format!("Bearer {fake}"))
        .header("x-test", "kept")
        .body(body::full(payload))
        .expect("request");
    let response = client.send(request).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    let echo = echoed(&collect(response.into_body()).await);
    assert_eq!(echo["path"], "/echo?from=h2");

    // A response body streamed by the h1 upstream arrives intact over h2.
    let big = client.get("/bytes/300000").await;
    assert_eq!(big.status(), StatusCode::OK);
    assert_eq!(digest(big.into_body()).await, (300000, prng_sha256(300000)));

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let got = &requests[0];
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(got.method, "POST");
    // `:authority` became exactly one Host header naming the tunnel's target.
    assert_eq!(
        got.header_values("host"),
        vec![format!("{HOST}:{}", upstream.port())]
    );
    assert_eq!(got.header_values("x-test"), vec!["kept".to_owned()]);
    assert_eq!(got.body_len, payload.len() as u64);
    assert_eq!(got.body_sha256, sha256_hex(payload.as_bytes()));
    assert_injected(got, &real, &fake);
    assert_eq!(requests[1].header_values("authorization"), bearer(&real));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_client_to_an_h2_only_upstream() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h2_only(&ca).await;
    let (real, fake) = (fake_secret("openai"), dummy("openai"));
    let proxy = proxy_for(&ca, &upstream, &real);
    let mut client = TunnelClient::open(&proxy, HOST, upstream.port()).await;

    // A chunked request body with HTTP/1-only headers: none of them may reach the h2 side
    // (an h2 server must reject a request carrying them), the body must.
    let (tx, chunked) = channel_body();
    let request = client
        .request("POST", "/echo?from=h1")
        .header("authorization", format!("Bearer {fake}"))
        .header("connection", "keep-alive")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-test", "kept")
        .body(http_body_util::BodyExt::boxed(chunked))
        .expect("request");
    let chunks = ["first chunk, ", "second chunk, ", "last chunk"];
    let sender = tokio::spawn(async move {
        for chunk in chunks {
            tx.send(Bytes::from_static(chunk.as_bytes()))
                .await
                .expect("send chunk");
        }
    });
    let response = client.send(request).await;
    sender.await.expect("chunk sender");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_11);
    let echo = echoed(&collect(response.into_body()).await);
    assert_eq!(echo["path"], "/echo?from=h1");

    let got = upstream.single_request();
    assert_eq!(got.version, Version::HTTP_2);
    assert_eq!(got.authority, format!("{HOST}:{}", upstream.port()));
    for hop in ["connection", "keep-alive", "transfer-encoding", "upgrade"] {
        assert!(
            !got.has_header(hop),
            "{hop} reached the h2 upstream: {got:#?}"
        );
    }
    assert_eq!(got.header_values("te"), vec!["trailers".to_owned()]);
    assert_eq!(got.header_values("x-test"), vec!["kept".to_owned()]);
    let sent = chunks.concat();
    assert_eq!(got.body_len, sent.len() as u64);
    assert_eq!(got.body_sha256, sha256_hex(sent.as_bytes()));
    assert_injected(&got, &real, &fake);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prior_knowledge_h2_inside_the_tunnel_is_served_and_injected() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("openai");
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();

    let client = H2Client::open_prior_knowledge(&proxy, HOST, upstream.port()).await;
    assert_eq!(client.alpn, None, "no ALPN was offered");
    let response = client.get("/echo?prior-knowledge").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), Version::HTTP_2);
    collect(response.into_body()).await;

    let got = upstream.single_request();
    assert_eq!(got.path, "/echo?prior-knowledge");
    assert_eq!(got.header_values("authorization"), bearer(&real));

    // The proxy is still healthy for the next client.
    let res = Curl::new(&proxy, &https_url(HOST, upstream.port(), "/echo"))
        .run()
        .await;
    assert_eq!(res.http_code, 200, "{res:?}");
}
