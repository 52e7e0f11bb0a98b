//! Device layer (may use error, units and state): one pool member.
//! Byte-addressed read/write/flush/discard on a block device, a regular
//! file or a Ceph RBD image (`rbd`, librbd loaded at run time), with I/O counters (`stats`), plus in-memory, crash-simulating and
//! fault-injecting devices used by tests (`fault`: errors on I/O;
//! `writeback`: a write cache whose flush failures drop data, lost,
//! misdirected and torn writes). Everything above talks to members only
//! through [`BlockDevice`].

mod crash;
mod direct;
mod fault;
mod file;
mod helpers;
mod mem;
pub mod rbd;
pub mod stats;
mod writeback;

pub use crash::{CrashDevice, CrashSim};
pub use direct::{direct_io, set_direct_io};
pub use fault::{FaultDevice, FaultPlan};
pub use file::{open_member_readonly, open_members, open_members_fenced, FileDevice};
pub use mem::MemDevice;
pub use writeback::{WritebackDevice, WritebackPlan};

use std::io;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One member of a pool. Implementations must be safe to call from many threads.
pub trait BlockDevice: Send + Sync {
    /// Usable size in bytes.
    fn size(&self) -> u64;
    /// Read exactly `buf.len()` bytes at `offset`.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Write all of `buf` at `offset`. Not durable until [`BlockDevice::flush`].
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// Make every completed write durable.
    fn flush(&self) -> io::Result<()>;
    /// Write `bufs` one after another from `offset` (a file: one
    /// `pwritev`). By default `write_at` of each in turn.
    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        write_in_turn(self, bufs, offset)
    }
    /// Fill `bufs` one after another from `offset` (a file: one `preadv`).
    /// By default `read_at` of each in turn.
    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        read_in_turn(self, bufs, offset)
    }
    /// Write all of `buf` at `offset` and make those bytes durable before
    /// returning, without the other writes since the last flush (a file's
    /// `pwritev2` with `RWF_DSYNC`: one write-back and device cache flush
    /// of this range). An error counts as a failed flush: never retried
    /// into success. By default a write and a whole flush.
    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)?;
        self.flush()
    }
    /// Tell the device a range is unused. Contents afterwards are unspecified.
    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Human-readable identity (a path) for messages.
    fn name(&self) -> String;
    /// Whether the device is reached over a network (an RBD image): a
    /// mirror reads from its local members first.
    fn remote(&self) -> bool {
        false
    }
    /// The device's I/O counters, if it keeps them (file and block
    /// device members do; the test devices do not).
    fn io_counters(&self) -> Option<stats::IoCounters> {
        None
    }
    /// Whether the device does its I/O with `O_DIRECT` (see `direct`).
    fn direct_io(&self) -> bool {
        false
    }
}

/// `d.write_at` of each of `bufs` in turn from `offset` (a vectored write
/// on a device that has none of its own).
pub fn write_in_turn<D: BlockDevice + ?Sized>(
    d: &D,
    bufs: &[&[u8]],
    offset: u64,
) -> io::Result<()> {
    let mut at = offset;
    for b in bufs {
        d.write_at(b, at)?;
        at += b.len() as u64;
    }
    Ok(())
}

/// `d.read_at` of each of `bufs` in turn from `offset`, as `write_in_turn`.
pub fn read_in_turn<D: BlockDevice + ?Sized>(
    d: &D,
    bufs: &mut [&mut [u8]],
    offset: u64,
) -> io::Result<()> {
    let mut at = offset;
    for b in bufs.iter_mut() {
        d.read_at(b, at)?;
        at += b.len() as u64;
    }
    Ok(())
}

/// Shared handle to a member device.
pub type DeviceRef = Arc<dyn BlockDevice>;

/// How long member flushes recently kept their thread waiting (ns, a
/// moving average over those `timed_flush` timed), and what a hand-off to
/// a helper costs.
static FLUSH_NS: AtomicU64 = AtomicU64::new(0);
const HANDOFF_NS: u64 = 20_000;

