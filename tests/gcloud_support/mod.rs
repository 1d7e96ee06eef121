//! A fake Google for the gcloud tests: one real TLS server on 127.0.0.1 (certificate from the
//! test CA, SANs for 127.0.0.1 and the Google names the tests use) that plays both roles:
//!
//! - the OAuth token endpoint (`POST /token`): it verifies the JWT-bearer grant (RS256
//!   signature against the test key's public half, issuer, audience, scope, times) or the
//!   refresh-token grant, and answers with the next token of a script, counting grants;
//! - the API (`*.googleapis.com`, any other path): it records every request and answers
//!   `200` only to a bearer it currently accepts, `401` otherwise.
//!
//! The RSA key is made at test time with the openssl CLI (ring cannot generate RSA keys).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_PAD_INDIFFERENT;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ring::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RsaKeyPair, UnparsedPublicKey};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::support::IO_TIMEOUT;
use crate::support::body::{self, TestBody, sha256_hex};
use crate::support::pki::{self, TestCa};
use crate::support::proxy::ProxyBuilder;
use crate::support::secrets::random_hex;

pub const API_HOST: &str = "aiplatform.googleapis.com";
pub const OAUTH_HOST: &str = "oauth2.googleapis.com";
pub const ACCOUNTS_HOST: &str = "accounts.google.com";
pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
pub const PROJECT: &str = "paude-test-project";
pub const CLIENT_EMAIL: &str = "tester@paude-test-project.iam.gserviceaccount.com";
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// API path that answers with the `Authorization` it received, in the body and a header.
pub const ECHO_AUTH_PATH: &str = "/v1/echo-auth";
/// What the agent holds and sends: the stub's placeholder token.
pub const PLACEHOLDER: &str = "paude-proxy-managed";

/// A distinctive, realistic-length access token (Google's start with `ya29.`).
pub fn real_token(label: &str) -> String {
    format!("ya29.test-REAL-{label}-{}", random_hex(24))
}

/// A test RSA key: PKCS#8 PEM for the ADC, public key DER for verifying signatures.
pub struct TestKey {
    pub pem: String,
    pub public_der: Vec<u8>,
}

impl TestKey {
    pub fn generate() -> TestKey {
        let dir = tempfile::tempdir().expect("key tempdir");
        let path = dir.path().join("key.pem");
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
            ])
            .arg(&path)
            .output()
            .expect("run openssl (needed to make a test RSA key)");
        assert!(out.status.success(), "openssl genpkey: {out:?}");
        let pem = std::fs::read_to_string(&path).expect("read key");
        let der = match PrivateKeyDer::from_pem_slice(pem.as_bytes()).expect("key PEM") {
            PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der().to_vec(),
            other => panic!("expected PKCS#8, got {other:?}"),
        };
        let pair = RsaKeyPair::from_pkcs8(&der).expect("RSA key");
        TestKey {
            pem,
            public_der: pair.public_key().as_ref().to_vec(),
        }
    }

    /// The longest base64 line of the key: a piece of the secret the leak check can find
    /// even if a log printed only part of the PEM.
    pub fn body_line(&self) -> String {
        self.pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .max_by_key(|l| l.len())
            .expect("key body")
            .to_owned()
    }
}

/// What the token endpoint answers to the next valid grant.
#[derive(Clone, Debug)]
pub enum Reply {
    Token(String),
    /// An HTTP error status (the endpoint is broken, not the grant).
    Fail(u16),
}

/// One API request as the fake received it.
#[derive(Clone, Debug)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub authorization: Vec<String>,
    pub body_len: usize,
    pub body_sha256: String,
    pub answered: u16,
}

/// The refresh-token grant the endpoint accepts (authorized-user ADC).
#[derive(Clone)]
pub struct UserGrant {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
}

struct State {
    public_der: Vec<u8>,
    token_uri: Mutex<String>,
    user: Mutex<Option<UserGrant>>,
    script: Mutex<VecDeque<Reply>>,
    last: Mutex<Option<Reply>>,
    grants: AtomicUsize,
    bad_grants: Mutex<Vec<String>>,
    token_paths: Mutex<Vec<(String, String)>>,
    api: Mutex<Vec<ApiRequest>>,
    accepted: Mutex<Vec<String>>,
    tcp_accepts: AtomicUsize,
    hold_grants: AtomicBool,
    release: Semaphore,
    grant_arrived: Semaphore,
}

