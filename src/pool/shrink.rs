//! Removing a member online (`pool remove`), like LVM's pvmove + vgreduce
//! or md's reshape to fewer devices. Three phases, each crash-safe and
//! resumable from the superblock's checkpoint:
//!
//! 1. **evacuate**: the allocator is limited to the new, smaller capacity
//!    and every data chunk in use above it is relocated below it (see
//!    `thin::relocate`). Any level.
//! 2. **restripe down** (linear with a member after the leaving one, and
//!    raid0): from the top of the new capacity downwards, data moves from
//!    the old layout to the new one. Bytes at or past `pos` are in the new
//!    layout. A step writing new addresses `[a1, a2)` may only overwrite old
//!    addresses at or past the committed `a2`, so its source stays intact
//!    and a crash just redoes it. For raid0 that is `r1 * old_width >=
//!    r2 * new_width` in rows; the last rows below `n` cannot meet it and
//!    go through a copy on the leaving member (which holds nothing live by
//!    then), as the first rows of a `pool add` do. For linear it is a step
//!    of at most the leaving member's size.
//! 3. **done**: the metadata area is copied to a member that becomes one of
//!    the metadata copies, the labels get the new member table (a newer
//!    generation wins at assembly), the leaving member's label is marked
//!    destroyed, and the transition is cleared.

use super::create::write_label;
use super::rebuild::copy_metadata_area;
use super::reshape::{io, read_used};
use super::Pool;
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::meta::label::{Label, PoolState};
use crate::raid::TransitionKind;
use crate::raid::{ArrayState, Geometry, LeavingMember, MetaMirror, RaidLevel, Transition};
use crate::thin::store::superblock::{
    SbTransition, PHASE_BACKUP, PHASE_DONE, PHASE_EVACUATE, PHASE_MAIN, TRANSITION_SHRINK,
};
use crate::thin::store::MetaStore;
use crate::units::format_size;

/// Fewest chunks an evacuation step moves (each step walks every tree).
const EVACUATE_MIN_BATCH: u64 = 64;

/// Most metadata copies a pool keeps (as at creation).
const MAX_META_COPIES: usize = 3;

/// The layout without member `k`.
fn without(geo: &Geometry, k: usize) -> Geometry {
    let mut g = geo.clone();
    g.member_data.remove(k);
    g
}

/// Where the restripe down stops: addresses below it do not move.
fn floor(old: &Geometry, k: usize) -> u64 {
    match old.level {
        RaidLevel::Linear => old.member_data[..k].iter().sum(),
        RaidLevel::Raid0 => 0,
        // raid1: every mirror holds everything; nothing moves.
        _ => u64::MAX,
    }
}

fn shrink_kind(old: &Geometry, k: usize, dev: DeviceRef) -> TransitionKind {
    TransitionKind::Shrink {
        old: old.clone(),
        removed: k,
        dev: LeavingMember(dev),
    }
}

fn without_member(members: &[Option<DeviceRef>], k: usize) -> Vec<Option<DeviceRef>> {
    let mut m = members.to_vec();
    m.remove(k);
    m
}

/// The array state to open a shrinking pool with. `geo` and `members` are
/// those of the labels, which list the leaving member until the last phase.
pub(crate) fn resume_shrink(
    label: &Label,
    geo: Geometry,
    members: Vec<Option<DeviceRef>>,
    t: &SbTransition,
    meta: &mut MetaStore,
) -> Result<ArrayState> {
    let n = label.member_count();
    let k = t.removed as usize;
    if n + 1 == t.old_members as usize {
        // The labels already have the new member table.
        if t.phase != PHASE_DONE {
            return Err(Error::corrupt(format!(
                "labels list {n} members but the removal of member {k} is still moving data"
            )));
        }
        return Ok(ArrayState {
            geo,
            members,
            transition: None,
        });
    }
    if n != t.old_members as usize || k >= n {
        return Err(Error::corrupt(format!(
            "a removal of member {k} of {} is recorded but the labels list {n}",
            t.old_members
        )));
    }
    let new = without(&geo, k);
    if t.phase == PHASE_EVACUATE {
        meta.data
            .set_limit(Some(label.chunk().whole(new.capacity())));
        return Ok(ArrayState {
            geo,
            members,
            transition: None,
        });
    }
    let transition = match (&members[k], t.phase) {
        (Some(dev), phase) => Some(Transition {
            kind: shrink_kind(&geo, k, dev.clone()),
            pos: if phase == PHASE_DONE { 0 } else { t.pos },
        }),
        // Everything has moved: the member table changes without it.
        (None, PHASE_DONE) => None,
        (None, _) => {
            return Err(Error::Unavailable(format!(
                "member {k} is being removed and its data is not all moved yet: attach it (uuid {}) to open the pool",
                uuid::Uuid::from_bytes(label.members[k].uuid)
            )))
        }
    };
    Ok(ArrayState {
        transition,
        members: without_member(&members, k),
        geo: new,
    })
}

