//! Body data frames that are ready together go on as one frame.
//!
//! An h2 peer's DATA frames are small (nginx sends 8 KiB), and each frame forwarded to an
//! h2 peer on its own costs a hand-off between three tasks (the receiving connection, the
//! stream, the sending connection), one write and one wake-up of the reader. What is
//! already buffered when the body is polled is joined until it reaches [`MAX_JOINED`]; nothing is
//! ever waited for, so an event stream's frames still leave the moment they arrive.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use hyper::body::{Body as HttpBody, Frame, SizeHint};

use crate::body::{Body, BoxError};

/// Where joining stops: four frames at h2's default 16 KiB frame size, and rustls' default
/// send buffer, so a joined frame never waits for room in rustls.
pub const MAX_JOINED: usize = 64 << 10;

/// `body` with ready data frames joined (see the module comment).
pub fn coalesce(body: Body) -> Body {
    // Most requests have no body at all: nothing to join, no wrapper to allocate.
    if body.is_end_stream() {
        return body;
    }
    Body::new(Coalesced {
        inner: body,
        held: None,
        ended: false,
    })
}

struct Coalesced {
    inner: Body,
    /// A trailers frame or an error met while joining, returned on the next poll.
    held: Option<Result<Frame<Bytes>, BoxError>>,
    /// The inner body returned its end while joining.
    ended: bool,
}

impl HttpBody for Coalesced {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(held) = self.held.take() {
            return Poll::Ready(Some(held));
        }
        if self.ended {
            return Poll::Ready(None);
        }
        let first = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                Err(other) => return Poll::Ready(Some(Ok(other))),
            },
            other => return other,
        };
        let mut joined: Option<BytesMut> = None;
        while joined.as_ref().map_or(first.len(), BytesMut::len) < MAX_JOINED {
            // Pending leaves the waker with the inner body: what arrives next wakes us.
            let Poll::Ready(next) = Pin::new(&mut self.inner).poll_frame(cx) else {
                break;
            };
            match next {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => joined
                        .get_or_insert_with(|| {
                            let mut b = BytesMut::with_capacity(MAX_JOINED);
                            b.extend_from_slice(&first);
                            b
                        })
                        .extend_from_slice(&data),
                    Err(trailers) => {
                        self.held = Some(Ok(trailers));
                        break;
                    }
                },
                Some(Err(e)) => {
                    self.held = Some(Err(e));
                    break;
                }
                None => {
                    self.ended = true;
                    break;
                }
            }
        }
        let data = joined.map_or(first, BytesMut::freeze);
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // No data is ever held back, so what the inner body has left is what we have left.
        if self.ended {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// Frames that are ready or not as scripted: `None` is one `Pending` (and a wake-up).
    struct Script(VecDeque<Option<Result<Frame<Bytes>, BoxError>>>);

    impl HttpBody for Script {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            match self.0.pop_front() {
                Some(Some(f)) => Poll::Ready(Some(f)),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None => Poll::Ready(None),
            }
        }
    }

    fn data(b: &[u8]) -> Option<Result<Frame<Bytes>, BoxError>> {
        Some(Ok(Frame::data(Bytes::copy_from_slice(b))))
    }

    async fn frames(script: Vec<Option<Result<Frame<Bytes>, BoxError>>>) -> Vec<String> {
        let mut body = coalesce(Body::new(Script(script.into())));
        let mut out = Vec::new();
        while let Some(f) = body.frame().await {
            out.push(match f {
                Ok(f) if f.is_data() => {
                    String::from_utf8(f.into_data().unwrap_or_default().to_vec()).unwrap()
                }
                Ok(f) => format!("trailers {:?}", f.into_trailers().ok().map(|t| t.len())),
                Err(e) => format!("error {e}"),
            });
        }
        out
    }

    #[tokio::test]
    async fn ready_frames_join_and_a_pending_one_ends_the_batch() {
        let got = frames(vec![
            data(b"a"),
            data(b"b"),
            data(b"c"),
            None,
            data(b"d"),
            None,
            data(b"e"),
        ])
        .await;
        assert_eq!(got, ["abc", "d", "e"]);
    }

    #[tokio::test]
    async fn trailers_and_errors_keep_their_place() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let got = frames(vec![
            data(b"a"),
            data(b"b"),
            Some(Ok(Frame::trailers(trailers))),
        ])
        .await;
        assert_eq!(got, ["ab", "trailers Some(1)"]);
        let got = frames(vec![data(b"a"), data(b"b"), Some(Err("cut".into()))]).await;
        assert_eq!(got, ["ab", "error cut"]);
    }

    #[tokio::test]
    async fn a_joined_frame_stops_at_the_limit() {
        let chunk = vec![b'x'; 40 << 10];
        let script = (0..4).map(|_| data(&chunk)).collect();
        let got = frames(script).await;
        let sizes: Vec<usize> = got.iter().map(String::len).collect();
        assert_eq!(sizes, [80 << 10, 80 << 10]);
    }
}
