//! Credential routes: which request gets which real value, in which header.
//!
//! A route is plain data: where it applies ([`Matcher`]: domains, path prefix, methods,
//! whether the client must have sent the header), how the value is written ([`Injector`]:
//! bearer, bare header, basic, plus the headers the route owns) and where the value comes
//! from ([`Source`]: static or refreshing). [`Routes::select`] is the one pure choice per
//! request; the only I/O (reading env vars and credential files) happens at startup in
//! [`Routes::from_json`].

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use http::Method;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::credential::{Holds, Source, Unavailable};
use crate::error::ProxyError;
use crate::host::{DomainPattern, Host};
use crate::scrub::Needles;
use crate::secret::Secret;
use crate::vend::Vendors;

/// The routing table that ships in the binary.
pub const DEFAULT_CREDENTIALS_JSON: &str = include_str!("credentials.json");

/// How the value is written into a header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// `Bearer <value>`.
    Bearer,
    /// The value as it is (`x-api-key: <value>`); written as `Bearer <value>` when the
    /// client used `Authorization` for it.
    Bare,
    /// `Basic base64(<username>:<value>)`, for git hosts.
    Basic { username: String },
}

/// Which owned header gets the value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Always the default header.
    Default,
    /// The owned header the client used (the default one when it used several or none):
    /// an API key travels as `x-api-key` or `Authorization: Bearer`, as the client chose.
    AsClient,
}

/// How a route writes its value.
#[derive(Clone, Debug)]
pub struct Injector {
    /// Set when the client sent none of the owned headers.
    pub header: HeaderName,
    pub format: Format,
    /// Further headers that can carry this credential: whatever the client sent in them is
    /// removed, so its dummy never reaches the upstream.
    pub also_owns: Vec<HeaderName>,
    pub placement: Placement,
}

impl Injector {
    /// Every header this route owns, the default first.
    pub fn owned(&self) -> impl Iterator<Item = &HeaderName> {
        std::iter::once(&self.header).chain(self.also_owns.iter())
    }

    fn client_sent_one(&self, headers: &HeaderMap) -> bool {
        self.owned().any(|h| headers.contains_key(h))
    }

    /// The header the value goes into for this request.
    fn target(&self, headers: &HeaderMap) -> HeaderName {
        match self.placement {
            Placement::Default => self.header.clone(),
            Placement::AsClient => self
                .owned()
                .find(|h| headers.contains_key(*h))
                .unwrap_or(&self.header)
                .clone(),
        }
    }

    /// The header text for `secret` in `header`.
    fn text(&self, header: &HeaderName, secret: &str) -> String {
        match &self.format {
            Format::Bearer => format!("Bearer {secret}"),
            Format::Bare if *header == AUTHORIZATION => format!("Bearer {secret}"),
            Format::Bare => secret.to_string(),
            Format::Basic { username } => format!("Basic {}", basic_token(username, secret)),
        }
    }
}

fn basic_token(username: &str, secret: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{secret}"))
}

/// Where a route applies. Pure data, checked by [`Matcher::accepts`].
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    pub domains: Vec<DomainPattern>,
    /// `p` matches `p` and `p/...`, never `px` (Go-compatible).
    pub path_prefix: Option<String>,
    /// `None`: every method.
    pub methods: Option<Vec<Method>>,
    /// Inject only when the client sent one of the route's owned headers (keeps anonymous
    /// requests, say to a CDN, anonymous).
    pub require_client_header: bool,
}

