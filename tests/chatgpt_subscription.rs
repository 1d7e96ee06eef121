//! ChatGPT / Codex (`chatgpt`), end to end against a fake chatgpt.com + auth.openai.com on
//! loopback (real TLS, test-CA certificates, real names mapped with PAUDE_PROXY_HOSTS_FILE):
//! the bearer and account header only under `/backend-api` on `chatgpt.com`, refresh before
//! the JWT `exp` with persistence, the state file winning, the login exchange sanitised and
//! persisted, vending, and startup refusals.

mod oauth_support;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oauth_support::FakeOAuth;
use support::client::{TunnelClient, collect};
use support::pki::TestCa;
use support::proxy::{Proxy, ProxyBuilder};
use support::secrets::{assert_no_secret_in, random_hex};

const CHATGPT: &str = "chatgpt.com";
const AUTH: &str = "auth.openai.com";
const EVIL: &str = "chatgpt.com.evil.test";
const NAMES: &[&str] = &[CHATGPT, AUTH, EVIL];
const VAR: &str = "CHATGPT_AUTH_FILE";
const STATE_VAR: &str = "PAUDE_PROXY_CHATGPT_AUTH_STATE_FILE";
const CLIENT_ID: &str = "app_EMoamEEZ73f0CkXaXp7hrann";
const DUMMY: &str = "Bearer paude-proxy-managed-access";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT-shaped token (signature random: nobody verifies it here).
fn jwt(claims: serde_json::Value) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        random_hex(16)
    )
}

struct Lab {
    ca: TestCa,
    fake: FakeOAuth,
    tag: String,
    account: String,
    first_refresh: String,
}

async fn lab() -> Lab {
    let ca = TestCa::new("paude-proxy chatgpt test CA");
    let tag = random_hex(8);
    let account = format!("acct-REAL-{}", random_hex(8));
    let first_refresh = format!("rt-REAL-first-{}", random_hex(12));
    let t = tag.clone();
    let fake = FakeOAuth::start(
        &ca,
        NAMES,
        "/oauth/token",
        &first_refresh,
        Box::new(move |n| jwt(serde_json::json!({"exp": now_s() + 3600, "n": n, "tag": t}))),
    )
    .await;
    fake.extra_answer_field(
        "id_token",
        jwt(serde_json::json!({"https://api.openai.com/auth": {"chatgpt_account_id": account}}))
            .into(),
    );
    Lab {
        ca,
        fake,
        tag,
        account,
        first_refresh,
    }
}

impl Lab {
    fn access(&self, exp_in: i64) -> String {
        jwt(
            serde_json::json!({"exp": (now_s() as i64 + exp_in) as u64, "tag": self.tag, "file": true}),
        )
    }

    fn auth_json(&self, access: &str) -> String {
        serde_json::json!({
            "auth_mode": "chatgpt",
            "OPENAI_API_KEY": null,
            "tokens": {
                "id_token": jwt(serde_json::json!({"chatgpt_account_id": self.account})),
                "access_token": access,
                "refresh_token": self.first_refresh,
                "account_id": self.account,
            },
            "last_refresh": "2026-01-01T00:00:00Z",
            "keep": {"me": 1},
        })
        .to_string()
    }

    fn builder(&self, source: &Path) -> ProxyBuilder {
        let b = self
            .fake
            .builder(&self.ca, NAMES)
            .env(VAR, source.display().to_string())
            .env("PAUDE_PROXY_CHATGPT_TOKEN_URL", self.fake.token_url());
        watch(watch(b, &self.account), &self.first_refresh)
    }

    fn assert_nothing_leaked(&self, proxy: &mut Proxy, extra: &[String]) {
        let stderr = proxy.stop();
        let mut secrets = vec![
            self.fake.refresh(),
            self.fake.access(),
            self.account.clone(),
        ];
        secrets.extend_from_slice(extra);
        secrets.retain(|s| !s.is_empty());
        assert_no_secret_in("proxy stderr", &stderr, &secrets);
        assert_no_secret_in("blocked log", &proxy.blocked_log(), &secrets);
    }
}

