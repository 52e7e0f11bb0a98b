//! A member that misbehaves on purpose, for fault-injection tests: EIO on
//! reads or writes in chosen ranges or at a rate, errors that clear after a
//! few tries (transient), a device that vanishes, latency, and silent bit
//! flips on reads. Wraps any [`BlockDevice`]; the [`FaultPlan`] can be
//! changed while I/O runs.

use super::{BlockDevice, DeviceRef};
use parking_lot::Mutex;
use std::io;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
struct Plan {
    read_errors: Vec<Range<u64>>,
    /// Reads touching the range: let this many through, then fail them.
    read_errors_after: Vec<(Range<u64>, u64)>,
    write_errors: Vec<Range<u64>>,
    /// Fail this many I/Os, then work again.
    transient: u64,
    /// Fail one I/O in `n` (deterministic: every n-th).
    every: Option<u64>,
    counter: u64,
    /// Writes left before the device dies (then it is vanished).
    writes_left: Option<u64>,
    /// (writes to let through, writes to fail after them).
    fail_after: Option<(u64, u64)>,
    vanished: bool,
    latency: Option<Duration>,
    /// Bytes whose reads come back with their low bit flipped.
    flips: Vec<u64>,
    /// I/Os failed so far.
    injected: u64,
    /// Writes seen since the last `reset_counts`.
    writes: u64,
}

/// What a [`FaultDevice`] does wrong. Cheap to clone; changes apply at once.
#[derive(Clone, Default)]
pub struct FaultPlan(Arc<Mutex<Plan>>);

impl FaultPlan {
    /// EIO on reads touching `range`.
    pub fn fail_reads(&self, range: Range<u64>) {
        self.0.lock().read_errors.push(range);
    }

    /// Let `skip` reads touching `range` through, then EIO on the rest:
    /// aims a failure at one read of a sequence.
    pub fn fail_reads_after(&self, range: Range<u64>, skip: u64) {
        self.0.lock().read_errors_after.push((range, skip));
    }

    /// EIO on writes touching `range`.
    pub fn fail_writes(&self, range: Range<u64>) {
        self.0.lock().write_errors.push(range);
    }

    /// The next `n` I/Os fail, then the device works again.
    pub fn transient(&self, n: u64) {
        self.0.lock().transient = n;
    }

    /// Every `n`-th I/O fails (`None`: stop).
    pub fn fail_every(&self, n: Option<u64>) {
        self.0.lock().every = n.filter(|&n| n > 0);
    }

    /// The device vanishes after `n` more writes (0: now).
    pub fn die_after_writes(&self, n: u64) {
        let mut p = self.0.lock();
        if n == 0 {
            p.vanished = true;
        } else {
            p.writes_left = Some(n);
        }
    }

    /// Let `skip` writes through, then fail the next `n` with EIO (a retry
    /// counts as a write): aims a failure at one write of a sequence.
    pub fn fail_writes_after(&self, skip: u64, n: u64) {
        self.0.lock().fail_after = Some((skip, n));
    }

    /// Every I/O fails with ENODEV, as a pulled disk.
    pub fn vanish(&self) {
        self.0.lock().vanished = true;
    }

    pub fn set_latency(&self, d: Option<Duration>) {
        self.0.lock().latency = d;
    }

    /// Reads of byte `offset` return it with its low bit flipped (the
    /// stored byte is unchanged): silent corruption on the way.
    pub fn flip_on_read(&self, offset: u64) {
        self.0.lock().flips.push(offset);
    }

    /// Back to a healthy device.
    pub fn heal(&self) {
        *self.0.lock() = Plan::default();
    }

    /// Writes seen (failed or not) since the last `reset_counts`.
    pub fn writes_seen(&self) -> u64 {
        self.0.lock().writes
    }

    pub fn reset_counts(&self) {
        self.0.lock().writes = 0;
    }

    /// I/Os failed so far.
    pub fn injected(&self) -> u64 {
        self.0.lock().injected
    }

