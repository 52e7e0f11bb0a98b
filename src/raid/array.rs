//! Data I/O over the members of an array: striping, mirroring, RAID5 parity
//! (full-stripe writes without reads, read-modify-write otherwise) and
//! degraded operation with one member missing.

use super::geometry::{Geometry, RaidLevel};
use super::parity::xor_into;
use crate::device::DeviceRef;
use parking_lot::{Mutex, RwLock};
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};

const STRIPE_LOCKS: usize = 512;

pub struct Array {
    state: RwLock<ArrayState>,
    stripe_locks: Vec<Mutex<()>>,
    next_mirror: AtomicUsize,
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

fn missing(what: &str) -> io::Error {
    io::Error::other(format!("{what}: member missing and no redundancy left"))
}

/// One layout over a set of members: where the I/O routines work.
struct View<'a> {
    geo: &'a Geometry,
    members: &'a [Option<DeviceRef>],
    /// A mirror not to read from (being resynced).
    no_read: Option<usize>,
    locks: &'a [Mutex<()>],
    next_mirror: &'a AtomicUsize,
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
        Array {
            state: RwLock::new(state),
            stripe_locks: (0..STRIPE_LOCKS).map(|_| Mutex::new(())).collect(),
            next_mirror: AtomicUsize::new(0),
        }
    }

    /// A copy of the current state (cheap: members are shared handles).
    pub fn state(&self) -> ArrayState {
        self.state.read().clone()
    }

    /// Replace the state. Callers make sure no I/O is in flight.
    pub fn set_state(&self, state: ArrayState) {
        *self.state.write() = state;
    }

    /// Move a running transition forward (or end it with `None`).
    pub fn set_transition(&self, t: Option<Transition>) {
        self.state.write().transition = t;
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
        let view = |geo, members, no_read| View {
            geo,
            members,
            no_read,
            locks: &self.stripe_locks,
            next_mirror: &self.next_mirror,
        };
        match &st.transition {
            None => f(&view(&st.geo, &st.members, None), offset, 0..len),
            Some(Transition {
                kind: TransitionKind::Resync { member },
                ..
            }) => f(&view(&st.geo, &st.members, Some(*member)), offset, 0..len),
            Some(Transition {
                kind: TransitionKind::Restripe { old },
                pos,
            }) => {
                let end = offset + len as u64;
                let split = (*pos).clamp(offset, end);
                if split > offset {
                    let n = (split - offset) as usize;
                    f(&view(&st.geo, &st.members, None), offset, 0..n)?;
                }
                if end > split {
                    let old_members = &st.members[..old.members()];
                    let a = (split - offset) as usize;
                    f(&view(old, old_members, None), split, a..len)?;
                }
                Ok(())
            }
            Some(Transition {
                kind: TransitionKind::Shrink { old, removed, dev },
                pos,
            }) => {
                let end = offset + len as u64;
                let split = (*pos).clamp(offset, end);
                if split > offset {
                    let old_members = members_before_shrink(&st.members, *removed, dev);
                    let old_view = View {
                        geo: old,
                        members: &old_members,
                        no_read: None,
                        locks: &self.stripe_locks,
                        next_mirror: &self.next_mirror,
                    };
                    f(&old_view, offset, 0..(split - offset) as usize)?;
                }
                if end > split {
                    let a = (split - offset) as usize;
                    f(&view(&st.geo, &st.members, None), split, a..len)?;
                }
                Ok(())
            }
        }
    }

    pub fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.dispatch(offset, buf.len(), |v, off, r| v.read(off, &mut buf[r]))
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.dispatch(offset, buf.len(), |v, off, r| v.write(off, &buf[r]))
    }

    pub fn flush(&self) -> io::Result<()> {
        for dev in self.members().iter().flatten() {
            dev.flush()?;
        }
        Ok(())
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
                    dev.discard(st.geo.data_start + offset, len)?;
                }
            }
            RaidLevel::Linear | RaidLevel::Raid0 => {
                for e in st.geo.map(offset, len) {
                    if let Some(dev) = &st.members[e.member] {
                        dev.discard(e.offset, e.len)?;
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
        self.members[m].as_ref()
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self.geo.level {
            RaidLevel::Raid1 => self.read_mirror(offset, buf),
            RaidLevel::Linear | RaidLevel::Raid0 => {
                for e in self.geo.map(offset, buf.len() as u64) {
                    let dev = self.dev(e.member).ok_or_else(|| missing("read"))?;
                    let b = e.buf_offset as usize;
                    dev.read_at(&mut buf[b..b + e.len as usize], e.offset)?;
                }
                Ok(())
            }
            RaidLevel::Raid5 => {
                for e in self.geo.map(offset, buf.len() as u64) {
                    let b = e.buf_offset as usize;
                    let piece = &mut buf[b..b + e.len as usize];
                    match self.dev(e.member) {
                        Some(dev) => dev.read_at(piece, e.offset)?,
                        None => self.reconstruct(e.member, e.offset, piece)?,
                    }
                }
                Ok(())
            }
        }
    }

    fn read_mirror(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let n = self.members.len();
        let start = self.next_mirror.fetch_add(1, Ordering::Relaxed) % n;
        let moff = self.geo.data_start + offset;
        let mut last_err = None;
        for i in 0..n {
            let m = (start + i) % n;
            if Some(m) == self.no_read {
                continue;
            }
            if let Some(dev) = self.dev(m) {
                match dev.read_at(buf, moff) {
                    Ok(()) => return Ok(()),
                    Err(e) => last_err = Some(e),
                }
            }
        }
        Err(last_err.unwrap_or_else(|| missing("read")))
    }

    fn lock(&self, stripe: u64) -> parking_lot::MutexGuard<'_, ()> {
        self.locks[(stripe as usize) % STRIPE_LOCKS].lock()
    }

    /// Rebuild the bytes of a missing member at `moff` from all the others
    /// (data units and parity of the same stripe row).
    fn reconstruct(&self, missing_member: usize, moff: u64, out: &mut [u8]) -> io::Result<()> {
        let stripe = (moff - self.geo.data_start) / self.geo.stripe_unit;
        let _guard = self.lock(stripe);
        out.fill(0);
        let mut tmp = vec![0u8; out.len()];
        for m in 0..self.members.len() {
            if m == missing_member {
                continue;
            }
            let dev = self.dev(m).ok_or_else(|| missing("degraded read"))?;
            dev.read_at(&mut tmp, moff)?;
            xor_into(out, &tmp);
        }
        Ok(())
    }

    fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        match self.geo.level {
            RaidLevel::Raid1 => {
                let moff = self.geo.data_start + offset;
                let mut wrote = false;
                for dev in self.members.iter().flatten() {
                    dev.write_at(buf, moff)?;
                    wrote = true;
                }
                if wrote {
                    Ok(())
                } else {
                    Err(missing("write"))
                }
            }
            RaidLevel::Linear | RaidLevel::Raid0 => {
                for e in self.geo.map(offset, buf.len() as u64) {
                    let dev = self.dev(e.member).ok_or_else(|| missing("write"))?;
                    let b = e.buf_offset as usize;
                    dev.write_at(&buf[b..b + e.len as usize], e.offset)?;
                }
                Ok(())
            }
            RaidLevel::Raid5 => self.write_raid5(offset, buf),
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
            if pos.is_multiple_of(width) && piece.len() as u64 == width {
                self.write_full_stripe(stripe, piece)?;
            } else {
                self.write_partial_stripe(pos, piece)?;
            }
            pos = stripe_end;
        }
        Ok(())
    }

    /// Full-stripe write: parity from the new data alone, no reads.
    fn write_full_stripe(&self, stripe: u64, data: &[u8]) -> io::Result<()> {
        let su = self.geo.stripe_unit as usize;
        let moff = self.geo.data_start + stripe * self.geo.stripe_unit;
        let mut parity = data[..su].to_vec();
        for unit in data.chunks(su).skip(1) {
            xor_into(&mut parity, unit);
        }
        for (d, unit) in data.chunks(su).enumerate() {
            if let Some(dev) = self.dev(self.geo.data_member(stripe, d as u64)) {
                dev.write_at(unit, moff)?;
            }
        }
        if let Some(dev) = self.dev(self.geo.parity_member(stripe)) {
            dev.write_at(&parity, moff)?;
        }
        Ok(())
    }

    /// Partial-stripe write, one data unit piece at a time. Caller holds the
    /// stripe lock. Healthy: new parity = old parity ^ old data ^ new data.
    /// Data member missing: parity = new data ^ the other data units.
    /// Parity member missing: write the data only.
    fn write_partial_stripe(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        for e in self.geo.map(offset, buf.len() as u64) {
            let stripe = (e.offset - self.geo.data_start) / self.geo.stripe_unit;
            let pm = self.geo.parity_member(stripe);
            let b = e.buf_offset as usize;
            let new = &buf[b..b + e.len as usize];
            let data_dev = self.dev(e.member);
            let parity_dev = self.dev(pm);
            match (data_dev, parity_dev) {
                (Some(dd), Some(pd)) => {
                    let mut parity = vec![0u8; new.len()];
                    let mut old = vec![0u8; new.len()];
                    pd.read_at(&mut parity, e.offset)?;
                    dd.read_at(&mut old, e.offset)?;
                    xor_into(&mut parity, &old);
                    xor_into(&mut parity, new);
                    dd.write_at(new, e.offset)?;
                    pd.write_at(&parity, e.offset)?;
                }
                (Some(dd), None) => dd.write_at(new, e.offset)?,
                (None, Some(pd)) => {
                    let mut parity = new.to_vec();
                    let mut tmp = vec![0u8; new.len()];
                    for m in 0..self.members.len() {
                        if m == e.member || m == pm {
                            continue;
                        }
                        let dev = self.dev(m).ok_or_else(|| missing("degraded write"))?;
                        dev.read_at(&mut tmp, e.offset)?;
                        xor_into(&mut parity, &tmp);
                    }
                    pd.write_at(&parity, e.offset)?;
                }
                (None, None) => return Err(missing("degraded write")),
            }
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
