//! The admin listener (`PAUDE_PROXY_ADMIN_LISTEN`): `/healthz` and `/metrics` over real HTTP
//! on loopback, with counters that move when the proxy works.

mod support;

use std::process::Command;

use support::client::Curl;
use support::https_url;
use support::proxy::ProxyBuilder;

fn admin_get(addr: &str, path: &str) -> (String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-w",
            "\n%{http_code}",
            &format!("http://{addr}{path}"),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, ""));
    (code.to_string(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_count_what_happened() {
    let proxy = ProxyBuilder::new()
        .env("ALLOWED_DOMAINS", ".openai.com")
        .env("PAUDE_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
        .spawn();
    let stderr = proxy.wait_stderr_contains("listening role=admin addr=");
    let admin = stderr
        .lines()
        .find_map(|l| l.split("listening role=admin addr=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .expect("admin address")
        .to_string();

    assert_eq!(admin_get(&admin, "/healthz"), ("200".into(), "ok\n".into()));
    let (code, before) = admin_get(&admin, "/metrics");
    assert_eq!(code, "200");
    assert!(
        before.contains("\npaude_proxy_denied_total 0\n"),
        "{before}"
    );

    let res = Curl::new(&proxy, &https_url("evil.com", 443, "/"))
        .run()
        .await;
    assert_eq!(res.connect_code, 403, "{res:?}");

    let (_, after) = admin_get(&admin, "/metrics");
    assert!(after.contains("\npaude_proxy_denied_total 1\n"), "{after}");
    assert!(
        after.contains("paude_proxy_connections_total{entry=\"explicit\"} 1"),
        "{after}"
    );
    assert_eq!(admin_get(&admin, "/nope").0, "404");
}
