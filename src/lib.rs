//! paude-proxy: a credential-injecting HTTPS interception proxy.
//!
//! Modules are grouped by pipeline stage:
//! `listen → classify (orig dst, SNI) → decide → terminate TLS → handle request → upstream`.

// Plain data every stage shares.
pub mod config;
pub mod host;
pub mod secret;

// listen → classify: the two entries and what they read off a connection.
pub mod client_hello;
pub mod connect;
pub mod dns;
pub mod listen;
pub mod orig_dst;
pub mod transparent;

// decide: pure policy over facts, and the one lookup it needs.
pub mod policy;
pub mod resolve;

// terminate TLS → handle request: checks, credentials, answers we give ourselves.
pub mod ca;
pub mod framing;
pub mod gcloud;
pub mod handle;
pub mod headers;
pub mod inject;
pub mod intercept;
pub mod scrub;

// upstream.
pub mod upstream;

// Cross-cutting: the body and error types, logs and counters, the admin port.
pub mod admin;
pub mod audit;
pub mod body;
pub mod error;
pub mod metrics;

/// Entry points for the `fuzz/` crate; not an API.
#[doc(hidden)]
pub mod fuzzing;

use std::net::IpAddr;

use arc_swap::ArcSwap;

use crate::audit::BlockedLog;
use crate::ca::CertAuthority;
use crate::error::ProxyError;
use crate::inject::Routes;
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
    pub routes: Routes,
    pub ca: CertAuthority,
    pub upstream: Upstream,
    pub resolver: Resolver,
    pub blocked: BlockedLog,
    pub metrics: crate::metrics::Metrics,
}

impl App {
    /// Records a denial (blocked log and a log line) and returns the error to answer with.
    pub fn deny(&self, client: IpAddr, method: &str, what: &str, reason: DenyReason) -> ProxyError {
        self.blocked.denied(client, method, what);
        self.metrics.denied.inc();
        tracing::info!(%client, method, target = what, "deny: {reason}");
        ProxyError::Denied(reason)
    }
}
