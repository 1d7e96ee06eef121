//! Refresh on 401 (issue 6): when the upstream rejects the injected token, the proxy fetches
//! a new one and retries once with the same body; a failed refresh keeps the last good
//! token; bodies over 10 MiB stream once without a retry.

mod gcloud_support;
mod support;

use gcloud_support::{
    API_HOST, FakeGoogle, PLACEHOLDER, Reply, TestKey, builder, real_token, watch_secret,
};
use support::body::sha256_hex;
use support::client::{TunnelClient, collect};
use support::pki::TestCa;
use support::proxy::Proxy;
use support::secrets::random_hex;

const PATH: &str = "/v1/projects/paude-test-project/locations/us-central1/endpoints/e:predict";

async fn lab() -> (TestCa, TestKey, FakeGoogle) {
    let ca = TestCa::new("paude-proxy gcloud test CA");
    let key = TestKey::generate();
    let google = FakeGoogle::start(&ca, &key).await;
    (ca, key, google)
}

fn sa_proxy(ca: &TestCa, key: &TestKey, google: &FakeGoogle, tokens: &[&str]) -> Proxy {
    let mut b = builder(ca, google).secret("GCP_ADC_JSON", &google.service_account_json(key));
    b = watch_secret(b, &key.body_line());
    for t in tokens {
        b = watch_secret(b, t);
    }
    b.spawn()
}

/// Random bytes (hex text) so a truncated or reordered body changes the digest.
fn payload(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        out.extend_from_slice(random_hex(512).as_bytes());
    }
    out.truncate(len);
    out
}

async fn post(proxy: &Proxy, google: &FakeGoogle, body: Vec<u8>) -> (u16, serde_json::Value) {
    let mut client = TunnelClient::open(proxy, API_HOST, google.port()).await;
    let req = client
        .request("POST", PATH)
        .header("authorization", format!("Bearer {PLACEHOLDER}"))
        .header("content-type", "application/json")
        .body(support::body::full(body))
        .expect("request");
    let resp = client.send(req).await;
    let status = resp.status().as_u16();
    let bytes = collect(resp.into_body()).await;
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_forces_one_refresh_and_one_retry_with_the_body_intact() {
    let (ca, key, google) = lab().await;
    let (revoked, fresh) = (real_token("revoked"), real_token("fresh"));
    google.script(&[Reply::Token(revoked.clone()), Reply::Token(fresh.clone())]);
    google.accept_only(&[&fresh]);
    let proxy = sa_proxy(&ca, &key, &google, &[&revoked, &fresh]);
    let body = payload(256 * 1024);
    let digest = sha256_hex(&body);

    let (status, answer) = post(&proxy, &google, body.clone()).await;

    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        answer["body_sha256"],
        digest.as_str(),
        "the client sees the retry's answer"
    );
    let hits = google.api_requests();
    assert_eq!(hits.len(), 2, "{hits:#?}");
    assert_eq!(hits[0].authorization, vec![format!("Bearer {revoked}")]);
    assert_eq!(hits[0].answered, 401);
    assert_eq!(hits[1].authorization, vec![format!("Bearer {fresh}")]);
    assert_eq!(hits[1].answered, 200);
    for h in &hits {
        assert_eq!(
            (h.body_len, h.body_sha256.as_str()),
            (body.len(), digest.as_str())
        );
    }
    assert_eq!(google.grants(), 2, "exactly one forced refresh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_401_is_passed_on_without_another_retry() {
    let (ca, key, google) = lab().await;
    let (a, b) = (real_token("a"), real_token("b"));
    google.script(&[Reply::Token(a.clone()), Reply::Token(b.clone())]);
    google.accept_only(&[]);
    let proxy = sa_proxy(&ca, &key, &google, &[&a, &b]);

    let (status, answer) = post(&proxy, &google, b"{}".to_vec()).await;

    assert_eq!(status, 401, "{answer}");
    assert_eq!(
        answer["error"]["status"], "UNAUTHENTICATED",
        "upstream body passes through"
    );
    assert_eq!(google.api_requests().len(), 2, "one retry, not more");
    assert_eq!(google.grants(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_refresh_keeps_the_last_good_token() {
    let (ca, key, google) = lab().await;
    let good = real_token("good");
    google.script(&[Reply::Token(good.clone()), Reply::Fail(500)]);
    // The upstream rejects the token once (a hiccup), then accepts it again.
    google.accept_only(&[]);
    let proxy = sa_proxy(&ca, &key, &google, &[&good]);

    let (status, _) = post(&proxy, &google, b"{}".to_vec()).await;
    assert_eq!(
        status, 401,
        "refresh failed: the upstream's 401 is passed on"
    );
    assert_eq!(
        google.api_requests().len(),
        1,
        "no retry without a new token"
    );
    assert!(google.grants() >= 2, "a refresh was attempted");

    google.accept_only(&[&good]);
    let (status, answer) = post(&proxy, &google, b"{}".to_vec()).await;
    assert_eq!(status, 200, "{answer}");
    let hits = google.api_requests();
    assert_eq!(
        hits.last().expect("hit").authorization,
        vec![format!("Bearer {good}")],
        "the last good token is still used"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_10_mib_stream_once_without_a_retry() {
    let (ca, key, google) = lab().await;
    let (revoked, fresh) = (real_token("revoked"), real_token("fresh"));
    google.script(&[Reply::Token(revoked.clone()), Reply::Token(fresh.clone())]);
    google.accept_only(&[&fresh]);
    let proxy = sa_proxy(&ca, &key, &google, &[&revoked, &fresh]);
    let body = payload(10 * 1024 * 1024 + 1);
    let digest = sha256_hex(&body);

    let (status, _) = post(&proxy, &google, body.clone()).await;

    assert_eq!(status, 401, "no retry for a body that was not kept");
    let hits = google.api_requests();
    assert_eq!(hits.len(), 1, "{hits:#?}");
    assert_eq!(
        (hits[0].body_len, hits[0].body_sha256.as_str()),
        (body.len(), digest.as_str())
    );

    // The rejected token was still replaced, for the requests that follow.
    let (status, answer) = post(&proxy, &google, b"{}".to_vec()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(google.grants(), 2);
    let hits = google.api_requests();
    assert_eq!(hits.len(), 2);
    assert_eq!(hits[1].authorization, vec![format!("Bearer {fresh}")]);
}
