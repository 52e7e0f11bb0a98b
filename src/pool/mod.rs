//! The pool facade (may use thin and below): the one entry point for
//! frontends. A [`Pool`] is a cheap
//! shared handle, safe to use from many threads; volumes are reached by name
//! and served through [`Volume`] handles.

mod assemble;
mod check;
mod create;
mod failure;
mod grow;
mod info;
mod iostat;
pub mod layout;
pub mod metaspace;
pub mod names;
mod rebuild;
mod reshape;
mod scrub;
mod shrink;
mod spare;
mod transfer;
mod volume;

pub use assemble::group_by_pool;
pub use check::CheckReport;
pub use create::{read_label, write_label, CreateOptions};
pub use info::{MemberInfo, PoolInfo, VolumeInfo};
pub use iostat::{MemberIoStats, PoolIoStats, VolumeIoStats};
pub use reshape::JobInfo;
pub use scrub::{ScrubReport, ScrubStatus};
pub use transfer::{ChangeRun, ChunkChange, SnapshotId, Transfer};
pub use volume::Volume;

use crate::error::{Error, Result};
use crate::meta::label::{Label, PoolState};
use crate::sync::RwLock;
use crate::thin::store::catalog::VolumeRecord;
use crate::thin::store::now;
use crate::thin::ThinPool;
use crate::units::{size_exact, Block};
use parking_lot::Mutex;
use std::sync::Arc;

pub(crate) struct Shared {
    /// Changes only when members are added (then under `ops`).
    label: RwLock<Label>,
    thin: ThinPool,
    warnings: RwLock<Vec<String>>,
    /// Serialises metadata operations (create, snapshot, remove...).
    ops: Mutex<()>,
    /// The background job moving data for a layout change.
    job: Mutex<reshape::JobControl>,
    /// Hot spares: labelled for this pool, used when a member fails.
    spares: Mutex<Vec<crate::device::DeviceRef>>,
    /// The running or last scrub.
    scrub: Mutex<Option<scrub::ScrubStatus>>,
    /// I/O counters of each volume handed out, by volume id (`iostat`).
    io: Mutex<std::collections::HashMap<u64, Arc<crate::device::stats::IoStats>>>,
    /// When the pool was opened: the span the counters cover.
    opened: std::time::Instant,
    /// Sends and receives running (`job list`).
    transfers: Mutex<Vec<Arc<transfer::TransferState>>>,
}

#[derive(Clone)]
pub struct Pool {
    pub(crate) s: Arc<Shared>,
}

