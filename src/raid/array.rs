//! Data I/O over the members of an array: striping, mirroring, RAID5 parity
//! (full-stripe writes without reads, read-modify-write otherwise),
//! degraded operation with one member missing, members failed while
//! serving (see [`super::health`]) and rebuilds onto a replacement.

use super::geometry::{Geometry, RaidLevel};
use super::health::{Dir, Fault, FaultResult, Health};
use super::parity::xor_into;
use crate::device::DeviceRef;
use parking_lot::{Mutex, RwLock};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

mod copies;
pub use copies::Copy;

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
}

/// The members and their layout. Changes only while no I/O runs (the thin
/// layer's gate is held for write), so a reader sees one consistent state.
#[derive(Clone)]
pub struct ArrayState {
    /// The layout the array is in, or moving to during a transition.
    pub geo: Geometry,
    /// `None` for a member that is missing (the array runs degraded).
    pub members: Vec<Option<DeviceRef>>,
    pub transition: Option<Transition>,
}

/// An array on its way from one layout to another, `pos` bytes in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub kind: TransitionKind,
    /// Array bytes below `pos` are in the new layout, the rest in the old one.
    pub pos: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TransitionKind {
    /// Restripe onto more members (raid0/raid5 reshape); `old` is the layout
    /// of the first `old.members()` members.
    Restripe { old: Geometry },
    /// A new mirror being filled: written like the others, never read.
    Resync { member: usize },
    /// A replacement for a failed member being filled from the others:
    /// below `pos` it is in sync, at or past `pos` it is left out (raid5
    /// reads reconstruct its units; writes skip it).
    Rebuild { member: usize },
    /// Restripe onto one member fewer (`pool remove`), from the top down:
    /// bytes at or past `pos` are in the new layout, the rest in `old`,
    /// which also spans the leaving member `removed` (held in `dev`).
    Shrink {
        old: Geometry,
        removed: usize,
        dev: LeavingMember,
    },
}

/// The member a shrink removes: still read (and, for its backup, written)
/// until the shrink is done. Compared by identity.
#[derive(Clone)]
pub struct LeavingMember(pub DeviceRef);

impl PartialEq for LeavingMember {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for LeavingMember {}

impl std::fmt::Debug for LeavingMember {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LeavingMember({})", self.0.name())
    }
}