impl Matcher {
    pub fn accepts(
        &self,
        injector: &Injector,
        host: &Host,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> bool {
        self.accepts_request_line(host, method, path)
            && (!self.require_client_header || injector.client_sent_one(headers))
    }

    /// Host, method and path only: what is known without the headers.
    fn accepts_request_line(&self, host: &Host, method: &Method, path: &str) -> bool {
        self.domains.iter().any(|d| d.matches(host))
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| path_has_prefix(path, p))
            && self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// True when this matcher applies to every request for its domains.
    fn unconditional(&self) -> bool {
        self.path_prefix.is_none() && self.methods.is_none() && !self.require_client_header
    }
}

/// `p` matches `p`, `p/...` and `p?...`; `/backend-apix` is not under `/backend-api`.
pub fn path_has_prefix(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// One usable route: its credential is present (or, for a file that may appear later,
/// configured).
#[derive(Clone, Debug)]
pub struct Route {
    pub env_var: String,
    /// The injector kind as the table names it (`bearer`, `api_key`, a provider kind, ...).
    pub kind: String,
    pub matcher: Matcher,
    pub injector: Injector,
    source: Source,
    /// Static routes: the value for each owned header, built once and marked sensitive (so
    /// HPACK never indexes it and `Debug` prints `Sensitive`), and what to mask.
    fixed: Option<Fixed>,
}

#[derive(Clone, Debug)]
struct Fixed {
    values: Vec<(HeaderName, HeaderValue)>,
    needles: Needles,
}

/// The value one request carries.
#[derive(Clone, Debug)]
pub struct Value {
    token: Secret,
    extra: Arc<Vec<(HeaderName, HeaderValue)>>,
    /// What to mask in this request's response.
    pub needles: Needles,
    /// The refreshing token's generation; `None` for a static value.
    pub generation: Option<u64>,
}

#[derive(Clone, Debug, Default)]
pub struct Routes {
    routes: Vec<Route>,
    /// Entries skipped at startup, with the reason, for one log line each.
    pub skipped: Vec<(String, &'static str)>,
    /// One line per provider credential, for the startup log (no secret).
    pub summaries: Vec<String>,
    /// The answers the configured providers give themselves.
    pub vendors: Vendors,
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
    params: Params,
    domains: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Params {
    header_name: Option<String>,
    username: Option<String>,
    path_prefix: Option<String>,
    methods: Option<Vec<String>>,
    #[serde(default)]
    require_client_header: bool,
    /// Further headers the route owns (their client values are removed).
    owned_headers: Option<Vec<String>>,
}

/// One entry of the table as plain data, before any variable is read.
#[derive(Clone, Debug)]
pub struct Entry {
    pub env_var: String,
    pub kind: String,
    pub holds: Holds,
    pub matcher: Matcher,
    pub injector: Injector,
}

/// Parses the table without reading any variable: for `--help`, docs and the sandbox's
/// list of variables to stub.
pub fn parse_table(json: &str) -> Result<Vec<Entry>, RoutesError> {
    let file: FileSchema =
        serde_json::from_str(json).map_err(|e| RoutesError::Json(e.to_string()))?;
    file.credentials
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            let bad = |problem: String| RoutesError::Entry {
                index,
                env_var: e.env_var.clone(),
                problem,
            };
            parse_entry(&e).map_err(bad)
        })
        .collect()
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| format!("'{name}' is not a valid header name"))
}

fn parse_entry(e: &EntrySchema) -> Result<Entry, String> {
    if e.env_var.is_empty() {
        return Err("env_var is empty".into());
    }
    if e.domains.is_empty() {
        return Err("domains is empty".into());
    }
    let domains = e
        .domains
        .iter()
        .map(|d| DomainPattern::parse(d).map_err(|err| format!("domain '{d}': {err}")))
        .collect::<Result<Vec<_>, _>>()?;
    let p = &e.params;
    let need = |v: &Option<String>, name: &str| match v {
        Some(s) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!(
            "injector '{}' needs params.{name} (a non-empty string)",
            e.injector
        )),
    };
    let (holds, mut injector) = match e.injector.as_str() {
        "bearer" => (Holds::Value, fixed_injector(AUTHORIZATION, Format::Bearer)),
        "api_key" => {
            let header = header_name(&need(&p.header_name, "header_name")?)?;
            let mut inj = fixed_injector(header, Format::Bare);
            inj.placement = Placement::AsClient;
            (Holds::Value, inj)
        }
        "basic" => (
            Holds::Value,
            fixed_injector(
                AUTHORIZATION,
                Format::Basic {
                    username: need(&p.username, "username")?,
                },
            ),
        ),
        other => match crate::providers::kind(other) {
            Some(k) => (k.holds, fixed_injector(AUTHORIZATION, Format::Bearer)),
            None => {
                return Err(format!(
                    "unknown injector '{other}' (expected bearer, api_key, basic or {})",
                    crate::providers::names().join(", ")
                ));
            }
        },
    };
    for name in p.owned_headers.iter().flatten() {
        let h = header_name(name)?;
        if !injector.owned().any(|o| *o == h) {
            injector.also_owns.push(h);
        }
    }
    let path_prefix = match &p.path_prefix {
        None => None,
        Some(pp) if pp.starts_with('/') => Some(pp.clone()),
        Some(pp) => return Err(format!("params.path_prefix '{pp}' must start with '/'")),
    };
    let methods = match &p.methods {
        None => None,
        Some(list) if list.is_empty() => return Err("params.methods is empty".into()),
        Some(list) => Some(
            list.iter()
                .map(|m| {
                    Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                        .map_err(|_| format!("params.methods: '{m}' is not an HTTP method"))
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    Ok(Entry {
        env_var: e.env_var.clone(),
        kind: e.injector.clone(),
        holds,
        matcher: Matcher {
            domains,
            path_prefix,
            methods,
            require_client_header: p.require_client_header,
        },
        injector,
    })
}

fn fixed_injector(header: HeaderName, format: Format) -> Injector {
    Injector {
        header,
        format,
        also_owns: Vec::new(),
        placement: Placement::Default,
    }
}

impl Routes {
    /// Parses the routing table and reads each credential through `env`. An unset or empty
    /// variable skips its entry silently, as in the original.
    pub fn from_json(
        json: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Routes, RoutesError> {
        let mut out = Routes::default();
        // One credential per provider kind: every entry of a kind names the same sources.
        let mut loaded: HashMap<String, Option<Source>> = HashMap::new();
        for (index, entry) in parse_table(json)?.into_iter().enumerate() {
            let bad = |problem: String| RoutesError::Entry {
                index,
                env_var: entry.env_var.clone(),
                problem,
            };
            out.names.push(entry.env_var.clone());
            if let Some(kind) = crate::providers::kind(&entry.kind) {
                let source = match loaded.get(&entry.kind) {
                    Some(s) => s.clone(),
                    None => {
                        let got = (kind.load)(&entry.env_var, env).map_err(bad)?;
                        let source = got.map(|l| {
                            out.summaries.push(l.summary);
                            for v in l.vendors {
                                out.vendors.push(v);
                            }
                            l.source
                        });
                        loaded.insert(entry.kind.clone(), source.clone());
                        source
                    }
                };
                if let Some(source) = source {
                    out.push(entry, source, None);
                }
                continue;
            }
            let Some(raw) = env(&entry.env_var).filter(|v| !v.is_empty()) else {
                continue;
            };
            let secret = Secret::new(raw);
            let fixed = fixed_values(&entry.injector, &secret).map_err(|()| {
                // The error must not echo the value: it is a secret.
                bad(format!(
                    "the value of {} contains characters not allowed in an HTTP header (newline or control character?)",
                    entry.env_var
                ))
            })?;
            out.push(entry, Source::Static(secret), Some(fixed));
        }
        Ok(out)
    }

    fn push(&mut self, entry: Entry, source: Source, fixed: Option<Fixed>) {
        self.routes.push(Route {
            env_var: entry.env_var,
            kind: entry.kind,
            matcher: entry.matcher,
            injector: entry.injector,
            source,
            fixed,
        });
    }

    /// The route for one request: the first whose matcher accepts it. Pure.
    pub fn select(
        &self,
        host: &Host,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<&Route> {
        self.select_among(host, method, path, headers, |_| true)
    }

    /// The route a request with these host, method and path would get if it sent whatever
    /// headers a route requires (`policy explain` knows no headers).
    pub fn select_assuming_client_headers(
        &self,
        host: &Host,
        method: &Method,
        path: &str,
        allowed: impl Fn(&str) -> bool,
    ) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| allowed(&r.env_var) && r.matcher.accepts_request_line(host, method, path))
    }

    /// [`Routes::select`] over the routes whose variable `allowed` accepts.
    pub fn select_among(
        &self,
        host: &Host,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        allowed: impl Fn(&str) -> bool,
    ) -> Option<&Route> {
        self.routes.iter().find(|r| {
            allowed(&r.env_var) && r.matcher.accepts(&r.injector, host, method, path, headers)
        })
    }

    /// True when some route could give `host` a credential (for the connection's log line).
    pub fn serves(&self, host: &Host) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| r.matcher.domains.iter().any(|d| d.matches(host)))
            .map(|r| r.env_var.as_str())
    }

    /// Whether the table has an entry for `env_var` (whether or not its value is set).
    pub fn knows(&self, env_var: &str) -> bool {
        self.names.iter().any(|n| n == env_var)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter()
    }

    /// Routes that can never match because an earlier one always wins: `(dead, winner)`
    /// variable names. Regex domains are never judged (their overlap is undecidable here).
    pub fn dead(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (i, later) in self.routes.iter().enumerate() {
            let winner = self.routes[..i].iter().find(|early| {
                early.matcher.unconditional()
                    && later
                        .matcher
                        .domains
                        .iter()
                        .all(|d| early.matcher.domains.iter().any(|e| covers(e, d)))
            });
            if let Some(w) = winner {
                out.push((later.env_var.clone(), w.env_var.clone()));
            }
        }
        out
    }
}

/// True when every host `b` matches, `a` matches too.
fn covers(a: &DomainPattern, b: &DomainPattern) -> bool {
    use DomainPattern::{Exact, Suffix};
    match (a, b) {
        (Exact(x), Exact(y)) => x == y,
        (Suffix(x), Exact(y) | Suffix(y)) => y.is_within(x),
        _ => false,
    }
}

/// The value of a static route for each header it may write.
fn fixed_values(injector: &Injector, secret: &Secret) -> Result<Fixed, ()> {
    let mut needles = vec![secret.expose().as_bytes().to_vec()];
    if let Format::Basic { username } = &injector.format {
        needles.push(basic_token(username, secret.expose()).into_bytes());
    }
    let mut values = Vec::new();
    for h in injector.owned() {
        let mut v = HeaderValue::from_str(&injector.text(h, secret.expose())).map_err(|_| ())?;
        v.set_sensitive(true);
        values.push((h.clone(), v));
    }
    Ok(Fixed {
        values,
        needles: Needles::new(needles),
    })
}

impl Route {
    /// True when the value is fetched at run time (and a `401` may be retried).
    pub fn refreshes(&self) -> bool {
        matches!(self.source, Source::Refreshing(_))
    }

    /// The value for the next request: fixed, or the current token (fetched if needed).
    pub async fn value(&self) -> Result<Value, ProxyError> {
        match &self.source {
            Source::Static(secret) => Ok(Value {
                token: secret.clone(),
                extra: Arc::default(),
                needles: self
                    .fixed
                    .as_ref()
                    .map(|f| f.needles.clone())
                    .unwrap_or_else(|| Needles::new(Vec::new())),
                generation: None,
            }),
            Source::Refreshing(tokens) => {
                let b = tokens.token().await.map_err(|u| self.unavailable(u))?;
                Ok(Value {
                    token: b.token,
                    extra: b.extra,
                    needles: b.needles,
                    generation: Some(b.generation),
                })
            }
        }
    }

    /// After a `401` to `rejected`: a different value, or why there is none.
    pub async fn refresh_rejected(&self, rejected: &Value) -> Result<Value, Unavailable> {
        let (Source::Refreshing(tokens), Some(generation)) = (&self.source, rejected.generation)
        else {
            return Err(Unavailable::Failed(
                "a static credential cannot be refreshed".into(),
            ));
        };
        let b = tokens.refresh_rejected(generation).await?;
        Ok(Value {
            token: b.token,
            extra: b.extra,
            needles: b.needles,
            generation: Some(b.generation),
        })
    }

    fn unavailable(&self, u: Unavailable) -> ProxyError {
        let label = match &self.source {
            Source::Refreshing(t) => t.label(),
            Source::Static(_) => "",
        };
        match u {
            Unavailable::SignedOut(detail) => ProxyError::NotSignedIn {
                credential: self.env_var.clone(),
                detail,
            },
            Unavailable::Failed(detail) => ProxyError::NoToken {
                label,
                credential: self.env_var.clone(),
                detail,
            },
        }
    }

    /// Writes `value`: every owned header the client sent goes (all spellings, all
    /// duplicates), exactly one real value is set in the header the injector picks, and the
    /// flow's extra headers replace whatever the client sent in them.
    pub fn write(&self, value: &Value, headers: &mut HeaderMap) -> Result<(), ProxyError> {
        let target = self.injector.target(headers);
        for h in self.injector.owned() {
            headers.remove(h);
        }
        let fixed = self
            .fixed
            .as_ref()
            .and_then(|f| f.values.iter().find(|(h, _)| *h == target))
            .map(|(_, v)| v.clone());
        let v = match fixed {
            Some(v) => v,
            None => {
                let mut v =
                    HeaderValue::from_str(&self.injector.text(&target, value.token.expose()))
                        .map_err(|_| {
                            ProxyError::Internal(format!(
                                "the value of {} is not a valid header value",
                                self.env_var
                            ))
                        })?;
                v.set_sensitive(true);
                v
            }
        };
        headers.insert(target, v);
        for (name, v) in value.extra.iter() {
            headers.remove(name);
            headers.insert(name.clone(), v.clone());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "BEARER_KEY" => Some("sk-bearer".into()),
            "GH_TOKEN" => Some("ghp_x".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn h(s: &str) -> Host {
        Host::parse(s).unwrap()
    }

    fn find<'a>(r: &'a Routes, host: &str) -> Option<&'a Route> {
        r.select(&h(host), &Method::GET, "/", &HeaderMap::new())
    }

    /// Writes the route's value the way the forward path does.
    fn apply(route: &Route, headers: &mut HeaderMap) {
        let v = futures_lite_block(route.value()).unwrap();
        route.write(&v, headers).unwrap();
    }

    fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn basic_and_first_match_wins() {
        let json = r#"{"credentials":[
            {"env_var":"GH_TOKEN","injector":"basic","params":{"username":"x-access-token"},"domains":["github.com"]},
            {"env_var":"BEARER_KEY","injector":"bearer","domains":["github.com",".bearer.test"]},
            {"env_var":"EMPTY","injector":"bearer","domains":[".bearer.test"]}]}"#;
        let r = Routes::from_json(json, &env).unwrap();
        let mut headers = HeaderMap::new();
        apply(find(&r, "github.com").unwrap(), &mut headers);
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
            (
                r#"{"credentials":[{"env_var":"A","injector":"bearer","params":{"path_prefx":"/a"},"domains":["a.com"]}]}"#,
                "unknown field",
            ),
            (
                r#"{"credentials":[{"env_var":"A","injector":"bearer","params":{"path_prefix":"a"},"domains":["a.com"]}]}"#,
                "must start with '/'",
            ),
            (
                r#"{"credentials":[{"env_var":"A","injector":"bearer","params":{"methods":["G T"]},"domains":["a.com"]}]}"#,
                "not an HTTP method",
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

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in list {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn matchers_choose_per_request() {
        let json = r#"{"credentials":[
            {"env_var":"A","injector":"bearer","params":{"path_prefix":"/backend-api"},"domains":["chat.test"]},
            {"env_var":"B","injector":"bearer","params":{"methods":["post"]},"domains":["chat.test"]},
            {"env_var":"C","injector":"api_key","params":{"header_name":"x-api-key","require_client_header":true},"domains":[".cdn.test"]},
            {"env_var":"D","injector":"bearer","domains":["chat.test"]}]}"#;
        let r = Routes::from_json(json, &|_| Some("sk-value".into())).unwrap();
        let none = headers(&[]);
        let key = headers(&[("X-Api-Key", "dummy")]);
        let table: &[(&str, Method, &str, &HeaderMap, Option<&str>)] = &[
            ("chat.test", Method::GET, "/backend-api", &none, Some("A")),
            (
                "chat.test",
                Method::GET,
                "/backend-api/x?y",
                &none,
                Some("A"),
            ),
            ("chat.test", Method::GET, "/backend-api?y", &none, Some("A")),
            ("chat.test", Method::GET, "/backend-apix", &none, Some("D")),
            ("chat.test", Method::POST, "/other", &none, Some("B")),
            ("chat.test", Method::GET, "/other", &none, Some("D")),
            ("dl.cdn.test", Method::GET, "/", &none, None),
            ("dl.cdn.test", Method::GET, "/", &key, Some("C")),
            (
                "chat.test.evil.test",
                Method::GET,
                "/backend-api",
                &none,
                None,
            ),
        ];
        for (host, method, path, hdrs, want) in table {
            let got = r
                .select(&h(host), method, path, hdrs)
                .map(|r| r.env_var.as_str());
            assert_eq!(got, *want, "{method} {host}{path}");
        }
        // The allowed-names filter: a route the caller may not use is passed over.
        let got = r
            .select_among(&h("chat.test"), &Method::GET, "/backend-api", &none, |v| {
                v != "A"
            })
            .map(|r| r.env_var.as_str());
        assert_eq!(got, Some("D"));
    }

    #[test]
    fn dead_routes_are_found() {
        let json = r#"{"credentials":[
            {"env_var":"WIDE","injector":"bearer","domains":[".a.test"]},
            {"env_var":"NARROW","injector":"bearer","domains":["api.a.test"]},
            {"env_var":"PATHED","injector":"bearer","params":{"path_prefix":"/x"},"domains":["b.test"]},
            {"env_var":"AFTER_PATHED","injector":"bearer","domains":["b.test"]},
            {"env_var":"PARTLY","injector":"bearer","domains":["api.a.test","c.test"]}]}"#;
        let r = Routes::from_json(json, &|_| Some("sk-value".into())).unwrap();
        assert_eq!(r.dead(), vec![("NARROW".to_string(), "WIDE".to_string())]);
    }
}
