//! Claude subscription (`anthropic_oauth`) and the Anthropic static routes, end to end
//! against a fake Anthropic on loopback (real TLS, test-CA certificates, the real names
//! mapped with PAUDE_PROXY_HOSTS_FILE): refresh before expiry with atomic write-back, one
//! refresh for 20 concurrent first requests, vending of the agent's refresh, a missing file
//! answered 401 until it appears, a forced refresh and retry after an upstream 401, startup
//! refusals, CLAUDE_CODE_OAUTH_TOKEN, and header ownership of the API-key route.

mod oauth_support;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oauth_support::FakeOAuth;
use support::client::{TunnelClient, collect};
use support::h2::H2Client;
use support::pki::TestCa;
use support::proxy::{Proxy, ProxyBuilder};
use support::secrets::{assert_no_secret_in, random_hex};

const API: &str = "api.anthropic.com";
const CONSOLE: &str = "console.anthropic.com";
const PLATFORM: &str = "platform.claude.com";
const TOKEN_PATH: &str = "/v1/oauth/token";
const VAR: &str = "ANTHROPIC_OAUTH_CREDS_FILE";
const PLACEHOLDER: &str = "paude-proxy-managed";
const NAMES: &[&str] = &[API, CONSOLE, PLATFORM];

struct Lab {
    ca: TestCa,
    fake: FakeOAuth,
    /// Access tokens the fake mints: `<prefix>-<n>`.
    prefix: String,
    first_refresh: String,
}

async fn lab() -> Lab {
    let ca = TestCa::new("paude-proxy claude test CA");
    let prefix = format!("sk-ant-oat01-REAL-{}", random_hex(12));
    let first_refresh = format!("sk-ant-ort01-REAL-{}", random_hex(12));
    let p = prefix.clone();
    let fake = FakeOAuth::start(
        &ca,
        NAMES,
        TOKEN_PATH,
        &first_refresh,
        Box::new(move |n| format!("{p}-{n}")),
    )
    .await;
    Lab {
        ca,
        fake,
        prefix,
        first_refresh,
    }
}

