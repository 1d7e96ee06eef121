//! HTTP/1.1 serving that gives hyper's buffers back while a keep-alive connection idles.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer (plus its dispatcher) for a
//! connection's whole life, idle or not: with thousands of idle keep-alive clients that was
//! most of the proxy's memory. Here, once no request has been in flight for [`PARK_AFTER`],
//! hyper's connection is wound down while it is idle, without closing the stream, and the
//! stream waits on its own (for one byte) until the client sends the next request; then a
//! new hyper connection serves it, with that byte and anything hyper had read put back in
//! front. The client sees one keep-alive connection throughout.
//!
//! If hyper was not idle after all when asked to wind down (a request arrived in the same
//! instant), it finishes that exchange with `Connection: close`, as for any graceful close;
//! [`Parkable`] notices the write and the connection is then closed, never resumed.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::body::{Body, BoxError};
use crate::client_hello::Replay;
use crate::conns::ConnHandle;

/// No request in flight for this long and the connection parks. Well above the gap between
/// requests of a client in a burst (so a busy connection never parks), well below the
/// keep-alive idle limit (so an idle one spends nearly all its idle time parked).
pub const PARK_AFTER: Duration = Duration::from_millis(500);

/// Shared between a served connection's stream and the loop that parks it.
#[derive(Debug, Default)]
struct Flags {
    /// hyper is being wound down to park: its shutdown of the stream is not passed on.
    parking: AtomicBool,
    /// hyper wrote while being wound down: it was not idle, and has said it will close.
    wrote: AtomicBool,
    /// Bytes came in since hyper last wrote: maybe part of a request head. Such a
    /// connection is not parked: the head stays with the hyper connection that enforces
    /// its size limit and timeout on it.
    unanswered: AtomicBool,
}

/// The stream under hyper: passes everything through, except a shutdown while parking.
pub struct Parkable<IO> {
    /// Small: the TLS stream under it comes boxed (see `intercept::accept`), since it is
    /// moved in and out of hyper at each park.
    inner: IO,
    flags: Arc<Flags>,
}

impl<IO: AsyncRead + Unpin> AsyncRead for Parkable<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.flags.unanswered.store(true, Ordering::Release);
        }
        read
    }
}

