//! Claude Code's `.credentials.json`: read on demand (it may appear after startup), refresh
//! 5 minutes before `expiresAt` or after a `401`, write the rotated pair back atomically
//! with every other field kept.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Uri, header};
use http_body_util::Full;
use serde::Deserialize;

use crate::credential::fetch::{
    Fetch, FetchError, FetchFuture, Fetched, HttpsClient, Why, https_client, read_token_response,
};
use crate::credential::file::{Read, read_private, write_private};
use crate::providers::anthropic::{CLAUDE_CODE_CLIENT_ID, SeenClientId};
use crate::secret::Secret;

/// Refresh this long before `expiresAt`, so no request leaves with a token about to die.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// The key of the subscription object in the file.
const KEY: &str = "claudeAiOauth";

/// The fields of `claudeAiOauth` the proxy uses. No `Debug` of values: they are secrets.
pub struct Oauth {
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub expires_at_ms: u64,
    pub client_id: Option<String>,
}

#[derive(Deserialize)]
struct RawOauth {
    #[serde(rename = "accessToken")]
    access_token: String,
    #[serde(rename = "refreshToken")]
    refresh_token: String,
    #[serde(rename = "expiresAt")]
    expires_at: u64,
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

impl Oauth {
    /// Errors name fields, never values.
    pub fn from_doc(doc: &serde_json::Value) -> Result<Oauth, String> {
        let obj = doc
            .get(KEY)
            .ok_or_else(|| format!("no {KEY} object (is this Claude Code's .credentials.json?)"))?;
        let raw: RawOauth = serde_json::from_value(obj.clone()).map_err(|_| {
            format!(
                "{KEY} needs accessToken and refreshToken (strings) and expiresAt (ms since epoch)"
            )
        })?;
        if raw.refresh_token.trim().is_empty() {
            return Err(format!("{KEY}.refreshToken is empty"));
        }
        Ok(Oauth {
            access_token: Secret::new(raw.access_token),
            refresh_token: Secret::new(raw.refresh_token),
            expires_at_ms: raw.expires_at,
            client_id: raw.client_id.filter(|c| !c.trim().is_empty()),
        })
    }
}

/// Parses the document; errors give the position only (serde could quote a value).
fn parse_doc(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))
}

/// The startup check: a missing file is fine (it may be mounted later); an existing one
/// must be owner-only and well-formed. Returns a word for the startup log.
pub fn check_at_startup(path: &std::path::Path) -> Result<&'static str, String> {
    match read_private(path)? {
        Read::Missing => Ok("not there yet: the route answers 401 until it appears"),
        Read::Text(text) => {
            let doc = parse_doc(&text)?;
            Oauth::from_doc(&doc)?;
            Ok("present")
        }
    }
}

/// Reads and refreshes the file; the token source calls it.
pub struct Refresher {
    path: PathBuf,
    token_uri: Uri,
    seen: SeenClientId,
    client: HttpsClient,
}

impl Refresher {
    pub fn new(path: PathBuf, token_uri: Uri, seen: SeenClientId) -> Result<Refresher, String> {
        Ok(Refresher {
            path,
            token_uri,
            seen,
            client: https_client()?,
        })
    }

    fn read(&self) -> Result<(serde_json::Value, Oauth), FetchError> {
        let shown = self.path.display();
        match read_private(&self.path)? {
            Read::Missing => Err(FetchError::SignedOut(format!("{shown} does not exist yet"))),
            Read::Text(text) => {
                let doc = parse_doc(&text).map_err(|e| format!("{shown}: {e}"))?;
                let oauth = Oauth::from_doc(&doc).map_err(|e| format!("{shown}: {e}"))?;
                Ok((doc, oauth))
            }
        }
    }

    async fn refresh(
        &self,
        mut doc: serde_json::Value,
        oauth: Oauth,
    ) -> Result<Fetched, FetchError> {
        let seen = self.seen.lock().map(|s| s.clone()).unwrap_or(None);
        let client_id = oauth
            .client_id
            .clone()
            .or(seen)
            .unwrap_or_else(|| CLAUDE_CODE_CLIENT_ID.to_string());
        let grant = serde_json::json!({
            "grant_type": "refresh_token",
            "refresh_token": oauth.refresh_token.expose(),
            "client_id": client_id,
        });
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.token_uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(grant.to_string())))
            .map_err(|e| format!("cannot build the token request: {e}"))?;
        let body = read_token_response(&self.client, req).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| "token endpoint answer is not a token JSON object".to_string())?;
        let lifetime = Duration::from_secs(answer.expires_in);
        let expires_at_ms = now_ms().saturating_add(lifetime.as_millis() as u64);
        // Refresh tokens rotate: the old one is kept only if no new one came.
        let refresh = answer
            .refresh_token
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| oauth.refresh_token.expose().to_string());
        if let Some(obj) = doc.get_mut(KEY).and_then(|o| o.as_object_mut()) {
            obj.insert("accessToken".into(), answer.access_token.clone().into());
            obj.insert("refreshToken".into(), refresh.into());
            obj.insert("expiresAt".into(), expires_at_ms.into());
        }
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| format!("cannot serialise the refreshed credentials: {e}"))?;
        // Persist before use: a rotated refresh token that is not written down is lost.
        write_private(&self.path, &text)
            .map_err(|e| format!("refreshed, but cannot write back: {e}"))?;
        tracing::info!(file = %self.path.display(), lifetime_s = lifetime.as_secs(), "refreshed the Claude subscription token and wrote it back");
        Ok(Fetched {
            access_token: Secret::new(answer.access_token),
            lifetime,
            margin: Some(REFRESH_BEFORE.min(lifetime / 2)),
            extra: Vec::new(),
            stand_ins: Vec::new(),
        })
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: u64,
}

impl Fetch for Refresher {
    fn fetch(&self, why: Why) -> FetchFuture<'_> {
        Box::pin(async move {
            let (doc, oauth) = self.read()?;
            let left = Duration::from_millis(oauth.expires_at_ms.saturating_sub(now_ms()));
            // The file may be fresh already (Claude Code on the host refreshed it).
            if why == Why::Due && left > REFRESH_BEFORE {
                return Ok(Fetched {
                    access_token: oauth.access_token,
                    lifetime: left,
                    margin: Some(REFRESH_BEFORE),
                    extra: Vec::new(),
                    stand_ins: Vec::new(),
                });
            }
            self.refresh(doc, oauth).await
        })
    }

    fn endpoint(&self) -> String {
        self.token_uri.to_string()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_checked_at_startup_without_echoing_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".credentials.json");
        assert!(check_at_startup(&path).unwrap().contains("not there yet"));
        let cases = [
            ("{\"claudeAiOauth\":", "not valid JSON"),
            ("{\"other\":1}", "no claudeAiOauth"),
            (
                "{\"claudeAiOauth\":{\"accessToken\":\"SECRETVALUE\",\"expiresAt\":1}}",
                "refreshToken",
            ),
        ];
        for (text, want) in cases {
            write_private(&path, text).unwrap();
            let err = check_at_startup(&path).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
            assert!(!err.contains("SECRETVALUE"), "{err}");
        }
        write_private(
            &path,
            "{\"claudeAiOauth\":{\"accessToken\":\"a\",\"refreshToken\":\"r\",\"expiresAt\":1}}",
        )
        .unwrap();
        assert_eq!(check_at_startup(&path).unwrap(), "present");
    }
}
