//! Route matchers end to end: `methods`, `require_client_header` and `path_prefix` each
//! change which requests get a credential, through the real proxy to a recording upstream;
//! `--check-config` reports a route that can never match.

mod oauth_support;
mod support;

use oauth_support::FakeOAuth;
use support::client::TunnelClient;
use support::pki::TestCa;
use support::proxy::ProxyBuilder;
use support::secrets::random_hex;

const HOST: &str = "api.matchers.test";
const DUMMY: &str = "Bearer paude-proxy-managed";

async fn send(
    proxy: &support::proxy::Proxy,
    fake: &FakeOAuth,
    method: &str,
    path: &str,
    auth: Option<&str>,
) -> Vec<String> {
    let mut client = TunnelClient::open(proxy, HOST, fake.port()).await;
    let mut req = client.request(method, path);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    client.send(req.body(support::body::empty()).unwrap()).await;
    fake.api_requests()
        .pop()
        .expect("recorded")
        .values("authorization")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_require_client_header_and_path_prefix_decide_injection() {
    let ca = TestCa::new("paude-proxy matchers test CA");
    let fake = FakeOAuth::start(&ca, &[HOST], "/unused", "r", Box::new(|n| format!("t{n}"))).await;
    let (post_key, cond_key, path_key) = (
        format!("sk-POST-{}", random_hex(10)),
        format!("sk-COND-{}", random_hex(10)),
        format!("sk-PATH-{}", random_hex(10)),
    );
    let b: ProxyBuilder = fake.builder(&ca, &[HOST]);
    let table = serde_json::json!({"credentials": [
        {"env_var": "POST_KEY", "injector": "bearer", "params": {"methods": ["POST"]}, "domains": [HOST]},
        {"env_var": "PATH_KEY", "injector": "bearer", "params": {"path_prefix": "/v1"}, "domains": [HOST]},
        {"env_var": "COND_KEY", "injector": "bearer", "params": {"require_client_header": true}, "domains": [HOST]},
    ]});
    let config = b.write_file("credentials.json", &table.to_string());
    let proxy = b
        .env(
            "PAUDE_PROXY_CREDENTIALS_CONFIG",
            config.display().to_string(),
        )
        .secret("POST_KEY", &post_key)
        .secret("COND_KEY", &cond_key)
        .secret("PATH_KEY", &path_key)
        .spawn();

    let bearer = |k: &str| vec![format!("Bearer {k}")];
    // methods: only POST takes the first route.
    assert_eq!(
        send(&proxy, &fake, "POST", "/x", None).await,
        bearer(&post_key)
    );
    // path_prefix: /v1 and /v1/..., not /v1x.
    assert_eq!(
        send(&proxy, &fake, "GET", "/v1/models", None).await,
        bearer(&path_key)
    );
    assert_eq!(
        send(&proxy, &fake, "GET", "/v1", None).await,
        bearer(&path_key)
    );
    // require_client_header: anonymous requests stay anonymous.
    assert_eq!(
        send(&proxy, &fake, "GET", "/v1x", None).await,
        Vec::<String>::new()
    );
    assert_eq!(
        send(&proxy, &fake, "GET", "/v1x", Some(DUMMY)).await,
        bearer(&cond_key)
    );
}

#[test]
fn check_config_reports_a_route_that_can_never_match() {
    let b = ProxyBuilder::new();
    let table = serde_json::json!({"credentials": [
        {"env_var": "WIDE_KEY", "injector": "bearer", "domains": [".wide.test"]},
        {"env_var": "NARROW_KEY", "injector": "bearer", "domains": ["api.wide.test"]},
    ]});
    let config = b.write_file("credentials.json", &table.to_string());
    let dir = b.dir().join("ca");
    let out = b
        .env(
            "PAUDE_PROXY_CREDENTIALS_CONFIG",
            config.display().to_string(),
        )
        .env("PAUDE_PROXY_CA_DIR", dir.display().to_string())
        .secret("WIDE_KEY", "sk-wide-value-123456")
        .secret("NARROW_KEY", "sk-narrow-value-123456")
        .arg("--check-config")
        .run_to_exit();
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(
        out.stdout
            .contains("route NARROW_KEY can never match: WIDE_KEY comes first"),
        "{}",
        out.stdout
    );
}