impl<IO: AsyncWrite + Unpin> Parkable<IO> {
    fn note_write(&self, n: &Poll<io::Result<usize>>) {
        if !matches!(n, Poll::Ready(Ok(n)) if *n > 0) {
            return;
        }
        self.flags.unanswered.store(false, Ordering::Release);
        if self.flags.parking.load(Ordering::Acquire) {
            self.flags.wrote.store(true, Ordering::Release);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Parkable<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.note_write(&n);
        n
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let n = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.note_write(&n);
        n
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.flags.parking.load(Ordering::Acquire) {
            // Parking, not closing: flush what hyper wrote and keep the stream open.
            return Pin::new(&mut this.inner).poll_flush(cx);
        }
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// Serves HTTP/1.1 (with upgrades) on `io` until the client leaves, the connection is
/// asked to close or has had no request for `idle`; parks it whenever it idles for
/// [`PARK_AFTER`].
pub async fn serve_h1<IO, S>(
    io: IO,
    service: S,
    builder: http1::Builder,
    conn: &ConnHandle,
    idle: Duration,
) -> Result<(), BoxError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<Body>> + Clone + Send + Unpin,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    let flags = Arc::new(Flags::default());
    let mut io = Replay::new(Vec::new(), Parkable { inner: io, flags });
    loop {
        let flags = io.get_ref().flags.clone();
        flags.parking.store(false, Ordering::Release);
        flags.wrote.store(false, Ordering::Release);
        // Boxed, so that parking frees it: it holds hyper's buffers and dispatcher.
        let mut served = Box::new(
            builder
                .serve_connection(TokioIo::new(io), service.clone())
                .with_upgrades(),
        );
        let closing = conn.closing();
        let idle_limit = conn.idle_for(idle);
        // A connection holding part of a head stays idle by the count of requests, so
        // the check is re-armed a full PARK_AFTER later (not at once, which would spin).
        let park_check = |delay: Duration| {
            let idle = conn.idle_for(PARK_AFTER);
            async move {
                tokio::time::sleep(delay).await;
                idle.await
            }
        };
        let check = park_check(Duration::ZERO);
        tokio::pin!(closing, idle_limit, check);
        let park = loop {
            tokio::select! {
                biased;
                done = Pin::new(&mut *served) => return done.map_err(Into::into),
                () = &mut closing => break false,
                () = &mut idle_limit => break false,
                () = &mut check => {
                    if !flags.unanswered.load(Ordering::Acquire) {
                        break true;
                    }
                    check.set(park_check(PARK_AFTER));
                }
            }
        };
        if park {
            tracing::debug!("idle connection parked");
            flags.parking.store(true, Ordering::Release);
        }
        Pin::new(&mut *served).graceful_shutdown();
        Pin::new(&mut *served).await?;
        if !park {
            return Ok(());
        }
        // `None`: upgraded while winding down; the upgrade owns the stream now.
        let Some((mut prefix, mut stream)) = take_back(served) else {
            return Ok(());
        };
        flags.parking.store(false, Ordering::Release);
        if flags.wrote.load(Ordering::Acquire) {
            // hyper answered a request with `Connection: close` meanwhile: keep its word.
            let _ = stream.shutdown().await;
            return Ok(());
        }
        if prefix.is_empty() {
            let mut byte = [0u8; 1];
            let rest = idle.saturating_sub(PARK_AFTER);
            let n = tokio::select! {
                biased;
                () = conn.closing() => None,
                () = tokio::time::sleep(rest) => None,
                n = stream.read(&mut byte) => Some(n?),
            };
            match n {
                Some(0) => return Ok(()),
                Some(_) => prefix.push(byte[0]),
                None => {
                    let _ = stream.shutdown().await;
                    return Ok(());
                }
            }
        }
        io = Replay::new(prefix, stream);
    }
}

/// The stream back from a wound-down hyper connection, with the bytes it had read but not
/// used in front of the ones never read. A function of its own so that the connection's
/// box and buffers are freed on return, not kept (moved-from) until the next request.
// Taking the box (not the connection) is the point: it is freed here.
#[allow(clippy::type_complexity, clippy::boxed_local)]
fn take_back<IO, S>(
    served: Box<http1::UpgradeableConnection<TokioIo<Replay<Parkable<IO>>>, S>>,
) -> Option<(Vec<u8>, Parkable<IO>)>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: hyper::service::HttpService<Incoming, ResBody = Body>,
    S::Error: Into<BoxError>,
{
    let parts = (*served).into_parts()?;
    let (unread, stream) = parts.io.into_inner().into_parts();
    let mut prefix = parts.read_buf.to_vec();
    prefix.extend_from_slice(&unread);
    Some((prefix, stream))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use super::*;
    use crate::conns::Conns;

    /// What a parked connection's task holds besides the TLS stream (boxed once) and
    /// rustls' own buffers: the loop's state, with hyper's connection freed. About 1 KiB
    /// today in a debug build; a regression to holding hyper's connection, buffers or an
    /// unboxed stream inline would be several KiB.
    const PARKED_FUTURE_MAX_BYTES: usize = 1536;

    #[tokio::test]
    async fn the_serving_loop_is_small_enough_to_idle_in() {
        let conns = Conns::new(1);
        let conn = conns.admit().unwrap();
        let (io, _peer) = tokio::io::duplex(64);
        let service = hyper::service::service_fn(|_req: Request<Incoming>| async {
            Ok::<_, Infallible>(Response::new(crate::body::empty()))
        });
        let builder = http1::Builder::new();
        let fut = serve_h1(io, service, builder, &conn, Duration::from_secs(1));
        let size = std::mem::size_of_val(&fut);
        eprintln!("serve_h1 future: {size} bytes");
        assert!(size <= PARKED_FUTURE_MAX_BYTES, "{size} bytes");
    }
}
