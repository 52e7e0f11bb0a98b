//! Metadata space accounting: what a commit of the running transaction may
//! still need, and the reserve that only space-freeing operations may use.
//!
//! A transaction allocates blocks as it goes (tree nodes it copies) and at
//! its commit (the data reference counts and checksums folded into their
//! trees, the catalog rewritten); blocks it releases are reusable only after
//! the commit. So the room an operation may take is what is free now, less
//! an upper bound of what the commit still has to allocate, less the
//! reserve. Ordinary operations (writes that map chunks, creates,
//! snapshots, clones) stop at the reserve with ENOSPC; a discard may use
//! half of it; removals may use all of it, and release what they free in
//! steps whose cost fits in what is left (see [`MetaStore::prune_released`]),
//! so a full pool can always be freed by removing things.

use super::*;
use crate::thin::store::csum::GROUP_BYTES;

/// The smallest reserve, in blocks (1 MiB).
pub const MIN_RESERVE_BLOCKS: u64 = 256;
/// Extra blocks a metadata operation is assumed to touch beyond the catalog
/// (a path of the volumes tree, split included, twice over).
const OP_BLOCKS: u64 = 24;

/// Who asks for metadata space, and how much of the reserve it may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpaceUse {
    /// Mapping new chunks, creating volumes, snapshots and clones.
    Ordinary,
    /// Discards: they free chunks, but unsharing a mapping leaf from a
    /// snapshot costs a block, so they may use half the reserve.
    Discard,
}

impl MetaStore {
    /// Blocks that can be allocated now (released blocks wait for the commit).
    pub fn meta_available(&self) -> u64 {
        self.blocks.msm.available()
    }

    /// Blocks kept for removals: 1% of the area (at least 1 MiB, at most a
    /// quarter of a small area), plus room to rewrite the catalog.
    pub fn meta_reserve(&self) -> u64 {
        let blocks = self.blocks.msm.blocks();
        (blocks / 100).max(MIN_RESERVE_BLOCKS).min(blocks / 4) + 2 * self.catalog_block_count()
    }

    /// Blocks the catalog takes (a metadata operation rewrites it whole).
    pub fn catalog_block_count(&self) -> u64 {
        match self.catalog_is_tree() {
            // A path of the catalog tree.
            true => 4,
            false => (self.catalog_bytes / (BLOCK_SIZE - HEADER_SIZE) as u64) + 1,
        }
    }

    /// Checksum-tree leaves one chunk's entries may span.
    fn csum_leaves_per_chunk(&self) -> u64 {
        if !self.has_csums() {
            return 0;
        }
        let per_leaf = ((BLOCK_SIZE - HEADER_SIZE) / (8 + 64)) as u64 / 2;
        1 + self.committed.chunk_size.div_ceil(GROUP_BYTES) / per_leaf.max(1)
    }

    /// Checksum-tree blocks that folding `groups` pending groups may take:
    /// a copied leaf per group at most, and never more copies than there
    /// are metadata blocks in use (a leaf is copied once per transaction),
    /// plus the leaves splits add (each new one holds at least half a
    /// leaf of the groups). So a workload that overwrites the same data
    /// again and again does not run the estimate past the whole area.
    fn csum_leaves_touched(&self, groups: u64) -> u64 {
        if groups == 0 {
            return 0;
        }
        let per_leaf = ((BLOCK_SIZE - HEADER_SIZE) / (8 + 64)) as u64;
        groups.min(self.blocks.msm.used() + groups / (per_leaf / 2).max(1) + 1)
    }

    /// An upper bound of the blocks the commit of the running transaction
    /// still allocates: a copied leaf (and a share of internal nodes) per
    /// changed data reference count and per checksum group written, the
    /// checksum leaves of freed chunks, and the catalog.
    pub fn commit_need(&self, csum_groups: u64) -> u64 {
        let leaves = self.data.overlay.len() as u64
            + self.data.pending_free() * self.csum_leaves_per_chunk()
            + self.csum_leaves_touched(csum_groups);
        let catalog = if self.catalog_dirty || self.catalog_staged {
            self.catalog_block_count()
        } else {
            0
        };
        leaves + leaves / 32 + 8 + catalog
    }

    /// Refuse an operation of kind `what` that allocates about `blocks`
    /// itself when it would eat into the reserve. `csum_groups`: checksum
    /// groups pending in the running transaction.
    pub fn check_room(&self, what: SpaceUse, blocks: u64, csum_groups: u64) -> Result<()> {
        let reserve = match what {
            SpaceUse::Ordinary => self.meta_reserve(),
            SpaceUse::Discard => self.meta_reserve() / 2,
        };
        let need = self.commit_need(csum_groups) + reserve + blocks;
        if self.meta_available() >= need {
            return Ok(());
        }
        Err(Error::NoSpace {
            pool: self.blocks.pool_name.clone(),
            detail: format!(
                "the metadata area is full ({} KiB of {} KiB used; the last {} KiB are kept so that removals always work); \
                 remove snapshots or volumes (`vpool snap remove`, `vpool vol remove`), or grow the metadata area",
                self.blocks.msm.used() * 4,
                self.blocks.msm.blocks() * 4,
                reserve * 4,
            ),
        })
    }

    /// Room for a metadata operation (create, snapshot, clone, grow).
    pub fn check_room_for_op(&self, csum_groups: u64) -> Result<()> {
        self.check_room(
            SpaceUse::Ordinary,
            OP_BLOCKS + self.catalog_block_count() + 1,
            csum_groups,
        )
    }

    /// How many values the next release step may free so that its commit
    /// fits in the blocks available now (the reserve included): each value
    /// may copy a reference-count leaf and its checksum leaves.
    pub fn release_budget(&self, csum_groups: u64) -> u64 {
        let fixed = self.commit_need(csum_groups) + OP_BLOCKS + self.catalog_block_count();
        let room = self.meta_available().saturating_sub(fixed);
        let per_value = 1 + self.csum_leaves_per_chunk();
        (room * 32 / 33 / per_value).clamp(16, 1 << 16)
    }
}
