//! Log lines reach stderr in batches: request tasks append to one buffer, a thread writes it.
//!
//! Why not `tracing_appender::non_blocking`: it hands every line to its writer thread
//! through a channel, so under keep-alive load each request's "injected" line woke that
//! thread (a futex wake, its `sched_yield` spinning, a context switch) and cost one
//! `write(2)`. On 2 cores that was about a fifth of the proxy's CPU per request
//! (issue 14). Here a line is a `memcpy` under a mutex; the writer thread is woken once
//! when the buffer goes from empty to non-empty, waits [`COALESCE`] for more lines, and
//! writes them all at once. Nothing is dropped: a full buffer makes the logging task
//! wait, as the channel did.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long the writer thread gathers lines before writing them: short enough that a
/// person tailing the log sees nothing late, long enough that a busy proxy writes a few
/// hundred times a second instead of once per request.
const COALESCE: Duration = Duration::from_millis(5);

/// Buffered bytes at which the writer thread stops waiting and writes at once.
const HIGH_WATER: usize = 256 * 1024;

/// Buffered bytes at which a logging task waits for the writer thread (back-pressure,
/// as the bounded channel gave): a stuck stderr must not grow the proxy's memory.
const MAX_PENDING: usize = 4 * 1024 * 1024;

/// A batch buffer larger than this is not kept for reuse after a burst.
const KEEP_CAPACITY: usize = 1024 * 1024;

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The writer thread waits here for lines (or for the high-water mark).
    wake: Condvar,
    /// Logging tasks wait here while the buffer is over [`MAX_PENDING`].
    drained: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a byte buffer, still fine to write.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `MakeWriter` handed to the fmt layer.
#[derive(Clone)]
pub struct BatchWriter {
    shared: Arc<Shared>,
}

/// Writes what is left and stops the writer thread when dropped (at the end of `main`).
pub struct FlushGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// Starts the writer thread over `sink`.
pub fn spawn<W: Write + Send + 'static>(sink: W) -> io::Result<(BatchWriter, FlushGuard)> {
    let shared = Arc::new(Shared::default());
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn({
            let shared = shared.clone();
            move || write_batches(&shared, sink)
        })?;
    Ok((
        BatchWriter {
            shared: shared.clone(),
        },
        FlushGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

fn write_batches<W: Write>(shared: &Shared, mut sink: W) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && !state.closed {
            state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        if state.buf.is_empty() {
            return; // closed and nothing left
        }
        if !state.closed && state.buf.len() < HIGH_WATER {
            state = shared
                .wake
                .wait_timeout(state, COALESCE)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        std::mem::swap(&mut state.buf, &mut batch);
        drop(state);
        shared.drained.notify_all();
        // stderr failing (closed by the parent) must not stop the proxy; the lines are lost
        // either way.
        let _ = sink.write_all(&batch).and_then(|()| sink.flush());
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::new();
        }
    }
}

impl Drop for FlushGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's bytes (the fmt layer formats a whole line, then writes it once).
pub struct Line<'a> {
    shared: &'a Shared,
}

impl Write for Line<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut state = self.shared.lock();
        while state.buf.len() >= MAX_PENDING && !state.closed {
            state = self
                .shared
                .drained
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        let was_empty = state.buf.is_empty();
        state.buf.extend_from_slice(bytes);
        let urgent = state.buf.len() >= HIGH_WATER;
        drop(state);
        if was_empty || urgent {
            self.shared.wake.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchWriter {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line {
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink the test can read after the guard is dropped.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_arrives_whole_and_in_order_per_thread_by_the_time_the_guard_drops() {
        let sink = Sink::default();
        let (writer, guard) = spawn(sink.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let writer = writer.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        let line = format!("thread={t} line={i} {}\n", "x".repeat(i % 300));
                        writer.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let out = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let mut next = [0usize; 4];
        for line in out.lines() {
            let mut words = line.split(' ');
            let t: usize = words.next().unwrap()["thread=".len()..].parse().unwrap();
            let i: usize = words.next().unwrap()["line=".len()..].parse().unwrap();
            assert_eq!(i, next[t], "thread {t} out of order");
            assert_eq!(words.next().unwrap_or("").len(), i % 300, "line torn");
            next[t] += 1;
        }
        assert_eq!(next, [5_000; 4]);
    }

    #[test]
    fn a_lone_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (writer, _guard) = spawn(sink.clone()).unwrap();
        writer.make_writer().write_all(b"one\n").unwrap();
        // Generous: the thread writes after COALESCE (5 ms); this only has to see it
        // eventually, without the guard being dropped.
        for _ in 0..500 {
            if sink.0.lock().unwrap().as_slice() == b"one\n" {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the line was never written");
    }
}
