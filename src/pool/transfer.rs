//! Moving snapshots between pools (`snap send` and `snap receive`): which
//! chunks differ between two snapshots (their mapping trees walked
//! together, see `meta::diff`), the metadata steps of a receive (each one
//! transaction), and the transfers running, for `job list`.
//!
//! A receive fills a hidden volume (a clone of the base snapshot for an
//! incremental stream) and only its last step, one transaction, gives it
//! the target's name and takes the snapshot: a receive that fails or is
//! cut leaves the target as it was.

use super::names::{is_hidden, validate};
use super::{new_record, set_size, JobInfo, Pool, Volume};
use crate::error::{Error, Result};
use crate::thin::store::catalog::VolumeRecord;
use crate::thin::store::{mapped_chunk, mapping_spec};
use parking_lot::Mutex;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A snapshot's identity, as a stream names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotId {
    pub volume: String,
    pub name: String,
    pub uuid: [u8; 16],
    /// The volume's own uuid.
    pub volume_uuid: [u8; 16],
    pub size: u64,
    pub created: u64,
}

/// How a run of chunks differs between an older snapshot and a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkChange {
    /// Mapped in the newer only (written since).
    Added,
    /// Mapped in both, to different chunks (written since; parts of it may
    /// still hold the older bytes).
    Changed,
    /// Mapped in the older only (discarded since).
    Removed,
}

/// Consecutive virtual chunks that changed alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeRun {
    pub first: u64,
    pub count: u64,
    pub change: ChunkChange,
}

impl Pool {
    fn snapshot_id(&self, vol: &VolumeRecord, snap: &VolumeRecord) -> SnapshotId {
        SnapshotId {
            volume: vol.name.clone(),
            name: snap.name.clone(),
            uuid: snap.uuid,
            volume_uuid: vol.uuid,
            size: snap.size,
            created: snap.created,
        }
    }

    /// The identity of `volume@snap`.
    pub fn snapshot_identity(&self, volume: &str, snap: &str) -> Result<SnapshotId> {
        let vol = self.record(volume, None)?;
        Ok(self.snapshot_id(&vol, &self.record(volume, Some(snap))?))
    }

    /// The newest snapshot of `volume`, if it has one.
    pub fn latest_snapshot(&self, volume: &str) -> Result<Option<SnapshotId>> {
        let vol = self.record(volume, None)?;
        Ok(self
            .snapshots_of(vol.id)
            .into_iter()
            .max_by_key(|s| (s.created, s.id))
            .map(|s| self.snapshot_id(&vol, &s)))
    }

    /// A snapshot with this uuid (a received snapshot keeps its source's).
    pub fn find_snapshot(&self, uuid: &[u8; 16]) -> Option<SnapshotId> {
        let meta = self.s.thin.meta.read();
        let cat = meta.catalog();
        let snap = cat
            .volumes
            .iter()
            .find(|r| r.snapshot_of.is_some() && &r.uuid == uuid)?;
        let vol = cat.by_id(snap.snapshot_of?)?;
        Some(self.snapshot_id(vol, snap))
    }

    /// Does a volume (hidden ones included) of this name exist?
    pub fn has_volume(&self, name: &str) -> bool {
        self.record(name, None).is_ok()
    }

    /// The chunks of `volume@to` that differ from `volume@from` (from an
    /// empty volume without `from`), as runs in order. The cost grows with
    /// what changed: subtrees both snapshots share are not read.
    pub fn changes(&self, volume: &str, from: Option<&str>, to: &str) -> Result<Vec<ChangeRun>> {
        let new = self.record(volume, Some(to))?;
        let old = match from {
            Some(f) => {
                let old = self.record(volume, Some(f))?;
                if (old.created, old.id) >= (new.created, new.id) {
                    return Err(Error::Invalid(format!(
                        "'{volume}@{f}' is not older than '{volume}@{to}': an incremental goes from an older snapshot to a newer one"
                    )));
                }
                Some(old)
            }
            None => None,
        };
        let thin = self.thin();
        let _g = thin.io_guard();
        let meta = thin.meta.read();
        let root = |r: &VolumeRecord| meta.volume_root(r.id).map(|v| v.root);
        let a = match &old {
            Some(o) => root(o)?,
            None => crate::units::Block::NONE,
        };
        let b = root(&new)?;
        let mut runs: Vec<ChangeRun> = Vec::new();
        crate::meta::diff::diff(&*meta, &mapping_spec(new.id), a, b, &mut |k, x, y| {
            let change = match (x, y) {
                (None, _) => ChunkChange::Added,
                (Some(_), None) => ChunkChange::Removed,
                (Some(x), Some(y)) if mapped_chunk(x) != mapped_chunk(y) => ChunkChange::Changed,
                // The same chunk (values differ in bits that do not name
                // it): nothing moved.
                _ => return Ok(true),
            };
            match runs.last_mut() {
                Some(r) if r.change == change && r.first + r.count == k => r.count += 1,
                _ => runs.push(ChangeRun {
                    first: k,
                    count: 1,
                    change,
                }),
            }
            Ok(true)
        })?;
        Ok(runs)
    }

