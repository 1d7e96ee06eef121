//! The upstream connection pool (issue 3, point 4): separate client connections to the same
//! approved destination reuse one upstream TLS connection, proven by the upstream counting the
//! connections it accepted; when a connection cannot be reused, the new one resumes the TLS
//! session from the proxy's session cache.

mod support;

use support::client::Curl;
use support::https_url;
use support::pki::TestCa;
use support::proxy::{Proxy, ProxyBuilder};
use support::secrets::fake_secret;
use support::upstream::Upstream;

const HOST: &str = "api.openai.com";

fn proxy_for(ca: &TestCa, upstream: &Upstream, real: &str) -> Proxy {
    ProxyBuilder::new()
        .trust(ca)
        .allow_port(upstream.port())
        .secret("OPENAI_API_KEY", real)
        .spawn()
}

/// Two curl runs, one after the other: two client processes, two CONNECTs, two client TLS
/// handshakes with the proxy.
async fn two_sequential_clients(proxy: &Proxy, upstream: &Upstream, path: &str) {
    for i in 0..2 {
        let res = Curl::new(proxy, &https_url(HOST, upstream.port(), path))
            .run()
            .await;
        assert_eq!(res.http_code, 200, "client {i}: {res:?}");
    }
}

/// Both requests arrived, injected, on the first and only upstream connection.
fn assert_one_upstream_connection(upstream: &Upstream, real: &str) {
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    for got in &requests {
        assert_eq!(got.conn_id, 1, "request on a second connection: {got:#?}");
        assert_eq!(
            got.header_values("authorization"),
            vec![format!("Bearer {real}")]
        );
    }
    assert_eq!(
        upstream.tcp_accepts(),
        1,
        "upstream accepted more than one connection"
    );
    assert_eq!(upstream.tls_handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_client_connections_reuse_one_h2_upstream_connection() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h2_only(&ca).await;
    let real = fake_secret("openai");
    let proxy = proxy_for(&ca, &upstream, &real);

    two_sequential_clients(&proxy, &upstream, "/echo").await;

    assert_one_upstream_connection(&upstream, &real);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_client_connections_reuse_one_http1_upstream_connection() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    let real = fake_secret("openai");
    let proxy = proxy_for(&ca, &upstream, &real);

    two_sequential_clients(&proxy, &upstream, "/echo").await;

    assert_one_upstream_connection(&upstream, &real);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| r.version == http::Version::HTTP_11)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_upstream_closed_is_replaced_with_a_resumed_tls_session() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    let real = fake_secret("openai");
    let proxy = proxy_for(&ca, &upstream, &real);

    // `/close` answers with `Connection: close`, so the first connection cannot be reused.
    two_sequential_clients(&proxy, &upstream, "/close").await;

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(
        (requests[0].conn_id, requests[1].conn_id),
        (1, 2),
        "a closed connection was reused"
    );
    assert_eq!(upstream.tls_handshakes(), 2);
    assert_eq!(
        upstream.tls_resumed(),
        1,
        "the second upstream handshake did not resume the first session"
    );
}
