//! Server-sent events: the upstream's `/sse?n=N` route, which sends one event per
//! `SSE_INTERVAL` and records when it handed each one to the connection, and a client-side
//! reader that splits a streaming body into events and notes when each one arrived.
//!
//! Tests compare the two records (same process, same monotonic clock) to prove order: the
//! first event reached the client before the upstream even sent the last one. That holds only
//! if the proxy forwards frame by frame; a buffering proxy delivers everything after the last
//! send.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::body::{self, TestBody};
use super::client::next_data;

/// Gap between two events, as the issue prescribes.
pub const SSE_INTERVAL: Duration = Duration::from_millis(200);
const DEFAULT_EVENTS: usize = 5;

/// The exact wire text of event `i`.
pub fn event_text(i: usize) -> String {
    format!("id: {i}\ndata: event {i}\n\n")
}

/// The `data` of event `i`, as a client parses it.
pub fn event_data(i: usize) -> String {
    format!("event {i}")
}

/// `/sse?n=N`: N events, the first at once, then one every SSE_INTERVAL. Each send time is
/// pushed to `sent` just before the event is handed over, so a recorded time is never later
/// than the real send.
pub fn route(path: &str, sent: Arc<Mutex<Vec<Instant>>>) -> Response<TestBody> {
    let n = path
        .split_once("?n=")
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(DEFAULT_EVENTS);
    let (tx, body) = body::channel_body();
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(SSE_INTERVAL).await;
            }
            sent.lock().expect("sse lock").push(Instant::now());
            if tx.send(Bytes::from(event_text(i))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body.boxed())
        .expect("response")
}

/// One event as the client received it.
#[derive(Debug)]
pub struct Received {
    pub data: String,
    pub arrived: Instant,
}

/// Splits a streaming response body into SSE events as frames arrive.
pub struct SseReader {
    body: Incoming,
    buf: String,
}

impl SseReader {
    pub fn new(body: Incoming) -> Self {
        SseReader {
            body,
            buf: String::new(),
        }
    }

    /// The next complete event, stamped when its last byte arrived; `None` at end of body.
    pub async fn next_event(&mut self) -> Option<Received> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let data = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .collect::<Vec<_>>()
                    .join("\n");
                return Some(Received {
                    data,
                    arrived: Instant::now(),
                });
            }
            let chunk = next_data(&mut self.body).await?;
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("SSE is UTF-8"));
        }
    }
}
