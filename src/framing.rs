//! Watches the raw HTTP/1.1 request stream for framing that hyper normalises away.
//!
//! hyper follows RFC 9112 §6.3 for a request carrying both `Content-Length` and
//! `Transfer-Encoding`: it drops `Content-Length` and closes the connection afterwards.
//! That is safe for hyper, but the handler never sees the conflict, and we refuse such
//! requests outright (DESIGN.md §3; a front end and a back end reading one message two ways
//! is how request smuggling starts). [`Watched`] reads alongside hyper, tracks message
//! boundaries (heads, fixed and chunked bodies) and notes the index of the first request
//! whose head had both headers; [`FramingCheck`] tells the handler of that request.
//!
//! It only observes: the bytes hyper reads are never changed. On anything it cannot follow
//! (HTTP/2 preface, an upgrade's opaque bytes, a malformed head that hyper will reject
//! anyway) it stops watching.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::error::ProxyError;

/// Larger heads are hyper's to refuse (431); we stop watching.
const MAX_WATCHED_HEAD: usize = 64 * 1024 + 1;
/// A chunk-size line or trailer line longer than this is malformed.
const MAX_LINE: usize = 4096;
const MAX_HEADERS: usize = 128;
const NO_CONFLICT: u64 = u64::MAX;

/// Shared between the watched stream and the connection's request handler.
#[derive(Debug)]
pub struct FramingCheck {
    /// Index (0-based, in arrival order) of the first request head with both headers.
    conflict_at: AtomicU64,
    /// Requests handed to the handler so far.
    handled: AtomicU64,
}

impl Default for FramingCheck {
    fn default() -> Self {
        FramingCheck {
            conflict_at: AtomicU64::new(NO_CONFLICT),
            handled: AtomicU64::new(0),
        }
    }
}

impl FramingCheck {
    /// Call once per HTTP/1 request, in order. hyper serves HTTP/1 requests of one
    /// connection strictly in order, so the n-th call is the n-th head watched.
    pub fn next_request(&self) -> Result<(), ProxyError> {
        let n = self.handled.fetch_add(1, Ordering::AcqRel);
        if self.conflict_at.load(Ordering::Acquire) == n {
            return Err(ProxyError::BadRequest(
                "both Content-Length and Transfer-Encoding are set".into(),
            ));
        }
        Ok(())
    }
}

enum State {
    Head(Vec<u8>),
    Fixed(u64),
    Line(LineKind, Vec<u8>),
    ChunkData(u64),
    Off,
}

/// The line-shaped parts of a chunked body.
#[derive(Clone, Copy)]
enum LineKind {
    ChunkSize,
    /// The CRLF after a chunk's data.
    ChunkEnd,
    Trailer,
}

fn line(kind: LineKind) -> State {
    State::Line(kind, Vec::new())
}

/// The state after a complete line of `kind`.
fn after_line(kind: LineKind, line_bytes: &[u8]) -> State {
    let content = trim_eol(line_bytes);
    match kind {
        LineKind::ChunkSize => match chunk_size(content) {
            Some(0) => line(LineKind::Trailer),
            Some(n) => State::ChunkData(n),
            None => State::Off,
        },
        LineKind::ChunkEnd if content.is_empty() => line(LineKind::ChunkSize),
        LineKind::ChunkEnd => State::Off,
        LineKind::Trailer if content.is_empty() => State::Head(Vec::new()),
        LineKind::Trailer => line(LineKind::Trailer),
    }
}

pub struct Watched<IO> {
    inner: IO,
    state: State,
    heads: u64,
    check: Arc<FramingCheck>,
}

impl<IO> Watched<IO> {
    pub fn new(inner: IO, check: Arc<FramingCheck>) -> Self {
        Watched {
            inner,
            state: State::Head(Vec::new()),
            heads: 0,
            check,
        }
    }

