//! `paude-proxy healthcheck`: asks the admin listener's `/healthz` and exits 0 on `200`,
//! so a container HEALTHCHECK needs no curl in the image.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::{Args, ConfigError, ListenAddr, parse_listen};

/// Connect, write and read each get this long: a healthy proxy answers in milliseconds, and
/// an orchestrator's own probe timeout (often 30 s) must not be the first to fire.
const HEALTHCHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The status line is all we read.
const MAX_STATUS_LINE: usize = 256;

/// Why the check failed, with exit status 1 (unhealthy), as HEALTHCHECK expects.
#[derive(Debug)]
pub struct Unhealthy(pub String);

pub fn run(args: &Args) -> Result<Result<(), Unhealthy>, ConfigError> {
    let raw = args.admin_listen.as_deref().map(str::trim).unwrap_or("");
    if raw.is_empty() {
        return Err(ConfigError {
            var: "PAUDE_PROXY_ADMIN_LISTEN",
            value: String::new(),
            problem: "healthcheck needs the admin listener, e.g. 127.0.0.1:9090".into(),
        });
    }
    let addr = match parse_listen("PAUDE_PROXY_ADMIN_LISTEN", raw)? {
        ListenAddr::AllInterfaces(port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        ListenAddr::Addr(a) if a.ip().is_unspecified() => {
            let ip = match a.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            };
            SocketAddr::new(ip, a.port())
        }
        ListenAddr::Addr(a) => a,
    };
    Ok(probe(addr))
}

fn probe(addr: SocketAddr) -> Result<(), Unhealthy> {
    let fail = |what: &str, e: std::io::Error| Unhealthy(format!("{what} {addr}: {e}"));
    let mut stream =
        TcpStream::connect_timeout(&addr, HEALTHCHECK_TIMEOUT).map_err(|e| fail("connect", e))?;
    stream
        .set_read_timeout(Some(HEALTHCHECK_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HEALTHCHECK_TIMEOUT)))
        .map_err(|e| fail("configure", e))?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| fail("write to", e))?;
    let mut buf = [0u8; MAX_STATUS_LINE];
    let mut len = 0;
    while len < buf.len() && !buf[..len].contains(&b'\n') {
        match stream.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(fail("read from", e)),
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let status = head.lines().next().unwrap_or("").trim();
    if status.starts_with("HTTP/1.1 200 ") || status == "HTTP/1.1 200" {
        Ok(())
    } else {
        Err(Unhealthy(format!(
            "{addr}/healthz answered {:?}",
            status
                .chars()
                .filter(|c| !c.is_control())
                .collect::<String>()
        )))
    }
}
