//! Fault-injecting TLS upstreams on 127.0.0.1:0, for the resilience tests: HTTP/2 servers
//! that rotate their connections with `GOAWAY` every N streams (the `h2` crate's graceful
//! shutdown, and a frame-level server whose `GOAWAY` names a last stream id below streams
//! the client already sent), and raw HTTP/1.1 servers that drop keep-alive connections,
//! never answer, or cut a body short. Each records what it actually processed, so a test
//! can prove a request was not acted on twice.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::IO_TIMEOUT;
use super::pki::{self, TestCa, UPSTREAM_NAMES};

/// Largest request head the raw HTTP/1.1 server reads; test requests are far smaller.
const MAX_RAW_HEAD: usize = 64 * 1024;
/// Largest HTTP/2 frame payload the frame-level server accepts (the protocol default).
const MAX_FRAME: usize = 16 * 1024;
/// How long a closing server keeps reading what the client still sends.
const LINGER: Duration = Duration::from_secs(2);

/// What a fault-injecting upstream saw, shared with its connection tasks.
#[derive(Default)]
pub struct Seen {
    /// TCP connections accepted.
    pub connections: AtomicUsize,
    /// Request heads read (HTTP/1.1), or streams opened (HTTP/2), processed or not.
    pub heads: AtomicUsize,
    /// Requests the server acted on, by their body (the tests put a unique id in it).
    pub processed: Mutex<Vec<String>>,
}

/// A running fault-injecting upstream; dropping it stops accepting.
pub struct Faulty {
    port: u16,
    pub seen: Arc<Seen>,
    task: JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Faulty {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn processed(&self) -> Vec<String> {
        self.seen.processed.lock().expect("processed lock").clone()
    }

    pub fn connections(&self) -> usize {
        self.seen.connections.load(Ordering::SeqCst)
    }

    pub fn heads(&self) -> usize {
        self.seen.heads.load(Ordering::SeqCst)
    }

    /// HTTP/2 (`h2` crate) that answers every stream it receives and starts a graceful
    /// shutdown (`GOAWAY`, then the final `GOAWAY` after a ping) after every `n` streams.
    pub async fn h2_graceful_every(ca: &TestCa, n: usize) -> Faulty {
        spawn(ca, &[b"h2"], move |io, seen| h2_graceful(io, seen, n)).await
    }

    /// HTTP/2 at the frame level that, after the `n`th stream's `HEADERS`, sends
    /// `GOAWAY(last_stream_id = that stream)` at once (as nginx does at
    /// `keepalive_requests`), answers the first `n` streams, ignores every later one, and
    /// closes. Streams above the last id were never processed; a client must send them again.
    pub async fn h2_goaway_every(ca: &TestCa, n: usize) -> Faulty {
        spawn(ca, &[b"h2"], move |io, seen| h2_frames(io, seen, n)).await
    }

    /// HTTP/1.1 with a fault on every keep-alive connection.
    pub async fn h1(ca: &TestCa, fault: H1Fault) -> Faulty {
        spawn(ca, &[b"http/1.1"], move |io, seen| {
            h1_serve(io, seen, fault)
        })
        .await
    }
}

/// What the raw HTTP/1.1 server does wrong.
#[derive(Clone, Copy, Debug)]
pub enum H1Fault {
    /// Answers the first request of a connection, then reads the next request head and
    /// closes without answering (a keep-alive timeout racing the client's next request).
    DropSecondRequest,
    /// Answers each request and closes at once, without `Connection: close`.
    CloseAfterResponse,
    /// Reads the request and never answers (the connection stays open).
    NeverAnswer,
    /// `/short`: `Content-Length` larger than what is sent, then close; `/chunked-cut`:
    /// a chunked body that ends before the last chunk.
    TruncateBody,
}

/// Bytes `/short` announces, and how many of them it sends.
pub const SHORT_ANNOUNCED: usize = 100_000;
pub const SHORT_SENT: usize = 40_000;

async fn spawn<F, Fut>(ca: &TestCa, alpn: &[&[u8]], serve: F) -> Faulty
where
    F: Fn(Lingering<Tls>, Arc<Seen>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let leaf = ca.leaf(UPSTREAM_NAMES);
    let acceptor = TlsAcceptor::from(pki::server_config_with_alpn(&leaf, alpn));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind faulty upstream");
    let port = listener.local_addr().expect("faulty addr").port();
    let seen = Arc::new(Seen::default());
    let serve = Arc::new(serve);
    let task = tokio::spawn({
        let seen = seen.clone();
        async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                seen.connections.fetch_add(1, Ordering::SeqCst);
                let (acceptor, seen, serve) = (acceptor.clone(), seen.clone(), serve.clone());
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(IO_TIMEOUT, acceptor.accept(tcp)).await
                    {
                        serve(Lingering(Some(tls)), seen).await;
                    }
                });
            }
        }
    });
    Faulty { port, seen, task }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 with the h2 crate

