//! The worker threads every connection of a server shares: started as work
//! needs them up to `MAX_WORKERS`, kept while idle, ended after `IDLE`.
//!
//! Connections take turns: the ring holds one entry per turn, a worker runs
//! one item of the connection whose turn it is, and a connection has at
//! most `PER_CONN` turns queued or running. So a client with a thousand
//! requests queued shares the workers with one that sends a single read,
//! and threads are bounded by this pool, not by the number of clients.

use super::conn::{Conn, Work};
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// At most this many worker threads per server.
pub(super) const MAX_WORKERS: usize = 64;
/// A worker idle this long exits.
const IDLE: Duration = Duration::from_secs(30);

struct State {
    ring: VecDeque<Arc<Conn>>,
    idle: usize,
    threads: usize,
    stopping: bool,
}

pub(super) struct Workers {
    state: Mutex<State>,
    ready: Condvar,
    run: fn(&Conn, Work),
}

impl Workers {
    /// A pool whose workers run each item with `run`.
    pub(super) fn new(run: fn(&Conn, Work)) -> Arc<Workers> {
        Arc::new(Workers {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                idle: 0,
                threads: 0,
                stopping: false,
            }),
            ready: Condvar::new(),
            run,
        })
    }

    /// Queue everything in `batch` for `conn` (leaving it empty).
    pub(super) fn submit(self: &Arc<Self>, conn: &Arc<Conn>, batch: &mut Vec<Work>) {
        let mut turns = 0;
        {
            let mut q = conn.queue.lock();
            q.work.extend(batch.drain(..));
            while q.take_turn() {
                turns += 1;
            }
        }
        if turns == 0 {
            return;
        }
        let mut st = self.state.lock();
        for _ in 0..turns {
            st.ring.push_back(conn.clone());
        }
        // A new thread only when none waits: the ring's other turns go to
        // the workers as they come free.
        if st.idle == 0 && st.threads < MAX_WORKERS {
            let me = self.clone();
            let started = std::thread::Builder::new()
                .name("nbd-io".into())
                .spawn(move || me.worker());
            match started {
                Ok(_) => st.threads += 1,
                Err(e) if st.threads == 0 => {
                    // Nobody would ever run it: refuse the connection's work.
                    tracing::warn!("nbd: cannot start an I/O thread: {e}");
                    st.ring.retain(|c| !Arc::ptr_eq(c, conn));
                    conn.kill();
                }
                Err(e) => tracing::warn!("nbd: cannot start another I/O thread: {e}"),
            }
        }
        // One waiting worker is woken; it wakes the next if turns are
        // still queued when it takes its own (see `worker`). Waking one per
        // turn had most of them find the ring already emptied by the
        // workers running, and go back to sleep: on a small host that
        // churn cost more than the work.
        if st.idle > 0 {
            self.ready.notify_one();
        }
    }

    fn worker(self: Arc<Self>) {
        let mut st = self.state.lock();
        loop {
            if let Some(conn) = st.ring.pop_front() {
                if !st.ring.is_empty() && st.idle > 0 {
                    self.ready.notify_one();
                }
                drop(st);
                let again = self.turn(&conn);
                st = self.state.lock();
                if again {
                    // This worker takes the next turn itself: waking
                    // another for it would only trade places.
                    st.ring.push_back(conn);
                }
                continue;
            }
            if st.stopping {
                st.threads -= 1;
                return;
            }
            st.idle += 1;
            let timed_out = self.ready.wait_for(&mut st, IDLE).timed_out();
            st.idle -= 1;
            if timed_out && st.ring.is_empty() {
                st.threads -= 1;
                return;
            }
        }
    }

    /// Run one item of `conn`'s queue. Returns whether the connection
    /// takes another turn.
    fn turn(&self, conn: &Arc<Conn>) -> bool {
        let work = {
            let mut q = conn.queue.lock();
            q.in_ring -= 1;
            let w = q.work.pop_front();
            if w.is_some() {
                q.running += 1;
            }
            w
        };
        let Some(work) = work else {
            return false;
        };
        // A panic in one item is that item's EIO (the run function answers
        // it); the worker and the connection go on.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (self.run)(conn, work)));
        let (again, idle) = {
            let mut q = conn.queue.lock();
            q.running -= 1;
            (q.take_turn(), q.idle())
        };
        if idle && conn.closing.load(Ordering::SeqCst) {
            conn.hub.revisit(conn.id);
        }
        again
    }

    /// Let the workers end once the ring is empty.
    pub(super) fn stop(&self) {
        self.state.lock().stopping = true;
        self.ready.notify_all();
    }
}
