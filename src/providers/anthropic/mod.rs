//! Anthropic: a Claude Pro/Max subscription (`anthropic_oauth`). The proxy holds Claude
//! Code's real `.credentials.json`; the agent holds a stub of placeholders.
//!
//! - [`creds`] reads the file (it may not exist yet), refreshes the access token before it
//!   expires or after a `401`, and writes the rotated pair back atomically;
//! - [`vend`] answers the agent's own refresh requests with placeholders;
//! - [`stub`] is the file the agent holds.
//!
//! `CLAUDE_CODE_OAUTH_TOKEN` (from `claude setup-token`) and `ANTHROPIC_API_KEY` need no
//! code here: they are plain `bearer` / `api_key` routes in the table.

pub mod creds;
pub mod stub;
pub mod vend;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use http::Uri;

use crate::credential::{Holds, Source, TokenSource};
use crate::providers::{Kind, Loaded};

pub const KIND: Kind = Kind {
    name: "anthropic_oauth",
    holds: Holds::Path,
    also_reads: &[],
    load,
};

/// Where Claude Code refreshes its subscription tokens.
pub const TOKEN_URL: &str = "https://console.anthropic.com/v1/oauth/token";
/// Overrides [`TOKEN_URL`] (an https:// URL), for a gateway in front of it or for tests.
pub const TOKEN_URL_VAR: &str = "PAUDE_PROXY_ANTHROPIC_TOKEN_URL";
/// Claude Code's public OAuth client id, used when the file names none and the agent has
/// not shown its own yet.
pub const CLAUDE_CODE_CLIENT_ID: &str = "9d1c250a-e61b-44d9-88ed-5944d1962f5e";

const LABEL: &str = "Claude subscription";

/// The client id the agent's own refresh requests carried, shared by the vendor (which
/// sees them) and the refresher (which needs one when the file names none).
pub type SeenClientId = Arc<Mutex<Option<String>>>;

fn load(env_var: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Loaded>, String> {
    let Some(path) = env(env_var).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path.trim());
    let token_url = match env(TOKEN_URL_VAR).filter(|v| !v.trim().is_empty()) {
        None => TOKEN_URL.to_string(),
        Some(u) => u.trim().to_string(),
    };
    let token_uri = https_uri(TOKEN_URL_VAR, &token_url)?;
    let state = creds::check_at_startup(&path).map_err(|why| format!("{env_var}: {why}"))?;
    let seen: SeenClientId = Arc::default();
    let refresher = creds::Refresher::new(path.clone(), token_uri, seen.clone())?;
    Ok(Some(Loaded {
        source: Source::Refreshing(Arc::new(TokenSource::new(LABEL, Arc::new(refresher)))),
        vendors: vec![Arc::new(vend::RefreshVendor { seen })],
        summary: format!(
            "Claude subscription credential from {env_var}={} ({state}), refreshed at {token_url}",
            path.display()
        ),
    }))
}

/// A token endpoint must be `https://`: a refresh token would otherwise travel in cleartext.
pub fn https_uri(var: &str, text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|_| format!("{var}: '{text}' is not a URL"))?;
    if uri.scheme_str() != Some("https") || uri.host().is_none() {
        return Err(format!("{var}: '{text}' must be an https:// URL"));
    }
    Ok(uri)
}
