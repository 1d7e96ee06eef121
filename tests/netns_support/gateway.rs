//! The real `paude-proxy` in the lab's `gw` namespace, and the `inet` side it
//! talks to (tests/netns_transparent.rs).
//!
//! ```text
//!   agent ──veth── gw: paude-proxy ──up0── inet: recording HTTPS upstream :443
//!   (paude-netns)      explicit  :3128              recording HTTP upstream  :80
//!                      transparent :3129            fake resolver :5353 (udp+tcp)
//!                      DNS :3153 (udp+tcp)          tripwires 22/53/8080, udp
//!                                                   53/123/443, ICMP, raw IP
//! ```
//!
//! How names map: through `PAUDE_PROXY_HOSTS_FILE` only. The proxy reads that
//! file both for its own lookups (the SNI <-> IP fallback, explicit mode) and
//! in the sandbox DNS before asking upstream, so one file drives both. The
//! sandbox DNS's upstream is the fake resolver in inet, which knows one extra
//! name ([`CDN_NAME`]) that is deliberately NOT in the hosts file: only the
//! answer record can vouch for it. `/etc/netns/<gw>/{hosts,resolv.conf}` do
//! not map anything; they only seal the proxy's system resolver inside the
//! lab (nameserver 127.0.0.1 in gw, where nothing listens on 53), so no lookup
//! can ever leave for the host's real resolver.
//!
//! Upstream listeners bind the wildcard address and record the local address
//! each connection was made to, so one listener stands for every inet host and
//! "host X received nothing" is a filter on `local`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{INET_V4, Lab, Listener, METADATA_V4, TRIPWIRE_BANNER, cmd, must, test_pki_for};

/// How long the proxy may take to print its listening lines.
pub const PROXY_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a denial may take to show up in the blocked log.
pub const BLOCKED_LOG_TIMEOUT: Duration = Duration::from_secs(10);
/// Poll step while waiting for the proxy's log.
const POLL: Duration = Duration::from_millis(20);

pub const EXPLICIT_PORT: u16 = 3128;
/// The script's defaults, so `paude-netns create` needs no port options.
pub const TRANSPARENT_PORT: u16 = 3129;
pub const DNS_PORT: u16 = 3153;
/// The fake upstream resolver behind the sandbox DNS.
pub const RESOLVER_PORT: u16 = 5353;

/// Distinctive fake secrets: any occurrence outside the header they belong in
/// is a leak.
pub const OPENAI_SECRET: &str = "sk-netns-OPENAI-real-7d1f0c2e";
pub const ANTHROPIC_SECRET: &str = "sk-ant-netns-ANTHROPIC-real-93be41";
/// What `paude-netns exec` gives the agent instead of a credential.
pub const DUMMY: &str = "paude-proxy-managed";

pub const OPENAI_NAME: &str = "api.openai.com";
pub const OPENAI_V4: &str = "203.0.113.10";
pub const ANTHROPIC_NAME: &str = "api.anthropic.com";
pub const ANTHROPIC_V4: &str = "203.0.113.11";
pub const CHATGPT_NAME: &str = "chatgpt.com";
pub const CHATGPT_V4: &str = "203.0.113.12";
/// Allowed, known only to the fake upstream resolver (not the hosts file).
pub const CDN_NAME: &str = "cdn.test";
pub const CDN_V4: &str = "203.0.113.20";
/// Allowed as an IP literal in ALLOWED_DOMAINS: reachable without SNI.
pub const IP_ONLY_V4: &str = "203.0.113.9";
/// An attacker's server; it holds a valid certificate for every lab name.
pub const EVIL_V4: &str = "203.0.113.66";
/// Allowed name whose address is the cloud metadata service.
pub const METADATA_NAME: &str = "metadata.test";

/// What the recording upstreams answer with; never part of a proxy message.
pub const UPSTREAM_BANNER: &str = "INET-UPSTREAM-ANSWERED";

