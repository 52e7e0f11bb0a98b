//! Adding a member to a pool online (`pool add`): a linear pool just gains
//! the space; a raid1 pool gains a mirror that is resynced in the
//! background; raid0 and raid5 pools are restriped onto the new member in
//! the background (see `reshape`). The member table lives in every label; a
//! change bumps the labels' generation, and the newest table wins at
//! assembly, so a crash halfway through rewriting labels is harmless.

use super::create::write_label;
use super::layout::{member_data, META_BYTES_PER_CHUNK};
use super::Pool;
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::meta::codec::BLOCK_SIZE;
use crate::meta::label::{Label, MemberEntry, MAX_MEMBERS};
use crate::raid::{ArrayState, Geometry, RaidLevel, Transition, TransitionKind};
use crate::thin::store::superblock::{
    SbTransition, PHASE_START, TRANSITION_REBUILD, TRANSITION_RESTRIPE, TRANSITION_RESYNC,
    TRANSITION_SHRINK,
};
use crate::thin::store::MetaStore;
use crate::units::{format_size, size_exact};

/// The layout the first `n` members had before a member was added.
pub(crate) fn old_geometry(geo: &Geometry, n: usize) -> Geometry {
    Geometry {
        member_data: geo.member_data[..n].to_vec(),
        ..geo.clone()
    }
}

/// Rows of the new member needed at the start of a restripe: the first
/// rows of the new layout overwrite old rows whose data has not moved yet,
/// so they are copied to the new member first (see `reshape`).
pub(crate) fn backup_rows(old: &Geometry) -> u64 {
    let d = old.data_members();
    d + d * (d + 1)
}

fn transition_of(t: &SbTransition, geo: &Geometry) -> Transition {
    let kind = if t.kind == TRANSITION_RESYNC {
        TransitionKind::Resync {
            member: t.old_members as usize,
        }
    } else {
        TransitionKind::Restripe {
            old: old_geometry(geo, t.old_members as usize),
        }
    };
    Transition { kind, pos: t.pos }
}

fn start_transition(level: RaidLevel, old_members: usize) -> Option<SbTransition> {
    let kind = match level {
        RaidLevel::Linear => return None,
        RaidLevel::Raid1 => TRANSITION_RESYNC,
        RaidLevel::Raid0 | RaidLevel::Raid5 => TRANSITION_RESTRIPE,
    };
    Some(SbTransition {
        kind,
        old_members: old_members as u32,
        pos: 0,
        phase: PHASE_START,
        removed: 0,
        backup_offset: 0,
        backup_len: 0,
        backup_copy: 0,
    })
}

/// The array state to open with: the recorded transition, or the one a
/// `pool add` interrupted before its first commit left behind (labels list
/// more members than the superblock knows).
pub(crate) fn resume_state(
    label: &Label,
    geo: Geometry,
    members: Vec<Option<crate::device::DeviceRef>>,
    meta: &mut MetaStore,
    warnings: &mut Vec<String>,
) -> Result<ArrayState> {
    let n = label.member_count();
    let known = meta.committed().member_states.len();
    let mut t = meta.transition();
    if let Some(t) = t.filter(|t| t.kind == TRANSITION_REBUILD) {
        let k = t.removed as usize;
        if t.old_members as usize != n {
            return Err(Error::corrupt(format!(
                "a rebuild of member {k} of {} is recorded but the labels list {n}",
                t.old_members
            )));
        }
        if members[k].is_none() {
            warnings.push(format!(
                "member {k}, being rebuilt, is missing: the rebuild waits until it is attached (or `vpool pool replace` it)"
            ));
        }
        return Ok(ArrayState {
            geo,
            members,
            transition: Some(Transition {
                kind: TransitionKind::Rebuild { member: k },
                pos: t.pos,
            }),
        });
    }
    if let Some(t) = t.filter(|t| t.kind == TRANSITION_SHRINK) {
        if members.iter().any(|m| m.is_none()) {
            warnings.push(
                "a member is missing while a member is being removed: the removal waits until every member is present"
                    .into(),
            );
        }
        return super::shrink::resume_shrink(label, geo, members, &t, meta);
    }
    if t.is_none() && known < n && known > 0 {
        warnings.push(format!(
            "an interrupted `pool add` ({known} to {n} members) is taken up again"
        ));
        if n - known != 1 && label.level != RaidLevel::Linear {
            return Err(Error::corrupt(format!(
                "labels list {n} members, the metadata {known}: only one member is added at a time"
            )));
        }
        meta.set_member_count(n);
        t = start_transition(label.level, known);
        meta.set_transition(t);
    }
    if let Some(t) = &t {
        if t.old_members as usize + 1 != n {
            return Err(Error::corrupt(format!(
                "a transition from {} members is recorded but the labels list {n}",
                t.old_members
            )));
        }
        if members.iter().any(|m| m.is_none()) {
            warnings.push(
                "a member is missing while the pool changes layout: the change waits until every member is present"
                    .into(),
            );
        }
    } else {
        // Linear growth is immediate; make sure the space is there.
        meta.grow_data(label.chunk().whole(geo.capacity()));
    }
    let transition = t.as_ref().map(|t| transition_of(t, &geo));
    Ok(ArrayState {
        geo,
        members,
        transition,
    })
}

