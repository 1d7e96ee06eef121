//! The sandbox DNS server's per-packet path (parse, policy, answer, encode) without sockets,
//! for the `fuzz/` crate. Not an API: hidden from the docs, changes with the code it wraps.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use super::answer::Handler;
use super::config::{DnsConfig, RateLimit, Upstream};
use super::hosts::HostsTable;
use super::name::is_hostname;
use super::ratelimit::RateLimiter;
use super::record::AnswerRecord;
use super::resolve::NameResolver;
use super::server::{finish_tcp, finish_udp};
use super::stats::DnsStats;
use super::{Evidence, NamePolicy};

/// Names the harness answers, all from pins: the policy allows nothing else, so no query
/// ever reaches an upstream resolver.
pub const PINNED: &[(&str, IpAddr)] = &[
    ("pinned.fuzz.test", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))),
    (
        "v6.fuzz.test",
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    ),
    ("two.fuzz.test", IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))),
];

/// Never dialled (see [`PINNED`]); TEST-NET-1, discard port, in case it ever were.
const UNUSED_UPSTREAM: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 53)), 9);

/// Checks what the trait promises callers, on every call the handler makes.
struct CheckingPolicy;

impl NamePolicy for CheckingPolicy {
    fn allows(&self, _client: std::net::IpAddr, name: &str) -> bool {
        assert!(
            is_hostname(name),
            "policy asked about a non-host name {name:?}"
        );
        assert!(
            !name.bytes().any(|b| b.is_ascii_uppercase()),
            "{name:?} not lowercase"
        );
        PINNED.iter().any(|(pinned, _)| *pinned == name)
    }

    fn blocked(&self, _client: IpAddr, name: &str) {
        assert!(
            !name.chars().any(|c| c.is_whitespace() || c.is_control()),
            "blocked-log name {name:?} has whitespace or control characters"
        );
    }
}

/// What the server would send back for one packet.
#[derive(Debug)]
pub struct Answered {
    /// The UDP datagram (`None`: dropped, no reply).
    pub udp: Option<Vec<u8>>,
    /// The TCP frame, 2-byte length prefix included.
    pub tcp: Option<Vec<u8>>,
    /// The client's UDP size limit the server honoured.
    pub udp_limit: Option<usize>,
}

pub struct DnsHarness {
    handler: Handler,
    runtime: tokio::runtime::Runtime,
}

impl DnsHarness {
    pub fn new() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let cfg = DnsConfig {
            upstream: Upstream::Servers(vec![UNUSED_UPSTREAM]),
            pinned: PINNED.iter().map(|(n, a)| (n.to_string(), *a)).collect(),
            ..DnsConfig::default()
        };
        let resolver = {
            let _guard = runtime.enter();
            NameResolver::new(&cfg)?
        };
        let handler = Handler {
            resolver,
            policy: Arc::new(CheckingPolicy),
            record: Arc::new(AnswerRecord::new(cfg.record_capacity, cfg.grace)),
            // Generous, so a long run keeps exercising the answer path, not REFUSED.
            limiter: RateLimiter::new(RateLimit {
                per_second: u32::MAX,
                burst: u32::MAX,
                max_clients: 16,
            }),
            stats: Arc::new(DnsStats::default()),
        };
        Ok(Self { handler, runtime })
    }

    /// Handles `packet` from `client` as both transports would.
    pub fn answer(&self, client: IpAddr, packet: &[u8]) -> Answered {
        let handle = || self.runtime.block_on(self.handler.handle(client, packet));
        let udp_reply = handle();
        let udp_limit = udp_reply.as_ref().map(|r| r.udp_limit);
        let udp = udp_reply.and_then(|r| finish_udp(&self.handler, client, r));
        let tcp = handle().and_then(|r| finish_tcp(&self.handler, client, r));
        Answered {
            udp,
            tcp,
            udp_limit,
        }
    }

    /// Whether the answer record vouches for `addr` as given to `client` for `name`.
    pub fn given(&self, client: IpAddr, name: &str, addr: IpAddr) -> bool {
        let now = std::time::Instant::now() + Duration::from_secs(1);
        self.handler.record.check(client, name, addr, now) == Evidence::Given
    }
}

/// The DNS server's hosts-file table (`PAUDE_PROXY_HOSTS_FILE` as the sandbox sees it).
pub struct SandboxHosts(HostsTable);

impl SandboxHosts {
    pub fn parse(text: &str) -> Self {
        Self(HostsTable::parse(text))
    }

    /// Addresses pinned for `name` (lowercase, no trailing dot).
    pub fn lookup(&self, name: &str) -> Option<&[IpAddr]> {
        self.0.lookup(name)
    }
}
