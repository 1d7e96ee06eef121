//! Command line and environment → a validated [`Config`]. Every setting is an environment
//! variable (the Go original's names) and a `--flag`. Parsing happens once, here; a bad
//! value is a [`ConfigError`] that names the variable, the value and what was expected.

use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use ipnet::IpNet;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::host::{Host, parse_authority, parse_patterns, parse_port, split_list};
use crate::inject::{DEFAULT_CREDENTIALS_JSON, Routes};
use crate::limits::{Limits, RawLimits};
use crate::policy::Policy;

pub const DEFAULT_CA_DIR: &str = "/data/ca";
/// Where the CA goes when `PAUDE_PROXY_CA_DIR` is unset and `/data/ca` is not writable
/// (a developer running `cargo run` on a laptop).
pub const FALLBACK_CA_DIR: &str = "paude-proxy-ca";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "paude-proxy",
    version,
    about = "Credential-injecting HTTPS interception proxy: the agent holds dummy keys, the proxy injects the real ones.",
    after_help = "Every option can also be set through the environment variable shown beside it.\n\n\
Credentials (embedded routing table; see README \"Credential routing\"): values in \
CLAUDE_CODE_OAUTH_TOKEN, ANTHROPIC_API_KEY, OPENAI_API_KEY, CURSOR_API_KEY, GH_TOKEN; \
file paths in ANTHROPIC_OAUTH_CREDS_FILE (Claude subscription), CHATGPT_AUTH_FILE \
(ChatGPT/Codex; rotated tokens in PAUDE_PROXY_CHATGPT_AUTH_STATE_FILE), \
GOOGLE_APPLICATION_CREDENTIALS (or inline GCP_ADC_JSON). The agent holds dummies or the \
files `paude-proxy stub claude|codex|adc` prints."
)]
pub struct Args {
    /// Explicit proxy listener, `[ip]:port` (`:3128` = all interfaces).
    #[arg(long, env = "PAUDE_PROXY_LISTEN", default_value = ":3128")]
    pub listen: String,

    /// Transparent listener for nftables-redirected TCP, TLS or plain HTTP (detected),
    /// e.g. `:3129` [default: off].
    #[arg(long, env = "PAUDE_PROXY_TRANSPARENT_LISTEN")]
    pub transparent_listen: Option<String>,

    /// Sandbox DNS server, UDP and TCP, e.g. `:3153` [default: off].
    #[arg(long, env = "PAUDE_PROXY_DNS_LISTEN")]
    pub dns_listen: Option<String>,

    /// Admin listener with `/healthz` and `/metrics`, e.g. `127.0.0.1:9090`; keep it away from
    /// agents [default: off].
    #[arg(long, env = "PAUDE_PROXY_ADMIN_LISTEN")]
    pub admin_listen: Option<String>,

    /// Resolvers the sandbox DNS server asks, `ip[:port]`, comma-separated
    /// [default: /etc/resolv.conf, after /etc/hosts].
    #[arg(long, env = "PAUDE_PROXY_DNS_UPSTREAM")]
    pub dns_upstream: Option<String>,

    /// Directory holding ca.crt (0644) and ca.key (0600); created and reused across restarts
    /// [default: /data/ca, or ./paude-proxy-ca when /data/ca is not writable].
    #[arg(long, env = "PAUDE_PROXY_CA_DIR")]
    pub ca_dir: Option<PathBuf>,

    /// Debug logging: 1/true/yes or 0/false/no (RUST_LOG also works).
    #[arg(long, env = "PAUDE_PROXY_VERBOSE", default_value = "0")]
    pub verbose: String,

    /// Clients allowed to connect: IPs, CIDRs and DNS names (re-resolved every 30 s),
    /// comma-separated [default: all].
    #[arg(long, env = "PAUDE_PROXY_ALLOWED_CLIENTS", default_value = "")]
    pub allowed_clients: String,

    /// Domain allowlist: `exact.host`, `.suffix.com` (the domain and its subdomains),
    /// `~regex` (case-insensitive), comma-separated [default: allow all].
    #[arg(long, env = "ALLOWED_DOMAINS", default_value = "")]
    pub allowed_domains: String,

    /// Extra destination ports allowed for every host, besides 443 (CONNECT) and 80 (http://).
    #[arg(long, env = "ALLOWED_OTEL_PORTS", default_value = "")]
    pub allowed_otel_ports: String,

    /// Exact `host:port` exceptions: one extra port on one host, still subject to
    /// ALLOWED_DOMAINS.
    #[arg(long, env = "ALLOWED_ENDPOINTS", default_value = "")]
    pub allowed_endpoints: String,

