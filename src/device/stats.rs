//! I/O statistics: operations, bytes, time and a latency histogram per
//! kind of request (read, write, flush, discard), and errors. Kept by each
//! file member (what `pool iostat -v` shows per member, as
//! /proc/diskstats does per disk) and by the pool facade per volume (what
//! clients asked for). Lock-free, and per CPU as the kernel's disk
//! statistics are: a request adds to its CPU's copy (a few relaxed atomic
//! adds on a cache line no other CPU writes), a reading sums the copies.
//! Shared counters cost random 4 KiB writes 5% (every worker thread's adds
//! bouncing one cache line between the cores); per-CPU copies do not.

use serde::{Deserialize, Serialize};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Kinds of request counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    Read = 0,
    Write = 1,
    Flush = 2,
    Discard = 3,
}

const KINDS: usize = 4;

/// Upper bounds of the latency histogram's buckets, in microseconds (a
/// last bucket holds the rest). Prometheus' `le` labels are these.
pub const LATENCY_BUCKETS_US: [u64; 13] = [
    50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
];
const BUCKETS: usize = LATENCY_BUCKETS_US.len() + 1;

#[derive(Default)]
struct KindStats {
    ops: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// One CPU's counters, on cache lines of their own.
#[derive(Default)]
#[repr(align(128))]
struct Shard {
    kinds: [KindStats; KINDS],
}

/// Live counters (see the module's documentation).
pub struct IoStats {
    shards: Box<[Shard]>,
}

impl Default for IoStats {
    fn default() -> IoStats {
        IoStats {
            shards: (0..cpus()).map(|_| Shard::default()).collect(),
        }
    }
}

/// CPUs this host may run threads on (copies per counter), at most 256.
fn cpus() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *N.get_or_init(|| (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }).clamp(1, 256) as usize)
}

/// The CPU this thread runs on now (any copy would be correct: this one
/// is just the one no other CPU writes).
fn this_cpu() -> usize {
    // SAFETY: sched_getcpu has no preconditions; -1 (unknown) maps to 0.
    (unsafe { libc::sched_getcpu() }).max(0) as usize
}

/// One kind's counters at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KindCounters {
    pub ops: u64,
    pub bytes: u64,
    /// Time spent in requests of this kind, summed (nanoseconds).
    pub nanos: u64,
    pub errors: u64,
    /// Requests per latency bucket ([`LATENCY_BUCKETS_US`], then the rest).
    pub buckets: [u64; BUCKETS],
}

/// All counters of one device or volume at a moment, monotonic since it
/// was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounters {
    pub read: KindCounters,
    pub write: KindCounters,
    pub flush: KindCounters,
    pub discard: KindCounters,
}

impl IoStats {
    /// Count one request of `kind` over `bytes` that started at `started`.
    pub fn record(&self, kind: IoKind, bytes: u64, started: Instant, ok: bool) {
        let shard = &self.shards[this_cpu() % self.shards.len()];
        let k = &shard.kinds[kind as usize];
        let nanos = started.elapsed().as_nanos().min(u64::MAX as u128) as u64;
        k.ops.fetch_add(1, Ordering::Relaxed);
        k.nanos.fetch_add(nanos, Ordering::Relaxed);
        if ok {
            k.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            k.errors.fetch_add(1, Ordering::Relaxed);
        }
        let us = nanos / 1_000;
        let b = LATENCY_BUCKETS_US.partition_point(|&le| le < us);
        k.buckets[b].fetch_add(1, Ordering::Relaxed);
    }

    /// Run `f` as one request of `kind` over `bytes`, and count it.
    pub fn timed<T>(
        &self,
        kind: IoKind,
        bytes: u64,
        f: impl FnOnce() -> io::Result<T>,
    ) -> io::Result<T> {
        let started = Instant::now();
        let r = f();
        self.record(kind, bytes, started, r.is_ok());
        r
    }

