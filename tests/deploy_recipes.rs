//! deploy/ and the Containerfile agree with the scripts and the proxy: UIDs, ports,
//! capabilities, paths and variable lists. No cluster and no podman here, so the Kubernetes
//! manifests are parsed (PyYAML → JSON) and checked, their proxy settings go through the
//! real `--check-config`, and the podman recipes run against a recording stand-in for
//! `podman` whose `routes`/`ca` calls reach the real binary.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const PROXY_BIN: &str = env!("CARGO_BIN_EXE_paude-proxy");
const DUMMY: &str = "paude-proxy-managed";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

fn yaml_docs(path: &str) -> Vec<Value> {
    let out = Command::new(python())
        .arg(repo().join("tests/deploy_support/yaml2json.py"))
        .arg(repo().join(path))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{path}: {} (PyYAML is Debian's python3-yaml)",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn proxy(args: &[&str]) -> String {
    let out = Command::new(PROXY_BIN)
        .args(args)
        .env_remove("PAUDE_PROXY_CREDENTIALS_CONFIG")
        .output()
        .expect("paude-proxy");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `NAME=VALUE` lines of `paude-proxy ca env --no-proxy` for BUNDLE.
fn trust_vars(bundle: &str) -> BTreeMap<String, String> {
    proxy(&[
        "ca",
        "env",
        "--no-proxy",
        "--format",
        "plain",
        "--bundle",
        bundle,
    ])
    .lines()
    .filter_map(|l| l.split_once('='))
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The embedded table's value-holding credential variables.
fn value_vars() -> BTreeSet<String> {
    proxy(&["routes", "--vars"])
        .lines()
        .filter_map(|l| l.strip_prefix("value "))
        .map(str::to_string)
        .collect()
}

/// `readonly NAME=VALUE` from a shell library.
fn shell_const(path: &str, name: &str) -> String {
    let text = fs::read_to_string(repo().join(path)).expect("script");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("readonly {name}=")))
        .unwrap_or_else(|| panic!("{path} has no {name}"))
        .to_string()
}

/// The Containerfile's runtime stage: (instruction, rest) pairs, continuations joined.
fn containerfile() -> Vec<(String, String)> {
    let text = fs::read_to_string(repo().join("Containerfile")).expect("Containerfile");
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("FROM");
    lines[last_from..]
        .iter()
        .filter_map(|l| l.split_once(' '))
        .map(|(i, r)| (i.to_string(), r.trim().to_string()))
        .collect()
}

fn instr<'a>(cf: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    cf.iter()
        .filter(|(i, _)| i == name)
        .map(|(_, r)| r.as_str())
        .collect()
}

fn container<'a>(pod: &'a Value, list: &str, name: &str) -> &'a Value {
    pod["spec"][list]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .unwrap_or_else(|| panic!("no {list} container {name}"))
}

