//! Launches the real `paude-proxy` binary with a clean environment, a private tempdir (CA dir,
//! hosts file, blocked log, upstream CA bundle) and captured stderr.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::pki::{TestCa, UPSTREAM_NAMES};
use super::secrets::assert_no_secret_in;

/// How long the proxy may take to print its listening line before the test fails.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a run that should exit on its own (config errors, --check-config) may take.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Poll interval while waiting for a file or a process; only affects latency, not results.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub const EXIT_CONFIG_ERROR: i32 = 64;

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_paude-proxy")
}

/// Removes ANSI colour sequences so assertions see plain text whatever the log formatter does.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Configuration for one proxy process. Defaults: listen on 127.0.0.1:0, verbose logs, every
/// name in `UPSTREAM_NAMES` mapped to 127.0.0.1, loopback exempt from the SSRF guard (tests
/// that exercise the guard remove it), and no credential at all.
pub struct ProxyBuilder {
    dir: TempDir,
    env: BTreeMap<String, String>,
    hosts: Vec<(String, IpAddr)>,
    args: Vec<String>,
    secrets: Vec<String>,
    otel_ports: Vec<u16>,
    upstream_cas: Vec<String>,
    wrapper: Vec<String>,
}

impl Default for ProxyBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl ProxyBuilder {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("proxy tempdir");
        let mut env = BTreeMap::new();
        let mut set = |k: &str, v: String| {
            env.insert(k.to_owned(), v);
        };
        set(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/bin:/bin".into()),
        );
        set("HOME", dir.path().display().to_string());
        set("NO_COLOR", "1".into());
        set("PAUDE_PROXY_LISTEN", "127.0.0.1:0".into());
        set("PAUDE_PROXY_VERBOSE", "1".into());
        set(
            "PAUDE_PROXY_CA_DIR",
            dir.path().join("ca").display().to_string(),
        );
        set(
            "BLOCKED_LOG_PATH",
            dir.path().join("blocked.log").display().to_string(),
        );
        set(
            "PAUDE_PROXY_HOSTS_FILE",
            dir.path().join("hosts").display().to_string(),
        );
        set("PAUDE_PROXY_ALLOWED_UPSTREAM_NETS", "127.0.0.0/8".into());
        let hosts = UPSTREAM_NAMES
            .iter()
            .filter(|n| n.parse::<IpAddr>().is_err())
            .map(|n| (n.to_string(), IpAddr::V4(Ipv4Addr::LOCALHOST)))
            .collect();
        ProxyBuilder {
            dir,
            env,
            hosts,
            args: Vec::new(),
            secrets: Vec::new(),
            otel_ports: Vec::new(),
            upstream_cas: Vec::new(),
            wrapper: Vec::new(),
        }
    }

    /// Runs the binary through `program` (its path and arguments are appended), e.g.
    /// `["/bin/bash", "-c", "ulimit -n 128 && exec \"$0\" \"$@\""]` for a low descriptor
    /// limit. The wrapper must `exec` the proxy, so signals and the pid reach it.
    pub fn wrap(mut self, program: &[&str]) -> Self {
        self.wrapper = program.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_owned(), value.into());
        self
    }

    pub fn remove_env(mut self, key: &str) -> Self {
        self.env.remove(key);
        self
    }

    /// Sets a credential env var and remembers its value for the leak check.
    pub fn secret(mut self, key: &str, value: &str) -> Self {
        self.secrets.push(value.to_owned());
        self.env(key, value)
    }

    /// Adds `ca` to the PEM bundle passed as PAUDE_PROXY_UPSTREAM_CA.
    pub fn trust(mut self, ca: &TestCa) -> Self {
        self.upstream_cas.push(ca.cert_pem().to_owned());
        self
    }

    /// Adds a port to ALLOWED_OTEL_PORTS (test upstreams listen on random ports).
    pub fn allow_port(mut self, port: u16) -> Self {
        self.otel_ports.push(port);
        self
    }

    pub fn host(mut self, name: &str, ip: IpAddr) -> Self {
        self.hosts.push((name.to_owned(), ip));
        self
    }

    /// Uses `dir` as PAUDE_PROXY_CA_DIR, e.g. to restart a proxy on the same CA.
    pub fn ca_dir(self, dir: &Path) -> Self {
        let value = dir.display().to_string();
        self.env("PAUDE_PROXY_CA_DIR", value)
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    /// Writes a file into the proxy's tempdir and returns its path (for JSON configs etc.).
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }

    fn command(&mut self) -> Command {
        let hosts: String = self
            .hosts
            .iter()
            .map(|(name, ip)| format!("{ip} {name}\n"))
            .collect();
        std::fs::write(self.dir.path().join("hosts"), hosts).expect("write hosts file");
        if !self.upstream_cas.is_empty() {
            let path = self.write_file("upstream-ca.pem", &self.upstream_cas.concat());
            self.env
                .insert("PAUDE_PROXY_UPSTREAM_CA".into(), path.display().to_string());
        }
        if !self.otel_ports.is_empty() {
            let ports: Vec<String> = self.otel_ports.iter().map(u16::to_string).collect();
            self.env
                .insert("ALLOWED_OTEL_PORTS".into(), ports.join(","));
        }
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(binary());
                cmd
            }
            None => Command::new(binary()),
        };
        cmd.env_clear()
            .envs(&self.env)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    }

    /// Starts the proxy and waits for `listening role=explicit addr=...` on stderr.
    pub fn spawn(mut self) -> Proxy {
        let mut child = self.command().spawn().expect("spawn paude-proxy");
        let stderr_pipe = child.stderr.take().expect("stderr pipe");
        let stdout_pipe = child.stdout.take().expect("stdout pipe");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (line_tx, line_rx) = mpsc::channel::<String>();
        let reader = {
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr_pipe).lines() {
                    let Ok(line) = line else { break };
                    let line = strip_ansi(&line);
                    {
                        let mut buf = stderr.lock().expect("stderr lock");
                        buf.push_str(&line);
                        buf.push('\n');
                    }
                    let _ = line_tx.send(line);
                }
            })
        };
        let stdout = Arc::new(Mutex::new(String::new()));
        let stdout_reader = {
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                let mut text = String::new();
                let _ = BufReader::new(stdout_pipe).read_to_string(&mut text);
                stdout
                    .lock()
                    .expect("stdout lock")
                    .push_str(&strip_ansi(&text));
            })
        };

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let addr = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match line_rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = parse_listening(&line) {
                        break addr;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let _ = reader.join();
                    panic!(
                        "proxy did not print its listening line (exit: {status:?}); stderr:\n{}",
                        stderr.lock().expect("stderr lock")
                    );
                }
            }
        };
        // Keep draining stderr lines; the reader thread already appends them to the buffer.
        drop(line_rx);

        let ca_dir = PathBuf::from(&self.env["PAUDE_PROXY_CA_DIR"]);
        let blocked_log = PathBuf::from(&self.env["BLOCKED_LOG_PATH"]);
        Proxy {
            child: Some(child),
            addr,
            dir: self.dir,
            ca_dir,
            blocked_log,
            stderr,
            stdout,
            readers: vec![reader, stdout_reader],
            secrets: self.secrets,
            leak_checked: false,
        }
    }

    /// Runs the binary expecting it to exit by itself (config errors, `--check-config`,
    /// `--help`). Fails the test if it is still running after EXIT_TIMEOUT.
    pub fn run_to_exit(mut self) -> Exited {
        let mut child = self.command().spawn().expect("spawn paude-proxy");
        let mut out_pipe = child.stdout.take().expect("stdout");
        let mut err_pipe = child.stderr.take().expect("stderr");
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out_pipe.read_to_string(&mut s);
            s
        });
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err_pipe.read_to_string(&mut s);
            s
        });
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let stderr = err.join().unwrap_or_default();
                panic!("proxy did not exit by itself; stderr:\n{stderr}");
            }
            std::thread::sleep(POLL_INTERVAL);
        };
        let exited = Exited {
            code: status.code(),
            stdout: strip_ansi(&out.join().unwrap_or_default()),
            stderr: strip_ansi(&err.join().unwrap_or_default()),
        };
        assert_no_secret_in("stderr", &exited.stderr, &self.secrets);
        assert_no_secret_in("stdout", &exited.stdout, &self.secrets);
        exited
    }
}