    /// Decide the fate of one I/O.
    fn check(&self, write: bool, offset: u64, len: usize) -> io::Result<Vec<u64>> {
        let mut p = self.0.lock();
        let end = offset + len as u64;
        let hits = |r: &Range<u64>| r.start < end && offset < r.end;
        p.counter += 1;
        if write {
            if let Some(left) = p.writes_left {
                if left == 0 {
                    p.vanished = true;
                } else {
                    p.writes_left = Some(left - 1);
                }
            }
        }
        let mut aimed = false;
        if !write {
            for (r, left) in p.read_errors_after.iter_mut() {
                if r.start < end && offset < r.end {
                    match *left {
                        0 => aimed = true,
                        _ => *left -= 1,
                    }
                }
            }
        }
        if write {
            p.writes += 1;
            if let Some((skip, n)) = p.fail_after {
                if skip > 0 {
                    p.fail_after = Some((skip - 1, n));
                } else if n > 0 {
                    aimed = true;
                    p.fail_after = (n > 1).then_some((0, n - 1));
                }
            }
        }
        let fail = if p.vanished {
            Some(io::Error::from_raw_os_error(libc::ENODEV))
        } else if p.transient > 0 {
            p.transient -= 1;
            Some(io::Error::from_raw_os_error(libc::EIO))
        } else if aimed
            || p.every.is_some_and(|n| p.counter.is_multiple_of(n))
            || (write && p.write_errors.iter().any(hits))
            || (!write && p.read_errors.iter().any(hits))
        {
            Some(io::Error::from_raw_os_error(libc::EIO))
        } else {
            None
        };
        if let Some(e) = fail {
            p.injected += 1;
            return Err(e);
        }
        let latency = p.latency;
        let flips = if write {
            Vec::new()
        } else {
            p.flips
                .iter()
                .copied()
                .filter(|&o| o >= offset && o < end)
                .collect()
        };
        drop(p);
        if let Some(d) = latency {
            std::thread::sleep(d);
        }
        Ok(flips)
    }
}

pub struct FaultDevice {
    inner: DeviceRef,
    plan: FaultPlan,
}

impl FaultDevice {
    /// Wrap `inner`; the returned plan steers the faults.
    pub fn wrap(inner: DeviceRef) -> (Arc<FaultDevice>, FaultPlan) {
        let plan = FaultPlan::default();
        let dev = Arc::new(FaultDevice {
            inner,
            plan: plan.clone(),
        });
        (dev, plan)
    }

    pub fn inner(&self) -> &DeviceRef {
        &self.inner
    }
}

impl BlockDevice for FaultDevice {
    fn size(&self) -> u64 {
        self.inner.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let flips = self.plan.check(false, offset, buf.len())?;
        self.inner.read_at(buf, offset)?;
        for o in flips {
            buf[(o - offset) as usize] ^= 1;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.plan.check(true, offset, buf.len())?;
        self.inner.write_at(buf, offset)
    }

    fn flush(&self) -> io::Result<()> {
        if self.plan.0.lock().vanished {
            return Err(io::Error::from_raw_os_error(libc::ENODEV));
        }
        self.inner.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.inner.discard(offset, len)
    }

    fn name(&self) -> String {
        self.inner.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    fn dev() -> (Arc<FaultDevice>, FaultPlan) {
        FaultDevice::wrap(Arc::new(MemDevice::new("m", 1 << 16)))
    }

    #[test]
    fn each_fault_does_what_it_says() {
        let (d, p) = dev();
        let mut b = [0u8; 512];
        d.write_at(&[7u8; 512], 4096).unwrap();
        // Ranges: only I/O touching them fails.
        p.fail_reads(4096..4097);
        assert!(d.read_at(&mut b, 4096).is_err());
        d.read_at(&mut b, 0).unwrap();
        p.fail_writes(0..512);
        assert!(d.write_at(&b, 256).is_err());
        d.write_at(&b, 8192).unwrap();
        p.heal();
        // Aimed at a read of a range: `skip` through, then failures.
        p.fail_reads_after(4096..4097, 2);
        d.read_at(&mut b, 4096).unwrap();
        d.read_at(&mut b, 0).unwrap();
        d.read_at(&mut b, 4096).unwrap();
        assert!(d.read_at(&mut b, 4096).is_err());
        assert!(d.read_at(&mut b, 4000).is_err());
        d.read_at(&mut b, 0).unwrap();
        p.heal();
        // Transient: n failures, then fine.
        p.transient(2);
        assert!(d.read_at(&mut b, 0).is_err());
        assert!(d.read_at(&mut b, 0).is_err());
        d.read_at(&mut b, 0).unwrap();
        // Every n-th I/O.
        p.fail_every(Some(3));
        let fails = (0..9).filter(|_| d.read_at(&mut b, 0).is_err()).count();
        assert_eq!(fails, 3);
        p.heal();
        // Bit flips on the way, the medium unchanged.
        p.flip_on_read(4100);
        d.read_at(&mut b, 4096).unwrap();
        assert_eq!((b[3], b[4], b[5]), (7, 6, 7));
        p.heal();
        d.read_at(&mut b, 4096).unwrap();
        assert_eq!(b[4], 7);
        // Dies after n writes; then everything fails with ENODEV.
        p.die_after_writes(2);
        d.write_at(&b, 0).unwrap();
        d.write_at(&b, 0).unwrap();
        let e = d.write_at(&b, 0).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV));
        assert!(d.read_at(&mut b, 0).is_err() && d.flush().is_err());
        assert_eq!(p.injected(), 2, "since the last heal");
        // Latency.
        p.heal();
        p.set_latency(Some(Duration::from_millis(20)));
        let t = std::time::Instant::now();
        d.read_at(&mut b, 0).unwrap();
        assert!(t.elapsed() >= Duration::from_millis(20));
    }
}
