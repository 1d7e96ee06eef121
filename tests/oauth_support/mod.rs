//! A fake subscription provider for the Claude and ChatGPT tests: one real TLS server on
//! 127.0.0.1 (certificate from the test CA, SANs for 127.0.0.1 and the real names the tests
//! map to it) that plays both roles:
//!
//! - the OAuth token endpoint (`POST` to [`FakeOAuth::token_path`]): it records every grant
//!   (JSON or form body, as sent), accepts a refresh grant only with the refresh token it
//!   issued last (refresh tokens rotate), and answers with a new pair;
//! - the API (any other path): it records every request and answers `200` only to the
//!   access token it issued last (as `Authorization: Bearer` or `x-api-key`), `401`
//!   otherwise, or `401` to the next N requests when told to.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::support::IO_TIMEOUT;
use crate::support::body::{self, TestBody};
use crate::support::pki::{self, TestCa};
use crate::support::proxy::ProxyBuilder;
use crate::support::secrets::random_hex;

/// Makes the access token of a rotation (1, 2, ...).
pub type Mint = Box<dyn Fn(usize) -> String + Send + Sync>;

/// Answers an authorised API request in place of the default `{"ok": true}` (e.g. a real
/// API's response shape for a real agent); `None` keeps the default.
pub type Answer = Box<dyn Fn(&ApiRequest) -> Option<Response<TestBody>> + Send + Sync>;

/// One grant as the endpoint received it.
#[derive(Clone, Debug)]
pub struct Grant {
    pub content_type: String,
    /// The fields, from JSON or form.
    pub fields: BTreeMap<String, String>,
}

/// One API request as the fake received it.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub answered: u16,
    /// The request body as text (lossy), for tests that answer by what the client asked.
    pub body: String,
}

impl ApiRequest {
    pub fn values(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
            .collect()
    }
}

struct State {
    token_path: String,
    mint: Mint,
    rotations: AtomicUsize,
    access: Mutex<String>,
    refresh: Mutex<String>,
    expires_in: u64,
    grants: Mutex<Vec<Grant>>,
    api: Mutex<Vec<ApiRequest>>,
    reject_next: AtomicUsize,
    grant_delay: Mutex<Duration>,
    /// Extra fields for every token answer (ChatGPT's id_token).
    extra: Mutex<serde_json::Map<String, serde_json::Value>>,
    answer: Mutex<Option<Arc<Answer>>>,
}

pub struct FakeOAuth {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FakeOAuth {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOAuth {
    /// `names`: the real host names the certificate must carry. `refresh`: the refresh token
    /// the endpoint accepts first (what the test writes into the proxy's file).
    pub async fn start(
        ca: &TestCa,
        names: &[&str],
        token_path: &str,
        refresh: &str,
        mint: Mint,
    ) -> FakeOAuth {
        let any_port = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
        Self::start_at(any_port, ca, names, token_path, refresh, mint).await
    }

    /// Like [`FakeOAuth::start`] on a given address, e.g. 127.0.0.1:443 inside a test's own
    /// network namespace, where a real agent dials the real port.
    pub async fn start_at(
        bind: SocketAddr,
        ca: &TestCa,
        names: &[&str],
        token_path: &str,
        refresh: &str,
        mint: Mint,
    ) -> FakeOAuth {
        let mut sans = vec!["127.0.0.1"];
        sans.extend_from_slice(names);
        let leaf = ca.leaf(&sans);
        let tls = TlsAcceptor::from(pki::server_config(&leaf));
        let listener = TcpListener::bind(bind).await.expect("bind fake");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            token_path: token_path.to_string(),
            mint,
            rotations: AtomicUsize::new(0),
            access: Mutex::new(String::new()),
            refresh: Mutex::new(refresh.to_string()),
            expires_in: 3600,
            grants: Mutex::default(),
            api: Mutex::default(),
            reject_next: AtomicUsize::new(0),
            grant_delay: Mutex::new(Duration::ZERO),
            extra: Mutex::default(),
            answer: Mutex::default(),
        });
        let task = tokio::spawn(accept_loop(listener, tls, state.clone()));
        FakeOAuth { addr, state, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The endpoint URL by IP literal: the proxy's own token client uses system DNS.
    pub fn token_url(&self) -> String {
        format!("https://127.0.0.1:{}{}", self.port(), self.state.token_path)
    }

    /// The API also accepts this access token (one the test wrote into the file).
    pub fn accept(&self, access: &str) {
        *self.state.access.lock().expect("lock") = access.to_string();
    }

    pub fn access(&self) -> String {
        self.state.access.lock().expect("lock").clone()
    }

    pub fn refresh(&self) -> String {
        self.state.refresh.lock().expect("lock").clone()
    }

    pub fn grants(&self) -> Vec<Grant> {
        self.state.grants.lock().expect("lock").clone()
    }

    pub fn rotations(&self) -> usize {
        self.state.rotations.load(Ordering::SeqCst)
    }

    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.state.api.lock().expect("lock").clone()
    }

