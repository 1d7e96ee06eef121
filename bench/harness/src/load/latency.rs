//! Added latency at a fixed, moderate, open-loop rate: requests are scheduled at
//! `rate`/s regardless of answers, and each latency is measured from its scheduled time,
//! so a stalled peer cannot hide its stall by slowing the sender (coordinated omission).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use super::dial::{Alpn, Dialer};
use super::h1::{H1, get_head};
use super::{Errors, timed};
use crate::args::Args;
use crate::stats::latency_json;

/// After the schedule ends, queued requests may still run this long; the rest are dropped
/// and reported, so a peer far slower than the rate cannot stretch the run.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let dialer = Dialer::from_args(args)?;
    let conns: usize = args.num("conns", 16)?;
    let rate: f64 = args.num("rate", 200.0)?;
    let secs: f64 = args.num("secs", 5.0)?;
    let warmup: f64 = args.num("warmup", 1.0)?;
    let path = args.opt("path").unwrap_or("/1k").to_owned();
    if rate <= 0.0 {
        return Err("--rate must be positive".into());
    }
    let errors = Arc::new(Errors::default());
    let mut pool = Vec::new();
    for _ in 0..conns {
        pool.push(H1::new(
            dialer
                .open(Alpn::H1)
                .await
                .map_err(|e| format!("open: {e}"))?,
        ));
    }
    let start = Instant::now() + Duration::from_millis(50);
    let from = start + Duration::from_secs_f64(warmup);
    let end = from + Duration::from_secs_f64(secs);
    let total = ((warmup + secs) * rate) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let mut tasks = tokio::task::JoinSet::new();
    for mut conn in pool {
        let (rx, dialer, errors) = (rx.clone(), dialer.clone(), errors.clone());
        let head = get_head(&dialer.authority, &path, &dialer.auth, false);
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut dropped = 0u64;
            loop {
                let Some(scheduled) = rx.lock().await.recv().await else {
                    return (lat, dropped);
                };
                if Instant::now() > end + DRAIN_LIMIT {
                    dropped += 1;
                    continue;
                }
                let result = timed("response", async {
                    conn.send(&head).await?;
                    conn.read_response(|_| {}).await
                })
                .await;
                let done = Instant::now();
                let reopen = match result {
                    Ok(r) if r.status == 200 => {
                        if scheduled >= from {
                            lat.push((done - scheduled).as_micros() as u64);
                        }
                        !r.reusable
                    }
                    Ok(r) => {
                        errors.record("status", &r.status);
                        !r.reusable
                    }
                    Err(e) => {
                        errors.record("request", &e);
                        true
                    }
                };
                if reopen {
                    match dialer.open(Alpn::H1).await {
                        Ok(tls) => conn = H1::new(tls),
                        Err(e) => {
                            errors.record("reconnect", &e);
                            return (lat, dropped);
                        }
                    }
                }
            }
        });
    }
    for i in 0..total {
        let at = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(at).await;
        if tx.send(at).is_err() {
            break;
        }
    }
    drop(tx);
    let mut latencies = Vec::new();
    let mut dropped = 0;
    while let Some(r) = tasks.join_next().await {
        if let Ok((mut l, d)) = r {
            latencies.append(&mut l);
            dropped += d;
        }
    }
    let mut out = latency_json(&mut latencies);
    out["rate"] = rate.into();
    out["errors"] = errors.count().into();
    out["dropped"] = dropped.into();
    Ok(out)
}
