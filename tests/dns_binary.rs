//! The sandbox DNS as the real binary serves it (`PAUDE_PROXY_DNS_LISTEN`): the same
//! `ALLOWED_DOMAINS` as the proxy, answers from `PAUDE_PROXY_HOSTS_FILE`, denials in the
//! squid blocked log. Everything on 127.0.0.1; the configured upstream resolver is a
//! recording fake on loopback, so nothing leaves the machine.

mod dns_support;
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use dns_support::{FakeUpstream, addrs, udp_query};
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::proxy::{ProxyBuilder, assert_blocked_line};

fn dns_addr(stderr: &str) -> SocketAddr {
    stderr
        .lines()
        .find_map(|l| l.split("listening role=dns addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no dns listening line in:\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_answers_allowed_names_and_blocks_the_rest() {
    let upstream = FakeUpstream::start(HashMap::new()).await;
    let proxy = ProxyBuilder::new()
        .env("ALLOWED_DOMAINS", ".openai.com")
        .env("PAUDE_PROXY_DNS_LISTEN", "127.0.0.1:0")
        .env("PAUDE_PROXY_DNS_UPSTREAM", upstream.addr.to_string())
        .spawn();
    let server = dns_addr(&proxy.wait_stderr_contains("listening role=dns addr="));

    let reply = udp_query(server, "api.openai.com", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    let got = addrs(&reply);
    assert_eq!(got.len(), 1, "{reply:?}");
    assert_eq!(got[0].0, "127.0.0.1".parse::<std::net::IpAddr>().unwrap());
    assert!(
        got[0].1 > 0 && got[0].1 <= 300,
        "TTL present and capped: {got:?}"
    );

    let reply = udp_query(server, "exfil-data-abc123.evil.com", RecordType::A).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    let lines = proxy.wait_blocked_lines(1);
    assert_blocked_line(&lines[0], "127.0.0.1", "DNS", "exfil-data-abc123.evil.com");
    assert!(
        upstream.seen_names().is_empty(),
        "nothing may be forwarded: {:?}",
        upstream.seen_names()
    );
}