impl Pool {
    /// Start removing member `k`: its data (and, on striped levels, every
    /// member's) is moved by the background job (see [`Pool::job`]).
    pub fn remove_member(&self, k: usize) -> Result<String> {
        let _ops = self.s.ops.lock();
        let label = self.label();
        let thin = &self.s.thin;
        let name = self.name();
        let n = label.member_count();
        if thin.meta.read().transition().is_some() {
            return Err(Error::InUse(format!(
                "pool '{name}' is still moving data for its last change; remove the member when `vpool pool status {name}` shows no job"
            )));
        }
        let state = thin.array.state();
        let Some(Some(dev)) = state.members.get(k).cloned() else {
            return Err(Error::Invalid(format!(
                "pool '{name}' is degraded or has no member {k}; a missing member cannot be removed this way"
            )));
        };
        if state.members.iter().any(|m| m.is_none()) {
            return Err(Error::Invalid(format!(
                "pool '{name}' is degraded; bring back or replace the missing member first"
            )));
        }
        let level = label.level;
        if level == RaidLevel::Raid5 {
            return Err(Error::Invalid(format!(
                "pool '{name}' is raid5: removing a member would need a restripe onto fewer members, which vpool does not do yet; to take a disk out, fail and replace it"
            )));
        }
        if n <= level.min_members() {
            return Err(Error::Invalid(format!(
                "pool '{name}' ({level}) has {n} member(s), the fewest it can have"
            )));
        }
        let old = state.geo.clone();
        let new = without(&old, k);
        let cs = label.chunk();
        let new_chunks = cs.whole(new.capacity());
        let used = thin.meta.read().data.used();
        if used > new_chunks {
            return Err(Error::NoSpace {
                pool: name.clone(),
                detail: format!(
                    "{} is in use and the pool without {} holds {}; free {} (remove snapshots or volumes, or trim filesystems) or add a member first",
                    format_size(cs.span(used)),
                    dev.name(),
                    format_size(cs.span(new_chunks)),
                    format_size(cs.span(used - new_chunks))
                ),
            });
        }
        let rows = old.member_data[0] / old.stripe_unit;
        if level == RaidLevel::Raid0 && rows < (n * n) as u64 {
            return Err(Error::Invalid(format!(
                "pool '{name}' is too small to restripe ({rows} stripe rows, {} needed); recreate it on larger members or with a smaller --stripe-unit",
                n * n
            )));
        }
        let _gate = thin.exclusive();
        thin.commit_locked()?;
        {
            let mut meta = thin.meta.write();
            meta.data.set_limit(Some(new_chunks));
            meta.set_transition(Some(SbTransition {
                kind: TRANSITION_SHRINK,
                old_members: n as u32,
                removed: k as u32,
                pos: 0,
                phase: PHASE_EVACUATE,
                backup_offset: 0,
                backup_len: 0,
                backup_copy: 0,
            }));
        }
        thin.commit_locked()?;
        Ok(format!(
            "removing {} from pool '{name}': its data moves to the other members; the pool shrinks to {}",
            dev.name(),
            format_size(cs.span(new_chunks))
        ))
    }

    /// (kind, done, total) of a shrink, for [`Pool::job`].
    pub(super) fn shrink_progress(&self, t: &SbTransition) -> (&'static str, u64, u64) {
        let thin = &self.s.thin;
        let cs = thin.chunk_size;
        match t.phase {
            PHASE_EVACUATE => {
                let limit = thin.meta.read().data.limit().unwrap_or(u64::MAX);
                let left = cs.span(thin.used_past(limit));
                ("evacuate", t.pos, t.pos + left)
            }
            _ => {
                let st = thin.array.state();
                let top = st.geo.capacity();
                let bottom = match &st.transition {
                    Some(Transition {
                        kind: TransitionKind::Shrink { old, removed, .. },
                        ..
                    }) => floor(old, *removed).min(top),
                    _ => top,
                };
                let pos = if t.phase == PHASE_DONE { bottom } else { t.pos };
                ("remove", top - pos.max(bottom), top - bottom)
            }
        }
    }

