//! Startup and the accept loops: bind, build the shared state, serve until shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::task::TaskTracker;

use crate::App;
use crate::accept::accept_loop;
use crate::audit::BlockedLog;
use crate::audit_log::AuditLog;
use crate::ca::CertAuthority;
use crate::config::{Config, ConfigError, DEFAULT_CA_DIR, FALLBACK_CA_DIR, ListenAddr};
use crate::conns::Conns;
use crate::dns::{AnswerRecord, DnsConfig, DnsServer, NamePolicy, Upstream as DnsUpstream};
use crate::host::Host;
use crate::learn::Learn;
use crate::policy::{self, Policy};
use crate::resolve::Resolver;
use crate::upstream::{Upstream, root_store};

/// DNS names in PAUDE_PROXY_ALLOWED_CLIENTS are re-resolved this often, for pods whose
/// addresses change.
const CLIENT_NAMES_REFRESH: Duration = Duration::from_secs(30);
/// How often idle upstream connections past their limit are closed.
const POOL_REAP_INTERVAL: Duration = Duration::from_secs(10);
/// With `PAUDE_PROXY_DNS_LISTEN=...:0`, how many UDP ports to try for one whose TCP twin
/// is free too.
const DNS_PORT_TRIES: usize = 16;
/// The admin listener's own connection cap: orchestrators poll it with a few connections.
const ADMIN_MAX_CONNECTIONS: usize = 64;
/// After the drain, how long upstream connection drivers get to close cleanly.
const DRIVER_WIND_DOWN: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} ({var}): {source}")]
    Bind {
        var: &'static str,
        addr: String,
        source: std::io::Error,
    },
}

/// Everything startup builds before serving: errors here are configuration errors.
pub struct Prepared {
    pub app: Arc<App>,
    pub ca_dir: PathBuf,
    client_names: Vec<Host>,
    listeners: Listeners,
}

struct Listeners {
    explicit: ListenAddr,
    transparent: Option<ListenAddr>,
    dns: Option<ListenAddr>,
    dns_config: Option<DnsConfig>,
    admin: Option<ListenAddr>,
}

/// Loads the CA, opens the blocked log, builds the upstream trust store. The blocked log
/// is checked first so that an invalid configuration never leaves a new CA behind.
pub fn prepare(config: Config) -> Result<Prepared, ConfigError> {
    let blocked = open_blocked_log(&config)?;
    let (ca, ca_dir) = load_ca(config.ca_dir.as_deref())?;
    let (roots, excluded, warnings) = root_store(&config.upstream_ca, ca.ca_spki());
    for w in warnings {
        tracing::warn!("upstream trust: {w}");
    }
    if excluded > 0 {
        tracing::info!("upstream trust: ignoring {excluded} root(s) that are the proxy's own CA");
    }
    if roots.is_empty() {
        tracing::warn!(
            "upstream trust: no root certificates; every upstream will fail verification (install ca-certificates or set PAUDE_PROXY_UPSTREAM_CA)"
        );
    }
    for line in &config.routes.summaries {
        tracing::info!("{line}");
    }
    for (var, why) in &config.routes.skipped {
        tracing::warn!(credential = %var, "credential unavailable: {why}");
    }
    for r in config.routes.iter() {
        tracing::info!(credential = %r.env_var, header = %r.injector.header, "credential route loaded");
    }
    for (dead, winner) in config.routes.dead() {
        tracing::warn!(credential = %dead, "credential route can never match: {winner} comes first and always wins");
    }
    let dns_config = DnsConfig {
        upstream: match config.dns_upstream.as_slice() {
            [] => DnsUpstream::System,
            servers => DnsUpstream::Servers(servers.to_vec()),
        },
        hosts_file: config.hosts_file.clone(),
        // Answers the proxy gives itself may need their names found by the sandbox (the
        // metadata server); the connection then reaches the proxy anyway.
        pinned: config.routes.vendors.pinned(),
        ..DnsConfig::default()
    };
    let answers = Arc::new(AnswerRecord::new(
        dns_config.record_capacity,
        dns_config.grace,
    ));
    let listeners = Listeners {
        explicit: config.listen,
        transparent: config.transparent_listen,
        dns: config.dns_listen.clone(),
        dns_config: config.dns_listen.map(|_| dns_config),
        admin: config.admin_listen,
    };
    // Request rules (issue 12): audit log, learning mode, reload source.
    let audit = open_line_file(
        "PAUDE_PROXY_AUDIT_LOG",
        config.audit_log.as_deref(),
        AuditLog::open,
    )?;
    let learn = open_line_file("PAUDE_PROXY_LEARN", config.learn.as_deref(), Learn::open)?;
    let reload = Some(crate::reload::Source::new(
        std::env::args_os().collect(),
        &config.policy,
    ));
    let tasks = TaskTracker::new();
    let app = App {
        audit,
        learn,
        reload,
        answers,
        policy: ArcSwap::from_pointee(config.policy),
        routes: ArcSwap::from_pointee(config.routes),
        ca,
        upstream: Upstream::new(roots, config.limits.clone(), tasks.clone()),
        resolver: Resolver::with_hosts(config.hosts),
        blocked,
        metrics: Default::default(),
        conns: Conns::new(config.limits.max_connections),
        limits: config.limits,
        tasks,
    };
    Ok(Prepared {
        app: Arc::new(app),
        ca_dir,
        client_names: config.client_names,
        listeners,
    })
}

