//! Clients that talk to the proxy: curl (the reference client, run as a real process) and a
//! Rust client (CONNECT tunnel + rustls trusting the proxy CA + hyper) for what curl cannot
//! do: several requests on one tunnel, streamed bodies checked by sha256, raw bytes.

use std::net::SocketAddr;
use std::path::PathBuf;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::IO_TIMEOUT;
use super::body::{BodyDigest, TestBody};
use super::pki;
use super::proxy::Proxy;

/// Upper bound on a response head the harness will read, so a broken proxy cannot make the
/// test allocate without limit.
const MAX_HEAD: usize = 64 * 1024;
/// Curl's own overall limit, passed as --max-time; curl fails instead of hanging.
const CURL_MAX_TIME_SECS: &str = "60";

/// Awaits `fut`, failing the test (instead of hanging) after IO_TIMEOUT.
pub async fn timeout<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

// ---------------------------------------------------------------------------------------------
// curl

/// One curl invocation through the proxy: `-x http://127.0.0.1:P --cacert <proxy ca.crt>`.
pub struct Curl {
    args: Vec<String>,
    url: String,
    tmp: tempfile::TempDir,
}

#[derive(Debug)]
pub struct CurlResult {
    /// curl's exit code (0 = transfer ok; 56 = e.g. CONNECT refused).
    pub exit_code: i32,
    /// Final response status (0 if none).
    pub http_code: u16,
    /// Status of the proxy's answer to CONNECT (0 if no CONNECT was made).
    pub connect_code: u16,
    /// HTTP version of the final response as curl reports it: "1.1", "2", ... ("0" if none).
    pub http_version: String,
    /// Raw header dump of every response (CONNECT answer included), as `-D` writes it.
    pub header_dump: String,
    pub body: Vec<u8>,
    pub stderr: String,
}

impl CurlResult {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Values of `name` in the final response's headers.
    pub fn header(&self, name: &str) -> Vec<String> {
        let last_block = self
            .header_dump
            .split("\r\n\r\n")
            .filter(|b| !b.trim().is_empty())
            .last()
            .unwrap_or("");
        last_block
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
            .collect()
    }
}

impl Curl {
    pub fn new(proxy: &Proxy, url: &str) -> Self {
        let ca = proxy.ca_cert_path().display().to_string();
        let args = vec!["-x".into(), proxy.url(), "--cacert".into(), ca];
        Curl {
            args,
            url: url.to_owned(),
            tmp: tempfile::tempdir().expect("curl tempdir"),
        }
    }

    pub fn header(mut self, line: &str) -> Self {
        self.args.push("-H".into());
        self.args.push(line.to_owned());
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.args.push("-X".into());
        self.args.push(method.to_owned());
        self
    }

    pub fn data(mut self, data: &str) -> Self {
        self.args.push("--data-binary".into());
        self.args.push(data.to_owned());
        self
    }

    pub fn arg(mut self, arg: &str) -> Self {
        self.args.push(arg.to_owned());
        self
    }

    pub async fn run(self) -> CurlResult {
        tokio::task::spawn_blocking(move || self.run_blocking())
            .await
            .expect("curl task")
    }

    fn run_blocking(self) -> CurlResult {
        let headers: PathBuf = self.tmp.path().join("headers");
        let body: PathBuf = self.tmp.path().join("body");
        // -q first: ignore any ~/.curlrc. env_clear: no *_proxy variables from the developer.
        let output = std::process::Command::new("/usr/bin/curl")
            .env_clear()
            .arg("-q")
            .args(["-sS", "--max-time", CURL_MAX_TIME_SECS])
            .args(&self.args)
            .arg("-D")
            .arg(&headers)
            .arg("-o")
            .arg(&body)
            .args(["-w", "%{http_code} %{http_connect} %{http_version}"])
            .arg(&self.url)
            .output()
            .expect("run curl");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let mut written = stdout.split_whitespace();
        let mut code = || {
            written
                .next()
                .and_then(|c| c.parse::<u16>().ok())
                .unwrap_or(0)
        };
        let (http_code, connect_code) = (code(), code());
        CurlResult {
            exit_code: output.status.code().unwrap_or(-1),
            http_code,
            connect_code,
            http_version: stdout.split_whitespace().nth(2).unwrap_or("0").to_owned(),
            header_dump: std::fs::read_to_string(&headers).unwrap_or_default(),
            body: std::fs::read(&body).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// raw HTTP/1 over TCP

/// A response read off a raw stream (the proxy's own answers: 403, 400, 502, CONNECT 200).
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim().to_owned())
    }
}

