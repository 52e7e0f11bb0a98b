//! One connection's input, as the reactor reads it: a small buffer, the
//! phase of the conversation, and the framing that turns bytes into whole
//! items for the workers (the client's flags, an option with its data, a
//! request with its payload), charging each request to the budgets first.

use super::conn::{Conn, Job, Work};
use super::handshake::{error_reply, Outcome};
use super::proto::*;
use super::stream::Stream;
use super::transmission::MIN_COST;
use super::workers::Workers;
use crate::thin::known::Received;
use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// A connection's read buffer starts this small and doubles while reads
/// fill it, up to `MAX_BUF` (a whole option fits).
pub(super) const MIN_BUF: usize = 4 << 10;
const MAX_BUF: usize = 256 << 10;
/// A payload this large is read straight into its request's buffer (all
/// of it that did not come in with its header).
const DIRECT: usize = 64 << 10;

/// Most bytes read into `buf` after a large write: the next request's
/// header and a little more.
const AFTER_LARGE: usize = 4 << 10;
/// Bytes read from one connection before the others get a turn.
const PASS: usize = 4 << 20;

/// Where a connection's input stands.
pub(super) enum Phase {
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
    pub(super) fn reads(&self) -> bool {
        !matches!(
            self,
            Phase::Busy | Phase::TlsWait { .. } | Phase::Starved(_) | Phase::Closing
        )
    }

    /// Part way into something the client must finish: the handshake, or
    /// a request's payload.
    pub(super) fn mid_message(&self) -> bool {
        self.in_handshake() || matches!(self, Phase::Payload { .. } | Phase::Skip { .. })
    }

    pub(super) fn in_handshake(&self) -> bool {
        matches!(
            self,
            Phase::Flags | Phase::Option | Phase::SkipOption { .. }
        )
    }
}

pub(super) struct Entry {
    pub(super) conn: Arc<Conn>,
    pub(super) reader: Box<dyn Stream>,
    pub(super) buf: Vec<u8>,
    pub(super) start: usize,
    pub(super) end: usize,
    pub(super) phase: Phase,
    pub(super) last_input: Instant,
    /// Work framed since the last hand-over to the workers.
    pub(super) batch: Vec<Work>,
    /// The last request admitted was a large write: the next read into
    /// `buf` is short (`AFTER_LARGE`), so that the next large payload goes
    /// straight into its own buffer rather than through `buf` and a copy.
    pub(super) after_large: bool,
}

/// Why a connection stops reading.
pub(super) enum End {
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

impl Entry {
    pub(super) fn close(&mut self) {
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
    pub(super) fn take_outcome(&mut self) -> Result<(), End> {
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
    pub(super) fn pump(&mut self, workers: &Arc<Workers>) -> Result<bool, End> {
        if let Phase::Starved(req) = self.phase {
            self.phase = Phase::Header;
            self.admit(req);
        }
        let (mut read, mut drained) = (0, false);
        loop {
            // Everything framed from one read goes over at once: one lock
            // of the queue and of the ring, however many requests.
            let framed = self.frame();
            if !self.batch.is_empty() {
                workers.submit(&self.conn, &mut self.batch);
            }
            framed?;
            if !self.wants_input() {
                return Ok(true);
            }
            if read >= PASS {
                return Ok(false);
            }
            if drained {
                // The last read found the socket empty: wait for its next
                // edge rather than call `recv` only to hear EAGAIN.
                return Ok(true);
            }
            match self.read_some() {
                Ok((0, _)) => return Err(End::Closed),
                Ok((n, asked)) => {
                    read += n;
                    drained = n < asked;
                    self.last_input = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(End::Failed(e)),
            }
        }
    }

    /// Read from the socket: the rest of a large payload straight into its
    /// buffer, anything else into the read buffer (after a large write,
    /// only `AFTER_LARGE` bytes of it).
    #[cfg(test)]
    pub(super) fn read_more(&mut self) -> io::Result<usize> {
        self.read_some().map(|(n, _)| n)
    }

    /// `read_more`, and how many bytes it asked for: a read that got
    /// fewer found the socket empty. A stream socket's next bytes then
    /// bring a new edge (epoll's callback runs for each arrival), so the
    /// reactor waits for it, as nginx does; a second `recv` would only
    /// hear EAGAIN (with two clients, a third of the reactor's calls).
    fn read_some(&mut self) -> io::Result<(usize, usize)> {
        if self.start == self.end {
            if let Phase::Payload { job, filled } = &mut self.phase {
                if job.data.len() >= DIRECT {
                    let asked = job.data.len() - *filled;
                    let n = self.reader.read(&mut job.data[*filled..])?;
                    *filled += n;
                    job.crcs.advance(&job.data, *filled);
                    if n > 0 && *filled == job.data.len() {
                        self.finish_payload();
                    }
                    return Ok((n, asked));
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
        if self.end == self.buf.len() {
            // Cannot happen: every phase that reads consumes whole items
            // smaller than the buffer.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "input buffer full",
            ));
        }
        let to = match self.after_large {
            true => (self.end + AFTER_LARGE).min(self.buf.len()),
            false => self.buf.len(),
        };
        let asked = to - self.end;
        let n = self.reader.read(&mut self.buf[self.end..to])?;
        self.end += n;
        if self.end == self.buf.len() && self.buf.len() < MAX_BUF && self.start == 0 {
            let grown = (self.buf.len() * 2).min(MAX_BUF);
            self.buf.resize(grown, 0);
        }
        Ok((n, asked))
    }

    fn finish_payload(&mut self) {
        if let Phase::Payload { job, .. } = std::mem::replace(&mut self.phase, Phase::Header) {
            self.batch.push(Work::Request(job));
        }
    }

    /// Whether to read more now. Not while the handshake's answers wait
    /// for the client: option replies are charged to no budget, so a
    /// client that sends options and reads nothing must be left unread
    /// (the reactor comes back when the answers are out).
    fn wants_input(&self) -> bool {
        self.phase.reads() && !self.answers_pending()
    }

    /// The handshake's answers are not all out yet.
    fn answers_pending(&self) -> bool {
        self.phase.in_handshake() && self.conn.replies_waiting()
    }

    /// Turn buffered bytes into work, as far as they go.
    pub(super) fn frame(&mut self) -> Result<(), End> {
        loop {
            if self.answers_pending() {
                return Ok(());
            }
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
                    job.crcs.advance(&job.data, *filled);
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

    /// Whether to compute the CRC32s of write `req`'s blocks as they come
    /// (`thin::known`): for a volume on a pool with checksums, at a whole
    /// block (else the pool's blocks are not the payload's).
    fn wants_crcs(&self, req: &Request) -> bool {
        let block = crate::thin::store::csum::CSUM_BLOCK;
        req.offset.is_multiple_of(block)
            && u64::from(req.length) >= block
            && self
                .conn
                .serving
                .get()
                .is_some_and(|n| n.volume.has_checksums())
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
        // An oversized payload is dropped through the read buffer in
        // whole reads (`Skip`), not 4 KiB at a time.
        self.after_large = !oversized && req.kind == CMD_WRITE && req.length as usize >= DIRECT;
        let mut job = Job {
            req,
            data: Vec::new(),
            crcs: Received::default(),
            error: None,
            cost,
            announced: false,
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
            if self.wants_crcs(&req) {
                job.crcs = Received::start(req.length as usize);
            }
            self.phase = Phase::Payload { job, filled: 0 };
            if req.length == 0 {
                self.finish_payload();
            }
        } else {
            self.batch.push(Work::Request(job));
        }
    }
}
