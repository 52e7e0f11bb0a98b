//! The worker threads every connection of a server shares: started as work
//! needs them up to `MAX_WORKERS`, kept while idle, ended after `IDLE`.
//!
//! Connections take turns: the ring holds one entry per turn, a worker runs
//! one item of the connection whose turn it is, and a connection has at
//! most `PER_CONN` turns queued or running. So a client with a thousand
//! requests queued shares the workers with one that sends a single read,
//! and threads are bounded by this pool, not by the number of clients.
//!
//! How many workers are awake depends on what items cost. Items that wait
//! on devices (half or more of the recent ones took `SLOW_ITEM` or longer,
//! or for large reads and writes waited that long: `Workers::turn`)
//! get a worker per queued turn, so the devices see the clients' queue
//! depth. Quick items (the members' page cache, tmpfs) get `PER_CORE`
//! worker per core: each more one only adds a wake-up and a context
//! switch per item (two clients' 4 KiB random reads from tmpfs members:
//! 1.2x with this, the median of 5 interleaved runs, 1.0-1.9x per run,
//! against the pool that woke a worker per queued turn). A worker whose item has run `STUCK` or longer
//! is taken to wait and no longer counts, and the reactor looks again
//! every `TICK` while turns are held back, so workers stuck on one device
//! never hold up the others' turns for long.

use super::conn::{Conn, Held, Hub, Work};
use super::proto::{CMD_READ, CMD_WRITE};
use crate::device::waited;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most this many worker threads per server.
pub(super) const MAX_WORKERS: usize = 64;
/// A worker idle this long exits.
const IDLE: Duration = Duration::from_secs(30);
/// Items this long wait on something other than the CPU (a device).
const SLOW_ITEM: Duration = Duration::from_micros(50);
/// An item running this long waits (a device, a lock): its worker is not
/// counted as using a core.
const STUCK: Duration = Duration::from_millis(1);
/// Workers awake per core for quick items. Two let a second run while
/// the first waited briefly (a round of write intents, a reply's
/// socket), but two clients' 4 KiB random reads then swung between fast
/// and slow runs; with replies held back one per core serves them 1.33x
/// and 1.47x (two runs of 5 interleaved pairs) and random writes about
/// alike (1.046 and 0.941 with one client, 0.991 with two).
const PER_CORE: usize = 1;
/// A read or write of this many bytes or more is slow only if it waited
/// `SLOW_ITEM` (off the CPU), not if it took that long: a 1 MiB write
/// copied into tmpfs takes 250-350 us of CPU and waits on nothing, and
/// counted as slow it woke a worker per queued turn on two cores, where
/// only `PER_CORE` help. Its wait is measured (`device::waited`: two
/// system calls each side, nothing beside a large copy); small items
/// keep the wall time, which costs them nothing to read.
const LARGE_ITEM: u64 = 64 << 10;
/// The whole of `State::slow_share`.
const SHARE_ONE: u32 = 1 << 10;
/// Most replies a worker holds back (see `worker`).
const HOLD_MAX: usize = 8;
/// How often the reactor looks at turns held back (see `nudge`).
pub(super) const TICK: Duration = Duration::from_millis(1);

struct State {
    ring: VecDeque<Arc<Conn>>,
    /// Idle workers, the last to go idle on top: it is woken first, its
    /// stack and caches still warm.
    sleepers: Vec<Arc<Condvar>>,
    /// Idle workers woken that have not taken the lock yet.
    waking: usize,
    threads: usize,
    /// Per worker: since when (`Workers::now`) its item runs, 0 between items.
    busy: Vec<Arc<AtomicU64>>,
    /// The share of items that were slow (see `Workers::turn`), a moving
    /// average in `SHARE_ONE`ths: a worker preempted now and then does
    /// not make quick items look slow.
    slow_share: u32,
    stopping: bool,
}

pub(super) struct Workers {
    state: Mutex<State>,
    run: fn(&Conn, Work, &mut Held),
    /// Workers that may run quick items at once: `PER_CORE` per core.
    awake_max: usize,
    epoch: Instant,
    /// A turn waits that no worker was woken for (see `nudge`).
    held_back: AtomicBool,
    /// The reactor waits longer than `TICK`: holding a turn back wakes it.
    napping: AtomicBool,
    /// The reactor's hub, to wake it.
    hub: Arc<Hub>,
}

