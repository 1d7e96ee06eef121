//! Reload without a restart (SIGHUP, `POST /reload`): re-read the command line and
//! environment as at startup, the policy file and the credentials config; if all are valid,
//! swap the new policy in whole (new connections and every next request on an open tunnel
//! see it), else keep the last good one, with one log line and a counter. Never fails open.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};

use clap::Parser;
use ipnet::IpNet;

use crate::App;
use crate::config::{Args, Config};
use crate::policy::Policy;

/// What a reload re-reads: the process's own argument vector (flags) and its environment,
/// plus the client addresses configured last time (to tell them from resolved client names).
pub struct Source {
    argv: Vec<OsString>,
    configured_clients: Mutex<Vec<IpNet>>,
}

impl Source {
    pub fn new(argv: Vec<OsString>, policy: &Policy) -> Source {
        Source {
            argv,
            configured_clients: Mutex::new(policy.clients.clone().unwrap_or_default()),
        }
    }
}

/// Re-reads and applies, or keeps the last good configuration. Returns the one-line outcome.
pub fn reload(app: &App) -> Result<String, String> {
    let result = try_reload(app);
    match &result {
        Ok(summary) => {
            app.metrics.reloads.inc();
            tracing::info!("reload: {summary}");
        }
        Err(e) => {
            app.metrics.reload_failures.inc();
            tracing::warn!("reload rejected, the previous configuration stays in force: {e}");
        }
    }
    if let Some(audit) = &app.audit {
        audit.reopen();
    }
    result
}

fn try_reload(app: &App) -> Result<String, String> {
    let source = app
        .reload
        .as_ref()
        .ok_or_else(|| "reload is not available in this process".to_string())?;
    let args = Args::try_parse_from(&source.argv).map_err(|e| {
        e.to_string()
            .lines()
            .next()
            .unwrap_or("bad arguments")
            .to_string()
    })?;
    let env = |k: &str| std::env::var(k).ok();
    let config = Config::from_args(args, &env).map_err(|e| e.to_string())?;
    let mut configured = match source.configured_clients.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let mut fresh = config.policy;
    let current = app.policy.load();
    // Kept from the running policy: the listeners (bound at startup) and the addresses
    // client names resolved to (the refresh loop owns those).
    fresh.own_listeners = current.own_listeners.clone();
    if let (Some(new), Some(old)) = (&mut fresh.clients, &current.clients) {
        let resolved = old.iter().filter(|n| !configured.contains(n)).copied();
        let static_nets = new.clone();
        new.extend(resolved);
        *configured = static_nets;
    } else {
        *configured = fresh.clients.clone().unwrap_or_default();
    }
    let summary = format!(
        "{} rule(s), {} agent(s), domains {}, {} credential route(s)",
        fresh.requests.rules.len(),
        fresh.requests.agents.len(),
        match &fresh.domains {
            None => "all".to_string(),
            Some(d) => format!("{} pattern(s)", d.len()),
        },
        config.routes.iter().count()
    );
    app.policy.store(Arc::new(fresh));
    // Requests in flight keep the routes they started with; the next ones see these.
    app.routes.store(Arc::new(config.routes));
    Ok(summary)
}

/// SIGHUP → [`reload`], forever. The handler is installed by the caller (before the proxy
/// serves), so a HUP can never take the default action and end the process.
pub async fn on_sighup(app: Arc<App>, mut hup: tokio::signal::unix::Signal) {
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the configuration");
        let _ = reload(&app);
    }
}
