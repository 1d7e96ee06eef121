//! The real agents sign in through the proxy: Claude Code with a Claude subscription
//! (`ANTHROPIC_OAUTH_CREDS_FILE`, and `CLAUDE_CODE_OAUTH_TOKEN`) and the Codex CLI with a
//! ChatGPT plan (`CHATGPT_AUTH_FILE`), each holding only the placeholder file that
//! `paude-proxy stub` prints, against a fake provider on loopback (real TLS, test CA).
//!
//! Each test re-runs itself inside a fresh network namespace that has only `lo` (through
//! `unshare --net`), so whatever the CLIs try (telemetry, update checks, DNS) cannot leave
//! the machine, and the fake can listen on the real port 443. The CLIs come from npm,
//! installed by `.ci/run` into target/agents-node (tests never touch a registry).

mod netns_support;
mod oauth_support;
mod support;

use std::fs;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use netns_support::{netns_ready, repo_root, tool_ready};
use oauth_support::{ApiRequest, FakeOAuth};
use support::body::{self, TestBody};
use support::pki::TestCa;
use support::proxy::{Proxy, ProxyBuilder};
use support::secrets::{assert_no_secret_in, random_hex};

/// Set in the re-run inside the namespace, to the name of the test to run there.
const INNER_VAR: &str = "PAUDE_TEST_AGENTS_INNER";
/// Where `.ci/run` installs the agents (`npm install --prefix target/agents-node ...`).
const AGENTS_DIR: &str = "target/agents-node";
/// The exact versions the fakes below were written against; `.ci/run` installs these.
const CLAUDE_CODE: (&str, &str) = ("@anthropic-ai/claude-code", "2.1.197");
const CODEX: (&str, &str) = ("@openai/codex", "0.171.0");
/// How long one CLI run may take before `timeout` kills it (a cold start of a native
/// binary plus a few local round trips takes seconds; this only bounds a hang).
const AGENT_TIMEOUT_SECONDS: &str = "120";
/// The fake model's answer: the CLIs must print it.
const REPLY: &str = "Hello from the fake model";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// True when this process is the re-run inside the namespace for `test`. Otherwise runs
/// `test` there (or skips loudly) and returns false.
fn inside_own_netns(test: &str) -> bool {
    if std::env::var(INNER_VAR).as_deref() == Ok(test) {
        return true;
    }
    if !netns_ready(test) || !tool_ready(test, "unshare") {
        return false;
    }
    if agents_bin().is_none() {
        return false;
    }
    let started = Instant::now();
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("unshare")
        .args([
            "--net",
            "--",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(&exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(INNER_VAR, test)
        .output()
        .expect("run unshare");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!(
        "{test} in its own netns took {:.1}s\n{stdout}\n{stderr}",
        started.elapsed().as_secs_f64()
    );
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed inside its network namespace ({}):\n{stdout}\n{stderr}",
        out.status
    );
    false
}

/// The npm bin directory holding `claude` and `codex` at the pinned versions, or a loud
/// skip (a failure when PAUDE_REQUIRE_AGENTS=1).
fn agents_bin() -> Option<PathBuf> {
    let dir = repo_root().join(AGENTS_DIR);
    let modules = dir.join("node_modules");
    let installed = |(name, version): (&str, &str)| {
        let manifest = fs::read_to_string(modules.join(name).join("package.json"));
        manifest
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .is_some_and(|v| v["version"] == version)
    };
    if installed(CLAUDE_CODE) && installed(CODEX) {
        return Some(modules.join(".bin"));
    }
    let msg = format!(
        "the agents are not installed in {} (npm install --prefix {AGENTS_DIR} {}@{} {}@{})",
        dir.display(),
        CLAUDE_CODE.0,
        CLAUDE_CODE.1,
        CODEX.0,
        CODEX.1
    );
    assert!(
        std::env::var("PAUDE_REQUIRE_AGENTS").as_deref() != Ok("1"),
        "PAUDE_REQUIRE_AGENTS=1 but {msg}"
    );
    let bar = "!".repeat(72);
    use std::io::Write;
    let _ = std::io::stderr().write_all(
        format!("\n{bar}\n!!! SKIPPED: {msg}\n!!! set PAUDE_REQUIRE_AGENTS=1 to make this a failure\n{bar}\n")
            .as_bytes(),
    );
    None
}

/// A leak-checked secret on the proxy's command line environment.
fn watch(b: ProxyBuilder, value: &str) -> ProxyBuilder {
    let name = format!("PAUDE_TEST_LEAK_CHECK_{}", random_hex(4).to_uppercase());
    b.secret(&name, value)
}

fn private_file(path: &Path, text: &str) {
    fs::write(path, text).expect("write file");
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).expect("chmod 0600");
}

/// What `paude-proxy stub <which>` prints: the agent's whole credential.
fn stub(which: &str) -> String {
    let out = Command::new(support::proxy::binary())
        .args(["stub", which])
        .output()
        .expect("run paude-proxy stub");
    assert!(out.status.success(), "stub {which}: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8 stub")
}

/// The fake on the real port, as the agent dials `host:443` through the proxy.
async fn fake_on_443(
    ca: &TestCa,
    names: &[&str],
    token_path: &str,
    refresh: &str,
    prefix: &str,
) -> FakeOAuth {
    let p = prefix.to_string();
    FakeOAuth::start_at(
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 443),
        ca,
        names,
        token_path,
        refresh,
        Box::new(move |n| format!("{p}-{n}")),
    )
    .await
}

