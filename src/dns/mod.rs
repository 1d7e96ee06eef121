//! Sandbox DNS server (`PAUDE_PROXY_DNS_LISTEN`) and the answer record the SNI <-> IP check
//! trusts.
//!
//! Per query: parse (malformed/oversized: dropped, counted) -> per-client rate limit
//! (REFUSED) -> name policy (disallowed: NXDOMAIN + `NamePolicy::blocked`, never sent
//! upstream) -> type rules (A/AAAA resolved; HTTPS/SVCB and others: empty NOERROR;
//! ANY/AXFR/IXFR: REFUSED) -> hosts files, then upstream -> TTL capped -> addresses recorded
//! in [`AnswerRecord`] before the reply leaves.

mod answer;
mod config;
/// Entry points for the `fuzz/` crate; not an API.
#[doc(hidden)]
pub mod fuzzing;
mod hosts;
mod name;
mod ratelimit;
mod record;
mod resolve;
mod server;
mod stats;

use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, UdpSocket};

pub use config::{
    DEFAULT_GRACE, DEFAULT_RECORD_CAPACITY, DEFAULT_TTL_CAP, DnsConfig, RateLimit, Upstream,
};
pub use record::{AnswerRecord, Evidence};
pub use stats::{DnsCounters, DnsStats};

/// What the proxy's policy says about names; implemented from `ALLOWED_DOMAINS`.
pub trait NamePolicy: Send + Sync + 'static {
    /// `name` is lowercase, without trailing dot, letters/digits/`-`/`_` labels only.
    /// `client` asked: each agent may have its own allowlist.
    fn allows(&self, client: IpAddr, name: &str) -> bool;
    /// A query was refused. `name` is the normalised name, or an escaped rendering of a name
    /// that is not a host name at all; it never contains whitespace or control bytes.
    fn blocked(&self, client: IpAddr, name: &str);
}

/// A configured server: resolver built, hosts files read, counters ready.
pub struct DnsServer {
    handler: Arc<answer::Handler>,
}

impl DnsServer {
    /// Fails (naming the file or setting) if the hosts file is unreadable, the system resolver
    /// configuration is unusable, or the server list is empty: fail closed at startup.
    pub fn new(
        cfg: DnsConfig,
        policy: Arc<dyn NamePolicy>,
        record: Arc<AnswerRecord>,
    ) -> io::Result<Self> {
        let handler = answer::Handler {
            resolver: resolve::NameResolver::new(&cfg)?,
            policy,
            record,
            limiter: ratelimit::RateLimiter::new(cfg.rate),
            stats: Arc::new(DnsStats::default()),
        };
        Ok(Self {
            handler: Arc::new(handler),
        })
    }

    /// Counters for /metrics; stays valid after `serve` returns.
    pub fn stats(&self) -> Arc<DnsStats> {
        self.handler.stats.clone()
    }

    /// Serves DNS on both sockets until `shutdown` completes.
    pub async fn serve(
        self,
        udp: UdpSocket,
        tcp: TcpListener,
        shutdown: impl Future,
    ) -> io::Result<()> {
        server::run(self.handler, udp, tcp, shutdown).await
    }
}

/// Convenience: [`DnsServer::new`] then [`DnsServer::serve`], for callers that do not need
/// the counters.
pub async fn serve(
    udp: UdpSocket,
    tcp: TcpListener,
    cfg: DnsConfig,
    policy: Arc<dyn NamePolicy>,
    record: Arc<AnswerRecord>,
    shutdown: impl Future,
) -> io::Result<()> {
    DnsServer::new(cfg, policy, record)?
        .serve(udp, tcp, shutdown)
        .await
}
