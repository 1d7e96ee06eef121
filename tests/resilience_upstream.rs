//! Upstreams that misbehave the way real ones do: HTTP/2 connections rotated with `GOAWAY`
//! under load, HTTP/1.1 keep-alive connections closed as the next request arrives, a server
//! that never answers, bodies cut short, and a dual-stack name served on one family only.

mod support;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use support::body;
use support::client::{Curl, TunnelClient, collect};
use support::faulty::{Faulty, H1Fault, SHORT_ANNOUNCED, SHORT_SENT};
use support::https_url;
use support::pki::TestCa;
use support::proxy::{Proxy, ProxyBuilder, metric_value};
use support::upstream::Upstream;

const HOST: &str = "api.ok.test";
/// The load of the GOAWAY tests: enough streams in flight that every rotation catches some.
const CLIENTS: usize = 16;
const REQUESTS_PER_CLIENT: usize = 30;
/// The upstream rotates its connection after this many streams. Above the number of
/// clients on purpose: the proxy sends a refused request again once, so a fresh connection
/// that itself refuses it (possible only when it serves fewer streams than are in flight)
/// is the client's failure to see, by design.
const STREAMS_PER_CONNECTION: usize = 40;

fn proxy_for(ca: &TestCa, port: u16) -> Proxy {
    ProxyBuilder::new()
        .trust(ca)
        .allow_port(port)
        .env("PAUDE_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
        .spawn()
}

fn retries(proxy: &Proxy, reason: &str) -> u64 {
    metric_value(
        &proxy.metrics(),
        &format!("paude_proxy_upstream_retries_total{{reason=\"{reason}\"}}"),
    )
}

fn all_retries(proxy: &Proxy) -> u64 {
    ["unsent", "refused", "stale"]
        .iter()
        .map(|r| retries(proxy, r))
        .sum()
}

/// CLIENTS concurrent client connections, each sending REQUESTS_PER_CLIENT POSTs whose body
/// is a unique id; returns every failure (status and body) seen.
async fn post_load(proxy: &Proxy, port: u16) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mut client = TunnelClient::open(proxy, HOST, port).await;
        tasks.spawn(async move {
            let mut failures = Vec::new();
            for r in 0..REQUESTS_PER_CLIENT {
                let id = format!("c{c}-r{r}");
                let req = client
                    .request("POST", "/submit")
                    .body(body::full(id.clone()))
                    .expect("request");
                let resp = client.send(req).await;
                let status = resp.status();
                let text = collect(resp.into_body()).await;
                if status != 200 {
                    failures.push(format!("{id}: {status} {}", String::from_utf8_lossy(&text)));
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        failures.extend(done.expect("client task"));
    }
    failures
}

/// Every id was processed exactly once: at most once because a POST must never be acted on
/// twice, at least once because the client saw a 200 for it.
fn assert_processed_once(upstream: &Faulty) {
    let mut processed = upstream.processed();
    let total = processed.len();
    processed.sort();
    processed.dedup();
    assert_eq!(
        total,
        processed.len(),
        "a POST reached the upstream twice ({total} processed, {} distinct)",
        processed.len()
    );
    assert_eq!(total, CLIENTS * REQUESTS_PER_CLIENT, "every POST processed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_after_every_n_streams_cut_at_a_lower_last_stream_id_fails_no_request() {
    let ca = TestCa::new("goaway test CA");
    let upstream = Faulty::h2_goaway_every(&ca, STREAMS_PER_CONNECTION).await;
    let proxy = proxy_for(&ca, upstream.port());
    let failures = post_load(&proxy, upstream.port()).await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert_processed_once(&upstream);
    assert!(
        upstream.heads() > CLIENTS * REQUESTS_PER_CLIENT,
        "no stream was ever opened above a GOAWAY's last stream id, the test proves nothing"
    );
    assert!(
        retries(&proxy, "refused") > 0,
        "refused streams were sent again, yet the metric did not move:\n{}",
        proxy.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_goaway_after_every_n_streams_fails_no_request() {
    let ca = TestCa::new("graceful goaway test CA");
    let upstream = Faulty::h2_graceful_every(&ca, STREAMS_PER_CONNECTION).await;
    let proxy = proxy_for(&ca, upstream.port());
    let failures = post_load(&proxy, upstream.port()).await;
    assert!(
        failures.is_empty(),
        "{} failed: {failures:#?}",
        failures.len()
    );
    assert_processed_once(&upstream);
    let rotations = upstream.connections();
    assert!(
        rotations >= CLIENTS * REQUESTS_PER_CLIENT / STREAMS_PER_CONNECTION / 2,
        "the upstream rotated only {rotations} times"
    );
    assert!(
        all_retries(&proxy) > 0,
        "streams caught by the rotations were sent again, yet the metric did not move:\n{}",
        proxy.metrics()
    );
}

/// Ten sequential GETs on one client connection: each finds the pooled upstream connection
/// dead when its request arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keep_alive_connections_fail_no_get_and_never_resend_a_post() {
    let ca = TestCa::new("stale h1 test CA");
    let upstream = Faulty::h1(&ca, H1Fault::DropSecondRequest).await;
    let proxy = proxy_for(&ca, upstream.port());
    let mut client = TunnelClient::open(&proxy, HOST, upstream.port()).await;
    for i in 0..10 {
        let resp = client.get(&format!("/get/{i}")).await;
        let status = resp.status();
        let text = collect(resp.into_body()).await;
        assert_eq!(status, 200, "GET {i}: {}", String::from_utf8_lossy(&text));
    }
    let stale = retries(&proxy, "stale");
    assert!(
        stale >= 9,
        "{stale} stale retries for 10 GETs on dropped connections"
    );

    // A POST on such a connection may have been processed: the client must hear about it.
    let before = upstream.heads();
    let req = client
        .request("POST", "/submit")
        .body(body::full("post-once"))
        .expect("request");
    let resp = client.send(req).await;
    let status = resp.status();
    let text = String::from_utf8_lossy(&collect(resp.into_body()).await).into_owned();
    assert_eq!(status, 502, "{text}");
    assert!(
        text.contains(HOST) && text.contains("closed"),
        "the 502 names the upstream and the cause: {text}"
    );
    assert_eq!(
        upstream.heads(),
        before + 1,
        "the POST reached the upstream once and was not sent again"
    );
    assert_eq!(
        retries(&proxy, "stale"),
        stale,
        "no retry counted for the POST"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_closing_after_each_response_fails_no_get() {
    let ca = TestCa::new("closing h1 test CA");
    let upstream = Faulty::h1(&ca, H1Fault::CloseAfterResponse).await;
    let proxy = proxy_for(&ca, upstream.port());
    let mut client = TunnelClient::open(&proxy, HOST, upstream.port()).await;
    for i in 0..12 {
        let resp = client.get(&format!("/get/{i}")).await;
        let status = resp.status();
        let text = collect(resp.into_body()).await;
        assert_eq!(status, 200, "GET {i}: {}", String::from_utf8_lossy(&text));
    }
    assert!(upstream.connections() >= 12, "one connection per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_never_answers_gets_504_naming_the_setting() {
    let ca = TestCa::new("silent upstream test CA");
    let upstream = Faulty::h1(&ca, H1Fault::NeverAnswer).await;
    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .allow_port(upstream.port())
        .env("PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT", "1")
        .spawn();
    let started = Instant::now();
    let res = Curl::new(&proxy, &https_url(HOST, upstream.port(), "/slow"))
        .arg("--max-time")
        .arg("15")
        .run()
        .await;
    let took = started.elapsed();
    assert_eq!(res.http_code, 504, "{res:?}");
    assert!(
        res.body_text()
            .contains("PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT"),
        "{}",
        res.body_text()
    );
    assert!(took < Duration::from_secs(10), "504 after {took:?}");
    assert_eq!(upstream.heads(), 1, "the request reached the upstream");
}

async fn assert_truncated(proxy: &Proxy, port: u16, path: &str, version: &str) {
    let res = Curl::new(proxy, &https_url(HOST, port, path))
        .arg(version)
        .run()
        .await;
    assert!(
        [18, 56, 92].contains(&res.exit_code),
        "{path} over {version}: a cut body must fail the transfer, curl exit {} ({}), {} bytes",
        res.exit_code,
        res.stderr,
        res.body.len()
    );
    assert!(
        res.body.len() < SHORT_ANNOUNCED,
        "{path}: more than was sent?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_upstream_body_is_never_presented_as_complete() {
    let ca = TestCa::new("truncating upstream test CA");
    let upstream = Faulty::h1(&ca, H1Fault::TruncateBody).await;
    let proxy = proxy_for(&ca, upstream.port());
    for version in ["--http1.1", "--http2"] {
        assert_truncated(&proxy, upstream.port(), "/short", version).await;
        assert_truncated(&proxy, upstream.port(), "/chunked-cut", version).await;
    }
    // The sanity check that the short body did flow: the client got a part of it.
    let res = Curl::new(&proxy, &https_url(HOST, upstream.port(), "/short"))
        .arg("--http1.1")
        .run()
        .await;
    assert!(res.body.len() <= SHORT_SENT, "{} bytes", res.body.len());
}

fn ipv6_loopback_available() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

/// One name, both families in the hosts file (in `order`), the service on `listen` only.
async fn dual_stack_case(ca: &TestCa, listen: &str, order: [IpAddr; 2]) {
    let name = "dual.test";
    let upstream = Upstream::https_bound(ca, &[name], listen).await;
    let proxy = ProxyBuilder::new()
        .trust(ca)
        .allow_port(upstream.port())
        .env("PAUDE_PROXY_ALLOWED_UPSTREAM_NETS", "127.0.0.0/8,::1/128")
        .host(name, order[0])
        .host(name, order[1])
        .spawn();
    let res = Curl::new(&proxy, &https_url(name, upstream.port(), "/echo"))
        .run()
        .await;
    assert_eq!(
        res.http_code, 200,
        "service on {listen}, hosts order {order:?}: {res:?}"
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_name_is_served_whichever_family_listens() {
    if !ipv6_loopback_available() {
        eprintln!("SKIPPED: this machine has no IPv6 loopback (::1); dual-stack test not run");
        return;
    }
    let ca = TestCa::new("dual stack test CA");
    let v4: IpAddr = "127.0.0.1".parse().unwrap();
    let v6: IpAddr = "::1".parse().unwrap();
    for listen in ["127.0.0.1:0", "[::1]:0"] {
        for order in [[v4, v6], [v6, v4]] {
            dual_stack_case(&ca, listen, order).await;
        }
    }
}
