//! Startup and the accept loops: bind, build the shared state, serve until shutdown.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::App;
use crate::audit::BlockedLog;
use crate::ca::CertAuthority;
use crate::config::{Config, ConfigError, DEFAULT_CA_DIR, FALLBACK_CA_DIR, ListenAddr};
use crate::host::Host;
use crate::policy::Policy;
use crate::resolve::Resolver;
use crate::upstream::{Upstream, root_store};

/// DNS names in PAUDE_PROXY_ALLOWED_CLIENTS are re-resolved this often, for pods whose
/// addresses change.
const CLIENT_NAMES_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr} (PAUDE_PROXY_LISTEN): {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
}

/// Everything startup builds before serving: errors here are configuration errors.
pub struct Prepared {
    pub app: Arc<App>,
    pub ca_dir: PathBuf,
    client_names: Vec<Host>,
    listen: ListenAddr,
}

/// Loads the CA, opens the blocked log, builds the upstream trust store.
pub fn prepare(config: Config) -> Result<Prepared, ConfigError> {
    let (ca, ca_dir) = load_ca(config.ca_dir.as_deref())?;
    let blocked = BlockedLog::open(&config.blocked_log_path).map_err(|e| ConfigError {
        var: "BLOCKED_LOG_PATH",
        value: config.blocked_log_path.display().to_string(),
        problem: format!("cannot open for appending: {e}"),
    })?;
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
    if let Some(g) = config.routes.gcloud() {
        tracing::info!("{}", g.summary());
    }
    for (var, why) in &config.routes.skipped {
        tracing::warn!(credential = %var, "credential unavailable: {why}");
    }
    for r in config.routes.iter() {
        tracing::info!(credential = %r.env_var, header = %r.header, "credential route loaded");
    }
    let app = App {
        policy: ArcSwap::from_pointee(config.policy),
        routes: config.routes,
        ca,
        upstream: Upstream::new(roots),
        resolver: Resolver::with_hosts(config.hosts),
        blocked,
    };
    Ok(Prepared {
        app: Arc::new(app),
        ca_dir,
        client_names: config.client_names,
        listen: config.listen,
    })
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

async fn bind(listen: &ListenAddr) -> Result<TcpListener, StartupError> {
    let bind_err = |addr: String, source| StartupError::Bind { addr, source };
    match listen {
        ListenAddr::Addr(a) => TcpListener::bind(a)
            .await
            .map_err(|e| bind_err(a.to_string(), e)),
        // `:port` means every interface: dual-stack where the host has IPv6, else IPv4.
        ListenAddr::AllInterfaces(port) => {
            match TcpListener::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *port)).await
            {
                Ok(l) => Ok(l),
                Err(_) => {
                    TcpListener::bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port))
                        .await
                        .map_err(|e| bind_err(format!(":{port}"), e))
                }
            }
        }
    }
}

/// Binds, serves until `shutdown` resolves, then stops accepting.
pub async fn run(
    prepared: Prepared,
    shutdown: impl Future<Output = ()>,
) -> Result<(), StartupError> {
    let Prepared {
        app,
        ca_dir,
        client_names,
        listen,
    } = prepared;
    let listener = bind(&listen).await?;
    let local = listener.local_addr().map_err(|e| StartupError::Bind {
        addr: format!("{listen:?}"),
        source: e,
    })?;
    update_policy(&app, |p| p.own_listeners.push(local));
    if !client_names.is_empty() {
        refresh_client_names(&app, &client_names, &[]).await;
        tokio::spawn(client_names_loop(app.clone(), client_names));
    }
    tracing::info!(
        "CA certificate for clients: {}",
        ca_dir.join("ca.crt").display()
    );
    // Tests and scripts read the port from this exact line.
    tracing::info!("listening role=explicit addr={local}");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::info_span!("conn", client = %peer);
                    tokio::spawn(crate::connect::serve_client(app.clone(), stream, peer).instrument(span));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    tracing::info!("shutting down");
    Ok(())
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
