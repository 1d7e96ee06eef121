//! The few JWT facts the ChatGPT flow needs, read without verifying (the proxy trusts the
//! file it was given, and the upstream verifies the token): `exp`, and the account id claim.
//! Also the unsigned (`alg: none`) id tokens the agent is given instead of real ones.

use base64::Engine;
use base64::engine::general_purpose::{URL_SAFE_NO_PAD, URL_SAFE_PAD_INDIFFERENT};

/// The claim object OpenAI nests its own claims under.
pub const AUTH_CLAIM: &str = "https://api.openai.com/auth";

/// The payload of a JWT, or `None` if `token` is not one.
pub fn claims(token: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let mut parts = token.trim().split('.');
    let (_, payload) = (parts.next()?, parts.next()?);
    parts.next()?;
    let bytes = URL_SAFE_PAD_INDIFFERENT.decode(payload).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `exp` in seconds since the epoch.
pub fn exp(token: &str) -> Option<u64> {
    claims(token)?.get("exp")?.as_u64()
}

/// `chatgpt_account_id`, at the top level or under [`AUTH_CLAIM`].
pub fn account_id(id_token: &str) -> Option<String> {
    let c = claims(id_token)?;
    let pick = |m: &serde_json::Map<String, serde_json::Value>| {
        m.get("chatgpt_account_id")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    pick(&c).or_else(|| c.get(AUTH_CLAIM).and_then(|a| a.as_object()).and_then(pick))
}

/// The third part of [`unsigned`] tokens. The Codex CLI (0.171) refuses an `auth.json`
/// whose id token has an empty signature part (RFC 7519's unsecured form), so the part
/// holds this placeholder; nothing verifies it.
const PLACEHOLDER_SIGNATURE: &[u8] = b"paude-proxy-managed";

/// An unsigned JWT (`alg: none`) with `claims`: shaped like a token, worth nothing.
pub fn unsigned(claims: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signature = URL_SAFE_NO_PAD.encode(PLACEHOLDER_SIGNATURE);
    format!("{header}.{payload}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_exp_and_account_id() {
        let nested = unsigned(&serde_json::json!({
            "exp": 1_900_000_000u64,
            AUTH_CLAIM: {"chatgpt_account_id": "acct-nested"},
        }));
        assert_eq!(exp(&nested), Some(1_900_000_000));
        assert_eq!(account_id(&nested).as_deref(), Some("acct-nested"));
        let top = unsigned(&serde_json::json!({"chatgpt_account_id": "acct-top"}));
        assert_eq!(account_id(&top).as_deref(), Some("acct-top"));
        assert_eq!(exp(&top), None);
        let parts: Vec<&str> = top.split('.').collect();
        assert!(
            parts.len() == 3 && parts.iter().all(|p| !p.is_empty()),
            "Codex refuses an id token with an empty part: {top}"
        );
        for bad in ["", "abc", "a.b", "a.!!!.c", "a.e30.c.d"] {
            assert!(exp(bad).is_none() && account_id(bad).is_none(), "{bad}");
        }
    }
}
