//! Volume-level thin operations: create, share (snapshot/clone), replace
//! (rollback), delete, truncate. Each runs with the I/O gate held for write;
//! the pool facade commits right after, so a metadata operation is never
//! mixed with data writes in one transaction.

use super::io::ThinPool;
use crate::error::Result;
use crate::thin::store::VolumeRoot;

impl ThinPool {
    /// Register an empty volume under `id`.
    pub fn create_volume(&self, id: u64) -> Result<()> {
        self.meta.write().set_volume_root(id, VolumeRoot::default())
    }

    /// Make `new` share every chunk of `src`: O(1), one reference on the root.
    pub fn share_volume(&self, src: u64, new: u64) -> Result<()> {
        let mut meta = self.meta.write();
        let vr = meta.volume_root(src)?;
        if !vr.root.is_none() {
            meta.msm_mut().inc(vr.root);
        }
        meta.set_volume_root(new, vr)
    }

    /// Make `dst` an exact copy of `src` (rollback), dropping `dst`'s old map.
    pub fn replace_volume(&self, dst: u64, src: u64) -> Result<()> {
        let mut meta = self.meta.write();
        let sr = meta.volume_root(src)?;
        let old = meta.volume_root(dst)?;
        if !sr.root.is_none() {
            meta.msm_mut().inc(sr.root);
        }
        meta.set_volume_root(dst, sr)?;
        meta.release_root(old)
    }

    /// Drop a volume: its mapping tree is handed over to be released in
    /// steps ([`ThinPool::release_step`]); chunks nobody else references
    /// become free as they go.
    pub fn delete_volume(&self, id: u64) -> Result<()> {
        self.meta.write().release_volume(id)
    }

    /// Release part of the mapping trees of removed volumes, as much as the
    /// commit that follows has room for. Caller holds the gate for write
    /// and commits after. Returns true while some are left.
    pub fn release_step(&self) -> Result<bool> {
        let mut meta = self.meta.write();
        let budget = meta.release_budget(self.csum_groups());
        meta.prune_released(budget)
    }

    /// Trees of removed volumes not yet released.
    pub fn releasing(&self) -> usize {
        self.meta.read().releasing()
    }

    /// Forget everything at or beyond byte `size` (shrink). Caller holds
    /// the gate for write: when the metadata reserve is in the way (a
    /// volume that shares leaves with snapshots copies them to unmap), the
    /// chunks unmapped so far are committed and it goes on.
    pub fn truncate(&self, id: u64, size: u64) -> Result<()> {
        let cs = self.chunk_size;
        if !cs.aligned(size) {
            let (vchunk, within) = cs.split(size);
            if !self.mapped_chunks(id, vchunk, vchunk + 1)?.is_empty() {
                // Zero the tail of the last chunk so a later grow reads zeros.
                self.write(id, size, &vec![0u8; (cs.bytes() - within) as usize])?;
            }
        }
        let first = cs.count(size);
        let mut last = usize::MAX;
        loop {
            match self.unmap_range(id, first, u64::MAX) {
                Err(e @ crate::Error::NoSpace { .. }) if self.has_changes() => {
                    let left = self.mapped_chunks(id, first, u64::MAX)?.len();
                    if left >= last {
                        return Err(e);
                    }
                    last = left;
                    self.commit_locked()?;
                }
                r => return r,
            }
        }
    }
}
