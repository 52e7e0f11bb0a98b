//! How many workers the shared pool keeps awake: one per turn when items
//! wait on devices, one per core when they are quick, and more again
//! when the ones awake are stuck. A thread here plays the reactor's part
//! as its loop does it (see `Ticker`).

use super::conn::{Conn, Held, Job, Work};
use super::conn_tests::connection;
use super::proto::{Request, CMD_READ};
use super::workers::{Workers, TICK};
use crate::thin::known::Received;
use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};
use parking_lot::{Condvar, Mutex};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::ThreadId;
use std::time::{Duration, Instant};

/// Items running now and the most seen at once, for one test's run function.
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
    done: AtomicUsize,
}

impl Gauge {
    const fn new() -> Gauge {
        Gauge {
            now: AtomicUsize::new(0),
            max: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
        }
    }

    fn during(&self, f: impl FnOnce()) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
        f();
        self.now.fetch_sub(1, Ordering::SeqCst);
        self.done.fetch_add(1, Ordering::SeqCst);
    }

    /// Wait until `n` items are done in all (at most 20 s).
    fn wait_done(&self, n: usize) {
        let until = Instant::now() + Duration::from_secs(20);
        while self.done.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < until,
                "items never ran: {} of {n} done",
                self.done.load(Ordering::SeqCst)
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

/// A pool of `cores` and the reactor's part for it, as its loop does it,
/// until the `Ticker` is dropped: wait on the hub (a second, as when
/// nothing happens, or `TICK` while turns are held back), then `nudge`.
pub(super) struct Ticker(Arc<AtomicBool>);

impl Ticker {
    pub(super) fn start(run: fn(&Conn, Work, &mut Held), cores: usize) -> (Arc<Workers>, Ticker) {
        let hub = connection().0;
        hub.epoll
            .add(&hub.wake, EpollEvent::new(EpollFlags::EPOLLIN, 0))
            .unwrap();
        let w = Workers::with_cores(run, cores, hub.clone());
        let stop = Arc::new(AtomicBool::new(false));
        let (s, w2) = (stop.clone(), w.clone());
        std::thread::spawn(move || {
            let mut events = [EpollEvent::empty(); 4];
            while !s.load(Ordering::SeqCst) {
                let ms = if w2.may_nap() {
                    1000
                } else {
                    TICK.as_millis() as u16
                };
                let _ = hub.epoll.wait(&mut events, EpollTimeout::from(ms));
                let _ = hub.wake.read();
                w2.nudge();
            }
            w2.stop();
        });
        (w, Ticker(stop))
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn items(kind: u32, n: usize) -> Vec<Work> {
    (0..n)
        .map(|_| Work::Option {
            option: kind,
            data: Vec::new(),
        })
        .collect()
}

const SLOW: u32 = 1;
const QUICK: u32 = 2;

pub(super) fn spin(d: Duration) {
    let t = Instant::now();
    while t.elapsed() < d {
        std::hint::spin_loop();
    }
}

static MIXED: Gauge = Gauge::new();
/// The threads that ran quick items.
static QUICK_THREADS: Mutex<Vec<ThreadId>> = parking_lot::const_mutex(Vec::new());

fn mixed(_: &Conn, w: Work, _: &mut Held) {
    if let Work::Option { option, .. } = w {
        match option {
            SLOW => MIXED.during(|| std::thread::sleep(Duration::from_millis(20))),
            _ => MIXED.during(|| {
                spin(Duration::from_micros(20));
                let me = std::thread::current().id();
                let mut seen = QUICK_THREADS.lock();
                if !seen.contains(&me) {
                    seen.push(me);
                }
            }),
        }
    }
}

/// `rounds` rounds of 16 items of `kind` on each connection, one round
/// done before the next; returns the most run at once from round `from`
/// on (`QUICK_THREADS` counts from there too).
fn rounds(w: &Arc<Workers>, conns: &[Arc<Conn>], kind: u32, rounds: usize, from: usize) -> usize {
    let mut most = 0;
    for round in 0..rounds {
        if round == from {
            QUICK_THREADS.lock().clear();
        }
        MIXED.max.store(0, Ordering::SeqCst);
        let done = MIXED.done.load(Ordering::SeqCst);
        for c in conns {
            w.submit(c, &mut items(kind, 16));
        }
        MIXED.wait_done(done + 16 * conns.len());
        if round >= from {
            most = most.max(MIXED.max.load(Ordering::SeqCst));
        }
    }
    most
}

#[test]
fn items_that_wait_get_a_worker_each_and_quick_ones_one_per_core() {
    let (w, _tick) = Ticker::start(mixed, 2);
    let conns = [connection().1, connection().1];
    // Items that wait (20 ms, as on a busy disk): two connections' 16
    // turns each run at once, once the pool has seen that they wait.
    let most = rounds(&w, &conns, SLOW, 6, 3);
    assert!(most >= 24, "waiting items ran only {most} at once");
    // Quick items (20 us of CPU): the workers left from the slow rounds
    // are not all woken again; one per core runs them.
    let most = rounds(&w, &conns, QUICK, 60, 10);
    // One per core on 2 cores, the same ones again (the last idle is woken
    // first). A worker preempted for a millisecond on a busy test host
    // counts as stuck, so allow a few more: waking one per queued turn
    // ran them on 20 of the 32 workers the slow rounds left.
    let threads = QUICK_THREADS.lock().len();
    assert!(most <= 6, "quick items ran {most} at once on 2 cores");
    assert!(
        threads <= 12,
        "quick items ran on {threads} workers on 2 cores"
    );
}

static LARGE: Gauge = Gauge::new();

/// A 1 MiB read of 300 us: on the CPU, as one from tmpfs members is, or
/// with `WAITS` asleep, as one waiting on a device is.
fn large(_: &Conn, w: Work, _: &mut Held) {
    if let Work::Request(job) = w {
        LARGE.during(|| {
            match job.req.flags {
                WAITS => std::thread::sleep(Duration::from_micros(300)),
                _ => spin(Duration::from_micros(300)),
            }
            let me = std::thread::current().id();
            let mut seen = LARGE_THREADS.lock();
            if !seen.contains(&me) {
                seen.push(me);
            }
        });
    }
}

/// The threads that ran large items.
static LARGE_THREADS: Mutex<Vec<ThreadId>> = parking_lot::const_mutex(Vec::new());

/// A request flag of these tests: the item sleeps (a device) rather
/// than spins.
const WAITS: u16 = 1 << 15;

fn large_reads(n: usize, flags: u16) -> Vec<Work> {
    (0..n)
        .map(|i| {
            Work::Request(Job {
                req: Request {
                    flags,
                    kind: CMD_READ,
                    cookie: i as u64,
                    offset: (i as u64) << 20,
                    length: 1 << 20,
                },
                data: Vec::new(),
                crcs: Received::default(),
                error: None,
                cost: 0,
                announced: false,
            })
        })
        .collect()
}

/// Large items that only take CPU (1 MiB copies, 300 us each) are quick:
/// one worker per core runs them, not one per queued turn (which they got
/// while any item of 50 us or longer counted as waiting). The same items
/// waiting 300 us on a device (asleep) get a worker each.
#[test]
fn large_items_that_only_take_cpu_run_one_per_core_and_waiting_ones_each_on_one() {
    let (w, _tick) = Ticker::start(large, 2);
    let conns = [connection().1, connection().1];
    let (most, threads) = large_rounds(&w, &conns, 0);
    // As for quick items above: a worker preempted for a millisecond on a
    // busy test host counts as stuck, so allow a few more than two. Taken
    // for waiting, these items ran on 22-24 workers, 6-8 at once.
    assert!(
        most <= 6,
        "1 MiB items of 300 us ran {most} at once on 2 cores"
    );
    assert!(
        threads <= 12,
        "1 MiB items of 300 us ran on {threads} workers on 2 cores"
    );
    // The same items waiting on a device (asleep) are slow: they get a
    // worker per queued turn.
    let (most, threads) = large_rounds(&w, &conns, WAITS);
    assert!(
        most >= 16,
        "1 MiB items that wait 300 us ran only {most} at once (on {threads} workers)"
    );
}

/// 20 rounds of 16 large reads with `flags` on each connection, one round
/// done before the next: the most run at once and the workers that ran
/// them, from the fifth round on.
fn large_rounds(w: &Arc<Workers>, conns: &[Arc<Conn>], flags: u16) -> (usize, usize) {
    let mut most = 0;
    for round in 0..20 {
        LARGE.max.store(0, Ordering::SeqCst);
        let done = LARGE.done.load(Ordering::SeqCst);
        for c in conns {
            w.submit(c, &mut large_reads(16, flags));
        }
        LARGE.wait_done(done + 32);
        if round == 4 {
            LARGE_THREADS.lock().clear();
        }
        if round >= 4 {
            most = most.max(LARGE.max.load(Ordering::SeqCst));
        }
    }
    (most, LARGE_THREADS.lock().len())
}

static GATED: Gauge = Gauge::new();
static GATE: Mutex<bool> = parking_lot::const_mutex(false);
static OPENED: Condvar = Condvar::new();

fn gated(_: &Conn, w: Work, _: &mut Held) {
    if let Work::Option { option, .. } = w {
        match option {
            SLOW => GATED.during(|| {
                let mut open = GATE.lock();
                let until = Instant::now() + Duration::from_secs(30);
                while !*open && Instant::now() < until {
                    OPENED.wait_for(&mut open, Duration::from_millis(100));
                }
            }),
            _ => GATED.during(|| spin(Duration::from_micros(20))),
        }
    }
}

/// Opens the gate when the test ends, however it ends.
struct Opener;

impl Drop for Opener {
    fn drop(&mut self) {
        *GATE.lock() = true;
        OPENED.notify_all();
    }
}

#[test]
fn workers_stuck_on_one_connection_do_not_hold_up_another() {
    let _open = Opener;
    // Two cores: two workers awake for quick items.
    let (w, _tick) = Ticker::start(gated, 2);
    let (a, b) = (connection().1, connection().1);
    // Quick items first, so the pool runs them two at a time.
    for i in 1..=5 {
        w.submit(&b, &mut items(QUICK, 16));
        GATED.wait_done(16 * i);
    }
    // The reactor now waits a second (nothing is held back). Both workers
    // start on a device that does not answer, and another connection's
    // turns come right behind: they still run within milliseconds, as the
    // turn held back wakes the reactor, whose tick sees the two stuck.
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    w.submit(&a, &mut items(SLOW, 2));
    w.submit(&b, &mut items(QUICK, 16));
    GATED.wait_done(80 + 16);
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "held up {took:?} behind stuck workers"
    );
    assert_eq!(
        GATED.now.load(Ordering::SeqCst),
        2,
        "the stuck items still wait"
    );
}