/// Reads one response head byte by byte (so no bytes after it are consumed), then its body:
/// Content-Length bytes if given; none for a 2xx CONNECT answer; otherwise until EOF.
pub async fn read_response<S: AsyncRead + Unpin>(stream: &mut S, connect: bool) -> RawResponse {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        // A reset counts as end of stream: the caller sees status 0 and decides.
        let n = timeout("response head", stream.read(&mut byte))
            .await
            .unwrap_or(0);
        if n == 0 {
            break;
        }
        head.push(byte[0]);
        assert!(head.len() <= MAX_HEAD, "response head too large");
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut response = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    if connect && (200..300).contains(&status) {
        return response;
    }
    match response
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        Some(len) => {
            let mut body = vec![0u8; len];
            timeout("response body", stream.read_exact(&mut body))
                .await
                .expect("read response body");
            response.body = body;
        }
        None if status != 0 => {
            let _ = timeout(
                "response body to EOF",
                stream.read_to_end(&mut response.body),
            )
            .await;
        }
        None => {}
    }
    response
}

/// Opens a TCP connection to the proxy, writes `bytes`, and reads one response.
pub async fn raw_request(proxy: SocketAddr, bytes: &[u8]) -> RawResponse {
    let mut tcp = timeout("connect to proxy", TcpStream::connect(proxy))
        .await
        .expect("connect to proxy");
    // The proxy may close early on a bad request; what it answered is still read below.
    let _ = tcp.write_all(bytes).await;
    let connect = bytes.starts_with(b"CONNECT ");
    read_response(&mut tcp, connect).await
}

/// Sends `CONNECT authority` and returns the stream if the proxy answered 2xx, else the answer.
pub async fn connect_tunnel(proxy: SocketAddr, authority: &str) -> Result<TcpStream, RawResponse> {
    let mut tcp = timeout("connect to proxy", TcpStream::connect(proxy))
        .await
        .expect("connect to proxy");
    let request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .expect("write CONNECT");
    let response = read_response(&mut tcp, true).await;
    if (200..300).contains(&response.status) {
        Ok(tcp)
    } else {
        Err(response)
    }
}

/// TLS over an established tunnel, verifying the proxy-minted leaf for `host` against the
/// proxy's CA only.
pub async fn tls_over<S>(
    stream: S,
    host: &str,
    ca_pem: &str,
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let connector = TlsConnector::from(pki::client_config(ca_pem, alpn));
    timeout(
        "TLS handshake with proxy",
        connector.connect(pki::server_name(host), stream),
    )
    .await
    .expect("TLS handshake with proxy (leaf must chain to the proxy CA)")
}

/// Opens CONNECT host:port through the proxy and completes TLS with the proxy's leaf.
pub async fn open_tls(proxy: &Proxy, host: &str, port: u16) -> TlsStream<TcpStream> {
    let authority = authority(host, port);
    let tcp = connect_tunnel(proxy.addr(), &authority)
        .await
        .unwrap_or_else(|r| panic!("CONNECT {authority} refused: {r:?}"));
    tls_over(tcp, host, &proxy.ca_cert_pem(), &[b"http/1.1"]).await
}

