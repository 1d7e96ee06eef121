//! Google Cloud injection (issue 6): on `*.googleapis.com` the agent's placeholder bearer is
//! replaced by a real access token that the proxy obtained from the (fake) token endpoint
//! with a verified JWT-bearer grant; tokens are cached and fetched once for concurrent
//! requests; a broken endpoint gives a 502 with a reason and no secret in the logs.

mod gcloud_support;
mod support;

use std::time::Instant;

use gcloud_support::{
    API_HOST, ECHO_AUTH_PATH, FakeGoogle, PLACEHOLDER, Reply, TestKey, UserGrant, adc_file,
    builder, real_token, watch_secret,
};
use support::IO_TIMEOUT;
use support::client::{TunnelClient, collect, timeout};
use support::pki::TestCa;
use support::proxy::Proxy;
use support::secrets::random_hex;

/// What the proxy logs (debug) for each request that must wait for a token fetch; see
/// `paude_proxy::credential::token::WAITING_FOR_FETCH`.
const WAITING_LINE: &str = paude_proxy::credential::token::WAITING_FOR_FETCH;

const GENERATE_PATH: &str = "/v1/projects/paude-test-project/locations/us-central1/publishers/google/models/gemini:generateContent";

async fn lab() -> (TestCa, TestKey, FakeGoogle) {
    let ca = TestCa::new("paude-proxy gcloud test CA");
    let key = TestKey::generate();
    let google = FakeGoogle::start(&ca, &key).await;
    (ca, key, google)
}

/// A proxy holding the service-account ADC inline (`GCP_ADC_JSON`), with the key and the
/// real tokens under the leak check.
fn sa_proxy(ca: &TestCa, key: &TestKey, google: &FakeGoogle, tokens: &[&str]) -> Proxy {
    let mut b = builder(ca, google).secret("GCP_ADC_JSON", &google.service_account_json(key));
    b = watch_secret(b, &key.body_line());
    for t in tokens {
        b = watch_secret(b, t);
    }
    b.spawn()
}

/// POSTs `body` to the API through the proxy, with the agent's placeholder bearer.
async fn call_api(proxy: &Proxy, google: &FakeGoogle, body: Vec<u8>) -> (u16, Vec<u8>) {
    let mut client = TunnelClient::open(proxy, API_HOST, google.port()).await;
    send_api(&mut client, body).await
}

