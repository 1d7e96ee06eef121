//! The one thing a refreshing credential needs from its provider: a way to obtain a new
//! access token. Providers implement [`Fetch`]; [`super::token::TokenSource`] decides when.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::error::chain;
use crate::secret::Secret;

/// A token endpoint's answer is a small JSON object; anything bigger is not one.
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// A freshly obtained access token.
pub struct Fetched {
    pub access_token: Secret,
    /// How long the token stays valid from now.
    pub lifetime: Duration,
    /// How long before the end of `lifetime` to refresh; `None`: the source's default.
    pub margin: Option<Duration>,
    /// Further headers the flow needs beside the token (ChatGPT's account id). Secrets too:
    /// masked in responses like the token.
    pub extra: Vec<(HeaderName, Secret)>,
    /// Secrets the agent holds a placeholder for (ChatGPT's account id): an echo in a
    /// response is replaced by that placeholder instead of masked, because the agent
    /// compares it with its own copy.
    pub stand_ins: Vec<(Secret, &'static str)>,
}

impl Fetched {
    pub fn token(access_token: Secret, lifetime: Duration) -> Fetched {
        Fetched {
            access_token,
            lifetime,
            margin: None,
            extra: Vec::new(),
            stand_ins: Vec::new(),
        }
    }
}

/// Why a token is asked for: the provider may answer `Due` from what it already holds (a
/// file another process keeps fresh) but must get a new one for `Rejected`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// No usable token, or the current one is due for refresh.
    Due,
    /// The upstream answered `401` to the current token.
    Rejected,
}

/// Why there is no token. Both carry one line without secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FetchError {
    /// The endpoint or the credential is broken.
    Failed(String),
    /// Nobody has signed in yet (the credentials file does not exist): the agent should be
    /// told to sign in, with a `401`, not a gateway error.
    SignedOut(String),
}

impl FetchError {
    pub fn why(&self) -> &str {
        match self {
            FetchError::Failed(w) | FetchError::SignedOut(w) => w,
        }
    }

    pub fn map(self, f: impl FnOnce(String) -> String) -> FetchError {
        match self {
            FetchError::Failed(w) => FetchError::Failed(f(w)),
            FetchError::SignedOut(w) => FetchError::SignedOut(f(w)),
        }
    }
}

impl From<String> for FetchError {
    fn from(why: String) -> Self {
        FetchError::Failed(why)
    }
}

impl From<&str> for FetchError {
    fn from(why: &str) -> Self {
        FetchError::Failed(why.to_string())
    }
}

pub type FetchFuture<'a> = Pin<Box<dyn Future<Output = Result<Fetched, FetchError>> + Send + 'a>>;

/// Something that can obtain a new access token.
pub trait Fetch: Send + Sync {
    fn fetch(&self, why: Why) -> FetchFuture<'_>;
    /// The token endpoint, for log lines.
    fn endpoint(&self) -> String;
}

pub type HttpsClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client token requests use: HTTPS only, verified against the native roots (which
/// honour `SSL_CERT_FILE`), the same `ring` provider as the rest of the proxy, and no proxy
/// support, so the proxy's own token requests go straight to the endpoint and never through
/// its own listeners.
pub fn https_client() -> Result<HttpsClient, String> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| format!("cannot load the TLS root certificates for the token endpoint: {e}"))?
        .https_only()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: Option<serde_json::Value>,
}

/// POSTs an OAuth form (`application/x-www-form-urlencoded`, asking for JSON) to `uri` and
/// returns the body of a `2xx` answer, as [`read_token_response`].
pub async fn post_token_form(
    client: &HttpsClient,
    uri: Uri,
    form: String,
) -> Result<Bytes, FetchError> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json")
        .body(Full::new(Bytes::from(form)))
        .map_err(|e| format!("cannot build the token request: {e}"))?;
    read_token_response(client, req).await
}

/// Sends one token request and returns the body of a `2xx` answer. Redirects are not
/// followed (the client has no redirect support). On failure the message has the status
/// and the OAuth error code (`invalid_grant`, ...), which help and are never secret; the
/// rest of the body could quote the request, so it is left out.
pub async fn read_token_response(
    client: &HttpsClient,
    req: Request<Full<Bytes>>,
) -> Result<Bytes, FetchError> {
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("token request failed: {}", chain(&e)))?;
    let status = resp.status();
    let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE_BYTES)
        .collect()
        .await
        .map_err(|e| format!("token response unreadable: {e}"))?
        .to_bytes();
    if !status.is_success() {
        let code = serde_json::from_slice::<ErrorResponse>(&body)
            .ok()
            .and_then(|e| e.error)
            .and_then(|e| match e {
                serde_json::Value::String(s) => Some(s),
                serde_json::Value::Object(o) => {
                    o.get("type").and_then(|t| t.as_str()).map(str::to_string)
                }
                _ => None,
            })
            .filter(|c| c.len() <= 64 && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
            .unwrap_or_else(|| "no OAuth error code".into());
        return Err(FetchError::Failed(format!(
            "token endpoint answered {status} ({code})"
        )));
    }
    Ok(body)
}
