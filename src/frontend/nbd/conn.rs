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
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::EventFd;
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::net::Shutdown;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

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
    /// Set when the reactor already refused it (an oversized write).
    pub error: Option<u32>,
    pub cost: u64,
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
        self.work.is_empty() && self.running == 0
    }
}

/// A reply not yet taken whole: its header and body (owned, so a large
/// read's buffer waits here without a copy), and how much of them is out.
struct Out {
    head: Vec<u8>,
    body: Vec<u8>,
    done: usize,
    cost: u64,
}

impl Out {
    fn new(header: &[u8], body: Body<'_>, cost: u64) -> Out {
        Out {
            head: header.to_vec(),
            body: match body {
                Body::Owned(v) => v,
                Body::Borrowed(b) => b.to_vec(),
            },
            done: 0,
            cost,
        }
    }

    fn left(&self) -> usize {
        self.head.len() + self.body.len() - self.done
    }

    fn rest(&self) -> [IoSlice<'_>; 2] {
        let h = self.done.min(self.head.len());
        let b = self.done - h;
        [IoSlice::new(&self.head[h..]), IoSlice::new(&self.body[b..])]
    }

    fn finished(&self) -> bool {
        self.done == self.head.len() + self.body.len()
    }
}

/// A reply's body: borrowed (copied only if the socket does not take it
/// whole) or owned (a read's buffer, moved into the queue).
pub(super) enum Body<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Body<'_> {
    /// The pool's buffer this body holds, if any.
    fn into_owned_buffer(self) -> Option<Vec<u8>> {
        match self {
            Body::Owned(v) => Some(v),
            Body::Borrowed(_) => None,
        }
    }
}

/// Most queued replies one `writev` takes.
const PUMP_REPLIES: usize = 32;

/// What sending did, to settle once no lock is held.
#[derive(Default)]
struct Done {
    /// Budget of replies now out (or dropped).
    freed: u64,
    /// Their buffers, back to the pool.
    bodies: Vec<Vec<u8>>,
    /// The socket failed: kill the connection.
    failed: bool,
}

