//! Committing a transaction (the order that keeps the last commit intact is
//! described at the top of `store`).

use super::*;
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
            self.blocks.msm.dec(b);
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
                blocknr: blocks[i].index(),
                txid,
                pool_tag: self.blocks.pool_tag,
                low_key: piece.len() as u64,
                next: blocks.get(i + 1).map_or(0, |b| b.index()),
                ..Header::default()
            };
            h.write(&mut b);
            b[HEADER_SIZE..HEADER_SIZE + piece.len()].copy_from_slice(piece);
            seal(&mut b, BlockKind::Catalog.salt());
            self.staged_catalog.push((blocks[i], b));
        }
        self.catalog_head = blocks.first().copied().unwrap_or(Block::NONE);
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
        if let Some(e) = self.blocks.mirror.health().broken_error() {
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
        let mut changes: Vec<(u64, u32)> = self
            .data
            .overlay
            .iter()
            .map(|(k, v)| (k.index(), *v))
            .collect();
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
            self.blocks
                .write_place(Place::Block(*b), bytes)
                .map_err(|e| Error::io("writing catalog", e))?;
        }
        // Mapping roots in the volumes tree carry their generation tags
        // (recomputed by every attempt, so a retry tags them alike).
        let mut noted = Vec::new();
        let leaves: Vec<Block> = (self.blocks.dirty.iter())
            .filter(|(_, n)| n.owner == VOLUMES_OWNER && n.is_leaf())
            .map(|(b, _)| *b)
            .collect();
        for b in leaves {
            let mut n = (*self.blocks.dirty[&b]).clone();
            for i in 0..n.len() {
                let at = i * n.value_size;
                let r = get_block(&n.values, at);
                let g = self.blocks.gen_of(r, txid);
                put_u32(&mut n.values, at + 16, g);
                noted.push((r, g));
            }
            self.blocks.dirty.insert(b, Arc::new(n));
        }
        let mut sb = self.committed.clone();
        // The metadata space may have grown (a new extent): more pages.
        sb.meta_blocks = self.blocks.msm.span();
        sb.msm_pages = pages_for(sb.meta_blocks);
        sb.selector.resize((sb.msm_pages as usize).div_ceil(8), 0);
        sb.extents = self.blocks.extents.clone();
        sb.catalog_tree = self.catalog_tree;
        sb.catalog_gen = match self.catalog_tree {
            true => self.blocks.gen_of(self.catalog_head, txid),
            false => 0,
        };
        let (written, slots) = self
            .blocks
            .write_changes(txid, |p| 1 - sb.selector_bit(p))?;
        for (p, slot) in slots {
            sb.set_selector_bit(p, slot);
        }
        sb.txid = txid;
        sb.volumes_root = self.volumes_root;
        sb.dsm_root = self.dsm_root;
        sb.catalog_head = self.catalog_head;
        sb.catalog_bytes = self.catalog_bytes;
        sb.used_chunks = self.data.used();
        sb.used_meta_blocks = self.blocks.msm.used();
        sb.next_volume_id = self.next_volume_id;
        sb.member_states = self.member_states.clone();
        sb.data_chunks = self.data.total();
        sb.transition = self.transition;
        sb.no_autogrow = self.no_autogrow;
        sb.replacing = self.replacing;
        sb.csum = self.csum;
        sb.log_dir = self.log_dir;
        sb.root_gens = [
            self.blocks.gen_of(self.volumes_root, txid),
            self.blocks.gen_of(self.dsm_root, txid),
            self.blocks
                .gen_of(self.csum.map_or(Block::NONE, |c| c.root), txid),
        ];
        sb.time = now();
        let bytes = sb.encode();
        let sb_written = self
            .blocks
            .mirror
            .write(
                Superblock::slot_offset(self.blocks.layout.meta_offset, txid),
                &bytes,
            )
            .and_then(|()| self.blocks.mirror.flush());
        if let Err(e) = sb_written {
            self.blocks.mirror.health().set_broken(format!(
                "the commit of transaction {txid} failed writing its superblock ({e}); the pool takes no more writes or commits: fix or replace the device, then `vpool pool clear` (it reloads the pool from its last commit)"
            ));
            return Err(io(e));
        }
        // Committed: the new state is the one to protect from now on.
        self.committed = sb;
        self.log_runs = true;
        self.catalog_staged = false;
        self.staged_catalog.clear();
        self.shape_dirty = false;
        self.data.committed();
        self.blocks.committed(txid, written);
        let roots = [
            self.volumes_root,
            self.dsm_root,
            self.csum.map_or(Block::NONE, |c| c.root),
        ];
        for (r, g) in roots.into_iter().zip(self.committed.root_gens).chain(noted) {
            self.blocks.note_root_gen(r, g);
        }
        if self.catalog_tree {
            self.blocks
                .note_root_gen(self.catalog_head, self.committed.catalog_gen);
        }
        Ok(())
    }
}