/// Which user the proxy runs as in gw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyUser {
    Root,
    /// A numeric UID (and the same GID), as in pod mode, where the nft rules
    /// tell the proxy's traffic from the agent's by socket owner.
    Uid(u32),
}

/// The inet side plus the running proxy.
pub struct Gateway {
    pub https: Listener,
    pub http: Listener,
    pub tripwires: Listener,
    pub resolver: Listener,
    pub proxy_log: PathBuf,
    pub blocked_log: PathBuf,
}

impl Gateway {
    /// Builds the inet side, starts the proxy in gw and points `lab.ca` at the
    /// proxy's CA, so that agents created afterwards trust it.
    pub fn start(lab: &mut Lab) -> Gateway {
        Self::start_with_env(lab, &[])
    }

    /// Like [`Gateway::start`], with extra environment for the proxy.
    pub fn start_with_env(lab: &mut Lab, extra_env: &[(&str, &str)]) -> Gateway {
        Self::start_as(lab, ProxyUser::Root, extra_env)
    }

    /// Like [`Gateway::start_with_env`], with the proxy running as USER.
    pub fn start_as(lab: &mut Lab, user: ProxyUser, extra_env: &[(&str, &str)]) -> Gateway {
        add_inet_hosts(lab);
        let dir = lab.dir.path().join("gw");
        fs::create_dir_all(&dir).expect("gw dir");

        let pki = test_pki_for(&[
            OPENAI_NAME,
            ANTHROPIC_NAME,
            CHATGPT_NAME,
            CDN_NAME,
            METADATA_NAME,
            IP_ONLY_V4,
        ]);
        let upstream_ca = dir.join("upstream-ca.pem");
        let (cert, key) = (dir.join("leaf.pem"), dir.join("leaf.key"));
        fs::write(&upstream_ca, &pki.ca_pem).expect("write upstream CA");
        fs::write(&cert, &pki.leaf_pem).expect("write leaf");
        fs::write(&key, &pki.leaf_key_pem).expect("write key");
        let (cert, key) = (path_str(&cert), path_str(&key));

        let inet = lab.inet.clone();
        let https = lab.listen(
            &inet,
            "inet-https",
            &[
                "--banner",
                UPSTREAM_BANNER,
                "--http",
                "--tls",
                &cert,
                &key,
                "--tcp",
                "443",
            ],
        );
        let http = lab.listen(
            &inet,
            "inet-http",
            &["--banner", UPSTREAM_BANNER, "--http", "--tcp", "80"],
        );
        let tripwires = lab.listen(
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
        );
        let zone = format!("{CDN_NAME}={CDN_V4}");
        let resolver = lab.start_lab_py(
            &inet,
            "inet-resolver",
            "resolver",
            &["--port", &RESOLVER_PORT.to_string(), "--zone", &zone],
        );

        seal_gw_resolver(&lab.gw);
        let hosts = dir.join("hosts");
        fs::write(
            &hosts,
            format!(
                "# The lab's DNS: read by the proxy's lookups and its sandbox DNS.\n\
                 {OPENAI_V4} {OPENAI_NAME}\n\
                 {ANTHROPIC_V4} {ANTHROPIC_NAME}\n\
                 {CHATGPT_V4} {CHATGPT_NAME}\n\
                 {METADATA_V4} {METADATA_NAME}\n"
            ),
        )
        .expect("write hosts file");
        let proxy_log = dir.join("proxy.log");
        let blocked_log = dir.join("blocked.log");
        let ca_dir = dir.join("ca");
        let log = fs::File::create(&proxy_log).expect("proxy log");
        let mut proxy = Command::new("ip");
        proxy.args(["netns", "exec", &lab.gw]);
        if let ProxyUser::Uid(uid) = user {
            // The proxy writes its CA and blocked log here; the agent later
            // reads the CA, so the directories stay world-traversable.
            use std::os::unix::fs::PermissionsExt;
            for d in [lab.dir.path(), dir.as_path()] {
                fs::set_permissions(d, fs::Permissions::from_mode(0o755)).expect("chmod lab dir");
            }
            std::os::unix::fs::chown(&dir, Some(uid), Some(uid)).expect("chown gw dir");
            proxy.args([
                "setpriv",
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ]);
        }
        proxy
            .arg(env!("CARGO_BIN_EXE_paude-proxy"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &dir)
            .env("NO_COLOR", "1")
            .env("PAUDE_PROXY_VERBOSE", "1")
            .env("PAUDE_PROXY_LISTEN", format!(":{EXPLICIT_PORT}"))
            .env(
                "PAUDE_PROXY_TRANSPARENT_LISTEN",
                format!(":{TRANSPARENT_PORT}"),
            )
            .env("PAUDE_PROXY_DNS_LISTEN", format!(":{DNS_PORT}"))
            .env(
                "PAUDE_PROXY_DNS_UPSTREAM",
                format!("{INET_V4}:{RESOLVER_PORT}"),
            )
            .env("PAUDE_PROXY_HOSTS_FILE", &hosts)
            .env("PAUDE_PROXY_CA_DIR", &ca_dir)
            .env("PAUDE_PROXY_UPSTREAM_CA", &upstream_ca)
            // TEST-NET ranges are not in the SSRF list today; exempting exactly
            // the inet ranges keeps the lab working if they ever are, while
            // 169.254.169.254 stays guarded.
            .env(
                "PAUDE_PROXY_ALLOWED_UPSTREAM_NETS",
                "192.0.2.0/24,203.0.113.0/24",
            )
            .env("BLOCKED_LOG_PATH", &blocked_log)
            .env(
                "ALLOWED_DOMAINS",
                format!("{OPENAI_NAME},{ANTHROPIC_NAME},{CHATGPT_NAME},{CDN_NAME},{METADATA_NAME},{IP_ONLY_V4}"),
            )
            .env("OPENAI_API_KEY", OPENAI_SECRET)
            .env("ANTHROPIC_API_KEY", ANTHROPIC_SECRET)
            .envs(extra_env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log);
        let mut child = proxy.spawn().expect("spawn paude-proxy in gw");
        let deadline = Instant::now() + PROXY_READY_TIMEOUT;
        loop {
            let text = fs::read_to_string(&proxy_log).unwrap_or_default();
            if ["explicit", "transparent", "dns"]
                .iter()
                .all(|role| text.contains(&format!("listening role={role} addr=")))
            {
                break;
            }
            if let Some(status) = child.try_wait().expect("try_wait") {
                panic!("paude-proxy exited early ({status}):\n{text}");
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("paude-proxy not listening within {PROXY_READY_TIMEOUT:?}:\n{text}");
            }
            thread::sleep(POLL);
        }
        lab.adopt(child);
        lab.ca = ca_dir.join("ca.crt");
        assert!(
            lab.ca.exists(),
            "the proxy made no CA in {}",
            ca_dir.display()
        );
        Gateway {
            https,
            http,
            tripwires,
            resolver,
            proxy_log,
            blocked_log,
        }
    }

    pub fn proxy_log(&self) -> String {
        fs::read_to_string(&self.proxy_log).unwrap_or_default()
    }

    pub fn blocked_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.blocked_log)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Waits for a blocked-log line from CLIENT that contains every piece of
    /// WHAT (the line is written as the denial happens, which may be a moment
    /// after the client saw it); fails with the whole log otherwise.
    pub fn expect_blocked(&self, client: &str, what: &[&str]) -> String {
        let deadline = Instant::now() + BLOCKED_LOG_TIMEOUT;
        loop {
            let lines = self.blocked_lines();
            if let Some(line) = lines.iter().find(|l| {
                l.contains(&format!(" UTC {client} TCP_DENIED/403 "))
                    && l.ends_with(" BLOCKED")
                    && what.iter().all(|w| l.contains(w))
            }) {
                return line.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no blocked-log line from {client} with {what:?}; blocked log:\n{}\nproxy log tail:\n{}",
                lines.join("\n"),
                tail(&self.proxy_log())
            );
            thread::sleep(POLL);
        }
    }

