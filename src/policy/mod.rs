//! The one place that says yes or no.
//!
//! Both entry paths (explicit and transparent) turn a connection into [`Facts`]
//! and ask [`admit`] before anything leaves the proxy (not even a DNS lookup for a
//! forbidden name, which would be an exfiltration channel), then [`pick_address`] over
//! the addresses the name resolved to. Every request inside is then checked by
//! [`check_request`]: the connection checks again (a reload may have changed them) and the
//! policy file's rules over its method and normalised path. All are pure functions over
//! plain data, tested by tables below.

pub mod file;
pub mod path;
pub mod pattern;
pub mod rules;

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

use crate::host::{DomainPattern, Host};
pub use path::{NormPath, PathError};
pub use rules::{Action, Agent, RequestPolicy, Rule};

/// Everything the policy is made of, rebuilt as a whole (never mutated in place) when the
/// client list's DNS names re-resolve.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `None`: every client may connect.
    pub clients: Option<Vec<IpNet>>,
    /// `None`: every domain is allowed.
    pub domains: Option<Vec<DomainPattern>>,
    /// `ALLOWED_OTEL_PORTS`: allowed for every host, on top of the entry's own port.
    pub extra_ports: BTreeSet<u16>,
    /// `ALLOWED_ENDPOINTS`: one port on one host.
    pub endpoints: Vec<(Host, u16)>,
    /// `PAUDE_PROXY_ALLOWED_UPSTREAM_NETS`: exceptions to the SSRF guard.
    pub upstream_nets: Vec<IpNet>,
    /// The proxy's own listeners, never a valid upstream.
    pub own_listeners: Vec<SocketAddr>,
    /// `PAUDE_PROXY_POLICY`: request rules and per-agent policies (shared, not copied, when
    /// the client list re-resolves).
    pub requests: Arc<RequestPolicy>,
}

/// How the request reached us; decides the default port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// TLS to intercept: a `CONNECT host:port` tunnel or a redirected TLS connection.
    Tls,
    /// `GET http://host/...`, forwarded as cleartext HTTP.
    PlainHttp,
}

impl Entry {
    pub fn default_port(self) -> u16 {
        match self {
            Entry::Tls => 443,
            Entry::PlainHttp => 80,
        }
    }
}

/// What we know about a request before deciding.
#[derive(Clone, Debug)]
pub struct Facts {
    pub client: IpAddr,
    pub host: Host,
    pub port: u16,
    pub entry: Entry,
}

/// An approved destination: the only address the upstream stage may dial.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub host: Host,
    pub port: u16,
    /// Every address the check approved, in resolver order; never empty. Only these are
    /// ever dialled (DESIGN.md §3.2), so a lookup after the check cannot move the target.
    pub addrs: Vec<IpAddr>,
}

impl Target {
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The approved socket addresses, for dialling.
    pub fn socket_addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.addrs.iter().map(|ip| SocketAddr::new(*ip, self.port))
    }
}

