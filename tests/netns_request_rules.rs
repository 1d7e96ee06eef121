//! Request rules in transparent mode (issue 12), in the namespace lab of
//! tests/netns_support: two agents made by `scripts/paude-netns` with their own allowlists
//! and credentials (each refused what the other may do, including at the sandbox DNS), and
//! a GET allowed then a POST refused on one redirected connection, h1 and h2. The policy
//! names the agents' addresses, known only once they exist, so it is loaded by a reload
//! (`POST /reload` on the admin port inside gw). Root only: without root or CAP_NET_ADMIN the
//! test prints a loud skip notice, unless PAUDE_REQUIRE_NETNS=1 makes that a failure.

mod netns_support;

use std::fs;

use netns_support::gateway::*;
use netns_support::*;
use serde_json::{Value, json};

const ADMIN: &str = "127.0.0.1:9099";

fn curl(lab: &Lab, agent: &str, args: &str) -> (String, String) {
    // Options before `--next` apply to one transfer only: repeat them for each.
    let each = "-sS --max-time 15 -w '\\nCODE=%{http_code}\\n'";
    let args = args.replace("--next", &format!("--next {each}"));
    let script = format!("curl {each} {args}");
    let out = run(&mut lab.script(&["exec", agent, "--", "sh", "-c", &script]));
    let (stdout, stderr) = text(&out);
    (stdout, stderr)
}

fn codes(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("CODE="))
        .map(str::to_string)
        .collect()
}

