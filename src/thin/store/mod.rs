//! The thin pool's metadata store: its schema and its transactions over the
//! metadata area, built on the generic structures of `meta` (blocks,
//! B-tree, space maps, extents). The schema: the superblock, the volumes
//! tree of mapping roots, the mapping trees, the data space map
//! (`dataspace`) and its reference-count tree, data checksums and the
//! write intent (`csum`), the catalog (`catalog`, `catalog_tree`) and the
//! flush log (`log`). The store owns the node cache, the blocks dirtied by
//! the running transaction, both space maps and the catalog, and commits
//! them in the order that keeps the last committed state intact at every
//! instant:
//!
//! 1. (caller) flush the data members,
//! 2. fold this transaction's data reference counts into their B-tree,
//! 3. write new catalog blocks, dirty B-tree nodes and changed space-map
//!    pages (to the slot the last commit did not use), flush,
//! 4. write the superblock into slot `txid % 2` of every copy, flush.
//!
//! A crash before step 4 completes leaves the previous superblock, which
//! reaches only blocks that nothing in steps 2–3 overwrote.

use crate::error::{Error, Result};
pub use crate::meta::blocks::{BlockStore, MetaLayout};
use crate::meta::btree::{self, NodeStore, TreeSpec, ValueKind};
use crate::meta::codec::*;
use crate::meta::header::{BlockKind, Header, HEADER_SIZE};
use crate::meta::node::Node;
use crate::meta::spacemap::{MetaSpaceMap, ENTRIES_PER_PAGE};
use crate::raid::MetaMirror;
use crate::units::{Block, Chunk};
use catalog::Catalog;
use dataspace::DataSpace;
use std::collections::HashMap;
use std::sync::Arc;
use superblock::{SbCsum, SbTransition, Superblock};

pub const VOLUMES_OWNER: u64 = u64::MAX - 1;
pub const DSM_OWNER: u64 = u64::MAX - 2;
/// Keys of the volumes tree at or above this one hold mapping trees of
/// removed volumes and snapshots, released in steps (no catalog record).
pub const RELEASING: u64 = 1 << 62;
pub const DEFAULT_CACHE_NODES: usize = 16384;

/// Tree of volumes: id → (mapping root, mapped chunks, reserved).
pub const VOLUMES_SPEC: TreeSpec = TreeSpec {
    owner: VOLUMES_OWNER,
    value_size: 32,
    values: ValueKind::Subtree,
};
/// Data reference counts: chunk → count (u32), only non-zero counts stored.
pub const DSM_SPEC: TreeSpec = TreeSpec {
    owner: DSM_OWNER,
    value_size: 4,
    values: ValueKind::Plain,
};

/// Mapping tree of one volume: virtual chunk → (physical chunk u64,
/// u32 reserved (data checksums are in the checksum tree), flags u32).
pub fn mapping_spec(owner: u64) -> TreeSpec {
    TreeSpec {
        owner,
        value_size: 16,
        values: ValueKind::DataChunk,
    }
}

/// A mapping tree's value for physical chunk `c`.
pub fn mapping_value(c: Chunk) -> [u8; 16] {
    let mut v = [0u8; 16];
    put_u64(&mut v, 0, c.index());
    v
}

/// The physical chunk a mapping tree's value points at.
pub fn mapped_chunk(v: &[u8]) -> Chunk {
    Chunk(get_u64(v, 0))
}

/// Per-volume entry of the volumes tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeRoot {
    pub root: Block,
    pub mapped: u64,
    /// The root's generation tag as recorded on disk (0: none). Kept up to
    /// date by the commit, not by callers.
    pub gen: u32,
}

impl VolumeRoot {
    pub fn encode(&self) -> [u8; 32] {
        let mut v = [0u8; 32];
        put_block(&mut v, 0, self.root);
        put_u64(&mut v, 8, self.mapped);
        put_u32(&mut v, 16, self.gen);
        v
    }

    pub fn decode(v: &[u8]) -> VolumeRoot {
        VolumeRoot {
            root: get_block(v, 0),
            mapped: get_u64(v, 8),
            gen: get_u32(v, 16),
        }
    }
}

