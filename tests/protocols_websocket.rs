//! Upgrades through the tunnel (issue 3): a WebSocket goes through the same policy and
//! injection over verified upstream TLS, then bytes are relayed both ways; any other
//! `Upgrade` (h2c) is not honoured and its hop-by-hop headers never reach the upstream.

mod support;

use http::{StatusCode, Version};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use support::client::exchange;
use support::pki::TestCa;
use support::proxy::ProxyBuilder;
use support::secrets::{dummy, fake_secret};
use support::upstream::Upstream;
use support::{tls_lab, ws};

const HOST: &str = "api.openai.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_through_the_tunnel_carries_the_injected_credential() {
    // The upstream offers h2 and http/1.1: the proxy must still do the handshake in HTTP/1.1.
    let (_ca, upstream, builder) = tls_lab().await;
    let (real, fake) = (fake_secret("openai"), dummy("openai"));
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();
    let auth = format!("Bearer {fake}");

    let (mut socket, response) = ws::connect(
        &proxy,
        HOST,
        upstream.port(),
        &[("authorization", auth.as_str())],
    )
    .await
    .expect("WebSocket handshake through the proxy");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);

    let text = Message::text("hello through the tunnel");
    assert_eq!(ws::round_trip(&mut socket, text.clone()).await, text);
    let binary = Message::binary(vec![0u8, 1, 2, 254, 255]);
    assert_eq!(ws::round_trip(&mut socket, binary.clone()).await, binary);
    // Larger than any single TLS record or read buffer, so the relay must loop.
    let large = Message::binary((0..200_000u32).map(|i| (i % 251) as u8).collect::<Vec<_>>());
    assert_eq!(ws::round_trip(&mut socket, large.clone()).await, large);
    support::client::timeout("WebSocket close", socket.close(None))
        .await
        .expect("close handshake");

    let got = upstream.single_request();
    assert_eq!(got.method, "GET");
    assert_eq!(got.path, "/ws");
    assert_eq!(got.version, Version::HTTP_11);
    assert_eq!(got.header_values("upgrade"), vec!["websocket".to_owned()]);
    assert!(got.has_header("sec-websocket-key"), "{got:#?}");
    assert_eq!(
        got.header_values("authorization"),
        vec![format!("Bearer {real}")]
    );
    assert!(
        !got.any_header_contains(&fake),
        "dummy value reached upstream: {got:#?}"
    );
    assert_eq!(upstream.tls_handshakes(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_an_untrusted_upstream_fails_and_the_upstream_gets_nothing() {
    let trusted = TestCa::new("trusted upstream CA");
    let untrusted = TestCa::new("some other CA");
    let upstream = Upstream::https(&untrusted).await;
    let real = fake_secret("openai");
    let proxy = ProxyBuilder::new()
        .trust(&trusted)
        .allow_port(upstream.port())
        .secret("OPENAI_API_KEY", &real)
        .spawn();

    let result = ws::connect(&proxy, HOST, upstream.port(), &[]).await;
    match result {
        Err(WsError::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY, "{response:?}")
        }
        Err(other) => panic!("expected a 502 answer to the handshake, got {other:?}"),
        Ok((_, response)) => panic!("upgrade succeeded to an untrusted upstream: {response:?}"),
    }
    assert_eq!(
        upstream.tls_handshakes(),
        0,
        "a TLS session was completed with an unverifiable upstream"
    );
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upgrade_is_not_honoured_and_its_headers_are_not_forwarded() {
    // HTTP/1.1 upstream: the only kind on which these headers could arrive at all.
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .allow_port(upstream.port())
        .spawn();
    let port = upstream.port();

    let request = format!(
        "GET /echo?h2c HTTP/1.1\r\nHost: {HOST}:{port}\r\n\
         Connection: Upgrade, HTTP2-Settings, close\r\nUpgrade: h2c\r\n\
         HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
    );
    let responses = exchange(&proxy, HOST, port, request.as_bytes()).await;

    assert_eq!(responses.len(), 1, "{responses:#?}");
    assert_eq!(
        responses[0].status, 200,
        "served as plain HTTP/1.1, not switched: {responses:#?}"
    );
    let got = upstream.single_request();
    assert_eq!(got.path, "/echo?h2c");
    for hop in ["upgrade", "http2-settings", "connection"] {
        assert!(!got.has_header(hop), "{hop} was forwarded: {got:#?}");
    }
}
