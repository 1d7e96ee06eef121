//! Real git through the proxy (issue 12): `git clone` over HTTPS from a local smart-HTTP
//! server (`git http-backend` behind a small python TLS server on loopback) is allowed, while
//! `git push` is refused by the `git-receive-pack` rule and never reaches the server.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustls_pki_types::PrivateKeyDer;
use support::pki::TestCa;
use support::proxy::ProxyBuilder;
use support::secrets::base64;

const NO_PUSH: &str = r#"
[[rule]]
id = "no-push"
hosts = ["github.com"]
paths = ["/**/git-receive-pack", "/**/info/refs?service=git-receive-pack"]
action = "deny"
reason = "pushing from the sandbox is not allowed"
"#;

/// A CGI bridge: every request runs `git http-backend` with the CGI variables it needs.
/// Each request line is appended to `access.log` so the test sees what arrived.
const SERVER_PY: &str = r#"
import http.server, os, ssl, subprocess, sys
root, cert, key, log = sys.argv[1:5]
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def handle_one(self):
        with open(log, "a") as f:
            f.write(f"{self.command} {self.path}\n")
        path, _, query = self.path.partition("?")
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                body += self.rfile.read(size)
                self.rfile.readline()
        env = dict(os.environ, GIT_PROJECT_ROOT=root, GIT_HTTP_EXPORT_ALL="1",
                   PATH_INFO=path, QUERY_STRING=query, REQUEST_METHOD=self.command,
                   CONTENT_TYPE=self.headers.get("Content-Type", ""),
                   CONTENT_LENGTH=str(len(body)), REMOTE_USER="test", REMOTE_ADDR="127.0.0.1",
                   HTTP_CONTENT_ENCODING=self.headers.get("Content-Encoding", ""),
                   GIT_PROTOCOL=self.headers.get("Git-Protocol", ""))
        out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for line in head.decode().split("\r\n"):
            k, _, v = line.partition(":")
            if k.lower() == "status":
                status = int(v.strip().split()[0])
            elif k:
                headers.append((k, v.strip()))
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    do_GET = do_POST = handle_one
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

fn git(dir: &Path, args: &[&str], env: &[(&str, String)]) -> std::process::Output {
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args(args)
        .env_remove("HTTPS_PROXY")
        .env_remove("HTTP_PROXY")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run git")
}

fn must(out: std::process::Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_clone_is_allowed_and_git_push_is_refused_by_rule() {
    if Command::new("git").arg("--version").output().is_err() {
        panic!("git is required for this test (apt-get install git)");
    }
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // A bare repository with one commit, served by http-backend (push enabled server-side,
    // so only the proxy can be what stops it).
    must(git(w, &["init", "-q", "-b", "main", "seed"], &[]), "init");
    std::fs::write(w.join("seed/README"), "hello\n").unwrap();
    must(git(&w.join("seed"), &["add", "README"], &[]), "add");
    must(
        git(&w.join("seed"), &["commit", "-qm", "one"], &[]),
        "commit",
    );
    std::fs::create_dir(w.join("srv")).unwrap();
    must(
        git(w, &["clone", "-q", "--bare", "seed", "srv/repo.git"], &[]),
        "bare",
    );
    must(
        git(
            &w.join("srv/repo.git"),
            &["config", "http.receivepack", "true"],
            &[],
        ),
        "receivepack",
    );
    let before = must(
        git(&w.join("srv/repo.git"), &["rev-parse", "main"], &[]),
        "rev",
    );

    let ca = TestCa::new("git test CA");
    let leaf = ca.leaf(&["github.com"]);
    std::fs::write(w.join("cert.pem"), pem("CERTIFICATE", &leaf.cert_der)).unwrap();
    let PrivateKeyDer::Pkcs8(key) = leaf.key_der() else {
        panic!("pkcs8 key");
    };
    std::fs::write(
        w.join("key.pem"),
        pem("PRIVATE KEY", key.secret_pkcs8_der()),
    )
    .unwrap();
    std::fs::write(w.join("server.py"), SERVER_PY).unwrap();
    let log = w.join("access.log");
    let mut child = Command::new("python3")
        .arg(w.join("server.py"))
        .arg(w.join("srv"))
        .arg(w.join("cert.pem"))
        .arg(w.join("key.pem"))
        .arg(&log)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let _server = Server(child);
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while line.trim().is_empty() && Instant::now() < deadline {
        std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    }
    let port: u16 = line.trim().parse().expect("server port");

    let builder = ProxyBuilder::new().trust(&ca).allow_port(port);
    let policy = builder.write_file("policy.toml", NO_PUSH);
    let proxy = builder
        .env("PAUDE_PROXY_POLICY", policy.display().to_string())
        .spawn();
    let env = [
        ("HTTPS_PROXY", proxy.url()),
        ("GIT_SSL_CAINFO", proxy.ca_cert_path().display().to_string()),
    ];
    let url = format!("https://github.com:{port}/repo.git");
    must(
        git(w, &["clone", "-q", &url, "clone"], &env),
        "git clone through the proxy",
    );
    assert_eq!(
        std::fs::read_to_string(w.join("clone/README")).unwrap(),
        "hello\n"
    );

    std::fs::write(w.join("clone/README"), "changed\n").unwrap();
    must(
        git(&w.join("clone"), &["commit", "-qam", "two"], &[]),
        "commit",
    );
    let push = git(&w.join("clone"), &["push", "origin", "main"], &env);
    let err = String::from_utf8_lossy(&push.stderr).to_string();
    assert!(!push.status.success(), "push must fail: {err}");
    assert!(err.contains("403"), "git reports the 403: {err}");

    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains("git-upload-pack"),
        "the clone reached the server: {seen}"
    );
    assert!(
        !seen.contains("receive-pack"),
        "nothing of the push reached the server: {seen}"
    );
    let after = must(
        git(&w.join("srv/repo.git"), &["rev-parse", "main"], &[]),
        "rev",
    );
    assert_eq!(before, after, "the server's branch is unchanged");
    let blocked = proxy.wait_blocked_lines(1);
    assert!(
        blocked[0].contains(&format!(
            "GET https://github.com:{port}/repo.git/info/refs?service=git-receive-pack BLOCKED"
        )),
        "{blocked:?}"
    );
}
