//! Tests of the embedded routing table (`src/credentials.json`): provider data, so they live
//! beside the providers rather than in the generic injection code they exercise.

use http::Method;
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::host::Host;
use crate::inject::{DEFAULT_CREDENTIALS_JSON, Route, Routes};

fn env(k: &str) -> Option<String> {
    match k {
        "OPENAI_API_KEY" => Some("sk-openai".into()),
        "ANTHROPIC_API_KEY" => Some("sk-ant".into()),
        "GH_TOKEN" => Some("ghp_x".into()),
        _ => None,
    }
}

fn h(s: &str) -> Host {
    Host::parse(s).unwrap()
}

fn find<'a>(r: &'a Routes, host: &str) -> Option<&'a Route> {
    r.select(&h(host), &Method::GET, "/", &HeaderMap::new())
}

/// Writes the route's value the way the forward path does.
fn apply(route: &Route, headers: &mut HeaderMap) {
    let v = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(route.value())
        .unwrap();
    route.write(&v, headers).unwrap();
}

fn headers(list: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in list {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

#[test]
fn default_table_routes_by_domain() {
    let r = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &env).unwrap();
    let table = [
        ("api.openai.com", Some("OPENAI_API_KEY")),
        ("evil-openai.com", None),
        ("api.anthropic.com", Some("ANTHROPIC_API_KEY")),
        ("github.com", Some("GH_TOKEN")),
        ("api.github.com", Some("GH_TOKEN")),
        ("raw.githubusercontent.com", Some("GH_TOKEN")),
        ("gist.github.com", None),
        ("api.cursor.com", None), // CURSOR_API_KEY unset: entry skipped
    ];
    for (host, want) in table {
        assert_eq!(find(&r, host).map(|r| r.env_var.as_str()), want, "{host}");
    }
}

#[test]
fn apply_replaces_every_variant_with_one_value() {
    let r = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &env).unwrap();
    let mut headers = HeaderMap::new();
    headers.append("Authorization", HeaderValue::from_static("Bearer dummy"));
    headers.append("AUTHORIZATION", HeaderValue::from_static("Bearer other"));
    headers.append("x-api-key", HeaderValue::from_static("keep"));
    apply(find(&r, "api.openai.com").unwrap(), &mut headers);
    let auth: Vec<_> = headers.get_all(AUTHORIZATION).iter().collect();
    assert_eq!(auth, vec!["Bearer sk-openai"]);
    assert!(auth[0].is_sensitive());
    assert_eq!(headers.get("x-api-key").unwrap(), "keep");

    let mut headers = HeaderMap::new();
    apply(find(&r, "api.anthropic.com").unwrap(), &mut headers);
    assert_eq!(headers.get("x-api-key").unwrap(), "sk-ant");
    assert!(headers.get(AUTHORIZATION).is_none());
}

#[test]
fn an_api_key_route_owns_both_headers_and_answers_in_the_clients_form() {
    let r = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &env).unwrap();
    let route = find(&r, "api.anthropic.com").unwrap();
    type Sent<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Sent, &str, &str)] = &[
        (
            &[("authorization", "Bearer paude-proxy-managed")],
            "authorization",
            "Bearer sk-ant",
        ),
        (
            &[("x-api-key", "paude-proxy-managed")],
            "x-api-key",
            "sk-ant",
        ),
        (
            &[
                ("x-api-key", "dummy"),
                ("Authorization", "Bearer dummy"),
                ("authorization", "Bearer d2"),
            ],
            "x-api-key",
            "sk-ant",
        ),
        (&[], "x-api-key", "sk-ant"),
    ];
    for (sent, header, value) in cases {
        let mut hd = headers(sent);
        apply(route, &mut hd);
        let owned: Vec<(String, String)> = ["x-api-key", "authorization"]
            .iter()
            .flat_map(|n| {
                hd.get_all(*n)
                    .iter()
                    .map(|v| (n.to_string(), v.to_str().unwrap().to_string()))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(
            owned,
            vec![(header.to_string(), value.to_string())],
            "{sent:?}"
        );
    }
}

#[test]
fn the_embedded_table_has_no_dead_route() {
    // Every value credential set; the OAuth and ADC files are absent (their routes skip).
    let all = Routes::from_json(DEFAULT_CREDENTIALS_JSON, &|k| {
        (k.ends_with("_KEY") || k == "GH_TOKEN" || k == "CLAUDE_CODE_OAUTH_TOKEN")
            .then(|| "sk-value-0123456789".to_string())
    })
    .unwrap();
    assert_eq!(all.dead(), vec![]);
}