/// An agent's environment: nothing from the test's own, an empty home, the proxy as
/// HTTPS proxy, and every opt-out from nonessential traffic the CLIs know.
fn agent_command(bin: &Path, program: &str, home: &Path, proxy: &Proxy) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", AGENT_TIMEOUT_SECONDS])
        .arg(bin.join(program))
        .env_clear()
        .current_dir(home)
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        )
        .env("HOME", home)
        .env("TERM", "dumb")
        .env("NO_COLOR", "1")
        .env("HTTPS_PROXY", proxy.url())
        .env("https_proxy", proxy.url())
        .env("HTTP_PROXY", proxy.url())
        .env("http_proxy", proxy.url());
    cmd
}

fn agent_text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Host and path of every request the proxy saw, from its audit log.
fn audited(audit: &Path) -> Vec<String> {
    fs::read_to_string(audit)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| {
            let s = |k: &str| {
                v[k].as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v[k].to_string())
            };
            format!(
                "{} {} {} -> {}",
                s("method"),
                s("host"),
                s("path"),
                s("status")
            )
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn sse(events: &[(&str, serde_json::Value)]) -> http::Response<TestBody> {
    let text: String = events
        .iter()
        .map(|(name, data)| format!("event: {name}\ndata: {data}\n\n"))
        .collect();
    http::Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body::full(text))
        .expect("sse response")
}

fn json_response(value: serde_json::Value) -> http::Response<TestBody> {
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(body::full(value.to_string()))
        .expect("json response")
}

// ---------------------------------------------------------------- Claude Code

const ANTHROPIC_API: &str = "api.anthropic.com";
const ANTHROPIC_NAMES: &[&str] = &[
    ANTHROPIC_API,
    "console.anthropic.com",
    "platform.claude.com",
];
const PLACEHOLDER: &str = "paude-proxy-managed";

/// The Anthropic Messages API as Claude Code reads it: an SSE stream when it asks for
/// `stream: true`, one JSON message otherwise; `count_tokens` too.
fn anthropic_answer(req: &ApiRequest) -> Option<http::Response<TestBody>> {
    let path = req.path.split('?').next().unwrap_or("");
    if req.method != "POST" {
        return None;
    }
    if path == "/v1/messages/count_tokens" {
        return Some(json_response(serde_json::json!({"input_tokens": 3})));
    }
    if path != "/v1/messages" {
        return None;
    }
    let asked: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
    let model = asked["model"].as_str().unwrap_or("claude-fake").to_string();
    let usage = serde_json::json!({"input_tokens": 3, "output_tokens": 5,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0});
    if asked["stream"] != true {
        return Some(json_response(serde_json::json!({
            "id": "msg_fake_1", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": REPLY}],
            "stop_reason": "end_turn", "stop_sequence": null, "usage": usage,
        })));
    }
    Some(sse(&[
        (
            "message_start",
            serde_json::json!({"type": "message_start", "message": {
            "id": "msg_fake_1", "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": null, "stop_sequence": null, "usage": usage}}),
        ),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0,
            "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": REPLY}}),
        ),
        (
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            serde_json::json!({"type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": null},
            "usage": {"output_tokens": 5}}),
        ),
        ("message_stop", serde_json::json!({"type": "message_stop"})),
    ]))
}