impl Pool {
    /// Add `dev` as a new member. Linear pools grow at once; raid1, raid0 and
    /// raid5 start a background job (see [`Pool::job`]). Returns what
    /// happened and warnings.
    pub fn add_member(&self, dev: DeviceRef, force: bool) -> Result<(String, Vec<String>)> {
        let _ops = self.s.ops.lock();
        let label = self.label();
        let thin = &self.s.thin;
        let state = thin.array.state();
        let n = label.member_count();
        let name = self.name();
        if let Some(job) = self.job() {
            return Err(Error::InUse(format!(
                "pool '{name}' is still moving data for its last change ({}, {}% done); add the next member when `vpool pool status {name}` shows no job",
                job.kind, job.percent
            )));
        }
        if state.members.iter().any(|m| m.is_none()) {
            return Err(Error::Invalid(format!(
                "pool '{name}' is degraded; bring back or replace the missing member before adding one"
            )));
        }
        if n >= MAX_MEMBERS {
            return Err(Error::Invalid(format!(
                "pool '{name}' already has the most members a pool can have ({MAX_MEMBERS})"
            )));
        }
        // Sizes are checked below, per level.
        self.check_new_device(&dev, 0, force)?;
        let geo = state.geo.clone();
        let su = geo.stripe_unit;
        let available = member_data(dev.size(), geo.data_start, su);
        let data_size = match label.level {
            RaidLevel::Linear => {
                if available < label.chunk_size {
                    return Err(Error::Invalid(format!(
                        "{} ({}) is too small: members of '{name}' keep their first {} for metadata",
                        dev.name(),
                        size_exact(dev.size()),
                        size_exact(geo.data_start)
                    )));
                }
                available
            }
            _ => {
                let need = geo.member_data[0];
                if available < need {
                    let bytes = geo.data_start + need + BLOCK_SIZE as u64;
                    return Err(Error::Invalid(format!(
                        "{} ({}) is smaller than the members of '{name}' need: use a device of at least {}",
                        dev.name(),
                        size_exact(dev.size()),
                        size_exact(bytes)
                    )));
                }
                need
            }
        };
        let mut new_geo = geo.clone();
        new_geo.member_data.push(data_size);
        if matches!(label.level, RaidLevel::Raid0 | RaidLevel::Raid5)
            && geo.member_data[0] / su < backup_rows(&geo)
        {
            return Err(Error::Invalid(format!(
                "pool '{name}' is too small to restripe ({} stripe rows, {} needed); recreate it on larger members or with a smaller --stripe-unit",
                geo.member_data[0] / su,
                backup_rows(&geo)
            )));
        }
        let mut warnings = Vec::new();
        let chunks = label.chunk().whole(new_geo.capacity());
        let meta_need = chunks * META_BYTES_PER_CHUNK / BLOCK_SIZE as u64;
        if meta_need > label.meta_blocks {
            warnings.push(format!(
                "the metadata area was sized for a smaller pool ({} blocks, {} suggested for {} chunks): heavy snapshot use will grow it from the data area (see `vpool pool set`)",
                label.meta_blocks, meta_need, chunks
            ));
        }
        if label.level == RaidLevel::Raid5
            && !label.chunk_size.is_multiple_of(new_geo.stripe_width())
        {
            warnings.push(format!(
                "after this reshape a stripe row ({}) is wider than a chunk ({}): a power cut during a small write followed by the loss of a member can then damage a neighbouring chunk of the same row (the RAID5 write hole, closed for pools whose rows match their chunks)",
                size_exact(new_geo.stripe_width()),
                size_exact(label.chunk_size)
            ));
        }
        let mut new_label = label.clone();
        new_label.members.push(MemberEntry {
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            data_size,
        });
        new_label.generation += 1;
        let _gate = thin.exclusive();
        thin.commit_locked()?;
        // The new member's label first, then the others: until the commit
        // below, assembly takes the newest table and infers the change.
        let mut devices = state.members.clone();
        devices.push(Some(dev));
        for (i, d) in devices.iter().enumerate().rev() {
            if let Some(d) = d {
                write_label(d, &new_label.for_member(i, d.size()))?;
            }
        }
        *self.s.label.write() = new_label;
        let t = start_transition(label.level, n);
        {
            let mut meta = thin.meta.write();
            meta.set_member_count(n + 1);
            meta.set_transition(t);
            if t.is_none() {
                meta.grow_data(chunks);
            }
        }
        thin.array.set_state(ArrayState {
            geo: new_geo.clone(),
            members: devices,
            transition: t.as_ref().map(|t| transition_of(t, &new_geo)),
        });
        thin.commit_locked()?;
        let size = format_size(label.chunk().span(chunks));
        let message = match label.level {
            RaidLevel::Linear => format!("pool '{name}' grew to {size}"),
            RaidLevel::Raid1 => format!("pool '{name}' has a new mirror, to be resynced"),
            _ => format!(
                "pool '{name}' is restriped onto {} members; its capacity grows to {size} as the reshape completes",
                n + 1
            ),
        };
        Ok((message, warnings))
    }
}
