//! What the agent's Google libraries talk to instead of Google (issue 6): token vending at
//! the OAuth endpoints, the emulated GCE metadata server, and the stub ADC from
//! `paude-proxy stub-adc`. None of these answers is forwarded, and none holds a real token.

mod gcloud_support;
mod support;

use gcloud_support::{
    ACCOUNTS_HOST, FakeGoogle, OAUTH_HOST, PLACEHOLDER, PROJECT, Reply, TestKey, builder,
    real_token, watch_secret,
};
use support::client::{Curl, raw_request};
use support::https_url;
use support::pki::TestCa;
use support::proxy::{Proxy, ProxyBuilder};

const VENDED: &str =
    r#"{"access_token":"paude-proxy-managed","expires_in":3600,"token_type":"Bearer"}"#;
const STUB_GRANT: &str = "grant_type=refresh_token&client_id=paude-proxy-managed&client_secret=paude-proxy-managed&refresh_token=paude-proxy-managed";
const TOKEN_PATH: &str = "/computeMetadata/v1/instance/service-accounts/default/token";

async fn lab() -> (TestCa, TestKey, FakeGoogle) {
    let ca = TestCa::new("paude-proxy gcloud test CA");
    let key = TestKey::generate();
    let google = FakeGoogle::start(&ca, &key).await;
    (ca, key, google)
}

fn sa_proxy(ca: &TestCa, key: &TestKey, google: &FakeGoogle) -> Proxy {
    let b = builder(ca, google).secret("GCP_ADC_JSON", &google.service_account_json(key));
    watch_secret(b, &key.body_line()).spawn()
}

