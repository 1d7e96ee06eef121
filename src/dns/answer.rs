//! From one query packet to one reply: parse, rate-limit, policy on the name, type rules,
//! resolution. Transport-independent; `server.rs` moves the bytes.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use super::NamePolicy;
use super::name::{QueryName, query_name};
use super::ratelimit::RateLimiter;
use super::record::AnswerRecord;
use super::resolve::{NameResolver, Resolution};
use super::stats::DnsStats;

/// EDNS payload size we advertise and honour: the DNS-flag-day value that avoids IP
/// fragmentation.
const EDNS_PAYLOAD: u16 = 1232;
/// Classic DNS limit for clients without EDNS.
const PLAIN_UDP_PAYLOAD: u16 = 512;

/// A reply ready to encode, plus the addresses it hands out (recorded only once the reply is
/// known to be sent whole).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) message: Message,
    pub(crate) given: Option<Given>,
    /// Largest UDP reply this client accepts.
    pub(crate) udp_limit: usize,
}

#[derive(Debug)]
pub(crate) struct Given {
    name: String,
    addrs: Vec<IpAddr>,
    ttl: Duration,
}

pub(crate) struct Handler {
    pub(crate) resolver: NameResolver,
    pub(crate) policy: Arc<dyn NamePolicy>,
    pub(crate) record: Arc<AnswerRecord>,
    pub(crate) limiter: RateLimiter,
    pub(crate) stats: Arc<DnsStats>,
}

impl Handler {
    /// `None`: drop the packet without reply (malformed, or not a query at all).
    pub(crate) async fn handle(&self, client: IpAddr, packet: &[u8]) -> Option<Reply> {
        // On a dual-stack socket IPv4 clients arrive as ::ffff:a.b.c.d; log and limit them
        // under the address the rest of the proxy sees.
        let client = client.to_canonical();
        let Ok(request) = Message::from_vec(packet) else {
            self.stats.malformed();
            return None;
        };
        // Never answer responses: that is how reflection loops between resolvers start.
        if request.metadata.message_type != MessageType::Query {
            self.stats.malformed();
            return None;
        }
        self.stats.query();
        let udp_limit = usize::from(request.max_payload().clamp(PLAIN_UDP_PAYLOAD, EDNS_PAYLOAD));
        let (message, given) = self.answer(client, &request).await;
        Some(Reply {
            message,
            given,
            udp_limit,
        })
    }

    /// Notes handed-out addresses in the answer record. Called before the reply is sent, so a
    /// client that connects the instant it has the answer already finds it recorded.
    pub(crate) fn note_given(&self, client: IpAddr, given: &Given) {
        self.record
            .record(client, &given.name, &given.addrs, given.ttl, Instant::now());
    }

    async fn answer(&self, client: IpAddr, request: &Message) -> (Message, Option<Given>) {
        let reply = |code| (empty_reply(request, code), None);
        if !self.limiter.allow(client, Instant::now()) {
            self.stats.rate_limited();
            return reply(ResponseCode::Refused);
        }
        if request.metadata.op_code != OpCode::Query {
            return reply(ResponseCode::NotImp);
        }
        let [query] = request.queries.as_slice() else {
            return reply(ResponseCode::FormErr);
        };
        if query.query_class() != DNSClass::IN {
            return reply(ResponseCode::Refused);
        }
        let host = match query_name(query.name()) {
            QueryName::Host(host) if self.policy.allows(client, &host) => host,
            QueryName::Host(name) | QueryName::Invalid(name) => {
                self.stats.blocked();
                self.policy.blocked(client, &name);
                return reply(ResponseCode::NXDomain);
            }
        };
        let qtype = query.query_type();
        match qtype {
            RecordType::A | RecordType::AAAA => {}
            // Empty on purpose: no ECH keys and no h3 hints, so clients stay on TCP/TLS
            // through the proxy instead of trying QUIC.
            RecordType::HTTPS | RecordType::SVCB => return reply(ResponseCode::NoError),
            RecordType::ANY | RecordType::AXFR | RecordType::IXFR | RecordType::OPT => {
                return reply(ResponseCode::Refused);
            }
            // Never forwarded: TXT, MX, NULL and friends are the usual tunnelling carriers.
            _ => return reply(ResponseCode::NoError),
        }
        match self.resolver.resolve(query.name(), &host, qtype).await {
            Resolution::Answer {
                records,
                addrs,
                ttl,
            } => {
                let mut message = empty_reply(request, ResponseCode::NoError);
                message.add_answers(records);
                let given = Given {
                    name: host,
                    addrs,
                    ttl,
                };
                (message, Some(given))
            }
            Resolution::NoData => reply(ResponseCode::NoError),
            Resolution::NxDomain => reply(ResponseCode::NXDomain),
            Resolution::Failed => {
                self.stats.upstream_failed();
                reply(ResponseCode::ServFail)
            }
        }
    }
}

/// Header and question copied from the request, no records.
fn empty_reply(request: &Message, code: ResponseCode) -> Message {
    let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
    reply.metadata = Metadata::response_from_request(&request.metadata);
    reply.metadata.recursion_available = true;
    reply.metadata.response_code = code;
    reply.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        // RFC 6891: a query with OPT gets a response with OPT.
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    reply
}
