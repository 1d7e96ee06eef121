//! One access-token request to Google, per ADC type. No caching here: the neutral
//! [`crate::credential::TokenSource`] decides when to fetch.
//!
//! Both paths use their own HTTP client (hyper-rustls, native roots, the `ring` provider):
//! neither reads `HTTPS_PROXY`, so the proxy's token requests go straight to the token
//! endpoint and never through its own listeners.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gcp_auth::TokenProvider;
use http::Uri;
use serde::Deserialize;

use crate::credential::fetch::{
    Fetch, FetchFuture, Fetched, HttpsClient, Why, https_client, post_token_form,
};
use crate::error::chain;
use crate::providers::google::CLOUD_PLATFORM_SCOPE;
use crate::providers::google::adc::{Adc, AdcKind};
use crate::secret::Secret;

/// Lifetime assumed when the endpoint does not say (Google's tokens live one hour).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// Builds the fetcher for `adc`, checking what can be checked offline (the private key
/// parses, the TLS roots load) so a broken credential stops startup.
pub fn for_adc(adc: &Adc) -> Result<Arc<dyn Fetch>, String> {
    match &adc.kind {
        AdcKind::ServiceAccount {
            json, token_uri, ..
        } => {
            gcp_auth::CustomServiceAccount::from_json(json.expose()).map_err(describe)?;
            Ok(Arc::new(ServiceAccount {
                json: json.clone(),
                token_uri: token_uri.clone(),
            }))
        }
        AdcKind::AuthorizedUser {
            client_id,
            client_secret,
            refresh_token,
            token_uri,
        } => Ok(Arc::new(AuthorizedUser {
            client: https_client()?,
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
            refresh_token: refresh_token.clone(),
            token_uri: token_uri.clone(),
        })),
    }
}

/// A service account, through `gcp_auth` (which signs the JWT-bearer assertion with `ring`
/// and posts it to the key's `token_uri`).
struct ServiceAccount {
    json: Secret,
    token_uri: Uri,
}

impl Fetch for ServiceAccount {
    fn fetch(&self, _why: Why) -> FetchFuture<'_> {
        Box::pin(async move {
            // A fresh provider per fetch: gcp_auth caches tokens until 20 s before expiry and
            // has no way to drop one, while we must be able to force a refresh after a 401.
            // Its clients are cheap next to a token request that happens about once an hour.
            let provider =
                gcp_auth::CustomServiceAccount::from_json(self.json.expose()).map_err(describe)?;
            let token = provider
                .token(&[CLOUD_PLATFORM_SCOPE])
                .await
                .map_err(describe)?;
            let now = unix_now();
            let lifetime = u64::try_from(token.expires_at().timestamp())
                .ok()
                .and_then(|at| at.checked_sub(now))
                .map(Duration::from_secs)
                .unwrap_or(Duration::ZERO);
            Ok(Fetched::token(Secret::new(token.as_str()), lifetime))
        })
    }

    fn endpoint(&self) -> String {
        self.token_uri.to_string()
    }
}

/// An authorized user (refresh token). gcp_auth only reads this type from
/// `~/.config/gcloud/application_default_credentials.json` and always posts to
/// `accounts.google.com`, so the refresh grant (RFC 6749 §6) is done here.
struct AuthorizedUser {
    client: HttpsClient,
    client_id: String,
    client_secret: Secret,
    refresh_token: Secret,
    token_uri: Uri,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl Fetch for AuthorizedUser {
    fn fetch(&self, _why: Why) -> FetchFuture<'_> {
        Box::pin(async move {
            let form = form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "refresh_token")
                .append_pair("client_id", &self.client_id)
                .append_pair("client_secret", self.client_secret.expose())
                .append_pair("refresh_token", self.refresh_token.expose())
                .finish();
            let body = post_token_form(&self.client, self.token_uri.clone(), form).await?;
            let parsed: TokenResponse = serde_json::from_slice(&body)
                .map_err(|_| "token endpoint answer is not a token JSON object".to_string())?;
            Ok(Fetched::token(
                Secret::new(parsed.access_token),
                parsed
                    .expires_in
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_LIFETIME),
            ))
        })
    }

    fn endpoint(&self) -> String {
        self.token_uri.to_string()
    }
}

/// gcp_auth's errors, rendered without anything that could quote a token response: its
/// JSON errors keep only their context.
pub fn describe(e: gcp_auth::Error) -> String {
    match e {
        gcp_auth::Error::Json(what, _) => what.to_string(),
        gcp_auth::Error::Str(what) => what.to_string(),
        other => chain(&other),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
