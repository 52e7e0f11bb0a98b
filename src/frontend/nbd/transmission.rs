//! The transmission phase. The connection's thread reads and validates
//! requests and queues them; a few worker threads execute them against the
//! volume and reply as each finishes (replies out of order, many requests in
//! flight). A byte budget bounds the memory a connection can hold; a client
//! that stops reading replies times out and is disconnected.

use super::handshake::Negotiated;
use super::proto::*;
use super::stream::{skip, Stream};
use crate::error::Error;
use crate::Volume;
use parking_lot::{Condvar, Mutex};
use std::io::{self, BufReader, IoSlice, Read, Write};
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

const WORKERS: usize = 16;
/// Payload bytes a connection may hold in flight.
const BUDGET: u64 = 96 << 20;
/// Payload bytes all connections together may hold: a thousand clients
/// sending large writes cannot take the host's memory.
const GLOBAL_BUDGET: u64 = 1 << 30;
/// Least a request is charged, so many tiny requests are bounded too.
const MIN_COST: u64 = 64 << 10;
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

struct Budget {
    limit: u64,
    used: Mutex<u64>,
    cv: Condvar,
}

static GLOBAL: Budget = Budget::new(GLOBAL_BUDGET);

impl Budget {
    const fn new(limit: u64) -> Budget {
        Budget {
            limit,
            used: parking_lot::const_mutex(0),
            cv: Condvar::new(),
        }
    }

    /// Take `n` bytes, waiting while others hold too much (one request
    /// always fits when nothing is held, however large).
    fn acquire(&self, n: u64) {
        let mut used = self.used.lock();
        while *used + n > self.limit && *used > 0 {
            self.cv.wait(&mut used);
        }
        *used += n;
    }

    fn release(&self, n: u64) {
        *self.used.lock() -= n;
        self.cv.notify_all();
    }
}

struct Job {
    req: Request,
    data: Vec<u8>,
    /// Set when validation already failed: reply with this error.
    error: Option<u32>,
    cost: u64,
}

struct Shared {
    volume: Volume,
    structured: bool,
    writer: Mutex<Box<dyn Stream>>,
    budget: Budget,
    dead: AtomicBool,
    buffers: Mutex<Vec<Vec<u8>>>,
    /// A handle to shut the socket down if a reply cannot be sent.
    control: Box<dyn Stream>,
}

/// Serve requests until the client disconnects, misbehaves or the server stops.
pub fn serve(stream: Box<dyn Stream>, neg: Negotiated, stopping: &AtomicBool) -> io::Result<()> {
    let writer = stream.try_clone_stream()?;
    writer.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let control = stream.try_clone_stream()?;
    stream.set_read_timeout(None)?;
    let shared = Arc::new(Shared {
        volume: neg.volume,
        structured: neg.structured,
        writer: Mutex::new(writer),
        budget: Budget::new(BUDGET),
        dead: AtomicBool::new(false),
        buffers: Mutex::new(Vec::new()),
        control,
    });
    let mut workers = Workers::start(shared.clone())?;
    let result = read_loop(
        stream,
        &shared,
        &mut workers,
        neg.allocation_context,
        stopping,
    );
    workers.finish();
    shared.control.shutdown(Shutdown::Both);
    result
}

/// The connection's worker threads: one to start with, more (up to
/// `WORKERS`) only while every one is busy, so idle clients cost a thread.
struct Workers {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
    rx: Arc<Mutex<mpsc::Receiver<Job>>>,
    idle: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    fn start(shared: Arc<Shared>) -> io::Result<Workers> {
        let (tx, rx) = mpsc::channel::<Job>();
        let mut w = Workers {
            shared,
            tx,
            rx: Arc::new(Mutex::new(rx)),
            idle: Arc::new(AtomicUsize::new(0)),
            threads: Vec::new(),
        };
        w.spawn()?;
        Ok(w)
    }

    fn spawn(&mut self) -> io::Result<()> {
        let (shared, rx, idle) = (self.shared.clone(), self.rx.clone(), self.idle.clone());
        let t = std::thread::Builder::new()
            .name("nbd-io".into())
            .spawn(move || loop {
                idle.fetch_add(1, Ordering::SeqCst);
                let job = { rx.lock().recv() };
                idle.fetch_sub(1, Ordering::SeqCst);
                match job {
                    Ok(job) => run(&shared, job),
                    Err(_) => break,
                }
            })?;
        self.threads.push(t);
        Ok(())
    }

