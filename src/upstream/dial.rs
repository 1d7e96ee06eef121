//! New upstream connections: TCP to the approved addresses in Happy Eyeballs order
//! (RFC 8305), verified TLS, then HTTP/2 or HTTP/1.1 as ALPN says.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_rustls::TlsConnector;
use tokio_util::task::TaskTracker;

use super::{H2_STREAM_WINDOW, H2_UPSTREAM_CONNECTION_WINDOW, Scheme};
use crate::body::Body;
use crate::error::{ProxyError, io_chain};
use crate::policy::Target;

/// All connection attempts together must succeed within this; then it is a 502.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// RFC 8305 §5 recommends 250 ms between attempts: long enough for a healthy first
/// address to win, short enough that a dead one costs little.
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);
const UPSTREAM_TLS_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) enum Sender {
    H1(http1::SendRequest<Body>),
    /// Shared: every user clones the handle and the connection stays in the pool.
    H2(http2::SendRequest<Body>),
}

impl Sender {
    pub(super) fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }
}

/// Addresses in the order to try them: families alternate, starting with the family of
/// the first address the resolver returned (RFC 8305 §4).
pub fn happy_eyeballs_order(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (mut same, mut other): (Vec<_>, Vec<_>) =
        addrs.iter().partition(|a| a.is_ipv6() == first.is_ipv6());
    same.reverse();
    other.reverse();
    let mut out = Vec::with_capacity(addrs.len());
    while let Some(a) = same.pop() {
        out.push(a);
        if let Some(b) = other.pop() {
            out.push(b);
        }
    }
    out.extend(other.into_iter().rev());
    out
}

/// The first address that accepts a TCP connection. A new attempt starts every
/// [`ATTEMPT_DELAY`] or as soon as the previous one fails; the losers are dropped.
pub(super) async fn connect_tcp(target: &Target) -> Result<TcpStream, ProxyError> {
    let order = happy_eyeballs_order(&target.socket_addrs().collect::<Vec<_>>());
    let conn_err = |detail: String| ProxyError::Connect {
        target: format!("{} ({target})", target.host.with_port(target.port())),
        detail,
    };
    let mut failures: Vec<String> = Vec::new();
    let mut attempts = JoinSet::new();
    let mut next = order.iter().copied();
    let deadline = tokio::time::sleep(CONNECT_TIMEOUT);
    tokio::pin!(deadline);
    loop {
        if attempts.is_empty() {
            match next.next() {
                Some(addr) => {
                    attempts.spawn(async move { (addr, TcpStream::connect(addr).await) });
                }
                None => {
                    return Err(conn_err(if failures.is_empty() {
                        "no address to connect to".into()
                    } else {
                        failures.join("; ")
                    }));
                }
            }
        }
        tokio::select! {
            joined = attempts.join_next() => match joined {
                Some(Ok((_, Ok(tcp)))) => return Ok(tcp),
                Some(Ok((addr, Err(e)))) => failures.push(format!("{addr}: {e}")),
                Some(Err(e)) => failures.push(format!("connect task failed: {e}")),
                None => {}
            },
            () = tokio::time::sleep(ATTEMPT_DELAY), if next.len() > 0 => {
                if let Some(addr) = next.next() {
                    attempts.spawn(async move { (addr, TcpStream::connect(addr).await) });
                }
            }
            () = &mut deadline => {
                failures.push(format!("no answer within {CONNECT_TIMEOUT:?}"));
                return Err(conn_err(failures.join("; ")));
            }
        }
    }
}