/// Run `op` (a flush, or a write made durable) on `d`, adding the time it
/// waited to `FLUSH_NS` as `sampled` does for writes: a durable write to
/// tmpfs is a copy on the CPU, and a thread preempted during it waited on
/// no device (the copies then went to helpers on a busy host).
fn timed_flush(op: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
    sampled(&FLUSHES, &FLUSH_NS, 0, op)
}

/// Do flushes take longer than a hand-off to a helper?
fn flushes_slow() -> bool {
    FLUSH_NS.load(Ordering::Relaxed) >= HANDOFF_NS
}

/// Flush every device at once, so that their caches drain in parallel
/// (one flush's latency instead of their sum): the first on the caller's
/// thread, the others on helper threads. While flushes take less than a
/// hand-off to a helper (files whose pages stay in memory, as on tmpfs),
/// one after another on the caller's thread instead. Results in order,
/// each `Some` (taken by the caller's accounting).
pub fn flush_all(devs: &[DeviceRef]) -> Vec<Option<io::Result<()>>> {
    flush_each(devs, |d| d.flush())
}

/// `BlockDevice::write_durable_at` of `buf` at `offset` on every device,
/// at once as `flush_all` flushes (timed as flushes: each is one).
pub fn write_durable_all(
    devs: &[DeviceRef],
    buf: &[u8],
    offset: u64,
) -> Vec<Option<io::Result<()>>> {
    if !flushes_slow() {
        return devs
            .iter()
            .map(|d| Some(timed_flush(|| d.write_durable_at(buf, offset))))
            .collect();
    }
    let data: Arc<[u8]> = buf.into();
    flush_each(devs, move |d| d.write_durable_at(&data, offset))
}

/// Run `op` on every device as `flush_all` describes.
fn flush_each(
    devs: &[DeviceRef],
    op: impl Fn(&DeviceRef) -> io::Result<()> + Clone + Send + 'static,
) -> Vec<Option<io::Result<()>>> {
    if !flushes_slow() {
        return devs.iter().map(|d| Some(timed_flush(|| op(d)))).collect();
    }
    let (tx, rx) = std::sync::mpsc::channel();
    for (i, d) in devs.iter().enumerate().skip(1) {
        let (d, tx, op) = (d.clone(), tx.clone(), op.clone());
        helpers::run(Box::new(move || {
            let _ = tx.send((i, timed_flush(|| op(&d))));
        }));
    }
    drop(tx);
    let mut out: Vec<Option<io::Result<()>>> = devs.iter().map(|_| None).collect();
    if let Some(d) = devs.first() {
        out[0] = Some(timed_flush(|| op(d)));
    }
    for (i, r) in rx {
        out[i] = Some(r);
    }
    // A helper's job that panicked sent nothing: its flush failed.
    for r in out.iter_mut().filter(|r| r.is_none()) {
        *r = Some(Err(io::Error::other("a member's flush panicked")));
    }
    out
}

/// One member I/O of `write_each`/`read_each`: the device, the byte on
/// it, and the bytes of the caller's buffer.
pub type PieceJob = (DeviceRef, u64, Range<usize>);

/// How long a member write recently kept its thread waiting off the CPU
/// (ns per 64 KiB, a moving average over the writes made through
/// `write_timed` and `write_all`).
static WRITE_NS: AtomicU64 = AtomicU64::new(0);

/// While writes are quick, one in this many is timed (the average is one
/// cache line every core would write otherwise).
const SAMPLE: u32 = 16;

