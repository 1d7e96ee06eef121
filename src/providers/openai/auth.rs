//! Codex's `auth.json` (ChatGPT sign-in): read on demand from the state file when it exists,
//! else the source file; refresh 5 minutes before the access token's JWT `exp` (unknown
//! `exp`: now) or after a `401`; persist rotated tokens atomically before using them
//! (refresh tokens are single-use).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderName, Uri};
use serde::Deserialize;

use crate::credential::fetch::{
    Fetch, FetchError, FetchFuture, Fetched, HttpsClient, Why, https_client, post_token_form,
};
use crate::credential::file::{Read, read_private, write_private};
use crate::providers::openai::vend::PLACEHOLDER_ACCOUNT;
use crate::providers::openai::{ACCOUNT_HEADER, CLIENT_ID, jwt};
use crate::secret::Secret;

/// Refresh this long before the access token's `exp`.
pub const REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);
/// Lifetime assumed for a refreshed token whose `exp` is unreadable and whose answer names
/// no `expires_in`.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// The tokens of one `auth.json`. Values are secrets; no `Debug`.
pub struct Tokens {
    pub access_token: Secret,
    pub refresh_token: Secret,
    pub account_id: Option<Secret>,
}

#[derive(Deserialize)]
struct RawTokens {
    access_token: Option<String>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    account_id: Option<String>,
}

impl Tokens {
    /// Errors name fields, never values.
    pub fn from_doc(doc: &serde_json::Value) -> Result<Tokens, String> {
        let raw: RawTokens = doc
            .get("tokens")
            .ok_or("no tokens object (is this Codex's auth.json after a ChatGPT sign-in?)")
            .and_then(|t| {
                serde_json::from_value(t.clone()).map_err(|_| "tokens fields must be strings")
            })?;
        let refresh = raw
            .refresh_token
            .filter(|r| !r.trim().is_empty())
            .ok_or("tokens.refresh_token is missing or empty")?;
        let account_id = raw
            .account_id
            .filter(|a| !a.trim().is_empty())
            .or_else(|| raw.id_token.as_deref().and_then(jwt::account_id));
        Ok(Tokens {
            access_token: Secret::new(raw.access_token.unwrap_or_default()),
            refresh_token: Secret::new(refresh),
            account_id: account_id.map(Secret::new),
        })
    }
}

fn parse_doc(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text)
        .map_err(|e| format!("not valid JSON (line {}, column {})", e.line(), e.column()))
}

/// The source file and the optional proxy-only state file that wins when it exists.
#[derive(Clone, Debug)]
pub struct Store {
    pub source: PathBuf,
    pub state: Option<PathBuf>,
}

impl Store {
    /// Reads the file in force. `Ok(None)`: neither exists (nobody signed in yet).
    pub fn read(&self) -> Result<Option<(PathBuf, serde_json::Value)>, String> {
        for path in self.state.iter().chain(std::iter::once(&self.source)) {
            match read_private(path)? {
                Read::Missing => continue,
                Read::Text(text) => {
                    let doc = parse_doc(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                    return Ok(Some((path.clone(), doc)));
                }
            }
        }
        Ok(None)
    }

    /// Where rotated tokens go: the state file when configured, else the source file.
    pub fn target(&self) -> &PathBuf {
        self.state.as_ref().unwrap_or(&self.source)
    }

    /// Writes `answer`'s tokens over `doc` (every other field kept) to [`Store::target`].
    pub fn persist(&self, mut doc: serde_json::Value, answer: &TokenAnswer) -> Result<(), String> {
        if !doc.is_object() {
            doc = serde_json::json!({});
        }
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("auth_mode".into(), "chatgpt".into());
            let tokens = obj.entry("tokens").or_insert_with(|| serde_json::json!({}));
            if let Some(t) = tokens.as_object_mut() {
                t.insert("access_token".into(), answer.access_token.clone().into());
                if let Some(r) = answer.refresh_token.as_ref().filter(|r| !r.is_empty()) {
                    t.insert("refresh_token".into(), r.clone().into());
                }
                if let Some(id) = answer.id_token.as_ref().filter(|r| !r.is_empty()) {
                    t.insert("id_token".into(), id.clone().into());
                    if let Some(acct) = jwt::account_id(id) {
                        t.insert("account_id".into(), acct.into());
                    }
                }
            }
            obj.insert("last_refresh".into(), now_rfc3339().into());
        }
        let text = serde_json::to_string_pretty(&doc)
            .map_err(|e| format!("cannot serialise the tokens: {e}"))?;
        write_private(self.target(), &text)
    }
}

