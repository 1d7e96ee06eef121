//! `scripts/paude-netns` and the `nft/` rules, exercised in a lab of network
//! namespaces (see `tests/netns_support`). Root only: without root or
//! CAP_NET_ADMIN every test prints a loud skip notice, unless
//! PAUDE_REQUIRE_NETNS=1 makes that a failure.
//!
//! The proxy itself is not involved: stand-ins on the transparent and DNS
//! ports record what arrives (with SO_ORIGINAL_DST), and tripwires in the
//! "inet" namespace record anything that escapes.

mod netns_support;

use std::fs;
use std::process::Stdio;

use netns_support::*;
use serde_json::{Value, json};

fn result(r: &Value) -> &str {
    r["result"].as_str().unwrap_or("")
}

fn assert_result(results: &[Value], i: usize, expected: &str) {
    assert_eq!(result(&results[i]), expected, "probe {i}: {:#}", results[i]);
}

/// The probe connected to the transparent stand-in, which saw ORIG as the
/// original destination.
fn assert_redirected(results: &[Value], i: usize, orig: &str) {
    assert_result(results, i, "connected");
    let reply = results[i]["reply"].as_str().unwrap_or("");
    assert_eq!(
        reply.trim(),
        format!("{TRANSPARENT_BANNER} {orig}"),
        "probe {i}: {:#}",
        results[i]
    );
}

/// Leaked traffic is answered by a tripwire; a result that merely "did not
/// connect" is not enough, the reply must not come from one.
fn assert_not_answered_by(results: &[Value], banner: &str) {
    for (i, r) in results.iter().enumerate() {
        let reply = r["reply"].as_str().unwrap_or("");
        assert!(
            !reply.contains(banner),
            "probe {i} reached a {banner}: {r:#}"
        );
    }
}

