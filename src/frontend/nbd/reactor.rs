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
//! and for good once closing. A client that goes silent mid-handshake for
//! `HANDSHAKE_TIMEOUT`, or takes no reply bytes for `WRITE_TIMEOUT` while
//! some wait, is disconnected.

use super::conn::{Conn, Hub, Job, Work};
use super::handshake::{error_reply, greeting, Handshake, Outcome, TlsState};
use super::proto::*;
use super::stream::Stream;
use super::transmission::MIN_COST;
use super::workers::Workers;
use super::{Listener, Policy};
use nix::errno::Errno;
use nix::sys::epoll::{EpollEvent, EpollFlags, EpollTimeout};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a client may go silent part way into the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long replies may wait for a client that takes none of them.
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection's read buffer starts this small and doubles while reads
/// fill it, up to `MAX_BUF` (a whole option fits).
const MIN_BUF: usize = 4 << 10;
const MAX_BUF: usize = 256 << 10;
/// A payload this large is read straight into its request's buffer.
const DIRECT: usize = 64 << 10;
/// Bytes read from one connection before the others get a turn.
const PASS: usize = 4 << 20;
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

/// Where a connection's input stands.
enum Phase {
    /// The client's 4 flag bytes.
    Flags,
    /// An option's header and data.
    Option,
    /// The data of an option too large to hold, dropped as it comes.
    SkipOption { option: u32, left: u64 },
    /// An option is being answered.
    Busy,
    /// STARTTLS was accepted: hand over once the answer is out.
    TlsWait { no_zeroes: bool },
    /// A request header.
    Header,
    /// A request waits for payload bytes from the budgets.
    Starved(Request),
    /// A write's payload.
    Payload { job: Job, filled: usize },
    /// An oversized write's payload, dropped as it comes.
    Skip { job: Job, left: u64 },
    /// Reading no more; ends once the queue is idle and replies are out.
    Closing,
}

impl Phase {
    fn reads(&self) -> bool {
        !matches!(
            self,
            Phase::Busy | Phase::TlsWait { .. } | Phase::Starved(_) | Phase::Closing
        )
    }

    fn in_handshake(&self) -> bool {
        matches!(
            self,
            Phase::Flags | Phase::Option | Phase::SkipOption { .. }
        )
    }
}

struct Entry {
    conn: Arc<Conn>,
    reader: Box<dyn Stream>,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    phase: Phase,
    last_input: Instant,
    /// Work framed since the last hand-over to the workers.
    batch: Vec<Work>,
}

