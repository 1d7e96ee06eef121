//! The load generator: one client, used identically for every peer. Each row of the
//! benchmark is one module; `dial` and `h1` are the shared plumbing.

pub mod bulk;
pub mod dial;
pub mod h1;
pub mod h2;
pub mod idle;
pub mod latency;
pub mod newconn;
pub mod rate;
pub mod sse;

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Any single wait on the network (connect, CONNECT answer, handshake, a response) longer
/// than this is an error: a stuck peer fails the run instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(15);

/// Prints a marker line for bench/run.py, which samples the proxy's CPU time when it reads
/// it, so CPU is charged to exactly the measured window.
pub fn marker(name: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{name}");
    let _ = out.flush();
}

/// Error count plus the first few messages, so a broken peer explains itself on stderr.
#[derive(Default)]
pub struct Errors {
    count: AtomicU64,
}

/// How many error messages are printed before only counting.
const ERRORS_SHOWN: u64 = 5;

impl Errors {
    pub fn record(&self, what: &str, e: &dyn std::fmt::Display) {
        let n = self.count.fetch_add(1, Ordering::Relaxed);
        if n < ERRORS_SHOWN {
            eprintln!("bench-load: {what}: {e}");
        }
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// Wraps a future in [`IO_TIMEOUT`], turning expiry into an `io::Error`.
pub async fn timed<T>(
    what: &'static str,
    fut: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    match tokio::time::timeout(IO_TIMEOUT, fut).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what} timed out after {IO_TIMEOUT:?}"),
        )),
    }
}
