//! Moving data chunks (for `pool remove`): every chunk in use at or past a
//! limit is copied to a free chunk below it, and every mapping that points
//! at it, in every volume and snapshot, is repointed in the same
//! transaction. Chunks shared by snapshots stay shared (one copy, all
//! references moved together); B-tree nodes that were shared get their own
//! copies where they changed.
//!
//! Crash safety: the copy goes to a chunk that is free in the committed
//! state, and the old chunk is not touched, so a crash before the commit
//! leaves the committed trees pointing at intact data, and one after it
//! leaves them pointing at flushed copies.

use super::io::ThinPool;
use crate::error::{Error, Result};
use crate::meta::btree;
use crate::thin::csum::crc;
use crate::thin::store::csum::CSUM_BLOCK as BLK;
use crate::thin::store::{mapped_chunk, mapping_spec, mapping_value};
use crate::units::Chunk;
use std::collections::HashMap;

/// What one evacuation step did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evacuated {
    /// Chunks moved below the limit in this step.
    pub moved: u64,
    /// Chunks still in use at or past the limit.
    pub left: u64,
}

impl ThinPool {
    /// Chunks in use at or past `limit`.
    pub fn used_past(&self, limit: u64) -> u64 {
        self.meta
            .read()
            .data
            .used_from(Chunk(limit), usize::MAX)
            .len() as u64
    }

    /// Move up to `max_chunks` chunks in use at or past `limit` below it,
    /// then commit. The allocator must already be limited to `limit`.
    /// Caller holds the gate for write.
    pub fn evacuate_step(&self, limit: u64, max_chunks: usize) -> Result<Evacuated> {
        // Chunks released but not yet committed still look used: commit first.
        if self.meta.read().has_changes() {
            self.commit_locked()?;
        }
        if self.evacuate_extents(limit)? > 0 {
            self.commit_locked()?;
        }
        let picked = self
            .meta
            .read()
            .data
            .used_from(Chunk(limit), max_chunks.max(1));
        if picked.is_empty() {
            return Ok(Evacuated::default());
        }
        let wanted: std::collections::HashSet<Chunk> = picked.iter().copied().collect();
        // Every reference to the picked chunks: (volume, virtual chunk, chunk).
        let mut refs = Vec::new();
        {
            let meta = self.meta.read();
            for id in meta.volume_ids()? {
                let root = meta.volume_root(id)?.root;
                btree::walk(
                    &*meta,
                    &mapping_spec(id),
                    root,
                    0,
                    u64::MAX,
                    &mut |k, v, _| {
                        let phys = mapped_chunk(v);
                        if wanted.contains(&phys) {
                            refs.push((id, k, phys));
                        }
                        Ok(true)
                    },
                )?;
            }
        }
        let cs = self.chunk_size;
        let mut buf = vec![0u8; cs.bytes() as usize];
        let mut to: HashMap<Chunk, Chunk> = HashMap::new();
        let copied = picked.iter().try_for_each(|&c| {
            if !refs.iter().any(|r| r.2 == c) {
                return Err(Error::corrupt(format!(
                    "data chunk {c} is marked in use but no volume maps it; run `vpool check` before removing a member"
                )));
            }
            let dst = self.meta.write().data_alloc()?;
            to.insert(c, dst);
            // Verified: a bad copy is repaired, not moved with fresh checksums.
            let failing = self.read_to_move(c, &mut buf, &refs)?;
            self.array
                .write(cs.at(dst, 0), &buf)
                .map_err(|e| Error::io("writing a moved chunk", e))?;
            if failing == 0 {
                return self.record(dst, 0, &buf);
            }
            // The blocks no copy of which was good move as they stand,
            // with the checksums they fail, so they still read as errors
            // (as the restripe moves them, `pool::reshape::read_used`).
            self.array.health().event(format!(
                "pool remove: data chunk {c} moved to {dst} as it stood: {failing} of its 4 KiB blocks had no good copy and still read as errors (overwrite them, or restore them from a backup)"
            ));
            self.record_cow(dst, Some(c), &buf, 0, 0)
        });
        if let Err(e) = copied {
            // Nothing maps the copies yet: give them back.
            let mut meta = self.meta.write();
            for &dst in to.values() {
                meta.data_dec(dst)?;
            }
            return Err(e);
        }
        {
            let mut meta = self.meta.write();
            for &(id, k, c) in &refs {
                let dst = to[&c];
                let mut vr = meta.volume_root(id)?;
                let (root, old) = btree::insert(
                    &mut *meta,
                    &mapping_spec(id),
                    vr.root,
                    k,
                    &mapping_value(dst),
                )?;
                if old.as_deref().map(mapped_chunk) != Some(c) {
                    return Err(Error::corrupt(format!(
                        "volume {id} chunk {k} changed while being moved"
                    )));
                }
                meta.data_inc(dst)?;
                meta.data_dec(c)?;
                vr.root = root;
                meta.set_volume_root(id, vr)?;
            }
            // Drop the reference the allocation itself held.
            for &dst in to.values() {
                meta.data_dec(dst)?;
            }
        }
        self.commit_locked()?;
        Ok(Evacuated {
            moved: picked.len() as u64,
            left: self.used_past(limit),
        })
    }

