//! The transactional block store the metadata layer's structures live in
//! (thin-provisioning-tools' transaction manager and block manager): the
//! metadata area's layout on each copy, a sharded cache of clean nodes,
//! the nodes dirtied by the running transaction, the metadata space map
//! (which blocks are in use, and which are new since the last commit, so
//! never overwritten in place), the metadata extents, and reading blocks
//! from the first copy that validates. Knows nothing of volumes: a schema
//! above (`thin::store`) decides what the trees mean and writes the
//! superblock that makes a transaction current.
//!
//! A commit, as the schema runs it: [`BlockStore::write_changes`] writes
//! the dirty nodes and changed space-map pages (into the page slots the
//! last commit did not use) and flushes; the schema then writes and
//! flushes its superblock (naming the new slots); then
//! [`BlockStore::committed`] makes the written nodes clean.

mod place;
pub use place::Place;

use crate::error::{BlockFault, Damage, Error, Result, Why};
use crate::meta::btree;
use crate::meta::codec::BLOCK_SIZE;
use crate::meta::extent::MetaExtent;
use crate::meta::header::{BlockKind, Header};
use crate::meta::node::{gen_tag, Node};
use crate::meta::spacemap::MetaSpaceMap;
use crate::raid::{Array, MetaMirror};
use crate::units::Block;
use lru::LruCache;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

const CACHE_SHARDS: usize = 16;

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

    /// Where block `b` of the fixed area is on each copy: after the two
    /// superblock slots and the space-map page slots.
    pub fn block_offset(&self, b: Block) -> u64 {
        self.meta_offset
            + (2 + 2 * self.msm_pages as u64) * BLOCK_SIZE as u64
            + b.bytes_after(Block(0))
    }

    /// Bytes from `meta_offset` to the end of the metadata area.
    pub fn area_bytes(&self) -> u64 {
        (2 + 2 * self.msm_pages as u64 + self.meta_blocks) * BLOCK_SIZE as u64
    }
}

pub struct BlockStore {
    pub mirror: MetaMirror,
    pub layout: MetaLayout,
    /// Every block carries it: a block of another pool is refused.
    pub pool_tag: u64,
    /// The last committed transaction: a block claiming a later one is
    /// refused (it was written by a commit that did not finish).
    pub last_txid: u64,
    /// For messages.
    pub pool_name: String,
    /// Nodes written in the running transaction.
    pub dirty: HashMap<Block, Arc<Node>>,
    /// Generation tags of tree roots as their pointers record them, by
    /// block: a root read from disk is checked against it. Dropped when
    /// the block is freed.
    pub root_gens: HashMap<Block, u32>,
    /// Clean nodes, in shards (by block number) so that parallel look-ups
    /// do not queue on one lock.
    cache: Vec<Mutex<LruCache<Block, Arc<Node>>>>,
    pub msm: MetaSpaceMap,
    /// Metadata space taken from the data area (see `meta::extent`).
    pub extents: Vec<MetaExtent>,
    /// The extent list changed in this transaction.
    pub extents_dirty: bool,
    /// The array extents are read and written through.
    pub array: Option<Arc<Array>>,
    /// Extent blocks written since the last flush of the array.
    pub ext_unflushed: AtomicBool,
}

impl BlockStore {
    /// A store over `layout` on `mirror`, with room for `cache_nodes`
    /// clean nodes; nothing read yet.
    pub fn new(mirror: MetaMirror, layout: MetaLayout, pool_tag: u64, cache_nodes: usize) -> Self {
        let cap =
            NonZeroUsize::new((cache_nodes / CACHE_SHARDS).max(64)).unwrap_or(NonZeroUsize::MIN);
        BlockStore {
            mirror,
            layout,
            pool_tag,
            last_txid: 0,
            pool_name: String::new(),
            dirty: HashMap::new(),
            root_gens: HashMap::new(),
            cache: (0..CACHE_SHARDS)
                .map(|_| Mutex::new(LruCache::new(cap)))
                .collect(),
            msm: MetaSpaceMap::new(layout.meta_blocks),
            extents: Vec::new(),
            extents_dirty: false,
            array: None,
            ext_unflushed: AtomicBool::new(false),
        }
    }