    /// Squid-format log of denied requests.
    #[arg(
        long,
        env = "BLOCKED_LOG_PATH",
        default_value = "/tmp/squid-blocked.log"
    )]
    pub blocked_log_path: PathBuf,

    /// JSON credential routing table [default: the embedded table].
    #[arg(long, env = "PAUDE_PROXY_CREDENTIALS_CONFIG")]
    pub credentials_config: Option<PathBuf>,

    /// PEM file of extra root certificates trusted for upstream TLS (besides system roots).
    #[arg(long, env = "PAUDE_PROXY_UPSTREAM_CA")]
    pub upstream_ca: Option<PathBuf>,

    /// CIDRs exempt from the SSRF guard (private, loopback, link-local ranges are refused
    /// otherwise), comma-separated.
    #[arg(long, env = "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS", default_value = "")]
    pub allowed_upstream_nets: String,

    /// Extra hosts file (/etc/hosts format) consulted before system DNS.
    #[arg(long, env = "PAUDE_PROXY_HOSTS_FILE")]
    pub hosts_file: Option<PathBuf>,

    /// Seconds from sending a request upstream to its response head; past it the client
    /// gets 504 [default: 600, LLM calls are slow].
    #[arg(
        long,
        env = "PAUDE_PROXY_RESPONSE_HEADER_TIMEOUT",
        default_value = "",
        hide_default_value = true
    )]
    pub response_header_timeout: String,

    /// Seconds a client connection may sit with no request in flight (HTTP/1.1 keep-alive
    /// and HTTP/2) [default: 120].
    #[arg(
        long,
        env = "PAUDE_PROXY_CLIENT_IDLE_TIMEOUT",
        default_value = "",
        hide_default_value = true
    )]
    pub client_idle_timeout: String,

    /// Seconds an unused pooled upstream connection is kept [default: 50].
    #[arg(
        long,
        env = "PAUDE_PROXY_UPSTREAM_IDLE_TIMEOUT",
        default_value = "",
        hide_default_value = true
    )]
    pub upstream_idle_timeout: String,

    /// Idle pooled upstream connections kept, all destinations together [default: 512].
    #[arg(
        long,
        env = "PAUDE_PROXY_MAX_IDLE_UPSTREAM",
        default_value = "",
        hide_default_value = true
    )]
    pub max_idle_upstream: String,

    /// Concurrent client connections; the excess is closed at once [default: 10000].
    #[arg(
        long,
        env = "PAUDE_PROXY_MAX_CONNECTIONS",
        default_value = "",
        hide_default_value = true
    )]
    pub max_connections: String,

    /// Seconds that requests in flight may take to finish after SIGTERM/SIGINT; a second
    /// signal exits at once [default: 10].
    #[arg(
        long,
        env = "PAUDE_PROXY_SHUTDOWN_GRACE",
        default_value = "",
        hide_default_value = true
    )]
    pub shutdown_grace: String,

    /// Validate the configuration, print a summary and exit.
    #[arg(long)]
    pub check_config: bool,

    // Request rules (issue 12).
    /// Policy file (TOML): request rules by host, method and path, and per-agent policies
    /// [default: none, the environment settings alone].
    #[arg(long, env = "PAUDE_PROXY_POLICY")]
    pub policy: Option<PathBuf>,

    /// Audit log: one JSON line per request and per refused connection [default: off].
    #[arg(long, env = "PAUDE_PROXY_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,

    /// Learning mode: record every distinct (agent, host, port, method, path shape) seen into
    /// this file, for `paude-proxy policy suggest` [default: off].
    #[arg(long, env = "PAUDE_PROXY_LEARN")]
    pub learn: Option<PathBuf>,

    /// Without a command, the proxy runs.
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Print the stub Google Application Default Credentials JSON that the agent should
    /// hold (GOOGLE_APPLICATION_CREDENTIALS=<file>), and exit. Same as `stub adc`.
    StubAdc,
    /// Print the placeholder credentials file an agent should hold instead of the real one,
    /// and exit.
    Stub {
        #[arg(value_enum)]
        which: StubKind,
    },
    // Deployment helpers (src/cli/): they print and exit.
    /// Print the credential variables the routing table names (embedded, or
    /// PAUDE_PROXY_CREDENTIALS_CONFIG) and exit.
    Routes {
        /// One `value|path|unset NAME` line per variable, for scripts: `value` gets a dummy,
        /// `path` holds a file path (stub file or nothing), `unset` is never passed on.
        #[arg(long)]
        vars: bool,
    },
    /// Make clients trust the proxy CA: `ca env` prints the variables, `ca bundle OUT`
    /// writes system roots plus the proxy CA.
    Ca {
        #[command(subcommand)]
        command: crate::cli::ca::CaCommand,
    },
    /// GET /healthz on PAUDE_PROXY_ADMIN_LISTEN: exit 0 when it answers 200, 1 otherwise
    /// (a container HEALTHCHECK without curl).
    Healthcheck,
    /// Request rules: check a policy file, explain a decision, suggest a policy.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

