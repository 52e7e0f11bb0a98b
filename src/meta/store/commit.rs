//! Committing a transaction (the order that keeps the last commit intact is
//! described at the top of `store`).

use super::*;

impl MetaStore {
    /// Encode the catalog into newly allocated blocks, staged for the
    /// commit's writes. The chain it replaces is released (the committed
    /// one, or the blocks a failed attempt of this transaction staged).
    fn stage_catalog(&mut self) -> Result<()> {
        let old = match self.catalog_chain.take() {
            Some(chain) => chain,
            None => self.catalog_blocks()?,
        };
        for b in old {
            self.msm.dec(b);
        }
        self.staged_catalog.clear();
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
            self.stage_catalog()?;
        }
        let io = |e| Error::io("writing metadata", e);
        for (b, bytes) in &self.staged_catalog {
            self.mirror
                .write(self.layout.block_offset(*b), bytes)
                .map_err(|e| Error::io("writing catalog", e))?;
        }
        let mut dirty: Vec<(u64, Arc<Node>)> =
            self.dirty.iter().map(|(b, n)| (*b, n.clone())).collect();
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
        sb.data_chunks = self.data.total();
        sb.transition = self.transition;
        sb.csum = self.csum;
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
        self.shape_dirty = false;
        self.msm.committed();
        self.data.committed();
        self.dirty.clear();
        for (b, node) in dirty {
            self.cache_of(b).lock().put(b, node);
        }
        Ok(())
    }
}
