//! Credential routes: which header gets which real value for which host.
//!
//! Pure over request headers; the only I/O (reading env vars) happens once at startup in
//! [`Routes::from_json`].

use std::sync::Arc;

use base64::Engine;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::error::ProxyError;
use crate::gcloud::GcloudCredential;
use crate::host::{DomainPattern, Host};
use crate::scrub::Needles;
use crate::secret::Secret;

/// The routing table that ships in the binary; it mirrors the Go original's.
pub const DEFAULT_CREDENTIALS_JSON: &str = include_str!("credentials.json");

#[derive(Clone, Debug)]
pub enum Injector {
    /// `Authorization: Bearer <value>`.
    Bearer,
    /// `<header_name>: <value>`.
    ApiKey { header: HeaderName },
    /// `Authorization: Basic base64(<username>:<value>)`, for git hosts.
    Basic { username: String },
    /// `Authorization: Bearer <token>`, a Google OAuth2 access token from ADC.
    Gcloud,
}

impl Injector {
    fn header(&self) -> HeaderName {
        match self {
            Injector::ApiKey { header } => header.clone(),
            _ => AUTHORIZATION,
        }
    }
}

/// One usable route: its credential is present.
#[derive(Clone, Debug)]
pub struct Route {
    pub env_var: String,
    pub domains: Vec<DomainPattern>,
    /// The header this route owns.
    pub header: HeaderName,
    credential: Credential,
    /// What to mask in responses on this route: the secret and its encodings. Empty on a
    /// gcloud route, whose token changes: [`Route::inject`] returns that request's needles.
    pub needles: Needles,
}

/// Where a route's header value comes from.
#[derive(Clone, Debug)]
enum Credential {
    /// The complete header value, built once and marked sensitive (so HPACK never indexes it
    /// and `Debug` prints `Sensitive`).
    Static(HeaderValue),
    /// A Google access token, fetched and refreshed at run time.
    Gcloud(Arc<GcloudCredential>),
}

