//! OpenAI: a ChatGPT plan signed in through the Codex CLI (`chatgpt`). The proxy holds
//! Codex's real `auth.json` (and, optionally, a state file of its own for rotated tokens);
//! the agent holds a stub of placeholders.
//!
//! - [`auth`] reads the tokens, refreshes them before the access token's JWT `exp` or after
//!   a `401`, and persists every rotation before use;
//! - [`vend`] answers the agent's refreshes and completes its sign-ins;
//! - [`jwt`] reads `exp` and the account id; [`stub`] is the file the agent holds.
//!
//! `OPENAI_API_KEY` needs no code here: it is a plain `bearer` route in the table.

pub mod auth;
pub mod jwt;
pub mod stub;
pub mod vend;

use std::path::PathBuf;
use std::sync::Arc;

use crate::credential::{Holds, Source, TokenSource};
use crate::providers::anthropic::https_uri;
use crate::providers::{Kind, Loaded};

pub const KIND: Kind = Kind {
    name: "chatgpt",
    holds: Holds::Path,
    // The proxy's own copy of rotated tokens: the agent must not even learn its path.
    also_reads: &[STATE_FILE_VAR],
    load,
};

/// Codex's public OAuth client id: the only one the proxy sends.
pub const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
pub const TOKEN_URL: &str = "https://auth.openai.com/oauth/token";
/// Overrides [`TOKEN_URL`] for the proxy's own refreshes (an https:// URL), for tests.
pub const TOKEN_URL_VAR: &str = "PAUDE_PROXY_CHATGPT_TOKEN_URL";
/// A proxy-only writable file for rotated tokens; wins over the source file when it exists.
pub const STATE_FILE_VAR: &str = "PAUDE_PROXY_CHATGPT_AUTH_STATE_FILE";
/// The header ChatGPT's backend wants beside the bearer token.
pub const ACCOUNT_HEADER: &str = "chatgpt-account-id";

const LABEL: &str = "ChatGPT";

fn load(env_var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Loaded>, String> {
    let set = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(source) = set(env_var) else {
        return Ok(None);
    };
    let source = PathBuf::from(source);
    let state = set(STATE_FILE_VAR).map(PathBuf::from);
    if let Some(s) = &state
        && same_file(s, &source)
    {
        return Err(format!(
            "{STATE_FILE_VAR} must be a different file from {env_var} (both are {})",
            source.display()
        ));
    }
    let token_url = set(TOKEN_URL_VAR).unwrap_or_else(|| TOKEN_URL.to_string());
    let token_uri = https_uri(TOKEN_URL_VAR, &token_url)?;
    let store = auth::Store { source, state };
    let found = auth::check_at_startup(&store).map_err(|why| format!("{env_var}: {why}"))?;
    let refresher = auth::Refresher::new(store.clone(), token_uri)?;
    let summary = format!(
        "ChatGPT credential from {env_var}={}{} ({found}), refreshed at {token_url}",
        store.source.display(),
        store
            .state
            .as_ref()
            .map(|s| format!(", rotated tokens in {}", s.display()))
            .unwrap_or_default(),
    );
    Ok(Some(Loaded {
        source: Source::Refreshing(Arc::new(TokenSource::new(LABEL, Arc::new(refresher)))),
        vendors: vec![Arc::new(vend::LoginVendor { store })],
        summary,
    }))
}

/// The same path, or two names for one file.
fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    if a == b {
        return true;
    }
    match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}
