//! Streaming (issue 3): SSE events reach the client as the upstream sends them, request
//! bodies stream upstream across the h2 -> h1 translation, and compression passes through
//! untouched. Order is proved against the upstream's own record of when it sent what; no
//! assertion depends on how fast anything is.

mod support;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use support::body::{self, channel_body, sha256_hex};
use support::client::{TunnelClient, collect};
use support::h2::H2Client;
use support::pki::TestCa;
use support::proxy::ProxyBuilder;
use support::sse::{SseReader, event_data};
use support::tls_lab;
use support::upstream::{ENCODED_BODY, Upstream};

const HOST: &str = "api.openai.com";
/// Events per SSE test: at 200 ms apiece the last one is sent a second after the first.
const EVENTS: usize = 6;

/// Reads every event of an `/sse?n=EVENTS` response and checks the proxy streamed them: the
/// first arrived while the upstream had not yet sent the last, and all arrived in order.
async fn assert_sse_streamed(upstream: &Upstream, response: http::Response<Incoming>) {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/event-stream",
        "{response:?}"
    );
    let mut reader = SseReader::new(response.into_body());
    let first = reader.next_event().await.expect("first event");
    // Read after the arrival, so it can only overstate how many had been sent.
    let sent_when_first_arrived = upstream.sse_sent_count();
    let mut events = vec![first];
    while let Some(event) = reader.next_event().await {
        events.push(event);
    }

    let data: Vec<&str> = events.iter().map(|e| e.data.as_str()).collect();
    let expected: Vec<String> = (0..EVENTS).map(event_data).collect();
    assert_eq!(data, expected, "events lost, reordered or altered");
    assert!(
        sent_when_first_arrived < EVENTS,
        "the first event reached the client only after the upstream had sent all \
         {EVENTS}: the proxy buffers the response"
    );
    let sent = upstream.sse_sent();
    assert_eq!(sent.len(), EVENTS);
    assert!(
        events[0].arrived < sent[EVENTS - 1],
        "first event arrived after the last one was sent"
    );
    for (i, (event, sent_at)) in events.iter().zip(&sent).enumerate() {
        // Sanity of the two records: nothing arrives before it was sent.
        assert!(
            event.arrived >= *sent_at,
            "event {i} arrived before it was sent"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_an_http1_client_as_the_h2_upstream_sends_them() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let mut client = TunnelClient::open(&proxy, HOST, upstream.port()).await;

    let response = client.get(&format!("/sse?n={EVENTS}")).await;

    assert_sse_streamed(&upstream, response).await;
    assert_eq!(upstream.single_request().version, http::Version::HTTP_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_an_h2_client_as_the_http1_upstream_sends_them() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .allow_port(upstream.port())
        .spawn();
    let client = H2Client::open(&proxy, HOST, upstream.port()).await;

    let response = client.get(&format!("/sse?n={EVENTS}")).await;

    assert_sse_streamed(&upstream, response).await;
    assert_eq!(upstream.single_request().version, http::Version::HTTP_11);
}

/// h2 on both legs: the proxy joins body frames that are ready together (coalesce.rs), and
/// must never wait for more, so each event still reaches the client as it is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_events_reach_an_h2_client_as_the_h2_upstream_sends_them() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h2_only(&ca).await;
    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .allow_port(upstream.port())
        .spawn();
    let client = H2Client::open(&proxy, HOST, upstream.port()).await;

    let response = client.get(&format!("/sse?n={EVENTS}")).await;

    assert_sse_streamed(&upstream, response).await;
    assert_eq!(upstream.single_request().version, http::Version::HTTP_2);
}

/// Streams an h2 upload through the proxy to `upstream`: the rest of the body is written
/// only once the upstream holds the first chunk, so a proxy that waits for the whole body
/// never gets there.
async fn assert_h2_upload_streams(ca: &TestCa, upstream: &Upstream) {
    let proxy = ProxyBuilder::new()
        .trust(ca)
        .allow_port(upstream.port())
        .spawn();
    let client = H2Client::open(&proxy, HOST, upstream.port()).await;

    let (tx, upload) = channel_body();
    let request = client
        .request("POST", "/gate-upload")
        .body(upload.boxed())
        .expect("request");
    let pending = tokio::spawn(async move { client.send(request).await });
    let first = Bytes::from_static(b"first chunk of a body still being written\n");
    tx.send(first.clone()).await.expect("send first chunk");
    // The rest is only written once the upstream holds the first chunk: a proxy that waits
    // for the whole body never gets there and this wait fails.
    upstream.wait_upload_started().await;
    let last = Bytes::from_static(b"last chunk\n");
    tx.send(last.clone()).await.expect("send last chunk");
    drop(tx);

    let response = support::client::timeout("upload response", pending)
        .await
        .expect("request task");
    assert_eq!(response.status(), StatusCode::OK);
    let answer: serde_json::Value =
        serde_json::from_slice(&collect(response.into_body()).await).expect("JSON");
    let whole = [first.as_ref(), last.as_ref()].concat();
    assert_eq!(answer["body_len"], whole.len());
    assert_eq!(answer["body_sha256"], sha256_hex(&whole));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_request_body_streams_to_an_http1_upstream_before_the_client_finishes() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h1_only(&ca).await;
    assert_h2_upload_streams(&ca, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_request_body_streams_to_an_h2_upstream_before_the_client_finishes() {
    let ca = TestCa::new("upstream CA");
    let upstream = Upstream::https_h2_only(&ca).await;
    assert_h2_upload_streams(&ca, &upstream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_bodies_and_accept_encoding_pass_through_untouched() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let mut client = TunnelClient::open(&proxy, HOST, upstream.port()).await;

    let request = client
        .request("GET", "/encoded")
        .header("accept-encoding", "gzip, br;q=0.5")
        .body(body::empty())
        .expect("request");
    let response = client.send(request).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-encoding"], "gzip");
    assert_eq!(collect(response.into_body()).await.as_ref(), ENCODED_BODY);
    let got = upstream.single_request();
    assert_eq!(
        got.header_values("accept-encoding"),
        vec!["gzip, br;q=0.5".to_owned()]
    );
}
