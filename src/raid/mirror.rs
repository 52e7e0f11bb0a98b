//! The metadata mirror: the metadata area (superblocks, space-map pages,
//! B-tree and catalog blocks) lives at the same offsets on up to three
//! members, whatever the data RAID level. Writes go to every present copy;
//! a read tries the copies in turn until the caller's validator accepts one,
//! then rewrites the copies that failed validation (repair on read).

use super::health::{Dir, Health};
use crate::device::DeviceRef;
use crate::error::{BlockFault, CopyFault, CopyWhy};
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

pub struct MetaMirror {
    /// (member index in the pool, device); `None` when missing.
    copies: Vec<(usize, Option<DeviceRef>)>,
    /// The array's member health: copies on failed members are skipped,
    /// and a copy that cannot be written fails its member when the array
    /// can do without it.
    health: Arc<Health>,
    repaired: AtomicU64,
    /// Every copy found damaged, and whether it was rewritten: never silent.
    events: Mutex<Vec<String>>,
    /// A copy on a device being replaced in service (member index): an
    /// error leaves the copy out instead of failing the member, whose
    /// index the new device holds.
    shadow: Option<usize>,
    shadow_dead: AtomicBool,
}

/// Outcome of validating one copy of a metadata block.
pub type Validator<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(), BlockFault>;

impl MetaMirror {
    pub fn new(copies: Vec<(usize, Option<DeviceRef>)>) -> MetaMirror {
        MetaMirror {
            copies,
            health: Arc::new(Health::default()),
            repaired: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
            shadow: None,
            shadow_dead: AtomicBool::new(false),
        }
    }

    /// The same copies, health and shadow, with no history (to reopen the
    /// metadata from its last commit).
    pub fn reopened(&self) -> MetaMirror {
        let mut m = MetaMirror::new(self.copies.clone());
        m.health = self.health.clone();
        m.shadow = self.shadow;
        m.shadow_dead
            .store(self.shadow_dead.load(Ordering::Acquire), Ordering::Release);
        m
    }

    /// The copy of member `m` is on a device being replaced (see `shadow`).
    pub fn set_shadow(&mut self, m: usize) {
        self.shadow = Some(m);
    }

    /// The member whose copy is on a device being replaced, if any.
    pub fn shadow(&self) -> Option<usize> {
        self.shadow
    }

    /// The copy on a device being replaced could not be written.
    pub fn shadow_lost(&self) -> bool {
        self.shadow.is_some() && self.shadow_dead.load(Ordering::Acquire)
    }

