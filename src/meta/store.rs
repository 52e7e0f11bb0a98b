//! The metadata store: transactions over the metadata area. It owns the node
//! cache, the blocks dirtied by the running transaction, both space maps and
//! the catalog, and commits them in the order that keeps the last committed
//! state intact at every instant:
//!
//! 1. (caller) flush the data members,
//! 2. fold this transaction's data reference counts into their B-tree,
//! 3. write new catalog blocks, dirty B-tree nodes and changed space-map
//!    pages (to the slot the last commit did not use), flush,
//! 4. write the superblock into slot `txid % 2` of every copy, flush.
//!
//! A crash before step 4 completes leaves the previous superblock, which
//! reaches only blocks that nothing in steps 2–3 overwrote.

use super::btree::{self, NodeStore, TreeSpec, ValueKind};
use super::catalog::Catalog;
use super::codec::*;
use super::dataspace::DataSpace;
use super::header::{BlockKind, Header, HEADER_SIZE};
use super::node::Node;
use super::spacemap::{MetaSpaceMap, ENTRIES_PER_PAGE};
use super::superblock::Superblock;
use crate::error::{Error, Result};
use crate::raid::MetaMirror;
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;

pub const VOLUMES_OWNER: u64 = u64::MAX - 1;
pub const DSM_OWNER: u64 = u64::MAX - 2;
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
/// checksum u32 reserved for data checksums, flags u32).
pub fn mapping_spec(owner: u64) -> TreeSpec {
    TreeSpec {
        owner,
        value_size: 16,
        values: ValueKind::DataChunk,
    }
}

/// Where the metadata area sits on each copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetaLayout {
    /// Superblock slot 0; slot 1 follows, then the space-map pages.
    pub meta_offset: u64,
    pub msm_pages: u32,
    pub meta_blocks: u64,
}

impl MetaLayout {
    pub fn msm_slot_offset(&self, page: usize, slot: usize) -> u64 {
        self.meta_offset + (2 + 2 * page as u64 + slot as u64) * BLOCK_SIZE as u64
    }

    pub fn block_offset(&self, b: u64) -> u64 {
        self.meta_offset + (2 + 2 * self.msm_pages as u64 + b) * BLOCK_SIZE as u64
    }

    /// Bytes from `meta_offset` to the end of the metadata area.
    pub fn area_bytes(&self) -> u64 {
        (2 + 2 * self.msm_pages as u64 + self.meta_blocks) * BLOCK_SIZE as u64
    }
}

/// Per-volume entry of the volumes tree.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolumeRoot {
    pub root: u64,
    pub mapped: u64,
}

impl VolumeRoot {
    pub fn encode(&self) -> [u8; 32] {
        let mut v = [0u8; 32];
        put_u64(&mut v, 0, self.root);
        put_u64(&mut v, 8, self.mapped);
        v
    }

    pub fn decode(v: &[u8]) -> VolumeRoot {
        VolumeRoot {
            root: get_u64(v, 0),
            mapped: get_u64(v, 8),
        }
    }
}

pub struct MetaStore {
    pub(crate) mirror: MetaMirror,
    layout: MetaLayout,
    pool_tag: u64,
    committed: Superblock,
    pub volumes_root: u64,
    dsm_root: u64,
    catalog_head: u64,
    catalog_bytes: u64,
    pub next_volume_id: u64,
    catalog: Catalog,
    catalog_dirty: bool,
    member_states: Vec<u8>,
    msm: MetaSpaceMap,
    dirty: HashMap<u64, Arc<Node>>,
    cache: Mutex<LruCache<u64, Arc<Node>>>,
    pub data: DataSpace,
    pool_name: String,
    /// Damaged or unreadable superblock copies seen at open.
    pub superblock_problems: Vec<String>,
    /// What open did to recover from an interrupted commit.
    pub recovery_notes: Vec<String>,
}

