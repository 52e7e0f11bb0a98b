//! The reactor: one thread per server that accepts clients, reads what every
//! connection sends, frames it into whole items (a handshake option, a
//! request with its payload) and hands them to the shared workers. It never
//! runs a request and never waits on a client: every socket is
//! non-blocking, edge-triggered in one epoll set, so a thousand idle or
//! half-spoken clients cost a thousand small buffers, not threads.
//!
//! A connection reads while its phase wants input. It stops while an
//! option is being answered (the handshake is a conversation), while its
//! payload budget or the server's is spent (the releasing side wakes it),
//! and for good once closing. A client that goes silent mid-handshake or
//! mid-payload for `HANDSHAKE_TIMEOUT`, or takes no reply bytes for
//! `WRITE_TIMEOUT` while some wait, is disconnected.

use super::conn::{Conn, Hub};
use super::handshake::{greeting, Handshake, TlsState};
use super::input::{End, Entry, Phase, MIN_BUF};
use super::stream::Stream;
use super::workers::{Workers, TICK};
use super::{Listener, Policy};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::Shutdown;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client may go silent part way into the handshake or into a
/// request's payload (which holds its bytes of the budgets meanwhile).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long replies may wait for a client that takes none of them.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Clients accepted from one listener before the others get a turn.
const ACCEPT_BATCH: usize = 64;
/// How long a listener rests after accept fails (out of descriptors).
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

const WAKE: u64 = u64::MAX;
const LISTENER: u64 = 1 << 62;

/// A stream to take on part way, with its policy and handshake so far.
type Adopted = (Box<dyn Stream>, Policy, Handshake);

/// What the server's callers share with its reactor thread.
pub(super) struct Shared {
    pub hub: Arc<Hub>,
    /// Listeners to start accepting on.
    pub listeners: Mutex<Vec<(Box<dyn Listener>, Policy)>>,
    /// Streams to take on part way (after the TLS handshake).
    pub adopt: Mutex<Vec<Adopted>>,
    pub connections: AtomicUsize,
}

impl Shared {
    pub(super) fn new() -> io::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            hub: Arc::new(Hub::new()?),
            listeners: Mutex::new(Vec::new()),
            adopt: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
        }))
    }

    pub(super) fn wake(&self) {
        let _ = self.hub.wake.write(1);
    }
}

struct Listening {
    listener: Box<dyn Listener>,
    policy: Policy,
    paused_until: Option<Instant>,
}

pub(super) struct Reactor {
    shared: Arc<Shared>,
    hub: Arc<Hub>,
    workers: Arc<Workers>,
    listeners: Vec<Listening>,
    conns: HashMap<u64, Entry>,
    next_id: u64,
    /// Connections cut short by `PASS`, to read again next round.
    again: Vec<u64>,
    stopped: bool,
}

fn fd_of(fd: i32) -> BorrowedFd<'static> {
    // SAFETY: used only for epoll_ctl calls while the owner is alive.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