fn origs(listener: &Listener, peer: &str) -> Vec<String> {
    listener
        .events()
        .iter()
        .filter(|e| e["peer"] == peer)
        .filter_map(|e| e["orig"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn tcp_to_any_address_and_port_goes_to_the_transparent_port() {
    if !netns_ready("tcp_to_any_address_and_port_goes_to_the_transparent_port") {
        return;
    }
    let mut lab = Lab::new("tcp");
    let agent = lab.create_agent(&[]);
    let tripwires = lab.inet_tripwires();
    let services = lab.gw_services();
    let transparent = lab.transparent_standin(3129);

    let targets = [
        (INET_FAR_V4, 443),
        (INET_FAR_V4, 8080),
        (INET_FAR_V4, 22),
        (INET_V4, 443),
        (METADATA_V4, 80),
        // The proxy host's own services, on both of its addresses.
        (agent.host_addr.as_str(), 9999),
        (agent.host_addr.as_str(), 3128),
        (GW_INET_V4, 22),
    ];
    let probes: Vec<Value> = targets
        .iter()
        .map(|(h, p)| json!({"kind": "tcp", "host": h, "port": p}))
        .collect();
    let results = lab.probes(&agent.name, &json!(probes));

    for (i, (host, port)) in targets.iter().enumerate() {
        assert_redirected(&results, i, &format!("{host}:{port}"));
    }
    let mut seen = origs(&transparent, &agent.agent_addr);
    seen.sort();
    let mut expected: Vec<String> = targets.iter().map(|(h, p)| format!("{h}:{p}")).collect();
    expected.sort();
    assert_eq!(
        seen, expected,
        "the stand-in saw every connection, from the agent's own address"
    );
    tripwires.assert_silent("inet tripwires");
    services.assert_silent("proxy host services");
}

#[test]
fn dns_goes_to_the_dns_port_and_never_to_an_outside_resolver() {
    if !netns_ready("dns_goes_to_the_dns_port_and_never_to_an_outside_resolver") {
        return;
    }
    let mut lab = Lab::new("dns");
    let agent = lab.create_agent(&["--dns-port", "5300"]);
    let tripwires = lab.inet_tripwires();
    let dns = lab.dns_standin(5300);

    let resolv = must(&mut lab.script(&["exec", &agent.name, "--", "cat", "/etc/resolv.conf"]));
    assert!(
        resolv
            .lines()
            .any(|l| l.trim() == format!("nameserver {}", agent.host_addr)),
        "resolv.conf inside the agent must name the host side: {resolv}"
    );

    let results = lab.probes(
        &agent.name,
        &json!([
            {"kind": "udp", "host": agent.host_addr, "port": 53, "send": "QUERY-RESOLV"},
            {"kind": "udp", "host": INET_V4, "port": 53, "send": "QUERY-DIRECT"},
            {"kind": "udp", "host": METADATA_V4, "port": 53, "send": "QUERY-METADATA"},
            {"kind": "tcp", "host": INET_V4, "port": 53, "send": "QUERY-TCP"},
        ]),
    );
    for i in 0..3 {
        assert_result(&results, i, "reply");
        assert_eq!(
            results[i]["reply"].as_str().map(str::trim),
            Some(DNS_BANNER),
            "{:#}",
            results[i]
        );
    }
    assert_result(&results, 3, "connected");
    assert_eq!(
        results[3]["reply"].as_str().map(str::trim),
        Some(format!("{DNS_BANNER} {INET_V4}:53").as_str())
    );

    let queries: Vec<String> = dns
        .events()
        .iter()
        .filter(|e| e["peer"] == agent.agent_addr.as_str())
        .filter_map(|e| e["data"].as_str().map(str::to_string))
        .collect();
    for q in [
        "QUERY-RESOLV",
        "QUERY-DIRECT",
        "QUERY-METADATA",
        "QUERY-TCP",
    ] {
        assert!(
            queries.iter().any(|d| d.contains(q)),
            "{q} missing at the DNS stand-in: {queries:?}"
        );
    }
    tripwires.assert_silent("inet resolver tripwires");
}

#[test]
fn udp_icmp_and_other_protocols_are_rejected_and_never_arrive() {
    if !netns_ready("udp_icmp_and_other_protocols_are_rejected_and_never_arrive") {
        return;
    }
    let mut lab = Lab::new("rej");
    let agent = lab.create_agent(&[]);
    let tripwires = lab.inet_tripwires();
    let services = lab.gw_services();
    let results = lab.probes(
        &agent.name,
        &json!([
            {"kind": "udp", "host": INET_FAR_V4, "port": 443},
            {"kind": "udp", "host": METADATA_V4, "port": 123},
            {"kind": "udp", "host": agent.host_addr, "port": 9999},
            {"kind": "udp", "host": GW_INET_V4, "port": 9999},
            {"kind": "icmp", "host": INET_FAR_V4},
            {"kind": "icmp", "host": METADATA_V4},
            {"kind": "icmp", "host": agent.host_addr},
            {"kind": "raw", "host": INET_FAR_V4, "proto": 253},
            {"kind": "raw", "host": METADATA_V4, "proto": 253},
        ]),
    );
    // Rejected, not dropped: QUIC (UDP 443) must fail at once so clients fall
    // back to TCP, which is redirected.
    for i in 0..4 {
        assert_result(&results, i, "refused");
    }
    // The kernel sends at most 6 ICMP errors to one peer in a burst
    // (icmp_ratelimit), so only the first six rejections can be observed as
    // errors; the seventh must merely not be answered.
    for i in 4..6 {
        assert_result(&results, i, "icmp-error");
        assert_eq!(
            results[i]["type"], 3,
            "destination unreachable: {:#}",
            results[i]
        );
    }
    assert_ne!(
        result(&results[6]),
        "echo-reply",
        "the proxy host must not answer pings: {:#}",
        results[6]
    );
    assert_not_answered_by(&results, TRIPWIRE_BANNER);
    assert_not_answered_by(&results, "GW-SERVICE");
    tripwires.assert_silent("inet tripwires (UDP/443, metadata, ICMP, raw IP)");
    services.assert_silent("proxy host services");
}

#[test]
fn ipv6_never_leaves_even_when_the_agent_turns_it_back_on() {
    if !netns_ready("ipv6_never_leaves_even_when_the_agent_turns_it_back_on") {
        return;
    }
    let mut lab = Lab::new("six");
    let agent = lab.create_agent(&[]);
    let tripwires = lab.inet_tripwires();
    let services = lab.gw_services();
    let transparent = lab.transparent_standin(3129);
    let dns = lab.dns_standin(3153);

    // Chosen mode: no IPv6 at all for the agent.
    let inside = must(&mut lab.script(&[
        "exec",
        &agent.name,
        "--",
        "cat",
        "/proc/sys/net/ipv6/conf/eth0/disable_ipv6",
    ]));
    assert_eq!(inside.trim(), "1");
    let host_side = ns_sh(
        &lab.gw,
        &format!("cat /proc/sys/net/ipv6/conf/{}/disable_ipv6", agent.veth),
    );
    assert_eq!(host_side.trim(), "1");

    let v6_probes = json!([
        {"kind": "tcp", "host": INET_V6, "port": 443},
        {"kind": "udp", "host": INET_V6, "port": 443},
        {"kind": "udp", "host": INET_V6, "port": 53},
        {"kind": "icmp", "host": INET_V6},
        {"kind": "tcp", "host": "fd00:a::1", "port": 3129},
        {"kind": "udp", "host": "fd00:a::1", "port": 3153},
        {"kind": "tcp", "host": GW_INET_V6, "port": 22},
    ]);
    let results = lab.probes(&agent.name, &v6_probes);
    for (i, r) in results.iter().enumerate() {
        assert!(
            !matches!(result(r), "connected" | "reply" | "echo-reply"),
            "probe {i} got through with IPv6 off: {r:#}"
        );
    }

    // A hostile agent (root in its namespace) re-enables IPv6, and the host
    // side is misconfigured too: only the nft table is left to stop it. Static
    // neighbours make sure packets really reach gw.
    let mac = |ns: &str, dev: &str| {
        let out = must(&mut cmd(
            "ip",
            &["-n", ns, "-o", "link", "show", "dev", dev],
        ));
        out.split("link/ether ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .expect("mac")
            .to_string()
    };
    let gw_mac = mac(&lab.gw, &agent.veth);
    let agent_mac = mac(&agent.name, "eth0");
    ns_sh(
        &agent.name,
        &format!(
            "echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 && \
             ip -6 addr add fd00:a::2/64 dev eth0 nodad && \
             ip -6 neigh replace fd00:a::1 lladdr {gw_mac} dev eth0 nud permanent && \
             ip -6 route add default via fd00:a::1"
        ),
    );
    ns_sh(
        &lab.gw,
        &format!(
            "echo 0 > /proc/sys/net/ipv6/conf/{v}/disable_ipv6 && \
             ip -6 addr add fd00:a::1/64 dev {v} nodad && \
             ip -6 neigh replace fd00:a::2 lladdr {agent_mac} dev {v} nud permanent",
            v = agent.veth
        ),
    );
    let results = lab.probes(&agent.name, &v6_probes);
    for (i, r) in results.iter().enumerate() {
        assert!(
            !matches!(result(r), "connected" | "reply" | "echo-reply"),
            "probe {i} got through after re-enabling IPv6: {r:#}"
        );
    }
    tripwires.assert_silent("inet IPv6 tripwires");
    services.assert_silent("proxy host services over IPv6");
    transparent.assert_silent("transparent port over IPv6");
    dns.assert_silent("DNS port over IPv6");
}

/// Proves the lab can detect a leak: without the agent's nft table the same
/// probes as above do reach the tripwires. Otherwise the silent-tripwire
/// assertions elsewhere could pass for the wrong reason.
#[test]
fn control_without_the_nft_table_the_lab_leaks() {
    if !netns_ready("control_without_the_nft_table_the_lab_leaks") {
        return;
    }
    let mut lab = Lab::new("ctl");
    let agent = lab.create_agent(&[]);
    let tripwires = lab.inet_tripwires();
    must(&mut cmd(
        "ip",
        &[
            "netns",
            "exec",
            &lab.gw,
            "nft",
            "delete",
            "table",
            "inet",
            &agent.table(),
        ],
    ));
    ns_sh(
        &agent.name,
        "echo 0 > /proc/sys/net/ipv6/conf/eth0/disable_ipv6 && ip -6 addr add fd00:a::2/64 dev eth0 nodad",
    );
    ns_sh(
        &lab.gw,
        &format!(
            "echo 0 > /proc/sys/net/ipv6/conf/{v}/disable_ipv6 && ip -6 addr add fd00:a::1/64 dev {v} nodad",
            v = agent.veth
        ),
    );
    ns_sh(&agent.name, "ip -6 route add default via fd00:a::1");

    // Leaks must be seen, but a single lost first datagram (neighbour resolution on a
    // loaded 2-core machine) must not fail the control: up to three rounds.
    let wanted = ["reply", "connected", "echo-reply", "reply"];
    let mut results = Vec::new();
    for _round in 0..3 {
        results = lab.probes(
            &agent.name,
            &json!([
                {"kind": "udp", "host": INET_FAR_V4, "port": 443},
                {"kind": "tcp", "host": INET_FAR_V4, "port": 8080},
                {"kind": "icmp", "host": METADATA_V4},
                {"kind": "udp", "host": INET_V6, "port": 443},
            ]),
        );
        if wanted
            .iter()
            .enumerate()
            .all(|(i, w)| result(&results[i]) == *w)
        {
            break;
        }
    }
    for (i, w) in wanted.iter().enumerate() {
        assert_result(&results, i, w);
    }
    let events = tripwires.events();
    for (proto, peer) in [
        ("udp", agent.agent_addr.as_str()),
        ("tcp", agent.agent_addr.as_str()),
        ("icmp", agent.agent_addr.as_str()),
        ("udp", "fd00:a::2"),
    ] {
        assert!(
            events
                .iter()
                .any(|e| e["proto"] == proto && e["peer"] == peer),
            "control: {proto} from {peer} should have reached a tripwire: {events:#?}"
        );
    }
}

#[test]
fn two_agents_coexist_and_cannot_reach_each_other() {
    if !netns_ready("two_agents_coexist_and_cannot_reach_each_other") {
        return;
    }
    let mut lab = Lab::new("two");
    let a = lab.create_agent(&[]);
    let b = lab.create_agent(&[]);
    assert_ne!(a.subnet, b.subnet, "each agent gets its own /30");
    let transparent = lab.transparent_standin(3129);
    let dns = lab.dns_standin(3153);
    let listen_args = [
        "--banner", "AGENT", "--tcp", "7000", "--udp", "7000", "--icmp",
    ];
    let in_a = lab.listen(&a.name, "agent-a", &listen_args);
    let in_b = lab.listen(&b.name, "agent-b", &listen_args);

    for (from, to) in [(&a, &b), (&b, &a)] {
        let results = lab.probes(
            &from.name,
            &json!([
                {"kind": "tcp", "host": to.agent_addr, "port": 7000},
                {"kind": "udp", "host": to.agent_addr, "port": 7000},
                {"kind": "icmp", "host": to.agent_addr},
                {"kind": "udp", "host": from.host_addr, "port": 53},
                // The other agent's gateway address is a proxy-host address too.
                {"kind": "udp", "host": to.host_addr, "port": 9999},
            ]),
        );
        assert_redirected(&results, 0, &format!("{}:7000", to.agent_addr));
        assert_result(&results, 1, "refused");
        assert_result(&results, 2, "icmp-error");
        assert_result(&results, 3, "reply");
        assert_result(&results, 4, "refused");
        assert_not_answered_by(&results, "AGENT");
    }
    in_a.assert_silent("agent A's listener");
    in_b.assert_silent("agent B's listener");
    assert_eq!(
        origs(&transparent, &a.agent_addr),
        vec![format!("{}:7000", b.agent_addr)]
    );
    assert_eq!(
        origs(&transparent, &b.agent_addr),
        vec![format!("{}:7000", a.agent_addr)]
    );
    assert_eq!(
        dns.events().len(),
        2,
        "both agents reached the DNS port: {:#?}",
        dns.events()
    );

    // destroy removes exactly one agent; the other keeps its rules and works.
    must(&mut lab.script(&["destroy", &a.name]));
    lab.assert_agent_gone(&a);
    lab.assert_agent_present(&b);
    let results = lab.probes(
        &b.name,
        &json!([{"kind": "udp", "host": b.host_addr, "port": 53}]),
    );
    assert_result(&results, 0, "reply");
}

#[test]
fn destroy_removes_everything_and_is_idempotent() {
    if !netns_ready("destroy_removes_everything_and_is_idempotent") {
        return;
    }
    let mut lab = Lab::new("des");
    let agent = lab.create_agent(&[]);
    lab.assert_agent_present(&agent);

    let ca = lab.ca.to_string_lossy().into_owned();
    let again = run(&mut lab.script(&["create", &agent.name, "--ca", &ca]));
    assert!(
        !again.status.success(),
        "creating an existing agent must fail"
    );
    assert!(
        text(&again).1.contains("already exists"),
        "{}",
        text(&again).1
    );
    lab.assert_agent_present(&agent);

    let out = run(&mut lab.script(&["destroy", &agent.name]));
    assert!(out.status.success(), "{}", text(&out).1);
    lab.assert_agent_gone(&agent);

    let out = run(&mut lab.script(&["destroy", &agent.name]));
    assert!(
        out.status.success(),
        "destroy of an absent agent is not an error"
    );
    assert!(
        text(&out).1.contains("does not exist"),
        "clear message expected: {}",
        text(&out).1
    );
}

/// Starts `run -- sh -c ...` that reports its namespace, then signals it.
fn run_is_cleaned_up_after(signal: &str, expected_code: i32) {
    let mut lab = Lab::new(&signal.to_lowercase()[..3]);
    let marker = lab.dir.path().join("netns-name");
    let ca = lab.ca.to_string_lossy().into_owned();
    let script = format!(
        "echo $$ > {m}.pid; ip netns identify > {m}; exec sleep 60",
        m = marker.display()
    );
    let mut child = lab
        .script(&["run", "--ca", &ca, "--", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    let name = wait_for_file(&marker, READY_TIMEOUT).trim().to_string();
    lab.register_agent(&name);
    let agent = read_agent_state(&name);
    lab.assert_agent_present(&agent);
    let cmd_pid = fs::read_to_string(format!("{}.pid", marker.display())).expect("pid file");

    // While the run is active, another agent can be created beside it: run
    // must not keep the allocation lock (`timeout` turns a hang into a failure).
    let other = lab.new_agent_name();
    let out = run(cmd(
        "timeout",
        &["20", "nsenter", &format!("--net=/run/netns/{}", lab.gw)],
    )
    .arg(script_path())
    .args(["create", &other, "--ca", &ca]));
    assert!(
        out.status.success(),
        "create beside a running `run`: {}",
        text(&out).1
    );
    assert_ne!(read_agent_state(&other).subnet, agent.subnet);

    send_signal(child.id(), signal);
    let status = wait_child(&mut child, EXIT_TIMEOUT);
    assert_eq!(
        status.code(),
        Some(expected_code),
        "run exits with 128+signal"
    );
    lab.assert_agent_gone(&agent);
    assert!(
        !std::path::Path::new(&format!("/proc/{}", cmd_pid.trim())).exists()
            || fs::read_to_string(format!("/proc/{}/stat", cmd_pid.trim()))
                .is_ok_and(|s| s.contains(") Z ")),
        "the agent command must not outlive run"
    );
}

#[test]
fn run_killed_with_sigterm_cleans_up() {
    if !netns_ready("run_killed_with_sigterm_cleans_up") {
        return;
    }
    run_is_cleaned_up_after("TERM", 143);
}

#[test]
fn run_killed_with_sigint_cleans_up() {
    if !netns_ready("run_killed_with_sigint_cleans_up") {
        return;
    }
    run_is_cleaned_up_after("INT", 130);
}

/// `ip netns exec gw paude-netns run` (a throwaway mount namespace) works,
/// gives the command the agent environment and returns its exit status.
#[test]
fn run_under_ip_netns_exec_returns_the_status_and_cleans_up() {
    if !netns_ready("run_under_ip_netns_exec_returns_the_status_and_cleans_up") {
        return;
    }
    let mut lab = Lab::new("rst");
    let marker = lab.dir.path().join("out");
    let ca = lab.ca.to_string_lossy().into_owned();
    let script_path = script_path();
    let script = format!(
        "ip netns identify > {m}.name; cat /etc/resolv.conf > {m}.resolv; echo \"$OPENAI_API_KEY|${{HTTPS_PROXY-unset}}\" > {m}.env; exit 7",
        m = marker.display()
    );
    let out = run(cmd("ip", &["netns", "exec", &lab.gw])
        .arg(&script_path)
        .args(["run", "--ca", &ca, "--", "sh", "-c", &script])
        .env("PAUDE_PROXY_BIN", proxy_bin())
        .env("OPENAI_API_KEY", "sk-real-secret")
        .env("HTTPS_PROXY", "http://127.0.0.1:3128"));
    assert_eq!(
        out.status.code(),
        Some(7),
        "run returns the command's status: {}",
        text(&out).1
    );
    let name = fs::read_to_string(format!("{}.name", marker.display()))
        .expect("name")
        .trim()
        .to_string();
    lab.register_agent(&name);
    assert!(
        fs::read_to_string(format!("{}.resolv", marker.display()))
            .expect("resolv")
            .contains("nameserver 10.200.")
    );
    assert_eq!(
        fs::read_to_string(format!("{}.env", marker.display()))
            .expect("env")
            .trim(),
        "paude-proxy-managed|unset"
    );
    assert!(
        !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
        "namespace left behind"
    );
    assert!(
        !std::path::Path::new(&format!("/etc/netns/{name}")).exists(),
        "/etc/netns entry left behind"
    );
    let tables = lab.nft_tables();
    assert!(
        !tables.contains(&format!("paude-{name}")),
        "nft table left: {tables}"
    );
    let veths = must(&mut cmd(
        "ip",
        &["-n", &lab.gw, "-o", "link", "show", "type", "veth"],
    ));
    assert!(
        veths.lines().all(|l| l.contains(" up0@")),
        "veth left in gw: {veths}"
    );
}

#[test]
fn exec_gives_ca_trust_and_only_dummy_credentials() {
    if !netns_ready("exec_gives_ca_trust_and_only_dummy_credentials") {
        return;
    }
    let mut lab = Lab::new("env");
    let agent = lab.create_agent(&[]);
    let config = lab.dir.path().join("credentials.json");
    fs::write(
        &config,
        r#"{"credentials":[
            {"env_var":"MY_CUSTOM_TOKEN","injector":"bearer","domains":["api.example.test"]},
            {"env_var":"GOOGLE_APPLICATION_CREDENTIALS","injector":"gcloud","domains":[".googleapis.com"]}
        ]}"#,
    )
    .expect("write config");
    let env_file = lab.dir.path().join("agent.env");
    fs::write(
        &env_file,
        "# comment\n\nFROM_FILE=file value\nexport EXPORTED=1\n",
    )
    .expect("env file");
    let env_file_s = env_file.to_string_lossy().into_owned();
    let out = run(lab
        .script(&[
            "exec",
            &agent.name,
            "--env",
            "GIVEN=given value",
            "--env",
            "PASSED",
            "--env-file",
            &env_file_s,
            "--",
            "env",
        ])
        .env("PAUDE_PROXY_CREDENTIALS_CONFIG", &config)
        .env("PASSED", "from the caller")
        .env("NOT_PASSED", "caller-only-value")
        .env("LC_TIME", "C.UTF-8")
        .env("OPENAI_API_KEY", "sk-real-secret")
        .env("MY_CUSTOM_TOKEN", "real-custom-secret")
        .env("GCP_ADC_JSON", "{\"real\":true}")
        .env("GOOGLE_APPLICATION_CREDENTIALS", "/secrets/adc.json")
        .env("HTTPS_PROXY", "http://127.0.0.1:3128")
        .env("http_proxy", "http://127.0.0.1:3128")
        .env("ALL_PROXY", "socks5://127.0.0.1:1080"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let env: Vec<(&str, &str)> = stdout.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);

    assert!(
        !stdout.contains("real-custom-secret") && !stdout.contains("sk-real-secret"),
        "a real credential leaked"
    );
    // The custom table names one value variable: it gets the dummy. The
    // embedded table's variables are not credentials of this proxy, and the
    // agent starts from an empty environment, so they are simply absent.
    assert_eq!(get("MY_CUSTOM_TOKEN"), Some("paude-proxy-managed"));
    for var in [
        "HTTPS_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "GCP_ADC_JSON",
        "OPENAI_API_KEY",
        "NOT_PASSED",
    ] {
        assert_eq!(get(var), None, "{var} must not reach the agent");
    }
    assert_eq!(get("GIVEN"), Some("given value"));
    assert_eq!(get("PASSED"), Some("from the caller"));
    assert_eq!(get("FROM_FILE"), Some("file value"));
    assert_eq!(get("EXPORTED"), Some("1"));
    assert_eq!(get("LC_TIME"), Some("C.UTF-8"));
    assert!(get("PATH").is_some(), "PATH is on the allowlist");
    // With Google credentials configured the agent holds the stub ADC, the very JSON
    // `paude-proxy stub-adc` prints, and nothing of the real one.
    let stub_path = format!("/etc/netns/{}/paude-proxy-adc.json", agent.name);
    assert_eq!(
        get("GOOGLE_APPLICATION_CREDENTIALS"),
        Some(stub_path.as_str())
    );
    let stub: Value = serde_json::from_str(&fs::read_to_string(&stub_path).expect("stub ADC"))
        .expect("stub ADC is JSON");
    let printed = std::process::Command::new(env!("CARGO_BIN_EXE_paude-proxy"))
        .arg("stub-adc")
        .output()
        .expect("paude-proxy stub-adc");
    let printed: Value = serde_json::from_slice(&printed.stdout).expect("stub-adc prints JSON");
    assert_eq!(
        stub, printed,
        "the script's stub matches `paude-proxy stub-adc`"
    );
    assert!(!stub.to_string().contains("real"), "{stub}");
    let bundle = format!("/etc/netns/{}/ssl/certs/ca-certificates.crt", agent.name);
    for var in [
        "SSL_CERT_FILE",
        "NODE_EXTRA_CA_CERTS",
        "npm_config_cafile",
        "CODEX_CA_CERTIFICATE",
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "CARGO_HTTP_CAINFO",
        "PIP_CERT",
        "DENO_CERT",
        "AWS_CA_BUNDLE",
    ] {
        assert_eq!(get(var), Some(bundle.as_str()), "{var}");
    }
    let bundle_text = fs::read_to_string(&bundle).expect("bundle");
    let ca_text = fs::read_to_string(&lab.ca).expect("ca");
    assert!(
        bundle_text.contains(ca_text.trim()),
        "bundle holds the proxy CA"
    );
    if let Ok(roots) = fs::read_to_string("/etc/ssl/certs/ca-certificates.crt") {
        assert!(
            bundle_text.contains(roots.trim()),
            "bundle holds the system roots too"
        );
    }

    // The trust list is the binary's (`ca env`), not a second list in shell.
    let listed = std::process::Command::new(proxy_bin())
        .args([
            "ca",
            "env",
            "--no-proxy",
            "--format",
            "plain",
            "--bundle",
            &bundle,
        ])
        .output()
        .expect("paude-proxy ca env");
    for line in String::from_utf8_lossy(&listed.stdout).lines() {
        let (name, value) = line.split_once('=').expect("NAME=VALUE");
        assert_eq!(get(name), Some(value), "{name} from `ca env`");
    }

    // Credential and proxy variables cannot be smuggled in through --env.
    for given in [
        "MY_CUSTOM_TOKEN=x",
        "GOOGLE_APPLICATION_CREDENTIALS=/x",
        "https_proxy=http://x",
    ] {
        let out = run(lab
            .script(&["exec", &agent.name, "--env", given, "--", "true"])
            .env("PAUDE_PROXY_CREDENTIALS_CONFIG", &config));
        assert_eq!(out.status.code(), Some(64), "{given}: {}", text(&out).1);
    }

    // A config that cannot be parsed must not silently fall back: a real value
    // of a credential it names would reach the agent.
    fs::write(&config, "{ not json").expect("write bad config");
    let out = run(lab
        .script(&["exec", &agent.name, "--", "true"])
        .env("PAUDE_PROXY_CREDENTIALS_CONFIG", &config));
    assert!(!out.status.success());
    assert!(
        text(&out).1.contains("PAUDE_PROXY_CREDENTIALS_CONFIG"),
        "{}",
        text(&out).1
    );
}

/// The /etc/ssl overlay makes the proxy CA part of *system* trust inside the
/// agent: curl verifies a certificate signed by it with no flag and no env var,
/// while the same curl outside the agent does not.
#[test]
fn system_trust_inside_the_agent_includes_the_proxy_ca() {
    if !netns_ready("system_trust_inside_the_agent_includes_the_proxy_ca") {
        return;
    }
    if !tool_ready(
        "system_trust_inside_the_agent_includes_the_proxy_ca",
        "curl",
    ) {
        return;
    }
    let mut lab = Lab::new("tls");
    let host = "api.example.test";
    let pki = test_pki(host);
    fs::write(&lab.ca, &pki.ca_pem).expect("write CA");
    let cert = lab.dir.path().join("leaf.crt");
    let key = lab.dir.path().join("leaf.key");
    fs::write(&cert, &pki.leaf_pem).expect("leaf");
    fs::write(&key, &pki.leaf_key_pem).expect("key");
    let agent = lab.create_agent(&[]);
    let gw = lab.gw.clone();
    let (cert_s, key_s) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let tls = lab.listen(
        &gw,
        "gw-tls",
        &[
            "--banner",
            "STANDIN-TLS",
            "--orig-dst",
            "--tcp",
            "3129",
            "--tls",
            &cert_s,
            &key_s,
        ],
    );

    let resolve = format!("{host}:443:{INET_FAR_V4}");
    let url = format!("https://{host}/");
    // Plain `ip netns exec`: no env vars, only the /etc/ssl overlay.
    let out = run(cmd(
        "ip",
        &[
            "netns",
            "exec",
            &agent.name,
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            &resolve,
            &url,
        ],
    )
    .env_remove("CURL_CA_BUNDLE")
    .env_remove("SSL_CERT_FILE"));
    let (body, err) = text(&out);
    assert!(out.status.success(), "curl inside the agent: {err}");
    assert_eq!(body.trim(), format!("STANDIN-TLS {INET_FAR_V4}:443"));

    // Through exec (env vars) as well.
    let body = must(&mut lab.script(&[
        "exec",
        &agent.name,
        "--",
        "curl",
        "-sS",
        "--max-time",
        "5",
        "--resolve",
        &resolve,
        &url,
    ]));
    assert_eq!(body.trim(), format!("STANDIN-TLS {INET_FAR_V4}:443"));

    // Negative control: the host's own trust store does not know this CA, so
    // the success above is the overlay's doing.
    let resolve_gw = format!("{host}:3129:{}", agent.host_addr);
    let out = run(cmd(
        "ip",
        &[
            "netns",
            "exec",
            &lab.gw,
            "curl",
            "-sS",
            "--max-time",
            "5",
            "--resolve",
            &resolve_gw,
            &format!("https://{host}:3129/"),
        ],
    )
    .env_remove("CURL_CA_BUNDLE")
    .env_remove("SSL_CERT_FILE"));
    assert!(!out.status.success(), "the host must not trust the test CA");
    assert!(tls.events().len() >= 2);
}

#[test]
fn cli_help_and_errors_are_clear() {
    if !netns_ready("cli_help_and_errors_are_clear") {
        return;
    }
    let script = script_path();
    let script_s = script.to_string_lossy().into_owned();

    for sub in [
        &[][..],
        &["create"][..],
        &["exec"][..],
        &["run"][..],
        &["destroy"][..],
    ] {
        let mut args: Vec<&str> = sub.to_vec();
        args.push("--help");
        // --help works without root.
        let out = run(cmd(
            "setpriv",
            &[
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                &script_s,
            ],
        )
        .args(&args));
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(
            stdout.starts_with("Usage: paude-netns"),
            "{args:?}: {stdout}"
        );
    }

    let not_root = run(&mut cmd(
        "setpriv",
        &[
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            &script_s,
            "destroy",
            "x",
        ],
    ));
    assert!(!not_root.status.success());
    assert!(
        text(&not_root).1.contains("must run as root"),
        "{}",
        text(&not_root).1
    );

    // A PATH with bash and the few coreutils the script needs before its
    // checks, but without nft (then also without ip).
    let bin = tempfile::tempdir().expect("tempdir");
    let which = |tool: &str| {
        must(&mut cmd("sh", &["-c", &format!("command -v {tool}")]))
            .trim()
            .to_string()
    };
    for tool in ["bash", "readlink", "dirname", "ip"] {
        std::os::unix::fs::symlink(which(tool), bin.path().join(tool)).expect("symlink");
    }
    let no_nft = run(cmd(&script_s, &["destroy", "x"]).env("PATH", bin.path()));
    assert!(!no_nft.status.success());
    assert!(
        text(&no_nft).1.contains("install nftables"),
        "{}",
        text(&no_nft).1
    );
    fs::remove_file(bin.path().join("ip")).expect("rm ip");
    let no_ip = run(cmd(&script_s, &["destroy", "x"]).env("PATH", bin.path()));
    assert!(!no_ip.status.success());
    assert!(
        text(&no_ip).1.contains("install iproute2"),
        "{}",
        text(&no_ip).1
    );

    let usage_errors: [&[&str]; 6] = [
        &["frobnicate"],
        &["create", "bad/name"],
        &["create", "ok", "--transparent-port", "70000"],
        &["create", "ok", "--subnet", "10.1.2.3/30"],
        &["exec", "ok"],
        &["run", "--dns-port", "53"],
    ];
    for args in usage_errors {
        let out = run(&mut cmd(&script_s, args));
        assert_eq!(
            out.status.code(),
            Some(64),
            "{args:?} is a usage error: {}",
            text(&out).1
        );
    }

    let missing_ca =
        run(cmd(&script_s, &["create", "nocafile"])
            .env("PAUDE_PROXY_CA_DIR", "/nonexistent-paude-ca"));
    assert!(!missing_ca.status.success());
    let err = text(&missing_ca).1;
    assert!(
        err.contains("/nonexistent-paude-ca/ca.crt") && err.contains("--ca"),
        "{err}"
    );
    assert!(
        !std::path::Path::new("/run/netns/nocafile").exists(),
        "nothing is created on a bad CA"
    );
}

/// The proxy runs elsewhere with a custom table the caller's shell does not
/// know (PAUDE_PROXY_CREDENTIALS_CONFIG not exported), while the caller has
/// the custom variable's real value exported: the agent never sees it,
/// because it starts from an empty environment.
#[test]
fn a_custom_credential_the_script_does_not_know_never_reaches_the_agent() {
    if !netns_ready("a_custom_credential_the_script_does_not_know_never_reaches_the_agent") {
        return;
    }
    let mut lab = Lab::new("cus");
    let agent = lab.create_agent(&[]);
    const REAL: &str = "sk-custom-REAL-4f7a19c2e8";
    let out = run(lab
        .script(&[
            "exec",
            &agent.name,
            "--",
            "sh",
            "-c",
            "env; cat /proc/self/environ",
        ])
        .env_remove("PAUDE_PROXY_CREDENTIALS_CONFIG")
        .env("MY_CUSTOM_TOKEN", REAL)
        .env("OPENAI_API_KEY", REAL));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("SSL_CERT_FILE="),
        "the command ran: {stdout}"
    );
    assert!(
        !stdout.contains(REAL),
        "a real value reached the agent:\n{stdout}"
    );
    assert!(!stdout.contains("MY_CUSTOM_TOKEN"), "{stdout}");
    // The embedded table's variable gets its dummy.
    assert!(
        stdout.contains("OPENAI_API_KEY=paude-proxy-managed"),
        "{stdout}"
    );
    // A path variable never gets a dummy string: without Google credentials
    // in the caller's environment it is simply unset.
    assert!(
        !stdout.contains("GOOGLE_APPLICATION_CREDENTIALS"),
        "{stdout}"
    );
}

/// `create` under `ip netns exec` (a throwaway mount namespace) fails before
/// making anything; `run --name` uses the name; `exec` reports an agent whose
/// proxy namespace is gone.
#[test]
fn create_refuses_a_throwaway_mount_namespace_run_takes_a_name_and_exec_spots_a_stale_agent() {
    if !netns_ready(
        "create_refuses_a_throwaway_mount_namespace_run_takes_a_name_and_exec_spots_a_stale_agent",
    ) {
        return;
    }
    let mut lab = Lab::new("stl");
    let name = lab.new_agent_name();
    let ca = lab.ca.to_string_lossy().into_owned();
    let out = run(cmd("ip", &["netns", "exec", &lab.gw])
        .arg(script_path())
        .args(["create", &name, "--ca", &ca]));
    assert!(
        !out.status.success(),
        "create under ip netns exec must fail"
    );
    assert!(text(&out).1.contains("nsenter"), "{}", text(&out).1);
    for path in [
        format!("/run/netns/{name}"),
        format!("/etc/netns/{name}"),
        format!("/run/paude-netns/{name}"),
    ] {
        assert!(!std::path::Path::new(&path).exists(), "{path} left behind");
    }
    assert!(!lab.nft_tables().contains(&format!("paude-{name}")));

    let named = lab.new_agent_name();
    let out = must(&mut lab.script(&[
        "run", "--name", &named, "--ca", &ca, "--", "ip", "netns", "identify",
    ]));
    assert_eq!(out.trim(), named);
    assert!(!std::path::Path::new(&format!("/run/netns/{named}")).exists());

    let agent = lab.create_agent(&[]);
    must(&mut lab.script(&["exec", &agent.name, "--", "true"]));
    // The proxy's namespace goes away (its container stopped): the veth dies
    // with it, the agent namespace stays registered.
    must(&mut cmd("ip", &["netns", "del", &lab.gw]));
    // The kernel tears a namespace down asynchronously (a workqueue): under load the veth
    // outlives `ip netns del` for a moment. Wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while run(&mut cmd(
        "ip",
        &["-n", &agent.name, "link", "show", "dev", "eth0"],
    ))
    .status
    .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent's veth outlived the proxy namespace by 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = run(cmd("ip", &["netns", "exec", &lab.inet])
        .arg(script_path())
        .args(["exec", &agent.name, "--", "true"])
        .env("PAUDE_PROXY_BIN", proxy_bin()));
    assert!(!out.status.success());
    assert!(text(&out).1.contains("is stale"), "{}", text(&out).1);
}

#[test]
fn exec_installs_the_subscription_stubs_and_never_the_real_paths() {
    if !netns_ready("exec_installs_the_subscription_stubs_and_never_the_real_paths") {
        return;
    }
    let mut lab = Lab::new("sub");
    let agent = lab.create_agent(&[]);
    let home = lab.dir.path().join("home");
    fs::create_dir_all(&home).expect("home");
    let out = run(lab
        .script(&["exec", &agent.name, "--", "env"])
        .env("HOME", &home)
        .env_remove("CLAUDE_CONFIG_DIR")
        .env_remove("CODEX_HOME")
        .env("ANTHROPIC_OAUTH_CREDS_FILE", "/secrets/claude.json")
        .env("CHATGPT_AUTH_FILE", "/secrets/codex.json")
        .env("CLAUDE_CODE_OAUTH_TOKEN", "sk-ant-oat01-real-secret"));
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stdout.contains("real-secret") && !stdout.contains("/secrets/"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l == "CLAUDE_CODE_OAUTH_TOKEN=paude-proxy-managed")
    );
    for (file, kind) in [
        (".claude/.credentials.json", "claude"),
        (".codex/auth.json", "codex"),
    ] {
        let path = home.join(file);
        let installed: Value =
            serde_json::from_str(&fs::read_to_string(&path).expect("stub installed"))
                .expect("JSON");
        let printed = std::process::Command::new(env!("CARGO_BIN_EXE_paude-proxy"))
            .args(["stub", kind])
            .output()
            .expect("paude-proxy stub");
        let printed: Value = serde_json::from_slice(&printed.stdout).expect("stub prints JSON");
        assert_eq!(
            installed, printed,
            "{kind}: the installed stub is `paude-proxy stub {kind}`"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "{kind} stub is owner-only");
    }
    // A real file in the agent's home is never replaced.
    let real = home.join(".claude/.credentials.json");
    fs::write(&real, "{\"claudeAiOauth\":{\"accessToken\":\"real\"}}").expect("real");
    let out = run(lab
        .script(&["exec", &agent.name, "--", "true"])
        .env("HOME", &home)
        .env("ANTHROPIC_OAUTH_CREDS_FILE", "/secrets/claude.json"));
    let (_, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("not replaced"), "{stderr}");
    assert!(
        fs::read_to_string(&real)
            .expect("real")
            .contains("\"real\"")
    );
}