/// For log lines: `1.2.3.4:443` or `1.2.3.4:443,[2001:db8::1]:443`.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, a) in self.socket_addrs().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow(Target),
    Deny(DenyReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DenyReason {
    ClientNotAllowed(IpAddr),
    DomainNotAllowed(Host),
    PortNotAllowed(Host, u16),
    /// The name resolved to nothing usable.
    NoAddress(Host),
    /// Every address is in a range the SSRF guard refuses.
    ForbiddenAddress(Host, IpAddr),
    /// The destination is one of the proxy's own listeners.
    ProxyLoop(SocketAddr),
    /// Transparent mode: the name (SNI or `Host`) was not given to this client for the
    /// address it dialled, and does not resolve to it either.
    AddressMismatch(Host, IpAddr),
    /// Transparent mode: a TLS connection without SNI to an address no IP rule allows.
    NoSni(IpAddr),
    /// A `[[rule]]` with `action = "deny"` matched the request.
    Rule {
        id: String,
        reason: Option<String>,
    },
    /// No rule matched and the default (global or the agent's) is `deny`.
    DefaultDeny {
        agent: Option<String>,
    },
    /// The request's path cannot be normalised safely, so no rule could be trusted on it.
    BadPath(PathError),
    /// Transparent mode: what arrived is not a ClientHello the proxy can route by (why, as
    /// the parser said it; never data from the hello).
    BadClientHello(String),
}

impl DenyReason {
    /// The `X-Proxy-Error` value: one per kind of denial, for scripts and agents to branch on.
    pub fn kind(&self) -> &'static str {
        match self {
            DenyReason::ClientNotAllowed(_) => "blocked-by-client",
            DenyReason::DomainNotAllowed(_) | DenyReason::NoSni(_) => "blocked-by-allowlist",
            DenyReason::PortNotAllowed(..) => "blocked-by-port",
            DenyReason::NoAddress(_) => "blocked-no-address",
            DenyReason::ForbiddenAddress(..) => "blocked-by-ssrf-guard",
            DenyReason::ProxyLoop(_) => "blocked-proxy-loop",
            DenyReason::AddressMismatch(..) => "blocked-by-address-mismatch",
            DenyReason::Rule { .. } => "blocked-by-rule",
            DenyReason::DefaultDeny { .. } => "blocked-by-default",
            DenyReason::BadPath(_) => "blocked-unsafe-path",
            DenyReason::BadClientHello(_) => "blocked-bad-client-hello",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::BadClientHello(why) => write!(f, "unusable ClientHello: {why}"),
            DenyReason::ClientNotAllowed(ip) => {
                write!(f, "client {ip} is not in PAUDE_PROXY_ALLOWED_CLIENTS")
            }
            DenyReason::DomainNotAllowed(h) => write!(f, "domain {h} is not in ALLOWED_DOMAINS"),
            DenyReason::PortNotAllowed(h, p) => write!(
                f,
                "port {p} is not allowed for {h} (add it to ALLOWED_OTEL_PORTS, or {} to ALLOWED_ENDPOINTS)",
                h.with_port(*p)
            ),
            DenyReason::NoAddress(h) => write!(f, "{h} did not resolve to any address"),
            DenyReason::ForbiddenAddress(h, ip) => write!(
                f,
                "{h} resolves to {ip}, a private, loopback or link-local address \
                 (allow it with PAUDE_PROXY_ALLOWED_UPSTREAM_NETS)"
            ),
            DenyReason::ProxyLoop(a) => write!(f, "{a} is the proxy itself"),
            DenyReason::AddressMismatch(h, ip) => write!(
                f,
                "{h} does not resolve to {ip}, the address the connection was made to \
                 (was the name resolved through the sandbox DNS?)"
            ),
            DenyReason::NoSni(ip) => write!(
                f,
                "TLS to {ip} without a server name (SNI); only an IP listed in ALLOWED_DOMAINS may be reached that way"
            ),
            DenyReason::Rule { id, reason } => match reason {
                Some(r) => write!(f, "blocked by rule '{id}': {r}"),
                None => write!(f, "blocked by rule '{id}'"),
            },
            DenyReason::DefaultDeny { agent: Some(a) } => write!(
                f,
                "no rule of agent '{a}' allows this request, and its default is deny"
            ),
            DenyReason::DefaultDeny { agent: None } => {
                write!(
                    f,
                    "no rule allows this request, and the policy default is deny"
                )
            }
            DenyReason::BadPath(e) => write!(f, "refused: {e}, which rules cannot judge safely"),
        }
    }
}

