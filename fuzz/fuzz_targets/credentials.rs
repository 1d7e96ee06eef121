//! `PAUDE_PROXY_CREDENTIALS_CONFIG` parsing (`Routes::from_json`) with a fake environment.
//! Input: JSON, then a NUL byte, then the value every credential variable holds. Properties:
//! never panics; an error never contains the credential's value; nothing reads a file (file-backed
//! entries see none of their variables).
#![no_main]

use libfuzzer_sys::fuzz_target;
use paude_proxy::fuzzing::Routes;

/// Variables whose values are paths, ADC JSON or token endpoints: never handed out, so the
/// parse stays pure.
const FILE_VARS: &[&str] = &[
    "GOOGLE_APPLICATION_CREDENTIALS",
    "GCP_ADC_JSON",
    "ANTHROPIC_OAUTH_CREDS_FILE",
    "CHATGPT_AUTH_FILE",
    "PAUDE_PROXY_CHATGPT_AUTH_STATE_FILE",
    "PAUDE_PROXY_ANTHROPIC_TOKEN_URL",
    "PAUDE_PROXY_CHATGPT_TOKEN_URL",
];
/// Injector kinds whose variable names a file.
const FILE_KINDS: &[&str] = &["gcloud", "anthropic_oauth", "chatgpt"];

fuzz_target!(|data: &[u8]| {
    let (json, secret) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"sk-fuzz-secret-value"[..]),
    };
    let json = String::from_utf8_lossy(json);
    let secret = String::from_utf8_lossy(secret).into_owned();
    // File-backed entries read their variable as a path: keep those away from the secret.
    let gcloud_vars: Vec<String> = gcloud_env_vars(&json);
    let env = |name: &str| -> Option<String> {
        if FILE_VARS.contains(&name) || gcloud_vars.iter().any(|v| v == name) {
            None
        } else {
            Some(secret.clone())
        }
    };
    match Routes::from_json(&json, &env) {
        Ok(routes) => {
            for route in routes.iter() {
                assert!(!route.matcher.domains.is_empty());
                assert!(!route.env_var.is_empty());
            }
        }
        Err(e) => {
            let message = e.to_string();
            // Only meaningful when the value is distinctive (not also part of the JSON).
            if secret.len() >= 8 && !json.contains(&secret) {
                assert!(
                    !message.contains(&secret),
                    "error echoes the secret: {message}"
                );
            }
        }
    }
});

/// The `env_var` of every entry whose injector is `gcloud`, found loosely (the real parse
/// decides what is valid).
fn gcloud_env_vars(json: &str) -> Vec<String> {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(json) else {
        return Vec::new();
    };
    let entries = value.get("credentials").and_then(|c| c.as_array());
    entries
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("injector")
                .and_then(|i| i.as_str())
                .is_some_and(|i| FILE_KINDS.contains(&i))
        })
        .filter_map(|e| {
            e.get("env_var")
                .and_then(|v| v.as_str())
                .map(str::to_string)
        })
        .collect()
}
