//! One client connection as the reactor and the workers share it: the
//! socket (non-blocking), what the client negotiated, its queue of work,
//! the replies it has not taken yet, and the payload bytes it holds.
//!
//! Replies are written by whoever finishes a request, straight to the
//! socket while it takes them; what it does not take waits in the
//! connection's queue and the reactor sends it when the socket drains. No
//! thread ever blocks on a client, so a client that stops reading costs
//! only its own budget.

use super::handshake::{Handshake, Negotiated, Outcome};
use super::proto::Request;
use super::stream::Stream;
use super::Policy;
use crate::thin::known::Received;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::EventFd;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::io;
use std::net::Shutdown;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

mod replies;
use replies::Out;
pub(super) use replies::{Body, Held};

/// Payload bytes a connection may hold in flight.
pub(super) const BUDGET: u64 = 96 << 20;
/// Payload bytes all connections of a server together may hold: a thousand
/// clients sending large writes cannot take the host's memory.
pub(super) const GLOBAL_BUDGET: u64 = 1 << 30;

/// Bytes held against a limit.
pub(super) struct Budget {
    limit: u64,
    used: Mutex<u64>,
}

impl Budget {
    pub(super) const fn new(limit: u64) -> Budget {
        Budget {
            limit,
            used: parking_lot::const_mutex(0),
        }
    }

    /// Take `n` bytes if they fit (one request always fits when nothing
    /// is held, however large).
    pub(super) fn try_acquire(&self, n: u64) -> bool {
        let mut used = self.used.lock();
        if *used + n > self.limit && *used > 0 {
            return false;
        }
        *used += n;
        true
    }

    pub(super) fn release(&self, n: u64) {
        let mut used = self.used.lock();
        *used = used.saturating_sub(n);
    }
}

/// What the reactor and the workers of one server share.
pub(super) struct Hub {
    pub epoll: Epoll,
    /// Written to wake the reactor.
    pub wake: EventFd,
    /// Connections the reactor should look at again (an option answered, a
    /// budget freed, a queue gone idle while closing).
    pub revisit: Mutex<Vec<u64>>,
    pub global: Budget,
    /// Connections waiting for the global budget.
    pub starved: Mutex<Vec<u64>>,
    pub stopping: AtomicBool,
}

impl Hub {
    pub(super) fn new() -> io::Result<Hub> {
        Ok(Hub {
            epoll: Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)?,
            wake: EventFd::from_flags(
                nix::sys::eventfd::EfdFlags::EFD_CLOEXEC
                    | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK,
            )?,
            revisit: Mutex::new(Vec::new()),
            global: Budget::new(GLOBAL_BUDGET),
            starved: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
        })
    }

    pub(super) fn revisit(&self, id: u64) {
        self.revisit.lock().push(id);
        let _ = self.wake.write(1);
    }
}

/// One request read off the wire, to run on a worker.
pub(super) struct Job {
    pub req: Request,
    pub data: Vec<u8>,
    /// The CRC32s of a write's whole 4 KiB blocks, computed by the reactor
    /// as they arrived (on pools with checksums, for writes at a whole
    /// block: `input::Entry::track_crcs`).
    pub crcs: Received,
    /// Set when the reactor already refused it (an oversized write).
    pub error: Option<u32>,
    pub cost: u64,
    /// A write whose intents a worker already queued while it waited
    /// (`transmission::name_ahead`).
    pub announced: bool,
}

/// Work for the worker pool.
pub(super) enum Work {
    /// A handshake option and its data.
    Option {
        option: u32,
        data: Vec<u8>,
    },
    Request(Job),
}

/// A connection's queue. At most `PER_CONN` of its items are in the pool's
/// ring or running at once, so one client cannot take every worker.
#[derive(Default)]
pub(super) struct Queue {
    pub work: VecDeque<Work>,
    /// Turns of this connection in the pool's ring.
    pub in_ring: usize,
    pub running: usize,
    /// Replies workers hold back (`Held`), not yet sent.
    pub held: usize,
}

/// Most of one connection's requests that run at once.
pub(super) const PER_CONN: usize = 16;

impl Queue {
    /// Whether a new turn should go into the ring (and count it).
    pub(super) fn take_turn(&mut self) -> bool {
        if self.in_ring + self.running < PER_CONN && self.in_ring < self.work.len() {
            self.in_ring += 1;
            return true;
        }
        false
    }

    pub(super) fn idle(&self) -> bool {
        self.work.is_empty() && self.running == 0 && self.held == 0
    }
}

struct Tx {
    sock: Box<dyn Stream>,
    queue: VecDeque<Out>,
    /// Since when the oldest queued reply has waited without progress.
    stalled_since: Option<Instant>,
    want_write: bool,
}

pub(super) struct Conn {
    pub id: u64,
    pub peer: String,
    pub policy: Policy,
    pub hub: Arc<Hub>,
    /// Registered with epoll; lives as long as the connection, so the
    /// descriptor's number is never reused under a late `modify`.
    control: Box<dyn Stream>,
    tx: Mutex<Tx>,
    /// Replies left for whoever holds `tx` (see `send_body`).
    incoming: Mutex<Vec<Out>>,
    pub queue: Mutex<Queue>,
    pub budget: Budget,
    pub handshake: Mutex<Handshake>,
    /// The result of the last option, for the reactor to act on.
    pub outcome: Mutex<Option<io::Result<Option<Outcome>>>>,
    pub serving: OnceLock<Negotiated>,
    /// Replies can no longer be sent: queued work is dropped.
    pub dead: AtomicBool,
    /// The reactor reads no more: tell it when the queue is idle.
    pub closing: AtomicBool,
    /// Waiting for its own budget.
    pub starved: AtomicBool,
    pub buffers: Mutex<Buffers>,
    /// Tests: `let_go` waits a little before it lets go, so replies that
    /// race with it come in meanwhile (off: writes count as in use).
    #[cfg(test)]
    pub widen: AtomicBool,
}

