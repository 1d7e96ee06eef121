//! Vending on `POST auth.openai.com/oauth/token`. Codex, holding the stub `auth.json`,
//! refreshes or signs in there:
//!
//! - a refresh grant gets a synthetic answer of placeholders, never forwarded;
//! - a login (authorization code, device code, token exchange) is forwarded with its form
//!   reduced to that grant's known parameters and the canonical `client_id`; on `2xx` the
//!   real tokens are persisted for the proxy and the agent gets the synthetic answer, on
//!   anything else the upstream answer passes through;
//! - any other grant gets `400`.

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::error::ProxyError;
use crate::host::Host;
use crate::providers::openai::auth::{Store, TokenAnswer};
use crate::providers::openai::{CLIENT_ID, stub};
use crate::upstream::Scheme;
use crate::vend::{Ask, Ctx, VendFuture, Vendor, Via, json_response, read_grant, read_limited};

pub const PLACEHOLDER_ACCESS: &str = "paude-proxy-managed-access";
pub const PLACEHOLDER_REFRESH: &str = "paude-proxy-managed-refresh";
pub const PLACEHOLDER_ACCOUNT: &str = "paude-proxy-managed-account";

const HOST: &str = "auth.openai.com";
const PATH: &str = "/oauth/token";
const DEVICE_CODE: &str = "urn:ietf:params:oauth:grant-type:device_code";
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// A token endpoint's answer is a small JSON object.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const UNSUPPORTED_JSON: &str = r#"{"error":"unsupported_grant_type"}"#;

/// The parameters each login grant may carry upstream (besides `grant_type` and the forced
/// `client_id`); anything else the agent adds is dropped.
fn known_params(grant: &str) -> Option<&'static [&'static str]> {
    match grant {
        "authorization_code" => Some(&["code", "redirect_uri", "code_verifier"]),
        DEVICE_CODE => Some(&["device_code"]),
        TOKEN_EXCHANGE => Some(&[
            "subject_token",
            "subject_token_type",
            "requested_token",
            "actor_token",
            "actor_token_type",
            "audience",
            "scope",
            "resource",
        ]),
        _ => None,
    }
}

pub fn synthetic_json() -> String {
    serde_json::json!({
        "access_token": PLACEHOLDER_ACCESS,
        "refresh_token": PLACEHOLDER_REFRESH,
        "id_token": stub::placeholder_id_token(),
        "expires_in": 3600,
        "token_type": "Bearer",
    })
    .to_string()
}

pub fn is_token_request(host: &Host, method: &Method, path: &str) -> bool {
    method == Method::POST && host.as_str() == HOST && path == PATH
}

pub struct LoginVendor {
    pub store: Store,
}

impl Vendor for LoginVendor {
    fn name(&self) -> &'static str {
        "ChatGPT token vending"
    }

    fn claims(&self, ask: &Ask<'_>) -> bool {
        ask.via == Via::Tls && is_token_request(ask.host, ask.method, ask.path)
    }

    fn answer<'a>(&'a self, ctx: Ctx<'a>, req: Request<Incoming>) -> VendFuture<'a> {
        Box::pin(async move {
            let form: Vec<(String, String)> = match read_grant(req).await {
                Some(b) => form_urlencoded::parse(&b).into_owned().collect(),
                None => Vec::new(),
            };
            let grant = form
                .iter()
                .find(|(n, _)| n == "grant_type")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let grant = grant.as_str();
            if grant == "refresh_token" {
                return Ok(json_response(StatusCode::OK, synthetic_json()));
            }
            let Some(known) = known_params(grant) else {
                return Ok(json_response(StatusCode::BAD_REQUEST, UNSUPPORTED_JSON));
            };
            // The serializer is not Send: finish it before the await.
            let reduced = {
                let mut out = form_urlencoded::Serializer::new(String::new());
                out.append_pair("grant_type", grant);
                for (k, v) in form.iter().filter(|(k, _)| known.contains(&k.as_str())) {
                    out.append_pair(k, v);
                }
                out.append_pair("client_id", CLIENT_ID);
                out.finish()
            };
            self.login(ctx, reduced).await
        })
    }
}

impl LoginVendor {
    async fn login(&self, ctx: Ctx<'_>, form: String) -> Result<Response<Body>, ProxyError> {
        let Some(target) = ctx.target else {
            return Err(ProxyError::Internal("a login outside a tunnel".into()));
        };
        let mut req = Request::new(body::full(form));
        *req.method_mut() = Method::POST;
        *req.uri_mut() = http::Uri::from_static(PATH);
        let h = req.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(target.host.as_str()) {
            h.insert(header::HOST, v);
        }
        let resp = ctx.upstream.send(Scheme::Https, target, req).await?;
        let (mut parts, incoming) = resp.into_parts();
        crate::headers::strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::CONTENT_LENGTH);
        let bytes: Bytes = read_limited(incoming, MAX_ANSWER_BYTES)
            .await
            .map_err(|detail| ProxyError::UpstreamHttp {
                host: target.host.to_string(),
                detail: format!("login answer: {detail}"),
            })?;
        if !parts.status.is_success() {
            // The agent sees the upstream's refusal as it is (it holds nothing of ours).
            return Ok(Response::from_parts(parts, body::full(bytes)));
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&bytes).map_err(|_| ProxyError::UpstreamHttp {
                host: target.host.to_string(),
                detail: "the login answer is not a token JSON object".into(),
            })?;
        let doc = match self.store.read() {
            Ok(Some((_, doc))) => doc,
            _ => serde_json::json!({}),
        };
        self.store.persist(doc, &answer).map_err(|e| {
            ProxyError::Internal(format!("signed in, but cannot persist the tokens: {e}"))
        })?;
        tracing::info!(file = %self.store.target().display(), "ChatGPT sign-in: real tokens persisted, the agent got placeholders");
        Ok(json_response(StatusCode::OK, synthetic_json()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_post_to_the_exact_path() {
        let h = |s: &str| Host::parse(s).unwrap();
        assert!(is_token_request(
            &h("auth.openai.com"),
            &Method::POST,
            "/oauth/token"
        ));
        assert!(!is_token_request(
            &h("auth.openai.com"),
            &Method::GET,
            "/oauth/token"
        ));
        assert!(!is_token_request(
            &h("auth.openai.com"),
            &Method::POST,
            "/oauth/tokens"
        ));
        assert!(!is_token_request(
            &h("auth.openai.com.evil.test"),
            &Method::POST,
            "/oauth/token"
        ));
        assert!(known_params("password").is_none());
        let v: serde_json::Value = serde_json::from_str(&synthetic_json()).unwrap();
        let id = v["id_token"].as_str().unwrap();
        assert_eq!(
            crate::providers::openai::jwt::account_id(id).as_deref(),
            Some(PLACEHOLDER_ACCOUNT)
        );
    }
}