    /// Requests the HTTPS upstream received on address LOCAL.
    pub fn https_at(&self, local: &str) -> Vec<Value> {
        at(&self.https, local)
    }

    pub fn http_at(&self, local: &str) -> Vec<Value> {
        at(&self.http, local)
    }

    /// The secrets appear nowhere except in the header of a request that
    /// reached the address its name maps to, under that name's SNI. Also
    /// scans OUTPUTS (what agents printed).
    pub fn assert_no_leaks(&self, outputs: &[&str]) {
        let secrets = [OPENAI_SECRET, ANTHROPIC_SECRET];
        let check = |what: &str, text: &str| {
            for s in secrets {
                assert!(!text.contains(s), "secret leaked into {what}:\n{text}");
            }
        };
        check("the proxy log", &self.proxy_log());
        check("the blocked log", &self.blocked_lines().join("\n"));
        for (what, l) in [
            ("the plain-HTTP upstream", &self.http),
            ("the tripwires", &self.tripwires),
            ("the resolver", &self.resolver),
        ] {
            check(what, &fs::read_to_string(&l.log).unwrap_or_default());
        }
        for out in outputs {
            check("agent output", out);
        }
        for event in self.https.events() {
            let text = event.to_string();
            let own = |secret: &str, name: &str, addr: &str| {
                !text.contains(secret) || (event["sni"] == name && event["local"] == addr)
            };
            assert!(
                own(OPENAI_SECRET, OPENAI_NAME, OPENAI_V4)
                    && own(ANTHROPIC_SECRET, ANTHROPIC_NAME, ANTHROPIC_V4),
                "a secret reached an upstream it does not belong to: {event:#}"
            );
        }
    }
}

