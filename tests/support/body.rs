//! Body types shared by the test upstream and the test clients: a deterministic pseudo-random
//! stream (so 50 MB transfers can be checked by sha256 without keeping them in memory) and a
//! channel-fed body (so a test can hold a body half-sent and prove the proxy streams).

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, SizeHint};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Body type used for every request and response the harness builds.
pub type TestBody = BoxBody<Bytes, Infallible>;

const PRNG_CHUNK: usize = 64 * 1024;
const PRNG_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).boxed()
}

pub fn empty() -> TestBody {
    Empty::new().boxed()
}

/// xorshift64*: fast, deterministic, and good enough to make compression or accidental
/// truncation show up in a sha256 comparison.
struct Prng(u64);

impl Prng {
    fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// Streams `len` deterministic pseudo-random bytes in 64 KiB frames.
pub struct PrngBody {
    remaining: u64,
    prng: Prng,
}

impl PrngBody {
    pub fn new(len: u64) -> Self {
        PrngBody {
            remaining: len,
            prng: Prng(PRNG_SEED),
        }
    }
}

impl Body for PrngBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(PRNG_CHUNK as u64) as usize;
        let mut buf = vec![0u8; n];
        self.prng.fill(&mut buf);
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// sha256 (hex) of the first `len` bytes `PrngBody` produces, computed independently of any
/// transfer so a test compares against a value no proxy touched.
pub fn prng_sha256(len: u64) -> String {
    let mut body = PrngBody::new(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PRNG_CHUNK];
    while body.remaining > 0 {
        let n = body.remaining.min(PRNG_CHUNK as u64) as usize;
        body.prng.fill(&mut buf[..n]);
        hasher.update(&buf[..n]);
        body.remaining -= n as u64;
    }
    hex::encode(hasher.finalize())
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A body fed chunk by chunk through a channel; it ends when the sender is dropped. The size
/// is unknown, so HTTP/1 sends it chunked.
pub struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
}

pub fn channel_body() -> (mpsc::Sender<Bytes>, ChannelBody) {
    let (tx, rx) = mpsc::channel(4);
    (tx, ChannelBody { rx })
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|data| Ok(Frame::data(data))))
    }
}

/// Incremental length + sha256 of a streamed body.
#[derive(Default)]
pub struct BodyDigest {
    pub len: u64,
    hasher: Sha256,
}

impl BodyDigest {
    pub fn update(&mut self, data: &[u8]) {
        self.len += data.len() as u64;
        self.hasher.update(data);
    }

    pub fn finish(self) -> (u64, String) {
        (self.len, hex::encode(self.hasher.finalize()))
    }
}