    /// Read chunk `c` whole into `buf` to move it: verified, repairing
    /// bad copies. Where a block has no good copy (a member lost or tore
    /// a write, and nothing else holds it), the chunk is read as the
    /// members hold it; returns the count of such blocks. Only a chunk
    /// the members cannot read at all stops the move, with the places
    /// that map it (`refs`: volume, virtual chunk, chunk).
    fn read_to_move(&self, c: Chunk, buf: &mut [u8], refs: &[(u64, u64, Chunk)]) -> Result<u64> {
        if self.read_verified(c, 0, buf).is_ok() {
            return Ok(0);
        }
        let cs = self.chunk_size;
        if let Err(e) = self.array.read(cs.at(c, 0), buf) {
            let meta = self.meta.read();
            let mapped: Vec<String> = (refs.iter().filter(|r| r.2 == c))
                .map(|&(vol, k, _)| {
                    let name = meta.catalog().display_name(vol);
                    format!("{name} bytes {}..{}", cs.start(k), cs.start(k + 1))
                })
                .collect();
            return Err(Error::io(
                format!(
                    "reading data chunk {c} to move it ({}; discard or overwrite that range, then run the removal again)",
                    mapped.join(", ")
                ),
                e,
            ));
        }
        let mut failing = 0;
        for (i, b) in buf.chunks(BLK as usize).enumerate() {
            let at = i as u64 * BLK;
            if matches!(self.block_csum(c, at)?, Some(want) if crc(b) != want) {
                failing += 1;
            }
        }
        Ok(failing)
    }
}

impl ThinPool {
    /// Move the metadata extent copies that reach `limit` or past it below
    /// it: each run is copied whole through the array and flushed before
    /// the extent list points at it (the caller commits), so a crash
    /// leaves the old run in use. Returns the runs moved.
    fn evacuate_extents(&self, limit: u64) -> Result<u64> {
        let cs = self.chunk_size;
        let mut moved = 0;
        let extents = self.meta.read().blocks.extents().to_vec();
        for (i, e) in extents.iter().enumerate() {
            for (c, &off) in e.copies.iter().enumerate() {
                let chunks = cs.count(e.run_bytes());
                if cs.chunk_of(off) + chunks <= limit {
                    continue;
                }
                let to = self.meta.write().data.alloc_run(chunks).ok_or_else(|| Error::NoSpace {
                    pool: self.meta.read().catalog().pool_name.clone(),
                    detail: format!(
                        "moving a metadata extent off the leaving member needs {chunks} consecutive free chunks below the new end"
                    ),
                })?;
                let mut buf = vec![0u8; (1 << 20).min(e.run_bytes()) as usize];
                let mut at = 0;
                while at < e.run_bytes() {
                    let n = (e.run_bytes() - at).min(buf.len() as u64) as usize;
                    self.array
                        .read(off + at, &mut buf[..n])
                        .and_then(|()| self.array.write(cs.at(to, at), &buf[..n]))
                        .map_err(|e| Error::io("moving a metadata extent", e))?;
                    at += n as u64;
                }
                self.array
                    .flush()
                    .map_err(|e| Error::io("moving a metadata extent", e))?;
                self.meta.write().move_extent_copy(i, c, cs.at(to, 0))?;
                moved += 1;
            }
        }
        Ok(moved)
    }
}
