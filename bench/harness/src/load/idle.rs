//! Idle intercepted connections: open `conns` connections, each completing its TLS
//! handshake through the peer and one keep-alive request, then hold them all idle. Prints
//! `READY n` when they are open; bench/run.py samples the peer's RSS then and closes our
//! stdin, which ends the hold (so does `--hold-secs`).

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
    let conns: usize = args.num("conns", 1000)?;
    let hold = Duration::from_secs(args.num("hold-secs", 60)?);
    let errors = Arc::new(Errors::default());
    let gate = Arc::new(Semaphore::new(OPEN_CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (dialer, errors, gate) = (dialer.clone(), errors.clone(), gate.clone());
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let result = async {
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
            .await;
            match result {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.record("open", &e);
                    None
                }
            }
        });
    }
    let mut open = Vec::with_capacity(conns);
    while let Some(r) = tasks.join_next().await {
        if let Ok(Some(c)) = r {
            open.push(c);
        }
    }
    marker(&format!("READY {}", open.len()));
    // A plain thread reads stdin (tokio's stdin needs a feature the proxy does not use,
    // and matching its features lets both share one build of tokio).
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        let _ = std::io::Read::read(&mut std::io::stdin(), &mut byte);
        let _ = tx.send(());
    });
    let _ = tokio::time::timeout(hold, rx).await;
    let held = open.len();
    drop(open);
    Ok(serde_json::json!({ "open": held, "errors": errors.count() }))
}
