//! The deployment helpers of the binary, run as a user runs them: `ALLOWED_DOMAINS` presets
//! under `--check-config`, `routes --vars`, `ca env`, `ca bundle` and `healthcheck` against
//! a real admin listener on loopback.

mod support;

use support::proxy::{EXIT_CONFIG_ERROR, ProxyBuilder};

#[test]
fn check_config_shows_the_presets_it_expanded() {
    let exited = ProxyBuilder::new()
        .env("ALLOWED_DOMAINS", "@claude,@github,registry.npmjs.org")
        .arg("--check-config")
        .run_to_exit();
    assert_eq!(exited.code, Some(0), "{exited:?}");
    assert!(
        exited.stdout.contains("preset @claude (")
            && exited.stdout.contains("platform.claude.com")
            && exited.stdout.contains("downloads.claude.ai")
            && exited.stdout.contains("preset @github ("),
        "{exited:?}"
    );
}

#[test]
fn an_unknown_preset_is_a_one_line_config_error() {
    let exited = ProxyBuilder::new()
        .env("ALLOWED_DOMAINS", "@claude,@clade")
        .arg("--check-config")
        .run_to_exit();
    assert_eq!(exited.code, Some(EXIT_CONFIG_ERROR), "{exited:?}");
    let line = exited.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains(r#"invalid ALLOWED_DOMAINS="@claude,@clade": unknown preset '@clade'"#),
        "{line}"
    );
}

#[test]
fn routes_vars_reads_the_custom_table_from_the_environment() {
    let builder = ProxyBuilder::new();
    let creds = builder.write_file(
        "credentials.json",
        r#"{"credentials":[
            {"env_var":"MY_KEY","injector":"api_key","params":{"header_name":"x-k"},"domains":["a.test"]},
            {"env_var":"GOOGLE_APPLICATION_CREDENTIALS","injector":"gcloud","domains":[".googleapis.com"]}
        ]}"#,
    );
    let exited = builder
        .env(
            "PAUDE_PROXY_CREDENTIALS_CONFIG",
            creds.display().to_string(),
        )
        .arg("routes")
        .arg("--vars")
        .run_to_exit();
    assert_eq!(exited.code, Some(0), "{exited:?}");
    assert_eq!(
        exited.stdout,
        "value MY_KEY\npath GOOGLE_APPLICATION_CREDENTIALS\nunset GCP_ADC_JSON\n"
    );

    let broken = ProxyBuilder::new();
    let bad = broken.write_file("bad.json", "{ nope");
    let exited = broken
        .env("PAUDE_PROXY_CREDENTIALS_CONFIG", bad.display().to_string())
        .arg("routes")
        .arg("--vars")
        .run_to_exit();
    assert_eq!(exited.code, Some(EXIT_CONFIG_ERROR), "{exited:?}");
    assert!(exited.stdout.is_empty(), "fails closed: {exited:?}");
}

#[test]
fn ca_env_is_shell_that_sets_every_variable_and_bundle_ends_with_the_proxy_ca() {
    let builder = ProxyBuilder::new();
    let dir = builder.dir().to_path_buf();
    let bundle = dir.join("bundle.pem");
    // The CA must exist first: `ca bundle` never creates one.
    let missing = ProxyBuilder::new()
        .arg("ca")
        .arg("bundle")
        .arg(&bundle.display().to_string())
        .run_to_exit();
    assert_eq!(missing.code, Some(EXIT_CONFIG_ERROR), "{missing:?}");

    let mut proxy = builder.spawn();
    let ca_pem = proxy.ca_cert_pem();
    let exited = ProxyBuilder::new()
        .env("PAUDE_PROXY_CA_DIR", proxy.ca_dir().display().to_string())
        .arg("ca")
        .arg("bundle")
        .arg(&bundle.display().to_string())
        .run_to_exit();
    assert_eq!(exited.code, Some(0), "{exited:?}");
    let text = std::fs::read_to_string(&bundle).expect("bundle");
    assert!(text.trim_end().ends_with(ca_pem.trim_end()));
    proxy.stop();

    let exited = ProxyBuilder::new()
        .env("PAUDE_PROXY_LISTEN", ":3999")
        .arg("ca")
        .arg("env")
        .arg("--bundle")
        .arg(&bundle.display().to_string())
        .run_to_exit();
    assert_eq!(exited.code, Some(0), "{exited:?}");
    // A real shell evaluates it.
    let script = format!(
        "{}\nprintf '%s|%s|%s|%s' \"$npm_config_cafile\" \"$SSL_CERT_FILE\" \"$https_proxy\" \"$HTTPS_PROXY\"",
        exited.stdout
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env_clear()
        .output()
        .expect("sh");
    let b = bundle.display();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{b}|{b}|http://127.0.0.1:3999|http://127.0.0.1:3999")
    );
}

#[test]
fn healthcheck_asks_the_admin_listener() {
    let unset = ProxyBuilder::new().arg("healthcheck").run_to_exit();
    assert_eq!(unset.code, Some(EXIT_CONFIG_ERROR), "{unset:?}");
    assert!(
        unset.stderr.contains("PAUDE_PROXY_ADMIN_LISTEN"),
        "{unset:?}"
    );

    let proxy = ProxyBuilder::new()
        .env("PAUDE_PROXY_ADMIN_LISTEN", "127.0.0.1:0")
        .spawn();
    let line = proxy.wait_stderr_contains("listening role=admin addr=");
    let admin = line
        .lines()
        .find_map(|l| l.split("listening role=admin addr=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("admin address")
        .to_string();
    let healthy = ProxyBuilder::new()
        .env("PAUDE_PROXY_ADMIN_LISTEN", admin.clone())
        .arg("healthcheck")
        .run_to_exit();
    assert_eq!(healthy.code, Some(0), "{healthy:?}");

    // The explicit port is not the admin port: it answers, but not 200 for /healthz.
    let wrong = ProxyBuilder::new()
        .env("PAUDE_PROXY_ADMIN_LISTEN", proxy.addr().to_string())
        .arg("healthcheck")
        .run_to_exit();
    assert_eq!(wrong.code, Some(1), "{wrong:?}");
    drop(proxy);
    let gone = ProxyBuilder::new()
        .env("PAUDE_PROXY_ADMIN_LISTEN", admin)
        .arg("healthcheck")
        .run_to_exit();
    assert_eq!(gone.code, Some(1), "{gone:?}");
    assert!(gone.stderr.contains("unhealthy"), "{gone:?}");
}
