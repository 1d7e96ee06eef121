//! SSE delivery delay: `streams` concurrent event streams; each event carries the time the
//! upstream handed it to its connection, and the client notes when it arrived. The peer's
//! added delay is this figure minus the direct one.

use std::sync::Arc;

use super::dial::{Alpn, Dialer};
use super::h1::{H1, get_head};
use super::{Errors, IO_TIMEOUT};
use crate::args::Args;
use crate::stats::latency_json;
use crate::unix_nanos;

pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let dialer = Dialer::from_args(args)?;
    let streams: usize = args.num("streams", 4)?;
    let events: u64 = args.num("events", 40)?;
    let interval_ms: u64 = args.num("interval-ms", 25)?;
    let path = format!("/sse?n={events}&ms={interval_ms}");
    let errors = Arc::new(Errors::default());
    // The whole stream must arrive within its nominal length plus the usual slack.
    let limit = IO_TIMEOUT + std::time::Duration::from_millis(events * interval_ms);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let (dialer, errors, path) = (dialer.clone(), errors.clone(), path.clone());
        tasks.spawn(async move {
            let mut delays = Vec::new();
            let result = tokio::time::timeout(limit, async {
                let mut conn = H1::new(dialer.open(Alpn::H1).await?);
                conn.send(&get_head(&dialer.authority, &path, &dialer.auth, false))
                    .await?;
                let mut pending = String::new();
                let r = conn
                    .read_response(|bytes| {
                        let now = unix_nanos();
                        pending.push_str(&String::from_utf8_lossy(bytes));
                        while let Some(end) = pending.find("\n\n") {
                            let event: String = pending.drain(..end + 2).collect();
                            let sent = event
                                .trim()
                                .strip_prefix("data: ")
                                .and_then(|v| v.parse::<u128>().ok());
                            if let Some(sent) = sent {
                                delays.push((now.saturating_sub(sent) / 1000) as u64);
                            }
                        }
                    })
                    .await?;
                Ok::<_, std::io::Error>(r.status)
            })
            .await;
            match result {
                Ok(Ok(200)) => {}
                Ok(Ok(status)) => errors.record("status", &status),
                Ok(Err(e)) => errors.record("stream", &e),
                Err(_) => errors.record("stream", &"timed out"),
            }
            delays
        });
    }
    let mut delays = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(mut d) = r {
            delays.append(&mut d);
        }
    }
    let expected = events * streams as u64;
    let mut out = latency_json(&mut delays);
    out["expected"] = expected.into();
    out["errors"] = (errors.count() + expected.saturating_sub(delays.len() as u64)).into();
    Ok(out)
}
