//! A connection's replies: whoever holds the sending side (`Tx`) writes
//! to the socket; a reply that finds it held is left in `incoming` for
//! the holder, which looks there again before it lets go (`let_go`), and
//! what the socket does not take waits in the queue for the reactor.

use super::{interest, Conn, Tx};
use nix::sys::epoll::EpollEvent;
use parking_lot::MutexGuard;
use std::io::{self, IoSlice, Write};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// A reply not yet taken whole: its header and body (owned, so a large
/// read's buffer waits here without a copy), and how much of them is out.
pub(super) struct Out {
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
pub(in crate::frontend::nbd) enum Body<'a> {
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

/// Replies a worker holds back while it runs the next requests of the
/// same connection, to send several in one `writev` (see `Conn::reply`).
#[derive(Default)]
pub(in crate::frontend::nbd) struct Held {
    outs: Vec<Out>,
    /// Of `outs`, those not yet counted in the queue's `held`.
    uncounted: usize,
    /// Whether replies are held now (the worker's items are quick).
    pub on: bool,
}

impl Held {
    pub(in crate::frontend::nbd) fn len(&self) -> usize {
        self.outs.len()
    }

    /// The replies held since the last call, for the queue's count. Not
    /// the change in `len`: a flush sends what was held (and counted)
    /// before its own reply is held.
    pub(in crate::frontend::nbd) fn take_uncounted(&mut self) -> usize {
        std::mem::take(&mut self.uncounted)
    }
}

/// What sending did, to settle once no lock is held.
#[derive(Default)]
pub(super) struct Done {
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

impl Conn {
    /// Send `header` and `body` (one reply, in order with every other),
    /// then give back `cost` once the client has taken them all.
    pub(in crate::frontend::nbd) fn send(&self, header: &[u8], body: &[u8], cost: u64) {
        self.send_body(header, Body::Borrowed(body), cost)
    }

    /// Reply to one request: held back in `held` while it is on, sent
    /// (`send_body`) otherwise. A held reply goes out with the others
    /// `send_held` sends; the connection's queue counts it (`Queue::held`)
    /// until then, so the connection is not idle while one waits.
    pub(in crate::frontend::nbd) fn reply(
        &self,
        held: &mut Held,
        header: &[u8],
        body: Body<'_>,
        cost: u64,
    ) {
        if held.on {
            held.outs.push(Out::new(header, body, cost));
            held.uncounted += 1;
            return;
        }
        self.send_body(header, body, cost)
    }

    /// Send the replies `held` holds, several to a `writev` (they join
    /// `incoming`, which the holder of `tx` sends before it lets go).
    pub(in crate::frontend::nbd) fn send_held(&self, held: &mut Held) {
        // Those held since the last count were never added to it.
        let n = held.outs.len() - held.take_uncounted();
        if held.outs.is_empty() {
            return;
        }
        self.incoming.lock().append(&mut held.outs);
        if let Some(tx) = self.tx.try_lock() {
            self.let_go(tx, Done::default());
        }
        let idle = {
            let mut q = self.queue.lock();
            debug_assert!(q.held >= n, "{n} held replies sent, {} counted", q.held);
            q.held = q.held.saturating_sub(n);
            q.idle()
        };
        if idle && self.closing.load(Ordering::SeqCst) {
            self.hub.revisit(self.id);
        }
    }

    /// `send`, with the body's buffer returned to the connection's pool
    /// once it is out. Whoever holds the socket's side (`tx`) writes; a
    /// reply that finds it held is left in `incoming` for the holder,
    /// which looks there again before it lets go (see `let_go`): on two
    /// cores, workers that waited for each other's `writev` spent a tenth
    /// of the daemon's time spinning and yielding.
    pub(in crate::frontend::nbd) fn send_body(&self, header: &[u8], body: Body<'_>, cost: u64) {
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
                if self.widen.load(Ordering::Relaxed) {
                    std::thread::sleep(std::time::Duration::from_micros(20));
                }
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
    pub(in crate::frontend::nbd) fn flush_replies(&self) -> bool {
        let mut done = Done::default();
        let mut tx = self.tx.lock();
        self.pump(&mut tx, &mut done);
        self.want_write(&mut tx, &mut done);
        let empty = tx.queue.is_empty();
        self.let_go(tx, done);
        empty
    }

    /// Since when replies have waited for the client without progress.
    pub(in crate::frontend::nbd) fn stalled_since(&self) -> Option<Instant> {
        let tx = self.tx.lock();
        let since = tx.stalled_since;
        self.let_go(tx, Done::default());
        since
    }

    /// Drop every reply still queued (the connection is dead), giving back
    /// their budget.
    pub(in crate::frontend::nbd) fn drop_replies(&self) {
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

    pub(in crate::frontend::nbd) fn replies_waiting(&self) -> bool {
        let tx = self.tx.lock();
        let waiting = !tx.queue.is_empty();
        self.let_go(tx, Done::default());
        waiting || !self.incoming.lock().is_empty()
    }
}