pub struct MetaStore {
    /// The generic transactional block store the trees live in.
    pub blocks: BlockStore,
    committed: Superblock,
    pub volumes_root: Block,
    /// The volumes tree's entries, kept in step with it: the data path
    /// finds a volume's mapping root without walking the tree.
    roots: HashMap<u64, VolumeRoot>,
    dsm_root: Block,
    catalog_head: Block,
    catalog_bytes: u64,
    pub next_volume_id: u64,
    catalog: Catalog,
    /// The catalog changed since it was last staged.
    catalog_dirty: bool,
    /// The catalog was staged in this transaction (a commit must write it).
    catalog_staged: bool,
    /// Blocks of the current catalog chain (committed or staged), once known.
    catalog_chain: Option<Vec<Block>>,
    /// Catalog blocks of the running transaction, kept until it commits
    /// so that a failed commit can write them again.
    staged_catalog: Vec<(Block, Vec<u8>)>,
    /// The catalog is a tree rooted at `catalog_head` (see `catalog_tree`).
    catalog_tree: bool,
    /// The records the catalog tree holds (by id; 0: the pool name).
    catalog_saved: HashMap<u64, crate::thin::store::catalog::VolumeRecord>,
    member_states: Vec<u8>,
    /// Layout transition checkpoint to record with the next commit.
    transition: Option<SbTransition>,
    /// Member count, member states, data chunks, transition or pool
    /// properties changed.
    shape_dirty: bool,
    /// `pool set metadata-autogrow=off`.
    no_autogrow: bool,
    /// The rebuild replaces a member in service (`Superblock::replacing`).
    replacing: bool,
    pub data: DataSpace,
    /// Data checksums (checksum-tree root, intent block), if the pool has them.
    csum: Option<SbCsum>,
    /// Groups of the checksum tree recently read.
    csum_cache: csum::GroupCache,
    /// Damaged or unreadable superblock copies seen at open.
    pub superblock_problems: Vec<String>,
    /// This build committed the pool (its superblock is of version 12):
    /// the log may hold runs of intents, tagged intents and partial
    /// parities, which older readers refuse.
    log_runs: bool,
    /// The log keeps a ring of partial parities (raid5; see `thin::ppl`).
    log_ring: bool,
    /// What open did to recover from an interrupted commit.
    pub recovery_notes: Vec<String>,
    /// Everything past the superblock and the fixed area's space map is
    /// read (see `open` and `load`).
    loaded: bool,
    /// The flush log's directory block (0: none) and blocks (see `log`).
    log_dir: Block,
    log_blocks: Vec<Block>,
}

fn corrupt(what: String) -> Error {
    Error::corrupt(what)
}

impl MetaStore {
    fn blank(
        mirror: MetaMirror,
        layout: MetaLayout,
        pool_uuid: [u8; 16],
        data_chunks: u64,
        chunk_size: u64,
        members: usize,
        cache_nodes: usize,
    ) -> MetaStore {
        let committed = Superblock {
            txid: 0,
            pool_uuid,
            volumes_root: Block::NONE,
            dsm_root: Block::NONE,
            catalog_head: Block::NONE,
            catalog_bytes: 0,
            data_chunks,
            used_chunks: 0,
            meta_blocks: layout.meta_blocks,
            used_meta_blocks: 0,
            next_volume_id: 1,
            chunk_size,
            time: 0,
            msm_pages: layout.msm_pages,
            member_states: vec![0; members],
            selector: vec![0; (layout.msm_pages as usize).div_ceil(8)],
            transition: None,
            csum: None,
            root_gens: [0; 3],
            extents: Vec::new(),
            no_autogrow: false,
            replacing: false,
            catalog_tree: false,
            catalog_gen: 0,
            log_dir: Block::NONE,
        };
        MetaStore {
            blocks: BlockStore::new(mirror, layout, pool_tag(&pool_uuid), cache_nodes),
            committed,
            volumes_root: Block::NONE,
            roots: HashMap::new(),
            dsm_root: Block::NONE,
            catalog_head: Block::NONE,
            catalog_bytes: 0,
            next_volume_id: 1,
            catalog: Catalog::default(),
            catalog_dirty: false,
            catalog_staged: false,
            catalog_chain: None,
            staged_catalog: Vec::new(),
            catalog_tree: false,
            catalog_saved: HashMap::new(),
            member_states: vec![0; members],
            transition: None,
            shape_dirty: false,
            no_autogrow: false,
            replacing: false,
            data: DataSpace::new(data_chunks),
            csum: None,
            csum_cache: csum::GroupCache::new(),
            superblock_problems: Vec::new(),
            log_runs: false,
            log_ring: false,
            recovery_notes: Vec::new(),
            loaded: false,
            log_dir: Block::NONE,
            log_blocks: Vec::new(),
        }
    }