    pub fn snapshot(&self) -> IoCounters {
        let get = |k: &KindStats| KindCounters {
            ops: k.ops.load(Ordering::Relaxed),
            bytes: k.bytes.load(Ordering::Relaxed),
            nanos: k.nanos.load(Ordering::Relaxed),
            errors: k.errors.load(Ordering::Relaxed),
            buckets: std::array::from_fn(|i| k.buckets[i].load(Ordering::Relaxed)),
        };
        let mut total = IoCounters::default();
        for s in self.shards.iter() {
            total.add(&IoCounters {
                read: get(&s.kinds[0]),
                write: get(&s.kinds[1]),
                flush: get(&s.kinds[2]),
                discard: get(&s.kinds[3]),
            });
        }
        total
    }
}

impl KindCounters {
    /// What happened between `earlier` and this (counters only grow; a
    /// device replaced in between gives zeros rather than wrapping).
    pub fn since(&self, earlier: &KindCounters) -> KindCounters {
        KindCounters {
            ops: self.ops.saturating_sub(earlier.ops),
            bytes: self.bytes.saturating_sub(earlier.bytes),
            nanos: self.nanos.saturating_sub(earlier.nanos),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: std::array::from_fn(|i| self.buckets[i].saturating_sub(earlier.buckets[i])),
        }
    }

    /// Mean time per request, in nanoseconds (0 without requests).
    pub fn mean_nanos(&self) -> u64 {
        self.nanos.checked_div(self.ops).unwrap_or(0)
    }

    fn add(&mut self, o: &KindCounters) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.nanos += o.nanos;
        self.errors += o.errors;
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
    }
}

impl IoCounters {
    pub fn since(&self, earlier: &IoCounters) -> IoCounters {
        IoCounters {
            read: self.read.since(&earlier.read),
            write: self.write.since(&earlier.write),
            flush: self.flush.since(&earlier.flush),
            discard: self.discard.since(&earlier.discard),
        }
    }

    /// Add another device's or volume's counters (a pool's total).
    pub fn add(&mut self, o: &IoCounters) {
        self.read.add(&o.read);
        self.write.add(&o.write);
        self.flush.add(&o.flush);
        self.discard.add(&o.discard);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn requests_are_counted_by_kind_bytes_errors_and_latency() {
        let s = IoStats::default();
        s.timed(IoKind::Write, 4096, || Ok(())).unwrap();
        s.timed(IoKind::Write, 8192, || Ok(())).unwrap();
        let r: io::Result<()> = s.timed(IoKind::Read, 512, || Err(io::Error::other("EIO")));
        assert!(r.is_err());
        s.timed(IoKind::Flush, 0, || {
            std::thread::sleep(Duration::from_millis(3));
            Ok(())
        })
        .unwrap();
        let c = s.snapshot();
        assert_eq!((c.write.ops, c.write.bytes, c.write.errors), (2, 12288, 0));
        assert_eq!((c.read.ops, c.read.bytes, c.read.errors), (1, 0, 1));
        assert_eq!(c.flush.ops, 1);
        assert!(c.flush.nanos >= 3_000_000, "{}", c.flush.nanos);
        // It lands in the one bucket whose bounds hold the time measured:
        // past 2.5 ms (the bucket up to 5 ms, or a later one when this
        // busy machine held the thread up longer).
        let us = c.flush.nanos / 1_000;
        let b = c.flush.buckets.iter().position(|&n| n == 1);
        assert_eq!(
            c.flush.buckets.iter().sum::<u64>(),
            1,
            "{:?}",
            c.flush.buckets
        );
        let b = b.unwrap_or(BUCKETS);
        assert!(b >= 6, "{us} us in bucket {b}");
        assert!(LATENCY_BUCKETS_US[b - 1] < us, "{us} us in bucket {b}");
        assert!(
            b == BUCKETS - 1 || us <= LATENCY_BUCKETS_US[b],
            "{us} us in bucket {b}"
        );
        assert_eq!(c.write.buckets.iter().sum::<u64>(), 2);
        let later = {
            s.timed(IoKind::Write, 100, || Ok(())).unwrap();
            s.snapshot()
        };
        let d = later.since(&c);
        assert_eq!((d.write.ops, d.write.bytes, d.read.ops), (1, 100, 0));
        let mut total = c;
        total.add(&d);
        assert_eq!(total.write.bytes, later.write.bytes);
    }
}
