//! Idle intercepted connections: open `conns` connections, each completing its TLS
//! handshake through the peer and one keep-alive request, then hold them all idle. Prints
//! `READY n` when they are open; bench/run.py samples the peer's RSS then and closes our
//! stdin, which ends the hold (so does `--hold-secs`).
//!
//! `--conns 1000,10000` opens in stages (cumulative counts): after each `READY n` but the
//! last, a line on stdin opens the next stage while the earlier connections stay open, so
//! one proxy shows its growth at both sizes without reusing memory freed in between.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use super::dial::{Alpn, Dialer};
use super::h1::{H1, get_head};
use super::{Errors, marker, timed};
use crate::args::Args;

/// Connections being opened at once: enough to be quick, few enough not to look like a
/// burst the peer must queue.
const OPEN_CONCURRENCY: usize = 32;

pub async fn run(args: &Args) -> Result<serde_json::Value, String> {
    let dialer = Dialer::from_args(args)?;
    let stages: Vec<usize> = args
        .opt("conns")
        .unwrap_or("1000")
        .split(',')
        .map(|n| n.trim().parse().map_err(|_| format!("bad --conns {n}")))
        .collect::<Result<_, _>>()?;
    let hold = Duration::from_secs(args.num("hold-secs", 60)?);
    let errors = Arc::new(Errors::default());
    let gate = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    // A plain thread reads stdin (tokio's stdin needs a feature the proxy does not use,
    // and matching its features lets both share one build of tokio): one message per
    // line, then one for EOF.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    std::thread::spawn(move || {
        let mut line = String::new();
        loop {
            line.clear();
            let more = matches!(std::io::stdin().read_line(&mut line), Ok(n) if n > 0);
            if tx.send(more).is_err() || !more {
                return;
            }
        }
    });
    let mut open = Vec::new();
    for (i, &target) in stages.iter().enumerate() {
        let want = target.saturating_sub(open.len());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..want {
            let (dialer, errors, gate) = (dialer.clone(), errors.clone(), gate.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.ok()?;
                match open_one(&dialer).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        errors.record("open", &e);
                        None
                    }
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            if let Ok(Some(c)) = r {
                open.push(c);
            }
        }
        marker(&format!("READY {}", open.len()));
        if i + 1 < stages.len() {
            match tokio::time::timeout(hold, rx.recv()).await {
                Ok(Some(true)) => continue,
                _ => break,
            }
        }
        let _ = tokio::time::timeout(hold, async {
            while let Some(true) = rx.recv().await {}
        })
        .await;
    }
    let held = open.len();
    drop(open);
    Ok(serde_json::json!({ "open": held, "errors": errors.count() }))
}

async fn open_one(dialer: &Dialer) -> std::io::Result<H1<super::dial::Tls>> {
    let mut conn = H1::new(dialer.open(Alpn::H1).await?);
    let head = get_head(&dialer.authority, "/1k", &dialer.auth, false);
    let r = timed("response", async {
        conn.send(&head).await?;
        conn.read_response(|_| {}).await
    })
    .await?;
    if r.status != 200 || !r.reusable {
        return Err(std::io::Error::other(format!("status {}", r.status)));
    }
    Ok(conn)
}