/// The old member list of a shrink: the new one with the leaving member
/// put back at its index.
pub fn members_before_shrink(
    members: &[Option<DeviceRef>],
    removed: usize,
    dev: &LeavingMember,
) -> Vec<Option<DeviceRef>> {
    let mut v = members.to_vec();
    v.insert(removed.min(v.len()), Some(dev.0.clone()));
    v
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

/// One layout over a set of members: where the I/O routines work.
struct View<'a> {
    geo: &'a Geometry,
    members: &'a [Option<DeviceRef>],
    /// A mirror not to read from (being resynced).
    no_read: Option<usize>,
    /// A member left out entirely (not yet rebuilt at these addresses).
    absent: Option<usize>,
    /// Member indices are the pool's (not during a shrink): members may
    /// be failed on errors.
    tolerant: bool,
    health: &'a Health,
    locks: &'a [Mutex<()>],
    next_mirror: &'a AtomicUsize,
    /// The member index a device being replaced serves in this view: its
    /// errors set `shadow_failed` (which leaves it out from then on)
    /// instead of failing the member, whose index the new device holds.
    shadow: Option<usize>,
    shadow_failed: &'a AtomicBool,
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
    pub fn overwrite_in_place(&self, len: u64, chunk_size: u64) -> bool {
        let st = self.state.read();
        st.geo.level != RaidLevel::Raid5
            || (len == chunk_size && chunk_size.is_multiple_of(st.geo.stripe_width()))
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
                format!("array I/O at {offset}+{len} beyond capacity {cap}"),
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
        self.dispatch(offset, buf.len(), |v, off, r| v.write(off, &buf[r]))
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
        let mut first = None;
        for m in 0..members.len() {
            if let Some(dev) = view.dev(m) {
                match view.io(m, dev, Dir::Flush, || dev.flush()) {
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
        let st = self.state.read();
        let view = self.view(&st.geo, &st.members, None);
        view.degrading(|| view.rebuild(target, moff, len))
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

impl View<'_> {
    fn dev(&self, m: usize) -> Option<&DeviceRef> {
        if Some(m) == self.shadow && self.shadow_failed.load(Ordering::Acquire) {
            return None;
        }
        if Some(m) == self.absent || (self.tolerant && self.health.is_failed(m)) {
            return None;
        }
        self.members[m].as_ref()
    }

    /// Whether the array can go on without member `m` (which just failed).
    fn can_fail(&self, m: usize) -> bool {
        if !self.tolerant {
            return false;
        }
        let others = (0..self.members.len()).filter(|&i| i != m);
        match self.geo.level {
            RaidLevel::Raid1 => others
                .filter(|&i| Some(i) != self.no_read)
                .any(|i| self.dev(i).is_some()),
            RaidLevel::Raid5 => others.clone().all(|i| self.dev(i).is_some()),
            RaidLevel::Linear | RaidLevel::Raid0 => false,
        }
    }

    /// One member I/O, retried once. A member that fails twice is failed
    /// when the array can do without it ([`Fault::MemberFailed`]: redo the
    /// work degraded); otherwise the error stands, and a redundant pool
    /// stops taking writes.
    fn io(
        &self,
        m: usize,
        dev: &DeviceRef,
        dir: Dir,
        f: impl FnMut() -> io::Result<()>,
    ) -> FaultResult<()> {
        let Err(e) = self.health.attempt(m, dir, f) else {
            return Ok(());
        };
        if Some(m) == self.shadow && e.kind() != io::ErrorKind::InvalidInput {
            // Redo without the replaced device (see `View::shadow`).
            self.shadow_failed.store(true, Ordering::Release);
            return Err(Fault::MemberFailed);
        }
        if e.kind() == io::ErrorKind::InvalidInput {
            return Err(Fault::Io(e));
        }
        if self.can_fail(m) {
            self.health
                .fail(m, &dev.name(), &format!("{dir:?} error: {e}"));
            return Err(Fault::MemberFailed);
        }
        if dir == Dir::Flush {
            // The member's writes since its last good flush may be gone,
            // and nothing else holds them: nothing written since the last
            // commit can be trusted, so nothing more is acknowledged.
            self.health.set_broken(format!(
                "member {m} ({}) failed to flush ({e}): writes since the last commit may be lost and no redundancy holds them; the pool takes no more writes or flushes: fix or replace the device, then `vpool pool clear` (it reloads the pool from its last commit)",
                dev.name()
            ));
        } else if self.tolerant && self.geo.level.tolerated_failures(self.members.len()) > 0 {
            self.health.set_broken(format!(
                "member {m} ({}) failed ({e}) and no redundancy is left; the pool takes no more writes: reattach or replace the failed members, then `vpool pool clear` or restart the daemon",
                dev.name()
            ));
        }
        Err(Fault::Io(io::Error::new(
            e.kind(),
            format!("member {m} ({}): {e}", dev.name()),
        )))
    }

    /// Run `f` until no member fails under it (each retry has one member
    /// fewer, so this ends).
    fn degrading(&self, mut f: impl FnMut() -> FaultResult<()>) -> io::Result<()> {
        loop {
            match f() {
                Ok(()) => return Ok(()),
                Err(Fault::MemberFailed) => continue,
                Err(Fault::Io(e)) => return Err(e),
            }
        }
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.degrading(|| self.try_read(offset, buf))
    }

    fn try_read(&self, offset: u64, buf: &mut [u8]) -> FaultResult<()> {
        match self.geo.level {
            RaidLevel::Raid1 => self.read_mirror(offset, buf),
            RaidLevel::Linear | RaidLevel::Raid0 => {
                for e in self.geo.map(offset, buf.len() as u64) {
                    let dev = self.dev(e.member).ok_or_else(|| missing("read"))?;
                    let piece = &mut buf[e.buf_offset as usize..(e.buf_offset + e.len) as usize];
                    self.io(e.member, dev, Dir::Read, || dev.read_at(piece, e.offset))?;
                }
                Ok(())
            }
            RaidLevel::Raid5 => {
                for e in self.geo.map(offset, buf.len() as u64) {
                    let piece = &mut buf[e.buf_offset as usize..(e.buf_offset + e.len) as usize];
                    match self.dev(e.member) {
                        Some(dev) => {
                            self.io(e.member, dev, Dir::Read, || dev.read_at(piece, e.offset))?
                        }
                        None => self.reconstruct(e.member, e.offset, piece)?,
                    }
                }
                Ok(())
            }
        }
    }

    fn read_mirror(&self, offset: u64, buf: &mut [u8]) -> FaultResult<()> {
        let n = self.members.len();
        let start = self.next_mirror.fetch_add(1, Ordering::Relaxed) % n;
        let moff = self.geo.data_start + offset;
        for i in 0..n {
            let m = (start + i) % n;
            if Some(m) == self.no_read {
                continue;
            }
            if let Some(dev) = self.dev(m) {
                match self.io(m, dev, Dir::Read, || dev.read_at(buf, moff)) {
                    Ok(()) => return Ok(()),
                    // Failed and marked: the next mirror serves the read.
                    Err(Fault::MemberFailed) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(missing("read").into())
    }

    fn lock(&self, stripe: u64) -> parking_lot::MutexGuard<'_, ()> {
        self.locks[(stripe as usize) % STRIPE_LOCKS].lock()
    }

    /// Rebuild the bytes of a missing member at `moff` from all the others
    /// (data units and parity of the same stripe row).
    fn reconstruct(&self, missing_member: usize, moff: u64, out: &mut [u8]) -> FaultResult<()> {
        let stripe = (moff - self.geo.data_start) / self.geo.stripe_unit;
        let _guard = self.lock(stripe);
        self.xor_others(missing_member, moff, out)
    }

    /// `out` = XOR of every member but `skip` at member offset `moff`: the
    /// content `skip` must have there. Caller holds the stripe lock.
    fn xor_others(&self, skip: usize, moff: u64, out: &mut [u8]) -> FaultResult<()> {
        let mut others = (0..self.members.len()).filter(|&m| m != skip);
        let read = |m: usize, buf: &mut [u8]| -> FaultResult<()> {
            let dev = self.dev(m).ok_or_else(|| missing("degraded read"))?;
            self.io(m, dev, Dir::Read, || dev.read_at(buf, moff))
        };
        let first = others.next().ok_or_else(|| missing("degraded read"))?;
        if out.len() < PARALLEL_READ_MIN {
            read(first, out)?;
            let mut tmp = vec![0u8; out.len()];
            for m in others {
                read(m, &mut tmp)?;
                xor_into(out, &tmp);
            }
            return Ok(());
        }
        // Large (rebuilds): read the members at once, one thread each.
        let rest: Vec<usize> = others.collect();
        let len = out.len();
        let (mine, theirs) = std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter()
                .map(|&m| {
                    s.spawn(move || {
                        let mut b = vec![0u8; len];
                        read(m, &mut b).map(|()| b)
                    })
                })
                .collect();
            let mine = read(first, out);
            let theirs: Vec<FaultResult<Vec<u8>>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a member read panicked").into()))
                })
                .collect();
            (mine, theirs)
        });
        mine?;
        for b in theirs {
            xor_into(out, &b?);
        }
        Ok(())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        match self.geo.level {
            RaidLevel::Raid1 => self.degrading(|| self.write_mirrors(offset, buf)),
            RaidLevel::Linear | RaidLevel::Raid0 => self.degrading(|| {
                for e in self.geo.map(offset, buf.len() as u64) {
                    let dev = self.dev(e.member).ok_or_else(|| missing("write"))?;
                    let piece = &buf[e.buf_offset as usize..(e.buf_offset + e.len) as usize];
                    self.io(e.member, dev, Dir::Write, || dev.write_at(piece, e.offset))?;
                }
                Ok(())
            }),
            RaidLevel::Raid5 => self.write_raid5(offset, buf),
        }
    }

    fn write_mirrors(&self, offset: u64, buf: &[u8]) -> FaultResult<()> {
        let moff = self.geo.data_start + offset;
        let mut wrote = false;
        for m in 0..self.members.len() {
            if let Some(dev) = self.dev(m) {
                match self.io(m, dev, Dir::Write, || dev.write_at(buf, moff)) {
                    Ok(()) => wrote = true,
                    Err(Fault::MemberFailed) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if wrote {
            Ok(())
        } else {
            Err(missing("write").into())
        }
    }

    fn write_raid5(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let width = self.geo.stripe_width();
        let mut pos = offset;
        let end = offset + buf.len() as u64;
        while pos < end {
            let stripe = pos / width;
            let stripe_end = ((stripe + 1) * width).min(end);
            let piece = &buf[(pos - offset) as usize..(stripe_end - offset) as usize];
            let _guard = self.lock(stripe);
            // Redone whole when a member fails under it: see write_partial_stripe.
            self.degrading(|| {
                if pos.is_multiple_of(width) && piece.len() as u64 == width {
                    self.write_full_stripe(stripe, piece)
                } else {
                    self.write_partial_stripe(pos, piece)
                }
            })?;
            pos = stripe_end;
        }
        Ok(())
    }

    /// Full-stripe write: parity from the new data alone, no reads.
    fn write_full_stripe(&self, stripe: u64, data: &[u8]) -> FaultResult<()> {
        let su = self.geo.stripe_unit as usize;
        let moff = self.geo.data_start + stripe * self.geo.stripe_unit;
        let mut parity = data[..su].to_vec();
        for unit in data.chunks(su).skip(1) {
            xor_into(&mut parity, unit);
        }
        for (d, unit) in data.chunks(su).enumerate() {
            let m = self.geo.data_member(stripe, d as u64);
            if let Some(dev) = self.dev(m) {
                self.io(m, dev, Dir::Write, || dev.write_at(unit, moff))?;
            }
        }
        let pm = self.geo.parity_member(stripe);
        if let Some(dev) = self.dev(pm) {
            self.io(pm, dev, Dir::Write, || dev.write_at(&parity, moff))?;
        }
        Ok(())
    }

    /// Partial-stripe write, one data unit piece at a time. Caller holds the
    /// stripe lock. Healthy: new parity = old parity ^ old data ^ new data.
    /// Data member missing: parity = new data ^ the other data units.
    /// Parity member missing: write the data only.
    /// Redoing it after a member failed halfway is safe: a piece whose data
    /// and parity were both written reads back as new data, and the
    /// healthy formula then leaves its parity unchanged.
    fn write_partial_stripe(&self, offset: u64, buf: &[u8]) -> FaultResult<()> {
        for e in self.geo.map(offset, buf.len() as u64) {
            let stripe = (e.offset - self.geo.data_start) / self.geo.stripe_unit;
            let pm = self.geo.parity_member(stripe);
            let b = e.buf_offset as usize;
            let new = &buf[b..b + e.len as usize];
            let (dm, at) = (e.member, e.offset);
            match (self.dev(dm), self.dev(pm)) {
                (Some(dd), Some(pd)) => {
                    let mut parity = vec![0u8; new.len()];
                    let mut old = vec![0u8; new.len()];
                    self.io(pm, pd, Dir::Read, || pd.read_at(&mut parity, at))?;
                    self.io(dm, dd, Dir::Read, || dd.read_at(&mut old, at))?;
                    xor_into(&mut parity, &old);
                    xor_into(&mut parity, new);
                    self.io(dm, dd, Dir::Write, || dd.write_at(new, at))?;
                    self.io(pm, pd, Dir::Write, || pd.write_at(&parity, at))?;
                }
                (Some(dd), None) => self.io(dm, dd, Dir::Write, || dd.write_at(new, at))?,
                (None, Some(pd)) => {
                    let mut parity = new.to_vec();
                    let mut tmp = vec![0u8; new.len()];
                    for m in 0..self.members.len() {
                        if m == dm || m == pm {
                            continue;
                        }
                        let dev = self.dev(m).ok_or_else(|| missing("degraded write"))?;
                        self.io(m, dev, Dir::Read, || dev.read_at(&mut tmp, at))?;
                        xor_into(&mut parity, &tmp);
                    }
                    self.io(pm, pd, Dir::Write, || pd.write_at(&parity, at))?;
                }
                (None, None) => return Err(missing("degraded write").into()),
            }
        }
        Ok(())
    }

    /// Rewrite member `target`'s rows `[moff, moff + len)` from the others:
    /// a copy of a mirror (raid1) or the XOR of the rest of each stripe
    /// row (raid5). Caller pauses client I/O.
    fn rebuild(&self, target: usize, moff: u64, len: usize) -> FaultResult<()> {
        let dev = self.members[target]
            .as_ref()
            .ok_or_else(|| missing("rebuild target"))?;
        let mut buf = vec![0u8; len];
        match self.geo.level {
            RaidLevel::Raid1 => {
                let src = (0..self.members.len())
                    .filter(|&m| m != target && Some(m) != self.no_read)
                    .find(|&m| self.dev(m).is_some())
                    .ok_or_else(|| missing("rebuild source"))?;
                let Some(s) = self.dev(src) else {
                    return Err(missing("rebuild source").into());
                };
                self.io(src, s, Dir::Read, || s.read_at(&mut buf, moff))?;
            }
            RaidLevel::Raid5 => self.xor_others(target, moff, &mut buf)?,
            RaidLevel::Linear | RaidLevel::Raid0 => {
                return Err(Fault::Io(io::Error::other(
                    "linear and raid0 arrays have no redundancy to rebuild from",
                )))
            }
        }
        self.io(target, dev, Dir::Write, || dev.write_at(&buf, moff))
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