thread_local! {
    static WRITES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    static FLUSHES: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Do member writes wait longer than a hand-off to a helper (direct I/O
/// to disks, remote members)? Then `write_all` writes copies at once.
pub fn writes_slow() -> bool {
    WRITE_NS.load(Ordering::Relaxed) >= HANDOFF_NS
}

/// Write `buf` at `offset` of `d`, adding the time it waited to
/// `WRITE_NS`: every write while they are slow, one in `SAMPLE` while
/// they are quick.
pub fn write_timed(d: &DeviceRef, buf: &[u8], offset: u64) -> io::Result<()> {
    sampled(&WRITES, &WRITE_NS, buf.len(), || d.write_at(buf, offset))
}

/// Write `bufs` one after another from `offset` of `d`, timed as
/// `write_timed`.
pub fn write_vectored_timed(d: &DeviceRef, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
    let len = bufs.iter().map(|b| b.len()).sum();
    sampled(&WRITES, &WRITE_NS, len, || {
        d.write_vectored_at(bufs, offset)
    })
}

/// Bytes of an I/O that count as one in the averages: a larger one's time
/// is divided by how many such pieces it holds, so that copying a large
/// request into memory (a tmpfs member: 1 MiB takes about 100 us there)
/// does not look like a device that keeps each request waiting.
const TIMED_UNIT: usize = 64 << 10;

/// Run `f` (a member I/O of `len` bytes), adding the time it waited per
/// `TIMED_UNIT` (see `waited_per_unit`) to the average `avg`: every call
/// while the average is above `HANDOFF_NS`, else one in `SAMPLE` of this
/// thread's `TIMED_UNIT`s (counted in `calls`; an I/O of several, a
/// vectored run over many stripe units, counts as that many, so the
/// average learns a slow device as fast whether its I/Os come one unit
/// at a time or merged).
fn sampled(
    calls: &'static std::thread::LocalKey<std::cell::Cell<u32>>,
    avg: &AtomicU64,
    len: usize,
    f: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    let units = len.div_ceil(TIMED_UNIT).clamp(1, SAMPLE as usize) as u32;
    let (before, after) = calls.with(|c| {
        let before = c.get();
        let after = before.wrapping_add(units);
        c.set(after);
        (before, after)
    });
    if before / SAMPLE == after / SAMPLE && avg.load(Ordering::Relaxed) < HANDOFF_NS {
        return f();
    }
    let (r, ns) = waited_per_unit(len, f);
    let old = avg.load(Ordering::Relaxed);
    avg.store((old * 7 + ns) / 8, Ordering::Relaxed);
    r
}

/// Run `f` (an I/O of `len` bytes) and say how long it kept this thread
/// off the CPU, per `TIMED_UNIT` it holds: the wait a helper thread could
/// overlap with other work. Time spent copying (a member whose pages stay
/// in memory: tmpfs, the page cache) is on the CPU and does not count: on
/// a machine whose cores are busy, handing a copy to a helper only adds
/// the hand-off (1 MiB writes on tmpfs: 1.10x without helpers, 3 of 3
/// interleaved pairs). Nor does time the thread was preempted: an I/O
/// during which it never gave up the CPU itself (no voluntary context
/// switch) waited on no device, however long another thread held its
/// core. Counted as waiting, one preemption on a busy host made tmpfs
/// members look slow for the next twenty samples, and their reads went
/// through helpers. Without the thread's usage, the whole time counts.
fn waited_per_unit(len: usize, f: impl FnOnce() -> io::Result<()>) -> (io::Result<()>, u64) {
    let (r, waited) = waited(f);
    (r, per_unit(waited, len))
}

/// Run `f` and say how long (ns) it kept this thread off the CPU waiting:
/// nothing if the thread never gave up the CPU itself (no voluntary
/// context switch: it copied, or was preempted), else the wall time less
/// the CPU time; the wall time if the thread's usage cannot be read.
pub(crate) fn waited<T>(f: impl FnOnce() -> T) -> (T, u128) {
    let (t, before) = (Instant::now(), thread_usage());
    let r = f();
    let wall = t.elapsed().as_nanos();
    let waited = match (before, thread_usage()) {
        (Some(a), Some(b)) if b.blocked == a.blocked => 0,
        (Some(a), Some(b)) => wall.saturating_sub(b.cpu_ns.saturating_sub(a.cpu_ns)),
        _ => wall,
    };
    (r, waited)
}

/// This thread's usage so far.
struct Usage {
    /// CPU time used (ns).
    cpu_ns: u128,
    /// Voluntary context switches: times it waited (a device, a lock).
    blocked: i64,
}

/// This thread's usage, if it can be read: the CPU time from its clock
/// (`getrusage`'s lags by up to a scheduler tick), the switches from
/// `getrusage`.
fn thread_usage() -> Option<Usage> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into `ru`, zeroed beforehand.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, ru.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: initialized (zeroed, then filled by getrusage).
    let ru = unsafe { ru.assume_init() };
    Some(Usage {
        cpu_ns: ts.tv_sec as u128 * 1_000_000_000 + ts.tv_nsec as u128,
        blocked: ru.ru_nvcsw,
    })
}

/// `ns` for an I/O of `len` bytes, per `TIMED_UNIT` it holds.
fn per_unit(ns: u128, len: usize) -> u64 {
    let units = len.div_ceil(TIMED_UNIT).max(1) as u128;
    (ns / units).min(u128::from(u32::MAX)) as u64
}

/// The jobs' indices grouped by device, in order of first appearance.
fn by_device(jobs: &[PieceJob]) -> Vec<(DeviceRef, Vec<usize>)> {
    let mut groups: Vec<(DeviceRef, Vec<usize>)> = Vec::new();
    for (k, (d, _, _)) in jobs.iter().enumerate() {
        match groups.iter_mut().find(|(g, _)| Arc::ptr_eq(g, d)) {
            Some((_, ks)) => ks.push(k),
            None => groups.push((d.clone(), vec![k])),
        }
    }
    groups
}

/// Write the same `buf` at `offset` of every device at once (a mirror's
/// copies, the metadata copies, when `writes_slow`): `write_each` with one
/// write per device.
pub fn write_all(devs: &[DeviceRef], buf: &[u8], offset: u64) -> Vec<io::Result<()>> {
    let jobs: Vec<PieceJob> = devs
        .iter()
        .map(|d| (d.clone(), offset, 0..buf.len()))
        .collect();
    write_each(&jobs, buf)
}

/// Write `buf[range]` at `offset` of each job's device, the devices at
/// once (when `writes_slow`), as `flush_all` flushes: the first device's
/// writes on the caller's thread, each other device's on a helper with a
/// copy of `buf`, a device's own writes in order. One result per job, in
/// order; callers account them as each write's first attempt.
pub fn write_each(jobs: &[PieceJob], buf: &[u8]) -> Vec<io::Result<()>> {
    let groups = by_device(jobs);
    let shared: Arc<[u8]> = buf.into();
    let (tx, rx) = std::sync::mpsc::channel();
    for (d, ks) in groups.iter().skip(1) {
        let work: Vec<(usize, u64, Range<usize>)> = ks
            .iter()
            .map(|&k| (k, jobs[k].1, jobs[k].2.clone()))
            .collect();
        let (d, tx, data) = (d.clone(), tx.clone(), shared.clone());
        helpers::run(Box::new(move || {
            for (k, offset, r) in work {
                let _ = tx.send((k, write_timed(&d, &data[r], offset)));
            }
        }));
    }
    drop(tx);
    let mut out: Vec<Option<io::Result<()>>> = jobs.iter().map(|_| None).collect();
    if let Some((d, ks)) = groups.first() {
        for &k in ks {
            out[k] = Some(write_timed(d, &buf[jobs[k].2.clone()], jobs[k].1));
        }
    }
    for (k, r) in rx {
        out[k] = Some(r);
    }
    // A helper's job that panicked sent nothing: its writes failed.
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("a member's write panicked"))))
        .collect()
}