impl Reactor {
    pub(super) fn new(shared: Arc<Shared>) -> io::Result<Reactor> {
        let hub = shared.hub.clone();
        hub.epoll
            .add(&hub.wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        let workers = Workers::new(super::transmission::run, hub.clone());
        Ok(Reactor {
            shared,
            hub,
            workers,
            listeners: Vec::new(),
            conns: HashMap::new(),
            next_id: 1,
            again: Vec::new(),
            stopped: false,
        })
    }

    /// Serve until stopped and every connection has ended.
    pub(super) fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        let mut last_sweep = Instant::now();
        loop {
            let paused = self.listeners.iter().any(|l| l.paused_until.is_some());
            let mut timeout: u16 = match (self.again.is_empty(), paused) {
                (false, _) => 0,
                (true, true) => ACCEPT_PAUSE.as_millis() as u16,
                (true, false) => 1000,
            };
            if !self.workers.may_nap() {
                timeout = timeout.min(TICK.as_millis() as u16);
            }
            let n = match self
                .hub
                .epoll
                .wait(&mut events, EpollTimeout::from(timeout))
            {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    tracing::warn!("nbd: epoll_wait failed: {e}");
                    std::thread::sleep(ACCEPT_PAUSE);
                    0
                }
            };
            for ev in &events[..n] {
                match ev.data() {
                    WAKE => {
                        let _ = self.hub.wake.read();
                    }
                    id if id >= LISTENER => self.accept((id - LISTENER) as usize),
                    id => {
                        let out =
                            EpollFlags::EPOLLOUT | EpollFlags::EPOLLERR | EpollFlags::EPOLLHUP;
                        if ev.events().intersects(out) {
                            if let Some(e) = self.conns.get(&id) {
                                e.conn.flush_replies();
                            }
                        }
                        self.drive(id);
                    }
                }
            }
            self.workers.nudge();
            let mut ids = std::mem::take(&mut *self.hub.revisit.lock());
            ids.append(&mut self.again);
            for id in ids {
                self.drive(id);
            }
            self.take_listeners();
            self.take_adopted();
            if self.hub.stopping.load(Ordering::SeqCst) && !self.stopped {
                self.begin_stop();
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) || paused {
                last_sweep = Instant::now();
                self.sweep();
            }
            if self.stopped && self.conns.is_empty() {
                break;
            }
        }
        self.workers.stop();
    }

    fn take_listeners(&mut self) {
        let new: Vec<_> = std::mem::take(&mut *self.shared.listeners.lock());
        for (listener, policy) in new {
            if self.stopped {
                continue;
            }
            let i = self.listeners.len() as u64;
            let ev = EpollEvent::new(EpollFlags::EPOLLIN, LISTENER + i);
            if let Err(e) = self.hub.epoll.add(fd_of(listener.fd()), ev) {
                tracing::warn!("nbd: cannot watch a listener: {e}");
                continue;
            }
            self.listeners.push(Listening {
                listener,
                policy,
                paused_until: None,
            });
        }
    }

    fn take_adopted(&mut self) {
        let new: Vec<_> = std::mem::take(&mut *self.shared.adopt.lock());
        for (stream, policy, handshake) in new {
            if self.stopped {
                continue;
            }
            self.add(stream, policy, handshake, Phase::Option, None);
        }
    }

    fn accept(&mut self, i: usize) {
        for _ in 0..ACCEPT_BATCH {
            let Some(l) = self.listeners.get(i) else {
                return;
            };
            match l.listener.accept_stream() {
                Ok(stream) => {
                    let policy = l.policy.clone();
                    let tls = match policy.tls {
                        Some(_) => TlsState::Required,
                        None => TlsState::Off,
                    };
                    let hello = greeting();
                    self.add(
                        stream,
                        policy,
                        Handshake::new(tls),
                        Phase::Flags,
                        Some(&hello),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => {}
                Err(e) => {
                    // Out of descriptors, most likely: rest a moment
                    // instead of spinning on a listener that stays ready.
                    tracing::warn!("nbd: accept failed: {e}");
                    let fd = l.listener.fd();
                    let _ = self.hub.epoll.delete(fd_of(fd));
                    if let Some(l) = self.listeners.get_mut(i) {
                        l.paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    }
                    return;
                }
            }
        }
        // More may wait: the listener is level-triggered, so epoll says so.
    }

    fn add(
        &mut self,
        stream: Box<dyn Stream>,
        policy: Policy,
        handshake: Handshake,
        phase: Phase,
        hello: Option<&[u8]>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        match Conn::register(&self.hub, id, stream, policy, handshake) {
            Ok((conn, reader)) => {
                if let Some(hello) = hello {
                    conn.send(hello, &[], 0);
                }
                self.conns.insert(
                    id,
                    Entry {
                        conn,
                        reader,
                        buf: vec![0; MIN_BUF],
                        start: 0,
                        end: 0,
                        phase,
                        last_input: Instant::now(),
                        batch: Vec::new(),
                        after_large: false,
                    },
                );
                self.shared
                    .connections
                    .store(self.conns.len(), Ordering::Relaxed);
                // Bytes may have come before the socket was watched.
                self.drive(id);
            }
            Err(e) => tracing::warn!("nbd: cannot take a connection: {e}"),
        }
    }

    /// Read and frame what `id` has sent, then settle it if it is ending.
    fn drive(&mut self, id: u64) {
        let Some(e) = self.conns.get_mut(&id) else {
            return;
        };
        let workers = &self.workers;
        let result = e.take_outcome().and_then(|()| e.pump(workers));
        match result {
            Ok(true) => {}
            Ok(false) => self.again.push(id),
            Err(end) => {
                match &end {
                    End::Closed => {
                        tracing::debug!("nbd: connection {id} from {} closed", e.conn.peer)
                    }
                    End::Failed(err) => {
                        tracing::info!("nbd: connection {id} from {} ended: {err}", e.conn.peer);
                        if err.kind() != io::ErrorKind::InvalidData {
                            // The socket failed: no reply can reach the client.
                            e.conn.kill();
                        }
                    }
                }
                e.close();
            }
        }
        if e.conn.dead.load(Ordering::SeqCst) && !matches!(e.phase, Phase::Closing) {
            // A reply could not be sent: nothing more will reach the client.
            e.close();
        }
        self.settle(id);
    }

    /// End `id` if it is closing and done, or hand it to TLS.
    fn settle(&mut self, id: u64) {
        let Some(e) = self.conns.get(&id) else {
            return;
        };
        let idle = e.conn.queue.lock().idle();
        let done = match e.phase {
            Phase::Closing => {
                idle && (e.conn.dead.load(Ordering::SeqCst) || !e.conn.replies_waiting())
            }
            Phase::TlsWait { .. } => idle && !e.conn.replies_waiting(),
            _ => false,
        };
        if !done {
            return;
        }
        let Some(e) = self.conns.remove(&id) else {
            return;
        };
        self.shared
            .connections
            .store(self.conns.len(), Ordering::Relaxed);
        e.conn.deregister();
        if let Phase::TlsWait { no_zeroes } = e.phase {
            if e.start == e.end {
                self.start_tls(&e.conn, no_zeroes);
                return;
            }
            tracing::info!("nbd: connection {id}: bytes after STARTTLS before TLS");
        }
        e.conn.shutdown(Shutdown::Both);
        e.conn.drop_replies();
    }

    /// Run the TLS handshake on a thread of its own (it blocks, bounded by
    /// `HANDSHAKE_TIMEOUT`), then take the connection back at its options.
    fn start_tls(&self, conn: &Conn, no_zeroes: bool) {
        let (Some(tls), Ok(sock)) = (conn.policy.tls.clone(), conn.clone_socket()) else {
            conn.shutdown(Shutdown::Both);
            return;
        };
        let (shared, policy, peer) = (self.shared.clone(), conn.policy.clone(), conn.peer.clone());
        let started = std::thread::Builder::new()
            .name("nbd-tls-accept".into())
            .spawn(move || {
                let upgraded = sock
                    .set_nonblocking(false)
                    .and_then(|()| sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT)))
                    .and_then(|()| sock.set_write_timeout(Some(HANDSHAKE_TIMEOUT)))
                    .and_then(|()| tls.upgrade(sock));
                match upgraded {
                    Ok((plain, who)) => {
                        tracing::info!("nbd: {peer}: TLS ({who})");
                        let hs = Handshake::new(TlsState::Active { no_zeroes });
                        shared.adopt.lock().push((plain, policy, hs));
                        shared.wake();
                    }
                    Err(e) => tracing::info!("nbd: connection from {peer} ended: {e}"),
                }
            });
        if let Err(e) = started {
            tracing::warn!("nbd: cannot start the TLS handshake: {e}");
        }
    }

    fn begin_stop(&mut self) {
        self.stopped = true;
        for l in self.listeners.drain(..) {
            let _ = self.hub.epoll.delete(fd_of(l.listener.fd()));
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(e) = self.conns.get_mut(&id) {
                e.conn.shutdown(Shutdown::Read);
                e.close();
            }
            self.settle(id);
        }
    }

    /// Time out silent handshakes and clients that take no replies; let
    /// paused listeners accept again.
    fn sweep(&mut self) {
        let now = Instant::now();
        for l in &mut self.listeners {
            if l.paused_until.is_some_and(|t| now >= t) {
                l.paused_until = None;
            }
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.paused_until.is_none() {
                let ev = EpollEvent::new(EpollFlags::EPOLLIN, LISTENER + i as u64);
                // Already watched (EEXIST) for every listener never paused.
                let _ = self.hub.epoll.add(fd_of(l.listener.fd()), ev);
            }
        }
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(e) = self.conns.get_mut(&id) else {
                continue;
            };
            if e.phase.mid_message() && now.duration_since(e.last_input) > HANDSHAKE_TIMEOUT {
                let what = match e.phase.in_handshake() {
                    true => "handshake",
                    false => "request payload",
                };
                tracing::info!(
                    "nbd: connection {id} from {}: {what} timed out",
                    e.conn.peer
                );
                e.conn.kill();
                e.close();
            }
            if let Some(t) = e.conn.stalled_since() {
                if now.duration_since(t) > WRITE_TIMEOUT {
                    tracing::info!(
                        "nbd: connection {id} from {}: took no reply for {}s; disconnected",
                        e.conn.peer,
                        WRITE_TIMEOUT.as_secs()
                    );
                    e.conn.kill();
                    e.close();
                }
            }
            self.settle(id);
        }
    }
}