fn corrupt(what: String) -> Error {
    Error::Corrupt(what)
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
            volumes_root: 0,
            dsm_root: 0,
            catalog_head: 0,
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
        };
        let cap = NonZeroUsize::new(cache_nodes.max(64)).unwrap_or(NonZeroUsize::MIN);
        MetaStore {
            mirror,
            layout,
            pool_tag: pool_tag(&pool_uuid),
            committed,
            volumes_root: 0,
            dsm_root: 0,
            catalog_head: 0,
            catalog_bytes: 0,
            next_volume_id: 1,
            catalog: Catalog::default(),
            catalog_dirty: false,
            member_states: vec![0; members],
            msm: MetaSpaceMap::new(layout.meta_blocks),
            dirty: HashMap::new(),
            cache: Mutex::new(LruCache::new(cap)),
            data: DataSpace::new(data_chunks),
            pool_name: String::new(),
            superblock_problems: Vec::new(),
            recovery_notes: Vec::new(),
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
        s.pool_name = pool_name.to_string();
        s.catalog = Catalog {
            pool_name: pool_name.to_string(),
            volumes: vec![],
        };
        s.catalog_dirty = true;
        s.commit()?;
        Ok(s)
    }

    /// Read every valid superblock copy; the highest transaction wins.
    pub fn read_superblocks(
        mirror: &MetaMirror,
        layout: &MetaLayout,
        pool_uuid: [u8; 16],
    ) -> (Option<Superblock>, Vec<String>) {
        let mut best: Option<Superblock> = None;
        let mut problems = Vec::new();
        for (idx, (member, dev)) in mirror.copies().iter().enumerate() {
            if dev.is_none() {
                continue;
            }
            for slot in 0..2u64 {
                let mut b = vec![0u8; BLOCK_SIZE];
                let off = Superblock::slot_offset(layout.meta_offset, slot);
                if let Err(e) = mirror.read_copy(idx, off, &mut b) {
                    problems.push(format!("member {member} superblock slot {slot}: {e}"));
                    continue;
                }
                match Superblock::decode(&b) {
                    Ok(sb) if sb.pool_uuid == pool_uuid && sb.txid % 2 == slot => {
                        if best.as_ref().is_none_or(|x| sb.txid > x.txid) {
                            best = Some(sb);
                        }
                    }
                    Ok(_) => problems.push(format!(
                        "member {member} superblock slot {slot}: belongs to another pool or slot"
                    )),
                    Err(e) if b.iter().all(|&x| x == 0) => {
                        let _ = e; // never written: normal for slot 1 of a new pool
                    }
                    Err(e) => problems.push(format!("member {member} superblock slot {slot}: {e}")),
                }
            }
        }
        (best, problems)
    }

    /// Open the committed state.
    pub fn open(
        mirror: MetaMirror,
        layout: MetaLayout,
        pool_uuid: [u8; 16],
        members: usize,
        data_chunks: u64,
        cache_nodes: usize,
    ) -> Result<MetaStore> {
        let (sb, problems) = MetaStore::read_superblocks(&mirror, &layout, pool_uuid);
        let sb = sb.ok_or_else(|| {
            corrupt(format!(
                "no valid superblock on any metadata copy ({})",
                problems.join("; ")
            ))
        })?;
        if sb.msm_pages != layout.msm_pages || sb.meta_blocks != layout.meta_blocks {
            return Err(corrupt(
                "superblock and label disagree on the metadata area size".into(),
            ));
        }
        if sb.data_chunks != data_chunks {
            return Err(corrupt(format!(
                "superblock counts {} data chunks, the labels' geometry {data_chunks}",
                sb.data_chunks
            )));
        }
        let mut s = MetaStore::blank(
            mirror,
            layout,
            pool_uuid,
            sb.data_chunks,
            sb.chunk_size,
            members,
            cache_nodes,
        );
        // Space-map pages, each from its selected slot.
        let mut counts = vec![0u32; layout.meta_blocks as usize];
        let tag = s.pool_tag;
        for p in 0..layout.msm_pages as usize {
            let slot = sb.selector_bit(p);
            let nr = (2 * p + slot) as u64;
            let mut b = vec![0u8; BLOCK_SIZE];
            let mut check = |blk: &[u8]| {
                Header::validate(blk, BlockKind::SpaceMap, nr, tag, sb.txid).map(|_| ())
            };
            s.mirror
                .read_valid(
                    &format!("space-map page {p}"),
                    layout.msm_slot_offset(p, slot),
                    &mut b,
                    &mut check,
                )
                .map_err(|e| corrupt(format!("space-map page {p}: {e}")))?;
            MetaSpaceMap::decode_page(&b, p, &mut counts).map_err(corrupt)?;
        }
        counts[0] = u32::MAX;
        s.msm = MetaSpaceMap::from_counts(counts);
        s.volumes_root = sb.volumes_root;
        s.dsm_root = sb.dsm_root;
        s.catalog_head = sb.catalog_head;
        s.catalog_bytes = sb.catalog_bytes;
        s.next_volume_id = sb.next_volume_id;
        // Stale slots (an older transaction where the newest belongs) are
        // normal after a crash mid-commit, not damage.
        s.superblock_problems = problems
            .into_iter()
            .filter(|p| !p.contains("belongs to another pool or slot"))
            .collect();
        s.bring_superblocks_up_to_date(&sb);
        s.member_states = sb.member_states.clone();
        s.member_states.resize(members, 0);
        s.committed = sb;
        s.catalog = s.read_catalog()?;
        s.pool_name = s.catalog.pool_name.clone();
        // Rebuild the in-memory data space map from the persistent counts.
        let mut entries = Vec::new();
        btree::walk(&s, s.dsm_root, 0, u64::MAX, &mut |k, v, _| {
            entries.push((k, get_u32(v, 0)));
            Ok(true)
        })?;
        for (k, c) in entries {
            if k >= s.data.total() {
                return Err(corrupt(format!(
                    "reference count for chunk {k} beyond the pool"
                )));
            }
            s.data.load(k, c);
        }
        Ok(s)
    }

    /// A commit interrupted between superblock copies leaves some copies one
    /// transaction behind; rewrite them (best effort on read-only devices).
    fn bring_superblocks_up_to_date(&mut self, sb: &Superblock) {
        let off = Superblock::slot_offset(self.layout.meta_offset, sb.txid);
        let bytes = sb.encode();
        for idx in 0..self.mirror.copies().len() {
            let (member, Some(dev)) = &self.mirror.copies()[idx] else {
                continue;
            };
            let mut b = vec![0u8; BLOCK_SIZE];
            let current = dev.read_at(&mut b, off).is_ok()
                && Superblock::decode(&b)
                    .map(|x| x.txid == sb.txid && x.pool_uuid == sb.pool_uuid)
                    .unwrap_or(false);
            if !current {
                let done = dev.write_at(&bytes, off).and_then(|_| dev.flush()).is_ok();
                self.recovery_notes.push(format!(
                    "superblock copy on member {member} ({}) was behind transaction {}{}",
                    dev.name(),
                    sb.txid,
                    if done {
                        "; brought up to date"
                    } else {
                        "; could not be rewritten"
                    }
                ));
            }
        }
    }

    pub fn layout(&self) -> &MetaLayout {
        &self.layout
    }

    pub fn pool_tag(&self) -> u64 {
        self.pool_tag
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
        if member < self.member_states.len() {
            self.member_states[member] = state;
        }
    }

    pub fn msm(&self) -> &MetaSpaceMap {
        &self.msm
    }

    pub fn msm_mut(&mut self) -> &mut MetaSpaceMap {
        &mut self.msm
    }

    pub fn dsm_root(&self) -> u64 {
        self.dsm_root
    }

    pub fn dirty_nodes(&self) -> usize {
        self.dirty.len()
    }

    /// Anything to commit? A changed member state alone is not: it is
    /// recorded with the first real change (a pool opened degraded and only
    /// read leaves its missing member trusted).
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
            || !self.data.overlay.is_empty()
            || self.catalog_dirty
            || !self.msm.dirty_pages().is_empty()
    }

    fn read_catalog(&self) -> Result<Catalog> {
        let mut bytes = Vec::with_capacity(self.catalog_bytes as usize);
        let mut b = self.catalog_head;
        let mut hops = 0u64;
        while b != 0 {
            hops += 1;
            if hops > self.layout.meta_blocks {
                return Err(corrupt("catalog chain loops".into()));
            }
            let blk = self.read_block(b, BlockKind::Catalog)?;
            let h = Header::read(&blk);
            let n = (h.low_key as usize).min(BLOCK_SIZE - HEADER_SIZE);
            bytes.extend_from_slice(&blk[HEADER_SIZE..HEADER_SIZE + n]);
            b = h.next;
        }
        if bytes.len() as u64 != self.catalog_bytes {
            return Err(corrupt(format!(
                "catalog is {} bytes, superblock says {}",
                bytes.len(),
                self.catalog_bytes
            )));
        }
        Catalog::decode(&bytes).map_err(|e| corrupt(format!("catalog: {e}")))
    }

    /// Blocks of the committed catalog chain.
    pub fn catalog_blocks(&self) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        let mut b = self.catalog_head;
        while b != 0 && out.len() as u64 <= self.layout.meta_blocks {
            out.push(b);
            let blk = self.read_block(b, BlockKind::Catalog)?;
            b = Header::read(&blk).next;
        }
        Ok(out)
    }

    /// Read one metadata block from the first valid copy.
    pub fn read_block(&self, b: u64, kind: BlockKind) -> Result<Vec<u8>> {
        if b == 0 || b >= self.layout.meta_blocks {
            return Err(corrupt(format!(
                "reference to metadata block {b} outside the area"
            )));
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        let (tag, max) = (self.pool_tag, self.committed.txid);
        let mut check = |blk: &[u8]| {
            let h = Header::validate(blk, kind, b, tag, max)?;
            if kind == BlockKind::Node {
                Node::decode(blk)?;
            }
            let _ = h;
            Ok(())
        };
        self.mirror
            .read_valid(
                &format!("metadata block {b} ({kind:?})"),
                self.layout.block_offset(b),
                &mut buf,
                &mut check,
            )
            .map_err(|e| corrupt(format!("metadata block {b} ({kind:?}): {e}")))?;
        Ok(buf)
    }

    fn write_catalog(&mut self) -> Result<()> {
        for b in self.catalog_blocks()? {
            self.msm.dec(b);
        }
        let bytes = self.catalog.encode();
        let per = BLOCK_SIZE - HEADER_SIZE;
        let pieces: Vec<&[u8]> = bytes.chunks(per).collect();
        let mut blocks = Vec::with_capacity(pieces.len());
        for _ in 0..pieces.len() {
            blocks.push(self.alloc_block()?);
        }
        let txid = self.committed.txid + 1;
        for (i, piece) in pieces.iter().enumerate() {
            let mut b = vec![0u8; BLOCK_SIZE];
            let h = Header {
                kind: BlockKind::Catalog as u16,
                blocknr: blocks[i],
                txid,
                pool_tag: self.pool_tag,
                low_key: piece.len() as u64,
                next: blocks.get(i + 1).copied().unwrap_or(0),
                ..Header::default()
            };
            h.write(&mut b);
            b[HEADER_SIZE..HEADER_SIZE + piece.len()].copy_from_slice(piece);
            seal(&mut b, BlockKind::Catalog.salt());
            self.mirror
                .write(self.layout.block_offset(blocks[i]), &b)
                .map_err(|e| Error::io("writing catalog", e))?;
        }
        self.catalog_head = blocks.first().copied().unwrap_or(0);
        self.catalog_bytes = bytes.len() as u64;
        Ok(())
    }

    /// Commit the running transaction. The caller must have flushed the data
    /// members first (so every mapping committed here points at durable data).
    pub fn commit(&mut self) -> Result<()> {
        if !self.has_changes() {
            return Ok(());
        }
        let txid = self.committed.txid + 1;
        // Fold data reference counts into their tree.
        let mut changes: Vec<(u64, u32)> =
            self.data.overlay.iter().map(|(k, v)| (*k, *v)).collect();
        changes.sort_unstable();
        for (chunk, count) in changes {
            let root = self.dsm_root;
            self.dsm_root = if count == 0 {
                btree::remove(self, &DSM_SPEC, root, chunk)?.0
            } else {
                btree::insert(self, &DSM_SPEC, root, chunk, &count.to_le_bytes())?.0
            };
        }
        if self.catalog_dirty {
            self.write_catalog()?;
        }
        let io = |e| Error::io("writing metadata", e);
        let mut dirty: Vec<(u64, Arc<Node>)> = self.dirty.drain().collect();
        dirty.sort_unstable_by_key(|(b, _)| *b);
        for (b, node) in &dirty {
            let bytes = node.encode(*b, txid, self.pool_tag);
            self.mirror
                .write(self.layout.block_offset(*b), &bytes)
                .map_err(io)?;
        }
        let mut sb = self.committed.clone();
        for p in self.msm.dirty_pages() {
            let slot = 1 - self.committed.selector_bit(p);
            let page = self
                .msm
                .encode_page(p, (2 * p + slot) as u64, txid, self.pool_tag);
            self.mirror
                .write(self.layout.msm_slot_offset(p, slot), &page)
                .map_err(io)?;
            sb.set_selector_bit(p, slot);
        }
        self.mirror.flush().map_err(io)?;
        sb.txid = txid;
        sb.volumes_root = self.volumes_root;
        sb.dsm_root = self.dsm_root;
        sb.catalog_head = self.catalog_head;
        sb.catalog_bytes = self.catalog_bytes;
        sb.used_chunks = self.data.used();
        sb.used_meta_blocks = self.msm.used();
        sb.next_volume_id = self.next_volume_id;
        sb.member_states = self.member_states.clone();
        sb.time = now();
        let bytes = sb.encode();
        self.mirror
            .write(
                Superblock::slot_offset(self.layout.meta_offset, txid),
                &bytes,
            )
            .map_err(io)?;
        self.mirror.flush().map_err(io)?;
        // Committed: the new state is the one to protect from now on.
        self.committed = sb;
        self.catalog_dirty = false;
        self.msm.committed();
        self.data.committed();
        let mut cache = self.cache.lock();
        for (b, node) in dirty {
            cache.put(b, node);
        }
        Ok(())
    }

    // ---- data chunk reference counts ----

    pub fn data_count(&self, c: u64) -> Result<u32> {
        if let Some(n) = self.data.overlay.get(&c) {
            return Ok(*n);
        }
        Ok(btree::lookup(self, self.dsm_root, c)?
            .map(|(v, _)| get_u32(&v, 0))
            .unwrap_or(0))
    }

    pub fn data_alloc(&mut self) -> Result<u64> {
        self.data.alloc().ok_or_else(|| Error::NoSpace {
            pool: self.pool_name.clone(),
            detail: format!(
                "all {} data chunks are in use ({} freed, reusable after the next commit)",
                self.data.total(),
                self.data.pending_free()
            ),
        })
    }

    pub fn data_inc(&mut self, c: u64) -> Result<()> {
        let n = self.data_count(c)?;
        if n == 0 {
            return Err(corrupt(format!(
                "data chunk {c} is referenced but marked free"
            )));
        }
        self.data.set_count(c, n, n + 1);
        Ok(())
    }

    pub fn data_dec(&mut self, c: u64) -> Result<()> {
        let n = self.data_count(c)?;
        if n == 0 {
            return Err(corrupt(format!("data chunk {c} released twice")));
        }
        self.data.set_count(c, n, n - 1);
        Ok(())
    }

    // ---- volumes tree ----

    pub fn volume_root(&self, id: u64) -> Result<VolumeRoot> {
        Ok(btree::lookup(self, self.volumes_root, id)?
            .map(|(v, _)| VolumeRoot::decode(&v))
            .unwrap_or_default())
    }

    /// Replace a volume's entry. The volumes tree owns one reference to the
    /// mapping root; the caller has already accounted for it.
    pub fn set_volume_root(&mut self, id: u64, vr: VolumeRoot) -> Result<()> {
        let root = self.volumes_root;
        // Insert without touching reference counts of the old/new roots.
        let (nr, _old) = btree::insert(self, &VOLUMES_SPEC, root, id, &vr.encode())?;
        self.volumes_root = nr;
        Ok(())
    }

    pub fn remove_volume_root(&mut self, id: u64) -> Result<()> {
        let root = self.volumes_root;
        let (nr, old) = btree::remove(self, &VOLUMES_SPEC, root, id)?;
        self.volumes_root = nr;
        if let Some(v) = old {
            let r = VolumeRoot::decode(&v).root;
            btree::dec_tree(self, &mapping_spec(id), r)?;
        }
        Ok(())
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

impl NodeStore for MetaStore {
    fn read_node(&self, b: u64) -> Result<Arc<Node>> {
        if let Some(n) = self.dirty.get(&b) {
            return Ok(n.clone());
        }
        if let Some(n) = self.cache.lock().get(&b) {
            return Ok(n.clone());
        }
        let blk = self.read_block(b, BlockKind::Node)?;
        let node = Arc::new(Node::decode(&blk).map_err(|e| corrupt(format!("node {b}: {e}")))?);
        self.cache.lock().put(b, node.clone());
        Ok(node)
    }

    fn write_node(&mut self, b: u64, node: Node) {
        self.dirty.insert(b, Arc::new(node));
    }

    fn is_new(&self, b: u64) -> bool {
        self.msm.is_new(b)
    }

    fn alloc_block(&mut self) -> Result<u64> {
        let b = self.msm.alloc().ok_or_else(|| Error::NoSpace {
            pool: self.pool_name.clone(),
            detail: format!(
                "the metadata area is full ({} blocks of {} KiB)",
                self.layout.meta_blocks,
                BLOCK_SIZE / 1024
            ),
        })?;
        self.cache.lock().pop(&b);
        Ok(b)
    }

    fn refcount(&self, b: u64) -> u32 {
        self.msm.count(b)
    }

    fn inc_block(&mut self, b: u64) {
        self.msm.inc(b);
    }

    fn dec_block(&mut self, b: u64) {
        self.msm.dec(b);
        if self.msm.count(b) == 0 {
            self.dirty.remove(&b);
        }
    }

    fn inc_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()> {
        match spec.values {
            ValueKind::Plain => Ok(()),
            ValueKind::DataChunk => self.data_inc(get_u64(v, 0)),
            ValueKind::Subtree => {
                let r = get_u64(v, 0);
                if r != 0 {
                    self.msm.inc(r);
                }
                Ok(())
            }
        }
    }

    fn dec_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()> {
        match spec.values {
            ValueKind::Plain => Ok(()),
            ValueKind::DataChunk => self.data_dec(get_u64(v, 0)),
            ValueKind::Subtree => btree::dec_tree(self, &mapping_spec(0), get_u64(v, 0)),
        }
    }
}

/// Entries per space-map page (re-exported for docs and checks).
pub const MSM_ENTRIES_PER_PAGE: usize = ENTRIES_PER_PAGE;
