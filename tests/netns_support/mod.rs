//! Lab of network namespaces for the `scripts/paude-netns` tests.
//!
//! Topology (all names carry the test process id, so parallel tests and
//! parallel runs never collide):
//!
//! ```text
//!   agent(s) ──veth── gw ──up0/down0── inet
//!   made by           proxy side:     tripwires on 192.0.2.2, 203.0.113.7,
//!   paude-netns       stand-ins on    169.254.169.254, 2001:db8:1::2
//!                     3129 / 3153     (routes back to 10/8 and fd00::/8)
//! ```
//!
//! `gw` forwards IPv4 and IPv6 and routes to `inet`, so without the agent's nft
//! table a leak *would* arrive at a tripwire (the control test proves that).
//! Nothing leaves these namespaces.

#![allow(dead_code)] // each test binary uses a different subset

pub mod gateway;

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long a listener may take to bind before the test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a signalled `run` may take to clean up and exit before the test fails.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);
/// Poll step for the waits above.
const POLL: Duration = Duration::from_millis(20);

pub const GW_INET_V4: &str = "192.0.2.1";
pub const INET_V4: &str = "192.0.2.2";
/// An "arbitrary internet address", only reachable through gw's routing.
pub const INET_FAR_V4: &str = "203.0.113.7";
pub const METADATA_V4: &str = "169.254.169.254";
pub const GW_INET_V6: &str = "2001:db8:1::1";
pub const INET_V6: &str = "2001:db8:1::2";

pub const TRANSPARENT_BANNER: &str = "STANDIN-TCP";
pub const DNS_BANNER: &str = "STANDIN-DNS";
pub const TRIPWIRE_BANNER: &str = "TRIPWIRE";

static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn script_path() -> PathBuf {
    repo_root().join("scripts/paude-netns")
}

/// The binary `paude-netns exec` asks for the credential and CA variables.
pub fn proxy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_paude-proxy")
}

fn lab_py() -> PathBuf {
    repo_root().join("tests/netns_support/lab.py")
}

/// The Debian python3 starts faster than a version-manager shim.
pub fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// True when this process can build the lab. Otherwise prints a loud skip
/// notice, or panics when PAUDE_REQUIRE_NETNS=1 (CI must not skip silently).
pub fn netns_ready(test: &str) -> bool {
    match missing_prerequisite() {
        None => true,
        Some(reason) => skip(test, &reason),
    }
}

/// Like [`netns_ready`], for a tool that only some tests need.
pub fn tool_ready(test: &str, tool: &str) -> bool {
    if tool_works(tool, "--version") {
        return true;
    }
    skip(test, &format!("'{tool}' is not installed"))
}

/// Prints a loud skip notice (returns false), or panics when
/// PAUDE_REQUIRE_NETNS=1: CI must not skip silently.
fn skip(test: &str, reason: &str) -> bool {
    if std::env::var("PAUDE_REQUIRE_NETNS").as_deref() == Ok("1") {
        panic!("{test}: PAUDE_REQUIRE_NETNS=1 but {reason}");
    }
    // Written to the real stderr, not through eprintln!, which the test
    // harness captures and hides for passing tests.
    let bar = "!".repeat(72);
    let notice = format!(
        "\n{bar}\n!!! SKIPPED {test}: {reason}\n\
         !!! netns tests need root with CAP_NET_ADMIN, ip, nft, nsenter, python3, curl\n\
         !!! set PAUDE_REQUIRE_NETNS=1 to make this a failure\n{bar}\n"
    );
    let _ = std::io::stderr().write_all(notice.as_bytes());
    false
}

fn tool_works(tool: &str, arg: &str) -> bool {
    Command::new(tool)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn missing_prerequisite() -> Option<String> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or("")
            .to_string()
    };
    let euid = field("Uid:")
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    if euid != "0" {
        return Some(format!("not root (euid {euid})"));
    }
    const CAP_NET_ADMIN_BIT: u32 = 12;
    let cap_eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap_or(0);
    if cap_eff & (1 << CAP_NET_ADMIN_BIT) == 0 {
        return Some("no CAP_NET_ADMIN".to_string());
    }
    for (tool, arg) in [
        ("ip", "-V"),
        ("nft", "--version"),
        ("nsenter", "--version"),
        (python(), "--version"),
    ] {
        if !tool_works(tool, arg) {
            return Some(format!("'{tool}' is not installed"));
        }
    }
    None
}

/// Runs a command and returns its output (never panics on a non-zero exit).
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns stdout.
pub fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// `ip netns exec NS sh -c SCRIPT`, which must succeed.
pub fn ns_sh(ns: &str, script: &str) -> String {
    must(&mut cmd("ip", &["netns", "exec", ns, "sh", "-c", script]))
}

pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits for PATH to exist and be non-empty, failing instead of hanging.
pub fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        thread::sleep(POLL);
    }
}

/// Waits for a child to exit, failing (after killing it) instead of hanging.
pub fn wait_child(child: &mut Child, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} did not exit within {timeout:?}", child.id());
        }
        thread::sleep(POLL);
    }
}

pub fn send_signal(pid: u32, signal: &str) {
    must(&mut cmd("kill", &[&format!("-{signal}"), &pid.to_string()]));
}

/// A listener started by [`Lab::listen`]; its log has one JSON line per event.
pub struct Listener {
    pub log: PathBuf,
}

impl Listener {
    pub fn events(&self) -> Vec<Value> {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("listener log line is JSON"))
            .collect()
    }

    pub fn assert_silent(&self, what: &str) {
        let events = self.events();
        assert!(
            events.is_empty(),
            "{what} received traffic it must never see: {events:#?}"
        );
    }
}

/// One agent namespace as recorded by paude-netns in its state file.
#[derive(Debug, Clone)]
pub struct Agent {
    pub name: String,
    pub veth: String,
    pub host_addr: String,
    pub agent_addr: String,
    pub subnet: String,
}

impl Agent {
    pub fn table(&self) -> String {
        format!("paude-{}", self.name)
    }
}

pub fn read_agent_state(name: &str) -> Agent {
    let path = format!("/run/paude-netns/{name}/state");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")))
            .unwrap_or_else(|| panic!("{path} has no {key}"))
            .to_string()
    };
    Agent {
        name: name.to_string(),
        veth: get("veth"),
        host_addr: get("host_addr"),
        agent_addr: get("agent_addr"),
        subnet: get("subnet"),
    }
}

/// The lab; `Drop` tears everything down, also when a test panics.
pub struct Lab {
    pub gw: String,
    pub inet: String,
    pub ca: PathBuf,
    pub dir: tempfile::TempDir,
    prefix: String,
    agents: Vec<String>,
    children: Vec<Child>,
    next_agent: u32,
}

impl Lab {
    /// TAG (a few letters) makes names readable in `ip netns list` when
    /// debugging.
    pub fn new(tag: &str) -> Lab {
        let n = LAB_COUNTER.fetch_add(1, Ordering::SeqCst);
        let prefix = format!("pt{}{}{}", std::process::id(), tag, n);
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.crt");
        fs::write(&ca, test_ca_pem()).expect("write CA");
        let lab = Lab {
            gw: format!("{prefix}-gw"),
            inet: format!("{prefix}-inet"),
            ca,
            dir,
            prefix,
            agents: Vec::new(),
            children: Vec::new(),
            next_agent: 0,
        };
        lab.build();
        lab
    }

    fn build(&self) {
        let (gw, inet) = (self.gw.as_str(), self.inet.as_str());
        let ip = |args: &[&str]| must(&mut cmd("ip", args));
        ip(&["netns", "add", gw]);
        ip(&["netns", "add", inet]);
        ip(&[
            "-n", gw, "link", "add", "up0", "type", "veth", "peer", "name", "down0", "netns", inet,
        ]);
        for ns in [gw, inet] {
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        ip(&[
            "-n",
            gw,
            "addr",
            "add",
            &format!("{GW_INET_V4}/24"),
            "dev",
            "up0",
        ]);
        ip(&[
            "-n",
            gw,
            "-6",
            "addr",
            "add",
            &format!("{GW_INET_V6}/64"),
            "dev",
            "up0",
            "nodad",
        ]);
        ip(&[
            "-n",
            inet,
            "addr",
            "add",
            &format!("{INET_V4}/24"),
            "dev",
            "down0",
        ]);
        ip(&[
            "-n",
            inet,
            "-6",
            "addr",
            "add",
            &format!("{INET_V6}/64"),
            "dev",
            "down0",
            "nodad",
        ]);
        ip(&[
            "-n",
            inet,
            "addr",
            "add",
            &format!("{INET_FAR_V4}/32"),
            "dev",
            "lo",
        ]);
        ip(&[
            "-n",
            inet,
            "addr",
            "add",
            &format!("{METADATA_V4}/32"),
            "dev",
            "lo",
        ]);
        ip(&["-n", gw, "link", "set", "up0", "up"]);
        ip(&["-n", inet, "link", "set", "down0", "up"]);
        ip(&["-n", gw, "route", "add", "203.0.113.0/24", "via", INET_V4]);
        ip(&[
            "-n",
            gw,
            "route",
            "add",
            &format!("{METADATA_V4}/32"),
            "via",
            INET_V4,
        ]);
        ip(&["-n", inet, "route", "add", "10.0.0.0/8", "via", GW_INET_V4]);
        ip(&[
            "-n", inet, "-6", "route", "add", "fd00::/8", "via", GW_INET_V6,
        ]);
        // Forwarding on, as on a typical container host: the agent's rules,
        // not a sysctl, must be what stops leaks.
        ns_sh(
            gw,
            "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        );
    }

    /// `nsenter --net=<gw> scripts/paude-netns ARGS`: the script runs in the
    /// proxy's namespace the way it would inside a container.
    pub fn script(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.gw))
            .arg(script_path())
            .args(args)
            .env("PAUDE_PROXY_BIN", proxy_bin());
        c
    }

