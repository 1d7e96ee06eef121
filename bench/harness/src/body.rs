//! Response bodies of the bench upstream: a fixed buffer, N repeated bytes streamed in
//! chunks, or frames pushed by a task (SSE). All are zero-copy slices of shared buffers.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

pub enum BenchBody {
    Full(Option<Bytes>),
    /// `left` more bytes, served as slices of `chunk`.
    Repeat {
        left: u64,
        chunk: Bytes,
    },
    Channel(mpsc::Receiver<Bytes>),
}

impl Body for BenchBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            BenchBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            BenchBody::Repeat { left, chunk } => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(chunk.len() as u64) as usize;
                *left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.slice(..n)))))
            }
            BenchBody::Channel(rx) => rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            BenchBody::Full(b) => b.is_none(),
            BenchBody::Repeat { left, .. } => *left == 0,
            BenchBody::Channel(_) => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            BenchBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            BenchBody::Repeat { left, .. } => SizeHint::with_exact(*left),
            BenchBody::Channel(_) => SizeHint::default(),
        }
    }
}
