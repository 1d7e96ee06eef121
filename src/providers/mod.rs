//! The credential providers, each in its own folder, and the one list that maps an
//! injector name in the routing table to the provider that loads it. Nothing outside this
//! folder names a provider.
//!
//! A provider exports a [`Kind`]: what its variable holds (a value or a path), how it loads
//! from the environment, and what it yields: a [`Source`] for the routes, [`Vendor`]s for
//! the answers the proxy gives itself, a summary line for the startup log.

pub mod anthropic;
pub mod google;
pub mod openai;

use std::sync::Arc;

use crate::config::StubKind;
use crate::credential::{Holds, Source};
use crate::vend::Vendor;

/// What a provider yields once loaded.
pub struct Loaded {
    pub source: Source,
    pub vendors: Vec<Arc<dyn Vendor>>,
    /// One line for the startup log; never a secret.
    pub summary: String,
}

/// Loads a provider's credential for a route whose variable is `env_var`. `Ok(None)`:
/// nothing is configured, the route is skipped. Errors are one line, never a secret.
pub type Load =
    fn(env_var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Loaded>, String>;

/// One provider injector kind.
pub struct Kind {
    /// The `injector` name in the routing table.
    pub name: &'static str,
    pub holds: Holds,
    /// Other variables the provider reads a real credential from: an agent never inherits
    /// them and gets no stand-in for them.
    pub also_reads: &'static [&'static str],
    pub load: Load,
}

/// Every provider injector kind.
const KINDS: &[Kind] = &[google::KIND, anthropic::KIND, openai::KIND];

pub fn kind(name: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.name == name)
}

pub fn names() -> Vec<&'static str> {
    KINDS.iter().map(|k| k.name).collect()
}

/// The placeholder file an agent holds instead of the real credentials (`paude-proxy stub`).
pub fn stub(which: StubKind) -> String {
    match which {
        StubKind::Adc => google::stub::json(),
        StubKind::Claude => anthropic::stub::json(),
        StubKind::Codex => openai::stub::json(),
    }
}

#[cfg(test)]
mod table_tests;
