//! Startup, configuration and the CA (issue 2): exit 64 on bad config with a message naming the
//! variable and value, `--check-config`, `--help`, CA persistence and modes, the leaves the proxy
//! mints, and the answer to requests that are not proxy requests.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use support::client::{Curl, TunnelClient, raw_request};
use support::proxy::{EXIT_CONFIG_ERROR, ProxyBuilder};
use support::secrets::fake_secret;
use support::{https_url, tls_lab};
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::parse_x509_certificate;

/// One bad setting: the variable, its value, and text the error must contain besides the
/// variable name (usually the value itself; the path for file-based settings).
struct BadConfig {
    var: &'static str,
    value: String,
    must_mention: String,
}

fn bad(var: &'static str, value: &str) -> BadConfig {
    BadConfig {
        var,
        value: value.to_owned(),
        must_mention: value.to_owned(),
    }
}

fn bad_config_cases(dir: &std::path::Path) -> Vec<BadConfig> {
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write case file");
        path.display().to_string()
    };
    let missing_json = dir.join("missing.json").display().to_string();
    let invalid_json = write("invalid.json", "{\"credentials\": [");
    let bad_injector = write(
        "bad-injector.json",
        r#"{"credentials":[{"env_var":"X","injector":"magic","params":{},"domains":[".a.com"]}]}"#,
    );
    let garbage_ca = write(
        "garbage-ca.pem",
        "-----BEGIN CERTIFICATE-----\nnot*base64*at*all\n-----END CERTIFICATE-----\n",
    );
    let missing_ca = dir.join("missing-ca.pem").display().to_string();
    let blocked_in_missing_dir = dir
        .join("no-such-dir")
        .join("blocked.log")
        .display()
        .to_string();
    vec![
        bad("PAUDE_PROXY_ALLOWED_CLIENTS", "10.0.0.0/33"),
        bad("ALLOWED_OTEL_PORTS", "70000"),
        bad("ALLOWED_OTEL_PORTS", "0"),
        bad("ALLOWED_OTEL_PORTS", "4317,http"),
        bad("ALLOWED_DOMAINS", "~("),
        bad("ALLOWED_DOMAINS", "ok.test,~[z-a]"),
        bad("PAUDE_PROXY_CREDENTIALS_CONFIG", &missing_json),
        bad("PAUDE_PROXY_CREDENTIALS_CONFIG", &invalid_json),
        bad("PAUDE_PROXY_CREDENTIALS_CONFIG", &bad_injector),
        bad("PAUDE_PROXY_UPSTREAM_CA", &garbage_ca),
        bad("PAUDE_PROXY_UPSTREAM_CA", &missing_ca),
        bad("BLOCKED_LOG_PATH", &blocked_in_missing_dir),
        bad("ALLOWED_ENDPOINTS", "*.x.com:443"),
        bad("ALLOWED_ENDPOINTS", "a.com"),
        bad("ALLOWED_ENDPOINTS", "a.com:443/path"),
        bad("ALLOWED_ENDPOINTS", "a.com:70000"),
        bad("PAUDE_PROXY_ALLOWED_UPSTREAM_NETS", "127.0.0.0/99"),
    ]
    .into_iter()
    .map(|mut case| {
        // For `a,b` lists the message need only name the bad element.
        if let Some(last) = case.value.rsplit(',').next() {
            case.must_mention = last.to_owned();
        }
        case
    })
    .collect()
}

/// Runs one bad configuration; returns a description of what is wrong, if anything, so the
/// table tests report every failing case at once.
fn config_error_problem(case: &BadConfig, extra_args: &[&str]) -> Option<String> {
    let mut builder = ProxyBuilder::new()
        .secret("OPENAI_API_KEY", &fake_secret("openai"))
        .env(case.var, case.value.clone());
    for arg in extra_args {
        builder = builder.arg(arg);
    }
    let exited = builder.run_to_exit();
    let label = format!("{}={} {extra_args:?}", case.var, case.value);
    if exited.code != Some(EXIT_CONFIG_ERROR) {
        return Some(format!(
            "{label}: exit {:?}, stderr {:?}",
            exited.code, exited.stderr
        ));
    }
    let lines: Vec<&str> = exited
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    match lines.as_slice() {
        [line] if !line.contains(case.var) => Some(format!(
            "{label}: message does not name the variable: {line:?}"
        )),
        [line] if !line.contains(&case.must_mention) => Some(format!(
            "{label}: message does not name the bad value {:?}: {line:?}",
            case.must_mention
        )),
        [_] => None,
        _ => Some(format!(
            "{label}: expected a one-line message, got {lines:#?}"
        )),
    }
}

