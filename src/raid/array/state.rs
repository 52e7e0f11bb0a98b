//! What an array is: its layout, its members, and the transition it may be
//! in (a restripe onto more members, or a shrink that takes one away).

use super::super::geometry::Geometry;
use crate::device::DeviceRef;

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