#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// Entries skipped at startup, with the reason, for one log line each.
    pub skipped: Vec<(String, &'static str)>,
    /// Every entry's variable name, available or not: what a policy file may name.
    names: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("not valid JSON for the credentials schema: {0}")]
    Json(String),
    #[error("entry {index} ({env_var}): {problem}")]
    Entry {
        index: usize,
        env_var: String,
        problem: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSchema {
    credentials: Vec<EntrySchema>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntrySchema {
    env_var: String,
    injector: String,
    #[serde(default)]
    params: serde_json::Map<String, serde_json::Value>,
    domains: Vec<String>,
}

impl Routes {
    /// Parses the routing table and reads each credential through `env`. An unset or empty
    /// variable skips its entry silently, as in the original.
    pub fn from_json(
        json: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Routes, RoutesError> {
        let file: FileSchema =
            serde_json::from_str(json).map_err(|e| RoutesError::Json(e.to_string()))?;
        let mut out = Routes::default();
        for (index, e) in file.credentials.into_iter().enumerate() {
            let bad = |problem: String| RoutesError::Entry {
                index,
                env_var: e.env_var.clone(),
                problem,
            };
            if e.env_var.is_empty() {
                return Err(bad("env_var is empty".into()));
            }
            if e.domains.is_empty() {
                return Err(bad("domains is empty".into()));
            }
            out.names.push(e.env_var.clone());
            let domains = e
                .domains
                .iter()
                .map(|d| DomainPattern::parse(d).map_err(|err| bad(format!("domain '{d}': {err}"))))
                .collect::<Result<Vec<_>, _>>()?;
            let param = |name: &str| -> Result<String, RoutesError> {
                match e.params.get(name) {
                    Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
                    _ => Err(bad(format!(
                        "injector '{}' needs params.{name} (a non-empty string)",
                        e.injector
                    ))),
                }
            };
            let injector = match e.injector.as_str() {
                "bearer" => Injector::Bearer,
                "api_key" => {
                    let name = param("header_name")?;
                    let header = HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| bad(format!("'{name}' is not a valid header name")))?;
                    Injector::ApiKey { header }
                }
                "basic" => Injector::Basic {
                    username: param("username")?,
                },
                "gcloud" => Injector::Gcloud,
                other => {
                    return Err(bad(format!(
                        "unknown injector '{other}' (expected bearer, api_key, basic or gcloud)"
                    )));
                }
            };
            if let Injector::Gcloud = injector {
                // Every gcloud entry names the same ADC sources; one token cache serves all.
                let existing = out.gcloud().cloned();
                let credential = match existing {
                    Some(c) => Some(c),
                    None => GcloudCredential::from_env(&e.env_var, env)
                        .map_err(bad)?
                        .map(Arc::new),
                };
                if let Some(credential) = credential {
                    out.routes.push(Route {
                        env_var: e.env_var,
                        domains,
                        header: AUTHORIZATION,
                        credential: Credential::Gcloud(credential),
                        needles: Needles::new(Vec::new()),
                    });
                }
                continue;
            }
            let Some(raw) = env(&e.env_var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let secret = Secret::new(raw);
            let mut needles = vec![secret.expose().as_bytes().to_vec()];
            let text = match &injector {
                Injector::Bearer => format!("Bearer {}", secret.expose()),
                Injector::ApiKey { .. } => secret.expose().to_string(),
                Injector::Basic { username } => {
                    let token = base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{}", secret.expose()));
                    needles.push(token.as_bytes().to_vec());
                    format!("Basic {token}")
                }
                Injector::Gcloud => unreachable!("handled above"),
            };
            // The error must not echo the value: it is a secret.
            let mut value = HeaderValue::from_str(&text).map_err(|_| {
                bad(format!(
                    "the value of {} contains characters not allowed in an HTTP header (newline or control character?)",
                    e.env_var
                ))
            })?;
            value.set_sensitive(true);
            out.routes.push(Route {
                env_var: e.env_var,
                domains,
                header: injector.header(),
                credential: Credential::Static(value),
                needles: Needles::new(needles),
            });
        }
        Ok(out)
    }

    /// First route whose domains match `host`.
    pub fn find(&self, host: &Host) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| r.domains.iter().any(|d| d.matches(host)))
    }

    /// Whether the table has an entry for `env_var` (whether or not its value is set).
    pub fn knows(&self, env_var: &str) -> bool {
        self.names.iter().any(|n| n == env_var)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// The configured Google credential, if any (it enables token vending and the metadata
    /// emulation).
    pub fn gcloud(&self) -> Option<&Arc<GcloudCredential>> {
        self.routes.iter().find_map(Route::gcloud)
    }
}

impl Route {
    /// Removes every value of the route's header the client sent (the map is
    /// case-insensitive, so all spellings and duplicates go) and sets exactly one real value.
    /// A gcloud route's value needs a token fetch: this only removes the client's value;
    /// use [`Route::inject`].
    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.remove(&self.header);
        if let Credential::Static(value) = &self.credential {
            headers.insert(self.header.clone(), value.clone());
        }
    }

    /// [`Route::apply`] for every kind of route: a gcloud route gets a current access token
    /// (fetched if needed). Returns what to scrub from this request's response. No token
    /// means a 502 that says why.
    pub async fn inject(&self, headers: &mut HeaderMap) -> Result<Needles, ProxyError> {
        let (value, needles) = match &self.credential {
            Credential::Static(value) => (value.clone(), self.needles.clone()),
            Credential::Gcloud(g) => {
                let bearer = g
                    .tokens
                    .token()
                    .await
                    .map_err(|detail| ProxyError::NoToken {
                        credential: self.env_var.clone(),
                        detail,
                    })?;
                (bearer.value, bearer.needles)
            }
        };
        headers.remove(&self.header);
        headers.insert(self.header.clone(), value);
        Ok(needles)
    }

    /// The route's Google credential, when it is a gcloud route.
    pub fn gcloud(&self) -> Option<&Arc<GcloudCredential>> {
        match &self.credential {
            Credential::Gcloud(g) => Some(g),
            Credential::Static(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "OPENAI_API_KEY" => Some("sk-openai".into()),
            "ANTHROPIC_API_KEY" => Some("sk-ant".into()),
            "GH_TOKEN" => Some("ghp_x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn h(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    #[test]
    fn default_table_routes_by_domain() {
        let r = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &env).unwrap();
        let table = [
            ("api.openai.com", Some("OPENAI_API_KEY")),
            ("evil-openai.com", None),
            ("api.anthropic.com", Some("ANTHROPIC_API_KEY")),
            ("github.com", Some("GH_TOKEN")),
            ("api.github.com", Some("GH_TOKEN")),
            ("raw.githubusercontent.com", Some("GH_TOKEN")),
            ("gist.github.com", None),
            ("api.cursor.com", None), // CURSOR_API_KEY unset: entry skipped
        ];
        for (host, want) in table {
            assert_eq!(r.find(&h(host)).map(|r| r.env_var.as_str()), want, "{host}");
        }
    }

    #[test]
    fn apply_replaces_every_variant_with_one_value() {
        let r = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &env).unwrap();
        let mut headers = HeaderMap::new();
        headers.append("Authorization", HeaderValue::from_static("Bearer dummy"));
        headers.append("AUTHORIZATION", HeaderValue::from_static("Bearer other"));
        headers.append("x-api-key", HeaderValue::from_static("keep"));
        r.find(&h("api.openai.com")).unwrap().apply(&mut headers);
        let auth: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
        assert_eq!(auth, vec!["Bearer sk-openai"]);
        assert!(auth[0].is_sensitive());
        assert_eq!(headers.get("x-api-key").unwrap(), "keep");

        let mut headers = HeaderMap::new();
        r.find(&h("api.anthropic.com")).unwrap().apply(&mut headers);
        assert_eq!(headers.get("x-api-key").unwrap(), "sk-ant");
        assert!(headers.get(AUTHORIZATION).is_none());
    }

    #[test]
    fn basic_and_first_match_wins() {
        let json = r#"{"credentials":[
            {"env_var":"GH_TOKEN","injector":"basic","params":{"username":"x-access-token"},"domains":["github.com"]},
            {"env_var":"OPENAI_API_KEY","injector":"bearer","domains":["github.com",".openai.com"]},
            {"env_var":"EMPTY","injector":"bearer","domains":[".openai.com"]}]}"#;
        let r = Routes::from_json(json, &env).unwrap();
        let mut headers = HeaderMap::new();
        r.find(&h("github.com")).unwrap().apply(&mut headers);
        // base64("x-access-token:ghp_x")
        assert_eq!(
            headers.get(AUTHORIZATION).unwrap(),
            "Basic eC1hY2Nlc3MtdG9rZW46Z2hwX3g="
        );
        assert_eq!(r.iter().count(), 2, "EMPTY is skipped");
    }

    #[test]
    fn schema_errors_name_the_entry() {
        let cases = [
            ("{", "not valid JSON"),
            (
                r#"{"credentials":[{"env_var":"A","injector":"nope","domains":["a.com"]}]}"#,
                "unknown injector 'nope'",
            ),
            (
                r#"{"credentials":[{"env_var":"A","injector":"api_key","domains":["a.com"]}]}"#,
                "params.header_name",
            ),
            (
                r#"{"credentials":[{"env_var":"A","injector":"bearer","domains":["~("]}]}"#,
                "domain '~('",
            ),
            (
                r#"{"credentials":[{"env_var":"A","injector":"bearer","domains":[]}]}"#,
                "domains is empty",
            ),
            (
                r#"{"credentials":[{"env_var":"A","injector":"bearer","domain":["a.com"]}]}"#,
                "unknown field",
            ),
        ];
        for (json, want) in cases {
            let err = Routes::from_json(json, &env).unwrap_err().to_string();
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn a_bad_secret_value_is_not_echoed() {
        let json = r#"{"credentials":[{"env_var":"BAD","injector":"bearer","domains":["a.com"]}]}"#;
        let err = Routes::from_json(json, &|_| Some("sk-secret\nx".into()))
            .unwrap_err()
            .to_string();
        assert!(!err.contains("sk-secret"), "{err}");
        assert!(err.contains("BAD"));
    }
}