    pub fn new_agent_name(&mut self) -> String {
        self.next_agent += 1;
        let name = format!("{}a{}", self.prefix, self.next_agent);
        self.register_agent(&name);
        name
    }

    /// Makes Drop clean up NAME even if the test fails before destroying it.
    pub fn register_agent(&mut self, name: &str) {
        if !self.agents.iter().any(|a| a == name) {
            self.agents.push(name.to_string());
        }
    }

    pub fn create_agent(&mut self, extra: &[&str]) -> Agent {
        let name = self.new_agent_name();
        let ca = self.ca.to_string_lossy().into_owned();
        let mut args = vec!["create", name.as_str(), "--ca", ca.as_str()];
        args.extend_from_slice(extra);
        must(&mut self.script(&args));
        read_agent_state(&name)
    }

    /// Starts `lab.py listen` in namespace NS and waits until it is bound.
    pub fn listen(&mut self, ns: &str, label: &str, args: &[&str]) -> Listener {
        self.start_lab_py(ns, label, "listen", args)
    }

    /// Keeps CHILD (a process the test started) until the lab is dropped,
    /// then kills it before the namespaces go.
    pub fn adopt(&mut self, child: Child) {
        self.children.push(child);
    }

    /// Starts `lab.py SUBCOMMAND --log .. --ready .. ARGS` in namespace NS
    /// and waits until it reports that it is bound.
    pub fn start_lab_py(
        &mut self,
        ns: &str,
        label: &str,
        subcommand: &str,
        args: &[&str],
    ) -> Listener {
        let log = self.dir.path().join(format!("{label}.log"));
        let ready = self.dir.path().join(format!("{label}.ready"));
        let stderr =
            fs::File::create(self.dir.path().join(format!("{label}.stderr"))).expect("stderr file");
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, python()])
            .arg(lab_py())
            .arg(subcommand)
            .arg("--log")
            .arg(&log)
            .arg("--ready")
            .arg(&ready)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = c.spawn().expect("spawn listener");
        let deadline = Instant::now() + READY_TIMEOUT;
        while !ready.exists() {
            if let Some(status) = child.try_wait().expect("try_wait") {
                let mut err = String::new();
                let _ = fs::File::open(self.dir.path().join(format!("{label}.stderr")))
                    .and_then(|mut f| f.read_to_string(&mut err));
                panic!("listener {label} exited early ({status}): {err}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                panic!("listener {label} not ready within {READY_TIMEOUT:?}");
            }
            thread::sleep(POLL);
        }
        self.children.push(child);
        Listener { log }
    }

    /// The inet tripwires: every port and protocol an escaping agent might try.
    pub fn inet_tripwires(&mut self) -> Listener {
        let inet = self.inet.clone();
        self.listen(
            &inet,
            "inet-tripwires",
            &[
                "--banner",
                TRIPWIRE_BANNER,
                "--tcp",
                "22",
                "--tcp",
                "53",
                "--tcp",
                "80",
                "--tcp",
                "443",
                "--tcp",
                "8080",
                "--udp",
                "53",
                "--udp",
                "123",
                "--udp",
                "443",
                "--icmp",
                "--raw-proto",
                "253",
            ],
        )
    }

    /// Stand-in for the proxy's transparent listener (records SO_ORIGINAL_DST).
    pub fn transparent_standin(&mut self, port: u16) -> Listener {
        let gw = self.gw.clone();
        let port = port.to_string();
        self.listen(
            &gw,
            "gw-transparent",
            &["--banner", TRANSPARENT_BANNER, "--orig-dst", "--tcp", &port],
        )
    }

    /// Stand-in for the proxy's sandbox DNS server (UDP and TCP).
    pub fn dns_standin(&mut self, port: u16) -> Listener {
        let gw = self.gw.clone();
        let port = port.to_string();
        self.listen(
            &gw,
            "gw-dns",
            &[
                "--banner",
                DNS_BANNER,
                "--orig-dst",
                "--tcp",
                &port,
                "--udp",
                &port,
            ],
        )
    }

    /// Other services of the proxy host that the agent must not reach.
    pub fn gw_services(&mut self) -> Listener {
        let gw = self.gw.clone();
        self.listen(
            &gw,
            "gw-services",
            &[
                "--banner",
                "GW-SERVICE",
                "--tcp",
                "22",
                "--tcp",
                "3128",
                "--tcp",
                "9999",
                "--udp",
                "9999",
                "--icmp",
            ],
        )
    }

    /// Runs lab.py probes inside AGENT through `paude-netns exec` and returns
    /// one result object per probe, in order.
    pub fn probes(&self, agent: &str, probes: &Value) -> Vec<Value> {
        let spec = probes.to_string();
        let py = python();
        let lab = lab_py();
        let lab = lab.to_string_lossy();
        let out = must(&mut self.script(&["exec", agent, "--", py, &lab, "probes", &spec]));
        let results: Vec<Value> = serde_json::from_str(out.trim()).expect("probe output is JSON");
        assert_eq!(results.len(), probes.as_array().map(Vec::len).unwrap_or(0));
        results
    }

    pub fn nft_tables(&self) -> String {
        must(&mut cmd(
            "ip",
            &["netns", "exec", &self.gw, "nft", "list", "tables"],
        ))
    }

    /// Asserts that nothing of AGENT is left: namespace, veth, nft table,
    /// /etc/netns entry, runtime state.
    pub fn assert_agent_gone(&self, agent: &Agent) {
        let name = agent.name.as_str();
        let list = must(&mut cmd("ip", &["netns", "list"]));
        assert!(
            !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "namespace {name} still listed:\n{list}"
        );
        assert!(
            !Path::new(&format!("/run/netns/{name}")).exists(),
            "/run/netns/{name} left behind"
        );
        let veth = run(&mut cmd(
            "ip",
            &["-n", &self.gw, "link", "show", "dev", &agent.veth],
        ));
        assert!(
            !veth.status.success(),
            "veth {} of {name} left in gw",
            agent.veth
        );
        let tables = self.nft_tables();
        assert!(
            !tables
                .lines()
                .any(|l| l.trim() == format!("table inet {}", agent.table())),
            "nft table of {name} left:\n{tables}"
        );
        assert!(
            !Path::new(&format!("/etc/netns/{name}")).exists(),
            "/etc/netns/{name} left behind"
        );
        assert!(
            !Path::new(&format!("/run/paude-netns/{name}")).exists(),
            "/run/paude-netns/{name} left behind"
        );
    }

    /// The converse of [`Lab::assert_agent_gone`], so that check cannot pass
    /// just because it looks in the wrong place.
    pub fn assert_agent_present(&self, agent: &Agent) {
        let name = agent.name.as_str();
        assert!(
            Path::new(&format!("/run/netns/{name}")).exists(),
            "/run/netns/{name} missing"
        );
        must(&mut cmd(
            "ip",
            &["-n", &self.gw, "link", "show", "dev", &agent.veth],
        ));
        let tables = self.nft_tables();
        assert!(
            tables
                .lines()
                .any(|l| l.trim() == format!("table inet {}", agent.table())),
            "nft table of {name} missing:\n{tables}"
        );
        assert!(Path::new(&format!("/etc/netns/{name}/resolv.conf")).exists());
        assert!(Path::new(&format!("/run/paude-netns/{name}/state")).exists());
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for agent in &self.agents {
            let _ = self
                .script(&["destroy", agent])
                .stderr(Stdio::null())
                .status();
            // Belt and braces in case the script itself is what broke.
            let _ = cmd("ip", &["netns", "del", agent])
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(format!("/etc/netns/{agent}"));
            let _ = fs::remove_dir_all(format!("/run/paude-netns/{agent}"));
        }
        // Deleting gw also removes every veth and nft table in it.
        for ns in [&self.gw, &self.inet] {
            let _ = cmd("ip", &["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
            let _ = fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
    }
}

/// A throwaway CA certificate standing in for the proxy's CA. The key is
/// dropped: only the public certificate goes into the agent's trust bundle.
pub fn test_ca_pem() -> String {
    test_pki("unused.test").ca_pem
}

pub struct TestPki {
    pub ca_pem: String,
    pub leaf_pem: String,
    pub leaf_key_pem: String,
}

/// A CA plus a leaf for HOST signed by it.
pub fn test_pki(host: &str) -> TestPki {
    test_pki_for(&[host])
}

/// A CA plus one leaf signed by it for every name in NAMES (IP literals
/// become IP address SANs).
pub fn test_pki_for(names: &[&str]) -> TestPki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "paude-netns test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut leaf_params = CertificateParams::new(sans).expect("leaf params");
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    let leaf = leaf_params
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    TestPki {
        ca_pem: ca_cert.pem(),
        leaf_pem: leaf.pem(),
        leaf_key_pem: leaf_key.serialize_pem(),
    }
}