/// How the agent holds its (placeholder) sign-in, as `paude-netns exec` sets it up.
enum AgentCreds {
    /// `paude-proxy stub claude` in `~/.claude/.credentials.json`.
    StubFile,
    /// The stand-in value in this variable, no file.
    Dummy(&'static str),
}

/// Claude Code with `creds` in its home or environment.
fn run_claude(bin: &Path, home: &Path, proxy: &Proxy, creds: AgentCreds) -> Output {
    let mut extra = Vec::new();
    match creds {
        AgentCreds::StubFile => {
            fs::create_dir_all(home.join(".claude")).expect("mkdir .claude");
            private_file(&home.join(".claude/.credentials.json"), &stub("claude"));
        }
        AgentCreds::Dummy(var) => extra.push((var, PLACEHOLDER)),
    }
    let mut cmd = agent_command(bin, "claude", home, proxy);
    cmd.args(["-p", "say hi", "--output-format", "json"])
        .env("NODE_EXTRA_CA_CERTS", proxy.ca_cert_path())
        .env("DISABLE_TELEMETRY", "1")
        .env("DISABLE_ERROR_REPORTING", "1")
        .env("DISABLE_AUTOUPDATER", "1")
        .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    for (k, v) in extra {
        cmd.env(k, v);
    }
    cmd.output().expect("run claude")
}

fn assert_claude_printed_reply(out: &Output, proxy: &Proxy, requests: &[String]) {
    let (stdout, stderr) = agent_text(out);
    assert!(
        out.status.success(),
        "claude exited {}\nstdout: {stdout}\nstderr: {stderr}\nrequests: {requests:#?}\nproxy: {}",
        out.status,
        proxy.stderr()
    );
    let printed: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("claude --output-format json printed no JSON ({e}): {stdout}"));
    assert_eq!(printed["result"], REPLY, "{printed:#}");
    assert_eq!(printed["is_error"], false, "{printed:#}");
}

/// Every request the upstream saw carried exactly `want` as its credential, and no
/// placeholder anywhere.
fn assert_only_real_bearer(api: &[ApiRequest], want: &str) {
    let messages: Vec<&ApiRequest> = api
        .iter()
        .filter(|r| r.path.starts_with("/v1/messages"))
        .collect();
    assert!(!messages.is_empty(), "no /v1/messages request: {api:#?}");
    for r in api {
        assert_eq!(
            r.values("authorization"),
            vec![format!("Bearer {want}")],
            "{r:#?}"
        );
        assert!(
            r.values("x-api-key").is_empty(),
            "an x-api-key reached the upstream: {r:#?}"
        );
        for (name, value) in &r.headers {
            assert!(
                !value.contains(PLACEHOLDER),
                "the placeholder reached the upstream in {name}: {r:#?}"
            );
        }
    }
}