impl Workers {
    /// A pool whose workers run each item with `run`.
    pub(super) fn new(run: fn(&Conn, Work, &mut Held), hub: Arc<Hub>) -> Arc<Workers> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Workers::with_cores(run, cores, hub)
    }

    /// A pool for a host of `cores` cores.
    pub(super) fn with_cores(
        run: fn(&Conn, Work, &mut Held),
        cores: usize,
        hub: Arc<Hub>,
    ) -> Arc<Workers> {
        Arc::new(Workers {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                sleepers: Vec::new(),
                waking: 0,
                threads: 0,
                busy: Vec::new(),
                slow_share: 0,
                stopping: false,
            }),
            run,
            awake_max: cores.max(1) * PER_CORE,
            epoch: Instant::now(),
            held_back: AtomicBool::new(false),
            napping: AtomicBool::new(false),
            hub,
        })
    }

    /// Nanoseconds since the pool began, never 0.
    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64 + 1
    }

    /// Whether the ring's turns want another worker awake. Notes a turn
    /// held back for `nudge` when they do not.
    fn short(&self, st: &State) -> bool {
        if st.ring.len() <= st.waking {
            // The workers on their way take these turns.
            return false;
        }
        if st.slow_share >= SHARE_ONE / 2 {
            return true;
        }
        let awake = st.threads - st.sleepers.len();
        if awake < self.awake_max {
            return true;
        }
        let now = self.now();
        let stuck = st
            .busy
            .iter()
            .filter(|b| {
                let since = b.load(Ordering::Relaxed);
                since != 0 && now.saturating_sub(since) >= STUCK.as_nanos() as u64
            })
            .count();
        let short = awake.saturating_sub(stuck) < self.awake_max;
        if !short {
            self.hold_back();
        }
        short
    }

    /// Note a turn held back for `nudge`, waking the reactor if it waits
    /// long (see `may_nap`).
    fn hold_back(&self) {
        if !self.held_back.swap(true, Ordering::SeqCst) && self.napping.load(Ordering::SeqCst) {
            let _ = self.hub.wake.write(1);
        }
    }

    /// Wake the idle worker that went idle last, if any.
    fn wake(st: &mut State) -> bool {
        let Some(s) = st.sleepers.pop() else {
            return false;
        };
        s.notify_one();
        st.waking += 1;
        true
    }

    /// Wake an idle worker, or start one if none is left to wake. Returns
    /// whether either happened (or the error starting a thread).
    fn add(self: &Arc<Self>, st: &mut State) -> std::io::Result<bool> {
        if Self::wake(st) {
            return Ok(true);
        }
        if st.threads >= MAX_WORKERS {
            return Ok(false);
        }
        let me = self.clone();
        std::thread::Builder::new()
            .name("nbd-io".into())
            .spawn(move || me.worker())?;
        st.threads += 1;
        Ok(true)
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
        // One worker is woken (or started); it wakes the next if turns are
        // still queued and more are wanted when it takes its own (see
        // `worker`). Waking one per turn had most of them find the ring
        // already emptied by the workers running, and go back to sleep: on
        // a small host that churn cost more than the work.
        if self.short(&st) {
            match self.add(&mut st) {
                Ok(_) => {}
                Err(e) if st.threads == 0 => {
                    // Nobody would ever run it: refuse the connection's work.
                    tracing::warn!("nbd: cannot start an I/O thread: {e}");
                    st.ring.retain(|c| !Arc::ptr_eq(c, conn));
                    conn.kill();
                }
                Err(e) => tracing::warn!("nbd: cannot start another I/O thread: {e}"),
            }
        }
    }

    /// Called by the reactor before it waits: whether it may wait longer
    /// than `TICK`. No turn is held back then, and one held back before
    /// `nudge` wakes it; otherwise it calls `nudge` every `TICK`.
    pub(super) fn may_nap(&self) -> bool {
        self.napping.store(true, Ordering::SeqCst);
        if self.held_back.load(Ordering::SeqCst) {
            self.napping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// Wake (or start) workers for turns held back while the workers
    /// awake are stuck.
    pub(super) fn nudge(self: &Arc<Self>) {
        self.napping.store(false, Ordering::SeqCst);
        if !self.held_back.swap(false, Ordering::SeqCst) {
            return;
        }
        let mut st = self.state.lock();
        for _ in 0..st.ring.len() {
            if !self.short(&st) {
                break;
            }
            match self.add(&mut st) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    tracing::warn!("nbd: cannot start another I/O thread: {e}");
                    break;
                }
            }
        }
    }

    /// A worker's loop. While items are quick, the replies to a
    /// connection's requests are held back as long as the worker goes on
    /// with that connection's next turns (at most `HOLD_MAX`), and sent
    /// together in one `writev` before it turns to another connection or
    /// goes idle: each `writev` also wakes the client, and at 4 KiB a
    /// reply's `writev` cost about a sixth of the daemon's CPU.
    fn worker(self: Arc<Self>) {
        let busy = Arc::new(AtomicU64::new(0));
        let me = Arc::new(Condvar::new());
        let mut held = Held::default();
        // The connection whose replies `held` holds.
        let mut holding: Option<Arc<Conn>> = None;
        let mut st = self.state.lock();
        st.busy.push(busy.clone());
        loop {
            if let Some(conn) = st.ring.pop_front() {
                if self.short(&st) && !Self::wake(&mut st) {
                    // None to wake: the reactor starts one (`nudge`).
                    self.hold_back();
                }
                held.on = st.slow_share < SHARE_ONE / 2;
                drop(st);
                if let Some(h) = holding.take_if(|h| !Arc::ptr_eq(h, &conn)) {
                    h.send_held(&mut held);
                }
                let start = self.now();
                busy.store(start, Ordering::Relaxed);
                let (again, ran) = self.turn(&conn, &mut held, start);
                busy.store(0, Ordering::Relaxed);
                // Kept from the last turn of the same connection, so a
                // run of its turns costs no reference count per turn.
                if held.len() == 0 {
                    holding = None;
                } else if holding.is_none() {
                    holding = Some(conn.clone());
                }
                st = self.state.lock();
                if let Some(slow) = ran {
                    let slow = if slow { SHARE_ONE } else { 0 };
                    st.slow_share = (st.slow_share * 15 + slow) / 16;
                }
                if again {
                    // This worker takes the next turn itself: waking
                    // another for it would only trade places.
                    st.ring.push_back(conn);
                }
                continue;
            }
            if let Some(h) = holding.take() {
                // Nothing to run: send what is held before waiting.
                drop(st);
                h.send_held(&mut held);
                st = self.state.lock();
                continue;
            }
            if st.stopping {
                break;
            }
            st.sleepers.push(me.clone());
            let timed_out = me.wait_for(&mut st, IDLE).timed_out();
            let before = st.sleepers.len();
            st.sleepers.retain(|s| !Arc::ptr_eq(s, &me));
            if st.sleepers.len() == before {
                // Taken off by `wake`, which counted it.
                st.waking = st.waking.saturating_sub(1);
            } else if timed_out && st.ring.is_empty() {
                break;
            }
        }
        st.threads -= 1;
        st.busy.retain(|b| !Arc::ptr_eq(b, &busy));
    }

    /// Run one item of `conn`'s queue (the turn began at `start`, in
    /// `Workers::now`). Returns whether the connection takes another turn
    /// and, if an item ran, whether it was slow: it took `SLOW_ITEM` or
    /// longer, or for a read or write of `LARGE_ITEM` or more, waited that
    /// long. The replies `held` holds are sent unless more of the
    /// connection's items wait and fewer than `HOLD_MAX` are held.
    fn turn(&self, conn: &Arc<Conn>, held: &mut Held, start: u64) -> (bool, Option<bool>) {
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
            return (false, None);
        };
        let large = moved(&work) >= LARGE_ITEM;
        // A panic in one item is that item's EIO (the run function answers
        // it); the worker and the connection go on.
        let run = || {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                (self.run)(conn, work, held)
            }));
        };
        let slow = SLOW_ITEM.as_nanos();
        let slow = if large {
            waited(run).1 >= slow
        } else {
            run();
            u128::from(self.now().saturating_sub(start)) >= slow
        };
        let (again, idle, keep) = {
            let mut q = conn.queue.lock();
            q.running -= 1;
            q.held += held.take_uncounted();
            let keep = !q.work.is_empty() && held.len() < HOLD_MAX;
            (q.take_turn(), q.idle(), keep)
        };
        if !keep {
            conn.send_held(held);
        }
        if idle && conn.closing.load(Ordering::SeqCst) {
            conn.hub.revisit(conn.id);
        }
        (again, Some(slow))
    }

    /// Let the workers end once the ring is empty.
    pub(super) fn stop(&self) {
        let mut st = self.state.lock();
        st.stopping = true;
        while Self::wake(&mut st) {}
    }
}

/// The payload bytes a read or a write moves (nothing for the rest: a
/// trim's length is not work).
fn moved(w: &Work) -> u64 {
    match w {
        Work::Request(job) if matches!(job.req.kind, CMD_READ | CMD_WRITE) => {
            u64::from(job.req.length)
        }
        _ => 0,
    }
}