fn at(listener: &Listener, local: &str) -> Vec<Value> {
    listener
        .events()
        .into_iter()
        .filter(|e| e["local"] == local)
        .collect()
}

/// Values of header NAME (any case) in a recorded request.
pub fn header(event: &Value, name: &str) -> Vec<String> {
    event["head"]
        .as_str()
        .unwrap_or("")
        .split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_string())
        .collect()
}

/// The request line of a recorded request.
pub fn request_line(event: &Value) -> String {
    event["head"]
        .as_str()
        .unwrap_or("")
        .split("\r\n")
        .next()
        .unwrap_or("")
        .to_string()
}

fn add_inet_hosts(lab: &Lab) {
    for addr in [
        OPENAI_V4,
        ANTHROPIC_V4,
        CHATGPT_V4,
        CDN_V4,
        IP_ONLY_V4,
        EVIL_V4,
    ] {
        must(&mut cmd(
            "ip",
            &[
                "-n",
                &lab.inet,
                "addr",
                "add",
                &format!("{addr}/32"),
                "dev",
                "lo",
            ],
        ));
    }
}

/// `ip netns exec <gw>` bind-mounts these over /etc: the proxy's system
/// resolver then has nowhere to go but gw's own loopback.
fn seal_gw_resolver(gw: &str) {
    let etc = PathBuf::from(format!("/etc/netns/{gw}"));
    fs::create_dir_all(&etc).expect("create /etc/netns/<gw>");
    fs::write(
        etc.join("resolv.conf"),
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )
    .expect("write gw resolv.conf");
    fs::write(etc.join("hosts"), "127.0.0.1 localhost\n::1 localhost\n").expect("write gw hosts");
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The last lines of a log, for failure messages.
pub fn tail(text: &str) -> String {
    const TAIL_LINES: usize = 40;
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
}
