//! When a failed upstream send may be sent again, and the request body kept so that it can.
//!
//! A request is sent again, once and on a fresh connection, only when the upstream cannot
//! have acted on it: it was never written (the connection died first), the server refused
//! the stream (`REFUSED_STREAM`, or a `GOAWAY` whose last stream id is below ours), or it is
//! idempotent and went out on a reused connection that turned out dead before any response
//! byte came back (RFC 9110 §9.2.2). Everything else is the client's to retry.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// Request bodies up to this size are kept while the response head is awaited, so a refused
/// request can be sent again. Most API calls fit (a 200k-token prompt is about 1 MiB);
/// larger uploads are streamed once. The chunks are shared with what was sent, not copied.
pub const MAX_REPLAY_BODY: usize = 4 * 1024 * 1024;
/// After a failed send, how long to wait for the connection to let go of the request body
/// (hyper drops it once it notices the stream or connection failed, within a moment);
/// past it the request is not sent again.
const RELEASE_WAIT: Duration = Duration::from_secs(1);

/// Why a failed send is safe to repeat; also the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryReason {
    /// The request was never written to the connection.
    Unsent,
    /// The server refused the stream without processing it (HTTP/2).
    Refused,
    /// An idempotent request on a reused connection that died before answering.
    Stale,
}

impl RetryReason {
    pub fn label(self) -> &'static str {
        match self {
            RetryReason::Unsent => "unsent",
            RetryReason::Refused => "refused",
            RetryReason::Stale => "stale",
        }
    }
}

/// What we know about a failed send, as plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failure {
    /// hyper handed the request back: no byte of it was written.
    pub unsent: bool,
    /// The server refused the stream (REFUSED_STREAM or above a GOAWAY's last stream id).
    pub refused: bool,
    /// The connection had carried earlier requests.
    pub reused: bool,
    pub idempotent: bool,
}

/// The one retry rule, pure.
pub fn retry_reason(f: Failure) -> Option<RetryReason> {
    if f.unsent {
        Some(RetryReason::Unsent)
    } else if f.refused {
        Some(RetryReason::Refused)
    } else if f.reused && f.idempotent {
        Some(RetryReason::Stale)
    } else {
        None
    }
}

/// RFC 9110 §9.2.2.
pub fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// True when an error says the server refused our stream without processing it.
pub fn refused_by_server(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            // A remote GOAWAY reaches a stream only when its id is above the last one the
            // server says it processed (RFC 9113 §6.8): it never saw the request.
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM)
                || (h2.is_go_away() && h2.is_remote());
        }
        cur = err.source();
    }
    false
}

/// What a recording body saw: the chunks so far, or that it outgrew the limit.
#[derive(Default)]
struct Recorded {
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    len: usize,
    complete: bool,
    overflowed: bool,
    /// The part of the body not read yet, handed back when the failed send dropped it (a
    /// refused stream is usually refused before its body was sent).
    rest: Option<Body>,
    /// The recording body was dropped: nothing more will be read through it.
    released: bool,
}

impl Recorded {
    /// Nothing about the tape can change any more.
    fn settled(&self) -> bool {
        self.complete || self.overflowed || self.released
    }
}

#[derive(Default)]
struct Shared {
    rec: Mutex<Recorded>,
    released: tokio::sync::Notify,
}

/// The kept copy of a request body, for a second send.
#[derive(Clone)]
pub struct Tape(Arc<Shared>);

impl Tape {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.0.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A body that replays the whole original: the chunks already read, then the unread
    /// rest. `None` when it was too large, or when neither the end nor the rest is known.
    /// Waits (briefly) for the failed send to let go of the body first.
    pub async fn replay(&self) -> Option<Body> {
        let settled = async {
            loop {
                let released = self.0.released.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if self.lock().settled() {
                    return;
                }
                released.await;
            }
        };
        let _ = tokio::time::timeout(RELEASE_WAIT, settled).await;
        let mut rec = self.lock();
        if rec.overflowed || !(rec.complete || rec.rest.is_some()) {
            return None;
        }
        Some(
            Replayed {
                chunks: rec.chunks.clone().into(),
                trailers: rec.trailers.clone(),
                rest: rec.rest.take(),
            }
            .boxed_unsync(),
        )
    }

    /// Frees the kept chunks once a response head arrived: no retry can follow.
    pub fn discard(&self) {
        let mut rec = self.lock();
        rec.chunks = Vec::new();
        rec.trailers = None;
        rec.rest = None;
        rec.overflowed = true;
    }
}

/// Wraps `body` so that what it yields is also kept (up to `limit` bytes) on the tape.
pub fn record(body: Body, limit: usize) -> (Body, Tape) {
    let tape = Tape(Arc::default());
    if body.is_end_stream() {
        tape.lock().complete = true;
        return (body, tape);
    }
    let recording = Recording {
        inner: body,
        tape: tape.clone(),
        limit,
    };
    (recording.boxed_unsync(), tape)
}

struct Recording {
    inner: Body,
    tape: Tape,
    limit: usize,
}

