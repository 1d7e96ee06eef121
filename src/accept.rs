//! The accept loop every TCP listener runs: admit under the connection cap, hand the
//! connection to its entry, and survive running out of file descriptors.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::Instrument;

use crate::App;
use crate::conns::{ConnHandle, Conns};

/// Out of file descriptors: how many idle client and pooled upstream connections are
/// closed per failed accept. Enough to serve a burst of new clients, few enough that
/// busy agents keep their connections.
const SHED_BATCH: usize = 32;
/// Back-off after a failed accept, doubling up to the maximum while failures continue:
/// retrying at once would spin on a listener the kernel keeps reporting ready.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Repeated accept failures and refusals at the cap are logged once per interval, with a
/// count, so a flood cannot flood the log too.
const PRESSURE_LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Counts events and says when to log them: the first at once, then once per interval.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    pending: u64,
}

impl Throttle {
    /// Notes one event at `now`; returns the number to report if a line is due.
    pub fn note(&mut self, now: Instant, interval: Duration) -> Option<u64> {
        self.pending += 1;
        match self.last {
            Some(last) if now.duration_since(last) < interval => None,
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.pending))
            }
        }
    }
}

/// EMFILE/ENFILE (and the buffer-space errors that come with them): the process or system is
/// out of descriptors; closing some of ours is the only way to serve again.
fn is_fd_exhaustion(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ENOBUFS | nix::libc::ENOMEM)
    )
}

/// Runs until `stop`. Connections take their slot from `slots`: the client-facing
/// listeners share the proxy's cap, the admin listener has its own so that `/metrics` and
/// `/healthz` still answer during a flood.
pub async fn accept_loop<F, Fut>(
    app: Arc<App>,
    slots: Arc<Conns>,
    listener: TcpListener,
    role: &'static str,
    mut stop: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr, SocketAddr, ConnHandle) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut at_cap = Throttle::default();
    let mut out_of_fds = Throttle::default();
    loop {
        let accepted = tokio::select! {
            // The guard `wait_for` returns is not Send; drop it inside the branch future.
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                let Some(handle) = slots.admit() else {
                    // Closed at once: a fast refusal beats a queue nobody will serve.
                    drop(stream);
                    if let Some(n) = at_cap.note(Instant::now(), PRESSURE_LOG_INTERVAL) {
                        tracing::warn!(
                            role,
                            refused = n,
                            "connection cap reached ({} connections): refused new connections; raise PAUDE_PROXY_MAX_CONNECTIONS if they are legitimate",
                            slots.capacity()
                        );
                    }
                    continue;
                };
                let local = stream.local_addr().ok().or(local).unwrap_or(peer);
                let span = tracing::info_span!("conn", client = %peer);
                app.tasks
                    .spawn(serve(stream, peer, local, handle).instrument(span));
            }
            Err(e) if is_fd_exhaustion(&e) => {
                let clients = app.conns.shed_idle(SHED_BATCH);
                let upstreams = app.upstream.shed_idle(SHED_BATCH);
                if let Some(n) = out_of_fds.note(Instant::now(), PRESSURE_LOG_INTERVAL) {
                    tracing::warn!(
                        role,
                        failures = n,
                        "accept failed: {e}; closing idle connections to recover ({clients} client, {upstreams} upstream this time); raise the descriptor limit (ulimit -n) or lower PAUDE_PROXY_MAX_CONNECTIONS"
                    );
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
            Err(e) => {
                if let Some(n) = out_of_fds.note(Instant::now(), PRESSURE_LOG_INTERVAL) {
                    tracing::warn!(role, failures = n, "accept failed: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_reports_the_first_then_once_per_interval_with_a_count() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t = Throttle::default();
        assert_eq!(t.note(t0, s * 5), Some(1));
        for i in 1..=9 {
            assert_eq!(t.note(t0 + s * i / 10, s * 5), None);
        }
        assert_eq!(
            t.note(t0 + s * 5, s * 5),
            Some(10),
            "the nine held back plus this one"
        );
        assert_eq!(t.note(t0 + s * 6, s * 5), None);
    }

    #[test]
    fn descriptor_exhaustion_is_recognised() {
        let emfile = std::io::Error::from_raw_os_error(nix::libc::EMFILE);
        let enfile = std::io::Error::from_raw_os_error(nix::libc::ENFILE);
        let other = std::io::Error::from_raw_os_error(nix::libc::ECONNABORTED);
        assert!(is_fd_exhaustion(&emfile));
        assert!(is_fd_exhaustion(&enfile));
        assert!(!is_fd_exhaustion(&other));
    }
}
