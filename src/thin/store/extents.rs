//! Metadata extents in the store: routing block and space-map page I/O to
//! the fixed area (the metadata mirror) or to an extent (the array), and
//! growing the metadata space. See `meta::extent` for the layout.

use super::*;
use crate::meta::extent::{self, MetaExtent, MAX_EXTENTS};
use crate::meta::spacemap::pages_for;
use crate::units::ChunkSize;

impl MetaStore {
    /// Metadata blocks an extent of `chunks` data chunks of `chunk_size`
    /// bytes holds (its space-map page slots come first).
    pub fn extent_blocks_for(chunks: u64, chunk_size: ChunkSize) -> u64 {
        let bytes = chunk_size.span(chunks);
        let mut blocks = bytes / BLOCK_SIZE as u64;
        while blocks > 0 && MetaExtent::bytes_for(blocks) > bytes {
            blocks -= (MetaExtent::bytes_for(blocks) - bytes)
                .div_ceil(BLOCK_SIZE as u64)
                .max(1);
        }
        blocks
    }

    /// Grow the metadata space by about `bytes` (whole data chunks, one run
    /// per metadata copy) taken from the data area. Takes effect with the
    /// next commit; until then nothing on disk refers to the new space, so
    /// a crash leaves the pool as it was. Returns the blocks added.
    pub fn grow_metadata(&mut self, bytes: u64, copies: usize) -> Result<u64> {
        if self.blocks.array.is_none() {
            return Err(Error::Invalid(
                "the metadata area grows only on an assembled pool".into(),
            ));
        }
        if self.blocks.extents.len() >= MAX_EXTENTS {
            return Err(Error::NoSpace {
                pool: self.blocks.pool_name.clone(),
                detail: format!(
                    "the metadata area has grown {MAX_EXTENTS} times, the most it records; remove snapshots or volumes"
                ),
            });
        }
        let cs = self.committed.chunk();
        let chunks = cs.count(bytes).max(1);
        let blocks = Self::extent_blocks_for(chunks, cs);
        let first = extent::next_first_block(Block(self.blocks.msm.span()));
        let pages_after = pages_for(first.plus(blocks).index()) as usize;
        if blocks == 0 || pages_after > crate::thin::store::superblock::MAX_MSM_PAGES {
            return Err(Error::Invalid(format!(
                "the metadata area cannot grow by {} (at most {} in all)",
                crate::units::size_exact(bytes),
                crate::units::format_size(
                    crate::thin::store::superblock::MAX_MSM_PAGES as u64
                        * ENTRIES_PER_PAGE as u64
                        * BLOCK_SIZE as u64
                )
            )));
        }
        let mut runs = Vec::new();
        for _ in 0..copies.clamp(1, extent::MAX_COPIES) {
            match self.data.alloc_run(chunks) {
                Some(c) => runs.push(c),
                None => {
                    for &c in &runs {
                        for x in cs.placed(cs.at(c, 0), cs.span(chunks)) {
                            self.data_dec(x)?;
                        }
                    }
                    return Err(Error::NoSpace {
                        pool: self.blocks.pool_name.clone(),
                        detail: format!(
                            "growing the metadata area needs {copies} runs of {chunks} free data chunks ({} each); free data space or add a member",
                            crate::units::format_size(cs.span(chunks))
                        ),
                    });
                }
            }
        }
        let e = MetaExtent {
            first_block: first,
            blocks,
            copies: runs.iter().map(|&c| cs.at(c, 0)).collect(),
        };
        self.blocks.msm.extend(first, e.end_block());
        self.blocks.extents.push(e);
        self.blocks.extents_dirty = true;
        Ok(blocks)
    }

    /// Is data chunk `c` part of a metadata extent?
    pub fn is_extent_chunk(&self, c: Chunk) -> bool {
        let cs = self.committed.chunk();
        self.blocks.extents.iter().any(|e| {
            e.copies
                .iter()
                .any(|&off| cs.covering(off, e.run_bytes()).contains(&c.index()))
        })
    }

    /// Data chunks of every extent copy run.
    pub fn extent_chunks(&self) -> Vec<Chunk> {
        let cs = self.committed.chunk();
        let mut out = Vec::new();
        for e in &self.blocks.extents {
            for &off in &e.copies {
                out.extend(cs.placed(off, e.run_bytes()));
            }
        }
        out
    }

    /// Point copy `copy` of extent `i` at another run (the caller copied
    /// its contents there); the old run's chunks are released.
    pub fn move_extent_copy(&mut self, i: usize, copy: usize, to: u64) -> Result<()> {
        let cs = self.committed.chunk();
        let (old, len) = {
            let e = &self.blocks.extents[i];
            (e.copies[copy], e.run_bytes())
        };
        for c in cs.placed(old, len) {
            self.data_dec(c)?;
        }
        self.blocks.extents[i].copies[copy] = to;
        self.blocks.extents_dirty = true;
        Ok(())
    }
}