    /// Clean nodes the cache holds at most.
    pub fn cache_capacity(&self) -> usize {
        self.cache.iter().map(|c| c.lock().cap().get()).sum()
    }

    /// The cache shard of block `b`.
    pub fn cache_of(&self, b: Block) -> &Mutex<LruCache<Block, Arc<Node>>> {
        &self.cache[(b.index() as usize) % CACHE_SHARDS]
    }

    /// Remember the generation tag a pointer records for root `b`.
    pub fn note_root_gen(&mut self, b: Block, gen: u32) {
        if !b.is_none() && gen != 0 {
            self.root_gens.insert(b, gen);
        }
    }

    /// The generation tag a pointer to root `r` records at the commit of
    /// `txid`: that transaction's when it writes the root, else the one
    /// known for it (from its pointer, or the node itself).
    pub fn gen_of(&self, r: Block, txid: u64) -> u32 {
        if r.is_none() {
            return 0;
        }
        if self.dirty.contains_key(&r) {
            return gen_tag(txid);
        }
        if let Some(g) = self.root_gens.get(&r) {
            return *g;
        }
        match self.cache_of(r).lock().peek(&r) {
            Some(n) if n.txid != 0 => gen_tag(n.txid),
            _ => 0,
        }
    }

    /// Read one metadata block from the first valid copy.
    pub fn read_block(&self, b: Block, kind: BlockKind) -> Result<Vec<u8>> {
        self.read_block_expecting(b, kind, None)
    }

    /// Read one metadata block from the first copy that is valid and, for a
    /// tree node, is the child its parent expects (a copy left stale by a
    /// lost write is passed over, and rewritten from the good one).
    pub fn read_block_expecting(
        &self,
        b: Block,
        kind: BlockKind,
        expect: Option<&btree::Expect>,
    ) -> Result<Vec<u8>> {
        if !self.place_exists(Place::Block(b)) {
            let d = Damage::block(kind.name(), b, Why::Block(BlockFault::OutsideArea));
            return Err(d.in_pool(&self.pool_name).into());
        }
        let mut buf = vec![0u8; BLOCK_SIZE];
        let (tag, max) = (self.pool_tag, self.last_txid);
        let mut check = |blk: &[u8]| {
            Header::validate(blk, kind, b.index(), tag, max)?;
            if kind == BlockKind::Node {
                let node = Node::decode(blk)?;
                if let Some(e) = expect {
                    e.check(&node)?;
                }
            }
            Ok(())
        };
        self.read_place_valid(
            &format!("metadata block {b} ({kind:?})"),
            Place::Block(b),
            &mut buf,
            &mut check,
        )
        .map_err(|c| {
            let d = Damage::block(kind.name(), b, Why::Copies(c)).in_pool(&self.pool_name);
            match expect {
                Some(e) => d.in_tree(e.owner),
                None => d,
            }
        })?;
        Ok(buf)
    }

    /// Step 3 of a commit: write the dirty nodes and the changed
    /// space-map pages, each page into the slot `free_slot(page)` names,
    /// then flush every copy. Returns the nodes written, for
    /// [`BlockStore::committed`], and each page's new slot. Keeps
    /// everything on error, so a later attempt redoes it whole.
    #[allow(clippy::type_complexity)]
    pub fn write_changes(
        &mut self,
        txid: u64,
        free_slot: impl Fn(usize) -> usize,
    ) -> Result<(Vec<(Block, Arc<Node>)>, Vec<(usize, usize)>)> {
        let io = |e| Error::io("writing metadata", e);
        let mut dirty: Vec<(Block, Arc<Node>)> =
            self.dirty.iter().map(|(b, n)| (*b, n.clone())).collect();
        dirty.sort_unstable_by_key(|(b, _)| *b);
        for (b, node) in &dirty {
            let bytes = node.encode(*b, txid, self.pool_tag);
            self.write_place(Place::Block(*b), &bytes).map_err(io)?;
        }
        let mut slots = Vec::new();
        for p in self.msm.dirty_pages() {
            let slot = free_slot(p);
            let page = self
                .msm
                .encode_page(p, (2 * p + slot) as u64, txid, self.pool_tag);
            self.write_place(Place::Page(p, slot), &page).map_err(io)?;
            slots.push((p, slot));
        }
        self.flush_meta().map_err(io)?;
        Ok((dirty, slots))
    }