/// The value of one sample (`name{labels}` exactly as rendered) in a /metrics text.
pub fn metric_value(metrics: &str, sample: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {sample} in /metrics:\n{metrics}"))
}

/// Extracts the address from a `listening role=explicit addr=IP:PORT` log line.
pub fn parse_listening(line: &str) -> Option<SocketAddr> {
    let rest = line.split("listening role=explicit addr=").nth(1)?;
    let token = rest.split_whitespace().next()?;
    token.trim_matches(|c| c == '"' || c == ',').parse().ok()
}

#[derive(Debug)]
pub struct Exited {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// A running proxy. Dropping it kills the process; if the test has not panicked, drop also
/// runs the secret-leak check over everything the proxy wrote.
pub struct Proxy {
    child: Option<Child>,
    addr: SocketAddr,
    dir: TempDir,
    ca_dir: PathBuf,
    blocked_log: PathBuf,
    stderr: Arc<Mutex<String>>,
    stdout: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    secrets: Vec<String>,
    leak_checked: bool,
}

impl Proxy {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether the process is still alive.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://127.0.0.1:PORT`, for curl's `-x`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn ca_dir(&self) -> &Path {
        &self.ca_dir
    }

    pub fn ca_cert_path(&self) -> PathBuf {
        self.ca_dir.join("ca.crt")
    }

