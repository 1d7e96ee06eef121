//! Every client connection the proxy holds: a cap on how many, whether each is busy, and a
//! way to ask it to close (the oldest idle ones when file descriptors run out; all of them,
//! gracefully, at shutdown).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::body::{Body, BoxError};
use crate::metrics::Counter;

pub struct Conns {
    capacity: usize,
    entries: Mutex<HashMap<u64, Entry>>,
    next_id: AtomicU64,
    slots: Arc<Semaphore>,
    /// Cancelled once at shutdown; every connection's own token is a child of it.
    shutdown: CancellationToken,
    /// Wakes the drain whenever a connection goes away.
    gone: tokio::sync::Notify,
    /// Connections closed at once because the cap was reached.
    pub refused: Counter,
    /// Idle connections closed to free file descriptors.
    pub shed: Counter,
}

struct Entry {
    since: Instant,
    activity: Arc<Activity>,
    close: CancellationToken,
}

/// Whether a connection has requests in flight, and since when it has had none.
///
/// Plain atomics, not a watch channel: a request starting or ending used to wake the
/// connection's task (which re-polled hyper's whole connection) and arm a fresh idle
/// timer, on every request. Now the idle check wakes only when its timer fires and
/// re-arms itself for whatever is left of the period (issue 14).
struct Activity {
    busy: AtomicUsize,
    /// Milliseconds after `epoch` when the last request ended.
    last_done: AtomicU64,
    epoch: tokio::time::Instant,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            busy: AtomicUsize::new(0),
            last_done: AtomicU64::new(0),
            epoch: tokio::time::Instant::now(),
        }
    }

    fn is_idle(&self) -> bool {
        self.busy.load(Ordering::Acquire) == 0
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How much longer the connection must stay idle to have been idle for `idle`;
    /// `None` once it has.
    fn idle_left(&self, idle: Duration) -> Option<Duration> {
        if !self.is_idle() {
            return Some(idle);
        }
        let since = Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_done.load(Ordering::Acquire)),
        );
        idle.checked_sub(since).filter(|left| !left.is_zero())
    }
}

/// One accepted connection. Cloned into whatever serves it (the CONNECT tunnel outlives
/// the HTTP/1.1 connection that asked for it); the slot is freed when the last clone goes.
#[derive(Clone)]
pub struct ConnHandle(Arc<Inner>);

struct Inner {
    id: u64,
    conns: Arc<Conns>,
    activity: Arc<Activity>,
    close: CancellationToken,
    _slot: OwnedSemaphorePermit,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.conns
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.conns.gone.notify_waiters();
    }
}

impl Conns {
    pub fn new(max_connections: usize) -> Arc<Conns> {
        Arc::new(Conns {
            capacity: max_connections,
            entries: Mutex::default(),
            next_id: AtomicU64::new(1),
            slots: Arc::new(Semaphore::new(max_connections)),
            shutdown: CancellationToken::new(),
            gone: tokio::sync::Notify::new(),
            refused: Counter::default(),
            shed: Counter::default(),
        })
    }

    /// A slot for a new connection, or `None` at the cap (the caller closes it at once).
    pub fn admit(self: &Arc<Self>) -> Option<ConnHandle> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.refused.inc();
            return None;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let activity = Arc::new(Activity::new());
        let close = self.shutdown.child_token();
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Entry {
                    since: Instant::now(),
                    activity: activity.clone(),
                    close: close.clone(),
                },
            );
        Some(ConnHandle(Arc::new(Inner {
            id,
            conns: self.clone(),
            activity,
            close,
            _slot: slot,
        })))
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Asks up to `n` idle connections, the oldest first, to close; returns how many.
    pub fn shed_idle(&self, n: usize) -> usize {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut idle: Vec<(&Instant, &CancellationToken)> = entries
            .values()
            .filter(|e| e.activity.is_idle() && !e.close.is_cancelled())
            .map(|e| (&e.since, &e.close))
            .collect();
        idle.sort_by_key(|(since, _)| **since);
        let mut count = 0;
        for (_, close) in idle.into_iter().take(n) {
            close.cancel();
            self.shed.inc();
            count += 1;
        }
        count
    }

    /// Asks every connection to finish what is in flight and close.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    pub fn shutting_down(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Resolves when no connection is left.
    pub async fn drained(&self) {
        loop {
            let gone = self.gone.notified();
            if self.is_empty() {
                return;
            }
            gone.await;
        }
    }
}