    /// Step 4 done (the superblock of `txid` is durable): the nodes
    /// written are clean, freed blocks become reusable.
    pub fn committed(&mut self, txid: u64, written: Vec<(Block, Arc<Node>)>) {
        self.last_txid = txid;
        self.extents_dirty = false;
        self.msm.committed();
        self.dirty.clear();
        for (b, node) in written {
            self.cache_of(b)
                .lock()
                .put(b, Arc::new(node.resolved(txid)));
        }
    }
}

impl BlockStore {
    pub fn read_node(&self, b: Block) -> Result<Arc<Node>> {
        if let Some(n) = self.dirty.get(&b) {
            return Ok(n.clone());
        }
        if let Some(n) = self.cache_of(b).lock().get(&b) {
            return Ok(n.clone());
        }
        let blk = self.read_block(b, BlockKind::Node)?;
        let node = Arc::new(Node::decode(&blk).map_err(|e| malformed(b, e))?);
        self.cache_of(b).lock().put(b, node.clone());
        Ok(node)
    }

    pub fn read_child(&self, b: Block, expect: &btree::Expect) -> Result<Arc<Node>> {
        let mut expect = *expect;
        if let Some(n) = self.dirty.get(&b).cloned() {
            // Written in this transaction: its generation is not known yet.
            expect.gen = 0;
            expect.check(&n).map_err(|e| expect.damage(b, e))?;
            return Ok(n);
        }
        if expect.level.is_none() {
            expect.gen = self.root_gens.get(&b).copied().unwrap_or(0);
        }
        let cached = self.cache_of(b).lock().get(&b).cloned();
        if let Some(n) = cached {
            expect.check(&n).map_err(|e| expect.damage(b, e))?;
            return Ok(n);
        }
        let blk = self.read_block_expecting(b, BlockKind::Node, Some(&expect))?;
        let node = Arc::new(Node::decode(&blk).map_err(|e| malformed(b, e))?);
        self.cache_of(b).lock().put(b, node.clone());
        Ok(node)
    }

    pub fn write_node(&mut self, b: Block, node: Node) {
        self.dirty.insert(b, Arc::new(node));
    }

    pub fn is_new(&self, b: Block) -> bool {
        self.msm.is_new(b)
    }

    pub fn alloc_block(&mut self) -> Result<Block> {
        let b = self.msm.alloc().ok_or_else(|| Error::NoSpace {
            pool: self.pool_name.clone(),
            detail: format!(
                "the metadata area is full ({} blocks of {} KiB)",
                self.layout.meta_blocks,
                BLOCK_SIZE / 1024
            ),
        })?;
        self.cache_of(b).lock().pop(&b);
        self.root_gens.remove(&b);
        Ok(b)
    }

    pub fn refcount(&self, b: Block) -> u32 {
        self.msm.count(b)
    }

    pub fn inc_block(&mut self, b: Block) {
        self.msm.inc(b);
    }

    pub fn dec_block(&mut self, b: Block) {
        self.msm.dec(b);
        if self.msm.count(b) == 0 {
            self.dirty.remove(&b);
            self.root_gens.remove(&b);
        }
    }
}

/// A node whose block passed its checks but does not decode.
fn malformed(b: Block, why: crate::error::BlockFault) -> Error {
    crate::error::Damage::block("tree node", b, crate::error::Why::Block(why)).into()
}
