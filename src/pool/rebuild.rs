//! Member failure and rebuild: `pool fail` (as `mdadm --fail`), `pool
//! replace` (a new device takes a failed member's place and is rebuilt
//! from the others in the background), `pool clear` (reset error counters;
//! a failed member that is back is rebuilt in place).
//!
//! A rebuild is a transition of kind REBUILD with a checkpoint `pos`: array
//! bytes below it are in sync on the new member, the rest are served from
//! redundancy (raid5 reconstructs the member's units, writes skip it).
//! Each step rebuilds the stripe rows of the chunks in use in the next
//! range (a thin pool rebuilds only what it stores) and moves `pos`, which
//! the next commit records (every commit flushes the new member first; the
//! rebuild forces one every `CHECKPOINT_BYTES`); a crash resumes from the
//! last recorded `pos`. The replacement holds a
//! metadata copy only once the rebuild ends: until then it is left out of
//! the metadata mirror, and its copy is written last.

use super::create::{read_label, write_label};
use super::layout::member_data;
use super::reshape::io;
use super::Pool;
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::meta::label::{Label, PoolState};
use crate::raid::{ArrayState, MetaMirror, RaidLevel, Transition, TransitionKind};
use crate::thin::store::superblock::{
    SbTransition, Superblock, MEMBER_FAILED, MEMBER_ONLINE, MEMBER_REBUILDING, MEMBER_STALE,
    PHASE_MAIN, TRANSITION_REBUILD,
};
use crate::thin::store::MetaStore;

/// Array bytes a rebuild moves between committed checkpoints.
const CHECKPOINT_BYTES: u64 = 256 << 20;

/// Copy the whole metadata area from a live copy to `dest`, durably.
/// Caller holds the metadata lock for write (no block changes meanwhile).
pub(super) fn copy_metadata_area(
    meta: &MetaStore,
    meta_offset: u64,
    dest: &DeviceRef,
) -> Result<()> {
    let area = meta.layout().area_bytes();
    let mirror = meta.mirror();
    let health = mirror.health().clone();
    // Copies of members in service, the one on a device being replaced
    // last: that device may have failed unnoticed (nothing wrote it since),
    // and a copy that cannot be read gives way to the next.
    let mut sources: Vec<(usize, DeviceRef)> = mirror
        .copies()
        .iter()
        .filter(|(m, _)| !health.is_failed(*m))
        .filter_map(|(m, d)| Some((*m, d.clone()?)))
        .collect();
    sources.sort_by_key(|(m, _)| Some(*m) == mirror.shadow());
    let mut unread = Error::Unavailable("no metadata copy present".into());
    let mut buf = vec![0u8; 1 << 20];
    'source: for (_, source) in sources {
        let mut off = 0;
        while off < area {
            let n = (area - off).min(buf.len() as u64) as usize;
            let at = meta_offset + off;
            if let Err(e) = source.read_at(&mut buf[..n], at) {
                unread = Error::io("reading the metadata area", e);
                continue 'source;
            }
            dest.write_at(&buf[..n], at)
                .map_err(io("copying the metadata area"))?;
            off += n as u64;
        }
        return dest.flush().map_err(io("copying the metadata area"));
    }
    Err(unread)
}

/// Zero both superblock slots of `dev`, durably.
fn clear_superblocks(dev: &DeviceRef, meta_offset: u64) -> Result<()> {
    let zero = vec![0u8; crate::meta::codec::BLOCK_SIZE];
    for slot in 0..2 {
        dev.write_at(&zero, Superblock::slot_offset(meta_offset, slot))
            .map_err(io("clearing the new member's superblocks"))?;
    }
    dev.flush()
        .map_err(io("clearing the new member's superblocks"))
}

/// The metadata copies of a pool: members `0..copies`, leaving out a
/// member being rebuilt (its area is written when the rebuild ends).
pub(crate) fn mirror_for(
    label: &Label,
    members: &[Option<DeviceRef>],
    rebuilding: Option<usize>,
) -> MetaMirror {
    MetaMirror::new(
        (0..label.meta_copies as usize)
            .map(|i| (i, members[i].clone().filter(|_| Some(i) != rebuilding)))
            .collect(),
    )
}

