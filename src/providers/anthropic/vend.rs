//! Vending: Claude Code, holding the stub file, may try to refresh its placeholder tokens.
//! That refresh is answered here with placeholders and never forwarded; its `client_id` is
//! remembered for the proxy's own refreshes.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::host::Host;
use crate::providers::anthropic::SeenClientId;
use crate::vend::{Ask, Ctx, VendFuture, Vendor, Via, json_response, read_grant};

/// The answer to a vended refresh.
pub const VENDED_JSON: &str = r#"{"access_token":"paude-proxy-managed","refresh_token":"paude-proxy-managed","expires_in":3600,"token_type":"Bearer"}"#;
const UNSUPPORTED_JSON: &str = r#"{"error":"unsupported_grant_type","error_description":"paude-proxy answers refresh grants only: sign in on the host"}"#;

/// The token endpoints Claude Code refreshes at. Only `POST` to exactly these paths.
pub fn is_token_request(host: &Host, method: &Method, path: &str) -> bool {
    method == Method::POST
        && matches!(
            (host.as_str(), path),
            ("console.anthropic.com", "/v1/oauth/token")
                | ("platform.claude.com", "/api/oauth/token")
        )
}

pub struct RefreshVendor {
    pub seen: SeenClientId,
}

impl Vendor for RefreshVendor {
    fn name(&self) -> &'static str {
        "Claude subscription token vending"
    }

    fn claims(&self, ask: &Ask<'_>) -> bool {
        ask.via == Via::Tls && is_token_request(ask.host, ask.method, ask.path)
    }

    fn answer<'a>(&'a self, _ctx: Ctx<'a>, req: Request<Incoming>) -> VendFuture<'a> {
        Box::pin(async move {
            let grant = read_grant(req)
                .await
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
            let kind = grant
                .as_ref()
                .and_then(|g| g.get("grant_type"))
                .and_then(|g| g.as_str());
            if kind != Some("refresh_token") {
                return Ok(json_response(StatusCode::BAD_REQUEST, UNSUPPORTED_JSON));
            }
            let client_id = grant
                .as_ref()
                .and_then(|g| g.get("client_id"))
                .and_then(|c| c.as_str())
                .filter(|c| c.len() <= 128 && !c.trim().is_empty());
            if let (Some(id), Ok(mut seen)) = (client_id, self.seen.lock()) {
                *seen = Some(id.to_string());
            }
            Ok(json_response(StatusCode::OK, VENDED_JSON))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_post_to_the_exact_paths() {
        let h = |s: &str| Host::parse(s).unwrap();
        let table = [
            (
                "console.anthropic.com",
                Method::POST,
                "/v1/oauth/token",
                true,
            ),
            (
                "platform.claude.com",
                Method::POST,
                "/api/oauth/token",
                true,
            ),
            (
                "console.anthropic.com",
                Method::GET,
                "/v1/oauth/token",
                false,
            ),
            (
                "console.anthropic.com",
                Method::POST,
                "/v1/oauth/tokens",
                false,
            ),
            ("api.anthropic.com", Method::POST, "/v1/oauth/token", false),
            (
                "console.anthropic.com.evil.test",
                Method::POST,
                "/v1/oauth/token",
                false,
            ),
        ];
        for (host, method, path, want) in table {
            assert_eq!(
                is_token_request(&h(host), &method, path),
                want,
                "{method} {host}{path}"
            );
        }
        let v: serde_json::Value = serde_json::from_str(VENDED_JSON).unwrap();
        assert_eq!(v["access_token"], crate::credential::PLACEHOLDER_TOKEN);
    }
}