fn open_line_file<T>(
    var: &'static str,
    path: Option<&Path>,
    open: fn(&Path) -> std::io::Result<T>,
) -> Result<Option<Arc<T>>, ConfigError> {
    path.map(|p| {
        open(p).map(Arc::new).map_err(|e| ConfigError {
            var,
            value: p.display().to_string(),
            problem: format!("cannot open for appending: {e}"),
        })
    })
    .transpose()
}

fn open_blocked_log(config: &Config) -> Result<BlockedLog, ConfigError> {
    BlockedLog::open(&config.blocked_log_path).map_err(|e| ConfigError {
        var: "BLOCKED_LOG_PATH",
        value: config.blocked_log_path.display().to_string(),
        problem: format!("cannot open for appending: {e}"),
    })
}

/// `--check-config`: everything `prepare` validates, without creating a CA.
pub fn check(config: &Config) -> Result<String, ConfigError> {
    open_blocked_log(config)?;
    let dir = config
        .ca_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CA_DIR));
    let exists = CertAuthority::check(&dir).map_err(|e| ConfigError {
        var: "PAUDE_PROXY_CA_DIR",
        value: dir.display().to_string(),
        problem: e.to_string(),
    })?;
    let mut routes: Vec<&str> = config.routes.iter().map(|r| r.env_var.as_str()).collect();
    routes.dedup();
    let dead: String = config
        .routes
        .dead()
        .iter()
        .map(|(dead, winner)| {
            format!("; route {dead} can never match: {winner} comes first and always wins")
        })
        .collect();
    Ok(format!(
        "configuration OK: CA {} {}; credentials available: {}{dead}",
        if exists {
            "valid in"
        } else {
            "will be created in"
        },
        dir.display(),
        if routes.is_empty() {
            "none".to_string()
        } else {
            routes.join(", ")
        }
    ))
}

fn load_ca(dir: Option<&Path>) -> Result<(CertAuthority, PathBuf), ConfigError> {
    let err = |dir: &Path, e: crate::ca::CaError| ConfigError {
        var: "PAUDE_PROXY_CA_DIR",
        value: dir.display().to_string(),
        problem: e.to_string(),
    };
    if let Some(dir) = dir {
        return CertAuthority::load_or_create(dir)
            .map(|ca| (ca, dir.to_path_buf()))
            .map_err(|e| err(dir, e));
    }
    let default = Path::new(DEFAULT_CA_DIR);
    match CertAuthority::load_or_create(default) {
        Ok(ca) => Ok((ca, default.to_path_buf())),
        Err(e @ (crate::ca::CaError::CreateDir(..) | crate::ca::CaError::Write(..))) => {
            let fallback = std::env::current_dir()
                .map(|d| d.join(FALLBACK_CA_DIR))
                .unwrap_or_else(|_| PathBuf::from(FALLBACK_CA_DIR));
            tracing::warn!(
                "PAUDE_PROXY_CA_DIR is unset and {DEFAULT_CA_DIR} is not usable ({e}); using {} instead",
                fallback.display()
            );
            CertAuthority::load_or_create(&fallback)
                .map(|ca| (ca, fallback.clone()))
                .map_err(|e| err(&fallback, e))
        }
        Err(e) => Err(err(default, e)),
    }
}

fn all_interfaces(port: u16) -> [SocketAddr; 2] {
    [
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
    ]
}

/// `:port` means every interface: dual-stack where the host has IPv6, else IPv4.
fn candidates(listen: &ListenAddr) -> Vec<SocketAddr> {
    match listen {
        ListenAddr::Addr(a) => vec![*a],
        ListenAddr::AllInterfaces(port) => all_interfaces(*port).to_vec(),
    }
}

async fn bind_tcp(listen: &ListenAddr, var: &'static str) -> Result<TcpListener, StartupError> {
    let mut last = None;
    for addr in candidates(listen) {
        match TcpListener::bind(addr).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some((addr, e)),
        }
    }
    let (addr, source) = last.unwrap_or_else(|| {
        (
            SocketAddr::from(([0, 0, 0, 0], 0)),
            std::io::ErrorKind::AddrNotAvailable.into(),
        )
    });
    Err(StartupError::Bind {
        var,
        addr: addr.to_string(),
        source,
    })
}