    fn queue(&mut self, job: Job) -> io::Result<()> {
        if self.idle.load(Ordering::SeqCst) == 0 && self.threads.len() < WORKERS {
            // Out of threads: the ones there are serve the queue.
            if let Err(e) = self.spawn() {
                tracing::warn!("nbd: cannot start another I/O thread: {e}");
            }
        }
        self.tx
            .send(job)
            .map_err(|_| io::Error::other("workers gone"))
    }

    fn finish(self) {
        drop(self.tx);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn read_loop(
    stream: Box<dyn Stream>,
    shared: &Shared,
    workers: &mut Workers,
    allocation: bool,
    stopping: &AtomicBool,
) -> io::Result<()> {
    // Buffered: a small write's header and payload cost one read syscall.
    let mut stream = BufReader::with_capacity(256 << 10, stream);
    let mut hdr = [0u8; Request::SIZE];
    loop {
        if shared.dead.load(Ordering::Relaxed) {
            return Err(io::Error::other("client stopped reading replies"));
        }
        match stream.read_exact(&mut hdr) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) if stopping.load(Ordering::Relaxed) => {
                let _ = e;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        let req =
            Request::decode(&hdr).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if req.kind == CMD_DISC {
            return Ok(());
        }
        let mut error = if stopping.load(Ordering::Relaxed) {
            Some(ESHUTDOWN)
        } else {
            validate(shared, &req, allocation)
        };
        let oversized = req.kind == CMD_WRITE && req.length > MAX_PAYLOAD;
        let mut data = Vec::new();
        let mut cost = MIN_COST;
        if oversized {
            // Too big to hold: drop the payload unread-into-memory and refuse.
            skip(&mut stream, req.length as u64)?;
            error = Some(EINVAL);
        } else if req.kind == CMD_WRITE || (req.kind == CMD_READ && error.is_none()) {
            cost = cost.max(req.length as u64);
        }
        shared.budget.acquire(cost);
        GLOBAL.acquire(cost);
        if req.kind == CMD_WRITE && !oversized {
            // Read even when the request is refused, so the stream stays in step.
            data = take_buffer(shared, req.length as usize);
            if let Err(e) = stream.read_exact(&mut data) {
                GLOBAL.release(cost); // the connection's own budget ends with it
                return Err(e);
            }
        }
        let job = Job {
            req,
            data,
            error,
            cost,
        };
        if let Err(e) = workers.queue(job) {
            GLOBAL.release(cost);
            return Err(e);
        }
    }
}

/// Protocol-level checks, before touching the volume.
fn validate(shared: &Shared, req: &Request, allocation: bool) -> Option<u32> {
    let known =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    if req.flags & !known != 0 {
        return Some(EINVAL);
    }
    let allowed = CMD_FLAG_FUA
        | match req.kind {
            CMD_READ => CMD_FLAG_DF,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
    if req.flags & !allowed != 0 {
        return Some(EINVAL);
    }
    let v = &shared.volume;
    match req.kind {
        CMD_FLUSH => return None,
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS => {}
        _ => return Some(EINVAL),
    }
    // The protocol: a block status length MUST NOT be 0; the request is
    // answered with EINVAL and the connection goes on.
    if req.kind == CMD_BLOCK_STATUS && (!(allocation && shared.structured) || req.length == 0) {
        return Some(EINVAL);
    }
    if req.kind == CMD_READ && req.length > MAX_PAYLOAD {
        return Some(EOVERFLOW);
    }
    if v.is_read_only() && matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        return Some(EPERM);
    }
    let size = match v.size() {
        Ok(s) => s,
        Err(_) => return Some(EIO),
    };
    match req.offset.checked_add(req.length as u64) {
        Some(end) if end <= size => None,
        _ if req.kind == CMD_WRITE => Some(ENOSPC),
        _ => Some(EINVAL),
    }
}

fn take_buffer(shared: &Shared, len: usize) -> Vec<u8> {
    let mut b = shared.buffers.lock().pop().unwrap_or_default();
    b.resize(len, 0);
    b
}

fn give_buffer(shared: &Shared, mut b: Vec<u8>) {
    let mut pool = shared.buffers.lock();
    if pool.len() < WORKERS * 2 && b.capacity() <= MAX_PAYLOAD as usize {
        b.clear();
        pool.push(b);
    }
}

fn errno(e: &Error) -> u32 {
    nbd_error(e.errno())
}

fn run(shared: &Shared, job: Job) {
    let Job {
        req,
        mut data,
        error,
        cost,
    } = job;
    let outcome = match error {
        Some(e) => Err(e),
        // A panic in one request is that request's EIO: the worker, the
        // connection and the others' requests go on.
        None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            execute(shared, &req, &mut data)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("nbd: a request panicked; it gets EIO and the connection goes on");
            Err(EIO)
        }),
    };
    let sent = match outcome {
        Ok(Payload::None) => send(shared, &simple_reply(req.cookie, 0), &[]),
        Ok(Payload::Read) => send_read(shared, &req, &data),
        Ok(Payload::Status(descriptors)) => send_status(shared, &req, &descriptors),
        Err(e) => send_error(shared, &req, e),
    };
    if sent.is_err() && !shared.dead.swap(true, Ordering::Relaxed) {
        shared.control.shutdown(Shutdown::Both);
    }
    give_buffer(shared, data);
    GLOBAL.release(cost);
    shared.budget.release(cost);
}

