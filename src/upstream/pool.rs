//! Reusable upstream connections: idle HTTP/1.1 connections and shared HTTP/2 ones, per
//! target, under one global cap so that a flood of distinct hosts cannot pile up sockets.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Scheme;
use super::dial::Sender;
use crate::policy::Target;

/// Enough for a busy HTTP/1.1-only upstream: a smaller cap closes connections above it and
/// dials them again under load (measured: 64 clients, cap 32 → half the throughput).
const MAX_IDLE_PER_KEY: usize = 256;
/// Bound on remembered HTTP/1.1-only targets; past it, new ones just take the gate.
const MAX_LEARNED: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct Key {
    pub scheme: Scheme,
    pub target: Target,
}

/// A connection handed to one request.
pub(super) struct Conn {
    pub id: u64,
    pub sender: Sender,
    /// It carried a request before: a failure may just mean the server closed it meanwhile.
    pub reused: bool,
}

struct Idle {
    id: u64,
    sender: Sender,
    since: Instant,
}

#[derive(Default)]
struct State {
    idle: HashMap<Key, Vec<Idle>>,
    /// Entries in `idle`, all keys together.
    total: usize,
    /// Targets known to speak HTTP/1.1 only (they need no connect gate).
    h1_only: HashSet<Key>,
}

pub(super) struct Pool {
    state: Mutex<State>,
    gates: Mutex<HashMap<Key, std::sync::Arc<tokio::sync::Mutex<()>>>>,
    next_id: AtomicU64,
    max_idle: usize,
    idle_timeout: Duration,
}

impl Pool {
    pub fn new(max_idle: usize, idle_timeout: Duration) -> Pool {
        Pool {
            state: Mutex::default(),
            gates: Mutex::default(),
            next_id: AtomicU64::new(1),
            max_idle,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn new_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// A pooled connection that is still open, or `None`.
    pub async fn checkout(&self, key: &Key) -> Option<Conn> {
        loop {
            let candidate = {
                let mut state = self.lock();
                let timeout = self.idle_timeout;
                let State { idle, total, .. } = &mut *state;
                let list = idle.get_mut(key)?;
                let before = list.len();
                list.retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
                *total -= before - list.len();
                match list.last_mut() {
                    // In use counts as not idle: refresh the timestamp.
                    Some(Idle {
                        id,
                        sender: Sender::H2(s),
                        since,
                    }) => {
                        *since = Instant::now();
                        Some((*id, Sender::H2(s.clone())))
                    }
                    Some(Idle {
                        sender: Sender::H1(_),
                        ..
                    }) => {
                        *total -= 1;
                        list.pop().map(|c| (c.id, c.sender))
                    }
                    None => None,
                }
            };
            let (id, sender) = candidate?;
            match sender {
                // Waits for the previous response's end to be processed; fails if the server
                // closed the connection meanwhile, and then we try the next one.
                Sender::H1(mut s) => {
                    if s.ready().await.is_ok() {
                        return Some(Conn {
                            id,
                            sender: Sender::H1(s),
                            reused: true,
                        });
                    }
                }
                Sender::H2(mut s) => {
                    if s.ready().await.is_ok() {
                        return Some(Conn {
                            id,
                            sender: Sender::H2(s),
                            reused: true,
                        });
                    }
                    self.forget(key, id);
                }
            }
        }
    }

    /// The per-target connect gate, or `None` for HTTP/1.1-only targets.
    pub fn gate(&self, key: &Key) -> Option<std::sync::Arc<tokio::sync::Mutex<()>>> {
        if self.lock().h1_only.contains(key) {
            return None;
        }
        let mut gates = self.gates.lock().unwrap_or_else(|p| p.into_inner());
        // Forget gates nobody holds, so the map stays as small as the set of busy targets.
        gates.retain(|_, g| std::sync::Arc::strong_count(g) > 1);
        Some(gates.entry(key.clone()).or_default().clone())
    }

    pub fn learn(&self, key: &Key, is_h2: bool) {
        let mut state = self.lock();
        if is_h2 {
            state.h1_only.remove(key);
        } else if state.h1_only.len() < MAX_LEARNED {
            state.h1_only.insert(key.clone());
        }
    }

    /// Keeps `sender` for reuse. Past the global cap, the connection idle the longest
    /// (whatever its target) is closed to make room.
    pub fn put(&self, key: Key, id: u64, sender: Sender) {
        if sender.is_closed() || self.max_idle == 0 {
            return;
        }
        let mut state = self.lock();
        if state
            .idle
            .get(&key)
            .is_some_and(|l| l.len() >= MAX_IDLE_PER_KEY)
        {
            return;
        }
        if state.total >= self.max_idle {
            evict_oldest(&mut state, 1);
        }
        state.total += 1;
        state.idle.entry(key).or_default().push(Idle {
            id,
            sender,
            since: Instant::now(),
        });
    }

    /// Drops connection `id` (dead, or refusing new streams).
    pub fn forget(&self, key: &Key, id: u64) {
        let mut state = self.lock();
        let State { idle, total, .. } = &mut *state;
        if let Some(list) = idle.get_mut(key) {
            let before = list.len();
            list.retain(|c| c.id != id);
            *total -= before - list.len();
            if list.is_empty() {
                idle.remove(key);
            }
        }
    }

    /// Closes idle connections past their idle limit and dead ones.
    pub fn reap(&self) {
        let timeout = self.idle_timeout;
        let mut state = self.lock();
        let State { idle, total, .. } = &mut *state;
        idle.retain(|_, list| {
            let before = list.len();
            list.retain(|c| c.since.elapsed() < timeout && !c.sender.is_closed());
            *total -= before - list.len();
            !list.is_empty()
        });
    }

    /// Closes up to `n` connections, the longest idle first; returns how many.
    pub fn shed(&self, n: usize) -> usize {
        evict_oldest(&mut self.lock(), n)
    }

    /// Closes every pooled connection (shutdown).
    pub fn clear(&self) -> usize {
        let mut state = self.lock();
        let n = state.total;
        state.idle.clear();
        state.total = 0;
        n
    }

    pub fn idle_count(&self) -> usize {
        self.lock().total
    }
}

fn evict_oldest(state: &mut State, n: usize) -> usize {
    let mut evicted = 0;
    while evicted < n && state.total > 0 {
        // Linear in the pool size, which the cap bounds; only runs at the cap.
        let oldest = state
            .idle
            .iter()
            .flat_map(|(k, list)| list.iter().map(move |c| (c.since, k, c.id)))
            .min_by_key(|(since, _, _)| *since)
            .map(|(_, k, id)| (k.clone(), id));
        let Some((key, id)) = oldest else { break };
        if let Some(list) = state.idle.get_mut(&key) {
            list.retain(|c| c.id != id);
            if list.is_empty() {
                state.idle.remove(&key);
            }
        }
        state.total -= 1;
        evicted += 1;
    }
    evicted
}
