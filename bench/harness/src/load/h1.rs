//! A minimal HTTP/1.1 client connection: write a request head (and optional body), read
//! one response, handing body bytes to a callback. Hand-written so that the client costs
//! as little CPU as possible and the same for every peer; it handles Content-Length,
//! chunked and read-to-close bodies, which is all a proxy may legally turn a response into.

use std::io;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Longest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 64;
const READ_BUF: usize = 64 * 1024;

pub struct H1<S> {
    io: S,
    buf: BytesMut,
}

pub struct Response {
    pub status: u16,
    /// False when the server said `Connection: close` or the body ran to EOF.
    pub reusable: bool,
    pub body_len: u64,
}

enum Framing {
    Length(u64),
    Chunked,
    ToEof,
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_owned())
}

/// `GET path` head with the bench's standard headers.
pub fn get_head(authority: &str, path: &str, auth: &str, close: bool) -> Vec<u8> {
    let conn = if close { "Connection: close\r\n" } else { "" };
    format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: {auth}\r\nUser-Agent: paude-bench\r\n{conn}\r\n"
    )
    .into_bytes()
}

impl<S: AsyncRead + AsyncWrite + Unpin> H1<S> {
    pub fn new(io: S) -> Self {
        H1 {
            io,
            buf: BytesMut::with_capacity(READ_BUF),
        }
    }

    pub fn into_inner(self) -> S {
        self.io
    }

    pub async fn send(&mut self, head: &[u8]) -> io::Result<()> {
        self.io.write_all(head).await?;
        self.io.flush().await
    }

    /// Writes raw bytes (a request body).
    pub async fn write_body(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await
    }

    pub async fn flush(&mut self) -> io::Result<()> {
        self.io.flush().await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_BUF / 4 {
            self.buf.reserve(READ_BUF);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads one response; `on_body` sees every body byte slice in order.
    pub async fn read_response(&mut self, mut on_body: impl FnMut(&[u8])) -> io::Result<Response> {
        let (status, framing, mut reusable) = loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&self.buf).map_err(|e| bad(&e.to_string()))? {
                httparse::Status::Complete(n) => {
                    let status = resp.code.unwrap_or(0);
                    let mut framing = Framing::ToEof;
                    let mut reusable = resp.version == Some(1);
                    for h in resp.headers.iter() {
                        let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                        if h.name.eq_ignore_ascii_case("content-length") {
                            framing = Framing::Length(v.parse().map_err(|_| bad("bad length"))?);
                        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                            && v.eq_ignore_ascii_case("chunked")
                        {
                            framing = Framing::Chunked;
                        } else if h.name.eq_ignore_ascii_case("connection")
                            && v.eq_ignore_ascii_case("close")
                        {
                            reusable = false;
                        }
                    }
                    // 1xx answers are skipped; none of the bench routes send one.
                    self.buf.advance(n);
                    if (100..200).contains(&status) {
                        continue;
                    }
                    if status == 204 || status == 304 {
                        framing = Framing::Length(0);
                    }
                    break (status, framing, reusable);
                }
                httparse::Status::Partial => {
                    if self.buf.len() > MAX_HEAD {
                        return Err(bad("response head too large"));
                    }
                    if self.fill().await? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before a response",
                        ));
                    }
                }
            }
        };
        let body_len = match framing {
            Framing::Length(n) => self.read_exact_body(n, &mut on_body).await?,
            Framing::Chunked => self.read_chunked(&mut on_body).await?,
            Framing::ToEof => {
                reusable = false;
                let mut total = 0;
                loop {
                    if !self.buf.is_empty() {
                        on_body(&self.buf);
                        total += self.buf.len() as u64;
                        self.buf.clear();
                    }
                    if self.fill().await? == 0 {
                        break total;
                    }
                }
            }
        };
        Ok(Response {
            status,
            reusable,
            body_len,
        })
    }

    async fn read_exact_body(
        &mut self,
        mut left: u64,
        on_body: &mut impl FnMut(&[u8]),
    ) -> io::Result<u64> {
        let total = left;
        while left > 0 {
            if self.buf.is_empty() && self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "body cut short",
                ));
            }
            let n = (self.buf.len() as u64).min(left) as usize;
            on_body(&self.buf[..n]);
            self.buf.advance(n);
            left -= n as u64;
        }
        Ok(total)
    }

    /// Reads a line ending in CRLF from the buffer (filling as needed) and consumes it.
    async fn read_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.advance(pos + 2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad("chunk line too long"));
            }
            if self.fill().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "chunked body cut short",
                ));
            }
        }
    }

    async fn read_chunked(&mut self, on_body: &mut impl FnMut(&[u8])) -> io::Result<u64> {
        let mut total = 0;
        loop {
            let line = self.read_line().await?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.read_line().await?.is_empty() {}
                return Ok(total);
            }
            total += self.read_exact_body(size, on_body).await?;
            if !self.read_line().await?.is_empty() {
                return Err(bad("chunk not followed by CRLF"));
            }
        }
    }
}