    pub fn ca_cert_pem(&self) -> String {
        std::fs::read_to_string(self.ca_cert_path()).expect("read proxy ca.crt")
    }

    pub fn ca_key_pem(&self) -> String {
        std::fs::read_to_string(self.ca_dir.join("ca.key")).expect("read proxy ca.key")
    }

    /// Snapshot of stderr so far (ANSI stripped).
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr lock").clone()
    }

    pub fn blocked_log(&self) -> String {
        std::fs::read_to_string(&self.blocked_log).unwrap_or_default()
    }

    pub fn blocked_log_path(&self) -> &Path {
        &self.blocked_log
    }

    /// Waits until the blocked log has at least `n` lines and returns them. The proxy may write
    /// the line just after answering, so a test polls instead of reading once.
    pub fn wait_blocked_lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + super::IO_TIMEOUT;
        loop {
            let lines: Vec<String> = self.blocked_log().lines().map(str::to_owned).collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "blocked log has {} lines, expected {n}:\n{}",
                lines.len(),
                self.blocked_log()
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits until stderr contains `needle`, returning the whole stderr.
    pub fn wait_stderr_contains(&self, needle: &str) -> String {
        let deadline = Instant::now() + super::IO_TIMEOUT;
        loop {
            let text = self.stderr();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never contained {needle:?}:\n{text}"
            );
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The process id (to send it signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("proxy still owned").id()
    }

    /// Sends signal `name` (`TERM`, `HUP`, ...) to the proxy with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} failed: {status}");
    }

    /// Waits up to `limit` for the process to exit by itself; `None` if it is still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut().expect("proxy still owned");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The address of listener `role` (`admin`, `transparent`, `dns`) from its log line.
    pub fn role_addr(&self, role: &str) -> SocketAddr {
        let needle = format!("listening role={role} addr=");
        let stderr = self.wait_stderr_contains(&needle);
        stderr
            .lines()
            .find_map(|l| l.split(&needle).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.trim_matches(|c| c == '"' || c == ',').parse().ok())
            .unwrap_or_else(|| panic!("no address in the {role} listening line:\n{stderr}"))
    }

    /// `GET /metrics` on the admin listener (`PAUDE_PROXY_ADMIN_LISTEN` must be set).
    pub fn metrics(&self) -> String {
        use std::io::Write;
        let admin = self.role_addr("admin");
        let mut tcp = std::net::TcpStream::connect_timeout(&admin, super::IO_TIMEOUT)
            .expect("connect to the admin listener");
        tcp.set_read_timeout(Some(super::IO_TIMEOUT))
            .expect("read timeout");
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .expect("write /metrics request");
        let mut text = String::new();
        tcp.read_to_string(&mut text).expect("read /metrics");
        assert!(text.starts_with("HTTP/1.1 200"), "/metrics: {text}");
        text
    }

    /// Lines of the proxy's stderr containing `needle`.
    pub fn count_stderr(&self, needle: &str) -> usize {
        self.stderr().lines().filter(|l| l.contains(needle)).count()
    }

    /// Kills the process and waits for all its output; returns the complete stderr.
    pub fn stop(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        self.stderr()
    }

    /// Stops the proxy and asserts that no secret appears in its stderr, stdout or blocked log.
    pub fn assert_no_secret_leaks(&mut self) {
        let stderr = self.stop();
        let stdout = self.stdout.lock().expect("stdout lock").clone();
        assert_no_secret_in("proxy stderr", &stderr, &self.secrets);
        assert_no_secret_in("proxy stdout", &stdout, &self.secrets);
        assert_no_secret_in("blocked log", &self.blocked_log(), &self.secrets);
        self.leak_checked = true;
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if !self.leak_checked && !std::thread::panicking() {
            self.assert_no_secret_leaks();
        } else {
            self.stop();
        }
    }
}

/// Asserts one squid-format blocked-log line:
/// `<YYYY-MM-DDTHH:MM:SS> <TZ> <client-ip> TCP_DENIED/403 <METHOD> <host:port or URL> BLOCKED`.
pub fn assert_blocked_line(line: &str, client: &str, method: &str, target: &str) {
    let re = regex::Regex::new(
        r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2} [A-Za-z]+ (\S+) TCP_DENIED/403 (\S+) (\S+) BLOCKED$",
    )
    .expect("blocked-line regex");
    let caps = re
        .captures(line)
        .unwrap_or_else(|| panic!("not a squid blocked-log line: {line:?}"));
    assert_eq!(&caps[1], client, "client ip in {line:?}");
    assert_eq!(&caps[2], method, "method in {line:?}");
    assert_eq!(&caps[3], target, "target in {line:?}");
}

/// A port that was free a moment ago (bind :0, read, release), for tests that must know the
/// proxy's port before it starts. Another process could grab it in between; the window is tiny.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("probe free port")
        .port()
}
