//! The sandbox DNS server over real UDP/TCP sockets on 127.0.0.1: name policy, type rules,
//! hosts file answers, answer record, malformed input.

mod dns_support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use dns_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use paude_proxy::dns::Evidence;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, UdpSocket};

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn harness() -> (Harness, FakeUpstream) {
    let upstream = FakeUpstream::start(HashMap::new()).await;
    let harness = start(test_config(vec![upstream.addr])).await;
    (harness, upstream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_name_resolves_from_hosts_file_with_ttl() {
    let (h, upstream) = harness().await;

    let reply = udp_query(h.udp, "api.allowed.test", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        addrs(&reply),
        vec![(ip("192.0.2.10"), 300)],
        "address from hosts file, TTL = cap"
    );
    assert_eq!(reply.queries[0].name().to_ascii(), "api.allowed.test.");

    let reply = udp_query(h.udp, "API.Allowed.Test.", RecordType::AAAA).await;
    assert_eq!(addrs(&reply), vec![(ip("2001:db8::10"), 300)]);
    assert_eq!(
        reply.queries[0].name().to_ascii(),
        "API.Allowed.Test.",
        "question echoed as asked"
    );

    // Pinned in the hosts file with IPv4 only: AAAA is an empty NOERROR, not an upstream query.
    let reply = udp_query(h.udp, "v4only.allowed.test", RecordType::AAAA).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.answers.is_empty());
    assert!(
        upstream.seen_names().is_empty(),
        "pinned names never go upstream: {:?}",
        upstream.seen_names()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disallowed_name_gets_nxdomain_and_a_blocked_call() {
    let (h, upstream) = harness().await;

    let reply = udp_query(h.udp, "www.evil.test", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(reply.answers.is_empty());

    // Even a name pinned in the hosts file is refused when the policy does not allow it.
    let reply = udp_query(h.udp, "pinned.blocked.test", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    // Any type for a disallowed name is NXDOMAIN, so TXT tunnels get nothing either.
    let reply = udp_query(h.udp, "data.evil.test", RecordType::TXT).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);

    let blocked = h.policy.blocked.lock().unwrap().clone();
    assert_eq!(
        blocked,
        vec![
            (LOCALHOST, "www.evil.test".to_owned()),
            (LOCALHOST, "pinned.blocked.test".to_owned()),
            (LOCALHOST, "data.evil.test".to_owned()),
        ]
    );
    assert_eq!(h.stats.snapshot().blocked, 3);
    assert!(upstream.seen_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn type_rules_https_empty_any_refused_others_empty() {
    let (h, upstream) = harness().await;
    // Allowed but not pinned in the hosts file: anything not answered locally would reach
    // the recording upstream.
    for qtype in [
        RecordType::HTTPS,
        RecordType::SVCB,
        RecordType::TXT,
        RecordType::MX,
    ] {
        let reply = udp_query(h.udp, "unpinned.allowed.test", qtype).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NoError,
            "{qtype}"
        );
        assert!(reply.answers.is_empty(), "{qtype} gets an empty answer");
    }
    for qtype in [RecordType::ANY, RecordType::AXFR, RecordType::IXFR] {
        let reply = udp_query(h.udp, "unpinned.allowed.test", qtype).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::Refused,
            "{qtype}"
        );
        assert!(reply.answers.is_empty());
    }
    assert!(
        upstream.seen_names().is_empty(),
        "none of these is forwarded"
    );
    assert!(h.policy.blocked_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_says_given_not_given_expired() {
    let (h, _upstream) = harness().await;
    let before = Instant::now();
    let reply = udp_query(h.udp, "api.allowed.test", RecordType::A).await;
    assert_eq!(addrs(&reply), vec![(ip("192.0.2.10"), 300)]);
    let after = Instant::now();

    let check = |addr: &str, now| h.record.check(LOCALHOST, "api.allowed.test", ip(addr), now);
    assert_eq!(check("192.0.2.10", after), Evidence::Given);
    assert_eq!(
        check("192.0.2.11", after),
        Evidence::NotGiven,
        "another address"
    );
    assert_eq!(
        h.record
            .check(ip("127.0.0.2"), "api.allowed.test", ip("192.0.2.10"), after),
        Evidence::NotGiven,
        "another client"
    );
    // Still given until TTL + grace after it was handed out; expired past that.
    let ttl_and_grace = Duration::from_secs(300) + h.cfg.grace;
    assert_eq!(check("192.0.2.10", before + ttl_and_grace), Evidence::Given);
    assert_eq!(
        check("192.0.2.10", after + ttl_and_grace + Duration::from_secs(1)),
        Evidence::Expired
    );

    // Blocked and empty answers leave no evidence.
    let _ = udp_query(h.udp, "pinned.blocked.test", RecordType::A).await;
    assert_eq!(
        h.record
            .check(LOCALHOST, "pinned.blocked.test", ip("192.0.2.99"), after),
        Evidence::NotGiven
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_answers_several_queries_on_one_connection() {
    let (h, _upstream) = harness().await;
    let mut stream = TcpStream::connect(h.tcp).await.unwrap();

    tcp_send(
        &mut stream,
        &query_bytes(1, "api.allowed.test", RecordType::A),
    )
    .await;
    tcp_send(&mut stream, &query_bytes(2, "www.evil.test", RecordType::A)).await;
    let first = tcp_recv(&mut stream).await;
    let second = tcp_recv(&mut stream).await;

    assert_eq!(first.metadata.id, 1);
    assert_eq!(addrs(&first), vec![(ip("192.0.2.10"), 300)]);
    assert_eq!(second.metadata.id, 2);
    assert_eq!(second.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(h.policy.blocked_names(), vec!["www.evil.test"]);
    assert_eq!(
        h.record.check(
            LOCALHOST,
            "api.allowed.test",
            ip("192.0.2.10"),
            Instant::now()
        ),
        Evidence::Given,
        "TCP answers are recorded too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_udp_is_dropped_and_the_next_query_answered() {
    let (h, _upstream) = harness().await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();

    let garbage = b"\x12\x34 this is not dns at all".to_vec();
    let truncated_header = vec![0x12, 0x34, 0x01];
    let mut a_response = query_message(77, "api.allowed.test", RecordType::A);
    a_response.metadata.message_type = hickory_proto::op::MessageType::Response;
    let oversized = vec![0u8; 4000];
    for packet in [
        &garbage,
        &truncated_header,
        &a_response.to_vec().unwrap(),
        &oversized,
    ] {
        socket.send_to(packet, h.udp).await.unwrap();
    }
    wait_for(&h.stats, |c| c.malformed == 3 && c.oversized == 1).await;

    socket
        .send_to(&query_bytes(501, "api.allowed.test", RecordType::A), h.udp)
        .await
        .unwrap();
    let reply = udp_recv(&socket).await;
    assert_eq!(
        reply.metadata.id, 501,
        "the first datagram back answers the valid query"
    );
    assert_eq!(addrs(&reply), vec![(ip("192.0.2.10"), 300)]);
    assert_eq!(h.stats.snapshot().queries, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_oversized_or_malformed_frame_closes_only_that_connection() {
    let (h, _upstream) = harness().await;

    let mut stream = TcpStream::connect(h.tcp).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream.write_all(&u16::MAX.to_be_bytes()).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(CLIENT_TIMEOUT, stream.read(&mut buf))
        .await
        .expect("closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "server closes the connection"
    );

    let mut stream = TcpStream::connect(h.tcp).await.unwrap();
    tcp_send(&mut stream, b"garbage!garbage!").await;
    let read = tokio::time::timeout(CLIENT_TIMEOUT, stream.read(&mut buf))
        .await
        .expect("closed");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "server closes the connection"
    );
    let counters = h.stats.snapshot();
    assert_eq!((counters.oversized, counters.malformed), (1, 1));

    let mut stream = TcpStream::connect(h.tcp).await.unwrap();
    tcp_send(
        &mut stream,
        &query_bytes(9, "api.allowed.test", RecordType::A),
    )
    .await;
    assert_eq!(
        addrs(&tcp_recv(&mut stream).await),
        vec![(ip("192.0.2.10"), 300)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_are_not_host_names_are_refused_without_asking_the_policy() {
    let (h, upstream) = harness().await;
    // One label "evil.test" under allowed.test: as text it would look like
    // "x.evil.test.allowed.test", but it is not a host name.
    let name =
        hickory_proto::rr::Name::from_labels(vec![&b"x"[..], b"evil.test", b"allowed", b"test"])
            .unwrap();
    let mut message = query_message(31, "placeholder.test", RecordType::A);
    message.queries[0].set_name(name);
    let reply = udp_query_from("127.0.0.1:0", h.udp, &message.to_vec().unwrap()).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(
        h.policy.blocked_names(),
        vec!["x.evil\\046test.allowed.test"]
    );
    assert!(upstream.seen_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_returns_on_shutdown_and_stops_answering() {
    let upstream = FakeUpstream::start(HashMap::new()).await;
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp_addr = tcp.local_addr().unwrap();
    let policy = std::sync::Arc::new(TestPolicy::default());
    let record = std::sync::Arc::new(paude_proxy::dns::AnswerRecord::new(
        16,
        Duration::from_secs(1),
    ));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(paude_proxy::dns::serve(
        udp,
        tcp,
        test_config(vec![upstream.addr]),
        policy,
        record,
        stopped,
    ));

    stop.send(()).unwrap();
    let result = tokio::time::timeout(CLIENT_TIMEOUT, task)
        .await
        .expect("serve returned")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert!(
        TcpStream::connect(tcp_addr).await.is_err(),
        "listener closed after shutdown"
    );
}

#[test]
fn startup_fails_closed_naming_the_bad_setting() {
    let policy = std::sync::Arc::new(TestPolicy::default());
    let record = std::sync::Arc::new(paude_proxy::dns::AnswerRecord::new(
        16,
        Duration::from_secs(1),
    ));

    let mut cfg = test_config(vec!["127.0.0.1:53".parse().unwrap()]);
    cfg.hosts_file = Some("/nonexistent/paude-hosts".into());
    let err = paude_proxy::dns::DnsServer::new(cfg, policy.clone(), record.clone())
        .err()
        .expect("fails");
    assert!(
        err.to_string().contains("/nonexistent/paude-hosts"),
        "{err}"
    );

    let cfg = test_config(vec![]);
    let err = paude_proxy::dns::DnsServer::new(cfg, policy, record)
        .err()
        .expect("fails");
    assert!(err.to_string().contains("server list is empty"), "{err}");
}