fn watch(b: ProxyBuilder, value: &str) -> ProxyBuilder {
    let name = format!("PAUDE_TEST_LEAK_CHECK_{}", random_hex(4).to_uppercase());
    b.secret(&name, value)
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

async fn get(proxy: &Proxy, fake: &FakeOAuth, host: &str, path: &str) -> (u16, String) {
    let mut client = TunnelClient::open(proxy, host, fake.port()).await;
    let req = client
        .request("GET", path)
        .header("authorization", DUMMY)
        .header("chatgpt-account-id", "paude-proxy-managed-account")
        .body(support::body::empty())
        .unwrap();
    let resp = client.send(req).await;
    let status = resp.status().as_u16();
    (
        status,
        String::from_utf8_lossy(&collect(resp.into_body()).await).into_owned(),
    )
}

async fn post_form(proxy: &Proxy, fake: &FakeOAuth, form: &str) -> (u16, serde_json::Value) {
    let mut client = TunnelClient::open(proxy, AUTH, fake.port()).await;
    let req = client
        .request("POST", "/oauth/token")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(support::body::full(form.to_string()))
        .unwrap();
    let resp = client.send(req).await;
    let status = resp.status().as_u16();
    let body = collect(resp.into_body()).await;
    (
        status,
        serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_and_account_only_under_backend_api_on_chatgpt_com() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("auth.json");
    let access = lab.access(3600);
    write_private(&source, &lab.auth_json(&access));
    lab.fake.accept(&access);
    let mut proxy = watch(lab.builder(&source), &access).spawn();

    let (status, body) = get(&proxy, &lab.fake, CHATGPT, "/backend-api/codex/responses").await;
    assert_eq!(status, 200, "{body}");
    let got = lab.fake.api_requests().pop().unwrap();
    assert_eq!(
        got.values("authorization"),
        vec![format!("Bearer {access}")]
    );
    assert_eq!(got.values("chatgpt-account-id"), vec![lab.account.clone()]);

    for (host, path) in [
        (CHATGPT, "/other"),
        (CHATGPT, "/backend-apix"),
        (EVIL, "/backend-api/x"),
    ] {
        let (status, _) = get(&proxy, &lab.fake, host, path).await;
        assert_eq!(status, 401, "{host}{path}: the fake refuses the dummy");
        let got = lab.fake.api_requests().pop().unwrap();
        assert_eq!(
            got.values("authorization"),
            vec![DUMMY.to_string()],
            "{host}{path}"
        );
        assert!(
            !got.headers
                .iter()
                .any(|(_, v)| v.contains(&access) || v.contains(&lab.account))
        );
    }
    assert!(
        lab.fake.grants().is_empty(),
        "a fresh token needs no refresh"
    );
    lab.assert_nothing_leaked(&mut proxy, &[access]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_near_its_exp_is_refreshed_and_persisted_to_the_state_file() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("auth.json");
    let state = dir.path().join("state").join("auth.json");
    let stale = lab.access(60);
    let original = lab.auth_json(&stale);
    write_private(&source, &original);
    let mut proxy = watch(lab.builder(&source), &stale)
        .env(STATE_VAR, state.display().to_string())
        .spawn();

    let (status, body) = get(&proxy, &lab.fake, CHATGPT, "/backend-api/me").await;
    assert_eq!(status, 200, "{body}");
    let grants = lab.fake.grants();
    assert_eq!(grants.len(), 1);
    let g = &grants[0].fields;
    assert_eq!(g["grant_type"], "refresh_token");
    assert_eq!(g["refresh_token"], lab.first_refresh);
    assert_eq!(g["client_id"], CLIENT_ID);
    assert!(
        grants[0]
            .content_type
            .starts_with("application/x-www-form-urlencoded")
    );
    let got = lab.fake.api_requests().pop().unwrap();
    assert_eq!(
        got.values("authorization"),
        vec![format!("Bearer {}", lab.fake.access())]
    );

    assert_eq!(
        std::fs::read_to_string(&source).unwrap(),
        original,
        "the source is untouched"
    );
    let meta = std::fs::metadata(&state).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let dir_mode = std::fs::metadata(state.parent().unwrap())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(doc["tokens"]["refresh_token"], lab.fake.refresh());
    assert_eq!(doc["tokens"]["access_token"], lab.fake.access());
    assert_eq!(doc["keep"]["me"], 1);
    lab.assert_nothing_leaked(&mut proxy, &[stale]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_file_wins_over_the_source_file() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let (source, state) = (dir.path().join("auth.json"), dir.path().join("state.json"));
    let (old, new) = (lab.access(3600), lab.access(7200));
    write_private(&source, &lab.auth_json(&old));
    write_private(&state, &lab.auth_json(&new));
    lab.fake.accept(&new);
    let proxy = watch(watch(lab.builder(&source), &old), &new)
        .env(STATE_VAR, state.display().to_string())
        .spawn();
    assert_eq!(
        get(&proxy, &lab.fake, CHATGPT, "/backend-api/me").await.0,
        200
    );
    let got = lab.fake.api_requests().pop().unwrap();
    assert_eq!(got.values("authorization"), vec![format!("Bearer {new}")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_in_is_sanitised_persisted_and_then_used() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("auth.json");
    let state = dir.path().join("state.json");
    let mut proxy = lab
        .builder(&source)
        .env(STATE_VAR, state.display().to_string())
        .spawn();

    // No tokens yet: 401 (Codex prompts for a login), nothing forwarded.
    let (status, body) = get(&proxy, &lab.fake, CHATGPT, "/backend-api/me").await;
    assert_eq!(status, 401, "{body}");
    assert!(lab.fake.api_requests().is_empty());

    let form = "grant_type=authorization_code&code=code-123&redirect_uri=http%3A%2F%2Flocalhost%3A1455%2Fauth%2Fcallback&code_verifier=ver&client_id=agent-chosen&smuggled=evil";
    let (status, answer) = post_form(&proxy, &lab.fake, form).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["access_token"], "paude-proxy-managed-access");
    assert_eq!(answer["refresh_token"], "paude-proxy-managed-refresh");
    let sent = &lab.fake.grants()[0].fields;
    let keys: Vec<&str> = sent.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        vec![
            "client_id",
            "code",
            "code_verifier",
            "grant_type",
            "redirect_uri"
        ]
    );
    assert_eq!(sent["client_id"], CLIENT_ID);
    assert_eq!(sent["code"], "code-123");

    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    assert_eq!(doc["tokens"]["refresh_token"], lab.fake.refresh());
    assert_eq!(doc["tokens"]["account_id"], lab.account.as_str());
    assert!(
        !source.exists(),
        "the source file is never written when a state file is set"
    );

    let (status, body) = get(&proxy, &lab.fake, CHATGPT, "/backend-api/me").await;
    assert_eq!(status, 200, "{body}");
    let got = lab.fake.api_requests().pop().unwrap();
    assert_eq!(
        got.values("authorization"),
        vec![format!("Bearer {}", lab.fake.access())]
    );
    assert_eq!(got.values("chatgpt-account-id"), vec![lab.account.clone()]);

    // A refused login passes through as it is.
    let (status, answer) =
        post_form(&proxy, &lab.fake, "grant_type=authorization_code&code=bad").await;
    assert_eq!(status, 400);
    assert_eq!(answer["error"], "invalid_grant");
    lab.assert_nothing_leaked(&mut proxy, &[]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agents_refresh_is_vended_and_unknown_grants_refused() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("auth.json");
    write_private(&source, &lab.auth_json(&lab.access(3600)));
    let proxy = lab.builder(&source).spawn();
    let (status, answer) = post_form(
        &proxy,
        &lab.fake,
        "grant_type=refresh_token&refresh_token=paude-proxy-managed-refresh&client_id=x",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(answer["access_token"], "paude-proxy-managed-access");
    let id = answer["id_token"].as_str().unwrap();
    let payload = URL_SAFE_NO_PAD
        .decode(id.split('.').nth(1).unwrap())
        .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(
        claims["https://api.openai.com/auth"]["chatgpt_account_id"],
        "paude-proxy-managed-account"
    );
    let (status, _) = post_form(&proxy, &lab.fake, "grant_type=password&username=u").await;
    assert_eq!(status, 400);
    assert!(lab.fake.grants().is_empty(), "nothing reached the endpoint");
}

#[test]
fn the_state_file_must_differ_from_the_source() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("auth.json");
    let out = ProxyBuilder::new()
        .env(VAR, source.display().to_string())
        .env(STATE_VAR, source.display().to_string())
        .run_to_exit();
    assert_eq!(out.code, Some(64), "{out:?}");
    assert!(out.stderr.contains(STATE_VAR), "{}", out.stderr);
}

#[test]
fn stub_codex_prints_placeholders_only() {
    let out = std::process::Command::new(support::proxy::binary())
        .args(["stub", "codex"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["auth_mode"], "chatgpt");
    assert_eq!(v["tokens"]["access_token"], "paude-proxy-managed-access");
    assert_eq!(v["tokens"]["refresh_token"], "paude-proxy-managed-refresh");
    assert_eq!(v["tokens"]["account_id"], "paude-proxy-managed-account");
    let id = v["tokens"]["id_token"].as_str().unwrap();
    assert_eq!(id.split('.').count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_h2_the_same_scoping_holds() {
    let lab = lab().await;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("auth.json");
    let access = lab.access(3600);
    write_private(&source, &lab.auth_json(&access));
    lab.fake.accept(&access);
    let proxy = watch(lab.builder(&source), &access).spawn();
    let h2 = support::h2::H2Client::open(&proxy, CHATGPT, lab.fake.port()).await;
    for (path, injected) in [("/backend-api/me", true), ("/other", false)] {
        let req = h2
            .request("GET", path)
            .header("authorization", DUMMY)
            .body(support::body::empty())
            .unwrap();
        h2.send(req).await;
        let got = lab.fake.api_requests().pop().unwrap();
        let want = if injected {
            format!("Bearer {access}")
        } else {
            DUMMY.to_string()
        };
        assert_eq!(got.values("authorization"), vec![want], "{path}");
        assert_eq!(
            got.values("chatgpt-account-id").is_empty(),
            !injected,
            "{path}"
        );
    }
}