fn interest(write: bool) -> EpollFlags {
    let mut f = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLET;
    if write {
        f |= EpollFlags::EPOLLOUT;
    }
    f
}

impl Conn {
    /// A connection on `sock` (made non-blocking), registered with the
    /// hub's epoll under its id. Returns it and the reader the reactor
    /// keeps.
    pub(super) fn register(
        hub: &Arc<Hub>,
        id: u64,
        sock: Box<dyn Stream>,
        policy: Policy,
        handshake: Handshake,
    ) -> io::Result<(Arc<Conn>, Box<dyn Stream>)> {
        sock.set_nonblocking(true)?;
        let writer = sock.try_clone_stream()?;
        let control = sock.try_clone_stream()?;
        let conn = Arc::new(Conn {
            id,
            peer: sock.peer(),
            policy,
            hub: hub.clone(),
            control,
            tx: Mutex::new(Tx {
                sock: writer,
                queue: VecDeque::new(),
                stalled_since: None,
                want_write: false,
            }),
            incoming: Mutex::new(Vec::new()),
            queue: Mutex::new(Queue::default()),
            budget: Budget::new(BUDGET),
            handshake: Mutex::new(handshake),
            outcome: Mutex::new(None),
            serving: OnceLock::new(),
            dead: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            starved: AtomicBool::new(false),
            buffers: Mutex::new(Buffers::default()),
            #[cfg(test)]
            widen: AtomicBool::new(true),
        });
        super::stream::widen_send_buffer(conn.fd(), super::stream::SEND_BUFFER);
        hub.epoll
            .add(conn.fd(), EpollEvent::new(interest(false), id))?;
        Ok((conn, sock))
    }

    pub(super) fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `control` owns the descriptor for as long as `self` lives.
        unsafe { BorrowedFd::borrow_raw(self.control.fd()) }
    }

    /// Take the connection off epoll (before it is dropped or handed on).
    pub(super) fn deregister(&self) {
        let _ = self.hub.epoll.delete(self.fd());
    }

    pub(super) fn shutdown(&self, how: Shutdown) {
        self.control.shutdown(how);
    }

    /// A dup of the socket, to hand the connection to TLS.
    pub(super) fn clone_socket(&self) -> io::Result<Box<dyn Stream>> {
        self.control.try_clone_stream()
    }

    /// The client is gone or stuck: drop its replies (giving back their
    /// budget) and stop serving it.
    pub(super) fn kill(&self) {
        if !self.dead.swap(true, Ordering::SeqCst) {
            self.control.shutdown(Shutdown::Both);
        }
        self.drop_replies();
    }

    /// Give back `cost` bytes of both budgets, and wake whoever waits for them.
    pub(super) fn release(&self, cost: u64) {
        if cost == 0 {
            return;
        }
        self.budget.release(cost);
        self.hub.global.release(cost);
        if self.starved.swap(false, Ordering::SeqCst) {
            self.hub.revisit(self.id);
        }
        let waiting: Vec<u64> = std::mem::take(&mut *self.hub.starved.lock());
        if !waiting.is_empty() {
            self.hub.revisit.lock().extend(waiting);
            let _ = self.hub.wake.write(1);
        }
    }

    /// A buffer of `len` bytes from this connection's pool. A pooled
    /// buffer keeps what it held (only bytes it never had are zeroed, as
    /// zeroing a 1 MiB buffer per request cost 5% of the daemon's CPU): a
    /// write's payload overwrites it whole before use, and a read fills it
    /// whole before it is sent. Only this connection's own bytes were in it.
    pub(super) fn take_buffer(&self, len: usize) -> Vec<u8> {
        let mut b = self.buffers.lock().pop();
        if b.len() >= len {
            b.truncate(len);
        } else {
            b.resize(len, 0);
        }
        b
    }

    pub(super) fn give_buffer(&self, b: Vec<u8>) {
        self.buffers.lock().push(b);
    }
}

/// A connection's idle buffers, at most `BUDGET` bytes of capacity; the
/// requests in flight are charged to the same budget, so a connection's
/// buffers stay near twice its budget. A count alone was both too loose
/// (32 buffers of 32 MiB) and too tight: at iodepth 32, a reply's buffer
/// often came back just after the client's next request took a new one,
/// and then found the pool full, so a fifth of 1 MiB reads paid for a
/// fresh buffer (`mmap`, page faults, zeroing, `munmap`: the zeroing alone
/// 3.6% of the daemon's samples).
#[derive(Default)]
pub struct Buffers {
    idle: Vec<Vec<u8>>,
    bytes: usize,
}

impl Buffers {
    fn pop(&mut self) -> Vec<u8> {
        let b = self.idle.pop().unwrap_or_default();
        self.bytes -= b.capacity();
        b
    }

    /// Bytes held idle.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn push(&mut self, b: Vec<u8>) {
        let cap = b.capacity();
        if cap > 0 && self.bytes + cap <= BUDGET as usize {
            self.bytes += cap;
            self.idle.push(b);
        }
    }
}