/// UDP and TCP on the same address and port (port 0: the TCP socket takes the port UDP got).
async fn bind_dns(listen: &ListenAddr) -> Result<(UdpSocket, TcpListener), StartupError> {
    const VAR: &str = "PAUDE_PROXY_DNS_LISTEN";
    let mut last = None;
    for addr in candidates(listen) {
        // Port 0: the port UDP got may be taken for TCP by another process; pick again.
        let tries = if addr.port() == 0 { DNS_PORT_TRIES } else { 1 };
        for _ in 0..tries {
            let udp = match UdpSocket::bind(addr).await {
                Ok(u) => u,
                Err(e) => {
                    last = Some((addr, e));
                    break;
                }
            };
            let bound = udp.local_addr().unwrap_or(addr);
            match TcpListener::bind(bound).await {
                Ok(tcp) => return Ok((udp, tcp)),
                Err(e) => last = Some((bound, e)),
            }
        }
    }
    let (addr, source) = last.unwrap_or_else(|| {
        (
            SocketAddr::from(([0, 0, 0, 0], 0)),
            std::io::ErrorKind::AddrNotAvailable.into(),
        )
    });
    Err(StartupError::Bind {
        var: VAR,
        addr: addr.to_string(),
        source,
    })
}

fn local(l: &TcpListener, var: &'static str) -> Result<SocketAddr, StartupError> {
    l.local_addr().map_err(|source| StartupError::Bind {
        var,
        addr: "?".into(),
        source,
    })
}

/// Binds every configured listener and serves until `shutdown` resolves; then stops
/// accepting and drains: requests in flight may finish within the grace period, the rest
/// are cut. `force` (a second signal) ends the drain at once.
pub async fn run(
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
    force: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let Prepared {
        app,
        ca_dir,
        client_names,
        listeners,
    } = prepared;
    let explicit = bind_tcp(&listeners.explicit, "PAUDE_PROXY_LISTEN").await?;
    let transparent = match &listeners.transparent {
        Some(l) => Some(bind_tcp(l, "PAUDE_PROXY_TRANSPARENT_LISTEN").await?),
        None => None,
    };
    let admin = match &listeners.admin {
        Some(l) => Some(bind_tcp(l, "PAUDE_PROXY_ADMIN_LISTEN").await?),
        None => None,
    };
    let dns = match &listeners.dns {
        Some(l) => Some(bind_dns(l).await?),
        None => None,
    };
    let mut own = vec![local(&explicit, "PAUDE_PROXY_LISTEN")?];
    if let Some(t) = &transparent {
        own.push(local(t, "PAUDE_PROXY_TRANSPARENT_LISTEN")?);
    }
    if let Some((_, tcp)) = &dns {
        own.push(local(tcp, "PAUDE_PROXY_DNS_LISTEN")?);
    }
    if let Some(a) = &admin {
        own.push(local(a, "PAUDE_PROXY_ADMIN_LISTEN")?);
    }
    update_policy(&app, |p| p.own_listeners.extend(own.iter().copied()));
    if !client_names.is_empty() {
        refresh_client_names(&app, &client_names, &[]).await;
    }
    tracing::info!(
        "CA certificate for clients: {}",
        ca_dir.join("ca.crt").display()
    );

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let reaper = app.clone();
    let mut reaper_stop = stop_rx.clone();
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(POOL_REAP_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => reaper.upstream.reap_idle(),
                _ = reaper_stop.wait_for(|s| *s) => break,
            }
        }
    });
    if !client_names.is_empty() {
        let mut names_stop = stop_rx.clone();
        let names_app = app.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = client_names_loop(names_app, client_names) => {}
                _ = names_stop.wait_for(|s| *s) => {}
            }
        });
    }
    // Tests and scripts read the ports from these exact lines.
    tracing::info!("listening role=explicit addr={}", own[0]);
    tasks.spawn(accept_loop(
        app.clone(),
        app.conns.clone(),
        explicit,
        "explicit",
        stop_rx.clone(),
        {
            let app = app.clone();
            move |stream, peer, _local, conn| {
                crate::connect::serve_client(app.clone(), stream, peer, conn)
            }
        },
    ));
    if let Some(t) = transparent {
        let addr = local(&t, "PAUDE_PROXY_TRANSPARENT_LISTEN")?;
        tracing::info!("listening role=transparent addr={addr}");
        let app2 = app.clone();
        tasks.spawn(accept_loop(
            app.clone(),
            app.conns.clone(),
            t,
            "transparent",
            stop_rx.clone(),
            move |stream, peer, local, conn| {
                crate::transparent::serve_redirected(app2.clone(), stream, peer, local, conn)
            },
        ));
    }
    if let Some(a) = admin {
        let addr = local(&a, "PAUDE_PROXY_ADMIN_LISTEN")?;
        tracing::info!("listening role=admin addr={addr}");
        let app2 = app.clone();
        tasks.spawn(accept_loop(
            app.clone(),
            Conns::new(ADMIN_MAX_CONNECTIONS),
            a,
            "admin",
            stop_rx.clone(),
            move |stream, peer, _local, _conn| {
                crate::admin::serve_admin(app2.clone(), stream, peer)
            },
        ));
    }
    if let (Some((udp, tcp)), Some(dns_cfg)) = (dns, listeners.dns_config) {
        let addr = local(&tcp, "PAUDE_PROXY_DNS_LISTEN")?;
        let names: Arc<dyn NamePolicy> = Arc::new(SandboxNames(app.clone()));
        let server = DnsServer::new(dns_cfg, names, app.answers.clone()).map_err(|e| {
            StartupError::Config(ConfigError {
                var: "PAUDE_PROXY_DNS_UPSTREAM",
                value: String::new(),
                problem: e.to_string(),
            })
        })?;
        let _ = app.metrics.dns.set(server.stats());
        tracing::info!("listening role=dns addr={addr}");
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = server.serve(udp, tcp, stopped).await {
                tracing::error!("DNS server stopped: {e}");
            }
        });
    }
    shutdown.await;
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    tokio::select! {
        () = drain(&app) => {}
        () = force => tracing::warn!("second signal: exiting without waiting for requests in flight"),
    }
    Ok(())
}

