//! Committing a transaction (the order that keeps the last commit intact is
//! described at the top of `store`).

use super::*;

impl MetaStore {
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
        sb.data_chunks = self.data.total();
        sb.transition = self.transition;
        sb.csum = self.csum;
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
        self.shape_dirty = false;
        self.msm.committed();
        self.data.committed();
        for (b, node) in dirty {
            self.cache_of(b).lock().put(b, node);
        }
        Ok(())
    }
}
