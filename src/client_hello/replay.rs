//! A stream that first yields bytes already read from it.
//!
//! Peeking the ClientHello consumes it from the socket, but the TLS acceptor
//! (or the plain-HTTP server, for a connection that turned out not to be TLS)
//! must see the connection from its first byte. `Replay` hands back the
//! buffered bytes first, then reads the socket; writes go straight through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// `inner`, with `prefix` read back before anything new from it.
#[derive(Debug)]
pub struct Replay<IO> {
    prefix: Vec<u8>,
    /// How much of `prefix` has been handed out; always `<= prefix.len()`.
    replayed: usize,
    inner: IO,
}

impl<IO> Replay<IO> {
    pub fn new(prefix: Vec<u8>, inner: IO) -> Self {
        Replay {
            prefix,
            replayed: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.inner
    }

    /// The prefix bytes not yet read, and the inner stream. Returning the
    /// remainder (rather than just `inner`) is what keeps read-ahead from being
    /// silently dropped.
    pub fn into_parts(self) -> (Vec<u8>, IO) {
        let mut prefix = self.prefix;
        prefix.drain(..self.replayed.min(prefix.len()));
        (prefix, self.inner)
    }

    fn pending(&self) -> &[u8] {
        self.prefix.get(self.replayed..).unwrap_or_default()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Replay<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let pending = this.pending();
        if pending.is_empty() {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let n = pending.len().min(buf.remaining());
        buf.put_slice(&pending[..n]);
        this.replayed += n;
        if this.replayed == this.prefix.len() {
            // The prefix is spent: free it rather than hold it for the
            // lifetime of a long-lived connection.
            this.prefix = Vec::new();
            this.replayed = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Replay<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    const PIPE_CAPACITY: usize = 1024;
    /// Fails a hung test instead of blocking the suite; never a pass criterion.
    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
        tokio::time::timeout(TEST_TIMEOUT, fut)
            .await
            .unwrap_or_else(|_| panic!("{what} hung"))
    }

    #[tokio::test]
    async fn yields_the_prefix_then_the_stream() {
        let (ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(b" world").await.unwrap();
        drop(theirs);
        let mut replay = Replay::new(b"hello".to_vec(), ours);
        let mut all = Vec::new();
        bounded("read", replay.read_to_end(&mut all)).await.unwrap();
        assert_eq!(all, b"hello world");
    }

    #[tokio::test]
    async fn small_reads_split_the_prefix_without_losing_bytes() {
        let (ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(b"XYZ").await.unwrap();
        drop(theirs);
        let mut replay = Replay::new(b"abcde".to_vec(), ours);
        let mut got = Vec::new();
        let mut one = [0u8; 2];
        loop {
            let n = bounded("read", replay.read(&mut one)).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&one[..n]);
        }
        assert_eq!(got, b"abcdeXYZ");
    }

    #[tokio::test]
    async fn writes_pass_through_to_the_inner_stream() {
        let (ours, mut theirs) = duplex(PIPE_CAPACITY);
        let mut replay = Replay::new(b"unread".to_vec(), ours);
        replay.write_all(b"response").await.unwrap();
        replay.flush().await.unwrap();
        replay.shutdown().await.unwrap();
        let mut got = Vec::new();
        bounded("read", theirs.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"response");
    }

    #[tokio::test]
    async fn into_parts_returns_what_was_not_replayed() {
        let (ours, _theirs) = duplex(PIPE_CAPACITY);
        let mut replay = Replay::new(b"abcdef".to_vec(), ours);
        let mut two = [0u8; 2];
        bounded("read", replay.read_exact(&mut two)).await.unwrap();
        assert_eq!(&two, b"ab");
        let (rest, _inner) = replay.into_parts();
        assert_eq!(rest, b"cdef");
    }

    #[tokio::test]
    async fn empty_prefix_reads_the_stream_directly() {
        let (ours, mut theirs) = duplex(PIPE_CAPACITY);
        theirs.write_all(b"direct").await.unwrap();
        drop(theirs);
        let mut replay = Replay::new(Vec::new(), ours);
        let mut got = Vec::new();
        bounded("read", replay.read_to_end(&mut got)).await.unwrap();
        assert_eq!(got, b"direct");
    }
}