/// Listeners are closed: ask every connection to finish what it has in flight (HTTP/1.1
/// closes after the current response, HTTP/2 sends GOAWAY), wait up to the grace period,
/// then close the pool so its driver tasks end. Whatever is still running is cut when
/// the runtime stops.
async fn drain(app: &App) {
    let grace = app.limits.shutdown_grace;
    tracing::info!(
        open = app.conns.len(),
        "shutting down: no new connections; requests in flight have {grace:?} to finish (PAUDE_PROXY_SHUTDOWN_GRACE)"
    );
    app.conns.begin_shutdown();
    let drained = tokio::time::timeout(grace, app.conns.drained())
        .await
        .is_ok();
    app.upstream.close_all();
    app.tasks.close();
    if drained {
        // Upstream connection drivers notice the closed pool within a moment.
        let _ = tokio::time::timeout(DRIVER_WIND_DOWN, app.tasks.wait()).await;
        tracing::info!("shutdown complete: every connection finished");
    } else {
        tracing::warn!(
            open = app.conns.len(),
            "shutdown grace of {grace:?} over: closing the connections still open"
        );
    }
}

/// `ALLOWED_DOMAINS` as the sandbox DNS server sees it.
struct SandboxNames(Arc<App>);

impl NamePolicy for SandboxNames {
    fn allows(&self, client: IpAddr, name: &str) -> bool {
        let emulated = self.0.routes.load().vendors.pins(name);
        emulated
            || Host::parse(name)
                .is_ok_and(|h| policy::domain_allowed(&self.0.policy.load(), client, &h))
    }

    fn blocked(&self, client: IpAddr, name: &str) {
        self.0.blocked.denied(client, "DNS", name);
        tracing::info!(%client, name, "deny DNS: not in ALLOWED_DOMAINS");
    }
}

fn update_policy(app: &App, change: impl Fn(&mut Policy)) {
    app.policy.rcu(|old| {
        let mut p = Policy::clone(old);
        change(&mut p);
        p
    });
}

async fn client_names_loop(app: Arc<App>, names: Vec<Host>) {
    let mut previous: Vec<IpNet> = Vec::new();
    loop {
        tokio::time::sleep(CLIENT_NAMES_REFRESH).await;
        previous = refresh_client_names(&app, &names, &previous).await;
    }
}

/// Re-resolves the client names and swaps their addresses into the policy. A name that fails
/// to resolve keeps its previous addresses (fail soft for transient DNS trouble).
async fn refresh_client_names(app: &App, names: &[Host], previous: &[IpNet]) -> Vec<IpNet> {
    let mut fresh: Vec<IpNet> = Vec::new();
    let mut failed = false;
    for name in names {
        match app.resolver.lookup(name).await {
            Ok(addrs) => fresh.extend(addrs.into_iter().map(|ip| IpNet::from(ip.to_canonical()))),
            Err(e) => {
                failed = true;
                tracing::warn!("PAUDE_PROXY_ALLOWED_CLIENTS: {e}");
            }
        }
    }
    if failed {
        fresh.extend(previous.iter().copied());
    }
    fresh.sort();
    fresh.dedup();
    update_policy(app, |p| {
        if let Some(nets) = &mut p.clients {
            nets.retain(|n| !previous.contains(n));
            nets.extend(fresh.iter().copied());
        }
    });
    fresh
}
