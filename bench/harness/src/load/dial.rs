//! Opening a TLS connection to the upstream: directly (direct and transparent peers) or
//! through an explicit proxy's CONNECT tunnel. The TLS session is never resumed, so every
//! new connection pays a full handshake, as a fresh client process would.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ClientConfig;
use rustls::RootCertStore;
use rustls::client::Resumption;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::timed;
use crate::args::Args;
use crate::crypto_provider;

/// Longest CONNECT answer head accepted.
const MAX_CONNECT_HEAD: usize = 8 * 1024;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H1,
    H2,
}

pub type Tls = TlsStream<TcpStream>;

#[derive(Clone)]
pub struct Dialer {
    /// The proxy (explicit mode) or the upstream itself.
    connect: SocketAddr,
    explicit_proxy: bool,
    /// `host:port` of the upstream, for CONNECT and `Host`.
    pub authority: String,
    sni: ServerName<'static>,
    h1: TlsConnector,
    h2: TlsConnector,
    /// The `Authorization` value the client sends: the real key when talking directly,
    /// the dummy one through a proxy.
    pub auth: String,
}

fn client_config(ca_file: &str, alpn: &[u8]) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).map_err(|e| format!("{ca_file}: {e}"))? {
        roots
            .add(cert.map_err(|e| format!("{ca_file}: {e}"))?)
            .map_err(|e| e.to_string())?;
    }
    let mut cfg = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

impl Dialer {
    /// Flags: `--connect ADDR` (upstream or transparent path) or `--proxy ADDR`;
    /// `--authority host:port`; `--ca FILE` (what the client trusts); `--auth VALUE`.
    pub fn from_args(args: &Args) -> Result<Dialer, String> {
        let (connect, explicit_proxy) = match (args.opt("proxy"), args.opt("connect")) {
            (Some(p), None) => (p, true),
            (None, Some(c)) => (c, false),
            _ => return Err("exactly one of --proxy and --connect is required".into()),
        };
        let connect = connect
            .parse()
            .map_err(|_| format!("bad address {connect}"))?;
        let authority = args.str("authority")?.to_owned();
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h);
        let sni = ServerName::try_from(host.to_owned()).map_err(|e| e.to_string())?;
        let ca = args.str("ca")?;
        Ok(Dialer {
            connect,
            explicit_proxy,
            sni,
            h1: TlsConnector::from(client_config(ca, b"http/1.1")?),
            h2: TlsConnector::from(client_config(ca, b"h2")?),
            auth: args.str("auth")?.to_owned(),
            authority,
        })
    }

    pub async fn open(&self, alpn: Alpn) -> io::Result<Tls> {
        let mut tcp = timed("TCP connect", TcpStream::connect(self.connect)).await?;
        tcp.set_nodelay(true)?;
        if self.explicit_proxy {
            timed("CONNECT", connect_tunnel(&mut tcp, &self.authority)).await?;
        }
        let connector = match alpn {
            Alpn::H1 => &self.h1,
            Alpn::H2 => &self.h2,
        };
        let tls = timed("TLS handshake", connector.connect(self.sni.clone(), tcp)).await?;
        let want: &[u8] = match alpn {
            Alpn::H1 => b"http/1.1",
            Alpn::H2 => b"h2",
        };
        // A peer that ignored ALPN would be measured on the wrong protocol.
        if alpn == Alpn::H2 && tls.get_ref().1.alpn_protocol() != Some(want) {
            return Err(io::Error::other("peer did not negotiate h2"));
        }
        Ok(tls)
    }
}

/// Sends CONNECT and reads the answer head byte-exactly: nothing after the blank line may
/// be consumed, it belongs to the TLS stream.
async fn connect_tunnel(tcp: &mut TcpStream, authority: &str) -> io::Result<()> {
    let req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 512];
    loop {
        // Peek, then consume only up to the end of the head.
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "proxy closed during CONNECT",
            ));
        }
        let before = head.len();
        head.extend_from_slice(&buf[..n]);
        let end = head.windows(4).position(|w| w == b"\r\n\r\n");
        let take = match end {
            Some(pos) => pos + 4 - before,
            None => n,
        };
        let mut sink = vec![0u8; take];
        tcp.read_exact(&mut sink).await?;
        if let Some(pos) = end {
            head.truncate(pos + 4);
            break;
        }
        if head.len() > MAX_CONNECT_HEAD {
            return Err(io::Error::other("CONNECT answer head too large"));
        }
    }
    let status_ok = head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200");
    if !status_ok {
        let line = String::from_utf8_lossy(&head);
        let line = line.lines().next().unwrap_or("");
        return Err(io::Error::other(format!("CONNECT refused: {line}")));
    }
    Ok(())
}
