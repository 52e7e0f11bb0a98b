//! A member with a volatile write cache whose faults are as harsh as real
//! devices', for fault-injection tests. Writes stay in the cache until a
//! flush writes them back to the wrapped device (the medium). Faults:
//!
//! - **flush failure**: the flush returns EIO (or ENOSPC, as a full thin
//!   LUN or a full file system under a loop device does at writeback) and
//!   every write cached since the last good flush is **dropped**; the next
//!   flush returns 0, as Linux does after a writeback error;
//! - **lost write**: success returned, nothing cached or written;
//! - **misdirected write**: the data lands `delta` bytes away;
//! - **torn write**: only the first sectors (512 bytes each) of a write land.
//!
//! A durable write (`write_durable_at`, `RWF_DSYNC`) reaches the medium
//! with its own lie, if one is armed, and only its range: the rest of the
//! cache stays volatile; an armed flush failure strikes it as a flush.
//!
//! Reads see the cache over the medium (the page cache). Each fault is
//! armed for a number of I/Os and counted when it strikes.

use super::{check_range, BlockDevice, DeviceRef};
use parking_lot::Mutex;
use std::io;
use std::sync::Arc;

#[derive(Default)]
struct Faults {
    /// Flushes to let through before `fail_flushes` start failing.
    flush_skip: u64,
    /// Flushes to fail, and the error they fail with.
    fail_flushes: u64,
    flush_errno: i32,
    lose: u64,
    misdirect: u64,
    delta: i64,
    tear: u64,
    /// Faults that struck so far.
    struck: u64,
    /// Flushes seen since the last `reset_counts`.
    flushes: u64,
    /// Durable writes (`write_durable_at`) seen since then.
    durable_writes: u64,
}

/// Steers a [`WritebackDevice`]. Cheap to clone; changes apply at once.
#[derive(Clone, Default)]
pub struct WritebackPlan(Arc<Mutex<Faults>>);

impl WritebackPlan {
    /// The next `n` flushes fail with EIO, dropping the cached writes.
    pub fn fail_flushes(&self, n: u64) {
        let mut f = self.0.lock();
        f.fail_flushes = n;
        f.flush_errno = libc::EIO;
    }

    /// Let `skip` flushes through, then fail one with EIO: aims a failure
    /// at one flush of a sequence.
    pub fn fail_flush_after(&self, skip: u64) {
        let mut f = self.0.lock();
        f.flush_skip = skip;
        f.fail_flushes = 1;
        f.flush_errno = libc::EIO;
    }

    /// The next `n` flushes fail with ENOSPC (out of space at writeback),
    /// dropping the cached writes.
    pub fn enospc_at_writeback(&self, n: u64) {
        let mut f = self.0.lock();
        f.fail_flushes = n;
        f.flush_errno = libc::ENOSPC;
    }

    /// The next `n` writes report success and are thrown away.
    pub fn lose_writes(&self, n: u64) {
        self.0.lock().lose = n;
    }

    /// The next `n` writes land `delta` bytes away (when that is inside
    /// the device; else they are lost).
    pub fn misdirect_writes(&self, n: u64, delta: i64) {
        let mut f = self.0.lock();
        f.misdirect = n;
        f.delta = delta;
    }

    /// The next `n` writes longer than a sector land only their first
    /// half of sectors (at least one).
    pub fn tear_writes(&self, n: u64) {
        self.0.lock().tear = n;
    }

    /// Back to a healthy device (what is cached stays cached).
    pub fn heal(&self) {
        let mut f = self.0.lock();
        *f = Faults {
            struck: f.struck,
            flushes: f.flushes,
            durable_writes: f.durable_writes,
            ..Faults::default()
        };
    }

    /// Flushes seen (failed or not) since the last `reset_counts`.
    pub fn flushes_seen(&self) -> u64 {
        self.0.lock().flushes
    }

    /// Writes made durable on their own (`write_durable_at`) so far.
    pub fn durable_writes_seen(&self) -> u64 {
        self.0.lock().durable_writes
    }