impl Lab {
    fn minted(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// A proxy with the credentials file at `path` (which may not exist yet).
    fn builder(&self, path: &Path) -> ProxyBuilder {
        let mut b = self
            .fake
            .builder(&self.ca, NAMES)
            .env(VAR, path.display().to_string())
            .env("PAUDE_PROXY_ANTHROPIC_TOKEN_URL", self.fake.token_url());
        for n in 1..=3 {
            b = watch(b, &self.minted(n));
        }
        watch(b, &self.first_refresh)
    }

    /// Every refresh token the fake handed out is absent from what the proxy wrote.
    fn assert_refresh_tokens_never_logged(&self, proxy: &mut Proxy) {
        let stderr = proxy.stop();
        let secrets = vec![self.fake.refresh(), self.fake.access()];
        assert_no_secret_in("proxy stderr", &stderr, &secrets);
        assert_no_secret_in("blocked log", &proxy.blocked_log(), &secrets);
    }
}

fn watch(b: ProxyBuilder, value: &str) -> ProxyBuilder {
    let name = format!("PAUDE_TEST_LEAK_CHECK_{}", random_hex(4).to_uppercase());
    b.secret(&name, value)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Claude Code's file shape, with fields the proxy must keep.
fn creds_json(access: &str, refresh: &str, expires_at: u64) -> String {
    serde_json::json!({
        "claudeAiOauth": {
            "accessToken": access,
            "refreshToken": refresh,
            "expiresAt": expires_at,
            "clientId": "test-client-id",
            "scopes": ["user:inference", "user:profile"],
            "subscriptionType": "max",
        },
        "mcpOAuth": {"keep": "me"},
    })
    .to_string()
}

fn write_creds(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn creds_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join(".credentials.json")
}

async fn call(proxy: &Proxy, fake: &FakeOAuth, headers: &[(&str, &str)]) -> (u16, String) {
    let mut client = TunnelClient::open(proxy, API, fake.port()).await;
    let mut req = client.request("POST", "/v1/messages");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client
        .send(req.body(support::body::full("{}")).unwrap())
        .await;
    let status = resp.status().as_u16();
    let body = String::from_utf8_lossy(&collect(resp.into_body()).await).into_owned();
    (status, body)
}

fn bearer_dummy() -> (&'static str, String) {
    ("authorization", format!("Bearer {PLACEHOLDER}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_near_expiry_is_refreshed_first_and_written_back() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let path = creds_path(&dir);
    let stale = format!("{}-stale", lab.prefix);
    write_creds(
        &path,
        &creds_json(&stale, &lab.first_refresh, now_ms() + 60_000),
    );
    let mut proxy = watch(lab.builder(&path), &stale).spawn();

    let (k, v) = bearer_dummy();
    let (status, body) = call(&proxy, &lab.fake, &[(k, &v)]).await;
    assert_eq!(status, 200, "{body}");
    let got = &lab.fake.api_requests()[0];
    assert_eq!(
        got.values("authorization"),
        vec![format!("Bearer {}", lab.minted(1))]
    );
    assert!(got.values("x-api-key").is_empty());
    let grants = lab.fake.grants();
    assert_eq!(grants.len(), 1);
    assert_eq!(grants[0].fields["grant_type"], "refresh_token");
    assert_eq!(grants[0].fields["refresh_token"], lab.first_refresh);
    assert_eq!(grants[0].fields["client_id"], "test-client-id");
    assert!(grants[0].content_type.starts_with("application/json"));

    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let oauth = &doc["claudeAiOauth"];
    assert_eq!(oauth["accessToken"], lab.minted(1));
    assert_eq!(oauth["refreshToken"], lab.fake.refresh());
    assert_ne!(oauth["refreshToken"], lab.first_refresh.as_str());
    assert!(oauth["expiresAt"].as_u64().unwrap() > now_ms() + 3_000_000);
    assert_eq!(oauth["subscriptionType"], "max");
    assert_eq!(oauth["clientId"], "test-client-id");
    assert_eq!(doc["mcpOAuth"]["keep"], "me");
    // No temporary file left beside it.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // The next request uses the refreshed token without another refresh.
    assert_eq!(call(&proxy, &lab.fake, &[(k, &v)]).await.0, 200);
    assert_eq!(lab.fake.rotations(), 1);
    lab.assert_refresh_tokens_never_logged(&mut proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_cause_one_refresh() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let path = creds_path(&dir);
    write_creds(
        &path,
        &creds_json("sk-ant-oat01-expired-000000", &lab.first_refresh, now_ms()),
    );
    lab.fake.delay_grants(Duration::from_millis(300));
    let proxy = lab.builder(&path).spawn();

    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TunnelClient::open(&proxy, API, lab.fake.port()).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let req = c
                    .request("POST", "/v1/messages")
                    .header("authorization", format!("Bearer {PLACEHOLDER}"))
                    .body(support::body::full("{}"))
                    .unwrap();
                c.send(req).await.status().as_u16()
            })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(
        lab.fake.grants().len(),
        1,
        "20 concurrent first requests, one refresh"
    );
    assert_eq!(lab.fake.api_requests().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_own_refresh_is_vended_and_never_forwarded() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let path = creds_path(&dir);
    write_creds(
        &path,
        &creds_json(&lab.minted(9), &lab.first_refresh, now_ms() + 3_600_000),
    );
    let proxy = lab.builder(&path).spawn();

    for (host, path) in [(CONSOLE, TOKEN_PATH), (PLATFORM, "/api/oauth/token")] {
        let mut client = TunnelClient::open(&proxy, host, lab.fake.port()).await;
        let grant = serde_json::json!({"grant_type": "refresh_token", "refresh_token": PLACEHOLDER, "client_id": "agent-client"});
        let req = client
            .request("POST", path)
            .header("content-type", "application/json")
            .body(support::body::full(grant.to_string()))
            .unwrap();
        let resp = client.send(req).await;
        assert_eq!(resp.status().as_u16(), 200, "{host}");
        let v: serde_json::Value =
            serde_json::from_slice(&collect(resp.into_body()).await).unwrap();
        assert_eq!(v["access_token"], PLACEHOLDER);
        assert_eq!(v["refresh_token"], PLACEHOLDER);
        assert_eq!(v["expires_in"], 3600);

        let other = serde_json::json!({"grant_type": "authorization_code", "code": "x"});
        let req = client
            .request("POST", path)
            .header("content-type", "application/json")
            .body(support::body::full(other.to_string()))
            .unwrap();
        assert_eq!(client.send(req).await.status().as_u16(), 400, "{host}");
    }
    assert!(
        lab.fake.grants().is_empty(),
        "nothing reached the token endpoint"
    );
    assert!(lab.fake.api_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_answers_401_until_it_appears() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let path = creds_path(&dir);
    let proxy = lab.builder(&path).spawn();
    let (k, v) = bearer_dummy();

    let (status, body) = call(&proxy, &lab.fake, &[(k, &v)]).await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("sign in") && body.contains(VAR), "{body}");
    assert!(
        lab.fake.api_requests().is_empty(),
        "nothing forwarded without a token"
    );

    let access = lab.minted(7);
    write_creds(
        &path,
        &creds_json(&access, &lab.first_refresh, now_ms() + 3_600_000),
    );
    lab.fake.accept(&access);
    let (status, body) = call(&proxy, &lab.fake, &[(k, &v)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        lab.fake.api_requests()[0].values("authorization"),
        vec![format!("Bearer {access}")]
    );
    assert!(
        lab.fake.grants().is_empty(),
        "a fresh file needs no refresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_forces_one_refresh_and_one_retry() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let path = creds_path(&dir);
    let access = lab.minted(8);
    write_creds(
        &path,
        &creds_json(&access, &lab.first_refresh, now_ms() + 3_600_000),
    );
    lab.fake.accept(&access);
    lab.fake.reject_next(1);
    let mut proxy = watch(lab.builder(&path), &access).spawn();
    let (k, v) = bearer_dummy();

    let (status, body) = call(&proxy, &lab.fake, &[(k, &v)]).await;
    assert_eq!(status, 200, "{body}");
    let api = lab.fake.api_requests();
    assert_eq!(api.len(), 2, "the request and one retry");
    assert_eq!(
        api[0].values("authorization"),
        vec![format!("Bearer {access}")]
    );
    assert_eq!(
        api[1].values("authorization"),
        vec![format!("Bearer {}", lab.minted(1))]
    );
    assert_eq!(lab.fake.grants().len(), 1);
    lab.assert_refresh_tokens_never_logged(&mut proxy);
}

#[test]
fn a_malformed_or_group_readable_file_stops_startup() {
    let dir = tempfile::tempdir().unwrap();
    let path = creds_path(&dir);
    let secret = format!("sk-ant-oat01-REAL-{}", random_hex(12));
    for (text, mode, want) in [
        (creds_json(&secret, "r", 1), 0o640, "group or others"),
        (
            format!("{{\"claudeAiOauth\":{{\"accessToken\":\"{secret}\"}}}}"),
            0o600,
            "refreshToken",
        ),
    ] {
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = watch(ProxyBuilder::new(), &secret)
            .env(VAR, path.display().to_string())
            .run_to_exit();
        assert_eq!(out.code, Some(64), "{out:?}");
        let line = out.stderr.trim();
        assert!(line.contains(VAR) && line.contains(want), "{line}");
        assert_eq!(line.lines().count(), 1, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claude_code_oauth_token_is_a_static_bearer() {
    let lab = lab().await;
    let token = format!("sk-ant-oat01-REAL-setup-{}", random_hex(12));
    lab.fake.accept(&token);
    let proxy = lab
        .fake
        .builder(&lab.ca, NAMES)
        .secret("CLAUDE_CODE_OAUTH_TOKEN", &token)
        .spawn();
    let (status, body) = call(&proxy, &lab.fake, &[("x-api-key", PLACEHOLDER)]).await;
    assert_eq!(status, 200, "{body}");
    let got = &lab.fake.api_requests()[0];
    assert_eq!(got.values("authorization"), vec![format!("Bearer {token}")]);
    assert!(got.values("x-api-key").is_empty(), "the dummy is gone");
}

/// The API-key route owns `x-api-key` and `Authorization`: whatever the client sent, the
/// upstream sees exactly one real credential, in the client's header and form, and no dummy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_route_owns_both_headers_over_h1_and_h2() {
    let lab = lab().await;
    let key = format!("sk-ant-api03-REAL-{}", random_hex(12));
    lab.fake.accept(&key);
    let proxy = lab
        .fake
        .builder(&lab.ca, NAMES)
        .secret("ANTHROPIC_API_KEY", &key)
        .spawn();
    let dummy_bearer = format!("Bearer {PLACEHOLDER}");
    type Case<'a> = (Vec<(&'a str, &'a str)>, (&'a str, String));
    let cases: Vec<Case> = vec![
        (
            vec![("authorization", &dummy_bearer)],
            ("authorization", format!("Bearer {key}")),
        ),
        (vec![("x-api-key", PLACEHOLDER)], ("x-api-key", key.clone())),
        (
            vec![("x-api-key", PLACEHOLDER), ("authorization", &dummy_bearer)],
            ("x-api-key", key.clone()),
        ),
        (vec![], ("x-api-key", key.clone())),
    ];
    for (sent, (header, value)) in &cases {
        let (status, body) = call(&proxy, &lab.fake, sent).await;
        assert_eq!(status, 200, "{sent:?}: {body}");
        let got = lab.fake.api_requests().pop().unwrap();
        let owned: Vec<(String, String)> = got
            .headers
            .iter()
            .filter(|(n, _)| n == "authorization" || n == "x-api-key")
            .cloned()
            .collect();
        assert_eq!(owned, vec![(header.to_string(), value.clone())], "{sent:?}");
        assert!(
            !got.headers.iter().any(|(_, v)| v.contains(PLACEHOLDER)),
            "{sent:?}"
        );
    }
    // HTTP/2: the SDK's `Authorization: Bearer` form.
    let h2 = H2Client::open(&proxy, API, lab.fake.port()).await;
    let req = h2
        .request("POST", "/v1/messages")
        .header("authorization", &dummy_bearer)
        .body(support::body::full("{}"))
        .unwrap();
    assert_eq!(h2.send(req).await.status().as_u16(), 200);
    let got = lab.fake.api_requests().pop().unwrap();
    assert_eq!(got.values("authorization"), vec![format!("Bearer {key}")]);
    assert!(got.values("x-api-key").is_empty());
}

#[test]
fn stub_claude_prints_placeholders_only() {
    let out = std::process::Command::new(support::proxy::binary())
        .args(["stub", "claude"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let o = &v["claudeAiOauth"];
    assert_eq!(o["accessToken"], PLACEHOLDER);
    assert_eq!(o["refreshToken"], PLACEHOLDER);
    assert!(o["expiresAt"].as_u64().unwrap() > now_ms() + 10 * 365 * 86_400_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subscription_token_is_injected_over_h2() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let path = creds_path(&dir);
    let access = lab.minted(5);
    write_creds(
        &path,
        &creds_json(&access, &lab.first_refresh, now_ms() + 3_600_000),
    );
    lab.fake.accept(&access);
    let proxy = watch(lab.builder(&path), &access).spawn();
    let h2 = H2Client::open(&proxy, API, lab.fake.port()).await;
    let req = h2
        .request("POST", "/v1/messages")
        .header("authorization", format!("Bearer {PLACEHOLDER}"))
        .header("x-api-key", PLACEHOLDER)
        .body(support::body::full("{}"))
        .unwrap();
    assert_eq!(h2.send(req).await.status().as_u16(), 200);
    let got = lab.fake.api_requests().pop().unwrap();
    assert_eq!(
        got.values("authorization"),
        vec![format!("Bearer {access}")]
    );
    assert!(
        got.values("x-api-key").is_empty(),
        "the owned x-api-key dummy is gone"
    );
}