    fn observe(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let state = std::mem::replace(&mut self.state, State::Off);
            let (next, used) = match state {
                State::Off => return,
                State::Head(buf) => self.head(buf, bytes),
                State::Fixed(n) => {
                    let take = n.min(bytes.len() as u64);
                    let next = if take == n {
                        State::Head(Vec::new())
                    } else {
                        State::Fixed(n - take)
                    };
                    (next, take as usize)
                }
                State::Line(kind, buf) => line_state(kind, buf, bytes),
                State::ChunkData(n) => {
                    let take = n.min(bytes.len() as u64);
                    let next = if take == n {
                        line(LineKind::ChunkEnd)
                    } else {
                        State::ChunkData(n - take)
                    };
                    (next, take as usize)
                }
            };
            self.state = next;
            bytes = &bytes[used..];
        }
    }

    fn head(&mut self, mut buf: Vec<u8>, bytes: &[u8]) -> (State, usize) {
        let before = buf.len();
        let room = MAX_WATCHED_HEAD.saturating_sub(before);
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
        // Blank lines between requests are allowed (RFC 9112 §2.2).
        let skip = buf
            .iter()
            .take_while(|b| **b == b'\r' || **b == b'\n')
            .count();
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf[skip..]) {
            Ok(httparse::Status::Complete(len)) => {
                let used = (skip + len).saturating_sub(before);
                let index = self.heads;
                self.heads += 1;
                (self.framing(index, req.headers), used)
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_WATCHED_HEAD => {
                (State::Head(buf), bytes.len())
            }
            _ => (State::Off, bytes.len()),
        }
    }

    fn framing(&self, index: u64, headers: &[httparse::Header<'_>]) -> State {
        let values = |name: &'static str| -> Vec<&[u8]> {
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
                .collect()
        };
        let (te, cl) = (values("transfer-encoding"), values("content-length"));
        if !te.is_empty() && !cl.is_empty() {
            let _ = self.check.conflict_at.compare_exchange(
                NO_CONFLICT,
                index,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            // hyper reads this body as chunked and closes the connection after it.
        }
        if let Some(last) = te.last() {
            let chunked = std::str::from_utf8(last).ok().is_some_and(|v| {
                v.rsplit(',')
                    .next()
                    .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"))
            });
            return if chunked {
                line(LineKind::ChunkSize)
            } else {
                State::Off
            };
        }
        match cl.first() {
            None => State::Head(Vec::new()),
            Some(v) => match std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(0) => State::Head(Vec::new()),
                Some(n) => State::Fixed(n),
                None => State::Off,
            },
        }
    }
}

/// Accumulates one line of `kind`, bounded by [`MAX_LINE`].
fn line_state(kind: LineKind, mut buf: Vec<u8>, bytes: &[u8]) -> (State, usize) {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) if buf.len() + i < MAX_LINE => {
            buf.extend_from_slice(&bytes[..=i]);
            (after_line(kind, &buf), i + 1)
        }
        None if buf.len() + bytes.len() < MAX_LINE => {
            buf.extend_from_slice(bytes);
            (State::Line(kind, buf), bytes.len())
        }
        _ => (State::Off, bytes.len()),
    }
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn chunk_size(content: &[u8]) -> Option<u64> {
    let hex = content.split(|b| *b == b';').next()?;
    let hex = std::str::from_utf8(hex).ok()?.trim();
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    u64::from_str_radix(hex, 16).ok()
}

impl<IO: AsyncRead + Unpin> AsyncRead for Watched<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let fresh = buf.filled()[before..].to_vec();
            self.observe(&fresh);
        }
        polled
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Watched<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in pieces of `step` bytes and returns which request (if any) conflicted.
    fn conflict(wire: &[u8], step: usize) -> Option<u64> {
        let check = Arc::new(FramingCheck::default());
        let mut w = Watched::new((), check.clone());
        for piece in wire.chunks(step) {
            w.observe(piece);
        }
        match check.conflict_at.load(Ordering::Acquire) {
            NO_CONFLICT => None,
            n => Some(n),
        }
    }

    const OK_GET: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    const OK_CL: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    const OK_CHUNKED: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nT: 1\r\n\r\n";
    const BAD: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
    const BAD_TE_FIRST: &[u8] =
        b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding: chunked\r\ncontent-length: 4\r\n\r\n0\r\n\r\n";

    #[test]
    fn finds_the_conflicting_request_by_index_whatever_the_read_sizes() {
        for step in [1, 2, 3, 7, 64, 4096] {
            assert_eq!(conflict(&[OK_GET, OK_GET].concat(), step), None, "{step}");
            assert_eq!(conflict(BAD, step), Some(0), "{step}");
            assert_eq!(conflict(BAD_TE_FIRST, step), Some(0), "{step}");
            assert_eq!(
                conflict(&[OK_CL, OK_CHUNKED, BAD].concat(), step),
                Some(2),
                "{step}"
            );
            assert_eq!(
                conflict(&[OK_CHUNKED, OK_GET, BAD, BAD].concat(), step),
                Some(2),
                "{step}"
            );
        }
    }

    #[test]
    fn body_bytes_that_look_like_a_head_are_not_heads() {
        // The body of the first request is itself a conflicting request: it must not count.
        let mut wire = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            BAD.len()
        )
        .into_bytes();
        wire.extend_from_slice(BAD);
        wire.extend_from_slice(OK_GET);
        assert_eq!(conflict(&wire, 5), None);
    }

    #[test]
    fn stops_on_what_it_cannot_follow() {
        assert_eq!(conflict(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 4), None);
        assert_eq!(
            conflict(&[b"\x16\x03\x01\x02\x00".as_slice(), BAD].concat(), 4),
            None
        );
        let next = FramingCheck::default();
        assert!(next.next_request().is_ok());
    }

    #[test]
    fn the_check_fires_for_that_request_only() {
        let check = FramingCheck::default();
        check.conflict_at.store(1, Ordering::Release);
        assert!(check.next_request().is_ok());
        assert!(check.next_request().is_err());
        assert!(check.next_request().is_ok());
    }
}