async fn send_api(client: &mut TunnelClient, body: Vec<u8>) -> (u16, Vec<u8>) {
    let req = client
        .request("POST", GENERATE_PATH)
        .header("authorization", format!("Bearer {PLACEHOLDER}"))
        .header("content-type", "application/json")
        .body(support::body::full(body))
        .expect("request");
    let resp = client.send(req).await;
    let status = resp.status().as_u16();
    (status, collect(resp.into_body()).await.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_placeholder_bearer_is_replaced_by_the_real_token() {
    let (ca, key, google) = lab().await;
    let token = real_token("a");
    google.script(&[Reply::Token(token.clone())]);
    google.accept_only(&[&token]);
    let proxy = sa_proxy(&ca, &key, &google, &[&token]);

    let (status, body) = call_api(&proxy, &google, br#"{"contents":[]}"#.to_vec()).await;

    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let got = google.api_requests();
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(got[0].authorization, vec![format!("Bearer {token}")]);
    assert_eq!(google.grants(), 1);
    assert!(google.bad_grants().is_empty(), "{:?}", google.bad_grants());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adc_file_path_works_too_and_the_token_is_reused() {
    let (ca, key, google) = lab().await;
    let token = real_token("file");
    google.script(&[Reply::Token(token.clone())]);
    google.accept_only(&[&token]);
    let (b, _path) = adc_file(builder(&ca, &google), &google.service_account_json(&key));
    let proxy = watch_secret(watch_secret(b, &key.body_line()), &token).spawn();

    // Two separate tunnels, then a second request on the first: one token fetch in all.
    let mut first = TunnelClient::open(&proxy, API_HOST, google.port()).await;
    assert_eq!(send_api(&mut first, b"1".to_vec()).await.0, 200);
    assert_eq!(call_api(&proxy, &google, b"2".to_vec()).await.0, 200);
    assert_eq!(send_api(&mut first, b"3".to_vec()).await.0, 200);

    assert_eq!(google.grants(), 1, "the token must be cached");
    let got = google.api_requests();
    assert_eq!(got.len(), 3);
    assert!(
        got.iter()
            .all(|r| r.authorization == vec![format!("Bearer {token}")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_first_requests_cause_one_token_fetch() {
    let (ca, key, google) = lab().await;
    let token = real_token("burst");
    google.script(&[Reply::Token(token.clone())]);
    google.accept_only(&[&token]);
    google.hold_grants();
    let proxy = sa_proxy(&ca, &key, &google, &[&token]);

    let mut clients = Vec::new();
    for _ in 0..20 {
        clients.push(TunnelClient::open(&proxy, API_HOST, google.port()).await);
    }
    let tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut c)| tokio::spawn(async move { send_api(&mut c, vec![b'x'; i]).await }))
        .collect();

    // The first fetch is held at the endpoint until all 20 requests wait for a token, so
    // they really are concurrent first requests.
    google.wait_grant_arrived().await;
    let deadline = Instant::now() + IO_TIMEOUT;
    while proxy.stderr().matches(WAITING_LINE).count() < 20 {
        assert!(
            Instant::now() < deadline,
            "only {} of 20 requests reached the token source:\n{}",
            proxy.stderr().matches(WAITING_LINE).count(),
            proxy.stderr()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    google.release_grants();

    for t in tasks {
        let (status, body) = timeout("concurrent request", t).await.expect("task");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(
        google.grants(),
        1,
        "20 concurrent first requests, one fetch"
    );
    assert_eq!(google.api_requests().len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_user_credentials_use_the_refresh_grant() {
    let (ca, _key, google) = lab().await;
    let token = real_token("user");
    let grant = UserGrant {
        client_id: "123-test.apps.googleusercontent.com".into(),
        client_secret: format!("GOCSPX-test-{}", random_hex(12)),
        refresh_token: format!("1//test-refresh-{}", random_hex(16)),
    };
    google.script(&[Reply::Token(token.clone())]);
    google.accept_only(&[&token]);
    google.accept_user(grant.clone());
    let adc = serde_json::json!({
        "type": "authorized_user",
        "client_id": grant.client_id,
        "client_secret": grant.client_secret,
        "refresh_token": grant.refresh_token,
        "quota_project_id": "paude-user-project",
        "token_uri": google.token_uri(),
    })
    .to_string();
    let b = builder(&ca, &google).secret("GCP_ADC_JSON", &adc);
    let b = watch_secret(watch_secret(b, &grant.refresh_token), &grant.client_secret);
    let proxy = watch_secret(b, &token).spawn();

    assert_eq!(call_api(&proxy, &google, b"{}".to_vec()).await.0, 200);
    assert_eq!(
        google.api_requests()[0].authorization,
        vec![format!("Bearer {token}")]
    );
    assert_eq!(google.grants(), 1);
    assert!(google.bad_grants().is_empty(), "{:?}", google.bad_grants());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_endpoint_that_is_down_gives_502_with_a_reason() {
    let (ca, key, google) = lab().await;
    // A port that was just free: connection refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe port")
        .port();
    let down_uri = format!("https://127.0.0.1:{closed}/token");
    let adc = google
        .service_account_json(&key)
        .replace(&google.token_uri(), &down_uri);
    let b = builder(&ca, &google).secret("GCP_ADC_JSON", &adc);
    let mut proxy = watch_secret(b, &key.body_line()).spawn();

    let (status, body) = call_api(&proxy, &google, b"{}".to_vec()).await;
    let body = String::from_utf8_lossy(&body);

    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("no Google access token") && body.contains(&down_uri),
        "the 502 must say why: {body}"
    );
    assert!(
        google.api_requests().is_empty(),
        "nothing may go upstream without a token"
    );
    let log = proxy.wait_stderr_contains("cannot get a Google access token");
    assert!(log.contains(&down_uri), "{log}");
    // Stops the proxy and checks the ADC JSON and the key are nowhere in its output.
    proxy.assert_no_secret_leaks();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placeholder_token_from_the_endpoint_is_never_injected() {
    let (ca, key, google) = lab().await;
    google.script(&[Reply::Token(PLACEHOLDER.into())]);
    google.accept_only(&[PLACEHOLDER]);
    let proxy = sa_proxy(&ca, &key, &google, &[]);

    let (status, body) = call_api(&proxy, &google, b"{}".to_vec()).await;

    assert_eq!(status, 502, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("placeholder"));
    assert!(
        google.api_requests().is_empty(),
        "{:#?}",
        google.api_requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_requests_ignore_proxy_variables_and_go_direct() {
    let (ca, key, google) = lab().await;
    let token = real_token("direct");
    google.script(&[Reply::Token(token.clone())]);
    google.accept_only(&[&token]);
    // A tripwire where the proxy variables point: nothing may connect to it.
    let tripwire = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("tripwire");
    let trip_url = format!("http://{}", tripwire.local_addr().expect("addr"));
    let mut b = builder(&ca, &google).secret("GCP_ADC_JSON", &google.service_account_json(&key));
    for var in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        b = b.env(var, trip_url.clone());
    }
    let proxy = watch_secret(b, &token).spawn();

    assert_eq!(call_api(&proxy, &google, b"{}".to_vec()).await.0, 200);
    assert_eq!(
        google.grants(),
        1,
        "the token came straight from the endpoint"
    );
    let tripped = tokio::time::timeout(std::time::Duration::ZERO, tripwire.accept()).await;
    assert!(
        tripped.is_err(),
        "the proxy's token request went through a proxy variable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_token_is_masked_in_the_answer_to_the_agent() {
    let (ca, key, google) = lab().await;
    let token = real_token("echoed");
    google.script(&[Reply::Token(token.clone())]);
    google.accept_only(&[&token]);
    let proxy = sa_proxy(&ca, &key, &google, &[&token]);

    let mut client = TunnelClient::open(&proxy, API_HOST, google.port()).await;
    let req = client
        .request("GET", ECHO_AUTH_PATH)
        .header("authorization", format!("Bearer {PLACEHOLDER}"))
        .body(support::body::empty())
        .expect("request");
    let resp = client.send(req).await;
    assert_eq!(resp.status(), 200);
    let header = resp
        .headers()
        .get("x-echo-authorization")
        .expect("echo header")
        .to_str()
        .expect("ascii")
        .to_owned();
    let body = String::from_utf8_lossy(&collect(resp.into_body()).await).into_owned();

    assert_eq!(
        google.api_requests()[0].authorization,
        vec![format!("Bearer {token}")]
    );
    assert!(
        !header.contains(&token) && !body.contains(&token),
        "{header} {body}"
    );
    let masked = "*".repeat(token.len());
    assert!(
        header.contains(&masked) && body.contains(&masked),
        "{header} {body}"
    );
}
