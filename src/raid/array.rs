//! Data I/O over the members of an array: striping, mirroring, RAID5 parity
//! (full-stripe writes without reads, read-modify-write otherwise),
//! degraded operation with one member missing, members failed while
//! serving (see [`super::health`]) and rebuilds onto a replacement.

use super::geometry::{Geometry, RaidLevel};
use super::health::{Dir, Fault, Health};
use crate::device::DeviceRef;
use crate::sync::RwLock;
use crate::units::ChunkSize;
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

mod copies;
mod rcw;
mod state;
mod view;
pub use copies::Copy;
pub use rcw::Vouch;
pub use state::{members_before_shrink, ArrayState, LeavingMember, Transition, TransitionKind};
use view::View;

const STRIPE_LOCKS: usize = 512;
/// Reconstructions at least this large read the members in parallel.
const PARALLEL_READ_MIN: usize = 1 << 20;

pub struct Array {
    state: RwLock<ArrayState>,
    stripe_locks: Vec<Mutex<()>>,
    next_mirror: AtomicUsize,
    health: Arc<Health>,
    /// Devices of members failed while serving, by member index (for
    /// status, `pool clear` and `pool replace` by path).
    failed_devs: Mutex<Vec<(usize, DeviceRef)>>,
    /// A member being replaced while in service (md's `--replace`): during
    /// its rebuild, the old device still serves the rows not yet rebuilt,
    /// so the pool keeps its redundancy. Dropped at the first error on it.
    replacing: Mutex<Option<DeviceRef>>,
    replacing_failed: AtomicBool,
    /// Written since the last flush began (see [`Array::flush_if_written`]).
    unflushed: AtomicBool,
    /// Flushes started, and the newest one that completed (see
    /// [`Array::flushed_since`]).
    flush_started: AtomicU64,
    flush_done: AtomicU64,
}

/// The parts of an I/O at `offset` of `len` bytes below and at or past
/// `pos`: (array offset, buffer range) each.
type Part = Option<(u64, std::ops::Range<usize>)>;
fn split_at(offset: u64, len: usize, pos: u64) -> (Part, Part) {
    let end = offset + len as u64;
    let split = pos.clamp(offset, end);
    let at = (split - offset) as usize;
    (
        (split > offset).then_some((offset, 0..at)),
        (end > split).then_some((split, at..len)),
    )
}

/// Tell `health` which members the array lacks.
fn shape_of(health: &Health, st: &ArrayState) {
    let absent = st
        .members
        .iter()
        .enumerate()
        .filter(|(i, m)| m.is_none() && *i < 64)
        .fold(0u64, |acc, (i, _)| acc | (1 << i));
    health.set_shape(st.geo.level, st.members.len(), absent);
}

fn missing(what: &str) -> io::Error {
    io::Error::other(format!("{what}: member missing and no redundancy left"))
}

impl Array {
    pub fn new(geo: Geometry, members: Vec<Option<DeviceRef>>) -> Array {
        Array::with_state(ArrayState {
            geo,
            members,
            transition: None,
        })
    }

    pub fn with_state(state: ArrayState) -> Array {
        let health = Arc::new(Health::default());
        shape_of(&health, &state);
        Array {
            state: RwLock::new(state),
            stripe_locks: (0..STRIPE_LOCKS).map(|_| Mutex::new(())).collect(),
            next_mirror: AtomicUsize::new(0),
            health,
            failed_devs: Mutex::new(Vec::new()),
            replacing: Mutex::new(None),
            replacing_failed: AtomicBool::new(false),
            unflushed: AtomicBool::new(true),
            flush_started: AtomicU64::new(0),
            flush_done: AtomicU64::new(0),
        }
    }

    /// Keep `old` serving member `k`'s rows past the rebuild's position
    /// (set with the rebuild's transition; `None` when it ends).
    pub fn set_replacing(&self, old: Option<DeviceRef>) {
        *self.replacing.lock() = old;
        self.replacing_failed.store(false, Ordering::Release);
    }