    /// First step of a receive: the hidden volume `hidden` of `size` bytes,
    /// empty, or (with `base`, `(volume, snapshot)`) a clone of that
    /// snapshot, cut or grown to `size`. Returns a writable handle.
    pub fn receive_begin(
        &self,
        hidden: &str,
        size: u64,
        base: Option<(&str, &str)>,
    ) -> Result<Volume> {
        super::check_size(size)?;
        self.metadata_op(|thin| {
            if self.record(hidden, None).is_ok() {
                return Err(Error::Exists(format!("volume '{}/{hidden}'", self.name())));
            }
            self.check_meta_room(thin)?;
            let src = base.map(|(v, s)| self.record(v, Some(s))).transpose()?;
            let id = self.add_record(thin, |id| new_record(id, hidden, None, None, size))?;
            match src {
                Some(src) => {
                    thin.share_volume(src.id, id)?;
                    if size < src.size {
                        thin.truncate(id, size)?;
                    }
                }
                None => thin.create_volume(id)?,
            }
            Ok(())
        })?;
        self.volume(hidden, None)
    }

    /// Last step of a receive, one transaction: the hidden volume becomes
    /// `target` (a new volume; or, with `base`, the existing one, whose
    /// newest snapshot must have that uuid and, unless `force`, hold what
    /// the volume holds), and `target@snap` is taken with `uuid`.
    pub fn receive_finish(
        &self,
        hidden: &str,
        target: &str,
        snap: &str,
        uuid: [u8; 16],
        base: Option<[u8; 16]>,
        force: bool,
    ) -> Result<()> {
        validate("volume", target)?;
        validate("snapshot", snap)?;
        self.metadata_op(|thin| {
            let h = self.record(hidden, None)?;
            let vol_id = match base {
                None => {
                    if self.record(target, None).is_ok() {
                        return Err(Error::Exists(format!(
                            "volume '{}/{target}' (a full stream makes a new volume; send an incremental, or remove it first)",
                            self.name()
                        )));
                    }
                    let mut meta = thin.meta.write();
                    let r = meta
                        .catalog_mut()
                        .by_id_mut(h.id)
                        .ok_or_else(|| Error::NotFound(hidden.to_string()))?;
                    r.name = target.to_string();
                    h.id
                }
                Some(base) => {
                    let vol = self.record(target, None)?;
                    self.check_base(&vol, &base, force)?;
                    thin.replace_volume(vol.id, h.id)?;
                    set_size(thin, vol.id, h.size);
                    thin.delete_volume(h.id)?;
                    thin.meta.write().catalog_mut().volumes.retain(|x| x.id != h.id);
                    vol.id
                }
            };
            if self.record(target, Some(snap)).is_ok() {
                return Err(Error::Exists(format!(
                    "snapshot '{}/{target}@{snap}'",
                    self.name()
                )));
            }
            self.check_meta_room(thin)?;
            let id = self.add_record(thin, |id| VolumeRecord {
                uuid,
                ..new_record(id, snap, Some(vol_id), None, h.size)
            })?;
            thin.share_volume(vol_id, id)
        })?;
        self.release_removed()
    }

    /// Refuse an incremental onto `volume` unless its newest snapshot has
    /// uuid `base` and (without `force`) it was not written since.
    pub fn check_receive_base(&self, volume: &str, base: &[u8; 16], force: bool) -> Result<()> {
        self.check_base(&self.record(volume, None)?, base, force)
    }

