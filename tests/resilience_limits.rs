//! Floods of client connections: the connection cap refuses the excess at once and recovers,
//! and running out of file descriptors sheds idle connections so new clients are served
//! again within seconds, with a bounded number of log lines.

mod support;

use std::time::{Duration, Instant};

use support::client::Curl;
use support::https_url;
use support::proxy::Proxy;
use support::upstream::Upstream;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const HOST: &str = "api.ok.test";
/// How long a connection refused at the cap may stay open: "at once", generously.
const REFUSAL_BOUND: Duration = Duration::from_secs(2);
/// How long until a new client is served again after a flood.
const RECOVERY_BOUND: Duration = Duration::from_secs(10);

async fn open_idle(proxy: &Proxy, n: usize) -> Vec<TcpStream> {
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            TcpStream::connect(proxy.addr())
                .await
                .expect("connect to the proxy"),
        );
    }
    conns
}

/// True when the proxy closes `tcp` (EOF or reset) within REFUSAL_BOUND.
async fn closed_at_once(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(REFUSAL_BOUND, tcp.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Retries a GET through the proxy until it is answered 200 or RECOVERY_BOUND passes;
/// returns how long it took.
async fn served_within_bound(proxy: &Proxy, upstream: &Upstream) -> Duration {
    let started = Instant::now();
    loop {
        let res = Curl::new(proxy, &https_url(HOST, upstream.port(), "/echo"))
            .arg("--max-time")
            .arg("5")
            .run()
            .await;
        if res.http_code == 200 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < RECOVERY_BOUND,
            "no client served within {RECOVERY_BOUND:?}; last attempt: {res:?}\nproxy stderr:\n{}",
            proxy.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_the_excess_at_once_and_recovers() {
    let (_ca, upstream, builder) = support::tls_lab().await;
    let proxy = builder.env("PAUDE_PROXY_MAX_CONNECTIONS", "5").spawn();
    let idle = open_idle(&proxy, 5).await;
    // Let the proxy admit all five before the sixth arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut sixth = TcpStream::connect(proxy.addr()).await.expect("connect");
    assert!(
        closed_at_once(&mut sixth).await,
        "the sixth connection was not closed at once"
    );
    // A flood of excess connections is refused too, and logged once, not once each.
    for _ in 0..40 {
        let mut extra = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(
            closed_at_once(&mut extra).await,
            "an excess connection stayed open"
        );
    }
    let lines = proxy.count_stderr("connection cap reached");
    assert!(
        (1..=2).contains(&lines),
        "{lines} log lines about the cap for 41 refusals:\n{}",
        proxy.stderr()
    );

    drop(idle);
    let took = served_within_bound(&proxy, &upstream).await;
    eprintln!("served again {took:?} after the idle connections closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_file_descriptors_the_proxy_sheds_idle_connections_and_serves_again() {
    let (_ca, upstream, builder) = support::tls_lab().await;
    // The wrapper execs the proxy, so it runs with 128 descriptors at most.
    let proxy = builder
        .wrap(&["/bin/bash", "-c", "ulimit -n 128 && exec \"$0\" \"$@\""])
        .spawn();
    // Far more idle connections than the proxy has descriptors; the test holds its ends open.
    let idle = open_idle(&proxy, 300).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let took = served_within_bound(&proxy, &upstream).await;
    eprintln!("a new client was served {took:?} into the descriptor exhaustion");
    let stderr = proxy.stderr();
    let shed = proxy.count_stderr("closing idle connections to recover");
    assert!(
        shed >= 1,
        "the proxy never ran out of descriptors; the test proves nothing:\n{stderr}"
    );
    let failed = proxy.count_stderr("accept failed");
    assert!(
        failed <= 5,
        "{failed} 'accept failed' lines: the log must stay bounded:\n{stderr}"
    );
    eprintln!("{failed} 'accept failed' lines");
    drop(idle);
}