    /// The device being replaced while in service, if any.
    pub fn replacing(&self) -> Option<DeviceRef> {
        self.replacing.lock().clone()
    }

    /// The device being replaced in service failed elsewhere (its metadata
    /// copy): it serves no more rows either.
    pub fn lose_replacing(&self) {
        self.replacing_failed.store(true, Ordering::Release);
    }

    /// A device being replaced in service still serves (none failed).
    pub fn replacing_serves(&self) -> bool {
        self.serving_old().is_some()
    }

    /// The device being replaced in service, while it still serves (it
    /// has not failed).
    fn serving_old(&self) -> Option<DeviceRef> {
        let old = self.replacing.lock().clone();
        old.filter(|_| !self.replacing_failed.load(Ordering::Acquire))
    }

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Take members failed while serving out of the member list (caller
    /// pauses I/O). Returns their indices.
    pub fn absorb_failures(&self) -> Vec<usize> {
        let mask = self.health.failed_mask();
        if mask == 0 {
            return Vec::new();
        }
        let mut st = self.state.write();
        let mut out = Vec::new();
        for (i, m) in st.members.iter_mut().enumerate() {
            if i < 64 && mask & (1 << i) != 0 {
                if let Some(dev) = m.take() {
                    self.failed_devs.lock().push((i, dev));
                    out.push(i);
                }
            }
        }
        shape_of(&self.health, &st);
        out
    }

    /// Remember the device of a member kept out of service at assembly
    /// (`pool clear` can rebuild onto it).
    pub fn keep_failed_device(&self, member: usize, dev: DeviceRef) {
        self.failed_devs.lock().push((member, dev));
    }

    /// The device a failed member had, if known.
    pub fn failed_device(&self, member: usize) -> Option<DeviceRef> {
        let devs = self.failed_devs.lock();
        devs.iter()
            .rev()
            .find(|d| d.0 == member)
            .map(|d| d.1.clone())
    }

    /// Put `dev` in as member `member` (a replacement or a cleared member)
    /// with `transition` (its rebuild). Caller pauses I/O.
    pub fn replace_member(&self, member: usize, dev: DeviceRef, transition: Option<Transition>) {
        let mut st = self.state.write();
        st.members[member] = Some(dev);
        st.transition = transition;
        self.failed_devs.lock().retain(|d| d.0 != member);
        self.health.unfail(member);
        shape_of(&self.health, &st);
    }

    /// Mark a member failed by hand (`pool fail`), as if its I/O failed.
    pub fn fail_member(&self, member: usize, why: &str) {
        let name = self.state.read().members[member]
            .as_ref()
            .map(|d| d.name())
            .unwrap_or_default();
        self.health.fail(member, &name, why);
    }

    /// A copy of the current state (cheap: members are shared handles).
    pub fn state(&self) -> ArrayState {
        self.state.read().clone()
    }

    /// Replace the state. Callers make sure no I/O is in flight.
    pub fn set_state(&self, state: ArrayState) {
        shape_of(&self.health, &state);
        *self.state.write() = state;
    }

    /// Move a running transition forward (or end it with `None`).
    pub fn set_transition(&self, t: Option<Transition>) {
        self.state.write().transition = t;
    }

    /// May the thin layer overwrite `len` bytes of a committed chunk of
    /// `chunk_size` in place? Not on raid5 unless the write is whole stripe
    /// rows: a torn partial-stripe write would corrupt the rest of the
    /// stripe if a member is then lost (the write hole).
    pub fn overwrite_in_place(&self, len: u64, chunk_size: ChunkSize) -> bool {
        let st = self.state.read();
        let cs = chunk_size.bytes();
        st.geo.level != RaidLevel::Raid5 || (len == cs && cs.is_multiple_of(st.geo.stripe_width()))
    }

    pub fn geometry(&self) -> Geometry {
        self.state.read().geo.clone()
    }

    /// Capacity of the layout the array is in or moving to.
    pub fn capacity(&self) -> u64 {
        self.state.read().geo.capacity()
    }

    /// Every member in the order of the labels' member table: during a
    /// shrink, the leaving member is still listed at its index.
    pub fn members(&self) -> Vec<Option<DeviceRef>> {
        let st = self.state.read();
        match &st.transition {
            Some(Transition {
                kind: TransitionKind::Shrink { removed, dev, .. },
                ..
            }) => members_before_shrink(&st.members, *removed, dev),
            _ => st.members.clone(),
        }
    }

    fn view<'a>(
        &'a self,
        geo: &'a Geometry,
        members: &'a [Option<DeviceRef>],
        no_read: Option<usize>,
    ) -> View<'a> {
        View {
            geo,
            members,
            no_read,
            absent: None,
            tolerant: true,
            health: &self.health,
            locks: &self.stripe_locks,
            next_mirror: &self.next_mirror,
            shadow: None,
            shadow_failed: &self.replacing_failed,
        }
    }

    fn check(&self, st: &ArrayState, offset: u64, len: usize) -> io::Result<()> {
        let cap = st.geo.capacity();
        if offset.checked_add(len as u64).is_none_or(|e| e > cap) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "array I/O of {len} bytes at byte {offset} beyond its capacity ({})",
                    crate::units::size_exact(cap)
                ),
            ));
        }
        Ok(())
    }

    /// Split an I/O by layout: `f(view, offset, buffer range)` for each part.
    fn dispatch(
        &self,
        offset: u64,
        len: usize,
        mut f: impl FnMut(&View, u64, std::ops::Range<usize>) -> io::Result<()>,
    ) -> io::Result<()> {
        let st = self.state.read();
        self.check(&st, offset, len)?;
        let view = |geo, members, no_read| self.view(geo, members, no_read);
        match &st.transition {
            None => f(&view(&st.geo, &st.members, None), offset, 0..len),
            Some(Transition {
                kind: TransitionKind::Resync { member },
                ..
            }) => f(&view(&st.geo, &st.members, Some(*member)), offset, 0..len),
            Some(Transition {
                kind: TransitionKind::Rebuild { member },
                pos,
            }) => {
                let (below, above) = split_at(offset, len, *pos);
                if let Some((o, r)) = below {
                    f(&view(&st.geo, &st.members, None), o, r)?;
                }
                if let Some((o, r)) = above {
                    let old = self.replacing.lock().clone();
                    if let Some(old) = old {
                        // The old device still serves these rows. Its
                        // errors are not failures of member `k` (that index
                        // is the new device): it is left out from then on.
                        let mut members = st.members.clone();
                        members[*member] = Some(old.clone());
                        let v = View {
                            shadow: Some(*member),
                            ..self.view(&st.geo, &members, None)
                        };
                        let r = f(&v, o, r);
                        if self.replacing_failed.load(Ordering::Acquire) {
                            let mut rep = self.replacing.lock();
                            if rep.take().is_some() {
                                self.health.event(format!(
                                    "member {member} ({}), being replaced, failed; its rows are now rebuilt from the other members",
                                    old.name()
                                ));
                            }
                        }
                        return r;
                    }
                    let v = View {
                        absent: Some(*member),
                        ..view(&st.geo, &st.members, None)
                    };
                    f(&v, o, r)?;
                }
                Ok(())
            }
            Some(Transition {
                kind: TransitionKind::Restripe { old },
                pos,
            }) => {
                let (below, above) = split_at(offset, len, *pos);
                if let Some((o, r)) = below {
                    f(&view(&st.geo, &st.members, None), o, r)?;
                }
                if let Some((o, r)) = above {
                    f(&view(old, &st.members[..old.members()], None), o, r)?;
                }
                Ok(())
            }
            Some(Transition {
                kind: TransitionKind::Shrink { old, removed, dev },
                pos,
            }) => {
                let (below, above) = split_at(offset, len, *pos);
                if let Some((o, r)) = below {
                    let old_members = members_before_shrink(&st.members, *removed, dev);
                    let old_view = View {
                        tolerant: false,
                        ..self.view(old, &old_members, None)
                    };
                    f(&old_view, o, r)?;
                }
                if let Some((o, r)) = above {
                    let new_view = View {
                        tolerant: false,
                        ..view(&st.geo, &st.members, None)
                    };
                    f(&new_view, o, r)?;
                }
                Ok(())
            }
        }
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.dispatch(offset, buf.len(), |v, off, r| v.read(off, &mut buf[r]))
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.unflushed.store(true, Ordering::Release);
        self.dispatch(offset, buf.len(), |v, off, r| v.write(off, &buf[r]))
    }

    /// [`Array::write`] of `buf` over bytes the caller read and verified
    /// against their checksums as `old`: RAID5 partial-stripe writes
    /// compute the new parity from `old` rather than from the data
    /// member, which a lost or misdirected write may have left stale
    /// (parity computed from those bytes would make them the unit's
    /// content once the member is lost). `old` is the array's logical
    /// bytes, so it serves every layout of a layout change alike.
    /// (`old` not as long as `buf`: as `write`.)
    pub fn write_over(&self, offset: u64, buf: &[u8], old: &[u8]) -> io::Result<()> {
        if old.len() != buf.len() {
            return self.write(offset, buf);
        }
        self.check_writable()?;
        self.unflushed.store(true, Ordering::Release);
        self.dispatch(offset, buf.len(), |v, off, r| {
            v.write_over(off, &buf[r.clone()], &old[r])
        })
    }

    /// [`Array::write`] of whole chunks just allocated (or rewritten
    /// whole), whose stripe rows' other units `vouch` judges: RAID5
    /// writes of part of a row (a pool grown by `pool add` has chunks
    /// narrower than its rows) compute the parity from those units, read
    /// and judged, never from the written unit's old bytes, which may be
    /// stale free space a member's lost write left and no checksum covers
    /// (`array::rcw`). Other levels, and whole rows: as `write`.
    pub fn write_vouched(&self, offset: u64, buf: &[u8], vouch: Vouch) -> io::Result<()> {
        self.check_writable()?;
        self.unflushed.store(true, Ordering::Release);
        self.dispatch(offset, buf.len(), |v, off, r| {
            v.write_vouched(off, &buf[r], vouch)
        })
    }

    /// Write bytes that the next flush makes durable elsewhere (journaled
    /// data, see `thin::log`): they do not make the next
    /// [`Array::flush_if_written`] flush; [`Array::mark_written`] when
    /// they turn out not to be.
    pub fn write_journaled(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.check_writable()?;
        self.dispatch(offset, buf.len(), |v, off, r| v.write(off, &buf[r]))
    }

    /// [`Array::write_journaled`] of `buf`, within one RAID5 data unit,
    /// whose row's other data units XOR to `others` at the same offsets
    /// (read by the caller, who keeps them from changing): the parity is
    /// written from them, without reading the old data and parity.
    /// Anywhere else (another level, a layout change running, a piece
    /// over two units): as `write_journaled`.
    pub fn write_journaled_with_others(
        &self,
        offset: u64,
        buf: &[u8],
        others: &[u8],
    ) -> io::Result<()> {
        self.check_writable()?;
        {
            let st = self.state.read();
            if st.transition.is_none()
                && st.geo.level == RaidLevel::Raid5
                && others.len() == buf.len()
            {
                self.check(&st, offset, buf.len())?;
                let v = self.view(&st.geo, &st.members, None);
                if v.write_unit_with_others(offset, buf, others)? {
                    return Ok(());
                }
            }
        }
        self.write_journaled(offset, buf)
    }

    /// The next [`Array::flush_if_written`] flushes.
    pub fn mark_written(&self) {
        self.unflushed.store(true, Ordering::Release);
    }

    /// Flush unless nothing was written through [`Array::write`] (or a
    /// repair) since the last flush began.
    pub fn flush_if_written(&self) -> io::Result<()> {
        if !self.unflushed.load(Ordering::Acquire) {
            if let Some(e) = self.health.broken_error() {
                return Err(e);
            }
            return Ok(());
        }
        self.flush()
    }

    /// Refuse writes once redundancy ran out (see [`Health::set_broken`]).
    pub fn check_writable(&self) -> io::Result<()> {
        match self.health.is_broken() {
            false => Ok(()),
            true => Err(io::Error::new(
                io::ErrorKind::ReadOnlyFilesystem,
                format!(
                    "the pool is failed: {}",
                    self.health.broken().unwrap_or_default()
                ),
            )),
        }
    }

    /// Flush every member in use. A member whose flush fails is failed
    /// when the array can do without it; otherwise the flush fails and the
    /// pool is broken (see [`super::health`]). A broken pool's flushes
    /// fail: a flush that succeeds after a failed one proves nothing.
    pub fn flush(&self) -> io::Result<()> {
        let g = self.flush_started.fetch_add(1, Ordering::AcqRel) + 1;
        self.unflushed.store(false, Ordering::Release);
        let r = self.flush_members();
        match r.is_err() {
            true => self.unflushed.store(true, Ordering::Release),
            false => {
                self.flush_done.fetch_max(g, Ordering::AcqRel);
            }
        }
        r
    }

    /// A stamp for writes completed now: [`Array::flushed_since`] says
    /// when a flush started after it has completed.
    pub fn flush_stamp(&self) -> u64 {
        self.flush_started.load(Ordering::Acquire)
    }

    /// Has a flush that started after `stamp` completed (so every write
    /// completed before the stamp is durable)?
    pub fn flushed_since(&self, stamp: u64) -> bool {
        self.flush_done.load(Ordering::Acquire) > stamp
    }

    fn flush_members(&self) -> io::Result<()> {
        let members = self.members();
        let st = self.state.read();
        let shrinking = matches!(
            st.transition,
            Some(Transition {
                kind: TransitionKind::Shrink { .. },
                ..
            })
        );
        let no_read = match st.transition {
            Some(Transition {
                kind: TransitionKind::Resync { member },
                ..
            }) => Some(member),
            _ => None,
        };
        let view = View {
            tolerant: !shrinking,
            ..self.view(&st.geo, &members, no_read)
        };
        // Every member is flushed even after one fails: the others' writes
        // are then durable, whatever the caller does next.
        // They flush in parallel; each result is then accounted as if it
        // had just happened (a flush is never retried).
        let which: Vec<usize> = (0..members.len())
            .filter(|&m| view.dev(m).is_some())
            .collect();
        let mut devs: Vec<DeviceRef> = which.iter().filter_map(|&m| view.dev(m).cloned()).collect();
        // A device being replaced in service holds the member's rows not
        // yet rebuilt: flushed with the others, or it is left out (a
        // restart would otherwise put it back without acknowledged writes).
        let old = match st.transition {
            Some(Transition {
                kind: TransitionKind::Rebuild { member },
                ..
            }) => self.serving_old().map(|d| (member, d)),
            _ => None,
        };
        devs.extend(old.iter().map(|(_, d)| d.clone()));
        let mut results = crate::device::flush_all(&devs);
        if let Some((k, dev)) = &old {
            let r = results.pop().flatten().unwrap_or_else(|| dev.flush());
            if let Err(e) = r {
                self.lose_replacing();
                self.health.note_unrecorded();
                self.health.event(format!(
                    "member {k} ({}), being replaced, failed to flush ({e}); its rows are now rebuilt from the other members",
                    dev.name()
                ));
            }
        }
        let mut first = None;
        for (i, &m) in which.iter().enumerate() {
            if let Some(dev) = view.dev(m) {
                let mut r = results[i].take();
                match view.io(m, dev, Dir::Flush, None, || {
                    r.take().unwrap_or_else(|| dev.flush())
                }) {
                    Ok(()) | Err(Fault::MemberFailed) => {}
                    Err(Fault::Io(e)) => {
                        first.get_or_insert(e);
                    }
                }
            }
        }
        match (first, self.health.broken_error()) {
            (Some(e), _) => Err(e),
            (None, Some(e)) => Err(e),
            (None, None) => Ok(()),
        }
    }

    /// Rebuild member `target`'s bytes at member offsets `[moff, moff+len)`
    /// from the other members (see [`TransitionKind::Rebuild`]). Caller
    /// pauses client I/O.
    pub fn rebuild(&self, target: usize, moff: u64, len: usize) -> io::Result<()> {
        self.unflushed.store(true, Ordering::Release);
        let st = self.state.read();
        let view = self.view(&st.geo, &st.members, None);
        let old = self.serving_old();
        view.degrading(|| view.rebuild(target, moff, len, old.as_ref()))
    }

    /// Best-effort discard of an array range (lets image files stay sparse).
    /// Only for levels where a range maps to whole member ranges with no
    /// parity, and not while the layout is changing.
    pub fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        let st = self.state.read();
        if st.transition.is_some() {
            return Ok(());
        }
        match st.geo.level {
            RaidLevel::Raid1 => {
                for dev in st.members.iter().flatten() {
                    let _ = dev.discard(st.geo.data_start + offset, len);
                }
            }
            RaidLevel::Linear | RaidLevel::Raid0 => {
                for e in st.geo.map(offset, len) {
                    if let Some(dev) = &st.members[e.member] {
                        let _ = dev.discard(e.offset, e.len);
                    }
                }
            }
            // Discarding RAID5 data would break parity of the stripe.
            RaidLevel::Raid5 => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::MemDevice;
    use std::sync::Arc;

    fn array(level: RaidLevel, n: usize) -> (Array, Vec<Arc<MemDevice>>) {
        let devs: Vec<Arc<MemDevice>> = (0..n)
            .map(|i| Arc::new(MemDevice::new(&format!("m{i}"), 1 << 20)))
            .collect();
        let geo = Geometry {
            level,
            stripe_unit: 4096,
            data_start: 65536,
            member_data: vec![(1 << 20) - 65536; n],
        };
        let members = devs.iter().map(|d| Some(d.clone() as DeviceRef)).collect();
        (Array::new(geo, members), devs)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn raid5_survives_any_single_missing_member() {
        for missing_member in 0..4 {
            let (a, devs) = array(RaidLevel::Raid5, 4);
            let full = pattern(3 * 4096 * 2, 1);
            a.write(0, &full).unwrap();
            let part = pattern(5000, 9);
            a.write(3000, &part).unwrap();
            let mut expect = full.clone();
            expect[3000..8000].copy_from_slice(&part);
            let mut members: Vec<Option<DeviceRef>> =
                devs.iter().map(|d| Some(d.clone() as DeviceRef)).collect();
            members[missing_member] = None;
            let degraded = Array::new(a.geometry(), members);
            let mut got = vec![0u8; expect.len()];
            degraded.read(0, &mut got).unwrap();
            assert_eq!(got, expect, "missing member {missing_member}");
            // Degraded writes stay readable, degraded and healthy.
            let more = pattern(7000, 77);
            degraded.write(1000, &more).unwrap();
            expect[1000..8000].copy_from_slice(&more);
            degraded.read(0, &mut got).unwrap();
            assert_eq!(got, expect);
        }
    }

    #[test]
    fn raid1_reads_from_surviving_mirror() {
        let (a, devs) = array(RaidLevel::Raid1, 3);
        let data = pattern(10000, 3);
        a.write(12345, &data).unwrap();
        let members = vec![None, None, Some(devs[2].clone() as DeviceRef)];
        let d = Array::new(a.geometry(), members);
        let mut got = vec![0u8; data.len()];
        d.read(12345, &mut got).unwrap();
        assert_eq!(got, data);
    }
}
