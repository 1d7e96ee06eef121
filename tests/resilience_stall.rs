//! Isolation between clients sharing one upstream HTTP/2 connection: clients that start a
//! large download and stop reading must not delay anyone else's requests to that host.

mod support;

use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::body::Incoming;
use support::client::{TunnelClient, next_data};
use support::h2::H2Client;
use support::proxy::Proxy;
use support::upstream::Upstream;

const HOST: &str = "api.ok.test";
/// Far more than any buffer between the upstream and a staller can hold.
const LARGE: &str = "/bytes/200000000";
const STALLERS: usize = 8;
const NORMAL_REQUESTS: usize = 20;
/// Generous: unloaded, a request takes milliseconds; a stalled connection never answers.
const PER_REQUEST_BOUND: Duration = Duration::from_secs(5);
/// Time for the stallers' downloads to fill every buffer on their way (socket buffers,
/// stream windows) so that they really hold the upstream connection's flow control.
const FILL_TIME: Duration = Duration::from_millis(1500);

/// A download that was started, read a little, and is now held unread.
struct Held {
    _body: Incoming,
}

async fn start_held(mut body: Incoming) -> Held {
    next_data(&mut body).await.expect("the download started");
    Held { _body: body }
}

/// NORMAL_REQUESTS GETs on one client connection, each within PER_REQUEST_BOUND.
async fn normal_client_is_served(proxy: &Proxy, port: u16, phase: &str) {
    let mut client = TunnelClient::open(proxy, HOST, port).await;
    for i in 0..NORMAL_REQUESTS {
        let started = Instant::now();
        let served = tokio::time::timeout(PER_REQUEST_BOUND, async {
            let resp = client.get(&format!("/echo?normal={i}")).await;
            let status = resp.status();
            let body = resp.into_body().collect().await.map(|b| b.to_bytes());
            (status, body)
        })
        .await;
        let Ok((status, body)) = served else {
            panic!("{phase}: normal request {i} not answered within {PER_REQUEST_BOUND:?}");
        };
        assert_eq!(status, 200, "{phase}: request {i}");
        assert!(body.is_ok(), "{phase}: request {i} body: {body:?}");
        let took = started.elapsed();
        eprintln!("{phase}: normal request {i} took {took:?}");
    }
}

fn assert_one_shared_upstream_connection(upstream: &Upstream) {
    assert_eq!(
        upstream.tcp_accepts(),
        1,
        "the test is about clients sharing one upstream HTTP/2 connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_clients_holding_downloads_unread_do_not_delay_others() {
    let (_ca, upstream, builder) = support::tls_lab().await;
    let proxy = builder.spawn();
    let port = upstream.port();
    // Warm up: the upstream connection exists and is h2 before the stallers arrive.
    normal_client_is_served(&proxy, port, "before").await;

    let mut stallers = Vec::new();
    for _ in 0..STALLERS {
        let mut client = TunnelClient::open(&proxy, HOST, port).await;
        let held = start_held(client.get(LARGE).await.into_body()).await;
        stallers.push((client, held));
    }
    tokio::time::sleep(FILL_TIME).await;
    normal_client_is_served(&proxy, port, "during").await;
    assert_one_shared_upstream_connection(&upstream);

    drop(stallers);
    normal_client_is_served(&proxy, port, "after").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_holding_several_streams_unread_does_not_delay_others() {
    let (_ca, upstream, builder) = support::tls_lab().await;
    let proxy = builder.spawn();
    let port = upstream.port();
    normal_client_is_served(&proxy, port, "before").await;

    let staller = H2Client::open(&proxy, HOST, port).await;
    // Its own connection window runs out after two or three streams' worth, so only the
    // response heads are awaited: from then on its window stays at zero.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(Held {
            _body: staller.get(LARGE).await.into_body(),
        });
    }
    tokio::time::sleep(FILL_TIME).await;
    normal_client_is_served(&proxy, port, "during").await;
    assert_one_shared_upstream_connection(&upstream);

    drop(held);
    drop(staller);
    normal_client_is_served(&proxy, port, "after").await;
}