enum Payload {
    None,
    Read,
    Status(Vec<(u32, u32)>),
}

fn execute(shared: &Shared, req: &Request, data: &mut Vec<u8>) -> Result<Payload, u32> {
    let v = &shared.volume;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let e = |e: Error| errno(&e);
    match req.kind {
        CMD_READ => {
            *data = take_buffer(shared, req.length as usize);
            v.read_at(data, req.offset).map_err(e)?;
            return Ok(Payload::Read);
        }
        CMD_WRITE => v.write_at(data, req.offset).map_err(e)?,
        CMD_FLUSH => v.flush().map_err(e)?,
        CMD_TRIM => v.discard(req.offset, req.length as u64).map_err(e)?,
        CMD_WRITE_ZEROES => {
            if req.flags & CMD_FLAG_NO_HOLE != 0 {
                if req.flags & CMD_FLAG_FAST_ZERO != 0 {
                    return Err(ENOTSUP);
                }
                let zeros = vec![0u8; (req.length as usize).min(1 << 20)];
                let mut off = 0u64;
                while off < req.length as u64 {
                    let n = (req.length as u64 - off).min(zeros.len() as u64) as usize;
                    v.write_at(&zeros[..n], req.offset + off).map_err(e)?;
                    off += n as u64;
                }
            } else {
                v.write_zeroes(req.offset, req.length as u64).map_err(e)?;
            }
        }
        CMD_BLOCK_STATUS => {
            let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
                1
            } else {
                1024
            };
            let extents = v
                .allocation(req.offset, req.length as u64, max)
                .map_err(e)?;
            let descriptors = extents
                .into_iter()
                .map(|(len, mapped)| (len as u32, if mapped { 0 } else { STATE_HOLE | STATE_ZERO }))
                .collect();
            return Ok(Payload::Status(descriptors));
        }
        _ => return Err(EINVAL),
    }
    if fua && req.kind != CMD_FLUSH {
        v.flush().map_err(e)?;
    }
    Ok(Payload::None)
}

/// Header and body in one vectored write (one syscall for most replies).
fn send(shared: &Shared, header: &[u8], body: &[u8]) -> io::Result<()> {
    let mut w = shared.writer.lock();
    let (mut h, mut b) = (header, body);
    while !h.is_empty() || !b.is_empty() {
        let n = w.write_vectored(&[IoSlice::new(h), IoSlice::new(b)])?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_h = n.min(h.len());
        h = &h[from_h..];
        b = &b[n - from_h..];
    }
    Ok(())
}

fn send_read(shared: &Shared, req: &Request, data: &[u8]) -> io::Result<()> {
    if !shared.structured {
        return send(shared, &simple_reply(req.cookie, 0), data);
    }
    let mut h = structured_header(
        req.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        data.len() as u32 + 8,
    )
    .to_vec();
    h.extend_from_slice(&req.offset.to_be_bytes());
    send(shared, &h, data)
}

fn send_status(shared: &Shared, req: &Request, descriptors: &[(u32, u32)]) -> io::Result<()> {
    let mut body = ALLOCATION_CONTEXT_ID.to_be_bytes().to_vec();
    for (len, flags) in descriptors {
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&flags.to_be_bytes());
    }
    let h = structured_header(
        req.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        body.len() as u32,
    );
    send(shared, &h, &body)
}

fn send_error(shared: &Shared, req: &Request, error: u32) -> io::Result<()> {
    if !shared.structured || !matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS) {
        return send(shared, &simple_reply(req.cookie, error), &[]);
    }
    let mut body = error.to_be_bytes().to_vec();
    body.extend_from_slice(&0u16.to_be_bytes());
    let h = structured_header(
        req.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        body.len() as u32,
    );
    send(shared, &h, &body)
}