    /// Refuse an incremental onto `vol` unless its newest snapshot is the
    /// stream's base and (without `force`) it was not written since.
    fn check_base(&self, vol: &VolumeRecord, base: &[u8; 16], force: bool) -> Result<()> {
        let latest = self
            .snapshots_of(vol.id)
            .into_iter()
            .max_by_key(|s| (s.created, s.id));
        let Some(latest) = latest.clone().filter(|s| &s.uuid == base) else {
            let newest = match latest {
                Some(s) => format!("its newest snapshot is @{}", s.name),
                None => "it has no snapshot".into(),
            };
            return Err(Error::Invalid(format!(
                "the stream's base is not the newest snapshot of '{}/{}' ({newest}): receive onto the volume the base was received into, or send a full stream",
                self.name(),
                vol.name,
            )));
        };
        let thin = self.thin();
        let same = thin.volume_root(vol.id)?.root == thin.volume_root(latest.id)?.root;
        if !same && !force {
            return Err(Error::InUse(format!(
                "'{}/{}' was written since its snapshot @{}: receiving would drop those writes; roll it back (vpool vol rollback) or repeat with --force",
                self.name(),
                vol.name,
                latest.name
            )));
        }
        Ok(())
    }

    /// Drop the hidden volume of a receive; false if there was none.
    pub fn receive_abort(&self, hidden: &str) -> Result<bool> {
        if !is_hidden(hidden) {
            return Err(Error::Invalid(format!(
                "'{hidden}' is not a receive's volume"
            )));
        }
        let gone = self.metadata_op(|thin| {
            let Ok(h) = self.record(hidden, None) else {
                return Ok(false);
            };
            thin.delete_volume(h.id)?;
            thin.meta
                .write()
                .catalog_mut()
                .volumes
                .retain(|x| x.id != h.id);
            Ok(true)
        })?;
        self.release_removed()?;
        Ok(gone)
    }

    /// Register a send or receive for `job list`; it leaves the list when
    /// the returned handle is dropped.
    pub fn transfer(&self, kind: &str, what: &str, total: u64) -> Transfer {
        let state = Arc::new(TransferState {
            kind: kind.into(),
            what: what.into(),
            total: AtomicU64::new(total),
            done: AtomicU64::new(0),
            started: Instant::now(),
        });
        self.s.transfers.lock().push(state.clone());
        Transfer {
            state,
            list: self.s.clone(),
        }
    }

    /// The sends and receives running, as jobs.
    pub fn transfers(&self) -> Vec<JobInfo> {
        self.s
            .transfers
            .lock()
            .iter()
            .map(|t| {
                let (done, total) = (
                    t.done.load(Ordering::Relaxed),
                    t.total.load(Ordering::Relaxed),
                );
                let secs = t.started.elapsed().as_secs_f64();
                let rate = if secs > 0.5 {
                    (done as f64 / secs) as u64
                } else {
                    0
                };
                JobInfo {
                    pool: self.name(),
                    kind: t.kind.clone(),
                    state: "running".into(),
                    done_bytes: done,
                    total_bytes: total,
                    percent: (done as f64 * 100.0 / total.max(1) as f64 * 10.0).floor() / 10.0,
                    rate,
                    eta_seconds: (rate > 0).then(|| total.saturating_sub(done) / rate),
                    volume: Some(t.what.clone()),
                }
            })
            .collect()
    }
}

pub(crate) struct TransferState {
    kind: String,
    what: String,
    total: AtomicU64,
    done: AtomicU64,
    started: Instant,
}

/// A running send or receive, listed by `job list` while it lives.
pub struct Transfer {
    state: Arc<TransferState>,
    list: Arc<super::Shared>,
}

impl Transfer {
    pub fn set(&self, done: u64) {
        self.state.done.store(done, Ordering::Relaxed);
    }
    pub fn set_total(&self, total: u64) {
        self.state.total.store(total, Ordering::Relaxed);
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let me = Arc::as_ptr(&self.state);
        let list: &Mutex<Vec<Arc<TransferState>>> = &self.list.transfers;
        list.lock().retain(|t| Arc::as_ptr(t) != me);
    }
}
