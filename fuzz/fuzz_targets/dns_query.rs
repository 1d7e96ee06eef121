//! The sandbox DNS server's per-packet path (parse, rate limit, name policy, type rules,
//! pinned answers, UDP/TCP encoding) over arbitrary packets, without sockets: the policy
//! allows only pinned names, so nothing is ever asked upstream. Properties: never panics;
//! the policy and blocked log only ever see clean names (asserted in the harness); a reply
//! is a well-formed response to the same id that fits the client's UDP limit; an IPv4
//! client gets the same answer whether it arrives as IPv4 or IPv4-mapped IPv6; addresses
//! handed out are in the answer record.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use hickory_proto::op::{Message, MessageType};
use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::{Answered, DnsHarness};

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);

fn harness() -> &'static DnsHarness {
    static HARNESS: OnceLock<DnsHarness> = OnceLock::new();
    HARNESS.get_or_init(|| DnsHarness::new().expect("DNS harness builds"))
}

fn check(packet: &[u8], answered: &Answered) -> Option<Message> {
    if let Some(frame) = &answered.tcp {
        let (len, body) = frame.split_at(2);
        assert_eq!(
            usize::from(u16::from_be_bytes([len[0], len[1]])),
            body.len()
        );
        let reply = Message::from_vec(body).expect("TCP reply parses");
        assert_eq!(reply.metadata.message_type, MessageType::Response);
    }
    let udp = answered.udp.as_ref()?;
    let limit = answered.udp_limit.expect("a reply has a limit");
    assert!(
        udp.len() <= limit,
        "{} byte reply over the {limit} byte limit",
        udp.len()
    );
    let reply = Message::from_vec(udp).expect("UDP reply parses");
    assert_eq!(reply.metadata.message_type, MessageType::Response);
    assert_eq!(
        &reply.metadata.id.to_be_bytes()[..],
        &packet[..2],
        "reply id differs"
    );
    Some(reply)
}

fuzz_target!(|packet: &[u8]| {
    let h = harness();
    let v4 = IpAddr::V4(CLIENT);
    let answered = h.answer(v4, packet);
    let mapped = h.answer(IpAddr::V6(CLIENT.to_ipv6_mapped()), packet);
    assert_eq!(
        answered.udp, mapped.udp,
        "mapped IPv4 client answered differently"
    );
    assert_eq!(
        answered.tcp, mapped.tcp,
        "mapped IPv4 client answered differently (TCP)"
    );
    let Some(reply) = check(packet, &answered) else {
        return;
    };
    for record in &reply.answers {
        if let Some(addr) = record.data.ip_addr() {
            let name = record.name.to_ascii();
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            assert!(
                h.given(v4, &name, addr),
                "{addr} handed out for {name} but not recorded"
            );
        }
    }
});