/// TCP, TLS (for https) and the HTTP handshake. The connection's driver task belongs to
/// `tasks`, so shutdown can wait for it.
pub(super) async fn dial(
    scheme: Scheme,
    target: &Target,
    tls: &TlsConnector,
    tasks: &TaskTracker,
) -> Result<Sender, ProxyError> {
    let tcp = connect_tcp(target).await?;
    let _ = tcp.set_nodelay(true);
    if scheme == Scheme::Http {
        return h1(TokioIo::new(tcp), &target.host.to_string(), tasks).await;
    }
    let tls_err = |detail: String| ProxyError::UpstreamTls {
        host: target.host.to_string(),
        detail,
    };
    let name = match target.host.ip() {
        Some(ip) => ServerName::IpAddress(ip.into()),
        None => ServerName::try_from(target.host.as_str().to_string())
            .map_err(|e| tls_err(e.to_string()))?,
    };
    let tls = tokio::time::timeout(UPSTREAM_TLS_TIMEOUT, tls.connect(name, tcp))
        .await
        .map_err(|_| tls_err(format!("no handshake within {UPSTREAM_TLS_TIMEOUT:?}")))?
        .map_err(|e| tls_err(io_chain(&e)))?;
    let is_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    if !is_h2 {
        return h1(io, &target.host.to_string(), tasks).await;
    }
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Larger stream windows: hyper's 64 KiB default caps a bulk download at one window
        // per round trip. Fixed rather than adaptive: BDP pings cost on small requests.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        // Every client of a host shares this connection. Its window is far above the sum of
        // the stream windows, so clients that stop reading can only fill their own streams'
        // windows and never starve the others (memory stays bounded by the stream windows).
        .initial_connection_window_size(H2_UPSTREAM_CONNECTION_WINDOW)
        .handshake(io)
        .await
        .map_err(|e| tls_err(crate::error::chain(&e)))?;
    let host = target.host.to_string();
    tasks.spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%host, "upstream h2 connection ended: {e}");
        }
    });
    Ok(Sender::H2(sender))
}

async fn h1<IO>(io: IO, host: &str, tasks: &TaskTracker) -> Result<Sender, ProxyError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (sender, conn) = http1::Builder::new()
        .handshake(io)
        .await
        .map_err(|e| ProxyError::upstream_http(&host, &e))?;
    let host = host.to_string();
    tasks.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%host, "upstream connection ended: {e}");
        }
    });
    Ok(Sender::H1(sender))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn families_alternate_starting_with_the_first() {
        let table: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["1.1.1.1:443"], &["1.1.1.1:443"]),
            (
                &[
                    "[::1]:443",
                    "[::2]:443",
                    "1.1.1.1:443",
                    "2.2.2.2:443",
                    "3.3.3.3:443",
                ],
                &[
                    "[::1]:443",
                    "1.1.1.1:443",
                    "[::2]:443",
                    "2.2.2.2:443",
                    "3.3.3.3:443",
                ],
            ),
            (
                &["1.1.1.1:443", "2.2.2.2:443", "[::1]:443"],
                &["1.1.1.1:443", "[::1]:443", "2.2.2.2:443"],
            ),
            (
                &["1.1.1.1:443", "[::1]:443", "[::2]:443", "[::3]:443"],
                &["1.1.1.1:443", "[::1]:443", "[::2]:443", "[::3]:443"],
            ),
        ];
        for (input, want) in table {
            let input: Vec<_> = input.iter().map(|s| a(s)).collect();
            let want: Vec<_> = want.iter().map(|s| a(s)).collect();
            assert_eq!(happy_eyeballs_order(&input), want, "{input:?}");
        }
    }

    #[tokio::test]
    async fn the_address_that_answers_wins() {
        // One address with nothing listening (refused at once on loopback), one that listens.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = listener.local_addr().unwrap();
        // Nothing listens on 127.0.0.2 at that port: the listener is bound to 127.0.0.1.
        let target = Target {
            host: crate::host::Host::parse("dual.test").unwrap(),
            port: good.port(),
            addrs: vec!["127.0.0.2".parse().unwrap(), good.ip()],
        };
        let tcp = connect_tcp(&target).await.expect("second address connects");
        assert_eq!(tcp.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn every_failure_is_named() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let target = Target {
            host: crate::host::Host::parse("dead.test").unwrap(),
            port: dead.port(),
            addrs: vec![dead.ip(), "127.0.0.3".parse().unwrap()],
        };
        let err = connect_tcp(&target).await.unwrap_err().to_string();
        assert!(err.contains(&format!("127.0.0.1:{}", dead.port())), "{err}");
        assert!(err.contains(&format!("127.0.0.3:{}", dead.port())), "{err}");
    }
}
