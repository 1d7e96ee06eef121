//! Request rules (issue 12) over real sockets on loopback: a GET allowed and a POST refused on
//! the same h1 and h2 tunnel (403 body, `X-Proxy-Error`, blocked-log line, nothing at the
//! upstream, tunnel still usable), plain `http://`, the audit log, `policy check/explain`,
//! startup errors, learning mode → suggest → check → same run allowed, and reload.

mod support;

use std::process::Command;
use std::time::Duration;

use support::client::{Curl, TunnelClient, collect};
use support::h2::H2Client;
use support::proxy::{EXIT_CONFIG_ERROR, Proxy, ProxyBuilder, assert_blocked_line};
use support::secrets::fake_secret;
use support::upstream::Upstream;
use support::{http_url, https_url, tls_lab};

const RULES: &str = r#"
default = "allow"

[[rule]]
id = "github-read-only"
hosts = ["api.github.com"]
methods = ["GET", "HEAD"]
action = "allow"

[[rule]]
id = "github-no-writes"
hosts = ["api.github.com"]
action = "deny"
reason = "the GitHub API is read-only from the sandbox"
"#;

fn policy_builder(builder: ProxyBuilder, text: &str) -> ProxyBuilder {
    let path = builder.write_file("policy.toml", text);
    builder.env("PAUDE_PROXY_POLICY", path.display().to_string())
}

fn assert_rule_denial(status: u16, header: Option<String>, body: &str) {
    assert_eq!(status, 403, "{body}");
    assert_eq!(header.as_deref(), Some("blocked-by-rule"), "{body}");
    assert!(
        body.contains("github-no-writes"),
        "body names the rule: {body}"
    );
    assert!(
        body.contains("the GitHub API is read-only from the sandbox"),
        "body names the reason: {body}"
    );
}