impl Done {
    fn finished(&mut self, cost: u64, body: Option<Vec<u8>>) {
        self.freed += cost;
        if let Some(b) = body.filter(|b| b.capacity() > 0) {
            self.bodies.push(b);
        }
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
    pub buffers: Mutex<Vec<Vec<u8>>>,
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
            buffers: Mutex::new(Vec::new()),
        });
        hub.epoll
            .add(conn.fd(), EpollEvent::new(interest(false), id))?;
        Ok((conn, sock))
    }

    fn fd(&self) -> BorrowedFd<'_> {
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

    /// Send `header` and `body` (one reply, in order with every other),
    /// then give back `cost` once the client has taken them all.
    pub(super) fn send(&self, header: &[u8], body: &[u8], cost: u64) {
        self.send_body(header, Body::Borrowed(body), cost)
    }

    /// `send`, with the body's buffer returned to the connection's pool
    /// once it is out. Whoever holds the socket's side (`tx`) writes; a
    /// reply that finds it held is left in `incoming` for the holder,
    /// which looks there again before it lets go (see `let_go`): on two
    /// cores, workers that waited for each other's `writev` spent a tenth
    /// of the daemon's time spinning and yielding.
    pub(super) fn send_body(&self, header: &[u8], body: Body<'_>, cost: u64) {
        let Some(mut tx) = self.tx.try_lock() else {
            self.incoming.lock().push(Out::new(header, body, cost));
            if let Some(tx) = self.tx.try_lock() {
                self.let_go(tx, Done::default());
            }
            return;
        };
        let mut done = Done::default();
        let bytes = match &body {
            Body::Borrowed(b) => b,
            Body::Owned(v) => v.as_slice(),
        };
        let mut sent = 0;
        if !self.dead.load(Ordering::SeqCst) && tx.queue.is_empty() {
            let total = header.len() + bytes.len();
            while sent < total {
                let h = sent.min(header.len());
                let slices = [IoSlice::new(&header[h..]), IoSlice::new(&bytes[sent - h..])];
                match tx.sock.write_vectored(&slices) {
                    Ok(0) => {
                        done.failed = true;
                        break;
                    }
                    Ok(n) => sent += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        done.failed = true;
                        break;
                    }
                }
            }
            if !done.failed && sent == total {
                done.finished(cost, body.into_owned_buffer());
                return self.let_go(tx, done);
            }
        }
        if done.failed || self.dead.load(Ordering::SeqCst) {
            done.failed = true;
            done.finished(cost, body.into_owned_buffer());
            return self.let_go(tx, done);
        }
        // The rest waits for the socket: the header's rest copied (small),
        // an owned body moved whole with what of it is out counted in
        // `done` (the header was all out if any of the body was).
        let mut out = Out::new(header, body, cost);
        out.done = sent;
        tx.queue.push_back(out);
        self.want_write(&mut tx, &mut done);
        self.let_go(tx, done)
    }

    /// Let go of `tx`, first sending what waits in `incoming` (and again
    /// if more came while letting go, unless another thread took `tx` and
    /// so looks there itself): no reply is left behind. Then, with no
    /// lock held, what `done` says: buffers back to the pool, budgets
    /// given back, or the connection killed.
    fn let_go<'a>(&'a self, mut tx: MutexGuard<'a, Tx>, mut done: Done) {
        loop {
            let more = std::mem::take(&mut *self.incoming.lock());
            if more.is_empty() {
                // Tests widen the window in which a reply can come in.
                #[cfg(test)]
                std::thread::sleep(std::time::Duration::from_micros(20));
                drop(tx);
                if self.incoming.lock().is_empty() {
                    break;
                }
                match self.tx.try_lock() {
                    Some(g) => tx = g,
                    None => break,
                }
                continue;
            }
            // Dead (killed already) or failing now: dropped, budgets back.
            if done.failed || self.dead.load(Ordering::SeqCst) {
                for out in more {
                    done.finished(out.cost, Some(out.body));
                }
                continue;
            }
            tx.queue.extend(more);
            self.pump(&mut tx, &mut done);
            self.want_write(&mut tx, &mut done);
        }
        for b in done.bodies {
            self.give_buffer(b);
        }
        if done.failed {
            self.kill();
        }
        self.release(done.freed);
    }

    /// Write the queued replies, several to a `writev`, as far as the
    /// socket takes them.
    fn pump(&self, tx: &mut Tx, done: &mut Done) {
        while !tx.queue.is_empty() && !done.failed {
            let r = {
                let Tx { sock, queue, .. } = &mut *tx;
                let iov: Vec<IoSlice<'_>> = queue
                    .iter()
                    .take(PUMP_REPLIES)
                    .flat_map(Out::rest)
                    .collect();
                sock.write_vectored(&iov)
            };
            match r {
                Ok(0) => done.failed = true,
                Ok(mut n) => {
                    tx.stalled_since = Some(Instant::now());
                    while let Some(out) = tx.queue.front_mut() {
                        let take = n.min(out.left());
                        out.done += take;
                        n -= take;
                        if !out.finished() {
                            break;
                        }
                        if let Some(out) = tx.queue.pop_front() {
                            done.finished(out.cost, Some(out.body));
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => done.failed = true,
            }
        }
    }

    /// Ask the reactor to send the rest when the socket has room (or stop
    /// asking when nothing waits).
    fn want_write(&self, tx: &mut Tx, done: &mut Done) {
        let want = !tx.queue.is_empty();
        match (want, tx.stalled_since) {
            (true, None) => tx.stalled_since = Some(Instant::now()),
            (false, _) => tx.stalled_since = None,
            _ => {}
        }
        if want != tx.want_write {
            tx.want_write = want;
            let mut ev = EpollEvent::new(interest(want), self.id);
            if self.hub.epoll.modify(self.fd(), &mut ev).is_err() && want {
                done.failed = true;
            }
        }
    }

    /// Send what waits, as far as the socket takes it (the reactor, when the
    /// socket has room). Returns whether nothing waits any more.
    pub(super) fn flush_replies(&self) -> bool {
        let mut done = Done::default();
        let mut tx = self.tx.lock();
        self.pump(&mut tx, &mut done);
        self.want_write(&mut tx, &mut done);
        let empty = tx.queue.is_empty();
        self.let_go(tx, done);
        empty
    }

    /// Since when replies have waited for the client without progress.
    pub(super) fn stalled_since(&self) -> Option<Instant> {
        let tx = self.tx.lock();
        let since = tx.stalled_since;
        self.let_go(tx, Done::default());
        since
    }

    /// Drop every reply still queued (the connection is dead), giving back
    /// their budget.
    pub(super) fn drop_replies(&self) {
        let mut tx = self.tx.lock();
        tx.stalled_since = None;
        let mut done = Done::default();
        for out in tx.queue.drain(..).chain(self.incoming.lock().drain(..)) {
            done.finished(out.cost, Some(out.body));
        }
        // `let_go` must not kill again (this is the kill).
        let Done { freed, bodies, .. } = done;
        self.let_go(
            tx,
            Done {
                freed,
                bodies,
                failed: false,
            },
        );
    }

    pub(super) fn replies_waiting(&self) -> bool {
        let tx = self.tx.lock();
        let waiting = !tx.queue.is_empty();
        self.let_go(tx, Done::default());
        waiting || !self.incoming.lock().is_empty()
    }

    /// A buffer of `len` bytes from this connection's pool. A pooled
    /// buffer keeps what it held (only bytes it never had are zeroed, as
    /// zeroing a 1 MiB buffer per request cost 5% of the daemon's CPU): a
    /// write's payload overwrites it whole before use, and a read fills it
    /// whole before it is sent. Only this connection's own bytes were in it.
    pub(super) fn take_buffer(&self, len: usize) -> Vec<u8> {
        let mut b = self.buffers.lock().pop().unwrap_or_default();
        if b.len() >= len {
            b.truncate(len);
        } else {
            b.resize(len, 0);
        }
        b
    }

    pub(super) fn give_buffer(&self, b: Vec<u8>) {
        let mut pool = self.buffers.lock();
        if pool.len() < PER_CONN * 2 && b.capacity() <= super::proto::MAX_PAYLOAD as usize {
            pool.push(b);
        }
    }
}