/// Client, domain and port checks: everything that needs no DNS.
pub fn admit(policy: &Policy, facts: &Facts) -> Result<(), DenyReason> {
    if !client_allowed(policy, facts.client) {
        return Err(DenyReason::ClientNotAllowed(facts.client));
    }
    if !domain_allowed(policy, facts.client, &facts.host) {
        return Err(DenyReason::DomainNotAllowed(facts.host.clone()));
    }
    let port_ok = facts.port == facts.entry.default_port()
        || policy.extra_ports.contains(&facts.port)
        || policy
            .endpoints
            .iter()
            .any(|(h, p)| *h == facts.host && *p == facts.port);
    if !port_ok {
        return Err(DenyReason::PortNotAllowed(facts.host.clone(), facts.port));
    }
    Ok(())
}

/// `ALLOWED_DOMAINS`, or the client's agent's `allowed_domains` which replaces it; also what
/// the sandbox DNS answers that client by.
pub fn domain_allowed(policy: &Policy, client: IpAddr, host: &Host) -> bool {
    domain_entry(policy, client, host).is_some()
}

/// Which allowlist entry admits `host` for `client`: `Some(None)` when there is no list.
pub fn domain_entry<'p>(
    policy: &'p Policy,
    client: IpAddr,
    host: &Host,
) -> Option<Option<&'p DomainPattern>> {
    let list = match policy.requests.agent(client) {
        Some(Agent {
            domains: Some(d), ..
        }) => Some(d),
        _ => policy.domains.as_ref(),
    };
    match list {
        None => Some(None),
        Some(domains) => domains.iter().find(|p| p.matches(host)).map(Some),
    }
}

/// Whether `client` may receive the credential of the route named `env_var`: only the ones
/// its agent lists, when it lists any. The one filter applied where a route is looked up.
pub fn credential_allowed(policy: &Policy, client: IpAddr, env_var: &str) -> bool {
    match policy.requests.agent(client) {
        Some(Agent {
            credentials: Some(list),
            ..
        }) => list.iter().any(|c| c == env_var),
        _ => true,
    }
}

/// One request inside an admitted connection (or a plain-HTTP request).
#[derive(Clone, Copy, Debug)]
pub struct RequestLine<'a> {
    pub method: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// What allowed a request, for the log, the audit log and `policy explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Allowed {
    Rule(String),
    Default,
}

impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Allowed::Rule(id) => write!(f, "rule:{id}"),
            Allowed::Default => f.write_str("default"),
        }
    }
}

/// The per-request decision: the connection checks again ([`admit`]: a reload may have
/// changed them since the tunnel opened), then the first matching rule of the client's agent
/// (or the global rules), else the default. Pure.
pub fn check_request(
    policy: &Policy,
    facts: &Facts,
    req: &RequestLine<'_>,
) -> Result<Allowed, DenyReason> {
    admit(policy, facts)?;
    let agent = policy.requests.agent(facts.client);
    let (rules, default) = match agent {
        Some(a) => (&a.rules, a.default),
        None => (&policy.requests.rules, policy.requests.default),
    };
    // Nothing to match against: skip the normalisation, so no file means no new refusals.
    if rules.is_empty() && default == Action::Allow {
        return Ok(Allowed::Default);
    }
    let path = path::normalise(req.path, req.query).map_err(DenyReason::BadPath)?;
    match rules.first_match(&facts.host, req.method, &path) {
        Some(rule) if rule.action == Action::Allow => Ok(Allowed::Rule(rule.id.clone())),
        Some(rule) => Err(DenyReason::Rule {
            id: rule.id.clone(),
            reason: rule.reason.clone(),
        }),
        None if default == Action::Allow => Ok(Allowed::Default),
        None => Err(DenyReason::DefaultDeny {
            agent: agent.map(|a| a.name.clone()),
        }),
    }
}

pub fn client_allowed(policy: &Policy, client: IpAddr) -> bool {
    let client = client.to_canonical();
    match &policy.clients {
        None => true,
        Some(nets) => nets.iter().any(|n| n.contains(&client)),
    }
}