impl ConnHandle {
    /// Marks a request in flight until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.0.activity.busy.fetch_add(1, Ordering::AcqRel);
        Busy(self.0.clone())
    }

    /// Resolves when this connection is asked to close (shed, or shutdown).
    pub fn closing(&self) -> impl Future<Output = ()> + Send + 'static {
        self.0.close.clone().cancelled_owned()
    }

    /// Resolves once no request has been in flight for `idle`.
    pub fn idle_for(&self, idle: Duration) -> impl Future<Output = ()> + Send + 'static {
        let activity = self.0.activity.clone();
        async move {
            while let Some(left) = activity.idle_left(idle) {
                tokio::time::sleep(left).await;
            }
        }
    }

    /// Attaches a busy guard to `resp`, held until its body has been sent (or dropped).
    pub fn hold_until_sent(&self, resp: Response<Body>, guard: Busy) -> Response<Body> {
        resp.map(|inner| {
            HeldBody {
                inner,
                _guard: guard,
            }
            .boxed_unsync()
        })
    }
}

/// A request in flight on its connection.
pub struct Busy(Arc<Inner>);

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.0.activity;
        // Stamped before the count drops, so an idle check that sees zero in flight
        // also sees this request's end.
        activity
            .last_done
            .store(activity.now_ms(), Ordering::Release);
        activity.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

struct HeldBody {
    inner: Body,
    _guard: Busy,
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A served connection that can be asked to finish gracefully (hyper's h1 and auto ones).
pub trait Graceful {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<BoxError>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self)
    }
}

impl<I, S, E> Graceful for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<BoxError>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Data: Send,
    <S::ResBody as hyper::body::Body>::Error: Into<BoxError>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper_util::server::conn::auto::UpgradeableConnection::graceful_shutdown(self)
    }
}

/// Serves `conn` until it ends; when the connection is asked to close, or sits idle for
/// `idle`, it is told to finish what is in flight and close.
pub async fn serve<C, E>(conn: C, handle: &ConnHandle, idle: Duration) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + Graceful,
{
    tokio::pin!(conn);
    tokio::select! {
        done = conn.as_mut() => return done,
        () = handle.closing() => {}
        () = handle.idle_for(idle) => {}
    }
    conn.as_mut().graceful_shutdown();
    conn.await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_cap_refuses_and_a_freed_slot_is_reused() {
        let conns = Conns::new(2);
        let a = conns.admit().unwrap();
        let _b = conns.admit().unwrap();
        assert!(conns.admit().is_none());
        assert_eq!(conns.refused.get(), 1);
        let a2 = a.clone();
        drop(a);
        assert!(conns.admit().is_none(), "a clone still holds the slot");
        drop(a2);
        assert!(conns.admit().is_some());
    }

    #[tokio::test]
    async fn shedding_picks_the_oldest_idle_and_skips_busy_ones() {
        let conns = Conns::new(10);
        let old_busy = conns.admit().unwrap();
        let _g = old_busy.busy();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let old_idle = conns.admit().unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        let young_idle = conns.admit().unwrap();
        assert_eq!(conns.shed_idle(1), 1);
        assert!(old_idle.0.close.is_cancelled());
        assert!(!young_idle.0.close.is_cancelled());
        assert!(!old_busy.0.close.is_cancelled());
        // Already asked ones are not counted twice.
        assert_eq!(conns.shed_idle(5), 1);
        assert!(!old_busy.0.close.is_cancelled());
    }

    #[tokio::test]
    async fn shutdown_reaches_every_connection_and_drained_waits_for_them() {
        let conns = Conns::new(10);
        let a = conns.admit().unwrap();
        let closing = a.closing();
        conns.begin_shutdown();
        tokio::time::timeout(Duration::from_secs(1), closing)
            .await
            .expect("told to close");
        let waiter = tokio::spawn({
            let conns = conns.clone();
            async move { conns.drained().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("drained")
            .unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn idle_means_no_request_for_the_whole_period() {
        let conns = Conns::new(10);
        let h = conns.admit().unwrap();
        let guard = h.busy();
        let idle = tokio::spawn(h.idle_for(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!idle.is_finished(), "busy is never idle");
        drop(guard);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!idle.is_finished());
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(idle.is_finished());
    }
}