pub struct FakeGoogle {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl Drop for FakeGoogle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeGoogle {
    /// Starts the server; `key` is the service account whose assertions it accepts.
    pub async fn start(ca: &TestCa, key: &TestKey) -> FakeGoogle {
        let leaf = ca.leaf(&[
            "127.0.0.1",
            API_HOST,
            OAUTH_HOST,
            ACCOUNTS_HOST,
            "storage.googleapis.com",
        ]);
        let tls = TlsAcceptor::from(pki::server_config(&leaf));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake google");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(State {
            public_der: key.public_der.clone(),
            token_uri: Mutex::new(format!("https://127.0.0.1:{}/token", addr.port())),
            user: Mutex::new(None),
            script: Mutex::new(VecDeque::new()),
            last: Mutex::new(None),
            grants: AtomicUsize::new(0),
            bad_grants: Mutex::default(),
            token_paths: Mutex::default(),
            api: Mutex::default(),
            accepted: Mutex::default(),
            tcp_accepts: AtomicUsize::new(0),
            hold_grants: AtomicBool::new(false),
            release: Semaphore::new(0),
            grant_arrived: Semaphore::new(0),
        });
        let task = tokio::spawn(accept_loop(listener, tls, state.clone()));
        FakeGoogle { addr, state, task }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The `token_uri` to put into an ADC: the IP literal, so the proxy's own token client
    /// (which uses system DNS, not the proxy's hosts file) never looks a name up.
    pub fn token_uri(&self) -> String {
        self.state.token_uri.lock().expect("lock").clone()
    }

    /// Answers to successive valid grants; the last one repeats.
    pub fn script(&self, replies: &[Reply]) {
        *self.state.script.lock().expect("lock") = replies.iter().cloned().collect();
    }

    /// The API accepts exactly these bearer tokens.
    pub fn accept_only(&self, tokens: &[&str]) {
        *self.state.accepted.lock().expect("lock") =
            tokens.iter().map(|t| format!("Bearer {t}")).collect();
    }

    pub fn accept_user(&self, grant: UserGrant) {
        *self.state.user.lock().expect("lock") = Some(grant);
    }

    /// Valid grants answered (with a token or a scripted failure).
    pub fn grants(&self) -> usize {
        self.state.grants.load(Ordering::SeqCst)
    }

    /// Why grant requests were refused (bad signature, wrong audience, ...): must stay empty.
    pub fn bad_grants(&self) -> Vec<String> {
        self.state.bad_grants.lock().expect("lock").clone()
    }

    /// Every request to a token path, `(method, path)`, valid or not.
    pub fn token_requests(&self) -> Vec<(String, String)> {
        self.state.token_paths.lock().expect("lock").clone()
    }

    pub fn api_requests(&self) -> Vec<ApiRequest> {
        self.state.api.lock().expect("lock").clone()
    }

    pub fn tcp_accepts(&self) -> usize {
        self.state.tcp_accepts.load(Ordering::SeqCst)
    }

    /// From now on, valid grants wait for [`FakeGoogle::release_grants`] before answering.
    pub fn hold_grants(&self) {
        self.state.hold_grants.store(true, Ordering::SeqCst);
    }

    pub fn release_grants(&self) {
        self.state.hold_grants.store(false, Ordering::SeqCst);
        self.state.release.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Waits until a valid grant has arrived (and is being held).
    pub async fn wait_grant_arrived(&self) {
        tokio::time::timeout(IO_TIMEOUT, self.state.grant_arrived.acquire())
            .await
            .expect("no token request reached the fake endpoint")
            .expect("semaphore")
            .forget();
    }

    /// A service-account ADC for this endpoint and `key`.
    pub fn service_account_json(&self, key: &TestKey) -> String {
        serde_json::json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": "test-key-1",
            "private_key": key.pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
        })
        .to_string()
    }
}

/// A proxy builder for gcloud tests: trusts the test CA for upstream TLS and (through
/// `SSL_CERT_FILE`, which gcp_auth's native roots honour) for the token endpoint, allows
/// the fake's port, and maps the Google names to it.
pub fn builder(ca: &TestCa, google: &FakeGoogle) -> ProxyBuilder {
    let b = ProxyBuilder::new().trust(ca).allow_port(google.port());
    let bundle = b.write_file("token-endpoint-ca.pem", ca.cert_pem());
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    b.env("SSL_CERT_FILE", bundle.display().to_string())
        .host(API_HOST, localhost)
        .host(OAUTH_HOST, localhost)
        .host(ACCOUNTS_HOST, localhost)
        .host("storage.googleapis.com", localhost)
}

/// Registers `value` for the proxy's leak check (stderr, stdout, blocked log) under an
/// otherwise unused variable name: the harness checks every value passed to `secret`.
pub fn watch_secret(b: ProxyBuilder, value: &str) -> ProxyBuilder {
    let name = format!("PAUDE_TEST_LEAK_CHECK_{}", random_hex(4).to_uppercase());
    b.secret(&name, value)
}

/// Writes the ADC to a file and points GOOGLE_APPLICATION_CREDENTIALS at it.
pub fn adc_file(b: ProxyBuilder, json: &str) -> (ProxyBuilder, PathBuf) {
    let path = b.write_file("adc.json", json);
    let b = b.env("GOOGLE_APPLICATION_CREDENTIALS", path.display().to_string());
    (b, path)
}