    pub fn reset_counts(&self) {
        let mut f = self.0.lock();
        f.flushes = 0;
        f.durable_writes = 0;
    }

    /// Faults that struck so far.
    pub fn struck(&self) -> u64 {
        self.0.lock().struck
    }
}

pub struct WritebackDevice {
    medium: DeviceRef,
    /// Writes not yet written back, oldest first.
    cache: Mutex<Vec<(u64, Vec<u8>)>>,
    plan: WritebackPlan,
}

impl WritebackDevice {
    /// Put a write cache in front of `medium`; the plan steers the faults.
    pub fn wrap(medium: DeviceRef) -> (Arc<WritebackDevice>, WritebackPlan) {
        let plan = WritebackPlan::default();
        let dev = Arc::new(WritebackDevice {
            medium,
            cache: Mutex::new(Vec::new()),
            plan: plan.clone(),
        });
        (dev, plan)
    }

    /// Writes cached and not yet written back.
    pub fn cached(&self) -> usize {
        self.cache.lock().len()
    }

    /// Power cut: the cache is lost.
    pub fn drop_cache(&self) {
        self.cache.lock().clear();
    }

    /// The flush failure armed, if it strikes now: the error, and the
    /// cache gone (Linux marks the pages clean; their data is lost).
    fn flush_fault(&self, cache: &mut Vec<(u64, Vec<u8>)>) -> io::Result<()> {
        let mut f = self.plan.0.lock();
        if f.fail_flushes > 0 && f.flush_skip > 0 {
            f.flush_skip -= 1;
        } else if f.fail_flushes > 0 {
            f.fail_flushes -= 1;
            f.struck += 1;
            cache.clear();
            return Err(io::Error::from_raw_os_error(f.flush_errno));
        }
        Ok(())
    }

    /// Where a write of `buf` at `offset` really lands, after the lie
    /// armed (if any): nowhere (lost), elsewhere (misdirected), or only
    /// its first sectors (torn).
    fn lie<'b>(&self, buf: &'b [u8], offset: u64) -> Option<(u64, &'b [u8])> {
        let mut f = self.plan.0.lock();
        let mut at = offset;
        let mut data = buf;
        if f.lose > 0 {
            f.lose -= 1;
            f.struck += 1;
            return None;
        }
        if f.misdirect > 0 {
            f.misdirect -= 1;
            f.struck += 1;
            match offset.checked_add_signed(f.delta) {
                Some(o)
                    if o.checked_add(buf.len() as u64)
                        .is_some_and(|e| e <= self.size()) =>
                {
                    at = o;
                }
                _ => return None,
            }
        }
        if f.tear > 0 && buf.len() > 512 {
            f.tear -= 1;
            f.struck += 1;
            let sectors = (buf.len() / 512 / 2).max(1);
            data = &buf[..sectors * 512];
        }
        Some((at, data))
    }
}

impl BlockDevice for WritebackDevice {
    fn size(&self) -> u64 {
        self.medium.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let cache = self.cache.lock();
        self.medium.read_at(buf, offset)?;
        let end = offset + buf.len() as u64;
        for (woff, data) in cache.iter() {
            let wend = woff + data.len() as u64;
            if *woff >= end || wend <= offset {
                continue;
            }
            let (s, e) = ((*woff).max(offset), wend.min(end));
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&data[(s - woff) as usize..(e - woff) as usize]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), offset, buf.len())?;
        if let Some((at, data)) = self.lie(buf, offset) {
            self.cache.lock().push((at, data.to_vec()));
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        let mut cache = self.cache.lock();
        self.plan.0.lock().flushes += 1;
        self.flush_fault(&mut cache)?;
        for (off, data) in cache.drain(..) {
            self.medium.write_at(&data, off)?;
        }
        self.medium.flush()
    }

