//! Resolution of names the policy allows: hosts tables first, then the upstream resolver.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use hickory_proto::rr::{Name, RData, Record, RecordType};
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::config::{DnsConfig, Upstream};
use super::hosts::{HostsTable, SYSTEM_HOSTS_PATH};

/// One attempt against one upstream server.
const UPSTREAM_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per lookup across the configured servers.
const UPSTREAM_ATTEMPTS: usize = 2;
/// Hard bound on a whole lookup, whatever the resolver's retry logic does; the client then
/// gets SERVFAIL instead of a hanging task.
const UPSTREAM_LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Negative answers are cached briefly so a looping agent asking for a missing name does not
/// reach upstream every time, yet a new record shows up quickly.
const NEGATIVE_CACHE_MAX: Duration = Duration::from_secs(30);

/// What the sandbox is told for an allowed A/AAAA question.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Resolution {
    /// CNAME chain plus address records, TTLs already capped. `ttl` is the smallest TTL in
    /// `records`: how long the client may rely on `addrs`.
    Answer {
        records: Vec<Record>,
        addrs: Vec<IpAddr>,
        ttl: Duration,
    },
    /// The name exists but has no record of this type (NOERROR, empty answer).
    NoData,
    NxDomain,
    /// Upstream failed or timed out (SERVFAIL).
    Failed,
}

pub(crate) struct NameResolver {
    hosts: HostsTable,
    upstream: TokioResolver,
    ttl_cap: Duration,
}

impl NameResolver {
    /// Reads hosts files and the system resolver configuration; an error names what failed.
    pub(crate) fn new(cfg: &DnsConfig) -> io::Result<Self> {
        let system_hosts = match cfg.upstream {
            Upstream::System => Some(std::path::Path::new(SYSTEM_HOSTS_PATH)),
            Upstream::Servers(_) => None,
        };
        let mut hosts = HostsTable::load(cfg.hosts_file.as_deref(), system_hosts)?;
        for (name, addr) in &cfg.pinned {
            hosts.pin(name, *addr);
        }
        Ok(Self {
            hosts,
            upstream: build_upstream(cfg)?,
            ttl_cap: cfg.ttl_cap,
        })
    }

    /// `owner` is the question name as the client sent it (its case is echoed back);
    /// `host` is its normalised form. `qtype` is A or AAAA.
    pub(crate) async fn resolve(&self, owner: &Name, host: &str, qtype: RecordType) -> Resolution {
        if let Some(pinned) = self.hosts.lookup(host) {
            return self.pinned_answer(owner, pinned, qtype);
        }
        let Ok(mut name) = Name::from_ascii(host) else {
            return Resolution::Failed;
        };
        name.set_fqdn(true); // never let a search domain be appended
        let lookup =
            match tokio::time::timeout(UPSTREAM_LOOKUP_TIMEOUT, self.upstream.lookup(name, qtype))
                .await
            {
                Ok(Ok(lookup)) => lookup,
                Ok(Err(err)) if err.is_nx_domain() => return Resolution::NxDomain,
                Ok(Err(err)) if err.is_no_records_found() => return Resolution::NoData,
                Ok(Err(err)) => {
                    tracing::debug!(%host, %err, "upstream lookup failed");
                    return Resolution::Failed;
                }
                Err(_elapsed) => {
                    tracing::debug!(%host, "upstream lookup timed out");
                    return Resolution::Failed;
                }
            };
        let records = lookup
            .answers()
            .iter()
            .filter(|record| {
                record.record_type() == qtype || record.record_type() == RecordType::CNAME
            })
            .cloned()
            .collect();
        self.answer(records)
    }

    fn pinned_answer(&self, owner: &Name, pinned: &[IpAddr], qtype: RecordType) -> Resolution {
        let ttl = u32::try_from(self.ttl_cap.as_secs()).unwrap_or(u32::MAX);
        let records: Vec<Record> = pinned
            .iter()
            .filter(|addr| match qtype {
                RecordType::A => addr.is_ipv4(),
                RecordType::AAAA => addr.is_ipv6(),
                _ => false,
            })
            .map(|addr| Record::from_rdata(owner.clone(), ttl, RData::from(*addr)))
            .collect();
        if records.is_empty() {
            return Resolution::NoData;
        }
        self.answer(records)
    }

    fn answer(&self, mut records: Vec<Record>) -> Resolution {
        if records.is_empty() {
            return Resolution::NoData;
        }
        let cap = u32::try_from(self.ttl_cap.as_secs()).unwrap_or(u32::MAX);
        for record in &mut records {
            record.ttl = record.ttl.min(cap);
        }
        let ttl = records.iter().map(|record| record.ttl).min().unwrap_or(0);
        let addrs = records
            .iter()
            .filter_map(|record| record.data.ip_addr())
            .collect();
        Resolution::Answer {
            records,
            addrs,
            ttl: Duration::from_secs(u64::from(ttl)),
        }
    }
}

fn build_upstream(cfg: &DnsConfig) -> io::Result<TokioResolver> {
    let (config, mut opts) = match &cfg.upstream {
        Upstream::System => hickory_resolver::system_conf::read_system_conf().map_err(|err| {
            io::Error::other(format!("DNS upstream from /etc/resolv.conf: {err}"))
        })?,
        Upstream::Servers(servers) if servers.is_empty() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "DNS upstream: the server list is empty",
            ));
        }
        Upstream::Servers(servers) => {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let mut udp = ConnectionConfig::udp();
                    udp.port = server.port();
                    let mut tcp = ConnectionConfig::tcp();
                    tcp.port = server.port();
                    NameServerConfig::new(server.ip(), true, vec![udp, tcp])
                })
                .collect();
            (
                ResolverConfig::from_name_servers(name_servers),
                ResolverOpts::default(),
            )
        }
    };
    opts.timeout = UPSTREAM_ATTEMPT_TIMEOUT;
    opts.attempts = UPSTREAM_ATTEMPTS;
    // Hosts files are handled above, with the pinning rule; the resolver must not add its own.
    opts.use_hosts_file = ResolveHosts::Never;
    opts.positive_max_ttl = Some(cfg.ttl_cap);
    opts.negative_max_ttl = Some(NEGATIVE_CACHE_MAX);
    opts.preserve_intermediates = true; // keep the CNAME chain for the client
    let resolver =
        hickory_resolver::Resolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(opts)
            .build()
            .map_err(|err| io::Error::other(format!("DNS upstream resolver: {err}")))?;
    Ok(resolver)
}