    /// Format a new metadata area and commit transaction 1.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        mirror: MetaMirror,
        layout: MetaLayout,
        pool_uuid: [u8; 16],
        pool_name: &str,
        data_chunks: u64,
        chunk_size: u64,
        members: usize,
        cache_nodes: usize,
        checksums: bool,
    ) -> Result<MetaStore> {
        let mut s = MetaStore::blank(
            mirror,
            layout,
            pool_uuid,
            data_chunks,
            chunk_size,
            members,
            cache_nodes,
        );
        s.blocks.pool_name = pool_name.to_string();
        s.loaded = true;
        s.catalog = Catalog {
            pool_name: pool_name.to_string(),
            volumes: vec![],
        };
        s.catalog_dirty = true;
        if checksums {
            // The intent block is allocated once and never freed.
            let intent_block = s.alloc_block()?;
            s.csum = Some(SbCsum {
                root: Block::NONE,
                intent_block,
            });
            s.write_intent(0, &[], false)?;
        }
        s.commit()?;
        Ok(s)
    }

    pub fn layout(&self) -> &MetaLayout {
        &self.blocks.layout
    }

    pub fn pool_tag(&self) -> u64 {
        self.blocks.pool_tag
    }

    pub fn committed(&self) -> &Superblock {
        &self.committed
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn catalog_mut(&mut self) -> &mut Catalog {
        self.catalog_dirty = true;
        &mut self.catalog
    }

    pub fn member_states(&self) -> &[u8] {
        &self.member_states
    }

    pub fn set_member_state(&mut self, member: usize, state: u8) {
        if member < self.member_states.len() && self.member_states[member] != state {
            self.member_states[member] = state;
            self.shape_dirty = true;
        }
    }

    /// Does the metadata area grow on its own?
    pub fn autogrow(&self) -> bool {
        !self.no_autogrow
    }

    pub fn set_autogrow(&mut self, on: bool) {
        if self.no_autogrow == on {
            self.no_autogrow = !on;
            self.shape_dirty = true;
        }
    }

    /// Does the rebuild in progress replace a member in service, whose
    /// former device still serves the rows not yet rebuilt?
    pub fn replacing(&self) -> bool {
        self.replacing
    }

    pub fn set_replacing(&mut self, on: bool) {
        if self.replacing != on {
            self.replacing = on;
            self.shape_dirty = true;
        }
    }

    pub fn transition(&self) -> Option<SbTransition> {
        self.transition
    }

    /// Record a transition checkpoint (or its end) with the next commit.
    pub fn set_transition(&mut self, t: Option<SbTransition>) {
        self.transition = t;
        self.shape_dirty = true;
    }

    /// The pool now has `n` members; new ones start online.
    pub fn set_member_count(&mut self, n: usize) {
        self.member_states.resize(n, 0);
        self.shape_dirty = true;
    }

    /// More data chunks became usable (a member was added).
    pub fn grow_data(&mut self, chunks: u64) {
        if chunks > self.data.total() {
            self.data.grow(chunks);
            self.shape_dirty = true;
        }
    }

    /// Fewer data chunks are usable (a member left); none past `chunks` is in use.
    pub fn shrink_data(&mut self, chunks: u64) {
        if chunks < self.data.total() {
            self.data.shrink(chunks);
            self.shape_dirty = true;
        }
    }

    /// The member at `index` left the pool: later members move down one.
    pub fn remove_member_state(&mut self, index: usize) {
        if index < self.member_states.len() {
            self.member_states.remove(index);
            self.shape_dirty = true;
        }
    }

    /// Replace the set of members holding the metadata area (after the
    /// area was copied to any new one), keeping the member health.
    pub fn set_mirror(&mut self, mut mirror: MetaMirror) {
        mirror.attach(self.blocks.mirror.health().clone());
        self.blocks.mirror = mirror;
    }

    pub fn mirror(&self) -> &MetaMirror {
        &self.blocks.mirror
    }

    /// Every volume and snapshot id with a mapping tree.
    pub fn volume_ids(&self) -> Result<Vec<u64>> {
        let mut ids: Vec<u64> = self.roots.keys().copied().collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Load the volumes tree into `roots` (at open).
    pub(crate) fn load_roots(&mut self) -> Result<()> {
        let mut roots = HashMap::new();
        btree::walk(
            self,
            &VOLUMES_SPEC,
            self.volumes_root,
            0,
            u64::MAX,
            &mut |k, v, _| {
                roots.insert(k, VolumeRoot::decode(v));
                Ok(true)
            },
        )?;
        for vr in roots.values() {
            self.blocks.note_root_gen(vr.root, vr.gen);
        }
        self.roots = roots;
        Ok(())
    }

    pub fn msm(&self) -> &MetaSpaceMap {
        &self.blocks.msm
    }

    pub fn msm_mut(&mut self) -> &mut MetaSpaceMap {
        &mut self.blocks.msm
    }

    pub fn dsm_root(&self) -> Block {
        self.dsm_root
    }

    pub fn dirty_nodes(&self) -> usize {
        self.blocks.dirty.len()
    }

    /// Anything to commit? A changed member state alone is not: it is
    /// recorded with the first real change (a pool opened degraded and only
    /// read leaves its missing member trusted).
    pub fn has_changes(&self) -> bool {
        !self.blocks.dirty.is_empty()
            || !self.data.overlay.is_empty()
            || self.catalog_dirty
            || self.catalog_staged
            || !self.blocks.msm.dirty_pages().is_empty()
            || self.shape_dirty
            || self.blocks.extents_dirty
            || self.csum.map(|c| c.root) != self.committed.csum.map(|c| c.root)
    }
}

pub fn pool_tag(uuid: &[u8; 16]) -> u64 {
    get_u64(uuid, 0)
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Entries per space-map page (re-exported for docs and checks).
pub const MSM_ENTRIES_PER_PAGE: usize = ENTRIES_PER_PAGE;

pub mod catalog;
pub mod catalog_tree;
mod commit;
mod extents;
pub use crate::meta::blocks::Place;
pub mod csum;
pub mod dataspace;
pub mod fuzzing;
pub mod log;
mod open;
mod refs;
pub mod space;
pub mod superblock;

#[cfg(test)]
mod tests;