    /// One step of a shrink; returns the bytes it moved. Gate held.
    pub(super) fn shrink_step(
        &self,
        st: &ArrayState,
        mut sbt: SbTransition,
        max_bytes: u64,
    ) -> Result<u64> {
        let thin = &self.s.thin;
        let cs = thin.chunk_size;
        let k = sbt.removed as usize;
        match sbt.phase {
            PHASE_EVACUATE => {
                let old = st.geo.clone();
                let new = without(&old, k);
                let limit = cs.whole(new.capacity());
                // Each step walks every mapping tree once: move a batch.
                let batch = cs.whole(max_bytes).max(EVACUATE_MIN_BATCH) as usize;
                let ev = thin.evacuate_step(limit, batch)?;
                sbt.pos += cs.span(ev.moved);
                if ev.left > 0 {
                    thin.meta.write().set_transition(Some(sbt));
                    thin.commit_locked()?;
                    return Ok(cs.span(ev.moved));
                }
                // Everything lives below the new capacity: start moving down.
                let dev = st.members[k]
                    .clone()
                    .ok_or_else(|| Error::Unavailable("the leaving member is missing".into()))?;
                let bottom = floor(&old, k);
                let top = new.capacity();
                sbt.phase = if bottom >= top {
                    PHASE_DONE
                } else {
                    PHASE_MAIN
                };
                sbt.pos = top;
                {
                    let mut meta = thin.meta.write();
                    meta.data.set_limit(None);
                    meta.shrink_data(limit);
                    meta.set_transition(Some(sbt));
                }
                thin.array.set_state(ArrayState {
                    transition: Some(Transition {
                        kind: shrink_kind(&old, k, dev),
                        pos: if sbt.phase == PHASE_DONE { 0 } else { top },
                    }),
                    members: without_member(&st.members, k),
                    geo: new,
                });
                thin.commit_locked()?;
                Ok(cs.span(ev.moved))
            }
            PHASE_MAIN | PHASE_BACKUP => {
                let Some(Transition {
                    kind: TransitionKind::Shrink { old, dev, .. },
                    ..
                }) = &st.transition
                else {
                    return Err(Error::corrupt(
                        "array and metadata disagree on the member removal",
                    ));
                };
                if sbt.phase == PHASE_BACKUP {
                    return self.shrink_last_rows(old, &dev.0, sbt);
                }
                self.restripe_down(st, old, &dev.0, sbt, max_bytes)
            }
            _ => {
                self.finish_remove(st, sbt)?;
                Ok(0)
            }
        }
    }

    /// Move one step of data from the old layout to the new one, downwards.
    fn restripe_down(
        &self,
        st: &ArrayState,
        old: &Geometry,
        dev: &DeviceRef,
        mut sbt: SbTransition,
        max_bytes: u64,
    ) -> Result<u64> {
        let thin = &self.s.thin;
        let k = sbt.removed as usize;
        let new = &st.geo;
        let a2 = sbt.pos;
        let bottom = floor(old, k);
        let a1 = match old.level {
            RaidLevel::Raid0 => {
                let (ow, nw) = (old.stripe_width(), new.stripe_width());
                let r2 = a2 / nw;
                // The rule: r1 * ow >= r2 * nw (old rows overwritten are moved).
                let r1 = (r2 * nw)
                    .div_ceil(ow)
                    .max(r2.saturating_sub((max_bytes / nw).max(1)));
                if r1 >= r2 {
                    return self.shrink_last_rows(old, dev, sbt);
                }
                r1 * nw
            }
            _ => {
                // Linear: new address a is old address a + size of the leaving
                // member, so a step may span at most that many bytes.
                let step = max_bytes.min(old.member_data[k]).max(1);
                a2.saturating_sub(step).max(bottom)
            }
        };
        let mut buf = vec![0u8; (a2 - a1) as usize];
        read_used(thin, a1, a2, &mut buf)?;
        thin.array.set_transition(Some(Transition {
            kind: shrink_kind(old, k, dev.clone()),
            pos: a1,
        }));
        thin.array
            .write(a1, &buf)
            .map_err(io("writing restriped rows"))?;
        sbt.pos = a1;
        if a1 <= bottom {
            sbt.phase = PHASE_DONE;
        }
        thin.meta.write().set_transition(Some(sbt));
        thin.commit_locked()?;
        Ok(a2 - a1)
    }