/// A token endpoint's answer.
#[derive(Deserialize)]
pub struct TokenAnswer {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// The startup check: missing files are fine; existing ones must be owner-only and hold
/// tokens. Returns a phrase for the startup log.
pub fn check_at_startup(store: &Store) -> Result<&'static str, String> {
    match store.read()? {
        None => Ok("not signed in yet: the route answers 401 until a sign-in"),
        Some((path, doc)) => {
            Tokens::from_doc(&doc).map_err(|e| format!("{}: {e}", path.display()))?;
            Ok("present")
        }
    }
}

pub struct Refresher {
    store: Store,
    token_uri: Uri,
    client: HttpsClient,
}

impl Refresher {
    pub fn new(store: Store, token_uri: Uri) -> Result<Refresher, String> {
        Ok(Refresher {
            store,
            token_uri,
            client: https_client()?,
        })
    }

    async fn refresh(&self, doc: serde_json::Value, tokens: Tokens) -> Result<Fetched, FetchError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", tokens.refresh_token.expose())
            .append_pair("client_id", CLIENT_ID)
            .finish();
        let body = post_token_form(&self.client, self.token_uri.clone(), form).await?;
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|_| "token endpoint answer is not a token JSON object".to_string())?;
        // Persist before use: the old refresh token is spent.
        self.store
            .persist(doc, &answer)
            .map_err(|e| format!("refreshed, but cannot persist the rotated tokens: {e}"))?;
        tracing::info!(file = %self.store.target().display(), "refreshed the ChatGPT token and persisted it");
        let account = answer
            .id_token
            .as_deref()
            .and_then(jwt::account_id)
            .map(Secret::new)
            .or(tokens.account_id);
        let lifetime = lifetime_of(&answer.access_token)
            .or(answer.expires_in.map(Duration::from_secs))
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(fetched(Secret::new(answer.access_token), account, lifetime))
    }
}

fn fetched(access: Secret, account: Option<Secret>, lifetime: Duration) -> Fetched {
    Fetched {
        access_token: access,
        lifetime,
        margin: Some(REFRESH_BEFORE.min(lifetime / 2)),
        stand_ins: account
            .iter()
            .map(|a| (a.clone(), PLACEHOLDER_ACCOUNT))
            .collect(),
        extra: account
            .map(|a| (HeaderName::from_static(ACCOUNT_HEADER), a))
            .into_iter()
            .collect(),
    }
}

/// Time left before the JWT's `exp`.
fn lifetime_of(access: &str) -> Option<Duration> {
    let exp = jwt::exp(access)?;
    Some(Duration::from_secs(exp.saturating_sub(now_s())))
}

impl Fetch for Refresher {
    fn fetch(&self, why: Why) -> FetchFuture<'_> {
        Box::pin(async move {
            let Some((path, doc)) = self.store.read()? else {
                return Err(FetchError::SignedOut(format!(
                    "{} does not exist yet",
                    self.store.source.display()
                )));
            };
            let tokens = Tokens::from_doc(&doc).map_err(|e| format!("{}: {e}", path.display()))?;
            let left = lifetime_of(tokens.access_token.expose());
            if why == Why::Due
                && let Some(left) = left.filter(|l| *l > REFRESH_BEFORE)
            {
                return Ok(Fetched {
                    margin: Some(REFRESH_BEFORE),
                    ..fetched(tokens.access_token, tokens.account_id, left)
                });
            }
            self.refresh(doc, tokens).await
        })
    }

    fn endpoint(&self) -> String {
        self.token_uri.to_string()
    }
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Codex (0.156+) looks its placeholder account id up in the account list chatgpt.com
    /// returns: an echo of the real id must come back as that placeholder, not masked.
    #[test]
    fn the_account_id_echoes_as_the_agents_placeholder() {
        let account = Secret::new("acct-REAL-4f1e2d3c".to_string());
        let f = fetched(
            Secret::new("at-REAL".to_string()),
            Some(account.clone()),
            Duration::from_secs(3600),
        );
        assert_eq!(f.stand_ins, vec![(account.clone(), PLACEHOLDER_ACCOUNT)]);
        assert_eq!(f.extra.len(), 1);
        assert_eq!(f.extra[0].0.as_str(), ACCOUNT_HEADER.to_ascii_lowercase());
        let none = fetched(
            Secret::new("at-REAL".to_string()),
            None,
            Duration::from_secs(60),
        );
        assert!(none.stand_ins.is_empty() && none.extra.is_empty());
    }
}