/// The final status line of a curl header dump (`HTTP/1.1 200 OK`).
fn status_line(res: &support::client::CurlResult) -> String {
    res.header_dump
        .split("\r\n\r\n")
        .filter(|b| !b.trim().is_empty())
        .last()
        .and_then(|b| b.lines().next())
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_are_vended_and_never_forwarded() {
    let (ca, key, google) = lab().await;
    let proxy = sa_proxy(&ca, &key, &google);

    for (host, path) in [(OAUTH_HOST, "/token"), (ACCOUNTS_HOST, "/o/oauth2/token")] {
        let res = Curl::new(&proxy, &https_url(host, google.port(), path))
            .arg("--http1.1")
            .data(STUB_GRANT)
            .run()
            .await;
        assert_eq!(res.exit_code, 0, "{res:?}");
        assert_eq!(status_line(&res), "HTTP/1.1 200 OK", "{host}");
        assert_eq!(res.header("content-type"), vec!["application/json"]);
        assert_eq!(res.body_text(), VENDED, "{host}");
    }
    // Over HTTP/2 as well (no reason phrase there).
    let res = Curl::new(&proxy, &https_url(OAUTH_HOST, google.port(), "/token"))
        .arg("--http2")
        .data(STUB_GRANT)
        .run()
        .await;
    assert_eq!((res.http_code, res.body_text().as_str()), (200, VENDED));

    assert_eq!(
        google.tcp_accepts(),
        0,
        "a vended request reached the token endpoint"
    );
    assert!(google.token_requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_token_and_other_paths_are_not_vended() {
    let (ca, key, google) = lab().await;
    // oauth2.googleapis.com is under .googleapis.com: forwarded requests get the real token.
    let token = real_token("fwd");
    google.script(&[Reply::Token(token.clone())]);
    google.accept_only(&[&token]);
    let proxy = watch_secret(
        builder(&ca, &google).secret("GCP_ADC_JSON", &google.service_account_json(&key)),
        &token,
    )
    .spawn();

    let res = Curl::new(&proxy, &https_url(OAUTH_HOST, google.port(), "/token"))
        .run()
        .await;
    assert_eq!(
        res.http_code, 405,
        "GET /token goes to the endpoint: {res:?}"
    );
    assert_ne!(res.body_text(), VENDED);

    let res = Curl::new(
        &proxy,
        &https_url(OAUTH_HOST, google.port(), "/token/extra"),
    )
    .data(STUB_GRANT)
    .run()
    .await;
    assert_eq!(res.http_code, 200, "another path is an API call: {res:?}");
    assert_ne!(res.body_text(), VENDED);

    let client_gets: Vec<_> = google
        .token_requests()
        .into_iter()
        .filter(|(m, _)| m == "GET")
        .collect();
    assert_eq!(client_gets, vec![("GET".to_owned(), "/token".to_owned())]);
    let api = google.api_requests();
    assert_eq!(api.len(), 1);
    assert_eq!(api[0].path, "/token/extra");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gcloud_credential_nothing_is_vended() {
    let (ca, _key, google) = lab().await;
    let proxy = builder(&ca, &google).spawn();

    let res = Curl::new(&proxy, &https_url(OAUTH_HOST, google.port(), "/token"))
        .data(STUB_GRANT)
        .run()
        .await;

    assert_eq!(
        res.http_code, 400,
        "forwarded to the endpoint, which refuses the stub: {res:?}"
    );
    assert_eq!(
        google.token_requests(),
        vec![("POST".to_owned(), "/token".to_owned())]
    );
}

/// `GET http://<host>/<path>` sent to the explicit proxy, as `HTTP_PROXY` clients do.
async fn metadata_get(
    proxy: &Proxy,
    host: &str,
    path: &str,
    flavor: bool,
) -> support::client::RawResponse {
    let flavor = if flavor {
        "Metadata-Flavor: Google\r\n"
    } else {
        ""
    };
    let request = format!(
        "GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{flavor}Connection: close\r\n\r\n"
    );
    raw_request(proxy.addr(), request.as_bytes()).await
}

fn metadata_proxy_builder(ca: &TestCa, google: &FakeGoogle) -> ProxyBuilder {
    // If the emulation failed, the name would lead to the real metadata address, which the
    // SSRF guard refuses: no lookup, no traffic.
    builder(ca, google).host(
        "metadata.google.internal",
        "169.254.169.254".parse().expect("ip"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metadata_server_is_emulated() {
    let (ca, key, google) = lab().await;
    let b = metadata_proxy_builder(&ca, &google)
        .secret("GCP_ADC_JSON", &google.service_account_json(&key));
    let proxy = watch_secret(b, &key.body_line()).spawn();

    for host in ["metadata.google.internal", "169.254.169.254"] {
        let r = metadata_get(&proxy, host, TOKEN_PATH, true).await;
        assert_eq!(
            (r.status, r.body_text().as_str()),
            (200, VENDED),
            "{host}: {r:?}"
        );
        assert_eq!(r.header("metadata-flavor").as_deref(), Some("Google"));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );

        let r = metadata_get(&proxy, host, &format!("{TOKEN_PATH}?scopes=x"), true).await;
        assert_eq!(r.status, 200, "query strings are ignored: {r:?}");

        let r = metadata_get(
            &proxy,
            host,
            "/computeMetadata/v1/instance/service-accounts/default/email",
            true,
        )
        .await;
        assert_eq!(r.status, 200, "{r:?}");
        assert!(r.body_text().contains(PLACEHOLDER), "{r:?}");
        assert!(
            !r.body_text().contains("iam.gserviceaccount.com"),
            "not the real account"
        );

        let r = metadata_get(&proxy, host, "/computeMetadata/v1/project/project-id", true).await;
        assert_eq!((r.status, r.body_text().as_str()), (200, PROJECT));

        for other in [
            "/",
            "/computeMetadata/v1/",
            "/computeMetadata/v1/instance/service-accounts/default/identity?audience=x",
            "/computeMetadata/v1/instance/attributes/ssh-keys",
        ] {
            let r = metadata_get(&proxy, host, other, true).await;
            assert_eq!(r.status, 404, "{host}{other}: {r:?}");
            assert_eq!(r.header("metadata-flavor").as_deref(), Some("Google"));
        }

        let r = metadata_get(&proxy, host, TOKEN_PATH, false).await;
        assert_eq!(r.status, 403, "Metadata-Flavor is required: {r:?}");
        assert_eq!(
            r.header("x-proxy-error").as_deref(),
            Some("metadata-flavor-required")
        );
        assert!(!r.body_text().contains("access_token"));
    }
    assert_eq!(google.tcp_accepts(), 0);
    assert!(proxy.blocked_log().is_empty(), "{}", proxy.blocked_log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_project_is_a_404() {
    let (ca, _key, google) = lab().await;
    let adc = serde_json::json!({
        "type": "authorized_user",
        "client_id": "c",
        "client_secret": "GOCSPX-never-used-secret",
        "refresh_token": "1//never-used-refresh-token",
        "token_uri": google.token_uri(),
    })
    .to_string();
    let proxy = metadata_proxy_builder(&ca, &google)
        .secret("GCP_ADC_JSON", &adc)
        .spawn();

    let r = metadata_get(
        &proxy,
        "metadata.google.internal",
        "/computeMetadata/v1/project/project-id",
        true,
    )
    .await;
    assert_eq!(r.status, 404, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_gcloud_credential_the_metadata_address_stays_refused() {
    let (ca, _key, google) = lab().await;
    let proxy = metadata_proxy_builder(&ca, &google).spawn();

    for host in ["169.254.169.254", "metadata.google.internal"] {
        let r = metadata_get(&proxy, host, TOKEN_PATH, true).await;
        assert_eq!(r.status, 403, "{host}: {r:?}");
        assert!(r.body_text().contains("169.254.169.254"), "{r:?}");
    }
    assert_eq!(proxy.wait_blocked_lines(2).len(), 2);
}

#[test]
fn stub_adc_prints_the_agents_credentials_file() {
    // A broken proxy configuration does not matter to the subcommand.
    let out = ProxyBuilder::new()
        .env("PAUDE_PROXY_LISTEN", "not-an-address")
        .arg("stub-adc")
        .run_to_exit();
    assert_eq!(out.code, Some(0), "{out:?}");
    let stub: serde_json::Value = serde_json::from_str(&out.stdout).expect("stub is JSON");
    assert_eq!(stub["type"], "authorized_user");
    for field in ["client_id", "client_secret", "refresh_token"] {
        assert_eq!(stub[field], PLACEHOLDER, "{field}");
    }
    assert!(!out.stdout.contains("private_key"));

    let help = ProxyBuilder::new().arg("--help").run_to_exit();
    assert!(help.stdout.contains("stub-adc"), "{}", help.stdout);
}
