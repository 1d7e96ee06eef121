//! Closed-loop keep-alive rate: `conns` connections (h1), or `conns` h2 connections with
//! `streams` concurrent streams each, send requests back to back. Requests completed inside
//! the measured window count; their latencies give p50/p99 under load.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::dial::{Alpn, Dialer};
use super::h1::{H1, get_head};
use super::{Errors, h2, marker, timed};
use crate::args::Args;
use crate::stats::latency_json;

struct Window {
    from: Instant,
    to: Instant,
}

impl Window {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && t < self.to
    }
}

pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let dialer = Dialer::from_args(args)?;
    let conns: usize = args.num("conns", 64)?;
    let streams: usize = args.num("streams", 1)?;
    let secs: f64 = args.num("secs", 5.0)?;
    let warmup: f64 = args.num("warmup", 1.0)?;
    let path = args.opt("path").unwrap_or("/1k").to_owned();
    let proto = args.opt("proto").unwrap_or("h1");
    let errors = Arc::new(Errors::default());

    // Connections first, so the window measures requests, not handshakes.
    let mut h1_conns = Vec::new();
    let mut h2_conns = Vec::new();
    for _ in 0..conns {
        match proto {
            "h1" => h1_conns.push(
                dialer
                    .open(Alpn::H1)
                    .await
                    .map_err(|e| format!("open: {e}"))?,
            ),
            "h2" => h2_conns.push(
                h2::connect(&dialer)
                    .await
                    .map_err(|e| format!("open: {e}"))?,
            ),
            p => return Err(format!("--proto {p}: expected h1 or h2")),
        }
    }
    let start = Instant::now();
    let window = Arc::new(Window {
        from: start + Duration::from_secs_f64(warmup),
        to: start + Duration::from_secs_f64(warmup + secs),
    });
    let markers = {
        let w = window.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(w.from).await;
            marker("MEASURE_START");
            tokio::time::sleep_until(w.to).await;
            marker("MEASURE_END");
        })
    };

    let mut tasks = tokio::task::JoinSet::new();
    for tls in h1_conns {
        let (d, w, e, p) = (dialer.clone(), window.clone(), errors.clone(), path.clone());
        tasks.spawn(async move { h1_worker(H1::new(tls), d, w, e, p).await });
    }
    for sender in h2_conns {
        for _ in 0..streams {
            let (d, w, e, p) = (dialer.clone(), window.clone(), errors.clone(), path.clone());
            let s = sender.clone();
            tasks.spawn(async move { h2_worker(s, d, w, e, p).await });
        }
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

async fn h1_worker(
    mut conn: H1<super::dial::Tls>,
    dialer: Dialer,
    window: Arc<Window>,
    errors: Arc<Errors>,
    path: String,
) -> Vec<u64> {
    let head = get_head(&dialer.authority, &path, &dialer.auth, false);
    let mut lat = Vec::with_capacity(1 << 14);
    loop {
        let t0 = Instant::now();
        if t0 >= window.to {
            return lat;
        }
        let result = timed("response", async {
            conn.send(&head).await?;
            conn.read_response(|_| {}).await
        })
        .await;
        let t1 = Instant::now();
        let reopen = match result {
            Ok(r) if r.status == 200 => {
                if window.contains(t1) {
                    lat.push((t1 - t0).as_micros() as u64);
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
        if reopen && Instant::now() < window.to {
            match dialer.open(Alpn::H1).await {
                Ok(tls) => conn = H1::new(tls),
                Err(e) => {
                    errors.record("reconnect", &e);
                    return lat;
                }
            }
        }
    }
}

async fn h2_worker(
    mut sender: h2::Sender,
    dialer: Dialer,
    window: Arc<Window>,
    errors: Arc<Errors>,
    path: String,
) -> Vec<u64> {
    let mut lat = Vec::with_capacity(1 << 14);
    loop {
        let t0 = Instant::now();
        if t0 >= window.to {
            return lat;
        }
        match h2::get(&mut sender, &dialer, &path).await {
            Ok((200, _)) => {
                let t1 = Instant::now();
                if window.contains(t1) {
                    lat.push((t1 - t0).as_micros() as u64);
                }
            }
            Ok((status, _)) => errors.record("status", &status),
            Err(e) => {
                // A dead h2 connection fails every stream on it; stop rather than spin.
                errors.record("h2 request", &e);
                return lat;
            }
        }
    }
}