async fn accept_loop(listener: TcpListener, tls: TlsAcceptor, state: Arc<State>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        state.tcp_accepts.fetch_add(1, Ordering::SeqCst);
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
    let path = parts.uri.path().to_owned();
    if path == "/token" || path == "/o/oauth2/token" {
        state
            .token_paths
            .lock()
            .expect("lock")
            .push((parts.method.to_string(), path.clone()));
        if parts.method != http::Method::POST {
            return Ok(json(
                StatusCode::METHOD_NOT_ALLOWED,
                serde_json::json!({"error": "invalid_request"}),
            ));
        }
        return Ok(token_endpoint(&state, &body).await);
    }
    let authorization: Vec<String> = parts
        .headers
        .get_all("authorization")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect();
    let ok = authorization.len() == 1
        && state
            .accepted
            .lock()
            .expect("lock")
            .contains(&authorization[0]);
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::UNAUTHORIZED
    };
    let record = ApiRequest {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authorization,
        body_len: body.len(),
        body_sha256: sha256_hex(&body),
        answered: status.as_u16(),
    };
    state.api.lock().expect("lock").push(record.clone());
    // A debug endpoint that echoes the credential, as some APIs' error pages do.
    if ok && path == ECHO_AUTH_PATH {
        let mut resp = json(
            status,
            serde_json::json!({"authorization": record.authorization[0]}),
        );
        if let Ok(v) = http::HeaderValue::from_str(&record.authorization[0]) {
            resp.headers_mut().insert("x-echo-authorization", v);
        }
        return Ok(resp);
    }
    Ok(if ok {
        json(
            status,
            serde_json::json!({"body_len": record.body_len, "body_sha256": record.body_sha256}),
        )
    } else {
        json(
            status,
            serde_json::json!({"error": {"code": 401, "status": "UNAUTHENTICATED"}}),
        )
    })
}

async fn token_endpoint(state: &State, body: &[u8]) -> Response<TestBody> {
    let form: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    let field = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let checked = match field("grant_type").as_str() {
        JWT_BEARER => verify_assertion(state, &field("assertion")),
        "refresh_token" => match state.user.lock().expect("lock").clone() {
            Some(u)
                if field("client_id") == u.client_id
                    && field("client_secret") == u.client_secret
                    && field("refresh_token") == u.refresh_token =>
            {
                Ok(())
            }
            _ => Err("refresh grant with unexpected client or refresh token".to_owned()),
        },
        other => Err(format!("unexpected grant_type {other:?}")),
    };
    if let Err(why) = checked {
        state.bad_grants.lock().expect("lock").push(why);
        return json(
            StatusCode::BAD_REQUEST,
            serde_json::json!({"error": "invalid_grant"}),
        );
    }
    state.grants.fetch_add(1, Ordering::SeqCst);
    if state.hold_grants.load(Ordering::SeqCst) {
        state.grant_arrived.add_permits(1);
        if let Ok(p) = state.release.acquire().await {
            p.forget();
        }
    }
    let reply = {
        let mut script = state.script.lock().expect("lock");
        let mut last = state.last.lock().expect("lock");
        if let Some(next) = script.pop_front() {
            *last = Some(next);
        }
        last.clone()
            .unwrap_or_else(|| Reply::Fail(StatusCode::SERVICE_UNAVAILABLE.as_u16()))
    };
    match reply {
        Reply::Token(t) => json(
            StatusCode::OK,
            serde_json::json!({"access_token": t, "expires_in": 3599, "token_type": "Bearer"}),
        ),
        Reply::Fail(code) => json(
            StatusCode::from_u16(code).expect("status"),
            serde_json::json!({"error": "temporarily_unavailable"}),
        ),
    }
}

/// RFC 7523 JWT-bearer assertion as Google checks it: RS256 over `header.claims` with the
/// service account's key, issued by its email, for this token endpoint, for a scope.
fn verify_assertion(state: &State, assertion: &str) -> Result<(), String> {
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts.as_slice() else {
        return Err(format!("assertion has {} parts, not 3", parts.len()));
    };
    let decode = |s: &str| {
        URL_SAFE_PAD_INDIFFERENT
            .decode(s)
            .map_err(|e| format!("base64url: {e}"))
    };
    let header: serde_json::Value =
        serde_json::from_slice(&decode(header)?).map_err(|e| format!("header JSON: {e}"))?;
    if header["alg"] != "RS256" {
        return Err(format!("alg {}", header["alg"]));
    }
    let signed = &assertion[..assertion.len() - signature.len() - 1];
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &state.public_der)
        .verify(signed.as_bytes(), &decode(signature)?)
        .map_err(|_| "signature does not verify with the test key".to_owned())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&decode(claims)?).map_err(|e| format!("claims JSON: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let iat = claims["iat"].as_i64().unwrap_or(i64::MAX);
    let exp = claims["exp"].as_i64().unwrap_or(0);
    let token_uri = state.token_uri.lock().expect("lock").clone();
    let problems = [
        (claims["iss"] != CLIENT_EMAIL, "iss"),
        (claims["aud"] != token_uri.as_str(), "aud"),
        (
            !claims["scope"]
                .as_str()
                .unwrap_or("")
                .split(' ')
                .any(|s| s == CLOUD_PLATFORM),
            "scope",
        ),
        (iat > now + 60 || exp <= now || exp - iat > 3600, "iat/exp"),
    ];
    match problems.iter().find(|(bad, _)| *bad) {
        Some((_, what)) => Err(format!("claim {what} is wrong: {claims}")),
        None => Ok(()),
    }
}
