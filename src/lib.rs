//! paude-proxy: a credential-injecting HTTPS interception proxy.
//!
//! Modules are grouped by pipeline stage:
//! `listen → classify (orig dst, SNI) → decide → terminate TLS → handle request → upstream`.

// Plain data every stage shares.
pub mod config;
pub mod conns;
pub mod host;
pub mod limits;
pub mod secret;

// listen → classify: the two entries and what they read off a connection.
pub mod accept;
pub mod client_hello;
pub mod connect;
pub mod dns;
pub mod listen;
pub mod orig_dst;
pub mod transparent;

// decide: pure policy over facts, and the one lookup it needs.
pub mod policy;
pub mod policy_cli;
pub mod presets;
pub mod resolve;

// terminate TLS → handle request: checks, answers we give ourselves, credentials, forward.
pub mod ca;
pub mod credential;
pub mod forward;
pub mod framing;
pub mod gate;
pub mod handle;
pub mod headers;
pub mod inject;
pub mod intercept;
pub mod learn;
pub mod park;
pub mod preface;
pub mod providers;
pub mod reload;
pub mod scrub;
pub mod vend;

// upstream.
pub mod upstream;

// Cross-cutting: the body and error types, logs and counters, the admin port.
pub mod admin;
pub mod audit;
pub mod audit_log;
// Subcommands that print and exit (routes, ca, healthcheck).
pub mod body;
pub mod cli;
pub mod coalesce;
pub mod error;
pub mod log_writer;
pub mod metrics;

/// Entry points for the `fuzz/` crate; not an API.
#[doc(hidden)]
pub mod fuzzing;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::audit::BlockedLog;
use crate::audit_log::{AuditEvent, AuditLog};
use crate::ca::CertAuthority;
use crate::error::ProxyError;
use crate::gate::Refusal;
use crate::host::Host;
use crate::inject::Routes;
use crate::learn::Learn;
use crate::policy::{DenyReason, Policy};
use crate::resolve::Resolver;
use crate::upstream::Upstream;

pub use crate::listen::run;

/// Shared state of a running proxy. The policy is swapped whole (never edited in place) when
/// the client list's DNS names re-resolve.
pub struct App {
    /// What the sandbox DNS told each client: evidence for the SNI ↔ IP check.
    pub answers: std::sync::Arc<crate::dns::AnswerRecord>,
    pub policy: ArcSwap<Policy>,
    /// The credential routes and vendors; swapped whole by a reload. A request holds the
    /// `Arc` it started with, so a reload never changes a route under it.
    pub routes: ArcSwap<Routes>,
    pub ca: CertAuthority,
    pub upstream: Upstream,
    pub resolver: Resolver,
    pub blocked: BlockedLog,
    pub metrics: crate::metrics::Metrics,
    pub limits: crate::limits::Limits,
    /// Every client connection: the cap, idleness, shedding and graceful close.
    pub conns: std::sync::Arc<crate::conns::Conns>,
    /// Owns every task spawned for a connection, so shutdown can wait for them.
    pub tasks: tokio_util::task::TaskTracker,
    /// `PAUDE_PROXY_AUDIT_LOG`.
    pub audit: Option<Arc<AuditLog>>,
    /// `PAUDE_PROXY_LEARN`.
    pub learn: Option<Arc<Learn>>,
    /// What a reload re-reads (`None`: reload is not available, e.g. in library tests).
    pub reload: Option<crate::reload::Source>,
}

impl App {
    /// Records a denial (blocked log, metric, log line, audit line, learn entry) and returns
    /// the error to answer with. Every refusal goes through here, so the records never disagree.
    pub fn deny(&self, at: &Refusal<'_>, reason: DenyReason) -> ProxyError {
        let client = at.client;
        self.blocked.denied(client, at.method, &at.what);
        self.metrics.denied.inc();
        tracing::info!(%client, method = at.method, target = %at.what, kind = reason.kind(), "deny: {reason}");
        let agent = self
            .policy
            .load()
            .requests
            .agent(client)
            .map(|a| a.name.clone());
        if let (Some(learn), Some(host)) = (&self.learn, at.host) {
            learn.note(crate::learn::Seen {
                agent: agent.clone(),
                client: client.to_string(),
                host: host.to_string(),
                port: at.port,
                method: at.method.to_string(),
                path: if at.path.is_empty() {
                    String::new()
                } else {
                    crate::learn::path_shape(at.path)
                },
            });
        }
        if let Some(audit) = &self.audit {
            let host = at.host.map(Host::to_string).unwrap_or_default();
            audit.record(&AuditEvent {
                time: crate::audit_log::now_rfc3339(),
                client: client.to_string(),
                agent: agent.as_deref(),
                mode: at.mode.as_str(),
                host: &host,
                port: at.port,
                method: at.method,
                path: at.path,
                status: 403,
                bytes_up: None,
                bytes_down: 0,
                duration_ms: 0,
                decision: "deny",
                by: reason.kind().to_string(),
                reason: Some(reason.to_string()),
                credential: None,
            });
        }
        ProxyError::Denied(reason)
    }
}
