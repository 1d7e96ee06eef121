//! New-connection rate: `conns` workers each loop over connect (+ CONNECT) + full TLS
//! handshake + one request with `Connection: close`. With `--path /1k` the peer may reuse
//! its upstream connection (pooled figure); `/close` makes the upstream close after every
//! answer, so the peer must dial and handshake upstream each time (non-pooled figure).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::dial::{Alpn, Dialer};
use super::h1::{H1, get_head};
use super::{Errors, marker, timed};
use crate::args::Args;
use crate::stats::latency_json;

pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let dialer = Dialer::from_args(args)?;
    let conns: usize = args.num("conns", 32)?;
    let secs: f64 = args.num("secs", 5.0)?;
    let warmup: f64 = args.num("warmup", 1.0)?;
    let path = args.opt("path").unwrap_or("/1k").to_owned();
    let errors = Arc::new(Errors::default());
    let start = Instant::now();
    let from = start + Duration::from_secs_f64(warmup);
    let to = from + Duration::from_secs_f64(secs);
    let markers = tokio::spawn(async move {
        tokio::time::sleep_until(from).await;
        marker("MEASURE_START");
        tokio::time::sleep_until(to).await;
        marker("MEASURE_END");
    });
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (dialer, errors) = (dialer.clone(), errors.clone());
        let head = get_head(&dialer.authority, &path, &dialer.auth, true);
        tasks.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t0 = Instant::now();
                if t0 >= to {
                    return lat;
                }
                let result = async {
                    let mut conn = H1::new(dialer.open(Alpn::H1).await?);
                    timed("response", async {
                        conn.send(&head).await?;
                        conn.read_response(|_| {}).await
                    })
                    .await
                }
                .await;
                let t1 = Instant::now();
                match result {
                    Ok(r) if r.status == 200 => {
                        if t1 >= from && t1 < to {
                            lat.push((t1 - t0).as_micros() as u64);
                        }
                    }
                    Ok(r) => errors.record("status", &r.status),
                    Err(e) => {
                        errors.record("connection", &e);
                        // A refusing peer must not turn this loop into a busy spin.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        });
    }
    let mut latencies = Vec::new();
    while let Some(r) = tasks.join_next().await {
        if let Ok(mut l) = r {
            latencies.append(&mut l);
        }
    }
    let _ = markers.await;
    let ok = latencies.len() as u64;
    let mut out = latency_json(&mut latencies);
    out["ok"] = ok.into();
    out["errors"] = errors.count().into();
    out["secs"] = secs.into();
    out["rps"] = (ok as f64 / secs).into();
    Ok(out)
}