/// Claude Code signed in with the stub file: the proxy refreshes its near-expiry token at
/// the fake token endpoint first, and every API request reaches the upstream with the
/// rotated real token and never the placeholder.
#[test]
fn claude_code_with_a_subscription_runs_through_the_proxy() {
    const TEST: &str = "claude_code_with_a_subscription_runs_through_the_proxy";
    if !inside_own_netns(TEST) {
        return;
    }
    let bin = agents_bin().expect("checked before the re-run");
    runtime().block_on(async {
        let ca = TestCa::new("paude-proxy agents test CA");
        let prefix = format!("sk-ant-oat01-REAL-{}", random_hex(12));
        let stale = format!("{prefix}-0");
        let first_refresh = format!("sk-ant-ort01-REAL-{}", random_hex(12));
        let fake = fake_on_443(&ca, ANTHROPIC_NAMES, "/v1/oauth/token", &first_refresh, &prefix).await;
        fake.answer_with(Box::new(anthropic_answer));
        let dir = tempfile::tempdir().expect("tempdir");
        let creds = dir.path().join("proxy-credentials.json");
        // A minute to go: inside the 5-minute margin, so the first request refreshes.
        let expires_at = (now_s() + 60) * 1000;
        private_file(
            &creds,
            &serde_json::json!({"claudeAiOauth": {"accessToken": stale, "refreshToken": first_refresh,
                "expiresAt": expires_at, "clientId": "agents-test-client",
                "scopes": ["user:inference", "user:profile"], "subscriptionType": "max"}})
            .to_string(),
        );
        let audit = dir.path().join("audit.log");
        let mut builder = fake
            .builder(&ca, ANTHROPIC_NAMES)
            .env("ANTHROPIC_OAUTH_CREDS_FILE", creds.display().to_string())
            .env("PAUDE_PROXY_ANTHROPIC_TOKEN_URL", fake.token_url())
            .env("PAUDE_PROXY_AUDIT_LOG", audit.display().to_string());
        for secret in [stale.clone(), first_refresh.clone(), format!("{prefix}-1"), format!("{prefix}-2")] {
            builder = watch(builder, &secret);
        }
        let mut proxy = builder.spawn();
        let home = dir.path().join("home");
        fs::create_dir_all(&home).expect("home");
        let out = run_claude(&bin, &home, &proxy, AgentCreds::StubFile);
        let requests = audited(&audit);
        eprintln!("claude code requests through the proxy: {requests:#?}");
        assert_claude_printed_reply(&out, &proxy, &requests);

        assert_eq!(fake.rotations(), 1, "one refresh of the near-expiry token: {:?}", fake.grants());
        let grant = &fake.grants()[0];
        assert_eq!(grant.fields.get("refresh_token"), Some(&first_refresh));
        let rotated = fake.access();
        assert_eq!(rotated, format!("{prefix}-1"));
        let api = fake.api_requests();
        eprintln!(
            "claude code requests at the upstream: {:#?}",
            api.iter()
                .map(|r| format!("{} {} stream={}", r.method, r.path, r.body.contains("\"stream\":true")))
                .collect::<Vec<_>>()
        );
        assert_only_real_bearer(&api, &rotated);
        let on_disk = fs::read_to_string(&creds).expect("creds");
        assert!(on_disk.contains(&rotated), "the rotated token was written back");

        let (stdout, stderr) = agent_text(&out);
        let secrets = vec![stale, first_refresh, rotated, fake.refresh()];
        assert_no_secret_in("claude stdout", &stdout, &secrets);
        assert_no_secret_in("claude stderr", &stderr, &secrets);
        let home_files = read_tree(&home);
        assert_no_secret_in("the agent's home", &home_files, &secrets);
        proxy.assert_no_secret_leaks();
    });
}

/// Claude Code with `CLAUDE_CODE_OAUTH_TOKEN` (a `claude setup-token` token) held by the
/// proxy: the agent holds the stand-in `paude-netns exec` gives it, the upstream sees the real static bearer.
#[test]
fn claude_code_with_a_setup_token_runs_through_the_proxy() {
    const TEST: &str = "claude_code_with_a_setup_token_runs_through_the_proxy";
    if !inside_own_netns(TEST) {
        return;
    }
    let bin = agents_bin().expect("checked before the re-run");
    runtime().block_on(async {
        let ca = TestCa::new("paude-proxy agents test CA");
        let real = format!("sk-ant-oat01-REAL-setup-{}", random_hex(16));
        let fake = fake_on_443(&ca, ANTHROPIC_NAMES, "/v1/oauth/token", "unused", "unused").await;
        fake.accept(&real);
        fake.answer_with(Box::new(anthropic_answer));
        let dir = tempfile::tempdir().expect("tempdir");
        let audit = dir.path().join("audit.log");
        let mut proxy = fake
            .builder(&ca, ANTHROPIC_NAMES)
            .secret("CLAUDE_CODE_OAUTH_TOKEN", &real)
            .env("PAUDE_PROXY_AUDIT_LOG", audit.display().to_string())
            .spawn();
        let home = dir.path().join("home");
        fs::create_dir_all(&home).expect("home");
        let out = run_claude(
            &bin,
            &home,
            &proxy,
            AgentCreds::Dummy("CLAUDE_CODE_OAUTH_TOKEN"),
        );
        let requests = audited(&audit);
        eprintln!("claude code (setup token) requests through the proxy: {requests:#?}");
        assert_claude_printed_reply(&out, &proxy, &requests);
        assert_only_real_bearer(&fake.api_requests(), &real);
        assert_eq!(fake.rotations(), 0, "a static token is never refreshed");
        let (stdout, stderr) = agent_text(&out);
        assert_no_secret_in("claude output", &format!("{stdout}{stderr}"), &[real]);
        proxy.assert_no_secret_leaks();
    });
}