/// The record of a rebuild of member `k` onto the member whose uuid is
/// `target` (kept in the two backup fields, unused by rebuilds).
fn rebuild_record(k: usize, n: usize, target: [u8; 16]) -> SbTransition {
    let half = |r: std::ops::Range<usize>| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&target[r]);
        u64::from_le_bytes(b)
    };
    SbTransition {
        kind: TRANSITION_REBUILD,
        old_members: n as u32,
        removed: k as u32,
        pos: 0,
        phase: PHASE_MAIN,
        backup_offset: half(0..8),
        backup_len: half(8..16),
        backup_copy: 0,
    }
}

/// The member uuid a rebuild record names (see [`rebuild_record`]).
pub(crate) fn rebuild_target(t: &SbTransition) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[..8].copy_from_slice(&t.backup_offset.to_le_bytes());
    u[8..].copy_from_slice(&t.backup_len.to_le_bytes());
    u
}

impl Pool {
    /// The member whose device is at `path` (present, or failed while this
    /// process served it).
    pub fn member_by_path(&self, path: &std::path::Path) -> Option<usize> {
        let abs = crate::state::absolute(path);
        let same = |d: &DeviceRef| crate::state::absolute(std::path::Path::new(&d.name())) == abs;
        let devs = self.member_devices();
        (0..devs.len()).find(|&i| {
            devs[i].as_ref().is_some_and(same)
                || self.s.thin.array.failed_device(i).is_some_and(|d| same(&d))
        })
    }

    /// Members not in service (missing, stale or failed).
    pub fn members_out(&self) -> Vec<usize> {
        let devs = self.member_devices();
        (0..devs.len())
            .filter(|&i| devs[i].is_none() || self.s.thin.array.health().is_failed(i))
            .collect()
    }

    pub(super) fn redundant_or_refuse(&self, what: &str) -> Result<RaidLevel> {
        let level = self.label().level;
        if level.tolerated_failures(self.label().member_count()) == 0 {
            return Err(Error::Invalid(format!(
                "pool '{}' is {level}: it has no redundancy to {what}; `vpool pool remove` moves data off a member instead",
                self.name()
            )));
        }
        Ok(level)
    }