#[test]
fn two_agents_with_their_own_policies_and_rules_per_request() {
    let test = "two_agents_with_their_own_policies_and_rules_per_request";
    if !netns_ready(test) || !tool_ready(test, "curl") {
        return;
    }
    let mut lab = Lab::new("rul");
    let policy = lab.dir.path().join("policy.toml");
    let audit = lab.dir.path().join("audit.log");
    fs::write(&policy, "default = \"allow\"\n").expect("policy");
    let (policy_s, audit_s) = (policy.display().to_string(), audit.display().to_string());
    let gw = Gateway::start_with_env(
        &mut lab,
        &[
            ("PAUDE_PROXY_POLICY", &policy_s),
            ("PAUDE_PROXY_ADMIN_LISTEN", ADMIN),
            ("PAUDE_PROXY_AUDIT_LOG", &audit_s),
        ],
    );
    let a = lab.create_agent(&[]);
    let b = lab.create_agent(&[]);
    fs::write(
        &policy,
        format!(
            r#"
[[rule]]
id = "openai-read"
hosts = ["{OPENAI_NAME}"]
methods = ["GET"]
action = "allow"

[[rule]]
id = "openai-no-writes"
hosts = ["{OPENAI_NAME}"]
action = "deny"
reason = "read-only in this test"

[[agent]]
name = "a"
clients = ["{}"]
allowed_domains = ["{OPENAI_NAME}"]
credentials = ["OPENAI_API_KEY"]

[[agent]]
name = "b"
clients = ["{}"]
allowed_domains = ["{ANTHROPIC_NAME}", "{OPENAI_NAME}"]
credentials = ["ANTHROPIC_API_KEY"]
"#,
            a.agent_addr, b.agent_addr
        ),
    )
    .expect("policy");
    let reloaded = ns_sh(&lab.gw, &format!("curl -sS -X POST http://{ADMIN}/reload"));
    assert!(reloaded.starts_with("reloaded:"), "{reloaded}");

    // Agent a, h1 then h2: GET allowed (with a's credential), POST refused, on one
    // connection each (curl --next reuses it).
    for proto in ["--http1.1", "--http2"] {
        let (out, err) = curl(
            &lab,
            &a.name,
            &format!(
                "{proto} -H \"Authorization: Bearer $OPENAI_API_KEY\" https://{OPENAI_NAME}/get-{proto} \
                 --next {proto} -X POST -d x -H \"Authorization: Bearer $OPENAI_API_KEY\" https://{OPENAI_NAME}/post-{proto}"
            ),
        );
        assert_eq!(
            codes(&out),
            vec!["200", "403"],
            "{proto}: {out}\n{err}\n{}",
            tail(&gw.proxy_log())
        );
        assert!(
            out.contains("blocked by rule 'openai-no-writes': read-only in this test"),
            "{out}"
        );
        assert!(err.is_empty() || !err.contains("Failed"), "{err}");
        gw.expect_blocked(
            &a.agent_addr,
            &[&format!("POST https://{OPENAI_NAME}/post-{proto} BLOCKED")],
        );
    }
    // Transparent plain HTTP goes through the same rules.
    let (out, err) = curl(
        &lab,
        &a.name,
        &format!(
            "http://{OPENAI_NAME}/plain-get --next -X POST -d x http://{OPENAI_NAME}/plain-post"
        ),
    );
    assert_eq!(codes(&out), vec!["200", "403"], "{out}\n{err}");
    assert!(out.contains("openai-no-writes"), "{out}");
    let plain: Vec<String> = gw.http_at(OPENAI_V4).iter().map(request_line).collect();
    assert_eq!(plain, vec!["GET /plain-get HTTP/1.1"]);
    gw.expect_blocked(
        &a.agent_addr,
        &[&format!("POST http://{OPENAI_NAME}/plain-post BLOCKED")],
    );
    let at_openai = gw.https_at(OPENAI_V4);
    let lines: Vec<String> = at_openai.iter().map(request_line).collect();
    assert_eq!(
        lines,
        vec!["GET /get---http1.1 HTTP/1.1", "GET /get---http2 HTTP/1.1"],
        "only the GETs reached the upstream"
    );
    for req in &at_openai {
        assert_eq!(
            header(req, "authorization"),
            vec![format!("Bearer {OPENAI_SECRET}")]
        );
    }

    // a may not reach anthropic: not by DNS, not by address.
    let dns = |agent: &Agent, name: &str| -> Value {
        lab.probes(
            &agent.name,
            &json!([{"kind": "dns", "host": agent.host_addr, "name": name}]),
        )
        .remove(0)
    };
    assert_eq!(dns(&a, ANTHROPIC_NAME)["rcode"], 3, "NXDOMAIN for a");
    assert_eq!(dns(&b, ANTHROPIC_NAME)["rcode"], 0, "b may resolve it");
    assert_eq!(dns(&a, OPENAI_NAME)["rcode"], 0);
    gw.expect_blocked(&a.agent_addr, &[&format!("DNS {ANTHROPIC_NAME} BLOCKED")]);
    let (out, _) = curl(
        &lab,
        &a.name,
        &format!("--resolve {ANTHROPIC_NAME}:443:{ANTHROPIC_V4} https://{ANTHROPIC_NAME}/from-a"),
    );
    assert_eq!(codes(&out), vec!["403"], "{out}");
    assert!(out.contains(ANTHROPIC_NAME), "{out}");

    // b reaches anthropic with its own credential, and openai without a's.
    let (out, _) = curl(
        &lab,
        &b.name,
        &format!(
            "-H \"x-api-key: $ANTHROPIC_API_KEY\" https://{ANTHROPIC_NAME}/from-b \
             --next -H \"Authorization: Bearer $OPENAI_API_KEY\" https://{OPENAI_NAME}/from-b"
        ),
    );
    assert_eq!(
        codes(&out),
        vec!["200", "200"],
        "{out}\n{}",
        tail(&gw.proxy_log())
    );
    let at_anthropic = gw.https_at(ANTHROPIC_V4);
    assert_eq!(at_anthropic.len(), 1, "{at_anthropic:#?}");
    assert_eq!(request_line(&at_anthropic[0]), "GET /from-b HTTP/1.1");
    assert_eq!(
        header(&at_anthropic[0], "x-api-key"),
        vec![ANTHROPIC_SECRET.to_string()]
    );
    let from_b = gw
        .https_at(OPENAI_V4)
        .into_iter()
        .find(|r| request_line(r) == "GET /from-b HTTP/1.1")
        .expect("b's openai request");
    assert_eq!(
        header(&from_b, "authorization"),
        vec![format!("Bearer {DUMMY}")],
        "b's policy does not list OPENAI_API_KEY: it gets no credential"
    );

    // The audit log names the agent and the mode.
    let text = fs::read_to_string(&audit).unwrap_or_default();
    let entries: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(
        entries.iter().any(|e| e["agent"] == "a"
            && e["mode"] == "transparent"
            && e["decision"] == "allow"
            && e["credential"] == "OPENAI_API_KEY"),
        "{text}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["agent"] == "a" && e["by"] == "blocked-by-rule" && e["method"] == "POST"),
        "{text}"
    );
    assert!(!text.contains(OPENAI_SECRET) && !text.contains(ANTHROPIC_SECRET));
    gw.assert_no_leaks(&[]);
}
