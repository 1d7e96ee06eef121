//! Policy in explicit mode (issue 2): domain allowlist (exact, suffix, regex), client filter,
//! ports, SSRF guard. Every denial is a 403 before anything reaches the upstream, and one
//! squid-format line in the blocked log.

mod support;

use support::client::{Curl, connect_tunnel, raw_request};
use support::proxy::{Proxy, ProxyBuilder, assert_blocked_line, free_port};
use support::upstream::Upstream;
use support::{http_url, https_url, tls_lab};

/// CONNECT through the proxy with curl; returns the CONNECT answer's status.
async fn curl_connect_status(proxy: &Proxy, host: &str, port: u16) -> u16 {
    let res = Curl::new(proxy, &https_url(host, port, "/echo"))
        .run()
        .await;
    if res.connect_code == 200 {
        assert_eq!(
            res.http_code, 200,
            "{host}: tunnel opened but request failed: {res:?}"
        );
    } else {
        assert_ne!(
            res.exit_code, 0,
            "{host}: curl succeeded without a tunnel: {res:?}"
        );
    }
    res.connect_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_domain_gets_403_a_blocked_log_line_and_nothing_upstream() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.env("ALLOWED_DOMAINS", "ok.test").spawn();
    let port = upstream.port();

    let denied = connect_tunnel(proxy.addr(), &format!("evil-openai.com:{port}"))
        .await
        .expect_err("CONNECT to a domain outside ALLOWED_DOMAINS must be refused");
    assert!(
        denied.head.starts_with("HTTP/1.1 403 Forbidden\r\n"),
        "{denied:?}"
    );
    assert!(
        denied.body_text().contains("evil-openai.com"),
        "reason must name the host: {denied:?}"
    );
    // An exact rule does not admit subdomains.
    assert_eq!(curl_connect_status(&proxy, "api.ok.test", port).await, 403);

    let lines = proxy.wait_blocked_lines(2);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_blocked_line(
        &lines[0],
        "127.0.0.1",
        "CONNECT",
        &format!("evil-openai.com:{port}"),
    );
    assert_blocked_line(
        &lines[1],
        "127.0.0.1",
        "CONNECT",
        &format!("api.ok.test:{port}"),
    );
    upstream.assert_untouched();

    // Control: the allowed name reaches the very same upstream.
    assert_eq!(curl_connect_status(&proxy, "ok.test", port).await, 200);
    assert_eq!(upstream.single_request().path, "/echo");
    assert_eq!(
        proxy.blocked_log().lines().count(),
        2,
        "an allowed request was logged as blocked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suffix_rule_admits_the_domain_and_subdomains_but_not_lookalikes() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.env("ALLOWED_DOMAINS", ".openai.com").spawn();
    let port = upstream.port();

    for (host, expected) in [
        ("api.openai.com", 200),
        ("openai.com", 200),
        ("evil-openai.com", 403),
        ("api.openai.com.evil-openai.com", 403),
    ] {
        assert_eq!(
            curl_connect_status(&proxy, host, port).await,
            expected,
            "{host}"
        );
    }
    assert_eq!(upstream.requests().len(), 2, "{:#?}", upstream.requests());
    let lines = proxy.wait_blocked_lines(2);
    assert_blocked_line(
        &lines[0],
        "127.0.0.1",
        "CONNECT",
        &format!("evil-openai.com:{port}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn regex_rule_is_case_insensitive_and_mixes_with_exact_names() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder
        .env("ALLOWED_DOMAINS", r"ok.test,~^api[0-9]+\.ok\.test$")
        .spawn();
    let port = upstream.port();

    for (host, expected) in [
        ("api1.ok.test", 200),
        ("API42.OK.TEST", 200),
        ("ok.test", 200),
        ("api.ok.test", 403),
        ("xapi1.ok.test", 403),
    ] {
        assert_eq!(
            curl_connect_status(&proxy, host, port).await,
            expected,
            "{host}"
        );
    }
    assert_eq!(upstream.requests().len(), 3, "{:#?}", upstream.requests());
    assert_eq!(proxy.wait_blocked_lines(2).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_client_gets_403_for_connect_http_and_absolute_https_forms() {
    let (_ca, tls_upstream, builder) = tls_lab().await;
    let plain_upstream = Upstream::http().await;
    // A documentation range: the test's own 127.0.0.1 is not in it.
    let proxy = builder
        .allow_port(plain_upstream.port())
        .env("PAUDE_PROXY_ALLOWED_CLIENTS", "192.0.2.0/24,198.51.100.7")
        .spawn();
    let tls_port = tls_upstream.port();
    let plain_port = plain_upstream.port();

    let connect = Curl::new(&proxy, &https_url("ok.test", tls_port, "/echo"))
        .run()
        .await;
    assert_eq!(connect.connect_code, 403, "{connect:?}");

    let http = Curl::new(&proxy, &http_url("ok.test", plain_port, "/echo"))
        .run()
        .await;
    assert_eq!(http.http_code, 403, "{http:?}");

    let absolute_https = format!("https://ok.test:{tls_port}/echo");
    let raw = raw_request(
        proxy.addr(),
        format!("GET {absolute_https} HTTP/1.1\r\nHost: ok.test:{tls_port}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(raw.status, 403, "{raw:?}");

    let lines = proxy.wait_blocked_lines(3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_blocked_line(
        &lines[0],
        "127.0.0.1",
        "CONNECT",
        &format!("ok.test:{tls_port}"),
    );
    assert_blocked_line(
        &lines[1],
        "127.0.0.1",
        "GET",
        &http_url("ok.test", plain_port, "/echo"),
    );
    assert_blocked_line(&lines[2], "127.0.0.1", "GET", &absolute_https);
    tls_upstream.assert_untouched();
    plain_upstream.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_client_ip_cidr_or_dns_name_is_admitted() {
    for allowed in ["127.0.0.1", "10.0.0.0/8,127.0.0.0/8", "localhost"] {
        let (_ca, upstream, builder) = tls_lab().await;
        let proxy = builder.env("PAUDE_PROXY_ALLOWED_CLIENTS", allowed).spawn();
        let res = Curl::new(&proxy, &https_url("ok.test", upstream.port(), "/echo"))
            .run()
            .await;
        assert_eq!(res.http_code, 200, "ALLOWED_CLIENTS={allowed}: {res:?}");
        assert_eq!(upstream.requests().len(), 1, "ALLOWED_CLIENTS={allowed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_default_ports_are_refused_unless_listed_in_allowed_otel_ports() {
    let ca = support::pki::TestCa::new("ports CA");
    let tls_upstream = Upstream::https(&ca).await;
    let plain_upstream = Upstream::http().await;
    let (tls_port, plain_port) = (tls_upstream.port(), plain_upstream.port());

    let proxy = ProxyBuilder::new().trust(&ca).spawn();
    let denied = connect_tunnel(proxy.addr(), &format!("ok.test:{tls_port}"))
        .await
        .expect_err("CONNECT to a non-443 port must be refused");
    assert_eq!(denied.status, 403, "{denied:?}");
    assert!(
        denied.body_text().contains(&tls_port.to_string()),
        "reason must name the port: {denied:?}"
    );
    let http = Curl::new(&proxy, &http_url("ok.test", plain_port, "/echo"))
        .run()
        .await;
    assert_eq!(http.http_code, 403, "{http:?}");
    assert_eq!(proxy.wait_blocked_lines(2).len(), 2);
    tls_upstream.assert_untouched();
    plain_upstream.assert_untouched();
    drop(proxy);

    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .allow_port(tls_port)
        .allow_port(plain_port)
        .spawn();
    assert_eq!(curl_connect_status(&proxy, "ok.test", tls_port).await, 200);
    let http = Curl::new(&proxy, &http_url("ok.test", plain_port, "/echo"))
        .run()
        .await;
    assert_eq!(http.http_code, 200, "{http:?}");
    assert_eq!(tls_upstream.requests().len(), 1);
    assert_eq!(plain_upstream.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_endpoint_opens_one_port_on_one_host_only() {
    let ca = support::pki::TestCa::new("endpoints CA");
    let upstream = Upstream::https(&ca).await;
    let port = upstream.port();
    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .env("ALLOWED_ENDPOINTS", format!("api.openai.com:{port}"))
        .spawn();

    assert_eq!(
        curl_connect_status(&proxy, "api.openai.com", port).await,
        200
    );
    assert_eq!(curl_connect_status(&proxy, "ok.test", port).await, 403);
    assert_eq!(upstream.requests().len(), 1);
    let lines = proxy.wait_blocked_lines(1);
    assert_blocked_line(
        &lines[0],
        "127.0.0.1",
        "CONNECT",
        &format!("ok.test:{port}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_endpoint_is_still_subject_to_allowed_domains() {
    let ca = support::pki::TestCa::new("endpoints CA");
    let upstream = Upstream::https(&ca).await;
    let port = upstream.port();
    let proxy = ProxyBuilder::new()
        .trust(&ca)
        .env("ALLOWED_DOMAINS", "ok.test")
        .env("ALLOWED_ENDPOINTS", format!("api.openai.com:{port}"))
        .spawn();

    assert_eq!(
        curl_connect_status(&proxy, "api.openai.com", port).await,
        403
    );
    upstream.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssrf_guard_refuses_loopback_without_allowed_upstream_nets() {
    let (_ca, tls_upstream, builder) = tls_lab().await;
    let plain_upstream = Upstream::http().await;
    let proxy = builder
        .allow_port(plain_upstream.port())
        .remove_env("PAUDE_PROXY_ALLOWED_UPSTREAM_NETS")
        .spawn();
    let (tls_port, plain_port) = (tls_upstream.port(), plain_upstream.port());

    // A name that resolves to loopback, loopback literals, and loopback embedded in IPv6.
    for authority in [
        format!("api.openai.com:{tls_port}"),
        format!("127.0.0.1:{tls_port}"),
        format!("[::ffff:127.0.0.1]:{tls_port}"),
        format!("[::1]:{tls_port}"),
    ] {
        let denied = connect_tunnel(proxy.addr(), &authority)
            .await
            .expect_err("loopback upstream must be refused");
        assert_eq!(denied.status, 403, "{authority}: {denied:?}");
    }
    let http = Curl::new(&proxy, &http_url("ok.test", plain_port, "/echo"))
        .run()
        .await;
    assert_eq!(http.http_code, 403, "{http:?}");

    let lines = proxy.wait_blocked_lines(5);
    assert_blocked_line(
        &lines[0],
        "127.0.0.1",
        "CONNECT",
        &format!("api.openai.com:{tls_port}"),
    );
    tls_upstream.assert_untouched();
    plain_upstream.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_upstream_nets_exempts_only_the_listed_cidr() {
    let (_ca, upstream, builder) = tls_lab().await;
    let port = upstream.port();
    let proxy = builder
        .env("PAUDE_PROXY_ALLOWED_UPSTREAM_NETS", "127.0.0.2/32")
        .spawn();
    assert_eq!(curl_connect_status(&proxy, "ok.test", port).await, 403);
    upstream.assert_untouched();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_listener_is_never_an_upstream() {
    let port = free_port();
    let proxy = ProxyBuilder::new()
        .env("PAUDE_PROXY_LISTEN", format!("127.0.0.1:{port}"))
        .allow_port(port)
        .spawn();
    assert_eq!(proxy.port(), port);

    for authority in [format!("127.0.0.1:{port}"), format!("ok.test:{port}")] {
        let denied = connect_tunnel(proxy.addr(), &authority)
            .await
            .expect_err("CONNECT to the proxy itself must be refused");
        assert_eq!(denied.status, 403, "{authority}: {denied:?}");
    }
}
