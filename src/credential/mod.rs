//! Where a credential's value comes from, apart from how it is written into a request
//! (that is [`crate::inject`]'s job):
//!
//! - [`Source::Static`]: read from the environment once at startup;
//! - [`Source::Refreshing`]: a [`token::TokenSource`] that fetches through a provider's
//!   [`fetch::Fetch`], one fetch at a time, refreshed before expiry and after a `401`.

pub mod fetch;
pub mod file;
pub mod token;

use std::sync::Arc;

use crate::secret::Secret;

pub use token::{Bearer, TokenSource, Unavailable};

/// What the agent holds wherever a real token would be (stub files, vended tokens,
/// metadata answers), for every provider. The proxy never injects a token that looks like
/// this.
pub const PLACEHOLDER_TOKEN: &str = "paude-proxy-managed";

/// Real access tokens are far longer (Google's ya29.… and Anthropic's sk-ant-oat… are 100+
/// characters); anything shorter is a stub or a test value that must not be sent upstream.
pub const MIN_TOKEN_LEN: usize = 20;

/// True for values the agent holds instead of a token (and for any token too short to be a
/// real one).
pub fn looks_like_placeholder(token: &str) -> bool {
    let t = token.trim();
    t.starts_with(PLACEHOLDER_TOKEN) || t.len() < MIN_TOKEN_LEN
}

/// Where a route's value comes from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A value from the environment, fixed for the life of the process.
    Static(Secret),
    /// A token fetched and refreshed at run time.
    Refreshing(Arc<TokenSource>),
}

/// What a credential variable holds, so the agent's side can be given the right stand-in:
/// a dummy string for a secret value, a stub file for a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holds {
    /// The secret itself (`OPENAI_API_KEY=sk-...`).
    Value,
    /// The path of a file holding the secret (`GOOGLE_APPLICATION_CREDENTIALS=/path`).
    Path,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        assert!(looks_like_placeholder("paude-proxy-managed"));
        assert!(looks_like_placeholder(" paude-proxy-managed "));
        assert!(looks_like_placeholder("paude-proxy-managed-access"));
        assert!(looks_like_placeholder("ya29.short"));
        assert!(looks_like_placeholder(""));
        assert!(!looks_like_placeholder(
            "ya29.a0AfH6SMBx-a-realistic-looking-token"
        ));
    }
}
