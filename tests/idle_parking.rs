//! An HTTP/1.1 tunnel connection that idles past the park delay (src/park.rs) gives hyper's
//! buffers back and waits on its own: the client must not notice. Its next requests are
//! served on the same connection (split, pipelined or whole), and the idle limit still
//! closes it.

mod support;

use std::time::Duration;

use support::client::{open_tls, open_tls_without_alpn, read_response};
use support::tls_lab;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const HOST: &str = "ok.test";
/// Comfortably past the proxy's park delay (500 ms), so the connection is parked.
const PAST_PARK: Duration = Duration::from_millis(1500);

fn get(port: u16, n: u32) -> String {
    format!("GET /echo?n={n} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_serves_its_next_requests_on_the_same_connection() {
    let (_ca, upstream, builder) = tls_lab().await;
    let mut proxy = builder.spawn();
    let port = upstream.port();
    let mut tls = open_tls(&proxy, HOST, port).await;

    tls.write_all(get(port, 1).as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls, false).await.status, 200);

    // Parked; the next request arrives whole.
    tokio::time::sleep(PAST_PARK).await;
    tls.write_all(get(port, 2).as_bytes()).await.unwrap();
    let r = read_response(&mut tls, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), None, "kept alive: {r:?}");

    // Parked again; the next request arrives one byte first, the rest later.
    tokio::time::sleep(PAST_PARK).await;
    let third = get(port, 3);
    tls.write_all(&third.as_bytes()[..1]).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    tls.write_all(&third.as_bytes()[1..]).await.unwrap();
    assert_eq!(read_response(&mut tls, false).await.status, 200);

    // Parked again; two pipelined requests arrive in one write.
    tokio::time::sleep(PAST_PARK).await;
    let pipelined = format!("{}{}", get(port, 4), get(port, 5));
    tls.write_all(pipelined.as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls, false).await.status, 200);
    assert_eq!(read_response(&mut tls, false).await.status, 200);

    // The test proxy logs at debug level: each park is a line (three above, maybe a
    // fourth by now). Without it this test would pass with parking gone.
    let parked = proxy.count_stderr("idle connection parked");
    assert!(parked >= 3, "parked {parked} times:\n{}", proxy.stderr());
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        (1..=5).map(|n| format!("/echo?n={n}")).collect::<Vec<_>>(),
        "every request reached the upstream once, in order"
    );
    proxy.assert_no_secret_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_connection_still_closes_at_the_idle_limit() {
    let (_ca, upstream, builder) = tls_lab().await;
    let mut proxy = builder.env("PAUDE_PROXY_CLIENT_IDLE_TIMEOUT", "3").spawn();
    let port = upstream.port();
    let mut tls = open_tls(&proxy, HOST, port).await;
    tls.write_all(get(port, 1).as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls, false).await.status, 200);

    // Parked, and open: nothing arrives before the idle limit.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(PAST_PARK, tls.read(&mut byte)).await;
    assert!(early.is_err(), "closed or answered while parked: {early:?}");

    // Then closed (TLS close_notify, then EOF) once the idle limit passes.
    let late = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await;
    assert!(
        matches!(late, Ok(Ok(0)) | Ok(Err(_))),
        "still open after the idle limit: {late:?}"
    );
    proxy.assert_no_secret_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_pauses_past_the_park_delay_still_meets_the_size_limit() {
    let (_ca, upstream, builder) = tls_lab().await;
    let mut proxy = builder.spawn();
    let port = upstream.port();
    let mut tls = open_tls(&proxy, HOST, port).await;
    // 40 KiB of head, a pause past the park delay, 40 KiB more (80 KiB, still unfinished:
    // over the 64 KiB limit whatever the read sizes), a pause, then its end. A connection
    // parked mid-head would start counting again and let it through.
    let head = format!(
        "GET /echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nX-A: {}\r\n",
        "a".repeat(40 * 1024)
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    tokio::time::sleep(PAST_PARK).await;
    let more = format!("X-B: {}", "b".repeat(40 * 1024));
    let _ = tls.write_all(more.as_bytes()).await;
    let _ = tls.flush().await;
    tokio::time::sleep(PAST_PARK).await;
    let _ = tls.write_all(b"\r\nConnection: close\r\n\r\n").await;
    let r = read_response(&mut tls, false).await;
    assert_eq!(r.status, 431, "{}", r.head);
    upstream.assert_untouched();
    proxy.assert_no_secret_leaks();
}

/// A client that offers no ALPN (as Go's transport does with HTTP/2 turned off) is told
/// apart by its first bytes and served on the same path: its idle connection parks too
/// (it did not, under hyper-util's auto builder), and is served again on the same
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_alpn_parks_too() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let port = upstream.port();
    let mut tls = open_tls_without_alpn(&proxy, HOST, port).await;

    tls.write_all(get(port, 1).as_bytes()).await.unwrap();
    assert_eq!(read_response(&mut tls, false).await.status, 200);
    tokio::time::sleep(PAST_PARK).await;
    tls.write_all(get(port, 2).as_bytes()).await.unwrap();
    let r = read_response(&mut tls, false).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), None, "kept alive: {r:?}");

    let parked = proxy.count_stderr("idle connection parked");
    assert!(parked >= 1, "never parked:\n{}", proxy.stderr());
    let paths: Vec<String> = upstream.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, ["/echo?n=1", "/echo?n=2"]);
}

/// A client without ALPN that never sends its first bytes is bound by the idle limit like
/// any other connection (not only by the two-minute head timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_without_alpn_closes_at_the_idle_limit() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.env("PAUDE_PROXY_CLIENT_IDLE_TIMEOUT", "2").spawn();
    let mut tls = open_tls_without_alpn(&proxy, HOST, upstream.port()).await;

    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut byte)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "still open 10 s after a 2 s idle limit: {closed:?}"
    );
    upstream.assert_untouched();
}