/// As [`open_tls`], but offering no ALPN at all (as Go's transport does with HTTP/2 off).
pub async fn open_tls_without_alpn(proxy: &Proxy, host: &str, port: u16) -> TlsStream<TcpStream> {
    let authority = authority(host, port);
    let tcp = connect_tunnel(proxy.addr(), &authority)
        .await
        .unwrap_or_else(|r| panic!("CONNECT {authority} refused: {r:?}"));
    let tls = tls_over(tcp, host, &proxy.ca_cert_pem(), &[]).await;
    assert_eq!(
        tls.get_ref().1.alpn_protocol(),
        None,
        "no ALPN was negotiated"
    );
    tls
}

/// Opens a TLS tunnel to host:port (ALPN http/1.1), writes `bytes` as they are, and reads
/// responses until the proxy closes the connection. Callers end their bytes with a request
/// carrying `Connection: close`, so a proxy that keeps parsing still reaches an end.
pub async fn exchange(proxy: &Proxy, host: &str, port: u16, bytes: &[u8]) -> Vec<RawResponse> {
    let mut tls = open_tls(proxy, host, port).await;
    // The proxy may refuse and close before reading everything; what it answered still counts.
    let _ = timeout("write raw requests", tls.write_all(bytes)).await;
    let mut responses = Vec::new();
    loop {
        let response = read_response(&mut tls, false).await;
        if response.status == 0 {
            return responses;
        }
        responses.push(response);
    }
}

pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

// ---------------------------------------------------------------------------------------------
// hyper client over a tunnel

/// An HTTP/1.1 client bound to one CONNECT tunnel (one client TLS connection).
pub struct TunnelClient {
    sender: http1::SendRequest<TestBody>,
    host: String,
    port: u16,
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

impl TunnelClient {
    pub async fn open(proxy: &Proxy, host: &str, port: u16) -> Self {
        let tls = open_tls(proxy, host, port).await;
        let peer_certificates = tls
            .get_ref()
            .1
            .peer_certificates()
            .map(|c| c.iter().map(|c| c.clone().into_owned()).collect())
            .unwrap_or_default();
        let (sender, conn) = timeout("HTTP/1 handshake", http1::handshake(TokioIo::new(tls)))
            .await
            .expect("HTTP/1 handshake");
        tokio::spawn(async move {
            // The connection ends when the test drops the sender or the proxy closes.
            let _ = conn.await;
        });
        TunnelClient {
            sender,
            host: host.to_owned(),
            port,
            peer_certificates,
        }
    }

    /// A request builder with `Host` already set to the tunnel's authority.
    pub fn request(&self, method: &str, path: &str) -> http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("host", authority(&self.host, self.port))
    }

    pub async fn send(&mut self, request: Request<TestBody>) -> Response<Incoming> {
        timeout("sender ready", self.sender.ready())
            .await
            .expect("tunnel connection still open");
        timeout("response head", self.sender.send_request(request))
            .await
            .expect("send request through tunnel")
    }

    pub async fn get(&mut self, path: &str) -> Response<Incoming> {
        let request = self
            .request("GET", path)
            .body(super::body::empty())
            .expect("request");
        self.send(request).await
    }
}

/// Reads a whole (small) body.
pub async fn collect(body: Incoming) -> Bytes {
    timeout("response body", body.collect())
        .await
        .expect("read body")
        .to_bytes()
}

/// Streams a body through sha256 without keeping it; returns (length, hex digest).
pub async fn digest(mut body: Incoming) -> (u64, String) {
    let mut digest = BodyDigest::default();
    while let Some(frame) = timeout("body frame", body.frame()).await {
        let frame = frame.expect("body frame");
        if let Some(data) = frame.data_ref() {
            digest.update(data);
        }
    }
    digest.finish()
}

/// Reads the next data frame of a streaming body.
pub async fn next_data(body: &mut Incoming) -> Option<Bytes> {
    loop {
        let frame = timeout("next body frame", body.frame()).await?;
        if let Ok(data) = frame.expect("body frame").into_data() {
            return Some(data);
        }
    }
}