/// The stub files `paude-proxy stub` prints.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum StubKind {
    /// Google Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS=<file>).
    Adc,
    /// Claude Code's `~/.claude/.credentials.json` (for ANTHROPIC_OAUTH_CREDS_FILE).
    Claude,
    /// Codex's `~/.codex/auth.json` after a ChatGPT sign-in (for CHATGPT_AUTH_FILE).
    Codex,
}

#[derive(clap::Subcommand, Debug, Clone, PartialEq, Eq)]
pub enum PolicyCommand {
    /// Validate a policy file and print its agents, rules and credentials.
    Check { file: PathBuf },
    /// Print the decision for a request under the current configuration, sending nothing.
    Explain {
        /// The client address the request comes from [default: 127.0.0.1].
        #[arg(long)]
        client: Option<IpAddr>,
        method: String,
        url: String,
    },
    /// Turn a PAUDE_PROXY_LEARN record into a policy file that allows exactly that traffic.
    Suggest { file: PathBuf },
}

/// A bad setting: which variable, what it held, what was expected. One line.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}={:?}: ", self.var, self.value)?;
        // The problem often quotes the bad item of a list; escape what would break the line.
        for c in self.problem.chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn bad(var: &'static str, value: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        var,
        value: value.into(),
        problem: problem.into(),
    }
}

/// Where to listen: one address, or all interfaces on a port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Addr(SocketAddr),
    AllInterfaces(u16),
}

pub struct Config {
    pub listen: ListenAddr,
    pub transparent_listen: Option<ListenAddr>,
    pub dns_listen: Option<ListenAddr>,
    pub admin_listen: Option<ListenAddr>,
    /// Empty: the system resolver configuration.
    pub dns_upstream: Vec<SocketAddr>,
    pub hosts_file: Option<PathBuf>,
    /// `None`: the default, with the fallback for a non-writable `/data/ca`.
    pub ca_dir: Option<PathBuf>,
    pub verbose: bool,
    pub policy: Policy,
    /// DNS names from PAUDE_PROXY_ALLOWED_CLIENTS, resolved at startup and periodically.
    pub client_names: Vec<Host>,
    pub routes: Routes,
    pub blocked_log_path: PathBuf,
    pub upstream_ca: Vec<CertificateDer<'static>>,
    pub hosts: HashMap<Host, Vec<IpAddr>>,
    pub limits: Limits,
    pub check_config: bool,
    /// The `@name` presets ALLOWED_DOMAINS used, for `--check-config`.
    pub presets: Vec<&'static crate::presets::Preset>,
    pub audit_log: Option<PathBuf>,
    pub learn: Option<PathBuf>,
}