    /// The next `n` API requests get `401` whatever they carry.
    pub fn reject_next(&self, n: usize) {
        self.state.reject_next.store(n, Ordering::SeqCst);
    }

    /// Token answers wait this long (so concurrent callers pile up).
    pub fn delay_grants(&self, d: Duration) {
        *self.state.grant_delay.lock().expect("lock") = d;
    }

    pub fn extra_answer_field(&self, key: &str, value: serde_json::Value) {
        self.state
            .extra
            .lock()
            .expect("lock")
            .insert(key.to_string(), value);
    }

    /// Authorised API requests are answered by `answer` (when it returns `Some`).
    pub fn answer_with(&self, answer: Answer) {
        *self.state.answer.lock().expect("lock") = Some(Arc::new(answer));
    }

    /// A proxy builder trusting the test CA for upstream TLS and (through `SSL_CERT_FILE`)
    /// for the token endpoint, with `names` mapped to the fake.
    pub fn builder(&self, ca: &TestCa, names: &[&str]) -> ProxyBuilder {
        let b = ProxyBuilder::new().trust(ca).allow_port(self.port());
        let bundle = b.write_file("token-endpoint-ca.pem", ca.cert_pem());
        let mut b = b.env("SSL_CERT_FILE", bundle.display().to_string());
        for n in names {
            b = b.host(n, IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        b
    }
}

async fn accept_loop(listener: TcpListener, tls: TlsAcceptor, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (tls, state) = (tls.clone(), state.clone());
        tokio::spawn(async move {
            let Ok(Ok(stream)) = tokio::time::timeout(IO_TIMEOUT, tls.accept(tcp)).await else {
                return;
            };
            let service = service_fn(move |req| handle(req, state.clone()));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn json(status: StatusCode, value: serde_json::Value) -> Response<TestBody> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(body::full(value.to_string()))
        .expect("response")
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, incoming) = req.into_parts();
    let body = incoming
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    if parts.uri.path() == state.token_path && parts.method == http::Method::POST {
        let content_type = parts
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let fields: BTreeMap<String, String> = if content_type.starts_with("application/json") {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&body)
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or(v.to_string())))
                .collect()
        } else {
            form_urlencoded::parse(&body).into_owned().collect()
        };
        state.grants.lock().expect("lock").push(Grant {
            content_type,
            fields: fields.clone(),
        });
        let delay = *state.grant_delay.lock().expect("lock");
        tokio::time::sleep(delay).await;
        let grant_type = fields.get("grant_type").map(String::as_str);
        let valid = match grant_type {
            Some("refresh_token") => {
                fields.get("refresh_token") == Some(&state.refresh.lock().expect("lock").clone())
            }
            Some("authorization_code") => {
                fields.get("code").is_some_and(|c| c.starts_with("code-"))
            }
            _ => false,
        };
        if !valid {
            return Ok(json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid_grant"}),
            ));
        }
        let n = state.rotations.fetch_add(1, Ordering::SeqCst) + 1;
        let access = (state.mint)(n);
        let refresh = format!("rt-REAL-{n}-{}", random_hex(16));
        *state.access.lock().expect("lock") = access.clone();
        *state.refresh.lock().expect("lock") = refresh.clone();
        let mut answer = serde_json::json!({
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": state.expires_in,
            "token_type": "Bearer",
        });
        if let Some(obj) = answer.as_object_mut() {
            for (k, v) in state.extra.lock().expect("lock").iter() {
                obj.insert(k.clone(), v.clone());
            }
        }
        return Ok(json(StatusCode::OK, answer));
    }
    let access = state.access.lock().expect("lock").clone();
    let presented: Vec<String> = parts
        .headers
        .get_all("authorization")
        .iter()
        .chain(parts.headers.get_all("x-api-key").iter())
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let forced = state
        .reject_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let ok = !forced
        && !access.is_empty()
        && presented.len() == 1
        && (presented[0] == format!("Bearer {access}") || presented[0] == access);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let mut request = ApiRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
        answered: status.as_u16(),
        body: String::from_utf8_lossy(&body).into_owned(),
    };
    let answer = state.answer.lock().expect("lock").clone();
    let custom = match answer {
        Some(answer) if ok => answer(&request),
        _ => None,
    };
    if let Some(custom) = &custom {
        request.answered = custom.status().as_u16();
    }
    state.api.lock().expect("lock").push(request);
    Ok(custom.unwrap_or_else(|| json(status, serde_json::json!({"ok": ok}))))
}
