//! Masks an injected credential in what comes back from the upstream (DESIGN.md §3.7): an
//! upstream that echoes request headers (TRACE-like or debug endpoints, error pages that
//! quote the request) must not hand the real key to the agent.
//!
//! Works on the stream: each occurrence is overwritten with `*` of the same length, so
//! `Content-Length` stays right, and only bytes that could begin an occurrence split across
//! two frames are held back, so streamed events are not delayed.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http::header::HeaderValue;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use memchr::memmem::Finder;

use crate::body::{Body, BoxError};

/// Shorter values are not scrubbed: masking them would corrupt ordinary data.
const MIN_SCRUB_LEN: usize = 8;

/// The byte strings to mask for one route (the raw secret, and derived encodings), each
/// with what replaces it: `*` of the same length, or a stand-in the agent knows.
#[derive(Clone, Debug)]
pub struct Needles(Arc<Vec<(Finder<'static>, Option<Bytes>)>>);

impl Needles {
    pub fn new(values: impl IntoIterator<Item = Vec<u8>>) -> Needles {
        Needles::with_stand_ins(values, Vec::new())
    }

    /// Like [`Needles::new`], plus secrets replaced by a stand-in rather than masked: the
    /// agent compares an echo of such a value with its own placeholder copy (Codex checks
    /// that the account list it is sent names its account id). A stand-in of another
    /// length changes the body's length, so `Content-Length` is then dropped.
    pub fn with_stand_ins(
        masked: impl IntoIterator<Item = Vec<u8>>,
        replaced: Vec<(Vec<u8>, &'static str)>,
    ) -> Needles {
        // Stand-ins first: once replaced, a masking needle for the same value finds nothing.
        let replaced = replaced
            .into_iter()
            .map(|(v, s)| (v, Some(Bytes::from_static(s.as_bytes()))));
        let finders = replaced
            .chain(masked.into_iter().map(|v| (v, None)))
            .filter(|(v, _)| v.len() >= MIN_SCRUB_LEN)
            .map(|(v, s)| (Finder::new(&v).into_owned(), s))
            .collect();
        Needles(Arc::new(finders))
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when a replacement can change the length of what it scrubs.
    fn changes_length(&self) -> bool {
        self.0
            .iter()
            .any(|(f, s)| s.as_ref().is_some_and(|s| s.len() != f.needle().len()))
    }

    /// Masks every occurrence in `data`; `None` when there is none (no copy made).
    fn mask(&self, data: &[u8]) -> Option<BytesMut> {
        let mut out: Option<BytesMut> = None;
        for (f, stand_in) in self.0.iter() {
            let len = f.needle().len();
            let current = out.as_deref().unwrap_or(data);
            let hits: Vec<usize> = f.find_iter(current).collect();
            if hits.is_empty() {
                continue;
            }
            let mut next = BytesMut::with_capacity(current.len());
            let mut at = 0;
            for pos in hits {
                next.extend_from_slice(&current[at..pos]);
                match stand_in {
                    Some(s) => next.extend_from_slice(s),
                    None => next.resize(next.len() + len, b'*'),
                }
                at = pos + len;
            }
            next.extend_from_slice(&current[at..]);
            out = Some(next);
        }
        out
    }

    /// Length of the longest suffix of `data` that is a proper prefix of some needle.
    fn partial_suffix(&self, data: &[u8]) -> usize {
        let mut best = 0;
        for (f, _) in self.0.iter() {
            let needle = f.needle();
            let longest = (needle.len() - 1).min(data.len());
            for k in (best + 1..=longest).rev() {
                if data.ends_with(&needle[..k]) {
                    best = k;
                    break;
                }
            }
        }
        best
    }

    /// Masks header values that contain a needle.
    pub fn scrub_headers(&self, headers: &mut HeaderMap) {
        if self.is_empty() {
            return;
        }
        if self.changes_length() {
            headers.remove(http::header::CONTENT_LENGTH);
        }
        for value in headers.values_mut() {
            if let Some(masked) = self.mask(value.as_bytes())
                && let Ok(v) = HeaderValue::from_bytes(&masked)
            {
                *value = v;
            }
        }
    }

    /// Wraps a response body; a no-op wrapper-free pass-through when there is nothing to mask.
    pub fn scrub_body(&self, body: Body) -> Body {
        if self.is_empty() {
            return body;
        }
        Body::new(Scrubbed {
            inner: body,
            needles: self.clone(),
            held: Bytes::new(),
            trailers: None,
            done: false,
        })
    }
}

struct Scrubbed {
    inner: Body,
    needles: Needles,
    /// Bytes that may be the start of an occurrence continuing in the next frame.
    held: Bytes,
    /// Trailers that arrived while bytes were held; sent right after them.
    trailers: Option<HeaderMap>,
    done: bool,
}

impl HttpBody for Scrubbed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(t) = self.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(chunk) => {
                        let data = if self.held.is_empty() {
                            chunk
                        } else {
                            let mut joined = BytesMut::with_capacity(self.held.len() + chunk.len());
                            joined.extend_from_slice(&self.held);
                            joined.extend_from_slice(&chunk);
                            joined.freeze()
                        };
                        let data = match self.needles.mask(&data) {
                            Some(masked) => masked.freeze(),
                            None => data,
                        };
                        let keep = self.needles.partial_suffix(&data);
                        self.held = data.slice(data.len() - keep..);
                        Frame::data(data.slice(..data.len() - keep))
                    }
                    // Trailers end the data: release what was held first.
                    Err(other) if !self.held.is_empty() => {
                        self.trailers = other.into_trailers().ok();
                        Frame::data(std::mem::take(&mut self.held))
                    }
                    Err(other) => other,
                };
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.done = true;
                if self.held.is_empty() {
                    Poll::Ready(None)
                } else {
                    Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut self.held)))))
                }
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || (self.held.is_empty() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.needles.changes_length() {
            // A stand-in may grow or shrink the body: its length is no longer known.
            return SizeHint::default();
        }
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn needles() -> Needles {
        Needles::new([b"sk-REAL-secret-123".to_vec(), b"short".to_vec()])
    }

    /// A body that yields the given chunks, one frame each.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl HttpBody for Chunks {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    async fn run(chunks: &[&[u8]]) -> Vec<Vec<u8>> {
        let body = Body::new(Chunks(
            chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect(),
        ));
        let mut scrubbed = needles().scrub_body(body);
        let mut out = Vec::new();
        while let Some(f) = scrubbed.frame().await {
            if let Ok(d) = f.unwrap().into_data() {
                out.push(d.to_vec());
            }
        }
        out
    }

    #[tokio::test]
    async fn masks_whole_and_split_occurrences_with_the_same_length() {
        let out = run(&[b"a sk-REAL-secret-123 b", b"x sk-REAL-", b"secret-123 y"]).await;
        let joined: Vec<u8> = out.concat();
        assert_eq!(
            String::from_utf8(joined).unwrap(),
            "a ****************** bx ****************** y"
        );
    }

    #[tokio::test]
    async fn ordinary_frames_pass_without_delay() {
        // An SSE event must come out in the frame it went in with: nothing held back.
        let out = run(&[b"data: {\"a\":1}\n\n", b"data: {\"b\":2}\n\n"]).await;
        assert_eq!(
            out,
            vec![
                b"data: {\"a\":1}\n\n".to_vec(),
                b"data: {\"b\":2}\n\n".to_vec()
            ]
        );
        // A frame ending in a possible start is held only until the next frame.
        let out = run(&[b"tail sk-RE", b"ST of it"]).await;
        assert_eq!(out.concat(), b"tail sk-REST of it".to_vec());
        assert_eq!(out[0], b"tail ".to_vec());
    }

    #[tokio::test]
    async fn a_stand_in_replaces_its_secret_and_drops_the_length() {
        let needles = Needles::with_stand_ins(
            [b"sk-REAL-secret-123".to_vec()],
            vec![(b"acct-REAL-0123456789".to_vec(), "placeholder-acct")],
        );
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from_static("60"));
        h.insert("x-echo", HeaderValue::from_static("acct-REAL-0123456789"));
        needles.scrub_headers(&mut h);
        assert_eq!(h["x-echo"], "placeholder-acct");
        assert!(h.get(http::header::CONTENT_LENGTH).is_none(), "{h:?}");
        let body = Body::new(Chunks(
            [
                &b"{\"id\":\"acct-REAL-01"[..],
                b"23456789\",\"t\":\"sk-REAL-secret-123\"}",
            ]
            .iter()
            .map(|c| Bytes::copy_from_slice(c))
            .collect(),
        ));
        let scrubbed = needles.scrub_body(body);
        assert!(scrubbed.size_hint().exact().is_none());
        let out = scrubbed.collect().await.unwrap().to_bytes();
        assert_eq!(
            String::from_utf8(out.to_vec()).unwrap(),
            "{\"id\":\"placeholder-acct\",\"t\":\"******************\"}"
        );
        let same = Needles::new([b"sk-REAL-secret-123".to_vec()]);
        assert!(!same.changes_length(), "masking keeps Content-Length");
    }

    #[test]
    fn headers_and_short_values() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-echo",
            HeaderValue::from_static("Bearer sk-REAL-secret-123"),
        );
        h.insert("x-short", HeaderValue::from_static("short"));
        needles().scrub_headers(&mut h);
        assert_eq!(h["x-echo"], "Bearer ******************");
        assert_eq!(
            h["x-short"], "short",
            "values under 8 bytes are never masked"
        );
    }
}