    /// raid0's last rows (below `n`): through a copy on the leaving member,
    /// whose rows from `n` on hold nothing live any more.
    fn shrink_last_rows(
        &self,
        old: &Geometry,
        dev: &DeviceRef,
        mut sbt: SbTransition,
    ) -> Result<u64> {
        let thin = &self.s.thin;
        let k = sbt.removed as usize;
        let len = if sbt.phase == PHASE_BACKUP {
            sbt.backup_len
        } else {
            sbt.pos
        };
        let mut buf = vec![0u8; len as usize];
        if sbt.phase == PHASE_BACKUP {
            dev.read_at(&mut buf, sbt.backup_offset)
                .map_err(io("reading the saved last rows"))?;
        } else {
            read_used(thin, 0, len, &mut buf)?;
            let at = old.data_start + old.members() as u64 * old.stripe_unit;
            dev.write_at(&buf, at).map_err(io("saving the last rows"))?;
            dev.flush().map_err(io("saving the last rows"))?;
            sbt.phase = PHASE_BACKUP;
            sbt.backup_offset = at;
            sbt.backup_len = len;
            thin.meta.write().set_transition(Some(sbt));
            thin.commit_locked()?;
        }
        thin.array.set_transition(Some(Transition {
            kind: shrink_kind(old, k, dev.clone()),
            pos: 0,
        }));
        thin.array
            .write(0, &buf)
            .map_err(io("writing the last rows"))?;
        sbt.phase = PHASE_DONE;
        sbt.pos = 0;
        thin.meta.write().set_transition(Some(sbt));
        thin.commit_locked()?;
        Ok(len)
    }

    /// The data is in the new layout: new metadata copy, labels, member
    /// table, and the end of the transition.
    fn finish_remove(&self, st: &ArrayState, sbt: SbTransition) -> Result<()> {
        let thin = &self.s.thin;
        let k = sbt.removed as usize;
        let label = self.label();
        if label.member_count() == sbt.old_members as usize {
            let new_label = self.move_metadata_copies(&label, k, &st.members)?;
            for (i, d) in st.members.iter().enumerate() {
                if let Some(d) = d {
                    write_label(d, &new_label.for_member(i, d.size()))?;
                }
            }
            // The leaving member (if still attached) keeps a label that says
            // it is free to reuse.
            if let Some(Transition {
                kind: TransitionKind::Shrink { dev, .. },
                ..
            }) = &st.transition
            {
                let mut l = label.for_member(k, dev.0.size());
                l.state = PoolState::Destroyed;
                if let Err(e) = write_label(&dev.0, &l) {
                    tracing::warn!("{}: label not marked free ({e})", dev.0.name());
                }
            }
            *self.s.label.write() = new_label;
        }
        {
            let mut meta = thin.meta.write();
            if meta.member_states().len() == sbt.old_members as usize {
                meta.remove_member_state(k);
            }
            meta.set_transition(None);
        }
        thin.array.set_state(ArrayState {
            geo: st.geo.clone(),
            members: st.members.clone(),
            transition: None,
        });
        thin.commit_locked()
    }

    /// The label for the members left after removing `k`, with the
    /// metadata area copied first to any member that becomes a copy holder.
    fn move_metadata_copies(
        &self,
        label: &Label,
        k: usize,
        members: &[Option<DeviceRef>],
    ) -> Result<Label> {
        let thin = &self.s.thin;
        let mut new_label = label.clone();
        new_label.members.remove(k);
        new_label.generation += 1;
        let old_copies = label.meta_copies as usize;
        let copies = new_label.members.len().min(MAX_META_COPIES);
        new_label.meta_copies = copies as u32;
        let mut meta = thin.meta.write();
        for (j, d) in members.iter().enumerate().take(copies) {
            let old_index = if j < k { j } else { j + 1 };
            let Some(d) = d else { continue };
            if old_index < old_copies {
                continue;
            }
            copy_metadata_area(&meta, label.meta_offset, d)?;
        }
        meta.set_mirror(MetaMirror::new(
            (0..copies).map(|j| (j, members[j].clone())).collect(),
        ));
        Ok(new_label)
    }
}