    /// Share the array's member health (see the field).
    pub fn attach(&mut self, health: Arc<Health>) {
        self.health = health;
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    pub fn copies(&self) -> &[(usize, Option<DeviceRef>)] {
        &self.copies
    }

    /// Copies in use: present, on members not failed.
    fn live(&self) -> impl Iterator<Item = (usize, &DeviceRef)> {
        let dead = self
            .shadow
            .filter(|_| self.shadow_dead.load(Ordering::Acquire));
        self.copies.iter().filter_map(move |(m, d)| match d {
            Some(d) if !self.health.is_failed(*m) && Some(*m) != dead => Some((*m, d)),
            _ => None,
        })
    }

    pub fn present(&self) -> usize {
        self.live().count()
    }

    /// Run `f` on every live copy; a copy that fails (a write twice, a
    /// flush once) fails its member if the array can do without it, else
    /// the error stands. Refused on a broken pool.
    fn each_copy(
        &self,
        what: &str,
        dir: Dir,
        at: Option<u64>,
        f: impl FnMut(&DeviceRef) -> io::Result<()>,
    ) -> io::Result<()> {
        self.each_copy_where(what, dir, at, |_| true, f)
    }

    /// [`MetaMirror::each_copy`] on the live copies of the members `keep`
    /// accepts.
    fn each_copy_where(
        &self,
        what: &str,
        dir: Dir,
        at: Option<u64>,
        keep: impl Fn(usize) -> bool,
        mut f: impl FnMut(&DeviceRef) -> io::Result<()>,
    ) -> io::Result<()> {
        if let Some(e) = self.health.broken_error() {
            return Err(e);
        }
        let mut done = 0;
        let mut first = None;
        for (m, dev) in self.live().filter(|(m, _)| keep(*m)) {
            match self.health.attempt(m, dir, || f(dev)) {
                Ok(()) => done += 1,
                Err(e) if Some(m) == self.shadow => {
                    self.shadow_dead.store(true, Ordering::Release);
                    // The superblock stops naming it before the next flush
                    // completes: a restart must not put it back.
                    self.health.note_unrecorded();
                    self.health.event(format!(
                        "member {m} ({}), being replaced, failed a metadata {what} ({e}); its copy is left out",
                        dev.name()
                    ));
                }
                Err(e) if e.kind() != io::ErrorKind::InvalidInput && self.health.may_fail(m) => {
                    self.health
                        .fail(m, &dev.name(), &format!("metadata {what} error: {e}"));
                }
                Err(e) => {
                    // As in the data path: a redundant pool that cannot
                    // lose this member stops taking writes, and so does any
                    // pool whose flush failed (what it dropped is unknown).
                    if e.kind() != io::ErrorKind::InvalidInput
                        && (dir == Dir::Flush || self.health.redundant())
                    {
                        self.health.set_broken(format!(
                            "member {m} ({}) failed a metadata {what} ({e}) and no redundancy is left; the pool takes no more writes or commits: fix or replace the device, then `vpool pool clear` (it reloads the pool from its last commit)",
                            dev.name()
                        ));
                    }
                    // The other copies are still written (and flushed).
                    first.get_or_insert(dir.failed(m, dev, at, e));
                }
            }
        }
        if let Some(e) = first {
            return Err(e);
        }
        if done == 0 {
            return Err(io::Error::other("no copy of the metadata area is present"));
        }
        Ok(())
    }

    /// Copies rewritten because they failed validation.
    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    /// Damaged copies met so far (and what was done about them).
    pub fn events(&self) -> Vec<String> {
        self.events.lock().clone()
    }

    /// Record a damaged copy met elsewhere (metadata extents), and
    /// whether it was rewritten.
    pub fn note_event(&self, e: String, rewritten: bool) {
        if rewritten {
            self.repaired.fetch_add(1, Ordering::Relaxed);
        }
        self.events.lock().push(e);
    }

    /// Rewrite one copy (the checker's repairs).
    pub fn write_copy(&self, idx: usize, offset: u64, buf: &[u8]) -> io::Result<()> {
        match &self.copies[idx].1 {
            Some(dev) => dev.write_at(buf, offset),
            None => Err(io::Error::other("copy missing")),
        }
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        if !crate::device::writes_slow() {
            return self.each_copy("write", Dir::Write, Some(offset), |dev| {
                crate::device::write_timed(dev, buf, offset)
            });
        }
        if let Some(e) = self.health.broken_error() {
            return Err(e);
        }
        // Slow members: the copies are written at once, and each result
        // accounted as that copy's first attempt (a retry writes again).
        let devs: Vec<DeviceRef> = self.live().map(|(_, d)| d.clone()).collect();
        let mut first: Vec<Option<io::Result<()>>> = crate::device::write_all(&devs, buf, offset)
            .into_iter()
            .map(Some)
            .collect();
        self.each_copy("write", Dir::Write, Some(offset), |dev| {
            let i = devs.iter().position(|d| Arc::ptr_eq(d, dev));
            match i.and_then(|i| first[i].take()) {
                Some(r) => r,
                None => crate::device::write_timed(dev, buf, offset),
            }
        })
    }

    pub fn flush(&self) -> io::Result<()> {
        // The copies flush in parallel; each result is then accounted as
        // if it had just happened (a flush is never retried).
        let devs: Vec<DeviceRef> = self.live().map(|(_, d)| d.clone()).collect();
        let mut results = crate::device::flush_all(&devs);
        self.each_copy("flush", Dir::Flush, None, |dev| {
            match devs.iter().position(|d| std::sync::Arc::ptr_eq(d, dev)) {
                Some(i) => results[i].take().unwrap_or_else(|| dev.flush()),
                None => dev.flush(),
            }
        })
    }

    /// Write `buf` at `offset` on every copy and make it durable there
    /// (`BlockDevice::write_durable_at`, the copies at once as `flush`):
    /// a write and a flush of those bytes alone. A failure is a failed
    /// flush (never retried).
    pub fn write_durable(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.write_durable_where(offset, buf, |_| true)
    }

    /// [`MetaMirror::write_durable`] on the copies of members `on` alone
    /// (bytes whose other copies would never be needed), or on every copy
    /// when none of those is live.
    pub fn write_durable_on(&self, offset: u64, buf: &[u8], on: &[usize]) -> io::Result<()> {
        if self.live().any(|(m, _)| on.contains(&m)) {
            match self.write_durable_where(offset, buf, |m| on.contains(&m)) {
                Ok(()) => return Ok(()),
                // Every copy named failed under the write (its member is
                // out of service now, the pool degraded): the others take
                // it, as when none was there to begin with.
                Err(_) if !self.live().any(|(m, _)| on.contains(&m)) => {}
                Err(e) => return Err(e),
            }
        }
        self.write_durable(offset, buf)
    }

    fn write_durable_where(
        &self,
        offset: u64,
        buf: &[u8],
        keep: impl Fn(usize) -> bool,
    ) -> io::Result<()> {
        let devs: Vec<DeviceRef> = (self.live())
            .filter(|(m, _)| keep(*m))
            .map(|(_, d)| d.clone())
            .collect();
        let mut results = crate::device::write_durable_all(&devs, buf, offset);
        self.each_copy_where(
            "durable write",
            Dir::Flush,
            Some(offset),
            keep,
            |dev| match devs.iter().position(|d| std::sync::Arc::ptr_eq(d, dev)) {
                Some(i) => results[i]
                    .take()
                    .unwrap_or_else(|| dev.write_durable_at(buf, offset)),
                None => dev.write_durable_at(buf, offset),
            },
        )
    }

    /// Read `buf.len()` bytes at `offset` from the first copy the validator
    /// accepts; repair copies that were rejected. Errors say why each copy
    /// failed.
    pub fn read_valid(
        &self,
        what: &str,
        offset: u64,
        buf: &mut [u8],
        valid: Validator,
    ) -> Result<(), Vec<CopyFault>> {
        let mut failures = Vec::new();
        let mut bad = Vec::new();
        for (member, dev) in self.live() {
            let copy = format!("member {member} ({})", dev.name());
            match self
                .health
                .attempt(member, Dir::Read, || dev.read_at(buf, offset))
            {
                Ok(()) => match valid(buf) {
                    Ok(()) => {
                        let mut events = self.events.lock();
                        for (d, why) in bad {
                            let d: &DeviceRef = d;
                            let outcome = match d.write_at(buf, offset) {
                                Ok(()) => {
                                    self.repaired.fetch_add(1, Ordering::Relaxed);
                                    "rewritten from a good copy".to_string()
                                }
                                Err(e) => format!("not rewritten: {e}"),
                            };
                            events.push(format!("{what}: copy on {why}; {outcome}"));
                        }
                        return Ok(());
                    }
                    Err(why) => {
                        let f = CopyFault {
                            copy,
                            why: CopyWhy::Invalid(why),
                        };
                        bad.push((dev, f.to_string()));
                        failures.push(f);
                    }
                },
                Err(e) => failures.push(CopyFault {
                    copy,
                    why: CopyWhy::Io(e.to_string()),
                }),
            }
        }
        Err(failures)
    }

    /// Read one copy as-is (for inspection tools).
    pub fn read_copy(&self, idx: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.copies[idx].1 {
            Some(dev) => dev.read_at(buf, offset),
            None => Err(io::Error::other("copy missing")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{BlockDevice, MemDevice, WritebackDevice};
    use crate::raid::RaidLevel;

    /// Found by `fault_model::torture` (raid5 x4, whose fourth member has
    /// no metadata copy): a partial parity's durable write named the
    /// written unit's member and the parity member, the one of them with a
    /// copy failed its flush, and the client's write failed with "no copy
    /// of the metadata area is present" although the pool was redundant.
    #[test]
    fn a_durable_write_whose_named_copies_all_fail_goes_to_the_others() {
        let media: Vec<Arc<MemDevice>> = (0..3)
            .map(|i| Arc::new(MemDevice::new(&format!("m{i}"), 1 << 20)))
            .collect();
        let (mut copies, mut plans) = (Vec::new(), Vec::new());
        for (i, m) in media.iter().enumerate() {
            let (d, p) = WritebackDevice::wrap(m.clone() as DeviceRef);
            copies.push((i, Some(d as DeviceRef)));
            plans.push(p);
        }
        let mirror = MetaMirror::new(copies);
        mirror.health().set_shape(RaidLevel::Raid5, 4, 0);
        plans[1].fail_flushes(1);
        let buf = vec![7u8; 4096];
        mirror
            .write_durable_on(8192, &buf, &[1, 3])
            .expect("the other copies take the write");
        assert!(
            mirror.health().is_failed(1),
            "the member whose flush failed"
        );
        for m in [0, 2] {
            let mut got = vec![0u8; 4096];
            media[m].read_at(&mut got, 8192).unwrap();
            assert!(got == buf, "durable on member {m}'s medium");
        }
    }
}