impl Pool {
    fn from_parts(label: Label, thin: ThinPool, warnings: Vec<String>) -> Pool {
        Pool {
            s: Arc::new(Shared {
                label: RwLock::new(label),
                thin,
                warnings: RwLock::new(warnings),
                ops: Mutex::new(()),
                job: Mutex::new(reshape::JobControl::default()),
                spares: Mutex::new(Vec::new()),
                scrub: Mutex::new(None),
                io: Mutex::new(Default::default()),
                opened: std::time::Instant::now(),
                transfers: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn name(&self) -> String {
        self.s.label.read().pool_name.clone()
    }

    pub fn uuid(&self) -> uuid::Uuid {
        uuid::Uuid::from_bytes(self.s.label.read().pool_uuid)
    }

    /// The pool's label as of now (the member table grows with `pool add`).
    pub fn label(&self) -> Label {
        self.s.label.read().clone()
    }

    /// Warnings from assembly (degraded, stale or foreign members...).
    pub fn warnings(&self) -> Vec<String> {
        self.s.warnings.read().clone()
    }

    pub fn chunk_size(&self) -> u64 {
        self.s.thin.chunk_size.bytes()
    }

    /// The member devices in the member table's order (`None`: missing).
    pub fn member_devices(&self) -> Vec<Option<crate::device::DeviceRef>> {
        self.s.thin.array.members()
    }

    pub(crate) fn thin(&self) -> &ThinPool {
        &self.s.thin
    }

    /// Make every completed write durable (flush data, commit metadata).
    pub fn commit(&self) -> Result<()> {
        self.s.thin.commit()
    }

    /// How client flushes were served (flush log rounds, commits).
    pub fn flush_stats(&self) -> crate::thin::log::FlushStats {
        self.s.thin.flush_stats()
    }

    /// The last commit before the pool is let go: also clears the write
    /// intents, so the next open has nothing to resync.
    pub fn close(&self) -> Result<()> {
        self.s.thin.close()
    }

    /// Commit only if the running transaction changed metadata (background
    /// commits; a client's flush uses [`Pool::commit`], which always flushes).
    /// A failed pool is skipped: it commits nothing until `pool clear`.
    pub fn commit_if_dirty(&self) -> Result<()> {
        if self.failure().is_some() {
            return Ok(());
        }
        self.commit_if_log_closed()?;
        if self.s.thin.has_changes() || self.s.thin.array.health().has_unrecorded() {
            self.commit()?;
        }
        Ok(())
    }

    /// Commit when the flush log is out of use (full, or after a change it
    /// cannot describe) with changes waiting: until then flushes commit,
    /// and writes over committed data on pools without a second copy are
    /// written afresh. The daemon calls it every tick.
    pub fn commit_if_log_closed(&self) -> Result<()> {
        if self.failure().is_none() && self.s.thin.log_wants_commit() && self.s.thin.has_changes() {
            self.commit()?;
        }
        Ok(())
    }

    /// Run a metadata operation: I/O paused, committed before returning.
    fn metadata_op<T>(&self, f: impl FnOnce(&ThinPool) -> Result<T>) -> Result<T> {
        let _ops = self.s.ops.lock();
        let thin = &self.s.thin;
        let _gate = thin.exclusive();
        // What the running transaction's commit may still need is an
        // estimate; near the reserve, commit it first, so that the
        // operation sees what is really left.
        if thin.has_changes()
            && thin
                .meta
                .read()
                .check_room_for_op(thin.csum_groups())
                .is_err()
        {
            thin.commit_locked()?;
        }
        let out = f(thin)?;
        thin.commit_locked()?;
        Ok(out)
    }

    /// Refuse an operation that adds metadata (create, snapshot, clone,
    /// grow) once only the reserve kept for removals is left.
    /// Caller holds the ops lock and the gate: the metadata area may grow
    /// (from the data area) to make room, in the same transaction.
    fn check_meta_room(&self, thin: &ThinPool) -> Result<()> {
        let r = thin.meta.read().check_room_for_op(thin.csum_groups());
        if r.is_ok() || self.autogrow_locked(thin).unwrap_or(0) == 0 {
            return r;
        }
        // Committed on its own: the reference counts of the chunks it
        // took are then known, not estimated one leaf per chunk.
        thin.commit_locked()?;
        thin.meta.read().check_room_for_op(thin.csum_groups())
    }

    /// Release the mapping trees removals left, one bounded transaction at
    /// a time (I/O runs between them). A removal's own transaction only
    /// hands its tree over, so it fits in the reserve however large the
    /// tree; each step here frees as much as its commit has room for.
    pub(crate) fn release_removed(&self) -> Result<()> {
        while self.s.thin.releasing() > 0 {
            if !self.metadata_op(|thin| thin.release_step())? {
                break;
            }
        }
        Ok(())
    }

    fn record(&self, volume: &str, snapshot: Option<&str>) -> Result<VolumeRecord> {
        let meta = self.s.thin.meta.read();
        let cat = meta.catalog();
        let vol = cat
            .volumes
            .iter()
            .find(|r| r.snapshot_of.is_none() && r.name == volume)
            .ok_or_else(|| {
                Error::NotFound(format!(
                    "volume '{}/{volume}' not found (`vpool vol list` shows the volumes)",
                    self.name()
                ))
            })?;
        match snapshot {
            None => Ok(vol.clone()),
            Some(s) => cat
                .volumes
                .iter()
                .find(|r| r.snapshot_of == Some(vol.id) && r.name == s)
                .cloned()
                .ok_or_else(|| {
                    Error::NotFound(format!("snapshot '{}/{volume}@{s}' not found (`vpool snap list` shows the snapshots)", self.name()))
                }),
        }
    }

    /// A volume's size, without copying its record (on every I/O).
    pub(crate) fn size_by_id(&self, id: u64) -> Option<u64> {
        self.s.thin.meta.read().catalog().by_id(id).map(|r| r.size)
    }

    fn check_room_for(&self, size: u64) -> Result<Vec<String>> {
        let info = self.info();
        let mut warnings = Vec::new();
        if info.virtual_bytes + size > info.capacity {
            warnings.push(format!(
                "pool '{}' is overprovisioned: volumes total {} on {} of space; writes fail with ENOSPC if it fills \
                 (watch `vpool pool status`; add a member with `vpool pool add`)",
                self.name(),
                crate::units::format_size(info.virtual_bytes + size),
                crate::units::format_size(info.capacity)
            ));
        }
        Ok(warnings)
    }

    fn add_record(&self, thin: &ThinPool, rec_fn: impl FnOnce(u64) -> VolumeRecord) -> Result<u64> {
        let mut meta = thin.meta.write();
        let id = meta.next_volume_id;
        meta.next_volume_id += 1;
        meta.catalog_mut().volumes.push(rec_fn(id));
        Ok(id)
    }

    /// Create a thin volume. Returns warnings (overprovisioning).
    pub fn create_volume(&self, name: &str, size: u64) -> Result<Vec<String>> {
        names::validate("volume", name)?;
        check_size(size)?;
        // Every check below runs under the lock of the change it guards:
        // two callers cannot both find a name free.
        self.metadata_op(|thin| {
            if self.record(name, None).is_ok() {
                return Err(Error::Exists(format!("volume '{}/{name}'", self.name())));
            }
            self.check_meta_room(thin)?;
            let warnings = self.check_room_for(size)?;
            let id = self.add_record(thin, |id| new_record(id, name, None, None, size))?;
            thin.create_volume(id)?;
            Ok(warnings)
        })
    }

    /// Take a read-only snapshot of a volume: O(1), shares every chunk.
    pub fn snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        names::validate("snapshot", snap)?;
        self.metadata_op(|thin| {
            let vol = self.record(volume, None)?;
            if self.record(volume, Some(snap)).is_ok() {
                return Err(Error::Exists(format!(
                    "snapshot '{}/{volume}@{snap}'",
                    self.name()
                )));
            }
            self.check_meta_room(thin)?;
            let id = self.add_record(thin, |id| {
                new_record(id, snap, Some(vol.id), None, vol.size)
            })?;
            thin.share_volume(vol.id, id)
        })
    }

    /// A writable volume sharing every chunk of a snapshot (or volume).
    pub fn clone_volume(&self, volume: &str, snap: Option<&str>, new: &str) -> Result<()> {
        names::validate("volume", new)?;
        let from = match snap {
            Some(s) => format!("{volume}@{s}"),
            None => volume.to_string(),
        };
        self.metadata_op(|thin| {
            let src = self.record(volume, snap)?;
            if self.record(new, None).is_ok() {
                return Err(Error::Exists(format!("volume '{}/{new}'", self.name())));
            }
            self.check_meta_room(thin)?;
            let id = self.add_record(thin, |id| new_record(id, new, None, Some(from), src.size))?;
            thin.share_volume(src.id, id)
        })
    }

    /// Return a volume to a snapshot's contents and size. Other snapshots,
    /// older or newer, are kept.
    pub fn rollback(&self, volume: &str, snap: &str) -> Result<()> {
        self.metadata_op(|thin| {
            let vol = self.record(volume, None)?;
            let s = self.record(volume, Some(snap))?;
            thin.replace_volume(vol.id, s.id)?;
            set_size(thin, vol.id, s.size);
            Ok(())
        })?;
        self.release_removed()
    }

    /// Grow or shrink. Shrinking drops data beyond the new end, so it needs
    /// `force` when any is mapped there. Snapshots keep their own size.
    /// Returns warnings (a grow past what the pool can back: allowed, thin).
    pub fn resize(&self, volume: &str, size: u64, force: bool) -> Result<Vec<String>> {
        check_size(size)?;
        // Checked with I/O paused (the gate is held): a write beyond the
        // new end cannot slip in between the check and the shrink.
        self.metadata_op(|thin| {
            let vol = self.record(volume, None)?;
            let warnings = if size > vol.size {
                self.check_meta_room(thin)?;
                self.check_room_for(size - vol.size)?
            } else {
                Vec::new()
            };
            if size < vol.size {
                let first = thin.chunk_size.chunk_of(size);
                let mapped = thin.mapped_chunks(vol.id, first, u64::MAX)?;
                if !mapped.is_empty() && !force {
                    return Err(Error::Invalid(format!(
                        "shrinking '{}/{volume}' from {} to {} discards data written beyond the new end \
                         ({} chunks); take a snapshot first if you need it, then repeat with --force",
                        self.name(),
                        size_exact(vol.size),
                        size_exact(size),
                        mapped.len()
                    )));
                }
                thin.truncate(vol.id, size)?;
            }
            set_size(thin, vol.id, size);
            Ok(warnings)
        })
    }

    /// Remove a volume. With snapshots it needs `recursive` (removes them too).
    /// Clones are independent and stay.
    pub fn remove_volume(&self, volume: &str, recursive: bool) -> Result<()> {
        self.metadata_op(|thin| {
            let vol = self.record(volume, None)?;
            let snaps: Vec<VolumeRecord> = self.snapshots_of(vol.id);
            if !snaps.is_empty() && !recursive {
                return Err(Error::InUse(format!(
                    "volume '{}/{volume}' has {} snapshot(s) ({}); remove them first or pass --recursive",
                    self.name(),
                    snaps.len(),
                    snaps.iter().map(|s| s.name.clone()).collect::<Vec<_>>().join(", ")
                )));
            }
            for r in snaps.iter().chain(std::iter::once(&vol)) {
                thin.delete_volume(r.id)?;
                thin.meta
                    .write()
                    .catalog_mut()
                    .volumes
                    .retain(|x| x.id != r.id);
            }
            Ok(())
        })?;
        self.release_removed()
    }

    pub fn remove_snapshot(&self, volume: &str, snap: &str) -> Result<()> {
        self.metadata_op(|thin| {
            let s = self.record(volume, Some(snap))?;
            thin.delete_volume(s.id)?;
            thin.meta
                .write()
                .catalog_mut()
                .volumes
                .retain(|x| x.id != s.id);
            Ok(())
        })?;
        self.release_removed()
    }

    fn snapshots_of(&self, id: u64) -> Vec<VolumeRecord> {
        let meta = self.s.thin.meta.read();
        meta.catalog()
            .volumes
            .iter()
            .filter(|r| r.snapshot_of == Some(id))
            .cloned()
            .collect()
    }

    /// Root block of a volume's mapping tree (for `inspect` and tests).
    pub fn mapping_root(&self, volume: &str, snap: Option<&str>) -> Result<Block> {
        let r = self.record(volume, snap)?;
        Ok(self.s.thin.volume_root(r.id)?.root)
    }

    /// Byte offset of metadata block `b` on each metadata copy.
    pub fn metadata_block_offset(&self, b: Block) -> u64 {
        self.s.thin.meta.read().layout().block_offset(b)
    }

    /// Open a volume (or, with `snap`, a read-only snapshot) for I/O.
    pub fn volume(&self, volume: &str, snap: Option<&str>) -> Result<Volume> {
        let r = self.record(volume, snap)?;
        let name = match snap {
            Some(s) => format!("{}/{volume}@{s}", self.name()),
            None => format!("{}/{volume}", self.name()),
        };
        Ok(Volume::new(self.clone(), r.id, name, snap.is_some()))
    }

    /// Commit and mark every member exported: the pool may move to another host.
    pub fn export(&self) -> Result<()> {
        self.set_state(PoolState::Exported)
    }

    /// Mark an exported pool active again (after `import`).
    pub fn activate(&self) -> Result<()> {
        self.set_state(PoolState::Active)
    }

    fn set_state(&self, state: PoolState) -> Result<()> {
        let _ops = self.s.ops.lock();
        self.commit()?;
        for (i, dev) in self.s.thin.array.members().iter().enumerate() {
            if let Some(dev) = dev {
                let mut l = self.label().for_member(i, dev.size());
                l.state = state;
                write_label(dev, &l)?;
            }
        }
        Ok(())
    }

    /// Erase the labels of every present member. The data is gone for vpool.
    pub fn destroy(&self) -> Result<()> {
        let _ops = self.s.ops.lock();
        let zero = vec![0u8; 4096];
        for dev in self.s.thin.array.members().iter().flatten() {
            let io = |e| Error::io(format!("erasing label on {}", dev.name()), e);
            dev.write_at(&zero, 0).map_err(io)?;
            dev.write_at(&zero, Label::backup_offset(dev.size()))
                .map_err(io)?;
            dev.write_at(&vec![0u8; 8192], self.label().meta_offset)
                .map_err(io)?;
            dev.flush().map_err(io)?;
        }
        Ok(())
    }
}

fn check_size(size: u64) -> Result<()> {
    if size == 0 || !size.is_multiple_of(4096) {
        return Err(Error::Invalid(format!(
            "volume size {} must be a positive multiple of 4K",
            size_exact(size)
        )));
    }
    if size > 1 << 60 {
        return Err(Error::Invalid("volume size above 1 EiB".into()));
    }
    Ok(())
}

fn set_size(thin: &ThinPool, id: u64, size: u64) {
    let mut meta = thin.meta.write();
    if let Some(r) = meta.catalog_mut().by_id_mut(id) {
        r.size = size;
    }
}

fn new_record(
    id: u64,
    name: &str,
    snapshot_of: Option<u64>,
    cloned_from: Option<String>,
    size: u64,
) -> VolumeRecord {
    VolumeRecord {
        id,
        name: name.to_string(),
        snapshot_of,
        cloned_from,
        size,
        created: now(),
        uuid: *uuid::Uuid::new_v4().as_bytes(),
    }
}
