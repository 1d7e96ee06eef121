//! Forwarding to the upstream resolver: allowed names go, disallowed names (however long and
//! however exfiltration-shaped) never do. The upstream is a fake on 127.0.0.1 that records
//! every question it receives.

mod dns_support;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

use dns_support::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use paude_proxy::dns::Evidence;
use tokio::net::UdpSocket;

const LOCALHOST: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

async fn upstream() -> FakeUpstream {
    let mut table = HashMap::new();
    table.insert(
        ("cdn.allowed.test".to_owned(), RecordType::A),
        vec![
            cname_record("cdn.allowed.test.", 3600, "edge.cdnprovider.test."),
            a_record("edge.cdnprovider.test.", 3600, "198.51.100.7"),
            a_record("edge.cdnprovider.test.", 3600, "198.51.100.8"),
        ],
    );
    table.insert(
        ("short.allowed.test".to_owned(), RecordType::A),
        vec![a_record("short.allowed.test.", 60, "198.51.100.9")],
    );
    FakeUpstream::start(table).await
}

/// Base32-looking labels (63 bytes where they fit): the shape of data smuggled out in query
/// names, filled up to the 253-character (255 bytes on the wire) maximum under `suffix`.
fn exfil_name(suffix: &str) -> String {
    const MAX_TEXT_LEN: usize = 253;
    let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut name = String::new();
    let mut n = 0;
    while name.len() + 1 + suffix.len() < MAX_TEXT_LEN {
        let room = MAX_TEXT_LEN - name.len() - 1 - suffix.len(); // label bytes left before ".suffix"
        let len = room.min(63);
        name.extend((0..len).map(|i| char::from(alphabet[(i * 7 + n * 13) % alphabet.len()])));
        name.push('.');
        n += 1;
    }
    name.push_str(suffix);
    name
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exfiltration_name_is_nxdomain_and_never_forwarded_while_allowed_names_are() {
    let upstream = upstream().await;
    let h = start(test_config(vec![upstream.addr])).await;

    // The longest name DNS can carry (255 bytes on the wire) under a disallowed domain.
    let exfil = exfil_name("x.exfil.evil.test");
    assert_eq!(exfil.len(), 253);
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::HTTPS,
    ] {
        let reply = udp_query(h.udp, &exfil, qtype).await;
        assert_eq!(
            reply.metadata.response_code,
            ResponseCode::NXDomain,
            "{qtype}"
        );
    }
    assert_eq!(h.policy.blocked_names(), vec![exfil.clone(); 4]);

    // Positive control: an allowed name that is not in the hosts file IS forwarded, and its
    // answer (CNAME chain, TTL 3600 capped to 300) comes back.
    let reply = udp_query(h.udp, "cdn.allowed.test", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        reply.answers[0].record_type(),
        RecordType::CNAME,
        "CNAME chain kept"
    );
    let mut got = addrs(&reply);
    got.sort();
    assert_eq!(
        got.iter().map(|(ip, _)| *ip).collect::<Vec<_>>(),
        vec![ip("198.51.100.7"), ip("198.51.100.8")]
    );
    assert!(
        reply.answers.iter().all(|r| r.ttl <= 300 && r.ttl > 0),
        "TTL capped: {:?}",
        reply.answers
    );

    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec![("cdn.allowed.test".to_owned(), RecordType::A)],
        "upstream saw only the allowed name"
    );

    // The answer record vouches for what the client was told, under the name it asked for.
    let now = Instant::now();
    assert_eq!(
        h.record
            .check(LOCALHOST, "cdn.allowed.test", ip("198.51.100.8"), now),
        Evidence::Given
    );
    assert_eq!(
        h.record
            .check(LOCALHOST, exfil.as_str(), ip("198.51.100.8"), now),
        Evidence::NotGiven
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_longer_than_dns_allows_is_dropped_as_malformed_and_never_forwarded() {
    let upstream = upstream().await;
    let h = start(test_config(vec![upstream.addr])).await;

    // 300+ bytes of name cannot be encoded legally (RFC 1035 caps names at 255 bytes); build the
    // packet by hand the way a hostile client would.
    let mut packet = vec![0xAB, 0xCD, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    for _ in 0..5 {
        packet.push(63);
        packet.extend(std::iter::repeat_n(b'q', 63));
    }
    for label in ["evil", "test"] {
        packet.push(u8::try_from(label.len()).unwrap());
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&packet, h.udp).await.unwrap();
    wait_for(&h.stats, |c| c.malformed == 1).await;

    // Positive control on the same socket: the first datagram back answers it.
    socket
        .send_to(
            &query_bytes(4242, "short.allowed.test", RecordType::A),
            h.udp,
        )
        .await
        .unwrap();
    let reply = udp_recv(&socket).await;
    assert_eq!(reply.metadata.id, 4242);
    let got = addrs(&reply);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, ip("198.51.100.9"));
    assert!(
        got[0].1 <= 60 && got[0].1 > 0,
        "a TTL under the cap is passed on, not raised: {}",
        got[0].1
    );
    assert_eq!(upstream.seen_names(), vec!["short.allowed.test"]);
    assert!(h.policy.blocked_names().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_nxdomain_passes_through_and_a_dead_upstream_gives_servfail() {
    let upstream = upstream().await;
    let h = start(test_config(vec![upstream.addr])).await;
    let reply = udp_query(h.udp, "missing.allowed.test", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert!(
        h.policy.blocked_names().is_empty(),
        "an upstream NXDOMAIN is not a policy block"
    );
    assert_eq!(upstream.seen_names(), vec!["missing.allowed.test"]);

    // A loopback port with nothing behind it: the kernel refuses at once.
    let closed = UdpSocket::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let h = start(test_config(vec![closed])).await;
    let reply = udp_query(h.udp, "cdn.allowed.test", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(h.stats.snapshot().upstream_failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_too_big_for_udp_is_truncated_unrecorded_and_complete_over_tcp() {
    let many: Vec<_> = (1..=40)
        .map(|i| a_record("many.allowed.test.", 120, &format!("198.51.100.{i}")))
        .collect();
    let mut table = HashMap::new();
    table.insert(("many.allowed.test".to_owned(), RecordType::A), many);
    let upstream = FakeUpstream::start(table).await;
    let h = start(test_config(vec![upstream.addr])).await;

    // No EDNS: the client accepts 512 bytes at most.
    let mut query = query_message(61, "many.allowed.test", RecordType::A);
    query.edns = None;
    let reply = udp_query_from("127.0.0.1:0", h.udp, &query.to_vec().unwrap()).await;
    assert!(reply.metadata.truncation, "TC set");
    assert!(reply.answers.is_empty());
    let now = Instant::now();
    assert_eq!(
        h.record
            .check(LOCALHOST, "many.allowed.test", ip("198.51.100.1"), now),
        Evidence::NotGiven,
        "a truncated reply hands out nothing"
    );

    let mut stream = tokio::net::TcpStream::connect(h.tcp).await.unwrap();
    tcp_send(&mut stream, &query.to_vec().unwrap()).await;
    let reply = tcp_recv(&mut stream).await;
    assert!(!reply.metadata.truncation);
    assert_eq!(addrs(&reply).len(), 40);
    assert_eq!(
        h.record.check(
            LOCALHOST,
            "many.allowed.test",
            ip("198.51.100.40"),
            Instant::now()
        ),
        Evidence::Given
    );
}
