//! Settings for the sandbox DNS server. Plain data: the lead's config layer builds it from
//! `PAUDE_PROXY_DNS_LISTEN`, `PAUDE_PROXY_HOSTS_FILE` and friends.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// TTLs handed to the sandbox are capped so that an allow-list change or a CDN move reaches
/// the agent within minutes, and so the answer record never has to keep very old answers.
pub const DEFAULT_TTL_CAP: Duration = Duration::from_secs(300);
/// Clients (browsers, JVMs, language runtimes) cache longer than TTLs say; the answer record
/// keeps vouching for an address this long after its TTL ran out.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(600);
/// Number of (client, name) entries the answer record keeps before evicting the oldest.
pub const DEFAULT_RECORD_CAPACITY: usize = 65_536;

/// Per-client token bucket. Generous: a normal agent issues a handful of queries per second;
/// only a loop can reach this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per second. `0` means no refill: a client gets `burst` queries in total
    /// (only useful in tests that need a deterministic limit).
    pub per_second: u32,
    /// Bucket size: queries a client may send at once.
    pub burst: u32,
    /// Clients tracked at once; the least recently seen is forgotten first (it then starts
    /// again with a full bucket, which is the generous direction).
    pub max_clients: usize,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 200,
            burst: 400,
            max_clients: 4_096,
        }
    }
}

/// Where allowed names are resolved after the hosts files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// `/etc/resolv.conf` for servers, and `/etc/hosts` consulted before them.
    System,
    /// Exactly these servers (UDP, then TCP on truncation); `/etc/hosts` is NOT read.
    /// For tests and for operators who want a fixed resolver.
    Servers(Vec<SocketAddr>),
}

#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// Upper bound on every TTL handed out.
    pub ttl_cap: Duration,
    /// How long after TTL expiry the answer record still says `Given` (then `Expired`).
    pub grace: Duration,
    /// Bound on the answer record's (client, name) entries.
    pub record_capacity: usize,
    /// Per client IP.
    pub rate: RateLimit,
    pub upstream: Upstream,
    /// `PAUDE_PROXY_HOSTS_FILE` (/etc/hosts format). Consulted first; a name listed here is
    /// answered only from here and never asked upstream. An unreadable file is a startup error.
    pub hosts_file: Option<PathBuf>,
    /// Names the proxy itself answers for, ahead of every hosts file (what the vendors pin,
    /// such as an emulated metadata server's name).
    pub pinned: Vec<(String, IpAddr)>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            ttl_cap: DEFAULT_TTL_CAP,
            grace: DEFAULT_GRACE,
            record_capacity: DEFAULT_RECORD_CAPACITY,
            rate: RateLimit::default(),
            upstream: Upstream::System,
            hosts_file: None,
            pinned: Vec::new(),
        }
    }
}
