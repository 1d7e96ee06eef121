//! Token vending: Google's client libraries, holding the stub ADC, post their refresh
//! grant to Google's token endpoint. The proxy answers that request itself with a
//! placeholder token (the real one is injected later, per request), so the agent never
//! holds even a short-lived real token and nothing about the stub reaches Google.

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::App;
use crate::body::{self, Body};
use crate::host::Host;

/// The exact answer to a vended token request.
pub const VENDED_TOKEN_JSON: &str =
    r#"{"access_token":"paude-proxy-managed","expires_in":3600,"token_type":"Bearer"}"#;

/// The stub's grant is a few hundred bytes; a client sending more is not a token request
/// worth reading to the end (hyper then closes the connection instead of reusing it).
const MAX_GRANT_BYTES: usize = 64 * 1024;

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

/// Answers `req` when it is a token request and a gcloud credential is configured;
/// otherwise hands the request back for normal forwarding.
pub async fn try_vend(
    app: &App,
    host: &Host,
    req: Request<Incoming>,
) -> Result<Response<Body>, Request<Incoming>> {
    if app.routes.gcloud().is_none() || !is_token_request(host, req.method(), req.uri().path()) {
        return Err(req);
    }
    // Read (and discard) the grant so the connection can carry the next request; it holds
    // only the stub's placeholder values.
    let _ = Limited::new(req.into_body(), MAX_GRANT_BYTES)
        .collect()
        .await;
    tracing::info!(%host, "vended a placeholder token (the real token is injected per request)");
    Ok(vended_response())
}

pub fn vended_response() -> Response<Body> {
    let mut resp = Response::new(body::full(VENDED_TOKEN_JSON));
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
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
        assert_eq!(v["access_token"], crate::gcloud::PLACEHOLDER_TOKEN);
        assert_eq!(v["expires_in"], 3600);
        assert_eq!(v["token_type"], "Bearer");
    }
}