    /// Mark member `k` failed by hand (`pool fail`, as `mdadm --fail`):
    /// the pool runs degraded without it until it is replaced or cleared.
    pub fn fail_member(&self, k: usize) -> Result<String> {
        let _ops = self.s.ops.lock();
        self.redundant_or_refuse("lose a member")?;
        let name = self.name();
        let thin = &self.s.thin;
        let dev = thin.array.members().get(k).cloned().flatten();
        let health = thin.array.health();
        let Some(dev) = dev.filter(|_| !health.is_failed(k)) else {
            return Err(Error::Invalid(format!(
                "member {k} of pool '{name}' is already out of service"
            )));
        };
        let sbt = thin.meta.read().transition();
        let rebuilding_k =
            sbt.is_some_and(|t| t.kind == TRANSITION_REBUILD && t.removed as usize == k);
        if sbt.is_some() && !rebuilding_k {
            return Err(Error::InUse(format!(
                "pool '{name}' is changing its layout; fail a member when `vpool pool status {name}` shows no job"
            )));
        }
        if !rebuilding_k && !health.may_fail(k) {
            return Err(Error::Invalid(format!(
                "pool '{name}' would lose data without {}: other members are already out of service ({}); replace them first",
                dev.name(),
                self.members_out()
                    .iter()
                    .map(|i| format!("member {i}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let _gate = thin.exclusive();
        thin.array.fail_member(k, "failed by `vpool pool fail`");
        if rebuilding_k {
            thin.meta.write().set_transition(None);
            thin.array.set_transition(None);
            thin.array.set_replacing(None);
        }
        thin.commit_locked()?;
        Ok(format!(
            "member {k} ({}) of pool '{name}' is failed; the pool runs degraded: `vpool pool replace {name} {} NEW-DEVICE` rebuilds onto a new device",
            dev.name(),
            dev.name()
        ))
    }

    /// Put `dev` in place of member `k` and start rebuilding it. A member
    /// still in service keeps serving the rows not yet rebuilt (md's
    /// `--replace`): the pool keeps its redundancy throughout.
    pub fn replace_member(
        &self,
        k: usize,
        dev: DeviceRef,
        force: bool,
    ) -> Result<(String, Vec<String>)> {
        let mut warnings = Vec::new();
        let geo = self.s.thin.array.geometry();
        let need = geo.member_data.get(k).copied().unwrap_or(0);
        self.check_new_device(&dev, need, force)?;
        if let Some(msg) = self.replace_unstarted_new_member(k, &dev)? {
            self.s.spares.lock().retain(|s| s.name() != dev.name());
            return Ok((msg, warnings));
        }
        let thin = &self.s.thin;
        let old = if self.members_out().contains(&k) {
            None
        } else {
            self.redundant_or_refuse("replace a member of")?;
            if thin.meta.read().transition().is_some() {
                return Err(Error::InUse(format!(
                    "pool '{}' is changing its layout; replace a member when `vpool pool status {}` shows no job",
                    self.name(),
                    self.name()
                )));
            }
            let old = thin.array.members().get(k).cloned().flatten();
            if let Some(o) = &old {
                warnings.push(format!(
                    "member {k} ({}) is in service: it keeps serving until its rows are rebuilt onto {}, so the pool keeps its redundancy (also after a restart, when {} is among the devices)",
                    o.name(),
                    dev.name(),
                    o.name()
                ));
            }
            old
        };
        let mut new_label = self.label();
        new_label.members[k].uuid = *uuid::Uuid::new_v4().as_bytes();
        new_label.generation += 1;
        self.s.spares.lock().retain(|s| s.name() != dev.name());
        let msg = self.start_rebuild_replacing(k, dev, Some(new_label), old)?;
        Ok((msg, warnings))
    }

    /// Refuse a device that is a member, belongs to another pool (unless
    /// `force`), or holds fewer than `need` data bytes.
    pub(super) fn check_new_device(&self, dev: &DeviceRef, need: u64, force: bool) -> Result<()> {
        let name = self.name();
        if self
            .member_devices()
            .iter()
            .flatten()
            .any(|m| m.name() == dev.name())
        {
            return Err(Error::Exists(format!(
                "{} is already a member of pool '{name}'",
                dev.name()
            )));
        }
        let label = self.label();
        if let Ok(l) = read_label(dev) {
            let ours = l.pool_uuid == label.pool_uuid;
            if ours && label.members.iter().any(|m| m.uuid == l.member_uuid) {
                return Err(Error::Exists(format!(
                    "{} is already a member of pool '{name}'",
                    dev.name()
                )));
            }
            let reusable = l.state == PoolState::Destroyed || (ours && l.state == PoolState::Spare);
            if !reusable && !ours && !force {
                return Err(Error::InUse(format!(
                    "{} belongs to pool '{}'; destroy that pool first or pass --force to overwrite it",
                    dev.name(),
                    l.pool_name
                )));
            }
        }
        let geo = self.s.thin.array.geometry();
        if member_data(dev.size(), geo.data_start, geo.stripe_unit) < need {
            return Err(Error::Invalid(format!(
                "{} ({}) is smaller than the members of '{name}' need: use a device of at least {}",
                dev.name(),
                crate::units::size_exact(dev.size()),
                crate::units::size_exact(
                    geo.data_start + need + crate::meta::codec::BLOCK_SIZE as u64
                )
            )));
        }
        Ok(())
    }

    /// Reset member `k`'s error counters (`pool clear`). A member out of
    /// service whose device is still attached is rebuilt in place.
    pub fn clear_member(&self, k: usize) -> Result<String> {
        let name = self.name();
        let thin = &self.s.thin;
        thin.array.health().clear_errors(k);
        if !self.members_out().contains(&k) {
            return Ok(format!(
                "error counters of member {k} of pool '{name}' reset"
            ));
        }
        let Some(dev) = thin.array.failed_device(k) else {
            return Err(Error::Unavailable(format!(
                "member {k} of pool '{name}' is missing: attach its device and restart, or `vpool pool replace {name}` it"
            )));
        };
        self.redundant_or_refuse("rebuild from")?;
        let msg = self.start_rebuild(k, dev, None)?;
        Ok(format!("error counters reset; {msg}"))
    }

    /// Record the rebuild of member `k` onto `dev` (by its member uuid),
    /// then give `dev` the member's label (with `new_label`'s member table
    /// when it is a new device). A crash in between leaves a record whose
    /// uuid no label carries yet: assembly then leaves member `k` out (the
    /// old device is never rebuilt onto by mistake), and `pool replace`
    /// starts over.
    fn start_rebuild(&self, k: usize, dev: DeviceRef, new_label: Option<Label>) -> Result<String> {
        self.start_rebuild_replacing(k, dev, new_label, None)
    }

    /// Start rebuilding member `k` onto `dev`; `old`, if given, is the
    /// member's current device, which serves the rows not yet rebuilt.
    fn start_rebuild_replacing(
        &self,
        k: usize,
        dev: DeviceRef,
        new_label: Option<Label>,
        old: Option<DeviceRef>,
    ) -> Result<String> {
        let _ops = self.s.ops.lock();
        let name = self.name();
        let thin = &self.s.thin;
        if thin
            .meta
            .read()
            .transition()
            .is_some_and(|t| t.kind != TRANSITION_REBUILD)
        {
            return Err(Error::InUse(format!(
                "pool '{name}' is changing its layout; wait for `vpool pool status {name}` to show no job"
            )));
        }
        let level = self.redundant_or_refuse("rebuild from")?;
        let others_out = self.members_out().into_iter().filter(|&i| i != k).count();
        let n = self.label().member_count();
        if others_out > 0 && (level == RaidLevel::Raid5 || others_out + 1 >= n) {
            return Err(Error::Unavailable(format!(
                "pool '{name}' has other members out of service: nothing left to rebuild member {k} from"
            )));
        }
        let label = new_label.unwrap_or_else(|| self.label());
        let _gate = thin.exclusive();
        thin.commit_locked()?;
        let sbt = rebuild_record(k, n, label.members[k].uuid);
        let rebuild = Transition {
            kind: TransitionKind::Rebuild { member: k },
            pos: 0,
        };
        {
            let mut meta = thin.meta.write();
            meta.set_transition(Some(sbt));
            meta.set_member_state(k, MEMBER_REBUILDING);
            // A member replaced in service keeps its metadata copy (it is
            // current) until the new device gets one at the end.
            let leave_out = if old.is_some() { None } else { Some(k) };
            let mut mirror = mirror_for(&self.label(), &thin.array.members(), leave_out);
            if old.is_some() {
                mirror.set_shadow(k);
            }
            meta.set_mirror(mirror);
            // After a restart the old device serves again, found by its
            // label (`Pool::open`), until it fails.
            meta.set_replacing(old.is_some());
        }
        thin.array.set_replacing(old.clone());
        thin.array.set_transition(Some(rebuild.clone()));
        thin.commit_locked()?;
        // Its copy is written when the rebuild ends; until then no
        // superblock of an earlier life (a former member reused) may be
        // taken for the pool's newest (`Pool::open`).
        clear_superblocks(&dev, label.meta_offset)?;
        write_label(&dev, &label.for_member(k, dev.size()))?;
        for (i, d) in thin.array.members().iter().enumerate() {
            if let (Some(d), true) = (d, i != k) {
                write_label(d, &label.for_member(i, d.size()))?;
            }
        }
        *self.s.label.write() = label;
        let shown = dev.name();
        thin.array.replace_member(k, dev, Some(rebuild));
        Ok(format!(
            "rebuilding member {k} of pool '{name}' onto {shown} in the background"
        ))
    }

    /// (bytes done, bytes in all) of a rebuild.
    pub(super) fn rebuild_progress(&self, sbt: &SbTransition) -> (u64, u64) {
        (sbt.pos, self.s.thin.array.capacity())
    }

    /// One step of a rebuild: the rows of the chunks in use in the next
    /// `max_bytes` of the array. Returns the bytes rebuilt.
    pub(super) fn rebuild_step(
        &self,
        st: &ArrayState,
        mut sbt: SbTransition,
        max_bytes: u64,
    ) -> Result<u64> {
        let thin = &self.s.thin;
        let k = sbt.removed as usize;
        let geo = &st.geo;
        let cs = thin.chunk_size;
        let total = geo.capacity();
        let width = geo.stripe_width();
        let target = st.members[k]
            .clone()
            .ok_or_else(|| Error::Unavailable(format!("member {k}, being rebuilt, is missing")))?;
        // A step covers `max_bytes` of chunks in use (free ranges are
        // skipped, not counted) and ends on a stripe row, so no row is half
        // in sync.
        let from = sbt.pos;
        let to = {
            let meta = thin.meta.read();
            let (mut c, mut used) = (cs.chunk_of(from), 0);
            while cs.start(c) < total && used < max_bytes.max(cs.bytes()) {
                if meta.data.in_use(crate::units::Chunk(c)) {
                    used += cs.bytes();
                }
                c += 1;
            }
            cs.start(c).div_ceil(width).saturating_mul(width).min(total)
        };
        let mut moved = 0;
        let mut c = cs.chunk_of(from);
        while cs.start(c) < to {
            if !thin.meta.read().data.in_use(crate::units::Chunk(c)) {
                c += 1;
                continue;
            }
            let start = c;
            while cs.start(c) < to && thin.meta.read().data.in_use(crate::units::Chunk(c)) {
                c += 1;
            }
            let (a0, a1) = (cs.start(start).max(from), cs.start(c).min(to));
            let (r0, r1) = (a0 / width, a1.div_ceil(width));
            let unit = match geo.level {
                RaidLevel::Raid1 => width,
                _ => geo.stripe_unit,
            };
            let mut m0 = geo.data_start + r0 * unit;
            let m1 = (geo.data_start + r1 * unit).min(geo.data_start + geo.member_data[k]);
            while m0 < m1 {
                let len = (m1 - m0).min(4 << 20);
                thin.array
                    .rebuild(k, m0, len as usize)
                    .map_err(io("rebuilding"))?;
                m0 += len;
            }
            moved += a1 - a0;
        }
        if thin.array.health().is_failed(k) {
            return Err(Error::Unavailable(format!(
                "the new member {k} ({}) failed during its rebuild; replace it with another device",
                target.name()
            )));
        }
        sbt.pos = to;
        if to >= total {
            self.finish_rebuild(k, &target)?;
        } else {
            // Any commit (this one, a client's flush, the background one)
            // flushes the new member before it records `pos`, so the
            // checkpoint need not be committed every step; a crash redoes
            // at most CHECKPOINT_BYTES.
            let committed = thin.meta.read().committed().transition.map_or(0, |t| t.pos);
            thin.meta.write().set_transition(Some(sbt));
            thin.array.set_transition(Some(Transition {
                kind: TransitionKind::Rebuild { member: k },
                pos: to,
            }));
            if to - committed.min(to) >= CHECKPOINT_BYTES {
                thin.commit_locked()?;
            }
        }
        Ok(moved)
    }

    /// Every row is in sync: the member gets its metadata copy (if it
    /// holds one) and goes back in service.
    fn finish_rebuild(&self, k: usize, target: &DeviceRef) -> Result<()> {
        let thin = &self.s.thin;
        let label = self.label();
        {
            let mut meta = thin.meta.write();
            if k < label.meta_copies as usize {
                copy_metadata_area(&meta, label.meta_offset, target)?;
            }
            let mirror = mirror_for(&label, &thin.array.members(), None);
            meta.set_mirror(mirror);
            meta.set_transition(None);
            meta.set_member_state(k, MEMBER_ONLINE);
        }
        thin.array.set_transition(None);
        thin.array.set_replacing(None);
        thin.commit_locked()
    }
}

/// Whether a member in `state` is kept out of service at assembly.
pub(crate) fn out_of_service(state: Option<&u8>) -> Option<&'static str> {
    match state {
        Some(&MEMBER_STALE) => Some("stale: it was missing while the pool was written"),
        Some(&MEMBER_FAILED) => Some("failed (I/O errors or `vpool pool fail`)"),
        _ => None,
    }
}