/// The SSRF guard: the first resolved address that may be dialled.
///
/// `is_local` says whether an address belongs to this host: a listener bound to all
/// interfaces is reachable on every local address (an agent dialling its gateway's
/// `10.200.0.1:3128` must not make the proxy dial itself).
pub fn pick_address(
    policy: &Policy,
    host: &Host,
    port: u16,
    addrs: &[IpAddr],
    is_local: &dyn Fn(IpAddr) -> bool,
) -> Result<Vec<IpAddr>, DenyReason> {
    let mut refused = None;
    let mut approved: Vec<IpAddr> = Vec::new();
    for ip in addrs.iter().map(|ip| ip.to_canonical()) {
        let addr = SocketAddr::new(ip, port);
        // One address that loops back into the proxy condemns the name: its owner is
        // pointing it at us.
        if is_own_listener(policy, addr, is_local) {
            return Err(DenyReason::ProxyLoop(addr));
        }
        if is_forbidden(ip) && !policy.upstream_nets.iter().any(|n| n.contains(&ip)) {
            refused.get_or_insert(ip);
            continue;
        }
        if !approved.contains(&ip) {
            approved.push(ip);
        }
    }
    if !approved.is_empty() {
        return Ok(approved);
    }
    Err(match refused {
        Some(ip) => DenyReason::ForbiddenAddress(host.clone(), ip),
        None => DenyReason::NoAddress(host.clone()),
    })
}

/// [`admit`] and [`pick_address`] in one, for callers that already hold the addresses.
pub fn decide(
    policy: &Policy,
    facts: &Facts,
    addrs: &[IpAddr],
    is_local: &dyn Fn(IpAddr) -> bool,
) -> Verdict {
    let checked = admit(policy, facts)
        .and_then(|()| pick_address(policy, &facts.host, facts.port, addrs, is_local));
    match checked {
        Ok(addrs) => Verdict::Allow(Target {
            host: facts.host.clone(),
            port: facts.port,
            addrs,
        }),
        Err(reason) => Verdict::Deny(reason),
    }
}

fn is_own_listener(policy: &Policy, addr: SocketAddr, is_local: &dyn Fn(IpAddr) -> bool) -> bool {
    policy.own_listeners.iter().any(|l| {
        l.port() == addr.port()
            && (l.ip().to_canonical() == addr.ip()
                || (l.ip().is_unspecified()
                    && (addr.ip().is_loopback()
                        || addr.ip().is_unspecified()
                        || is_local(addr.ip()))))
    })
}

/// Ranges an upstream may never be in (DESIGN.md §3.6): the host itself, its neighbours
/// and metadata services. IPv6 forms that embed an IPv4 address are judged by that address.
pub fn is_forbidden(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_forbidden_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => is_forbidden_v4(v4),
            None => is_forbidden_v6(v6),
        },
    }
}

fn is_forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_unspecified()
        || a == 0                               // "this network"
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()                   // 169.254/16, cloud metadata
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0)       // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b))  // benchmarking 198.18/15
        || ip.is_multicast()
        || a >= 240 // reserved and broadcast
}

fn is_forbidden_v6(ip: Ipv6Addr) -> bool {
    let seg0 = ip.segments()[0];
    ip.is_unspecified()
        || ip.is_loopback()
        || (seg0 & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg0 & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg0 & 0xffc0) == 0xfec0 // deprecated site-local
        || ip.is_multicast()
}

