//! Credential injection in explicit mode (issue 2): the proxy overwrites the client's auth header
//! with the real credential for the CONNECT destination, and only there.

mod support;

use support::client::{Curl, TunnelClient, open_tls, read_response};
use support::secrets::{base64, dummy, fake_secret};
use support::upstream::Upstream;
use support::{http_url, https_url, tls_lab};
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_replaces_the_clients_dummy_value() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("openai");
    let fake = dummy("openai");
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();

    let res = Curl::new(
        &proxy,
        &https_url("api.openai.com", upstream.port(), "/echo"),
    )
    .header(&format!("Authorization: Bearer {fake}"))
    .run()
    .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    let got = upstream.single_request();
    assert_eq!(
        got.header_values("authorization"),
        vec![format!("Bearer {real}")]
    );
    assert!(
        !got.any_header_contains(&fake),
        "dummy value reached upstream: {got:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_is_added_when_the_client_sends_none() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("openai");
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();

    let res = Curl::new(
        &proxy,
        &https_url("api.openai.com", upstream.port(), "/echo"),
    )
    .run()
    .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    let got = upstream.single_request();
    assert_eq!(
        got.header_values("authorization"),
        vec![format!("Bearer {real}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_replaces_the_clients_dummy_value() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("anthropic");
    let fake = dummy("anthropic");
    let proxy = builder.secret("ANTHROPIC_API_KEY", &real).spawn();

    let res = Curl::new(
        &proxy,
        &https_url("api.anthropic.com", upstream.port(), "/echo"),
    )
    .header(&format!("x-api-key: {fake}"))
    .run()
    .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    let got = upstream.single_request();
    assert_eq!(got.header_values("x-api-key"), vec![real.clone()]);
    assert!(
        !got.any_header_contains(&fake),
        "dummy value reached upstream: {got:#?}"
    );
    assert!(
        !got.has_header("authorization"),
        "api_key route must not add a bearer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_is_added_when_the_client_sends_none() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("anthropic");
    let proxy = builder.secret("ANTHROPIC_API_KEY", &real).spawn();

    let res = Curl::new(
        &proxy,
        &https_url("api.anthropic.com", upstream.port(), "/echo"),
    )
    .run()
    .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    assert_eq!(
        upstream.single_request().header_values("x-api-key"),
        vec![real]
    );
}

/// Sends raw HTTP/1.1 inside the tunnel so the header-name case really differs on the wire
/// (hyper and curl would normalise it).
async fn raw_get_with_headers(
    proxy: &support::proxy::Proxy,
    host: &str,
    port: u16,
    headers: &[String],
) -> support::client::RawResponse {
    let mut tls = open_tls(proxy, host, port).await;
    let mut request = format!("GET /echo HTTP/1.1\r\nHost: {host}:{port}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("Connection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .await
        .expect("write request");
    read_response(&mut tls, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_and_case_variant_auth_headers_become_exactly_one_real_value() {
    let (_ca, upstream, builder) = tls_lab().await;
    let openai = fake_secret("openai");
    let anthropic = fake_secret("anthropic");
    let proxy = builder
        .secret("OPENAI_API_KEY", &openai)
        .secret("ANTHROPIC_API_KEY", &anthropic)
        .spawn();
    let fakes: Vec<String> = (0..3).map(|i| dummy(&format!("dup{i}"))).collect();

    let bearer_variants = vec![
        format!("Authorization: Bearer {}", fakes[0]),
        format!("authorization: Bearer {}", fakes[1]),
        format!("AUTHORIZATION: Bearer {}", fakes[2]),
    ];
    let res =
        raw_get_with_headers(&proxy, "api.openai.com", upstream.port(), &bearer_variants).await;
    assert_eq!(res.status, 200, "{res:?}");

    let key_variants = vec![
        format!("X-Api-Key: {}", fakes[0]),
        format!("x-api-key: {}", fakes[1]),
        format!("X-API-KEY: {}", fakes[2]),
    ];
    let res =
        raw_get_with_headers(&proxy, "api.anthropic.com", upstream.port(), &key_variants).await;
    assert_eq!(res.status, 200, "{res:?}");

    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let openai_req = requests
        .iter()
        .find(|r| r.authority.starts_with("api.openai.com"))
        .expect("openai request");
    let anthropic_req = requests
        .iter()
        .find(|r| r.authority.starts_with("api.anthropic.com"))
        .expect("anthropic request");
    assert_eq!(
        openai_req.header_values("authorization"),
        vec![format!("Bearer {openai}")]
    );
    assert_eq!(
        anthropic_req.header_values("x-api-key"),
        vec![anthropic.clone()]
    );
    for req in &requests {
        for fake in &fakes {
            assert!(!req.any_header_contains(fake), "a dummy survived: {req:#?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_route_the_clients_headers_are_preserved() {
    let (_ca, upstream, builder) = tls_lab().await;
    let openai = fake_secret("openai");
    let anthropic = fake_secret("anthropic");
    let proxy = builder
        .secret("OPENAI_API_KEY", &openai)
        .secret("ANTHROPIC_API_KEY", &anthropic)
        .spawn();
    let client_bearer = dummy("own-bearer");
    let client_key = dummy("own-key");

    // Look-alikes of routed domains and an unrelated host: none of them has a route.
    for host in [
        "evil-openai.com",
        "api.openai.com.evil-openai.com",
        "ok.test",
    ] {
        let res = Curl::new(&proxy, &https_url(host, upstream.port(), "/echo"))
            .header(&format!("Authorization: Bearer {client_bearer}"))
            .header(&format!("x-api-key: {client_key}"))
            .run()
            .await;
        assert_eq!(res.http_code, 200, "{host}: {res:?}");
    }

    let requests = upstream.requests();
    assert_eq!(requests.len(), 3, "{requests:#?}");
    for req in &requests {
        assert_eq!(
            req.header_values("authorization"),
            vec![format!("Bearer {client_bearer}")]
        );
        assert_eq!(req.header_values("x-api-key"), vec![client_key.clone()]);
        assert!(!req.any_header_contains(&openai) && !req.any_header_contains(&anthropic));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_routes_match_the_original_table() {
    let (_ca, upstream, builder) = tls_lab().await;
    let gh = fake_secret("gh");
    let cursor = fake_secret("cursor");
    let openai = fake_secret("openai");
    let proxy = builder
        .secret("GH_TOKEN", &gh)
        .secret("CURSOR_API_KEY", &cursor)
        .secret("OPENAI_API_KEY", &openai)
        .spawn();

    // (host, expected Authorization or None for "no injection")
    let cases: Vec<(&str, Option<String>)> = vec![
        ("github.com", Some(format!("Bearer {gh}"))),
        ("api.github.com", Some(format!("Bearer {gh}"))),
        ("raw.githubusercontent.com", Some(format!("Bearer {gh}"))),
        ("gist.github.com", None),
        ("api2.cursor.com", Some(format!("Bearer {cursor}"))),
        ("api.cursorapi.com", Some(format!("Bearer {cursor}"))),
        ("openai.com", Some(format!("Bearer {openai}"))),
        ("api.openai.com.evil-openai.com", None),
    ];
    for (host, _) in &cases {
        let path = format!("/echo?case={host}");
        let res = Curl::new(&proxy, &https_url(host, upstream.port(), &path))
            .run()
            .await;
        assert_eq!(res.http_code, 200, "{host}: {res:?}");
    }
    let requests = upstream.requests();
    for (host, expected) in &cases {
        let req = requests
            .iter()
            .find(|r| r.path == format!("/echo?case={host}"))
            .unwrap_or_else(|| panic!("no upstream request for {host}"));
        let want: Vec<String> = expected.iter().cloned().collect();
        assert_eq!(req.header_values("authorization"), want, "host {host}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_credentials_config_replaces_the_defaults() {
    let (_ca, upstream, builder) = tls_lab().await;
    let git = fake_secret("git");
    let custom = fake_secret("custom");
    let openai = fake_secret("openai");
    let config = serde_json::json!({"credentials": [
        {"env_var": "MY_GIT_TOKEN", "injector": "basic",
         "params": {"username": "x-access-token"}, "domains": ["git.ok.test"]},
        {"env_var": "MY_CUSTOM_KEY", "injector": "api_key",
         "params": {"header_name": "x-foo-key"}, "domains": [".ok.test"]},
    ]});
    let path = builder.write_file("credentials.json", &config.to_string());
    let proxy = builder
        .env("PAUDE_PROXY_CREDENTIALS_CONFIG", path.display().to_string())
        .secret("MY_GIT_TOKEN", &git)
        .secret("MY_CUSTOM_KEY", &custom)
        .secret("OPENAI_API_KEY", &openai)
        .spawn();
    let fake = dummy("x");

    for host in ["git.ok.test", "api.ok.test", "api.openai.com"] {
        let res = Curl::new(
            &proxy,
            &https_url(host, upstream.port(), &format!("/echo?h={host}")),
        )
        .header(&format!("Authorization: Bearer {fake}"))
        .header(&format!("X-Foo-Key: {fake}"))
        .run()
        .await;
        assert_eq!(res.http_code, 200, "{host}: {res:?}");
    }
    let requests = upstream.requests();
    let by_host = |host: &str| {
        requests
            .iter()
            .find(|r| r.path == format!("/echo?h={host}"))
            .unwrap_or_else(|| panic!("no request for {host}"))
            .clone()
    };
    let git_req = by_host("git.ok.test");
    let expected_basic = format!(
        "Basic {}",
        base64(format!("x-access-token:{git}").as_bytes())
    );
    assert_eq!(git_req.header_values("authorization"), vec![expected_basic]);
    // First match wins: git.ok.test matched the basic entry, so x-foo-key is the client's.
    assert_eq!(git_req.header_values("x-foo-key"), vec![fake.clone()]);

    let api_req = by_host("api.ok.test");
    assert_eq!(api_req.header_values("x-foo-key"), vec![custom.clone()]);
    assert_eq!(
        api_req.header_values("authorization"),
        vec![format!("Bearer {fake}")]
    );

    // The custom table replaced the embedded one: no OpenAI route any more.
    let openai_req = by_host("api.openai.com");
    assert_eq!(
        openai_req.header_values("authorization"),
        vec![format!("Bearer {fake}")]
    );
    assert!(!openai_req.any_header_contains(&openai));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unset_env_var_skips_its_entry_and_the_next_match_applies() {
    let (_ca, upstream, builder) = tls_lab().await;
    let second = fake_secret("second");
    let config = serde_json::json!({"credentials": [
        {"env_var": "UNSET_FIRST_KEY", "injector": "bearer", "params": {}, "domains": ["ok.test"]},
        {"env_var": "SECOND_KEY", "injector": "bearer", "params": {}, "domains": [".ok.test"]},
    ]});
    let path = builder.write_file("credentials.json", &config.to_string());
    let proxy = builder
        .env("PAUDE_PROXY_CREDENTIALS_CONFIG", path.display().to_string())
        .secret("SECOND_KEY", &second)
        .spawn();

    let res = Curl::new(&proxy, &https_url("ok.test", upstream.port(), "/echo"))
        .run()
        .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    assert_eq!(
        upstream.single_request().header_values("authorization"),
        vec![format!("Bearer {second}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http_is_forwarded_without_injection() {
    let upstream = Upstream::http().await;
    let real = fake_secret("openai");
    let fake = dummy("openai");
    let proxy = support::proxy::ProxyBuilder::new()
        .allow_port(upstream.port())
        .secret("OPENAI_API_KEY", &real)
        .spawn();

    let with_header = Curl::new(
        &proxy,
        &http_url("api.openai.com", upstream.port(), "/echo?a=1"),
    )
    .header(&format!("Authorization: Bearer {fake}"))
    .run()
    .await;
    let without = Curl::new(
        &proxy,
        &http_url("api.openai.com", upstream.port(), "/echo?a=2"),
    )
    .run()
    .await;

    assert_eq!(with_header.http_code, 200, "{with_header:?}");
    assert_eq!(without.http_code, 200, "{without:?}");
    let requests = upstream.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    let first = requests
        .iter()
        .find(|r| r.path == "/echo?a=1")
        .expect("first");
    let second = requests
        .iter()
        .find(|r| r.path == "/echo?a=2")
        .expect("second");
    assert_eq!(
        first.header_values("authorization"),
        vec![format!("Bearer {fake}")]
    );
    assert!(!second.has_header("authorization"), "{second:#?}");
    for req in &requests {
        assert!(
            !req.any_header_contains(&real),
            "real key sent in cleartext: {req:#?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_and_hop_by_hop_headers_are_not_forwarded() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let headers = vec![
        "Proxy-Authorization: Basic dGVzdDp0ZXN0".to_owned(),
        "Via: 1.1 client-side".to_owned(),
        "X-Forwarded-For: 203.0.113.9".to_owned(),
        "Keep-Alive: timeout=5".to_owned(),
        "X-Hop-Nominated: drop-me".to_owned(),
        "Connection: X-Hop-Nominated".to_owned(),
        "X-End-To-End: keep-me".to_owned(),
    ];

    let res = raw_get_with_headers(&proxy, "ok.test", upstream.port(), &headers).await;

    assert_eq!(res.status, 200, "{res:?}");
    let got = upstream.single_request();
    for name in [
        "proxy-authorization",
        "via",
        "x-forwarded-for",
        "keep-alive",
        "x-hop-nominated",
    ] {
        assert!(!got.has_header(name), "{name} was forwarded: {got:#?}");
    }
    assert_eq!(
        got.header_values("x-end-to-end"),
        vec!["keep-me".to_owned()]
    );
}

/// DESIGN §3.1: routing comes from the CONNECT authority; a request inside the tunnel that
/// names another host gets 421 and nothing goes upstream (so no credential can be steered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_naming_another_host_inside_the_tunnel_is_misdirected() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("openai");
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();

    let mut client = TunnelClient::open(&proxy, "api.openai.com", upstream.port()).await;
    let request = http::Request::builder()
        .uri("/echo")
        .header("host", format!("evil-openai.com:{}", upstream.port()))
        .body(support::body::empty())
        .expect("request");
    let response = client.send(request).await;

    assert_eq!(response.status().as_u16(), 421);
    assert!(upstream.requests().is_empty(), "{:#?}", upstream.requests());
}

/// DESIGN.md §3.7: an upstream that echoes the request (here `/echo`, which returns every
/// header it received) must not hand the real key back to the agent. The upstream got the
/// real value; the client sees it masked with `*` of the same length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_credential_is_masked_in_the_response() {
    let (_ca, upstream, builder) = tls_lab().await;
    let real = fake_secret("openai");
    let proxy = builder.secret("OPENAI_API_KEY", &real).spawn();

    let res = Curl::new(
        &proxy,
        &https_url("api.openai.com", upstream.port(), "/echo"),
    )
    .run()
    .await;

    assert_eq!(res.http_code, 200, "{res:?}");
    assert_eq!(
        upstream.single_request().header_values("authorization"),
        vec![format!("Bearer {real}")]
    );
    let body = String::from_utf8_lossy(&res.body).to_string();
    assert!(!body.contains(&real), "the real key came back: {body}");
    assert!(
        body.contains(&format!("Bearer {}", "*".repeat(real.len()))),
        "expected the masked echo in: {body}"
    );
}
