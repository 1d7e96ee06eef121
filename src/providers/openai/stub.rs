//! The `auth.json` the agent holds (`paude-proxy stub codex`): Codex's ChatGPT shape with
//! placeholders, and an id token shaped like a JWT that carries the placeholder account id.

use crate::providers::openai::jwt;
use crate::providers::openai::vend::{
    PLACEHOLDER_ACCESS, PLACEHOLDER_ACCOUNT, PLACEHOLDER_REFRESH,
};

/// 2100-01-01T00:00:00Z: "not stale" for Codex's refresh check.
const FAR_FUTURE: &str = "2100-01-01T00:00:00Z";

pub fn json() -> String {
    let stub = serde_json::json!({
        "auth_mode": "chatgpt",
        "OPENAI_API_KEY": null,
        "tokens": {
            "id_token": placeholder_id_token(),
            "access_token": PLACEHOLDER_ACCESS,
            "refresh_token": PLACEHOLDER_REFRESH,
            "account_id": PLACEHOLDER_ACCOUNT,
        },
        "last_refresh": FAR_FUTURE,
    });
    let mut text = serde_json::to_string_pretty(&stub).unwrap_or_else(|_| stub.to_string());
    text.push('\n');
    text
}

/// The id token the agent gets, in the stub and in vended answers.
pub fn placeholder_id_token() -> String {
    jwt::unsigned(&serde_json::json!({
        "email": "paude-proxy-managed@paude-proxy.invalid",
        "exp": 4_102_444_800u64,
        "chatgpt_account_id": PLACEHOLDER_ACCOUNT,
        jwt::AUTH_CLAIM: {
            "chatgpt_account_id": PLACEHOLDER_ACCOUNT,
            "chatgpt_plan_type": "plus",
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_is_placeholders_with_a_jwt_shaped_id_token() {
        let v: serde_json::Value = serde_json::from_str(&json()).unwrap();
        let id = v["tokens"]["id_token"].as_str().unwrap();
        assert_eq!(jwt::account_id(id).as_deref(), Some(PLACEHOLDER_ACCOUNT));
        assert!(crate::credential::looks_like_placeholder(
            v["tokens"]["access_token"].as_str().unwrap()
        ));
    }
}