/// All text files under `dir`, concatenated (what the agent could read from its home).
fn read_tree(dir: &Path) -> String {
    let mut out = String::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.push_str(&read_tree(&path));
        } else if let Ok(bytes) = fs::read(&path) {
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    out
}

// ---------------------------------------------------------------- Codex CLI

const CHATGPT: &str = "chatgpt.com";
const CHATGPT_NAMES: &[&str] = &[CHATGPT, "auth.openai.com"];
const CODEX_PLACEHOLDERS: &[&str] = &["paude-proxy-managed-access", "paude-proxy-managed-account"];

fn b64url(v: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// A JWT-shaped token (unsigned: only the proxy and Codex read its claims).
fn jwt(claims: serde_json::Value) -> String {
    format!(
        "{}.{}.REALsig{}",
        b64url(&serde_json::json!({"alg": "RS256", "typ": "JWT"})),
        b64url(&claims),
        random_hex(6)
    )
}

/// What chatgpt.com answers Codex: the account list its workspace routing reads (naming
/// the REAL account id, as the real backend does: the proxy must hand the agent its
/// placeholder instead), and the Responses API stream: created, one assistant message,
/// completed.
fn codex_answer(req: &ApiRequest, account: &str) -> Option<http::Response<TestBody>> {
    let path = req.path.split('?').next().unwrap_or("");
    if req.method == "GET" && path == "/backend-api/wham/accounts/check" {
        return Some(json_response(serde_json::json!({
            "accounts": [{"id": account, "workspace_backend_origin": "NO_CONSTRAINT",
                "account_routing_override": "NO_CONSTRAINT", "plan_type": "plus"}],
            "account_ordering": [account],
        })));
    }
    if req.method == "GET" && path == "/backend-api/codex/models" {
        return Some(json_response(serde_json::json!({"models": []})));
    }
    if req.method != "POST" || path != "/backend-api/codex/responses" {
        return None;
    }
    let id = "resp_fake_1";
    Some(sse(&[
        (
            "response.created",
            serde_json::json!({"type": "response.created", "response": {"id": id}}),
        ),
        (
            "response.output_item.done",
            serde_json::json!({"type": "response.output_item.done",
            "item": {"type": "message", "role": "assistant", "id": "msg_fake_1",
                "content": [{"type": "output_text", "text": REPLY}]}}),
        ),
        (
            "response.completed",
            serde_json::json!({"type": "response.completed", "response": {
            "id": id, "usage": {"input_tokens": 3, "input_tokens_details": null,
                "output_tokens": 5, "output_tokens_details": null, "total_tokens": 8}}}),
        ),
    ]))
}

/// Codex signed in with the stub auth.json: every request under /backend-api reaches the
/// upstream with the proxy's real bearer and account id, never the placeholders.
#[test]
fn codex_with_a_chatgpt_plan_runs_through_the_proxy() {
    const TEST: &str = "codex_with_a_chatgpt_plan_runs_through_the_proxy";
    if !inside_own_netns(TEST) {
        return;
    }
    let bin = agents_bin().expect("checked before the re-run");
    runtime().block_on(async {
        let ca = TestCa::new("paude-proxy agents test CA");
        let account = format!("acct-REAL-{}", random_hex(8));
        let access = jwt(serde_json::json!({"exp": now_s() + 3 * 3600, "sub": "agents-test"}));
        let refresh = format!("rt-REAL-{}", random_hex(12));
        let id_token = jwt(serde_json::json!({"exp": now_s() + 3600,
            "https://api.openai.com/auth": {"chatgpt_account_id": account}}));
        let fake = fake_on_443(&ca, CHATGPT_NAMES, "/oauth/token", &refresh, "unused").await;
        fake.accept(&access);
        let real_account = account.clone();
        fake.answer_with(Box::new(move |req| codex_answer(req, &real_account)));
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = dir.path().join("proxy-auth.json");
        private_file(
            &auth,
            &serde_json::json!({"auth_mode": "chatgpt", "tokens": {"access_token": access,
                "refresh_token": refresh, "id_token": id_token, "account_id": account}})
            .to_string(),
        );
        let audit = dir.path().join("audit.log");
        let mut builder = fake
            .builder(&ca, CHATGPT_NAMES)
            .env("CHATGPT_AUTH_FILE", auth.display().to_string())
            .env("PAUDE_PROXY_CHATGPT_TOKEN_URL", fake.token_url())
            .env("PAUDE_PROXY_AUDIT_LOG", audit.display().to_string());
        for secret in [&access, &refresh, &id_token, &account] {
            builder = watch(builder, secret);
        }
        let mut proxy = builder.spawn();
        let home = dir.path().join("home");
        fs::create_dir_all(home.join(".codex")).expect("home");
        private_file(&home.join(".codex/auth.json"), &stub("codex"));
        let mut cmd = agent_command(&bin, "codex", &home, &proxy);
        cmd.args([
            "exec",
            "--skip-git-repo-check",
            "--sandbox",
            "read-only",
            "--color",
            "never",
            // Codex's own opt-outs: no update check, no analytics events.
            "-c",
            "check_for_update_on_startup=false",
            "-c",
            "analytics.enabled=false",
            "say hi",
        ])
        .env("SSL_CERT_FILE", proxy.ca_cert_path())
        .env("CODEX_CA_CERTIFICATE", proxy.ca_cert_path())
        .env("CODEX_HOME", home.join(".codex"));
        let out = cmd.output().expect("run codex");
        let requests = audited(&audit);
        eprintln!("codex requests through the proxy: {requests:#?}");
        let (stdout, stderr) = agent_text(&out);
        assert!(
            out.status.success(),
            "codex exited {}\nstdout: {stdout}\nstderr: {stderr}\nrequests: {requests:#?}\nproxy: {}",
            out.status,
            proxy.stderr()
        );
        assert!(stdout.contains(REPLY), "codex did not print the reply: {stdout}\n{stderr}");

        let api = fake.api_requests();
        eprintln!(
            "codex requests at the upstream: {:#?}",
            api.iter().map(|r| format!("{} {}", r.method, r.path)).collect::<Vec<_>>()
        );
        assert!(
            api.iter().any(|r| r.path.starts_with("/backend-api/codex/responses")),
            "no responses request: {api:#?}"
        );
        for r in api.iter().filter(|r| r.path.starts_with("/backend-api/")) {
            assert_eq!(r.values("authorization"), vec![format!("Bearer {access}")], "{r:#?}");
            assert_eq!(r.values("chatgpt-account-id"), vec![account.clone()], "{r:#?}");
        }
        for r in &api {
            for (name, value) in &r.headers {
                for p in CODEX_PLACEHOLDERS {
                    assert!(!value.contains(p), "a placeholder reached the upstream in {name}: {r:#?}");
                }
            }
        }
        assert_eq!(fake.rotations(), 0, "a token valid for hours is not refreshed");
        let secrets = vec![access.clone(), refresh.clone(), id_token.clone(), account.clone()];
        assert_no_secret_in("codex stdout", &stdout, &secrets);
        assert_no_secret_in("codex stderr", &stderr, &secrets);
        assert_no_secret_in("the agent's home", &read_tree(&home), &secrets);
        proxy.assert_no_secret_leaks();
    });
}