async fn h2_graceful<IO>(io: IO, seen: Arc<Seen>, n: usize)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Ok(mut conn) = h2::server::handshake(io).await else {
        return;
    };
    let mut accepted = 0;
    while let Some(Ok((req, mut respond))) = conn.accept().await {
        seen.heads.fetch_add(1, Ordering::SeqCst);
        accepted += 1;
        if accepted == n {
            conn.graceful_shutdown();
        }
        let seen = seen.clone();
        tokio::spawn(async move {
            let mut body = req.into_body();
            let mut data = Vec::new();
            while let Some(chunk) = body.data().await {
                let Ok(chunk) = chunk else { return };
                let _ = body.flow_control().release_capacity(chunk.len());
                data.extend_from_slice(&chunk);
            }
            seen.processed
                .lock()
                .expect("processed lock")
                .push(String::from_utf8_lossy(&data).into_owned());
            let resp = http::Response::builder()
                .status(200)
                .body(())
                .expect("response");
            if let Ok(mut send) = respond.send_response(resp, false) {
                let _ = send.send_data(Bytes::from_static(b"ok\n"), true);
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/2 at the frame level (RFC 9113 §4, §6): just enough to read requests and answer
// `:status 200`, so the GOAWAY's last stream id is exactly what the test chooses.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
/// HPACK static table entry 8, `:status: 200`, as an indexed header field.
const STATUS_200: u8 = 0x88;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn h2_frames<IO>(mut io: IO, seen: Arc<Seen>, n: usize)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut preface = [0u8; PREFACE.len()];
    if io.read_exact(&mut preface).await.is_err() || preface != PREFACE {
        return;
    }
    if io.write_all(&frame(SETTINGS, 0, 0, &[])).await.is_err() {
        return;
    }
    // Streams this connection will answer (the first n), with their bodies so far.
    let mut open: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut opened = 0;
    let mut answered = 0;
    loop {
        let mut head = [0u8; 9];
        if io.read_exact(&mut head).await.is_err() {
            return;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if len > MAX_FRAME {
            return;
        }
        let mut payload = vec![0u8; len];
        if io.read_exact(&mut payload).await.is_err() {
            return;
        }
        let mut out = Vec::new();
        let mut ended = None;
        match kind {
            SETTINGS if flags & ACK == 0 => out.extend(frame(SETTINGS, ACK, 0, &[])),
            PING if flags & ACK == 0 => out.extend(frame(PING, ACK, 0, &payload)),
            HEADERS => {
                seen.heads.fetch_add(1, Ordering::SeqCst);
                opened += 1;
                if opened <= n {
                    open.push((stream, Vec::new()));
                }
                if opened == n {
                    // Everything the client opens after this one is refused by this frame.
                    let mut goaway = stream.to_be_bytes().to_vec();
                    goaway.extend_from_slice(&0u32.to_be_bytes());
                    out.extend(frame(GOAWAY, 0, 0, &goaway));
                }
                if flags & END_STREAM != 0 {
                    ended = Some(stream);
                }
            }
            DATA => {
                let data: &[u8] = match payload.first() {
                    Some(&pad) if flags & PADDED != 0 => payload
                        .get(1..len.saturating_sub(usize::from(pad)))
                        .unwrap_or(&[]),
                    _ => &payload,
                };
                if let Some((_, body)) = open.iter_mut().find(|(id, _)| *id == stream) {
                    body.extend_from_slice(data);
                }
                if len > 0 {
                    // Give the connection window back; stream windows are never exhausted
                    // by the tests' small bodies.
                    out.extend(frame(WINDOW_UPDATE, 0, 0, &(len as u32).to_be_bytes()));
                }
                if flags & END_STREAM != 0 {
                    ended = Some(stream);
                }
            }
            RST_STREAM if open.iter().any(|(id, _)| *id == stream) => {
                open.retain(|(id, _)| *id != stream);
                answered += 1;
            }
            _ => {}
        }
        if let Some(id) = ended
            && let Some(pos) = open.iter().position(|(s, _)| *s == id)
        {
            let (_, body) = open.remove(pos);
            seen.processed
                .lock()
                .expect("processed lock")
                .push(String::from_utf8_lossy(&body).into_owned());
            out.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &[STATUS_200]));
            answered += 1;
        }
        if !out.is_empty() && io.write_all(&out).await.is_err() {
            return;
        }
        if answered >= n {
            let _ = io.flush().await;
            let _ = io.shutdown().await;
            return;
        }
    }
}

type Tls = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// A server connection that closes the way real servers do (lingering close): once dropped,
/// it reads what the client still sends until the client closes too, for up to [`LINGER`].
/// Closing a socket with unread input sends a TCP reset, and a reset can destroy responses
/// the client has not read yet: a test upstream that did that would fail requests no proxy
/// could save.
pub struct Lingering<IO: AsyncRead + Unpin + Send + 'static>(Option<IO>);

impl<IO: AsyncRead + Unpin + Send + 'static> Lingering<IO> {
    fn io(&mut self) -> &mut IO {
        self.0.as_mut().expect("only taken in drop")
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> Drop for Lingering<IO> {
    fn drop(&mut self) {
        let Some(mut io) = self.0.take() else { return };
        tokio::spawn(async move {
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
        });
    }
}

impl<IO: AsyncRead + Unpin + Send + 'static> AsyncRead for Lingering<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.io()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.io()).poll_shutdown(cx)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.1, raw

/// One request read off the connection: method, path, body; `None` at EOF.
async fn read_h1_request<IO: AsyncRead + Unpin>(io: &mut IO) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if io.read(&mut byte).await.ok()? == 0 || buf.len() > MAX_RAW_HEAD {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let mut words = head.split_whitespace();
    let method = words.next()?.to_owned();
    let path = words.next()?.to_owned();
    let len = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await.ok()?;
    Some((method, path, body))
}

fn ok_response(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn h1_serve<IO>(mut io: IO, seen: Arc<Seen>, fault: H1Fault)
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut served = 0;
    while let Some((method, path, body)) = read_h1_request(&mut io).await {
        seen.heads.fetch_add(1, Ordering::SeqCst);
        match fault {
            H1Fault::DropSecondRequest if served > 0 => {
                // Drop without a word: the client may have been mid-request.
                let _ = io.shutdown().await;
                return;
            }
            H1Fault::NeverAnswer => {
                let mut rest = Vec::new();
                let _ = io.read_to_end(&mut rest).await;
                return;
            }
            H1Fault::TruncateBody => {
                let _ = io.write_all(&truncated(&path)).await;
                let _ = io.flush().await;
                let _ = io.shutdown().await;
                return;
            }
            _ => {}
        }
        let id = String::from_utf8_lossy(&body).into_owned();
        seen.processed.lock().expect("processed lock").push(id);
        let text = format!("{method} {path} served\n");
        if io.write_all(&ok_response(&text)).await.is_err() {
            return;
        }
        let _ = io.flush().await;
        served += 1;
        if let H1Fault::CloseAfterResponse = fault {
            let _ = io.shutdown().await;
            return;
        }
    }
}

/// The cut-short responses of [`H1Fault::TruncateBody`].
fn truncated(path: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if path.starts_with("/chunked-cut") {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
        for _ in 0..4 {
            out.extend_from_slice(b"1000\r\n");
            out.extend_from_slice(&[b'c'; 0x1000]);
            out.extend_from_slice(b"\r\n");
        }
        // No `0\r\n\r\n`: the body never ends.
    } else {
        out.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\ncontent-length: {SHORT_ANNOUNCED}\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(&vec![b's'; SHORT_SENT]);
    }
    out
}
