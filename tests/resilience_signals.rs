//! Signals: SIGTERM drains (streams in flight finish within the grace period, no new
//! connections, exit 0), a second SIGTERM ends the drain at once, SIGHUP changes nothing.

mod support;

use std::time::{Duration, Instant};

use support::client::{Curl, TunnelClient};
use support::https_url;
use support::proxy::{Proxy, ProxyBuilder};
use support::sse::{SSE_INTERVAL, SseReader, event_data};

const HOST: &str = "api.ok.test";

fn proxy(upstream_port: u16, ca: &support::pki::TestCa, grace: &str) -> Proxy {
    ProxyBuilder::new()
        .trust(ca)
        .allow_port(upstream_port)
        .env("PAUDE_PROXY_SHUTDOWN_GRACE", grace)
        .spawn()
}

/// Polls until a TCP connect to `proxy` is refused (the listener is closed).
async fn assert_connect_refused_soon(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::net::TcpStream::connect(proxy.addr()).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return,
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the proxy still accepts connections after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_sse_stream_finish_refuses_new_connections_and_exits_0() {
    let (ca, upstream, _) = support::tls_lab().await;
    let mut proxy = proxy(upstream.port(), &ca, "10");
    let events = 10;
    let mut client = TunnelClient::open(&proxy, HOST, upstream.port()).await;
    let resp = client.get(&format!("/sse?n={events}")).await;
    assert_eq!(resp.status(), 200);
    let mut reader = SseReader::new(resp.into_body());
    let first = reader.next_event().await.expect("first event");
    assert_eq!(first.data, event_data(0));

    proxy.signal("TERM");
    let signalled = Instant::now();
    assert_connect_refused_soon(&proxy).await;
    for i in 1..events {
        let event = reader
            .next_event()
            .await
            .unwrap_or_else(|| panic!("the stream ended after {i} of {events} events"));
        assert_eq!(event.data, event_data(i));
    }
    assert!(reader.next_event().await.is_none(), "a clean end");
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(5)))
        .expect("the proxy exits once the stream is done");
    assert_eq!(status.code(), Some(0), "{status}");
    // It waited for the stream rather than the whole grace period.
    let took = signalled.elapsed();
    assert!(
        took >= SSE_INTERVAL * (events as u32 - 2) && took < Duration::from_secs(8),
        "exited {took:?} after SIGTERM"
    );
    let stderr = proxy.stop();
    assert!(stderr.contains("shutdown complete"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_ends_the_drain_at_once() {
    let (ca, upstream, _) = support::tls_lab().await;
    let mut proxy = proxy(upstream.port(), &ca, "60");
    let mut client = TunnelClient::open(&proxy, HOST, upstream.port()).await;
    // 100 events: 20 s, far longer than the test waits.
    let resp = client.get("/sse?n=100").await;
    let mut reader = SseReader::new(resp.into_body());
    reader.next_event().await.expect("first event");

    proxy.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still_running = tokio::task::block_in_place(|| proxy.wait_exit(Duration::ZERO));
    assert!(
        still_running.is_none(),
        "the first SIGTERM must drain, not exit: {still_running:?}"
    );
    proxy.signal("TERM");
    let forced = Instant::now();
    let status = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_secs(5)))
        .expect("a second SIGTERM ends the drain");
    assert!(
        forced.elapsed() < Duration::from_secs(3),
        "{:?}",
        forced.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{status}");
    drop(reader);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_leaves_the_proxy_running_and_serving() {
    let (ca, upstream, _) = support::tls_lab().await;
    let mut proxy = proxy(upstream.port(), &ca, "10");
    for n in 1..=2 {
        proxy.signal("HUP");
        // One at a time: two signals sent back to back may be delivered as one.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while proxy.count_stderr("SIGHUP received") < n {
            assert!(
                std::time::Instant::now() < deadline,
                "SIGHUP {n} never logged"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let still_running = tokio::task::block_in_place(|| proxy.wait_exit(Duration::from_millis(200)));
    assert!(
        still_running.is_none(),
        "SIGHUP ended the proxy: {still_running:?}"
    );
    let res = Curl::new(&proxy, &https_url(HOST, upstream.port(), "/echo"))
        .run()
        .await;
    assert_eq!(res.http_code, 200, "{res:?}");
    assert_eq!(proxy.count_stderr("SIGHUP received"), 2);
}