impl Config {
    /// `env` supplies credential values; tests pass a closure, `main` the process env.
    pub fn from_args(
        args: Args,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let listen = parse_listen("PAUDE_PROXY_LISTEN", &args.listen)?;
        let optional = |var, raw: &Option<String>| match raw.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(r) => parse_listen(var, r).map(Some),
        };
        let transparent_listen =
            optional("PAUDE_PROXY_TRANSPARENT_LISTEN", &args.transparent_listen)?;
        let dns_listen = optional("PAUDE_PROXY_DNS_LISTEN", &args.dns_listen)?;
        let admin_listen = optional("PAUDE_PROXY_ADMIN_LISTEN", &args.admin_listen)?;
        let dns_upstream = split_list(args.dns_upstream.as_deref().unwrap_or(""))
            .map(|s| {
                s.parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                    .map_err(|_| {
                        bad(
                            "PAUDE_PROXY_DNS_UPSTREAM",
                            args.dns_upstream.clone().unwrap_or_default(),
                            format!("'{s}' is not ip or ip:port"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let verbose = parse_bool("PAUDE_PROXY_VERBOSE", &args.verbose)?;
        let (client_nets, client_names) = parse_clients(&args.allowed_clients)?;
        // `@name` agent presets expand before parsing (src/presets.rs).
        let (domains, presets) = match args.allowed_domains.trim() {
            "" => (None, Vec::new()),
            list => {
                let (expanded, used) =
                    crate::presets::expand(list).map_err(|e| bad("ALLOWED_DOMAINS", list, e))?;
                let patterns = parse_patterns(&expanded)
                    .map_err(|e| bad("ALLOWED_DOMAINS", list, e.to_string()))?;
                (Some(patterns), used)
            }
        };
        let extra_ports = split_list(&args.allowed_otel_ports)
            .map(|p| {
                parse_port(p).map_err(|_| {
                    bad(
                        "ALLOWED_OTEL_PORTS",
                        &args.allowed_otel_ports,
                        format!("'{p}' is not a port in 1..65535"),
                    )
                })
            })
            .collect::<Result<BTreeSet<u16>, _>>()?;
        let endpoints = split_list(&args.allowed_endpoints)
            .map(|e| {
                parse_endpoint(e)
                    .map_err(|why| bad("ALLOWED_ENDPOINTS", &args.allowed_endpoints, why))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let upstream_nets = split_list(&args.allowed_upstream_nets)
            .map(|n| {
                parse_net(n).ok_or_else(|| {
                    bad(
                        "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS",
                        &args.allowed_upstream_nets,
                        format!("'{n}' is not an IP address or CIDR like 10.0.0.0/8"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes = load_routes(args.credentials_config.as_ref(), env)?;
        let limits = Limits::parse(&RawLimits {
            response_header: &args.response_header_timeout,
            client_idle: &args.client_idle_timeout,
            upstream_idle: &args.upstream_idle_timeout,
            max_idle_upstream: &args.max_idle_upstream,
            max_connections: &args.max_connections,
            shutdown_grace: &args.shutdown_grace,
        })?;
        let requests = match &args.policy {
            None => Default::default(),
            Some(path) => std::sync::Arc::new(load_policy(path, &routes)?),
        };
        let upstream_ca = match &args.upstream_ca {
            None => Vec::new(),
            Some(path) => load_pem_certs(path)
                .map_err(|why| bad("PAUDE_PROXY_UPSTREAM_CA", path.display().to_string(), why))?,
        };
        let hosts = match &args.hosts_file {
            None => HashMap::new(),
            Some(path) => crate::resolve::parse_hosts_file(path)
                .map_err(|why| bad("PAUDE_PROXY_HOSTS_FILE", path.display().to_string(), why))?,
        };
        if let Some(dir) = &args.ca_dir
            && dir.as_os_str().is_empty()
        {
            return Err(bad("PAUDE_PROXY_CA_DIR", "", "expected a directory path"));
        }
        let clients = if client_nets.is_empty() && client_names.is_empty() {
            None
        } else {
            Some(client_nets)
        };
        Ok(Config {
            listen,
            transparent_listen,
            dns_listen,
            admin_listen,
            dns_upstream,
            hosts_file: args.hosts_file.clone(),
            ca_dir: args.ca_dir,
            verbose,
            policy: Policy {
                clients,
                domains,
                extra_ports,
                endpoints,
                upstream_nets,
                own_listeners: Vec::new(),
                requests,
            },
            client_names,
            routes,
            blocked_log_path: args.blocked_log_path,
            upstream_ca,
            hosts,
            limits,
            check_config: args.check_config,
            presets,
            audit_log: args.audit_log,
            learn: args.learn,
        })
    }
}

pub(crate) fn parse_listen(var: &'static str, raw: &str) -> Result<ListenAddr, ConfigError> {
    let expected = "expected [ip]:port, e.g. :3128, 127.0.0.1:3128 or [::1]:3128";
    if let Some(port) = raw.strip_prefix(':') {
        return port
            .parse::<u16>()
            .map(ListenAddr::AllInterfaces)
            .map_err(|_| bad(var, raw, expected));
    }
    raw.parse::<SocketAddr>()
        .map(ListenAddr::Addr)
        .map_err(|_| bad(var, raw, expected))
}

fn parse_bool(var: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "" | "0" | "false" | "no" | "off" => Ok(false),
        "1" | "true" | "yes" | "on" => Ok(true),
        _ => Err(bad(var, raw, "expected 1 or 0")),
    }
}

/// An IP or CIDR, in canonical (unmapped) form; also what the policy file's `clients` use.
pub(crate) fn parse_net(raw: &str) -> Option<IpNet> {
    raw.parse::<IpNet>()
        .ok()
        .or_else(|| raw.parse::<IpAddr>().ok().map(IpNet::from))
        .map(|n| match n {
            // Clients and upstreams are compared in canonical (unmapped) form.
            IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
                let v4 = v6
                    .addr()
                    .to_ipv4_mapped()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(IpNet::V4)
                    .unwrap_or(IpNet::V6(v6))
            }
            n => n,
        })
}

fn parse_clients(raw: &str) -> Result<(Vec<IpNet>, Vec<Host>), ConfigError> {
    let mut nets = Vec::new();
    let mut names = Vec::new();
    for item in split_list(raw) {
        if let Some(net) = parse_net(item) {
            nets.push(net);
            continue;
        }
        // Anything with a slash or made only of digits, dots and colons was meant as an
        // address; do not silently reinterpret a typo as a DNS name.
        let looks_numeric = item.contains('/')
            || item
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b'.' || b == b':');
        match Host::parse(item) {
            Ok(h) if !looks_numeric => names.push(h),
            _ => {
                return Err(bad(
                    "PAUDE_PROXY_ALLOWED_CLIENTS",
                    raw,
                    format!("'{item}' is not an IP address, CIDR (e.g. 10.0.0.0/24) or DNS name"),
                ));
            }
        }
    }
    Ok((nets, names))
}

fn parse_endpoint(raw: &str) -> Result<(Host, u16), String> {
    if raw.contains('*') || raw.starts_with('.') || raw.starts_with('~') {
        return Err(format!(
            "'{raw}': wildcards and patterns are not allowed here, name one host:port"
        ));
    }
    if raw.contains('/') {
        return Err(format!(
            "'{raw}': a path is not allowed here, name one host:port"
        ));
    }
    parse_authority(raw, None)
        .map_err(|e| format!("'{raw}': {e}; expected host:port, e.g. api.example.com:8443"))
}

/// The credentials table alone (what `policy check` validates names against).
pub fn routes_from_args(
    args: &Args,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Routes, ConfigError> {
    load_routes(args.credentials_config.as_ref(), env)
}

fn load_routes(
    path: Option<&PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Routes, ConfigError> {
    let (json, shown) = read_credentials_json(path)?;
    Routes::from_json(&json, env)
        .map_err(|e| bad("PAUDE_PROXY_CREDENTIALS_CONFIG", shown, e.to_string()))
}

/// The routing table's JSON (the file, or the embedded default) and how to name it in an
/// error.
pub fn read_credentials_json(path: Option<&PathBuf>) -> Result<(String, String), ConfigError> {
    const VAR: &str = "PAUDE_PROXY_CREDENTIALS_CONFIG";
    Ok(match path {
        None => (
            DEFAULT_CREDENTIALS_JSON.to_string(),
            "(embedded default)".to_string(),
        ),
        Some(p) => (
            std::fs::read_to_string(p)
                .map_err(|e| bad(VAR, p.display().to_string(), format!("cannot read: {e}")))?,
            p.display().to_string(),
        ),
    })
}

/// Reads and compiles `PAUDE_PROXY_POLICY`; the error names the file and the line.
pub fn load_policy(
    path: &PathBuf,
    routes: &Routes,
) -> Result<crate::policy::RequestPolicy, ConfigError> {
    const VAR: &str = "PAUDE_PROXY_POLICY";
    let shown = path.display().to_string();
    let text =
        std::fs::read_to_string(path).map_err(|e| bad(VAR, &shown, format!("cannot read: {e}")))?;
    crate::policy::file::parse(&text, &|v| routes.knows(v))
        .map_err(|e| bad(VAR, &shown, format!("{shown}:{e}")))
}

fn load_pem_certs(path: &PathBuf) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) found".into());
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["paude-proxy"];
        argv.extend_from_slice(args);
        let args = Args::try_parse_from(argv).expect("clap");
        Config::from_args(args, &|_| None)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen, ListenAddr::AllInterfaces(3128));
        assert!(c.policy.clients.is_none() && c.policy.domains.is_none());
        assert_eq!(c.blocked_log_path, PathBuf::from("/tmp/squid-blocked.log"));
        assert!(c.ca_dir.is_none());
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases: &[(&[&str], &str, &str)] = &[
            (
                &["--allowed-clients", "10.0.0.0/33"],
                "PAUDE_PROXY_ALLOWED_CLIENTS",
                "10.0.0.0/33",
            ),
            (
                &["--allowed-clients", "10.0.0.300"],
                "PAUDE_PROXY_ALLOWED_CLIENTS",
                "10.0.0.300",
            ),
            (
                &["--allowed-otel-ports", "4317,70000"],
                "ALLOWED_OTEL_PORTS",
                "70000",
            ),
            (&["--allowed-otel-ports", "0"], "ALLOWED_OTEL_PORTS", "'0'"),
            (
                &["--allowed-domains", ".ok.com,~("],
                "ALLOWED_DOMAINS",
                "regex",
            ),
            (
                &["--allowed-endpoints", "*.x.com:443"],
                "ALLOWED_ENDPOINTS",
                "wildcards",
            ),
            (
                &["--allowed-endpoints", "x.com"],
                "ALLOWED_ENDPOINTS",
                "missing port",
            ),
            (
                &["--allowed-endpoints", "x.com:443/path"],
                "ALLOWED_ENDPOINTS",
                "path",
            ),
            (
                &["--allowed-upstream-nets", "10.0.0/8"],
                "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS",
                "CIDR",
            ),
            (&["--listen", "3128"], "PAUDE_PROXY_LISTEN", "expected"),
            (
                &["--transparent-listen", "x:1"],
                "PAUDE_PROXY_TRANSPARENT_LISTEN",
                "expected",
            ),
            (
                &["--dns-listen", ":99999"],
                "PAUDE_PROXY_DNS_LISTEN",
                "expected",
            ),
            (
                &["--dns-upstream", "1.2.3"],
                "PAUDE_PROXY_DNS_UPSTREAM",
                "ip:port",
            ),
            (&["--verbose", "maybe"], "PAUDE_PROXY_VERBOSE", "expected"),
            (
                &["--credentials-config", "/nonexistent/c.json"],
                "PAUDE_PROXY_CREDENTIALS_CONFIG",
                "cannot read",
            ),
            (
                &["--upstream-ca", "/nonexistent/ca.pem"],
                "PAUDE_PROXY_UPSTREAM_CA",
                "cannot read",
            ),
            (
                &["--hosts-file", "/nonexistent/hosts"],
                "PAUDE_PROXY_HOSTS_FILE",
                "cannot read",
            ),
        ];
        for (args, var, needle) in cases {
            let err = match parse(args) {
                Err(e) => e,
                Ok(_) => panic!("{args:?} should fail"),
            };
            assert_eq!(err.var, *var, "{args:?}");
            let line = err.to_string();
            assert!(line.contains(needle), "{args:?}: {line}");
            assert!(!line.contains('\n'), "one line: {line}");
        }
    }

    #[test]
    fn lists_parse() {
        let c = parse(&[
            "--allowed-clients",
            "10.0.0.5, 10.1.0.0/16,agent.internal,::ffff:10.2.0.1",
            "--allowed-otel-ports",
            "4317 4318",
            "--allowed-endpoints",
            "github.com:8443,[::1]:22",
            "--listen",
            "[::1]:0",
        ])
        .unwrap();
        let nets: Vec<String> = c
            .policy
            .clients
            .unwrap()
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(nets, vec!["10.0.0.5/32", "10.1.0.0/16", "10.2.0.1/32"]);
        assert_eq!(c.client_names, vec![Host::parse("agent.internal").unwrap()]);
        assert_eq!(
            c.policy.extra_ports.into_iter().collect::<Vec<_>>(),
            vec![4317, 4318]
        );
        assert_eq!(c.policy.endpoints.len(), 2);
        assert_eq!(c.listen, ListenAddr::Addr("[::1]:0".parse().unwrap()));
    }

    /// Found by `scripts/fuzz config_args`: the problem text quoted the bad item raw, so a
    /// CR or NUL in a setting broke the one-line error (and could forge a log line).
    #[test]
    fn an_error_stays_one_line_whatever_the_value_holds() {
        for (flag, value) in [
            ("--allowed-clients", "10.0.0.0/8,::fff\r\0f:1.0.0.1"),
            ("--allowed-domains", "a.com,b\rc.com"),
            ("--allowed-endpoints", "x\u{85}y:1"),
        ] {
            let line = parse(&[flag, value]).err().expect(value).to_string();
            assert!(!line.chars().any(char::is_control), "{line:?}");
            assert!(line.starts_with("invalid "), "{line:?}");
        }
    }

    #[test]
    fn names_only_client_list_still_restricts() {
        let c = parse(&["--allowed-clients", "agent.internal"]).unwrap();
        assert_eq!(c.policy.clients, Some(vec![]));
    }
}
