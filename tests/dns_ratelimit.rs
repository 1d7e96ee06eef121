//! The per-client rate limit over real UDP: a client past its burst gets REFUSED (counted),
//! other clients are unaffected.

mod dns_support;

use std::collections::HashMap;

use dns_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use paude_proxy::dns::RateLimit;
use tokio::net::UdpSocket;

const BURST: u32 = 5;
const SENT: u16 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_client_is_refused_past_its_burst_and_others_are_not() {
    let upstream = FakeUpstream::start(HashMap::new()).await;
    let mut cfg = test_config(vec![upstream.addr]);
    // No refill, so the outcome does not depend on how fast the loop runs.
    cfg.rate = RateLimit {
        per_second: 0,
        burst: BURST,
        max_clients: 64,
    };
    let h = start(cfg).await;

    let looping = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut codes = Vec::new();
    for id in 0..SENT {
        looping
            .send_to(&query_bytes(id, "api.allowed.test", RecordType::A), h.udp)
            .await
            .unwrap();
        let reply = udp_recv(&looping).await;
        assert_eq!(reply.metadata.id, id);
        codes.push(reply.metadata.response_code);
    }
    let answered = codes
        .iter()
        .filter(|c| **c == ResponseCode::NoError)
        .count();
    let refused = codes
        .iter()
        .filter(|c| **c == ResponseCode::Refused)
        .count();
    assert_eq!(
        (answered, refused),
        (BURST as usize, usize::from(SENT) - BURST as usize),
        "{codes:?}"
    );
    assert!(
        codes[..BURST as usize]
            .iter()
            .all(|c| *c == ResponseCode::NoError),
        "the burst comes first"
    );
    assert_eq!(
        h.stats.snapshot().rate_limited,
        u64::from(SENT) - u64::from(BURST)
    );

    // Disallowed names count against the same bucket: a refused client is not even told NXDOMAIN.
    let reply = udp_query_from(
        "127.0.0.1:0",
        h.udp,
        &query_bytes(99, "www.evil.test", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::Refused);
    assert!(
        h.policy.blocked_names().is_empty(),
        "rate limit comes before the policy"
    );

    // Another client (127.0.0.2 is loopback too) has its own bucket.
    let reply = udp_query_from(
        "127.0.0.2:0",
        h.udp,
        &query_bytes(7, "api.allowed.test", RecordType::A),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addrs(&reply).len(), 1);
}