fn admin_addr(proxy: &Proxy) -> String {
    proxy
        .wait_stderr_contains("listening role=admin addr=")
        .lines()
        .find_map(|l| l.split("listening role=admin addr=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("admin address")
        .to_string()
}

fn curl_admin(args: &[&str]) -> (String, String) {
    let mut all = vec!["-sS", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = Command::new("curl").args(&all).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

fn metric(admin: &str, name: &str) -> u64 {
    let (_, text) = curl_admin(&[&format!("http://{admin}/metrics")]);
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h1_tunnel_get_allowed_post_refused_and_tunnel_stays_usable() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = policy_builder(builder, RULES).spawn();
    let port = upstream.port();
    let mut tunnel = TunnelClient::open(&proxy, "api.github.com", port).await;

    let ok = tunnel.get("/echo").await;
    assert_eq!(ok.status(), 200);
    collect(ok.into_body()).await;

    let post = tunnel
        .request("POST", "/echo?x=1")
        .body(support::body::full("payload"))
        .unwrap();
    let refused = tunnel.send(post).await;
    let header = refused
        .headers()
        .get("x-proxy-error")
        .map(|v| v.to_str().unwrap().to_string());
    let status = refused.status().as_u16();
    let body = String::from_utf8_lossy(&collect(refused.into_body()).await).to_string();
    assert_rule_denial(status, header, &body);

    // The same tunnel serves the next request.
    let again = tunnel.get("/echo").await;
    assert_eq!(again.status(), 200);
    collect(again.into_body()).await;

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "only the GETs reach the upstream: {seen:#?}");
    assert!(seen.iter().all(|r| r.method == "GET"));
    let lines = proxy.wait_blocked_lines(1);
    assert_blocked_line(
        &lines[0],
        "127.0.0.1",
        "POST",
        &format!("https://api.github.com:{port}/echo?x=1"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_streams_are_checked_one_by_one() {
    let ca = support::pki::TestCa::new("h2 rules CA");
    let upstream = Upstream::https_h2_only(&ca).await;
    let builder = ProxyBuilder::new().trust(&ca).allow_port(upstream.port());
    let proxy = policy_builder(builder, RULES).spawn();
    let port = upstream.port();
    let client = H2Client::open(&proxy, "api.github.com", port).await;

    let ok = client.get("/echo").await;
    assert_eq!(ok.status(), 200);
    collect(ok.into_body()).await;
    let refused = client
        .send(
            client
                .request("DELETE", "/echo")
                .body(support::body::empty())
                .unwrap(),
        )
        .await;
    let header = refused
        .headers()
        .get("x-proxy-error")
        .map(|v| v.to_str().unwrap().to_string());
    let status = refused.status().as_u16();
    let body = String::from_utf8_lossy(&collect(refused.into_body()).await).to_string();
    assert_rule_denial(status, header, &body);
    let ok = client.get("/echo").await;
    assert_eq!(ok.status(), 200);
    collect(ok.into_body()).await;

    let seen = upstream.requests();
    assert_eq!(seen.len(), 2, "{seen:#?}");
    assert!(seen.iter().all(|r| r.method == "GET"));
    let lines = proxy.wait_blocked_lines(1);
    assert_blocked_line(
        &lines[0],
        "127.0.0.1",
        "DELETE",
        &format!("https://api.github.com:{port}/echo"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_path_rules_with_normalisation_bypasses() {
    let plain = Upstream::http().await;
    let text = r#"
[[rule]]
id = "no-push"
hosts = ["github.com"]
paths = ["/**/git-receive-pack", "/**/info/refs?service=git-receive-pack"]
action = "deny"
reason = "pushing from the sandbox is not allowed"
"#;
    let builder = ProxyBuilder::new().allow_port(plain.port());
    let proxy = policy_builder(builder, text).spawn();
    let port = plain.port();
    for path in [
        "/o/r.git/git-receive-pack",
        "/o/r.git/x/%2e%2e/git-receive-pack",
        "/o/r.git/info/refs?service=git-receive-pack",
    ] {
        let res = Curl::new(&proxy, &http_url("github.com", port, path))
            .arg("--path-as-is")
            .method("POST")
            .data("x")
            .run()
            .await;
        assert_eq!(res.http_code, 403, "{path}: {res:?}");
        assert_eq!(
            res.header("x-proxy-error"),
            vec!["blocked-by-rule"],
            "{path}"
        );
        assert!(res.body_text().contains("no-push"), "{res:?}");
    }
    let res = Curl::new(
        &proxy,
        &http_url("github.com", port, "/o/r.git/git-upload-pack"),
    )
    .method("POST")
    .data("x")
    .run()
    .await;
    assert_eq!(
        res.http_code, 404,
        "allowed through to the upstream: {res:?}"
    );
    assert_eq!(plain.requests().len(), 1, "{:#?}", plain.requests());
    let lines = proxy.wait_blocked_lines(3);
    assert_blocked_line(
        &lines[1],
        "127.0.0.1",
        "POST",
        &format!("http://github.com:{port}/o/r.git/x/%2e%2e/git-receive-pack"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_403_carries_its_kind() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.env("ALLOWED_DOMAINS", "api.github.com").spawn();
    let _ = upstream;
    let raw = support::client::connect_tunnel(proxy.addr(), "api.github.com:25")
        .await
        .expect_err("port 25 is refused");
    assert_eq!(
        raw.header("x-proxy-error").as_deref(),
        Some("blocked-by-port")
    );
    let raw = support::client::connect_tunnel(proxy.addr(), "api.openai.com:443")
        .await
        .expect_err("domain refused");
    assert_eq!(
        raw.header("x-proxy-error").as_deref(),
        Some("blocked-by-allowlist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_log_has_one_parseable_line_per_request_and_no_secret() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("github");
    let audit = builder.dir().join("audit.log");
    let rules = RULES.to_string();
    let proxy = policy_builder(builder, &rules)
        .secret("GH_TOKEN", &real)
        .env("PAUDE_PROXY_AUDIT_LOG", audit.display().to_string())
        .spawn();
    let port = upstream.port();
    let mut tunnel = TunnelClient::open(&proxy, "api.github.com", port).await;
    let ok = tunnel.get("/echo?token=querysecret").await;
    collect(ok.into_body()).await;
    let post = tunnel
        .request("POST", "/echo")
        .header("authorization", "Bearer dummy")
        .body(support::body::full("body-value"))
        .unwrap();
    collect(tunnel.send(post).await.into_body()).await;
    drop(tunnel);
    let refused = support::client::connect_tunnel(proxy.addr(), "api.github.com:25").await;
    assert!(refused.is_err());

    let text = wait_lines(&audit, 3);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    let get = lines
        .iter()
        .find(|l| l["method"] == "GET")
        .expect("GET line");
    for field in [
        "time",
        "client",
        "mode",
        "host",
        "port",
        "method",
        "path",
        "status",
        "bytes_down",
        "duration_ms",
        "decision",
        "by",
    ] {
        assert!(get.get(field).is_some(), "{field} missing: {get}");
    }
    assert_eq!(get["mode"], "explicit");
    assert_eq!(get["host"], "api.github.com");
    assert_eq!(get["path"], "/echo", "query dropped");
    assert_eq!(get["status"], 200);
    assert_eq!(get["decision"], "allow");
    assert_eq!(get["by"], "rule:github-read-only");
    assert_eq!(get["credential"], "GH_TOKEN");
    assert!(get["bytes_down"].as_u64().unwrap() > 0);
    let post = lines
        .iter()
        .find(|l| l["method"] == "POST")
        .expect("POST line");
    assert_eq!(post["decision"], "deny");
    assert_eq!(post["by"], "blocked-by-rule");
    assert_eq!(post["status"], 403);
    let connect = lines
        .iter()
        .find(|l| l["method"] == "CONNECT")
        .expect("CONNECT line");
    assert_eq!(connect["by"], "blocked-by-port");
    assert_eq!(connect["port"], 25);
    for needle in [real.as_str(), "querysecret", "body-value", "dummy"] {
        assert!(
            !text.contains(needle),
            "{needle} leaked into the audit log:\n{text}"
        );
    }
}

fn wait_lines(path: &std::path::Path, n: usize) -> String {
    for _ in 0..500 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!(
        "{} never reached {n} lines: {:?}",
        path.display(),
        std::fs::read_to_string(path)
    );
}

const SAMPLE: &str = r#"
default = "allow"

[[rule]]
id = "github-read-only"
hosts = ["api.github.com"]
methods = ["GET", "HEAD"]
action = "allow"

[[rule]]
id = "github-no-writes"
hosts = ["api.github.com"]
action = "deny"
reason = "the GitHub API is read-only from the sandbox"

[[rule]]
id = "no-push"
hosts = ["github.com"]
paths = ["/**/git-receive-pack", "/**/info/refs?service=git-receive-pack"]
action = "deny"
reason = "pushing from the sandbox is not allowed"

[[agent]]
clients = ["10.200.0.2/32"]
allowed_domains = [".openai.com", "api.github.com"]
credentials = ["OPENAI_API_KEY", "GH_TOKEN"]
rules = ["github-read-only", "github-no-writes"]
"#;

#[test]
fn policy_check_and_explain_print_the_decision() {
    let builder = ProxyBuilder::new();
    let file = builder.write_file("sample.toml", SAMPLE);
    let out = builder
        .arg("policy")
        .arg("check")
        .arg(&file.display().to_string())
        .run_to_exit();
    assert_eq!(out.code, Some(0), "{out:?}");
    for needle in [
        "policy OK",
        "rules (3)",
        "deny no-push: hosts github.com methods * paths /**/git-receive-pack,/**/info/refs?service=git-receive-pack — pushing from the sandbox is not allowed",
        "agent-1:",
        "clients: 10.200.0.2/32",
        "allowed_domains: .openai.com, api.github.com",
        "credentials: OPENAI_API_KEY, GH_TOKEN",
        "rules: github-read-only, github-no-writes",
    ] {
        assert!(
            out.stdout.contains(needle),
            "{needle} missing:\n{}",
            out.stdout
        );
    }

    let explain = |client: &str, method: &str, url: &str| {
        let b = ProxyBuilder::new();
        let file = b.write_file("sample.toml", SAMPLE);
        b.env("PAUDE_PROXY_POLICY", file.display().to_string())
            .env("ALLOWED_DOMAINS", "github.com,api.github.com")
            .arg("policy")
            .arg("explain")
            .arg("--client")
            .arg(client)
            .arg(method)
            .arg(url)
            .run_to_exit()
    };
    let out = explain(
        "10.0.0.5",
        "POST",
        "https://github.com/o/r.git/x/../git-receive-pack",
    );
    assert_eq!(out.code, Some(1), "deny exits 1: {out:?}");
    assert!(
        out.stdout
            .contains("decision: deny (blocked-by-rule): blocked by rule 'no-push'"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("allowlist: github.com (ALLOWED_DOMAINS)"),
        "{}",
        out.stdout
    );
    let out = explain("10.200.0.2", "GET", "https://api.github.com/user");
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("agent: agent-1"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("allowlist: api.github.com (agent allowed_domains)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("decision: allow (rule:github-read-only)"),
        "{}",
        out.stdout
    );
    let out = explain("10.200.0.2", "GET", "https://github.com/o/r");
    assert_eq!(out.code, Some(1));
    assert!(
        out.stdout.contains("decision: deny (blocked-by-allowlist)"),
        "{}",
        out.stdout
    );
}

#[test]
fn bad_policy_files_stop_startup_with_file_line_and_problem() {
    for (text, needle) in [
        (
            "[[rule]]\nid = \"a\"\nmehtods = [\"GET\"]\naction = \"deny\"\n",
            ":line 3: unknown field `mehtods`",
        ),
        (
            "[[rule]]\nid = \"a\"\naction = \"deny\"\npaths = [\"x\"]\n",
            ":line 4: rule 'a': path pattern 'x' must start with '/'",
        ),
        (
            "[[agent]]\nclients = [\"10.0.0.1\"]\ncredentials = [\"NO_SUCH\"]\n",
            ":line 3: credentials: 'NO_SUCH'",
        ),
        (
            "[[agent]]\nclients = [\"10.0.0.1\"]\nrules = [\"nope\"]\n",
            ":line 3: rules: no [[rule]] has id 'nope'",
        ),
        ("default = [", ":line 1:"),
    ] {
        let b = ProxyBuilder::new();
        let file = b.write_file("bad.toml", text);
        let out = b
            .env("PAUDE_PROXY_POLICY", file.display().to_string())
            .run_to_exit();
        assert_eq!(out.code, Some(EXIT_CONFIG_ERROR), "{text}: {out:?}");
        let line = out.stderr.trim();
        assert!(line.contains("invalid PAUDE_PROXY_POLICY="), "{line}");
        assert!(
            line.contains(&format!("{}{needle}", file.display())),
            "{needle}: {line}"
        );
        assert_eq!(line.lines().count(), 1, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_then_suggest_then_check_then_the_same_run_is_allowed() {
    let (ca, upstream, builder) = tls_lab().await;
    let port = upstream.port();
    let learn = builder.dir().join("learn.jsonl");
    let proxy = builder
        .env("PAUDE_PROXY_LEARN", learn.display().to_string())
        .spawn();
    let run = |proxy: &Proxy| {
        let url_a = https_url("api.github.com", port, "/echo/items/12345");
        let url_b = https_url("api.openai.com", port, "/echo");
        let (p1, p2) = (
            Curl::new(proxy, &url_a),
            Curl::new(proxy, &url_b).method("POST").data("{}"),
        );
        async move { (p1.run().await.http_code, p2.run().await.http_code) }
    };
    let first = run(&proxy).await;
    assert_ne!(first.0, 403);
    assert_ne!(first.1, 403);
    let record = wait_lines(&learn, 2);
    assert!(record.contains("/echo/items/*"), "ids collapsed: {record}");
    drop(proxy);

    // The proxy's tempdir goes with it: keep the record in the next one.
    let b = ProxyBuilder::new();
    let learn = b.write_file("learn.jsonl", &record);
    let out = b
        .arg("policy")
        .arg("suggest")
        .arg(&learn.display().to_string())
        .run_to_exit();
    assert_eq!(out.code, Some(0), "{out:?}");
    let suggested = out.stdout;
    assert!(suggested.contains("default = \"deny\""), "{suggested}");
    let b = ProxyBuilder::new();
    let file = b.write_file("suggested.toml", &suggested);
    let out = b
        .arg("policy")
        .arg("check")
        .arg(&file.display().to_string())
        .run_to_exit();
    assert_eq!(
        out.code,
        Some(0),
        "check accepts the suggestion: {out:?}\n{suggested}"
    );

    // The same run under the suggested policy: allowed; anything else: refused by default.
    let b = ProxyBuilder::new().trust(&ca).allow_port(port);
    let file = b.write_file("suggested.toml", &suggested);
    let proxy = b
        .env("PAUDE_PROXY_POLICY", file.display().to_string())
        .spawn();
    let again = run(&proxy).await;
    assert_eq!(
        again, first,
        "the suggestion allows the recorded run:\n{suggested}"
    );
    let other = Curl::new(&proxy, &https_url("api.github.com", port, "/echo"))
        .method("DELETE")
        .run()
        .await;
    assert_eq!(other.http_code, 403, "{other:?}");
    assert_eq!(other.header("x-proxy-error"), vec!["blocked-by-default"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_to_the_next_request_on_an_open_tunnel_and_rejects_bad_files() {
    let (_ca, upstream, builder) = tls_lab().await;
    let port = upstream.port();
    let allow_all = "default = \"allow\"\n";
    let path = builder.write_file("policy.toml", allow_all);
    let mut proxy = builder
        .env("PAUDE_PROXY_POLICY", path.display().to_string())
        .env("PAUDE_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
        .spawn();
    let admin = admin_addr(&proxy);
    let mut tunnel = TunnelClient::open(&proxy, "api.github.com", port).await;
    let post = |t: &TunnelClient| {
        t.request("POST", "/echo")
            .body(support::body::full("x"))
            .unwrap()
    };
    let r = tunnel.send(post(&tunnel)).await;
    assert_eq!(r.status(), 200);
    collect(r.into_body()).await;

    // A valid change, by POST /reload: the very next request on the open tunnel obeys it.
    std::fs::write(&path, RULES).unwrap();
    let (code, body) = curl_admin(&["-X", "POST", &format!("http://{admin}/reload")]);
    assert_eq!(code, "200", "{body}");
    let r = tunnel.send(post(&tunnel)).await;
    assert_eq!(r.status(), 403);
    collect(r.into_body()).await;
    assert_eq!(metric(&admin, "paude_proxy_reloads_total"), 1);

    // An invalid file, by SIGHUP: rejected, counted, the old policy stays (a request proves it).
    std::fs::write(
        &path,
        "[[rule]]\nid = \"x\"\nmehtods = []\naction = \"allow\"\n",
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.wait_stderr_contains("reload rejected");
    assert_eq!(metric(&admin, "paude_proxy_reload_failures_total"), 1);
    let r = tunnel.send(post(&tunnel)).await;
    assert_eq!(r.status(), 403, "still the last good policy");
    collect(r.into_body()).await;
    let r = tunnel.get("/echo").await;
    assert_eq!(r.status(), 200);
    collect(r.into_body()).await;
    let (code, body) = curl_admin(&["-X", "POST", &format!("http://{admin}/reload")]);
    assert_eq!(code, "422", "{body}");
    assert!(body.contains("mehtods"), "{body}");
    assert_eq!(metric(&admin, "paude_proxy_reload_failures_total"), 2);

    // SIGHUP with a valid file applies it; the process never ends on HUP.
    std::fs::write(&path, allow_all).unwrap();
    // One at a time: signals sent back to back may be delivered as one.
    for want in 2..=4 {
        proxy.signal("HUP");
        for _ in 0..250 {
            if metric(&admin, "paude_proxy_reloads_total") >= want {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(metric(&admin, "paude_proxy_reloads_total"), want);
    }
    assert!(proxy.is_running(), "SIGHUP ended the process");
    let r = tunnel.send(post(&tunnel)).await;
    assert_eq!(r.status(), 200);
    collect(r.into_body()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_rebuilds_the_credential_routes_for_the_next_request_on_an_open_tunnel() {
    let (_ca, upstream, builder) = tls_lab().await;
    let port = upstream.port();
    let real = fake_secret("reloaded");
    let bearer = r#"{"credentials":[{"env_var":"RELOAD_KEY","injector":"bearer","domains":["api.github.com"]}]}"#;
    let header = r#"{"credentials":[{"env_var":"RELOAD_KEY","injector":"api_key","params":{"header_name":"x-reload-key"},"domains":["api.github.com"]}]}"#;
    let path = builder.write_file("credentials.json", bearer);
    let mut proxy = builder
        .env("PAUDE_PROXY_CREDENTIALS_CONFIG", path.display().to_string())
        .env("PAUDE_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
        .secret("RELOAD_KEY", &real)
        .spawn();
    let admin = admin_addr(&proxy);
    let mut tunnel = TunnelClient::open(&proxy, "api.github.com", port).await;
    let r = tunnel.get("/echo").await;
    assert_eq!(r.status(), 200);
    collect(r.into_body()).await;

    // The route now writes another header: the next request on the same tunnel uses it.
    std::fs::write(&path, header).unwrap();
    let (code, body) = curl_admin(&["-X", "POST", &format!("http://{admin}/reload")]);
    assert_eq!(code, "200", "{body}");
    let r = tunnel.get("/echo").await;
    assert_eq!(r.status(), 200);
    collect(r.into_body()).await;

    // An invalid credentials config is refused and the last good routes stay.
    std::fs::write(&path, "{not json").unwrap();
    let (code, body) = curl_admin(&["-X", "POST", &format!("http://{admin}/reload")]);
    assert_eq!(code, "422", "{body}");
    let r = tunnel.get("/echo").await;
    assert_eq!(r.status(), 200);
    collect(r.into_body()).await;

    let seen = upstream.requests();
    assert_eq!(seen.len(), 3, "{seen:#?}");
    assert_eq!(
        seen[0].header_values("authorization"),
        vec![format!("Bearer {real}")]
    );
    assert!(!seen[0].has_header("x-reload-key"));
    for later in &seen[1..] {
        assert_eq!(
            later.header_values("x-reload-key"),
            vec![real.clone()],
            "{later:#?}"
        );
        assert!(
            later.header_values("authorization").is_empty(),
            "{later:#?}"
        );
    }
    proxy.assert_no_secret_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_counts_the_bytes_a_chunked_upload_really_sent() {
    let (_ca, upstream, builder) = tls_lab().await;
    let audit = builder.dir().join("audit.log");
    let proxy = builder
        .env("PAUDE_PROXY_AUDIT_LOG", audit.display().to_string())
        .spawn();
    // No Content-Length: only counting what passes can know the size.
    let body = "x".repeat(12_345);
    let res = Curl::new(
        &proxy,
        &https_url("api.github.com", upstream.port(), "/upload"),
    )
    .method("POST")
    .header("Transfer-Encoding: chunked")
    .data(&body)
    .run()
    .await;
    assert_eq!(res.http_code, 200, "{res:?}");
    let text = wait_lines(&audit, 1);
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(line["method"], "POST", "{text}");
    assert_eq!(line["bytes_up"], 12_345, "{text}");
    assert_eq!(upstream.requests()[0].body_len, 12_345);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_before_the_rules_still_gets_an_audit_line() {
    let (_ca, upstream, builder) = tls_lab().await;
    let audit = builder.dir().join("audit.log");
    let proxy = builder
        .env("PAUDE_PROXY_AUDIT_LOG", audit.display().to_string())
        .spawn();
    let mut tunnel = TunnelClient::open(&proxy, "api.github.com", upstream.port()).await;
    // A second, different Host inside the tunnel: refused (400) before any rule runs,
    // nothing forwarded.
    let misdirected = tunnel
        .request("GET", "/echo")
        .header("host", "evil.test")
        .body(support::body::empty())
        .unwrap();
    let r = tunnel.send(misdirected).await;
    assert_eq!(r.status(), 400);
    collect(r.into_body()).await;
    let text = wait_lines(&audit, 1);
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("JSON");
    assert_eq!(line["decision"], "deny", "{text}");
    assert_eq!(line["status"], 400, "{text}");
    assert_eq!(line["by"], "malformed-request", "{text}");
    assert!(upstream.requests().is_empty());
}