/// How long a member read recently waited, as `WRITE_NS` for reads.
static READ_NS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static READS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Do member reads wait longer than a hand-off to a helper? Then
/// `read_each` reads a request's members at once.
pub fn reads_slow() -> bool {
    READ_NS.load(Ordering::Relaxed) >= HANDOFF_NS
}

/// Read `buf.len()` bytes at `offset` of `d`, timed as `write_timed`.
pub fn read_timed(d: &DeviceRef, buf: &mut [u8], offset: u64) -> io::Result<()> {
    sampled(&READS, &READ_NS, buf.len(), || d.read_at(buf, offset))
}

/// Fill `bufs` one after another from `offset` of `d`, timed as
/// `read_timed`.
pub fn read_vectored_timed(d: &DeviceRef, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
    let len = bufs.iter().map(|b| b.len()).sum();
    sampled(&READS, &READ_NS, len, || d.read_vectored_at(bufs, offset))
}

/// Read each job's `buf[range]` from `offset` of its device, the devices
/// at once (when `reads_slow`), as `write_each`: the first device's reads
/// into `buf` on the caller's thread, each other device's on a helper into
/// its own buffer, copied into `buf` when it is back. One result per job.
pub fn read_each(jobs: &[PieceJob], buf: &mut [u8]) -> Vec<io::Result<()>> {
    let groups = by_device(jobs);
    type Back = (usize, io::Result<()>, Vec<u8>);
    let (tx, rx) = std::sync::mpsc::channel::<Back>();
    for (d, ks) in groups.iter().skip(1) {
        let work: Vec<(usize, u64, usize)> = ks
            .iter()
            .map(|&k| (k, jobs[k].1, jobs[k].2.len()))
            .collect();
        let (d, tx) = (d.clone(), tx.clone());
        helpers::run(Box::new(move || {
            for (k, offset, len) in work {
                let mut b = vec![0u8; len];
                let r = read_timed(&d, &mut b, offset);
                let _ = tx.send((k, r, b));
            }
        }));
    }
    drop(tx);
    let mut out: Vec<Option<io::Result<()>>> = jobs.iter().map(|_| None).collect();
    if let Some((d, ks)) = groups.first() {
        for &k in ks {
            out[k] = Some(read_timed(d, &mut buf[jobs[k].2.clone()], jobs[k].1));
        }
    }
    for (k, r, b) in rx {
        if r.is_ok() {
            buf[jobs[k].2.clone()].copy_from_slice(&b);
        }
        out[k] = Some(r);
    }
    // A helper's job that panicked sent nothing: its reads failed.
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| Err(io::Error::other("a member's read panicked"))))
        .collect()
}

/// Drop the bytes of `[offset, offset + len)` from a test device's cached
/// writes (`(offset, bytes)`, oldest first): a durable write of that range
/// made them stale. Writes partly inside keep their parts outside.
pub(crate) fn drop_overlaps(cache: &mut Vec<(u64, Vec<u8>)>, offset: u64, len: usize) {
    let (a, b) = (offset, offset + len as u64);
    let mut kept = Vec::with_capacity(cache.len());
    for (woff, data) in cache.drain(..) {
        let wend = woff + data.len() as u64;
        if wend <= a || woff >= b {
            kept.push((woff, data));
            continue;
        }
        if woff < a {
            kept.push((woff, data[..(a - woff) as usize].to_vec()));
        }
        if wend > b {
            kept.push((b, data[(b - woff) as usize..].to_vec()));
        }
    }
    *cache = kept;
}

/// Check that `[offset, offset+len)` lies inside a device of `size` bytes.
pub(crate) fn check_range(size: u64, offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "I/O of {len} bytes at byte {offset} beyond the device's size ({})",
                crate::units::size_exact(size)
            ),
        )),
    }
}

#[cfg(test)]
mod timing_tests;