fn env_of(c: &Value) -> BTreeMap<String, Value> {
    c["env"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|v| (v["name"].as_str().unwrap_or("").to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn env_value(env: &BTreeMap<String, Value>, name: &str) -> String {
    env.get(name)
        .and_then(|v| v["value"].as_str())
        .unwrap_or_else(|| panic!("no literal {name}"))
        .to_string()
}

/// The value after FLAG in a command list.
fn flag<'a>(command: &'a [Value], name: &str) -> Option<&'a str> {
    command
        .iter()
        .position(|a| a == name)
        .and_then(|i| command.get(i + 1))
        .and_then(Value::as_str)
}

fn port_of(listen: &str) -> &str {
    listen.rsplit(':').next().unwrap_or("")
}

#[test]
fn the_containerfile_runs_the_proxy_as_its_fixed_non_root_uid_with_a_healthcheck() {
    let cf = containerfile();
    assert_eq!(instr(&cf, "USER"), vec!["10001:10001"]);
    let run = instr(&cf, "RUN").join(" ");
    assert!(
        run.contains("--uid 10001") && run.contains("--gid 10001"),
        "{run}"
    );
    assert!(run.contains("chown 10001:10001 /data/ca"), "{run}");
    for pkg in ["nftables", "iproute2", "ca-certificates"] {
        assert!(run.contains(pkg), "the image installs {pkg}");
    }
    assert_eq!(instr(&cf, "HEALTHCHECK").len(), 1, "one HEALTHCHECK");
    assert!(
        instr(&cf, "HEALTHCHECK")[0]
            .ends_with(r#"CMD ["/usr/local/bin/paude-proxy", "healthcheck"]"#)
    );
    let env = instr(&cf, "ENV");
    assert!(
        env.contains(&"PAUDE_PROXY_ADMIN_LISTEN=127.0.0.1:9090"),
        "{env:?}"
    );
    assert!(env.contains(&"PAUDE_PROXY_CA_DIR=/data/ca"), "{env:?}");
    assert_eq!(instr(&cf, "VOLUME"), vec!["/data/ca"]);
    // Every COPY source exists, and the script links point into what was copied.
    for copy in instr(&cf, "COPY") {
        let src = copy.split_whitespace().rev().nth(1).expect("COPY SRC DST");
        if !copy.starts_with("--from") {
            assert!(repo().join(src).exists(), "COPY source {src}");
        }
    }
    for script in ["paude-netns", "paude-pod"] {
        assert!(
            run.contains(&format!(
                "ln -s /usr/local/share/paude-proxy/scripts/{script} /usr/local/bin/{script}"
            )),
            "{script} on PATH"
        );
        assert!(repo().join("scripts").join(script).exists());
    }
    // The scripts find their templates next to them, as copied.
    assert!(repo().join("nft/pod/10-pod.nft").exists());
    assert!(
        fs::read_to_string(repo().join("scripts/lib/paude-pod/commands.sh"))
            .expect("commands.sh")
            .contains("${SELF_DIR}/../nft/pod")
    );
}

#[test]
fn the_kubernetes_pod_agrees_with_the_script_the_proxy_and_the_image() {
    let docs = yaml_docs("deploy/kubernetes/pod.yaml");
    let pod = docs.iter().find(|d| d["kind"] == "Pod").expect("a Pod");
    let cf = containerfile();
    let image_uid = instr(&cf, "USER")[0]
        .split(':')
        .next()
        .unwrap_or("")
        .to_string();

    // The rules: root with NET_ADMIN only, exempting exactly the proxy's UID.
    let rules = container(pod, "initContainers", "paude-pod-rules");
    let command: Vec<Value> = rules["command"].as_array().cloned().unwrap_or_default();
    assert_eq!(command[0], "/usr/local/bin/paude-pod");
    assert_eq!(command[1], "apply");
    let sc = &rules["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(["NET_ADMIN"]));
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    let proxy_uid = flag(&command, "--proxy-uid").expect("--proxy-uid");
    let tport = flag(&command, "--transparent-port")
        .map(str::to_string)
        .unwrap_or_else(|| shell_const("scripts/lib/shared/common.sh", "DEFAULT_TRANSPARENT_PORT"));
    let dport = flag(&command, "--dns-port")
        .map(str::to_string)
        .unwrap_or_else(|| shell_const("scripts/lib/shared/common.sh", "DEFAULT_DNS_PORT"));
    assert_eq!(
        tport,
        shell_const("scripts/lib/shared/common.sh", "DEFAULT_TRANSPARENT_PORT")
    );
    assert_eq!(
        dport,
        shell_const("scripts/lib/shared/common.sh", "DEFAULT_DNS_PORT")
    );

    // The proxy: that UID (the image's), a native sidecar, loopback listeners on the
    // script's ports, the CA where the volume is, probes through `healthcheck`.
    let px = container(pod, "initContainers", "paude-proxy");
    assert_eq!(px["restartPolicy"], "Always");
    let psc = &px["securityContext"];
    assert_eq!(psc["runAsUser"].to_string(), proxy_uid);
    assert_eq!(proxy_uid, image_uid, "the image's USER");
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(psc["capabilities"]["add"].is_null());
    let penv = env_of(px);
    let transparent = env_value(&penv, "PAUDE_PROXY_TRANSPARENT_LISTEN");
    let dns = env_value(&penv, "PAUDE_PROXY_DNS_LISTEN");
    assert_eq!(transparent, format!("127.0.0.1:{tport}"));
    assert_eq!(dns, format!("127.0.0.1:{dport}"));
    let admin = env_value(&penv, "PAUDE_PROXY_ADMIN_LISTEN");
    assert!(instr(&cf, "ENV").contains(&format!("PAUDE_PROXY_ADMIN_LISTEN={admin}").as_str()));
    assert!(
        admin.starts_with("127.0.0.1:"),
        "admin stays off the pod network"
    );
    let ca_dir = env_value(&penv, "PAUDE_PROXY_CA_DIR");
    let mount = |c: &Value, vol: &str| -> Value {
        c["volumeMounts"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == vol).cloned())
            .unwrap_or(Value::Null)
    };
    assert_eq!(mount(px, "ca")["mountPath"], ca_dir.as_str());
    for probe in ["startupProbe", "livenessProbe"] {
        assert_eq!(
            px[probe]["exec"]["command"],
            serde_json::json!(["/usr/local/bin/paude-proxy", "healthcheck"]),
            "{probe}"
        );
    }
    // Secrets come from the Secret, one key per credential variable of the proxy.
    let secret_docs = yaml_docs("deploy/kubernetes/secret.example.yaml");
    let secret_name = secret_docs[0]["metadata"]["name"]
        .as_str()
        .expect("Secret name");
    let values = value_vars();
    let mut from_secret = 0;
    for (name, v) in &penv {
        if let Some(r) = v.get("valueFrom").map(|f| &f["secretKeyRef"]) {
            assert_eq!(r["name"], secret_name, "{name}");
            assert_eq!(r["key"], name.as_str());
            assert!(
                values.contains(name),
                "{name} is a credential of the routing table"
            );
            from_secret += 1;
        }
    }
    assert!(from_secret > 0);
    // The proxy's settings are valid: the real --check-config on them.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut check = Command::new(PROXY_BIN);
    check.env_clear().arg("--check-config");
    for (name, v) in &penv {
        if let Some(value) = v["value"].as_str() {
            check.env(name, value);
        }
    }
    check.env("PAUDE_PROXY_CA_DIR", tmp.path().join("ca"));
    check.env("BLOCKED_LOG_PATH", tmp.path().join("blocked.log"));
    let out = check.output().expect("check-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("preset @claude"));

    // The agent: another non-root UID, no capabilities, the CA read-only, dummies for
    // every credential of the table it names, the binary's trust list, no proxy vars.
    let agent = container(pod, "containers", "agent");
    let asc = &agent["securityContext"];
    let agent_uid = asc["runAsUser"].as_u64().expect("agent runAsUser");
    assert!(agent_uid != 0 && agent_uid.to_string() != proxy_uid);
    assert_eq!(asc["runAsNonRoot"], true);
    assert_eq!(asc["allowPrivilegeEscalation"], false);
    assert!(asc["capabilities"]["add"].is_null());
    assert_eq!(mount(agent, "ca")["mountPath"], ca_dir.as_str());
    assert_eq!(mount(agent, "ca")["readOnly"], true);
    let aenv = env_of(agent);
    for (name, value) in trust_vars(&format!("{ca_dir}/ca.crt")) {
        assert_eq!(
            aenv.get(&name).and_then(|v| v["value"].as_str()),
            Some(value.as_str()),
            "{name}"
        );
    }
    for (name, v) in &aenv {
        assert!(!name.to_ascii_lowercase().ends_with("_proxy"), "{name}");
        assert!(
            v.get("valueFrom").is_none(),
            "the agent reads no Secret: {name}"
        );
        if values.contains(name) {
            assert_eq!(v["value"], DUMMY, "{name}");
        }
    }
    assert_eq!(pod["spec"]["automountServiceAccountToken"], false);

    // The NetworkPolicy selects this pod and allows egress to 443/80/53 only.
    let np = docs
        .iter()
        .find(|d| d["kind"] == "NetworkPolicy")
        .expect("a NetworkPolicy");
    for (k, v) in np["spec"]["podSelector"]["matchLabels"]
        .as_object()
        .expect("labels")
    {
        assert_eq!(&pod["metadata"]["labels"][k], v);
    }
    let ports: BTreeSet<String> = np["spec"]["egress"]
        .as_array()
        .expect("egress")
        .iter()
        .flat_map(|e| e["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| format!("{}/{}", p["protocol"].as_str().unwrap_or(""), p["port"]))
        .collect();
    let expected: BTreeSet<String> = ["TCP/443", "TCP/80", "UDP/53", "TCP/53"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(ports, expected);
    assert_eq!(port_of(&transparent), tport);
}

/// Runs a podman recipe against the recording stand-in; returns the recorded calls.
fn run_recipe(script: &str, real_key: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("podman.log");
    let fake = dir.path().join("podman");
    fs::write(
        &fake,
        format!(
            "#!/bin/sh\nexec {} {} \"$@\"\n",
            python(),
            repo().join("tests/deploy_support/fake_podman.py").display()
        ),
    )
    .expect("fake podman");
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Command::new(repo().join(script))
        .args(["claude", "--version"])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("PODMAN", &fake)
        .env("FAKE_PODMAN_LOG", &log)
        .env("FAKE_PODMAN_PROXY", PROXY_BIN)
        .env("ANTHROPIC_API_KEY", real_key)
        .output()
        .expect("recipe");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = fs::read_to_string(&log).expect("podman log");
    assert!(
        !text.contains(real_key),
        "a real key on a podman command line:\n{text}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

fn argv(call: &Value) -> Vec<String> {
    call["argv"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn has_pair(args: &[String], a: &str, b: &str) -> bool {
    args.windows(2).any(|w| w[0] == a && w[1] == b)
}

#[test]
fn the_podman_pod_recipe_applies_the_rules_first_and_runs_each_part_as_its_uid() {
    const REAL: &str = "sk-ant-recipe-REAL-5c1e";
    let calls = run_recipe("deploy/podman/pod.sh", REAL);
    let runs: Vec<Vec<String>> = calls
        .iter()
        .map(argv)
        .filter(|a| a.first().map(String::as_str) == Some("run") && a.iter().any(|x| x == "--pod"))
        .collect();
    assert_eq!(runs.len(), 3, "rules, proxy, agent: {runs:#?}");
    let (rules, proxy, agent) = (&runs[0], &runs[1], &runs[2]);
    assert!(has_pair(rules, "--user", "0:0") && has_pair(rules, "--cap-add", "NET_ADMIN"));
    assert!(has_pair(rules, "--cap-drop", "all"));
    assert!(has_pair(rules, "--entrypoint", "/usr/local/bin/paude-pod"));
    let uid = rules
        .iter()
        .position(|a| a == "--proxy-uid")
        .map(|i| rules[i + 1].clone())
        .expect("--proxy-uid");
    let image_user = instr(&containerfile(), "USER")[0].to_string();
    assert_eq!(format!("{uid}:{uid}"), image_user);
    assert!(has_pair(proxy, "--user", &image_user));
    let tport = rules[rules
        .iter()
        .position(|a| a == "--transparent-port")
        .expect("tport")
        + 1]
    .clone();
    let dport = rules[rules.iter().position(|a| a == "--dns-port").expect("dport") + 1].clone();
    let common = "scripts/lib/shared/common.sh";
    assert_eq!(tport, shell_const(common, "DEFAULT_TRANSPARENT_PORT"));
    assert_eq!(dport, shell_const(common, "DEFAULT_DNS_PORT"));
    assert!(proxy.contains(&format!("PAUDE_PROXY_TRANSPARENT_LISTEN=127.0.0.1:{tport}")));
    assert!(proxy.contains(&format!("PAUDE_PROXY_DNS_LISTEN=127.0.0.1:{dport}")));
    assert!(
        has_pair(proxy, "-e", "ANTHROPIC_API_KEY"),
        "the key by name only: {proxy:?}"
    );
    // The proxy is healthy before the agent starts.
    let health = calls
        .iter()
        .position(|c| argv(c).iter().any(|a| a == "healthcheck"))
        .expect("a healthcheck");
    let agent_at = calls
        .iter()
        .rposition(|c| argv(c) == *agent)
        .expect("agent");
    assert!(health < agent_at);
    assert!(has_pair(agent, "--user", "1000:1000"));
    assert!(agent.iter().any(|a| a.ends_with("-ca:/data/ca:ro")));
    assert!(agent.ends_with(&["claude".to_string(), "--version".to_string()]));
    for var in value_vars() {
        assert!(has_pair(agent, "-e", &format!("{var}={DUMMY}")), "{var}");
    }
    let env_file = calls[agent_at]["env_file"]
        .as_str()
        .expect("agent env file");
    for (name, value) in trust_vars("/data/ca/ca.crt") {
        assert!(env_file.contains(&format!("{name}={value}\n")), "{name}");
    }
    assert!(
        !env_file.to_ascii_lowercase().contains("_proxy="),
        "{env_file}"
    );
    let last = argv(calls.last().expect("calls"));
    assert!(
        calls
            .iter()
            .map(argv)
            .any(|a| a.starts_with(&["pod".into(), "rm".into()])),
        "the pod is removed at exit: {last:?}"
    );
}

#[test]
fn the_podman_two_container_recipe_gives_the_agent_proxy_settings_in_both_cases() {
    const REAL: &str = "sk-ant-recipe-REAL-77ab";
    let calls = run_recipe("deploy/podman/two-containers.sh", REAL);
    let agent = calls
        .iter()
        .rev()
        .find(|c| argv(c).first().map(String::as_str) == Some("run") && c.get("env_file").is_some())
        .expect("agent run");
    let env_file = agent["env_file"].as_str().expect("env file");
    for var in ["HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"] {
        assert!(
            env_file.contains(&format!("{var}=http://paude-proxy:3128\n")),
            "{var}"
        );
    }
    assert!(env_file.contains("NODE_EXTRA_CA_CERTS=/data/ca/ca.crt\n"));
    let args = argv(agent);
    assert!(has_pair(&args, "--user", "1000:1000"));
    assert!(has_pair(&args, "-e", &format!("ANTHROPIC_API_KEY={DUMMY}")));
    let proxy = calls
        .iter()
        .map(argv)
        .find(|a| a.iter().any(|x| x == "--name") && a.iter().any(|x| x == "paude-proxy"))
        .expect("proxy run");
    assert!(has_pair(&proxy, "-e", "ANTHROPIC_API_KEY"));
    assert!(proxy.iter().any(|a| a == "paude-proxy-ca:/data/ca"));
}