    /// As the kernel's `RWF_DSYNC`: the write (lies included) goes to the
    /// medium with older cached bytes in its range dropped (the page cache
    /// held the newest), the rest of the cache stays volatile. A flush
    /// failure armed strikes it as it would a flush: the cache is lost.
    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size(), offset, buf.len())?;
        let mut cache = self.cache.lock();
        self.plan.0.lock().durable_writes += 1;
        self.flush_fault(&mut cache)?;
        super::drop_overlaps(&mut cache, offset, buf.len());
        if let Some((at, data)) = self.lie(buf, offset) {
            self.medium.write_at(data, at)?;
        }
        self.medium.flush()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let mut cache = self.cache.lock();
        for (off, data) in cache.drain(..) {
            self.medium.write_at(&data, off)?;
        }
        self.medium.discard(offset, len)
    }

    fn name(&self) -> String {
        self.medium.name()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;

    #[test]
    fn a_durable_write_reaches_the_medium_alone() {
        let mem = Arc::new(MemDevice::new("m", 1 << 16));
        let (d, p) = WritebackDevice::wrap(mem.clone());
        d.write_at(&[1u8; 8192], 0).unwrap();
        d.write_durable_at(&[2u8; 4096], 4096).unwrap();
        let m = mem.snapshot();
        assert_eq!(
            (m[0], m[4096], m[8191]),
            (0, 2, 2),
            "only its range is durable"
        );
        assert_eq!((p.flushes_seen(), p.durable_writes_seen()), (0, 1));
        // The older cached write must not go back over it.
        d.flush().unwrap();
        let m = mem.snapshot();
        assert_eq!((m[0], m[4095], m[4096], m[8191]), (1, 1, 2, 2));
        // A flush failure armed strikes it, and drops the cache.
        d.write_at(&[3u8; 4096], 0).unwrap();
        p.fail_flushes(1);
        let e = d.write_durable_at(&[4u8; 4096], 4096).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO));
        d.flush().unwrap();
        let m = mem.snapshot();
        assert_eq!((m[0], m[4096]), (1, 2));
        // And a lie armed too: lost, reported done.
        p.lose_writes(1);
        d.write_durable_at(&[5u8; 4096], 4096).unwrap();
        assert_eq!(mem.snapshot()[4096], 2);
    }

    #[test]
    fn each_fault_does_what_it_says() {
        let mem = Arc::new(MemDevice::new("m", 1 << 16));
        let (d, p) = WritebackDevice::wrap(mem.clone());
        let mut b = vec![0u8; 4096];
        // Cached writes are read back, and reach the medium at a flush.
        d.write_at(&[1u8; 4096], 0).unwrap();
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, vec![1u8; 4096]);
        assert_eq!(mem.snapshot()[0], 0);
        d.flush().unwrap();
        assert_eq!(mem.snapshot()[..4096], [1u8; 4096]);
        // A failed flush drops what was cached; the next flush returns 0.
        d.write_at(&[2u8; 4096], 0).unwrap();
        p.fail_flushes(1);
        assert_eq!(d.flush().unwrap_err().raw_os_error(), Some(libc::EIO));
        d.flush().unwrap();
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b, vec![1u8; 4096], "the failed flush's write is gone");
        // ENOSPC at writeback, alike.
        d.write_at(&[3u8; 4096], 0).unwrap();
        p.enospc_at_writeback(1);
        assert_eq!(d.flush().unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        d.read_at(&mut b, 0).unwrap();
        assert_eq!(b[0], 1);
        // A lost write.
        p.lose_writes(1);
        d.write_at(&[4u8; 4096], 0).unwrap();
        d.flush().unwrap();
        assert_eq!(mem.snapshot()[0], 1);
        // A misdirected write lands elsewhere.
        p.misdirect_writes(1, 8192);
        d.write_at(&[5u8; 4096], 0).unwrap();
        d.flush().unwrap();
        let m = mem.snapshot();
        assert_eq!((m[0], m[8192], m[8192 + 4095]), (1, 5, 5));
        // A torn write: its first half of sectors only.
        p.tear_writes(1);
        d.write_at(&[6u8; 4096], 0).unwrap();
        d.flush().unwrap();
        let m = mem.snapshot();
        assert_eq!((m[0], m[2047], m[2048]), (6, 6, 1));
        assert_eq!(p.struck(), 5);
    }
}
