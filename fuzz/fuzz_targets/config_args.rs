//! Command line → `Config` (`Args::try_parse_from` then `Config::from_args`) with fuzzed
//! values. Input: one value per line, in the order of `OPTIONS`. Properties: never panics,
//! and a refusal is one line `invalid VAR="value": ...` naming a real variable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::{Config, parse_args};

/// Options that take a value and read no file (paths would make runs depend on the disk).
const OPTIONS: &[&str] = &[
    "--listen",
    "--allowed-domains",
    "--allowed-clients",
    "--allowed-endpoints",
    "--allowed-otel-ports",
    "--allowed-upstream-nets",
    "--transparent-listen",
    "--dns-listen",
    "--admin-listen",
    "--dns-upstream",
    "--verbose",
];

const VARS: &[&str] = &[
    "PAUDE_PROXY_LISTEN",
    "ALLOWED_DOMAINS",
    "PAUDE_PROXY_ALLOWED_CLIENTS",
    "ALLOWED_ENDPOINTS",
    "ALLOWED_OTEL_PORTS",
    "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS",
    "PAUDE_PROXY_TRANSPARENT_LISTEN",
    "PAUDE_PROXY_DNS_LISTEN",
    "PAUDE_PROXY_ADMIN_LISTEN",
    "PAUDE_PROXY_DNS_UPSTREAM",
    "PAUDE_PROXY_VERBOSE",
    "PAUDE_PROXY_CREDENTIALS_CONFIG",
];

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut argv = vec!["paude-proxy".to_string()];
    for (option, value) in OPTIONS.iter().zip(text.split('\n')) {
        // `--opt=value`, so a value starting with '-' is still a value.
        argv.push(format!("{option}={value}"));
    }
    let Ok(args) = parse_args(&argv) else {
        return;
    };
    if let Err(e) = Config::from_args(args, &|_| None) {
        let line = e.to_string();
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "not one line: {line:?}"
        );
        assert!(
            line.starts_with(&format!("invalid {}=\"", e.var)),
            "{line:?}"
        );
        assert!(VARS.contains(&e.var), "unknown variable {}", e.var);
    }
});