/// The IPv4 address inside an IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) or
/// 6to4 (2002::/16) address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let o = ip.octets();
    let last32 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if s[..6] == [0, 0, 0, 0, 0, 0] && !ip.is_loopback() && !ip.is_unspecified() {
        return Some(last32); // deprecated IPv4-compatible ::a.b.c.d
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(last32);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn policy() -> Policy {
        Policy {
            clients: Some(vec!["10.0.0.0/24".parse().unwrap()]),
            domains: Some(
                [
                    ".example.test",
                    "github.com",
                    "~^[a-z]+\\.example\\.org$",
                    "1.2.3.4",
                ]
                .iter()
                .map(|p| DomainPattern::parse(p).unwrap())
                .collect(),
            ),
            extra_ports: [4318].into_iter().collect(),
            endpoints: vec![(h("github.com"), 8443), (h("evil.com"), 22)],
            upstream_nets: vec!["10.9.0.0/16".parse().unwrap()],
            own_listeners: vec!["0.0.0.0:3128".parse().unwrap()],
            requests: Default::default(),
        }
    }

    fn facts(client: &str, host: &str, port: u16, entry: Entry) -> Facts {
        Facts {
            client: ip(client),
            host: h(host),
            port,
            entry,
        }
    }

    #[test]
    fn admit_table() {
        use DenyReason::*;
        use Entry::*;
        let p = policy();
        let table: Vec<(Facts, Result<(), DenyReason>)> = vec![
            (facts("10.0.0.5", "api.example.test", 443, Tls), Ok(())),
            (
                facts("::ffff:10.0.0.5", "api.example.test", 443, Tls),
                Ok(()),
            ),
            (
                facts("10.0.1.5", "api.example.test", 443, Tls),
                Err(ClientNotAllowed(ip("10.0.1.5"))),
            ),
            (
                facts("10.0.0.5", "evil-example.test", 443, Tls),
                Err(DomainNotAllowed(h("evil-example.test"))),
            ),
            (facts("10.0.0.5", "api.example.test", 80, PlainHttp), Ok(())),
            (
                facts("10.0.0.5", "api.example.test", 80, Tls),
                Err(PortNotAllowed(h("api.example.test"), 80)),
            ),
            (
                facts("10.0.0.5", "api.example.test", 443, PlainHttp),
                Err(PortNotAllowed(h("api.example.test"), 443)),
            ),
            (facts("10.0.0.5", "api.example.test", 4318, Tls), Ok(())),
            (facts("10.0.0.5", "github.com", 8443, Tls), Ok(())),
            (
                facts("10.0.0.5", "api.github.com", 8443, Tls),
                Err(DomainNotAllowed(h("api.github.com"))),
            ),
            (
                facts("10.0.0.5", "api.example.test", 8443, Tls),
                Err(PortNotAllowed(h("api.example.test"), 8443)),
            ),
            // An endpoint exception never bypasses ALLOWED_DOMAINS.
            (
                facts("10.0.0.5", "evil.com", 22, Tls),
                Err(DomainNotAllowed(h("evil.com"))),
            ),
            (facts("10.0.0.5", "abc.example.org", 443, Tls), Ok(())),
            (
                facts("10.0.0.5", "a.b.example.org", 443, Tls),
                Err(DomainNotAllowed(h("a.b.example.org"))),
            ),
            (facts("10.0.0.5", "1.2.3.4", 443, Tls), Ok(())),
        ];
        for (f, want) in table {
            assert_eq!(admit(&p, &f), want, "{f:?}");
        }
    }

    #[test]
    fn no_lists_means_allow_all_on_default_ports() {
        let p = Policy::default();
        assert_eq!(
            admit(&p, &facts("8.8.8.8", "anything.net", 443, Entry::Tls)),
            Ok(())
        );
        assert!(admit(&p, &facts("8.8.8.8", "anything.net", 25, Entry::Tls)).is_err());
    }

    #[test]
    fn ssrf_table() {
        let p = policy();
        let forbidden = [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "::7f00:1",
        ];
        for a in forbidden {
            assert_eq!(
                pick_address(&p, &h("x.com"), 443, &[ip(a)], &|_| false),
                Err(DenyReason::ForbiddenAddress(
                    h("x.com"),
                    ip(a).to_canonical()
                )),
                "{a}"
            );
        }
        for a in ["8.8.8.8", "2606:4700::1111", "10.9.1.1", "::ffff:8.8.4.4"] {
            assert!(
                pick_address(&p, &h("x.com"), 443, &[ip(a)], &|_| false).is_ok(),
                "{a}"
            );
        }
        // Forbidden addresses are skipped; every usable one is kept, in order, once.
        assert_eq!(
            pick_address(
                &p,
                &h("x.com"),
                443,
                &[
                    ip("127.0.0.1"),
                    ip("8.8.8.8"),
                    ip("2606:4700::1111"),
                    ip("8.8.8.8")
                ],
                &|_| false
            ),
            Ok(vec![ip("8.8.8.8"), ip("2606:4700::1111")])
        );
        assert_eq!(
            pick_address(&p, &h("x.com"), 443, &[], &|_| false),
            Err(DenyReason::NoAddress(h("x.com")))
        );
    }

    #[test]
    fn own_listener_is_refused_even_when_exempted() {
        let mut p = policy();
        p.upstream_nets.push("127.0.0.0/8".parse().unwrap());
        assert_eq!(
            pick_address(&p, &h("x.com"), 3128, &[ip("127.0.0.1")], &|_| false),
            Err(DenyReason::ProxyLoop("127.0.0.1:3128".parse().unwrap()))
        );
        assert!(pick_address(&p, &h("x.com"), 3129, &[ip("127.0.0.1")], &|_| false).is_ok());
        // An all-interfaces listener is reachable on every local address.
        p.upstream_nets.push("10.200.0.0/16".parse().unwrap());
        let gateway = |a: IpAddr| a == ip("10.200.0.1");
        assert_eq!(
            pick_address(&p, &h("x.com"), 3128, &[ip("10.200.0.1")], &gateway),
            Err(DenyReason::ProxyLoop("10.200.0.1:3128".parse().unwrap()))
        );
        assert!(pick_address(&p, &h("x.com"), 3128, &[ip("10.200.0.2")], &gateway).is_ok());
    }

    #[test]
    fn decide_composes_both() {
        let p = policy();
        let f = facts("10.0.0.5", "api.example.test", 443, Entry::Tls);
        assert_eq!(
            decide(&p, &f, &[ip("8.8.8.8")], &|_| false),
            Verdict::Allow(Target {
                host: h("api.example.test"),
                port: 443,
                addrs: vec![ip("8.8.8.8")]
            })
        );
        assert!(matches!(
            decide(&p, &f, &[ip("10.0.0.1")], &|_| false),
            Verdict::Deny(DenyReason::ForbiddenAddress(..))
        ));
    }

    const RULES: &str = r#"
default = "allow"

[[rule]]
id = "github-read-only"
hosts = ["api.github.com"]
methods = ["GET", "HEAD"]
action = "allow"

[[rule]]
id = "github-no-writes"
hosts = ["api.github.com"]
action = "deny"
reason = "the GitHub API is read-only from the sandbox"

[[rule]]
id = "no-push"
hosts = ["github.com"]
paths = ["/**/git-receive-pack", "/**/info/refs?service=git-receive-pack"]
action = "deny"
reason = "pushing from the sandbox is not allowed"

[[rule]]
id = "uploads"
hosts = [".example.test"]
methods = ["POST"]
paths = ["/v1/files/**", "/v1/fine_tuning/**"]
action = "deny"

[[agent]]
name = "reader"
clients = ["10.200.0.2/32"]
allowed_domains = [".example.test", "api.github.com"]
credentials = ["EXAMPLE_API_KEY"]
rules = ["github-read-only", "github-no-writes"]

[[agent]]
name = "locked"
clients = ["10.200.0.3"]
default = "deny"
rules = ["github-read-only"]
"#;

    fn rules_policy() -> Policy {
        let requests = file::parse(RULES, &|v| v == "EXAMPLE_API_KEY").unwrap();
        Policy {
            domains: None,
            clients: None,
            requests: Arc::new(requests),
            ..policy()
        }
    }

    #[test]
    fn request_rule_table() {
        let p = rules_policy();
        let allow = |id: &str| Ok(Allowed::Rule(id.to_string()));
        let deny = |id: &str| -> Result<Allowed, DenyReason> {
            Err(DenyReason::Rule {
                id: id.into(),
                reason: match id {
                    "github-no-writes" => {
                        Some("the GitHub API is read-only from the sandbox".into())
                    }
                    "no-push" => Some("pushing from the sandbox is not allowed".into()),
                    _ => None,
                },
            })
        };
        let any = "10.0.0.5";
        type Case<'a> = (
            &'a str,
            &'a str,
            &'a str,
            &'a str,
            Result<Allowed, DenyReason>,
        );
        let table: Vec<Case> = vec![
            // Methods, first match decides, case-insensitive method and host.
            (
                any,
                "GET",
                "api.github.com",
                "/repos/o/r",
                allow("github-read-only"),
            ),
            (
                any,
                "head",
                "API.GitHub.com.",
                "/",
                allow("github-read-only"),
            ),
            (
                any,
                "POST",
                "api.github.com",
                "/repos/o/r/issues",
                deny("github-no-writes"),
            ),
            (
                any,
                "DELETE",
                "api.github.com",
                "/repos/o/r",
                deny("github-no-writes"),
            ),
            // Paths and queries.
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "GET",
                "github.com",
                "/o/r.git/info/refs?service=git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "GET",
                "github.com",
                "/o/r.git/info/refs?service=git-upload-pack",
                Ok(Allowed::Default),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/git-upload-pack",
                Ok(Allowed::Default),
            ),
            // Normalisation bypasses: every spelling of the push path is caught.
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/x/../git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "github.com",
                "//o//r.git//git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/git-receive-pack/",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/%67it-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/git%2Dreceive%2Dpack",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/x/%2e%2e/git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/x/.%2E/git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/./git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "POST",
                "GitHub.COM.",
                "/o/r/git-receive-pack",
                deny("no-push"),
            ),
            (
                any,
                "GET",
                "github.com",
                "/o/r/info/refs?x=1&service=git%2Dreceive-pack",
                deny("no-push"),
            ),
            // Unsafe paths are refused outright.
            (
                any,
                "POST",
                "github.com",
                "/o/r.git/git-receive-pack%2f",
                Err(DenyReason::BadPath(PathError::EncodedSeparator)),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o\\r/git-receive-pack",
                Err(DenyReason::BadPath(PathError::Backslash)),
            ),
            (
                any,
                "POST",
                "github.com",
                "/o/r/git-receive-pack;x",
                Err(DenyReason::BadPath(PathError::PathParameter)),
            ),
            (
                any,
                "POST",
                "github.com",
                "/../git-receive-pack",
                Err(DenyReason::BadPath(PathError::AboveRoot)),
            ),
            (
                any,
                "GET",
                "github.com",
                "/%zz",
                Err(DenyReason::BadPath(PathError::BadPercent)),
            ),
            // Path case matters; suffix hosts; a look-alike host matches no rule.
            (
                any,
                "POST",
                "github.com",
                "/o/r/GIT-RECEIVE-PACK",
                Ok(Allowed::Default),
            ),
            (
                any,
                "POST",
                "api.example.test",
                "/v1/files/abc",
                deny("uploads"),
            ),
            (
                any,
                "POST",
                "api.example.test",
                "/v1/chat/completions",
                Ok(Allowed::Default),
            ),
            (
                any,
                "POST",
                "evil-example.test",
                "/v1/files/abc",
                Ok(Allowed::Default),
            ),
            // The agent uses only its listed rules: no-push is not among them.
            (
                "10.200.0.2",
                "POST",
                "api.github.com",
                "/x",
                deny("github-no-writes"),
            ),
            (
                "10.200.0.2",
                "GET",
                "api.github.com",
                "/x",
                allow("github-read-only"),
            ),
            // ... and its allowlist replaces ALLOWED_DOMAINS (connection check first).
            (
                "10.200.0.2",
                "POST",
                "github.com",
                "/o/r/git-receive-pack",
                Err(DenyReason::DomainNotAllowed(h("github.com"))),
            ),
            (
                "10.200.0.2",
                "POST",
                "api.example.test",
                "/v1/files/x",
                Ok(Allowed::Default),
            ),
            // An agent with default deny.
            (
                "10.200.0.3",
                "GET",
                "api.github.com",
                "/x",
                allow("github-read-only"),
            ),
            (
                "10.200.0.3",
                "POST",
                "api.github.com",
                "/x",
                Err(DenyReason::DefaultDeny {
                    agent: Some("locked".into()),
                }),
            ),
            (
                "10.200.0.3",
                "GET",
                "api.example.test",
                "/v1/models",
                Err(DenyReason::DefaultDeny {
                    agent: Some("locked".into()),
                }),
            ),
        ];
        for (client, method, host, target, want) in table {
            let (path, query) = match target.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (target, None),
            };
            let f = facts(client, host, 443, Entry::Tls);
            let req = RequestLine {
                method,
                path,
                query,
            };
            assert_eq!(
                check_request(&p, &f, &req),
                want,
                "{client} {method} {host}{target}"
            );
        }
    }

    #[test]
    fn global_default_deny_and_no_file() {
        let mut p = rules_policy();
        let f = facts("10.0.0.5", "example.com", 443, Entry::Tls);
        let req = RequestLine {
            method: "GET",
            path: "/%zz",
            query: None,
        };
        // No file: nothing is normalised, nothing new is refused.
        p.requests = Arc::default();
        assert_eq!(check_request(&p, &f, &req), Ok(Allowed::Default));
        let strict = file::parse("default = \"deny\"", &|_| false).unwrap();
        p.requests = Arc::new(strict);
        let ok_path = RequestLine {
            method: "GET",
            path: "/",
            query: None,
        };
        assert_eq!(
            check_request(&p, &f, &ok_path),
            Err(DenyReason::DefaultDeny { agent: None })
        );
    }

    #[test]
    fn agent_scoping_of_domains_and_credentials() {
        let p = Policy {
            domains: Some(vec![DomainPattern::parse("github.com").unwrap()]),
            ..rules_policy()
        };
        let reader = ip("10.200.0.2");
        let other = ip("10.0.0.9");
        assert!(domain_allowed(&p, reader, &h("api.example.test")));
        assert!(!domain_allowed(&p, reader, &h("github.com")));
        assert!(domain_allowed(&p, other, &h("github.com")));
        assert!(!domain_allowed(&p, other, &h("api.example.test")));
        assert!(credential_allowed(&p, reader, "EXAMPLE_API_KEY"));
        assert!(!credential_allowed(&p, reader, "GH_TOKEN"));
        assert!(credential_allowed(&p, other, "GH_TOKEN"));
        // An agent without `credentials` may use every route.
        assert!(credential_allowed(&p, ip("10.200.0.3"), "GH_TOKEN"));
    }

    #[test]
    fn every_denial_has_a_kind() {
        assert_eq!(
            DenyReason::Rule {
                id: "x".into(),
                reason: None
            }
            .kind(),
            "blocked-by-rule"
        );
        assert_eq!(
            DenyReason::DomainNotAllowed(h("a.com")).kind(),
            "blocked-by-allowlist"
        );
        assert_eq!(
            DenyReason::PortNotAllowed(h("a.com"), 1).kind(),
            "blocked-by-port"
        );
        assert_eq!(
            DenyReason::ClientNotAllowed(ip("1.2.3.4")).kind(),
            "blocked-by-client"
        );
    }
}
