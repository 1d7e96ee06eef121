//! The `.credentials.json` the agent holds (`paude-proxy stub claude`): Claude Code's shape,
//! placeholders everywhere, an expiry far in the future so it does not try to refresh (and
//! if it does, the proxy vends placeholders again).

use crate::credential::PLACEHOLDER_TOKEN;

/// 2100-01-01T00:00:00Z in milliseconds: "never" for Claude Code's expiry check.
const FAR_FUTURE_MS: u64 = 4_102_444_800_000;

pub fn json() -> String {
    let stub = serde_json::json!({
        "claudeAiOauth": {
            "accessToken": PLACEHOLDER_TOKEN,
            "refreshToken": PLACEHOLDER_TOKEN,
            "expiresAt": FAR_FUTURE_MS,
            "scopes": ["user:inference", "user:profile"],
        }
    });
    let mut text = serde_json::to_string_pretty(&stub).unwrap_or_else(|_| stub.to_string());
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::anthropic::creds::Oauth;

    #[test]
    fn the_stub_parses_as_credentials_of_placeholders() {
        let doc: serde_json::Value = serde_json::from_str(&json()).unwrap();
        let oauth = Oauth::from_doc(&doc).unwrap();
        assert_eq!(oauth.access_token.expose(), PLACEHOLDER_TOKEN);
        assert_eq!(oauth.refresh_token.expose(), PLACEHOLDER_TOKEN);
        assert!(oauth.expires_at_ms > 4_000_000_000_000);
        assert!(crate::credential::looks_like_placeholder(
            oauth.access_token.expose()
        ));
    }
}
