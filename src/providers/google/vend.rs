//! Token vending: Google's client libraries, holding the stub ADC, post their refresh
//! grant to Google's token endpoint. The proxy answers that request itself with a
//! placeholder token (the real one is injected later, per request), so the agent never
//! holds even a short-lived real token and nothing about the stub reaches Google.

use http::{Method, Request, StatusCode};
use hyper::body::Incoming;

use crate::host::Host;
use crate::vend::{Ask, Ctx, VendFuture, Vendor, Via, json_response, read_grant};

/// The exact answer to a vended token request.
pub const VENDED_TOKEN_JSON: &str =
    r#"{"access_token":"paude-proxy-managed","expires_in":3600,"token_type":"Bearer"}"#;

/// The OAuth token endpoints Google's libraries use: `oauth2.googleapis.com/token`
/// (current libraries) and `accounts.google.com/o/oauth2/token` (older and authorized-user
/// ones). Only `POST` to exactly that path: anything else is an ordinary request.
pub fn is_token_request(host: &Host, method: &Method, path: &str) -> bool {
    method == Method::POST
        && matches!(
            (host.as_str(), path),
            ("oauth2.googleapis.com", "/token") | ("accounts.google.com", "/o/oauth2/token")
        )
}

/// Answers Google token requests with a placeholder (present only when a gcloud credential
/// is configured).
pub struct TokenVendor;

impl Vendor for TokenVendor {
    fn name(&self) -> &'static str {
        "Google token vending"
    }

    fn claims(&self, ask: &Ask<'_>) -> bool {
        ask.via == Via::Tls && is_token_request(ask.host, ask.method, ask.path)
    }

    fn answer<'a>(&'a self, _ctx: Ctx<'a>, req: Request<Incoming>) -> VendFuture<'a> {
        Box::pin(async move {
            // Read (and discard) the grant so the connection can carry the next request; it
            // holds only the stub's placeholder values.
            let _ = read_grant(req).await;
            Ok(json_response(StatusCode::OK, VENDED_TOKEN_JSON))
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
            ("oauth2.googleapis.com", Method::POST, "/token", true),
            ("accounts.google.com", Method::POST, "/o/oauth2/token", true),
            ("OAUTH2.googleapis.com.", Method::POST, "/token", true),
            ("oauth2.googleapis.com", Method::GET, "/token", false),
            ("oauth2.googleapis.com", Method::POST, "/token/", false),
            ("oauth2.googleapis.com", Method::POST, "/tokeninfo", false),
            (
                "oauth2.googleapis.com",
                Method::POST,
                "/o/oauth2/token",
                false,
            ),
            ("accounts.google.com", Method::POST, "/token", false),
            ("sts.googleapis.com", Method::POST, "/token", false),
            (
                "oauth2.googleapis.com.evil.com",
                Method::POST,
                "/token",
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
    }

    #[test]
    fn the_vended_json_is_a_placeholder() {
        let v: serde_json::Value = serde_json::from_str(VENDED_TOKEN_JSON).unwrap();
        assert_eq!(v["access_token"], crate::credential::PLACEHOLDER_TOKEN);
        assert_eq!(v["expires_in"], 3600);
        assert_eq!(v["token_type"], "Bearer");
    }
}