/// Why a connection stops reading.
enum End {
    /// The client hung up or disconnected cleanly.
    Closed,
    Failed(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> End {
        End::Failed(e)
    }
}

fn bad(msg: &str) -> End {
    End::Failed(io::Error::new(io::ErrorKind::InvalidData, msg.to_string()))
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
        Ok(Reactor {
            shared,
            hub,
            workers: Workers::new(super::transmission::run),
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
            let timeout: u16 = match (self.again.is_empty(), paused) {
                (false, _) => 0,
                (true, true) => ACCEPT_PAUSE.as_millis() as u16,
                (true, false) => 1000,
            };
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
            if e.phase.in_handshake() && now.duration_since(e.last_input) > HANDSHAKE_TIMEOUT {
                tracing::info!(
                    "nbd: connection {id} from {}: handshake timed out",
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

impl Entry {
    fn close(&mut self) {
        self.phase = Phase::Closing;
        self.conn.closing.store(true, Ordering::SeqCst);
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Act on an answered option.
    fn take_outcome(&mut self) -> Result<(), End> {
        if !matches!(self.phase, Phase::Busy) {
            return Ok(());
        }
        let Some(outcome) = self.conn.outcome.lock().take() else {
            return Ok(());
        };
        match outcome? {
            None => self.phase = Phase::Option,
            Some(Outcome::Closed) => return Err(End::Closed),
            Some(Outcome::StartTls { no_zeroes }) => self.phase = Phase::TlsWait { no_zeroes },
            Some(Outcome::Serve(neg)) => {
                tracing::debug!("nbd: serving {} to {}", neg.volume.name(), self.conn.peer);
                let _ = self.conn.serving.set(neg);
                self.phase = Phase::Header;
            }
        }
        Ok(())
    }

    /// Frame what is buffered and read more while the phase wants it.
    /// `Ok(false)`: stopped at `PASS` bytes with more to read.
    fn pump(&mut self, workers: &Arc<Workers>) -> Result<bool, End> {
        if let Phase::Starved(req) = self.phase {
            self.phase = Phase::Header;
            self.admit(req);
        }
        let mut read = 0;
        loop {
            // Everything framed from one read goes over at once: one lock
            // of the queue and of the ring, however many requests.
            let framed = self.frame();
            if !self.batch.is_empty() {
                workers.submit(&self.conn, &mut self.batch);
            }
            framed?;
            if !self.phase.reads() {
                return Ok(true);
            }
            if read >= PASS {
                return Ok(false);
            }
            match self.read_more() {
                Ok(0) => return Err(End::Closed),
                Ok(n) => {
                    read += n;
                    self.last_input = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Failed(e)),
            }
        }
    }

    /// Read from the socket: a large payload straight into its buffer,
    /// anything else into the read buffer.
    fn read_more(&mut self) -> io::Result<usize> {
        if self.start == self.end {
            if let Phase::Payload { job, filled } = &mut self.phase {
                if job.data.len() - *filled >= DIRECT {
                    let n = self.reader.read(&mut job.data[*filled..])?;
                    *filled += n;
                    if n > 0 && *filled == job.data.len() {
                        self.finish_payload();
                    }
                    return Ok(n);
                }
            }
        }
        if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else {
                let grown = (self.buf.len() * 2).min(MAX_BUF);
                self.buf.resize(grown, 0);
            }
        }
        let n = self.reader.read(&mut self.buf[self.end..])?;
        self.end += n;
        if self.end == self.buf.len() && self.buf.len() < MAX_BUF && self.start == 0 {
            let grown = (self.buf.len() * 2).min(MAX_BUF);
            self.buf.resize(grown, 0);
        }
        Ok(n)
    }

    fn finish_payload(&mut self) {
        if let Phase::Payload { job, .. } = std::mem::replace(&mut self.phase, Phase::Header) {
            self.batch.push(Work::Request(job));
        }
    }

    /// Turn buffered bytes into work, as far as they go.
    fn frame(&mut self) -> Result<(), End> {
        loop {
            let avail = self.end - self.start;
            match &mut self.phase {
                Phase::Flags => {
                    if avail < 4 {
                        return Ok(());
                    }
                    let b = self.buffered();
                    let flags = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    self.consume(4);
                    self.conn.handshake.lock().client_flags(flags)?;
                    self.phase = Phase::Option;
                }
                Phase::Option => {
                    if avail < 16 {
                        return Ok(());
                    }
                    let b = self.buffered();
                    let magic = u64::from_be_bytes(b[0..8].try_into().unwrap_or_default());
                    let option = u32::from_be_bytes(b[8..12].try_into().unwrap_or_default());
                    let len = u32::from_be_bytes(b[12..16].try_into().unwrap_or_default());
                    if magic != IHAVEOPT {
                        return Err(bad("bad option magic"));
                    }
                    if len > MAX_OPTION {
                        if option == OPT_EXPORT_NAME || len > 16 * MAX_PAYLOAD {
                            return Err(bad("option payload too large"));
                        }
                        self.consume(16);
                        self.phase = Phase::SkipOption {
                            option,
                            left: len as u64,
                        };
                        continue;
                    }
                    let whole = 16 + len as usize;
                    if avail < whole {
                        return Ok(());
                    }
                    let data = self.buffered()[16..whole].to_vec();
                    self.consume(whole);
                    self.phase = Phase::Busy;
                    self.batch.push(Work::Option { option, data });
                    return Ok(());
                }
                Phase::SkipOption { option, left } => {
                    let k = (*left).min(avail as u64);
                    *left -= k;
                    let (option, done) = (*option, *left == 0);
                    self.consume(k as usize);
                    if !done {
                        return Ok(());
                    }
                    let mut out = Vec::new();
                    error_reply(
                        &mut out,
                        option,
                        REP_ERR_TOO_BIG,
                        "option payload too large",
                    )?;
                    self.conn.send(&out, &[], 0);
                    self.phase = Phase::Option;
                }
                Phase::Header => {
                    if avail < Request::SIZE {
                        return Ok(());
                    }
                    let mut h = [0u8; Request::SIZE];
                    h.copy_from_slice(&self.buffered()[..Request::SIZE]);
                    self.consume(Request::SIZE);
                    let req = Request::decode(&h).map_err(|e| bad(&e.to_string()))?;
                    if req.kind == CMD_DISC {
                        return Err(End::Closed);
                    }
                    self.admit(req);
                }
                Phase::Payload { job, filled } => {
                    let k = (job.data.len() - *filled).min(avail);
                    let from = self.start;
                    job.data[*filled..*filled + k].copy_from_slice(&self.buf[from..from + k]);
                    *filled += k;
                    let done = *filled == job.data.len();
                    self.consume(k);
                    if !done {
                        return Ok(());
                    }
                    self.finish_payload();
                }
                Phase::Skip { left, .. } => {
                    let k = (*left).min(avail as u64);
                    *left -= k;
                    let done = *left == 0;
                    self.consume(k as usize);
                    if !done {
                        return Ok(());
                    }
                    if let Phase::Skip { job, .. } =
                        std::mem::replace(&mut self.phase, Phase::Header)
                    {
                        self.batch.push(Work::Request(job));
                    }
                }
                Phase::Busy | Phase::TlsWait { .. } | Phase::Starved(_) | Phase::Closing => {
                    return Ok(());
                }
            }
        }
    }

    /// Charge `req` to the budgets and start on it, or wait for them.
    fn admit(&mut self, req: Request) {
        let oversized = req.kind == CMD_WRITE && req.length > MAX_PAYLOAD;
        let holds = !oversized
            && (req.kind == CMD_WRITE || (req.kind == CMD_READ && req.length <= MAX_PAYLOAD));
        let cost = if holds {
            MIN_COST.max(req.length as u64)
        } else {
            MIN_COST
        };
        let conn = &self.conn;
        if !conn.budget.try_acquire(cost) {
            // Say so first, then look again: a release in between wakes us.
            conn.starved.store(true, Ordering::SeqCst);
            if !conn.budget.try_acquire(cost) {
                self.phase = Phase::Starved(req);
                return;
            }
            conn.starved.store(false, Ordering::SeqCst);
        }
        if !conn.hub.global.try_acquire(cost) {
            conn.hub.starved.lock().push(conn.id);
            if !conn.hub.global.try_acquire(cost) {
                conn.budget.release(cost);
                self.phase = Phase::Starved(req);
                return;
            }
        }
        let mut job = Job {
            req,
            data: Vec::new(),
            error: None,
            cost,
        };
        if oversized {
            // Too big to hold: drop the payload as it comes and refuse.
            job.error = Some(EINVAL);
            let left = req.length as u64;
            self.phase = Phase::Skip { job, left };
        } else if req.kind == CMD_WRITE {
            // Read even when the request will be refused, so the stream
            // stays in step.
            job.data = conn.take_buffer(req.length as usize);
            self.phase = Phase::Payload { job, filled: 0 };
            if req.length == 0 {
                self.finish_payload();
            }
        } else {
            self.batch.push(Work::Request(job));
        }
    }
}