impl hyper::body::Body for Recording {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let mut rec = self.tape.lock();
        match &polled {
            Poll::Ready(Some(Ok(frame))) if !rec.overflowed => {
                if let Some(data) = frame.data_ref() {
                    rec.len += data.len();
                    if rec.len > self.limit {
                        rec.overflowed = true;
                        rec.chunks = Vec::new();
                    } else {
                        rec.chunks.push(data.clone());
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    rec.trailers = Some(t.clone());
                }
            }
            Poll::Ready(None) => rec.complete = true,
            Poll::Ready(Some(Err(_))) => rec.overflowed = true,
            _ => {}
        }
        drop(rec);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let mut rec = self.tape.lock();
        if !rec.complete && !rec.overflowed {
            rec.rest = Some(std::mem::replace(&mut self.inner, crate::body::empty()));
        }
        rec.released = true;
        drop(rec);
        self.tape.0.released.notify_waiters();
    }
}

struct Replayed {
    chunks: std::collections::VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    /// The original body's unread part, streamed after the kept chunks.
    rest: Option<Body>,
}

impl hyper::body::Body for Replayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(rest) = &mut self.rest {
            return Pin::new(rest).poll_frame(cx);
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
            && self.trailers.is_none()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let kept: u64 = self.chunks.iter().map(|c| c.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(kept),
            Some(rest) => {
                let r = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(kept + r.lower());
                if let Some(upper) = r.upper() {
                    hint.set_upper(kept + upper);
                }
                hint
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_rule_table() {
        let f = |unsent, refused, reused, idempotent| Failure {
            unsent,
            refused,
            reused,
            idempotent,
        };
        let table = [
            // Never written: always safe, whatever the method.
            (f(true, false, false, false), Some(RetryReason::Unsent)),
            (f(true, false, true, true), Some(RetryReason::Unsent)),
            // Refused by the server: it never processed it.
            (f(false, true, false, false), Some(RetryReason::Refused)),
            (f(false, true, true, false), Some(RetryReason::Refused)),
            // Written on a reused connection that died: only idempotent methods.
            (f(false, false, true, true), Some(RetryReason::Stale)),
            (f(false, false, true, false), None),
            // A fresh connection that fails is the upstream's failure, not a stale one.
            (f(false, false, false, true), None),
            (f(false, false, false, false), None),
        ];
        for (failure, want) in table {
            assert_eq!(retry_reason(failure), want, "{failure:?}");
        }
    }

    #[test]
    fn idempotent_methods() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[test]
    fn refused_streams_are_recognised_and_others_are_not() {
        // hyper wraps h2 errors; the rule walks the source chain, so a bare h2 error in a
        // std error chain must be found too.
        #[derive(Debug)]
        struct Wrap(h2::Error);
        impl std::fmt::Display for Wrap {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrap {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let refused = Wrap(h2::Error::from(h2::Reason::REFUSED_STREAM));
        assert!(refused_by_server(&refused));
        let other = Wrap(h2::Error::from(h2::Reason::INTERNAL_ERROR));
        assert!(!refused_by_server(&other));
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(!refused_by_server(&io));
    }

    async fn collect(body: Body) -> (Vec<u8>, Option<HeaderMap>) {
        let c = body.collect().await.unwrap();
        let trailers = c.trailers().cloned();
        (c.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_recorded_body_replays_exactly_once_read_to_the_end() {
        let (body, tape) = record(crate::body::full("hello world"), 64);
        assert_eq!(collect(body).await.0, b"hello world");
        let replay = tape.replay().await.expect("complete");
        assert_eq!(collect(replay).await.0, b"hello world");
        // Twice: each replay is independent.
        assert_eq!(
            collect(tape.replay().await.unwrap()).await.0,
            b"hello world"
        );
        tape.discard();
        assert!(tape.replay().await.is_none());
    }

    #[tokio::test]
    async fn an_oversized_body_is_not_kept() {
        let (body, tape) = record(crate::body::full(vec![7u8; 100]), 64);
        assert_eq!(collect(body).await.0.len(), 100, "it still streams in full");
        assert!(tape.replay().await.is_none());
    }

    #[tokio::test]
    async fn an_empty_body_is_replayable_without_reading() {
        let (_body, tape) = record(crate::body::empty(), 64);
        assert_eq!(collect(tape.replay().await.unwrap()).await.0, b"");
    }

    /// Two chunks; the test reads one, then drops the body as hyper does with a refused
    /// stream's body.
    fn two_chunks() -> Body {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"first "))),
            Ok(Frame::data(Bytes::from_static(b"second"))),
        ];
        http_body_util::StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync()
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_replays_the_read_part_then_the_rest() {
        let (mut body, tape) = record(two_chunks(), 64);
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first ");
        drop(body);
        let replay = tape.replay().await.expect("the rest was handed back");
        assert_eq!(collect(replay).await.0, b"first second");
    }

    #[tokio::test]
    async fn a_body_dropped_unread_replays_in_full() {
        let (body, tape) = record(two_chunks(), 64);
        let waiter = tokio::spawn({
            let tape = tape.clone();
            async move { tape.replay().await.map(collect) }
        });
        tokio::task::yield_now().await;
        drop(body);
        let replay = waiter.await.unwrap().expect("replayable");
        assert_eq!(replay.await.0, b"first second");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_still_held_elsewhere_is_not_replayed() {
        let (_body, tape) = record(two_chunks(), 64);
        assert!(tape.replay().await.is_none(), "gave up after RELEASE_WAIT");
    }
}
