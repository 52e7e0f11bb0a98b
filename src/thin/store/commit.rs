//! Committing a transaction (the order that keeps the last commit intact is
//! described at the top of `store`).

use super::extents::Place;
use super::*;
use crate::meta::node::gen_tag;
use crate::meta::spacemap::pages_for;

impl MetaStore {
    /// Release the current catalog chain (the committed one, or the blocks
    /// a failed attempt of this transaction staged); the committed state
    /// keeps reaching them until the commit.
    pub(crate) fn release_catalog_chain(&mut self) -> Result<()> {
        let old = match self.catalog_chain.take() {
            Some(chain) => chain,
            None => self.catalog_blocks()?,
        };
        for b in old {
            self.msm.dec(b);
        }
        self.staged_catalog.clear();
        Ok(())
    }

    /// Encode the catalog into newly allocated blocks, staged for the
    /// commit's writes. The chain it replaces is released (the committed
    /// one, or the blocks a failed attempt of this transaction staged).
    fn stage_catalog(&mut self) -> Result<()> {
        self.release_catalog_chain()?;
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
            self.staged_catalog.push((blocks[i], b));
        }
        self.catalog_head = blocks.first().copied().unwrap_or(0);
        self.catalog_bytes = bytes.len() as u64;
        self.catalog_chain = Some(blocks);
        self.catalog_dirty = false;
        self.catalog_staged = true;
        Ok(())
    }

    /// Commit the running transaction. The caller must have flushed the data
    /// members first (so every mapping committed here points at durable data).
    ///
    /// Under write failure: until the superblock is written, the commit
    /// only wrote blocks no superblock reaches, and it keeps everything it
    /// needs (dirty nodes, staged catalog, space-map changes), so a later
    /// commit retries it whole. A failed flush, or a failed superblock
    /// write, breaks the pool instead (see `raid::health`): a superblock
    /// copy may then point at this transaction, so nothing more is written
    /// until the pool is reloaded from its last commit (`pool clear`).
    pub fn commit(&mut self) -> Result<()> {
        if let Some(e) = self.mirror.health().broken_error() {
            return Err(Error::io("committing metadata", e));
        }
        if !self.loaded {
            return Err(Error::Invalid(
                "the metadata is not fully loaded (open without load): nothing is committed".into(),
            ));
        }
        if !self.has_changes() {
            return Ok(());
        }
        let txid = self.committed.txid + 1;
        // Fold data reference counts into their tree (idempotent: a retry
        // folds the same counts into nodes already copied).
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
            if self.catalog_tree || self.catalog_tree_fits() {
                self.stage_catalog_tree()?;
            } else {
                self.stage_catalog()?;
            }
        }
        let io = |e| Error::io("writing metadata", e);
        for (b, bytes) in &self.staged_catalog {
            self.write_place(Place::Block(*b), bytes)
                .map_err(|e| Error::io("writing catalog", e))?;
        }
        let mut dirty: Vec<(u64, Arc<Node>)> =
            self.dirty.iter().map(|(b, n)| (*b, n.clone())).collect();
        dirty.sort_unstable_by_key(|(b, _)| *b);
        // Mapping roots in the volumes tree carry their generation tags.
        let mut noted = Vec::new();
        for (_, node) in dirty.iter_mut() {
            if node.owner == VOLUMES_OWNER && node.is_leaf() {
                let mut n = (**node).clone();
                for i in 0..n.len() {
                    let at = i * n.value_size;
                    let r = get_u64(&n.values, at);
                    let g = self.gen_of(r, txid);
                    put_u32(&mut n.values, at + 16, g);
                    noted.push((r, g));
                }
                *node = Arc::new(n);
            }
        }
        for (b, node) in &dirty {
            let bytes = node.encode(*b, txid, self.pool_tag);
            self.write_place(Place::Block(*b), &bytes).map_err(io)?;
        }
        let mut sb = self.committed.clone();
        // The metadata space may have grown (a new extent): more pages.
        sb.meta_blocks = self.msm.span();
        sb.msm_pages = pages_for(sb.meta_blocks);
        sb.selector.resize((sb.msm_pages as usize).div_ceil(8), 0);
        sb.extents = self.extents.clone();
        sb.catalog_tree = self.catalog_tree;
        sb.catalog_gen = match self.catalog_tree {
            true => self.gen_of(self.catalog_head, txid),
            false => 0,
        };
        for p in self.msm.dirty_pages() {
            let slot = 1 - sb.selector_bit(p);
            let page = self
                .msm
                .encode_page(p, (2 * p + slot) as u64, txid, self.pool_tag);
            self.write_place(Place::Page(p, slot), &page).map_err(io)?;
            sb.set_selector_bit(p, slot);
        }
        self.flush_meta().map_err(io)?;
        sb.txid = txid;
        sb.volumes_root = self.volumes_root;
        sb.dsm_root = self.dsm_root;
        sb.catalog_head = self.catalog_head;
        sb.catalog_bytes = self.catalog_bytes;
        sb.used_chunks = self.data.used();
        sb.used_meta_blocks = self.msm.used();
        sb.next_volume_id = self.next_volume_id;
        sb.member_states = self.member_states.clone();
        sb.data_chunks = self.data.total();
        sb.transition = self.transition;
        sb.no_autogrow = self.no_autogrow;
        sb.csum = self.csum;
        sb.log_dir = self.log_dir;
        sb.root_gens = [
            self.gen_of(self.volumes_root, txid),
            self.gen_of(self.dsm_root, txid),
            self.gen_of(self.csum.map_or(0, |c| c.root), txid),
        ];
        sb.time = now();
        let bytes = sb.encode();
        let written = self
            .mirror
            .write(
                Superblock::slot_offset(self.layout.meta_offset, txid),
                &bytes,
            )
            .and_then(|()| self.mirror.flush());
        if let Err(e) = written {
            self.mirror.health().set_broken(format!(
                "the commit of transaction {txid} failed writing its superblock ({e}); the pool takes no more writes or commits: fix or replace the device, then `vpool pool clear` (it reloads the pool from its last commit)"
            ));
            return Err(io(e));
        }
        // Committed: the new state is the one to protect from now on.
        self.committed = sb;
        self.catalog_staged = false;
        self.staged_catalog.clear();
        self.extents_dirty = false;
        self.shape_dirty = false;
        self.msm.committed();
        self.data.committed();
        self.dirty.clear();
        for (b, node) in dirty {
            self.cache_of(b)
                .lock()
                .put(b, Arc::new(node.resolved(txid)));
        }
        let roots = [
            self.volumes_root,
            self.dsm_root,
            self.csum.map_or(0, |c| c.root),
        ];
        for (r, g) in roots.into_iter().zip(self.committed.root_gens).chain(noted) {
            self.note_root_gen(r, g);
        }
        if self.catalog_tree {
            self.note_root_gen(self.catalog_head, self.committed.catalog_gen);
        }
        Ok(())
    }

    /// The generation tag a pointer to root `r` records at the commit of
    /// `txid`: that transaction's when it writes the root, else the one
    /// known for it (from its pointer, or the node itself).
    fn gen_of(&self, r: u64, txid: u64) -> u32 {
        if r == 0 {
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
}