fn assert_all_config_errors(extra_args: &[&str]) {
    let dir = tempfile::tempdir().expect("tempdir");
    let problems: Vec<String> = bad_config_cases(dir.path())
        .iter()
        .filter_map(|case| config_error_problem(case, extra_args))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn invalid_configuration_exits_64_with_a_one_line_message() {
    assert_all_config_errors(&[]);
}

#[test]
fn check_config_reports_the_same_errors() {
    assert_all_config_errors(&["--check-config"]);
}

#[test]
fn check_config_accepts_a_valid_configuration_and_exits_0() {
    let builder = ProxyBuilder::new();
    let creds = builder.write_file(
        "credentials.json",
        r#"{"credentials":[{"env_var":"MY_KEY","injector":"api_key","params":{"header_name":"x-foo"},"domains":[".a.com"]}]}"#,
    );
    let exited = builder
        .secret("MY_KEY", &fake_secret("my"))
        .env(
            "PAUDE_PROXY_CREDENTIALS_CONFIG",
            creds.display().to_string(),
        )
        .env(
            "PAUDE_PROXY_ALLOWED_CLIENTS",
            "127.0.0.1,10.0.0.0/8,localhost",
        )
        .env(
            "ALLOWED_DOMAINS",
            r".openai.com,api.anthropic.com,~^api[0-9]+\.ok\.test$",
        )
        .env("ALLOWED_OTEL_PORTS", "4317,4318")
        .env("ALLOWED_ENDPOINTS", "ok.test:8443")
        .arg("--check-config")
        .run_to_exit();
    assert_eq!(exited.code, Some(0), "{exited:?}");
}

#[test]
fn help_documents_every_option() {
    let exited = ProxyBuilder::new().arg("--help").run_to_exit();
    assert_eq!(exited.code, Some(0), "{exited:?}");
    for name in [
        "PAUDE_PROXY_LISTEN",
        "PAUDE_PROXY_CA_DIR",
        "PAUDE_PROXY_VERBOSE",
        "PAUDE_PROXY_ALLOWED_CLIENTS",
        "ALLOWED_DOMAINS",
        "ALLOWED_OTEL_PORTS",
        "ALLOWED_ENDPOINTS",
        "BLOCKED_LOG_PATH",
        "PAUDE_PROXY_CREDENTIALS_CONFIG",
        "PAUDE_PROXY_UPSTREAM_CA",
        "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS",
        "PAUDE_PROXY_HOSTS_FILE",
        "--check-config",
    ] {
        assert!(
            exited.stdout.contains(name),
            "--help does not mention {name}:\n{}",
            exited.stdout
        );
    }
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_is_created_with_safe_modes_and_reused_byte_for_byte() {
    let (ca, upstream, _) = tls_lab().await;
    let parent = tempfile::tempdir().expect("tempdir");
    // Missing parents too: the proxy creates the directory.
    let ca_dir = parent.path().join("nested").join("ca");

    let first = ProxyBuilder::new().ca_dir(&ca_dir).spawn();
    let (crt, key) = (ca_dir.join("ca.crt"), ca_dir.join("ca.key"));
    assert_eq!(mode(&crt), 0o644, "ca.crt mode");
    assert_eq!(mode(&key), 0o600, "ca.key mode");
    let crt_bytes = std::fs::read(&crt).expect("ca.crt");
    let key_bytes = std::fs::read(&key).expect("ca.key");
    drop(first);

    let second = ProxyBuilder::new()
        .ca_dir(&ca_dir)
        .trust(&ca)
        .allow_port(upstream.port())
        .spawn();
    assert_eq!(
        std::fs::read(&crt).expect("ca.crt"),
        crt_bytes,
        "ca.crt changed on restart"
    );
    assert_eq!(
        std::fs::read(&key).expect("ca.key"),
        key_bytes,
        "ca.key changed on restart"
    );
    assert_eq!(mode(&key), 0o600, "ca.key mode after restart");

    // The restarted proxy signs with the persisted CA: a client trusting the old ca.crt works.
    let res = Curl::new(&second, &https_url("ok.test", upstream.port(), "/echo"))
        .run()
        .await;
    assert_eq!(res.http_code, 200, "{res:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_leaf_has_its_own_key_san_eku_and_a_backdated_random_serial() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let ca_der =
        CertificateDer::from_pem_slice(proxy.ca_cert_pem().as_bytes()).expect("ca.crt PEM");
    let (_, ca) = parse_x509_certificate(&ca_der).expect("parse proxy CA");
    assert_eq!(
        ca.public_key().algorithm.algorithm,
        OID_KEY_TYPE_EC_PUBLIC_KEY,
        "CA key type"
    );
    let curve = ca
        .public_key()
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    assert_eq!(curve, Some(OID_EC_P256), "CA curve");
    assert!(ca.is_ca(), "proxy CA must be a CA");

    let a = TunnelClient::open(&proxy, "api.openai.com", upstream.port()).await;
    let b = TunnelClient::open(&proxy, "ok.test", upstream.port()).await;
    let (_, leaf) = parse_x509_certificate(&a.peer_certificates[0]).expect("parse leaf");
    let (_, other) = parse_x509_certificate(&b.peer_certificates[0]).expect("parse leaf");

    let sans: Vec<String> = leaf
        .subject_alternative_name()
        .expect("SAN extension")
        .expect("SAN present")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(sans, vec!["api.openai.com".to_owned()]);
    assert!(!leaf.is_ca(), "leaf must carry CA:false");
    let eku = leaf
        .extended_key_usage()
        .expect("EKU")
        .expect("EKU present");
    assert!(eku.value.server_auth, "leaf EKU must include serverAuth");
    assert_ne!(
        leaf.public_key().raw,
        ca.public_key().raw,
        "leaf must not use the CA key"
    );
    assert_eq!(
        leaf.issuer(),
        ca.subject(),
        "leaf must be issued by the proxy CA"
    );

    // Random serials: at least 64 bits of entropy (DER may drop one leading zero byte).
    let significant = |s: &[u8]| s.iter().skip_while(|b| **b == 0).count();
    assert!(
        significant(leaf.raw_serial()) >= 7,
        "serial too short: {:?}",
        leaf.raw_serial()
    );
    assert_ne!(leaf.raw_serial(), other.raw_serial(), "serials must differ");

    // Backdated by an hour so clients with slightly slow clocks accept it.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let not_before = leaf.validity().not_before.timestamp();
    let backdated = Duration::from_secs(50 * 60).as_secs() as i64;
    assert!(
        not_before <= now - backdated,
        "not_before {not_before} is not backdated (now {now})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_a_proxy_request_gets_400_explaining_so() {
    let proxy = ProxyBuilder::new().spawn();

    let res = raw_request(
        proxy.addr(),
        b"GET /v1/models HTTP/1.1\r\nHost: ok.test\r\n\r\n",
    )
    .await;

    assert_eq!(res.status, 400, "{res:?}");
    assert!(
        res.body_text().to_lowercase().contains("proxy"),
        "400 must explain: {res:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_and_the_proxy_keeps_serving() {
    let (_ca, upstream, builder) = tls_lab().await;
    let proxy = builder.spawn();
    let port = upstream.port();

    let malformed: Vec<Vec<u8>> = vec![
        b"CONNECT\r\n\r\n".to_vec(),
        b"CONNECT ok.test HTTP/1.1\r\nHost: ok.test\r\n\r\n".to_vec(),
        b"CONNECT ok.test:99999 HTTP/1.1\r\nHost: ok.test:99999\r\n\r\n".to_vec(),
        b"CONNECT ok.test:notaport HTTP/1.1\r\n\r\n".to_vec(),
        b"this is not http at all\r\n\r\n".to_vec(),
    ];
    for bytes in &malformed {
        let res = raw_request(proxy.addr(), bytes).await;
        assert_eq!(
            res.status,
            400,
            "{:?} -> {res:?}",
            String::from_utf8_lossy(bytes)
        );
    }

    // An oversized head is refused (4xx or closed), never tunnelled.
    let mut huge = format!("CONNECT ok.test:{port} HTTP/1.1\r\nHost: ok.test\r\n").into_bytes();
    for i in 0..4096 {
        huge.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    huge.extend_from_slice(b"\r\n");
    let res = raw_request(proxy.addr(), &huge).await;
    assert!(
        res.status == 0 || (400..500).contains(&res.status),
        "{}",
        res.head
    );

    let ok = Curl::new(&proxy, &https_url("ok.test", port, "/echo"))
        .run()
        .await;
    assert_eq!(ok.http_code, 200, "proxy stopped serving: {ok:?}");
    assert_eq!(upstream.single_request().path, "/echo");
}
