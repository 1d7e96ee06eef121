//! The upstream side of explicit mode (issue 2): verified TLS (never the proxy's own CA), 502 on
//! failure, pass-through of statuses/redirects/bodies, streaming, keep-alive in the tunnel.

mod support;

use bytes::Bytes;
use http_body_util::BodyExt;
use support::body::{PrngBody, channel_body, prng_sha256};
use support::client::{Curl, CurlResult, TunnelClient, collect, digest, next_data, timeout};
use support::pki::TestCa;
use support::proxy::{ProxyBuilder, free_port};
use support::secrets::fake_secret;
use support::upstream::{GATE_FIRST, GATE_SECOND, Upstream, status_body};
use support::{https_url, tls_lab};

const FIFTY_MB: u64 = 50 * 1024 * 1024;

/// The proxy may report an upstream failure either on the CONNECT itself or on the first request
/// inside the tunnel; both are a 502 the client can see (never an empty reply).
fn assert_bad_gateway(res: &CurlResult) {
    assert!(
        res.http_code == 502 || res.connect_code == 502,
        "expected a 502 from the proxy: {res:?}"
    );
    if res.http_code == 502 {
        assert!(
            !res.body.is_empty(),
            "502 must carry a short reason: {res:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_certificate_gives_502_and_nothing_is_sent() {
    let trusted = TestCa::new("trusted CA");
    let untrusted = TestCa::new("some other CA");
    let upstream = Upstream::https(&untrusted).await;
    let real = fake_secret("openai");
    let proxy = ProxyBuilder::new()
        .trust(&trusted)
        .allow_port(upstream.port())
        .secret("OPENAI_API_KEY", &real)
        .spawn();

    let res = Curl::new(
        &proxy,
        &https_url("api.openai.com", upstream.port(), "/echo"),
    )
    .run()
    .await;

    assert_bad_gateway(&res);
    // The proxy did try (so the 502 is about the certificate, not the policy)...
    assert!(
        upstream.tcp_accepts() >= 1,
        "proxy never dialled the upstream"
    );
    // ...but the handshake failed and no HTTP request (with its credential) was sent.
    assert_eq!(upstream.tls_handshakes(), 0);
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_signed_by_the_proxys_own_ca_is_refused_even_if_listed_as_upstream_ca() {
    let ca_parent = tempfile::tempdir().expect("tempdir");
    let ca_dir = ca_parent.path().join("ca");
    // First run creates the proxy CA; we then sign an upstream leaf with it.
    let first = ProxyBuilder::new().ca_dir(&ca_dir).spawn();
    let own_ca = TestCa::from_pem(&first.ca_cert_pem(), &first.ca_key_pem());
    drop(first);
    let upstream = Upstream::https(&own_ca).await;
    let real = fake_secret("openai");
    let proxy = ProxyBuilder::new()
        .ca_dir(&ca_dir)
        .trust(&own_ca)
        .allow_port(upstream.port())
        .secret("OPENAI_API_KEY", &real)
        .spawn();
    assert_eq!(proxy.ca_cert_pem(), own_ca.cert_pem(), "CA was not reused");

    let res = Curl::new(
        &proxy,
        &https_url("api.openai.com", upstream.port(), "/echo"),
    )
    .run()
    .await;

    assert_bad_gateway(&res);
    assert!(
        upstream.tcp_accepts() >= 1,
        "proxy never dialled the upstream"
    );
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_connection_gives_502() {
    let port = free_port();
    let proxy = ProxyBuilder::new().allow_port(port).spawn();

    let res = Curl::new(&proxy, &https_url("ok.test", port, "/echo"))
        .run()
        .await;

    assert_bad_gateway(&res);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_is_passed_through_not_followed() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();

    let res = Curl::new(&proxy, &https_url("ok.test", upstream.port(), "/redirect"))
        .run()
        .await;

    assert_eq!(res.http_code, 302, "{res:?}");
    assert_eq!(res.header("location"), vec!["/echo?followed=1".to_owned()]);
    assert_eq!(res.body_text(), "redirecting\n");
    assert_eq!(upstream.single_request().path, "/redirect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_statuses_and_bodies_pass_through_unchanged() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();

    for code in [429u16, 500, 503] {
        let url = https_url("ok.test", upstream.port(), &format!("/status/{code}"));
        let res = Curl::new(&proxy, &url).run().await;
        assert_eq!(res.http_code, code, "{res:?}");
        assert_eq!(res.body_text(), status_body(code));
        assert_eq!(res.header("x-upstream-status"), vec![code.to_string()]);
        if code == 429 {
            assert_eq!(res.header("retry-after"), vec!["7".to_owned()]);
        }
    }
    assert_eq!(upstream.requests().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_download_arrives_intact() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let mut client = TunnelClient::open(&proxy, "ok.test", upstream.port()).await;

    let response = client.get(&format!("/bytes/{FIFTY_MB}")).await;

    assert_eq!(response.status(), 200);
    let (len, sha) = digest(response.into_body()).await;
    assert_eq!(len, FIFTY_MB);
    assert_eq!(sha, prng_sha256(FIFTY_MB));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_upload_arrives_intact() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let mut client = TunnelClient::open(&proxy, "ok.test", upstream.port()).await;
    let request = client
        .request("POST", "/upload")
        .body(PrngBody::new(FIFTY_MB).boxed())
        .expect("request");

    let response = client.send(request).await;

    assert_eq!(response.status(), 200);
    let reply: serde_json::Value =
        serde_json::from_slice(&collect(response.into_body()).await).expect("upload reply JSON");
    let expected = prng_sha256(FIFTY_MB);
    assert_eq!(reply["body_sha256"], expected.as_str());
    let got = upstream.single_request();
    assert_eq!((got.body_len, got.body_sha256), (FIFTY_MB, expected));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_streams_before_the_upstream_finishes() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let mut client = TunnelClient::open(&proxy, "ok.test", upstream.port()).await;

    let response = client.get("/gate").await;
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // The upstream holds the rest until released, so a buffering proxy never gets here.
    let first = next_data(&mut body).await.expect("first half");
    assert_eq!(first, Bytes::from_static(GATE_FIRST.as_bytes()));
    upstream.release_gate();
    let rest = timeout("rest of body", body.collect())
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(GATE_SECOND.as_bytes()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_streams_before_the_client_finishes() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let mut client = TunnelClient::open(&proxy, "ok.test", upstream.port()).await;
    let (tx, body) = channel_body();
    let request = client
        .request("POST", "/gate-upload")
        .body(body.boxed())
        .expect("request");

    let pending = tokio::spawn(async move { client.send(request).await });
    tx.send(Bytes::from_static(b"first chunk;"))
        .await
        .expect("send first chunk");
    // The client still holds the rest, so the upstream only sees this if the proxy streams.
    upstream.wait_upload_started().await;
    tx.send(Bytes::from_static(b"second chunk"))
        .await
        .expect("send second chunk");
    drop(tx);
    let response = timeout("upload response", pending)
        .await
        .expect("send task");

    assert_eq!(response.status(), 200);
    let got = upstream.single_request();
    assert_eq!(got.body_len, "first chunk;second chunk".len() as u64);
    assert_eq!(
        got.body_sha256,
        support::body::sha256_hex(b"first chunk;second chunk")
    );
}

/// Three requests on one client tunnel reach the upstream on one connection, each injected.
async fn assert_keep_alive(upstream: &Upstream, builder: ProxyBuilder) {
    let real = fake_secret("openai");
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();
    let mut client = TunnelClient::open(&proxy, "api.openai.com", upstream.port()).await;

    for n in 1..=2 {
        let response = client.get(&format!("/echo?n={n}")).await;
        assert_eq!(response.status(), 200);
        collect(response.into_body()).await;
    }
    let upload = client
        .request("POST", "/upload")
        .body(support::body::full("third"))
        .expect("request");
    let response = client.send(upload).await;
    assert_eq!(response.status(), 200);
    collect(response.into_body()).await;

    let requests = upstream.requests();
    let paths: Vec<&str> = requests.iter().map(|r| r.path.as_str()).collect();
    assert_eq!(paths, ["/echo?n=1", "/echo?n=2", "/upload"]);
    assert!(
        requests.iter().all(|r| r.conn_id == requests[0].conn_id),
        "{requests:#?}"
    );
    assert_eq!(upstream.tcp_accepts(), 1);
    for req in &requests {
        assert_eq!(
            req.header_values("authorization"),
            vec![format!("Bearer {real}")]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_requests_share_one_tunnel_and_one_h2_upstream_connection() {
    let (_ca, upstream, builder) = tls_lab().await;
    assert_keep_alive(&upstream, builder).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_requests_share_one_tunnel_and_one_http1_upstream_connection() {
    let ca = TestCa::new("h1 upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    let builder = ProxyBuilder::new().trust(&ca).allow_port(upstream.port());
    assert_keep_alive(&upstream, builder).await;
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_11),
        "the h1-only upstream must have been spoken to in HTTP/1.1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_ip_literal_gets_a_leaf_valid_for_that_ip() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();

    // curl verifies the proxy's leaf against the IP (SAN iPAddress), then the proxy verifies the
    // upstream's cert against the same IP.
    let res = Curl::new(&proxy, &https_url("127.0.0.1", upstream.port(), "/echo"))
        .run()
        .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    assert_eq!(upstream.single_request().path, "/echo");
}
