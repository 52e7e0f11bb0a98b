//! Opening the committed state: superblocks, space-map pages, catalog, and
//! reading metadata blocks from the first valid copy.

use super::*;
use crate::error::{Damage, Why};
use crate::meta::spacemap::{pages_for, HOLE};

impl MetaStore {
    /// Read every valid superblock copy; the highest transaction wins.
    pub fn read_superblocks(
        mirror: &MetaMirror,
        layout: &MetaLayout,
        pool_uuid: [u8; 16],
    ) -> (Option<Superblock>, Vec<String>) {
        let (best, problems, _) = MetaStore::read_superblocks_versioned(mirror, layout, pool_uuid);
        (best, problems)
    }

    /// [`MetaStore::read_superblocks`], and the version the winner was
    /// written at.
    fn read_superblocks_versioned(
        mirror: &MetaMirror,
        layout: &MetaLayout,
        pool_uuid: [u8; 16],
    ) -> (Option<Superblock>, Vec<String>, u32) {
        let mut best: Option<Superblock> = None;
        let mut version = 0;
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
                            version = Superblock::version_of(&b);
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
        (best, problems, version)
    }

    /// Open the committed state, in two steps: this one reads the
    /// superblock and the fixed area's space map (what assembling the
    /// array needs: member states, the transition); [`MetaStore::load`]
    /// reads the rest once the array is attached (metadata extents live
    /// on it). Nothing may be allocated or committed in between.
    pub fn open(
        mirror: MetaMirror,
        layout: MetaLayout,
        pool_uuid: [u8; 16],
        members: usize,
        data_chunks: u64,
        cache_nodes: usize,
    ) -> Result<MetaStore> {
        let (sb, problems, version) =
            MetaStore::read_superblocks_versioned(&mirror, &layout, pool_uuid);
        let sb = sb.ok_or_else(|| {
            corrupt(format!(
                "no valid superblock on any metadata copy ({})",
                problems.join("; ")
            ))
        })?;
        let sizes_agree = match sb.extents.first() {
            None => sb.msm_pages == layout.msm_pages && sb.meta_blocks == layout.meta_blocks,
            Some(first) => {
                first.first_block
                    == crate::meta::extent::next_first_block(Block(layout.meta_blocks))
                    && sb.extents.last().map(|e| e.end_block()) == Some(Block(sb.meta_blocks))
                    && sb.msm_pages == pages_for(sb.meta_blocks)
            }
        };
        if !sizes_agree {
            return Err(corrupt(
                "superblock and label disagree on the metadata area size".into(),
            ));
        }
        // Fewer is normal while a new member's space is being made usable.
        if sb.data_chunks > data_chunks {
            return Err(corrupt(format!(
                "superblock counts {} data chunks, the labels' geometry only {data_chunks}",
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
        // The fixed area's space-map pages, each from its selected slot;
        // the extents' pages are read by `load`.
        let mut counts = vec![HOLE; sb.meta_blocks as usize];
        counts[..layout.meta_blocks as usize].fill(0);
        for p in 0..layout.msm_pages as usize {
            s.read_msm_page(&sb, p, &mut counts)?;
        }
        s.blocks.msm = MetaSpaceMap::from_counts(counts);
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
        s.transition = sb.transition;
        s.no_autogrow = sb.no_autogrow;
        s.replacing = sb.replacing;
        s.blocks.extents = sb.extents.clone();
        s.csum = sb.csum;
        s.catalog_tree = sb.catalog_tree;
        if sb.catalog_tree {
            s.blocks.note_root_gen(sb.catalog_head, sb.catalog_gen);
        }
        s.blocks.note_root_gen(sb.volumes_root, sb.root_gens[0]);
        s.blocks.note_root_gen(sb.dsm_root, sb.root_gens[1]);
        if let Some(c) = sb.csum {
            s.blocks.note_root_gen(c.root, sb.root_gens[2]);
        }
        s.blocks.last_txid = sb.txid;
        s.committed = sb;
        // Committed by this build already: its log may take what older
        // readers refuse (tagged intents, runs, partial parities) now,
        // not only after this open's first commit.
        s.log_runs = version >= superblock::SB_VERSION_HEADS;
        Ok(s)
    }

    /// Read space-map page `p` from its selected slot into `counts`.
    fn read_msm_page(&self, sb: &Superblock, p: usize, counts: &mut [u32]) -> Result<()> {
        let slot = sb.selector_bit(p);
        let nr = (2 * p + slot) as u64;
        let tag = self.blocks.pool_tag;
        let mut b = vec![0u8; BLOCK_SIZE];
        let mut check =
            |blk: &[u8]| Header::validate(blk, BlockKind::SpaceMap, nr, tag, sb.txid).map(|_| ());
        self.blocks
            .read_place_valid(
                &format!("space-map page {p}"),
                Place::Page(p, slot),
                &mut b,
                &mut check,
            )
            .map_err(|c| Damage::new(format!("space-map page {p}"), Why::Copies(c)))?;
        MetaSpaceMap::decode_page(&b, p, counts)
            .map_err(|e| Damage::new(format!("space-map page {p}"), Why::Block(e)).into())
    }

    /// The second step of opening (see [`MetaStore::open`]): the metadata
    /// extents and their space map, the catalog, the volumes and the data
    /// reference counts. `array`: what extents are reached through.
    pub fn load(&mut self, array: Option<Arc<crate::raid::Array>>) -> Result<()> {
        if let Some(a) = array {
            self.blocks.attach_array(a);
        }
        let sb = self.committed.clone();
        if !self.blocks.extents.is_empty() {
            let mut counts = self.blocks.msm.counts().to_vec();
            for e in self.blocks.extents.clone() {
                for p in e.first_page()..e.first_page() + e.pages() {
                    self.read_msm_page(&sb, p, &mut counts)?;
                }
            }
            // Block numbers in no extent (gaps) stay holes.
            for (b, c) in counts
                .iter_mut()
                .enumerate()
                .skip(self.blocks.layout.meta_blocks as usize)
            {
                if !self
                    .blocks
                    .extents
                    .iter()
                    .any(|e| e.holds_block(Block(b as u64)))
                {
                    *c = HOLE;
                }
            }
            self.blocks.msm = MetaSpaceMap::from_counts(counts);
        }
        self.loaded = true;
        self.catalog = match self.catalog_tree {
            true => self.read_catalog_tree()?,
            false => self.read_catalog()?,
        };
        self.load_roots()?;
        self.load_log()?;
        self.blocks.pool_name = self.catalog.pool_name.clone();
        // Rebuild the in-memory data space map from the persistent counts.
        let mut entries = Vec::new();
        btree::walk(
            self,
            &DSM_SPEC,
            self.dsm_root,
            0,
            u64::MAX,
            &mut |k, v, _| {
                entries.push((k, get_u32(v, 0)));
                Ok(true)
            },
        )?;
        for (k, c) in entries {
            if k >= self.data.total() {
                return Err(corrupt(format!(
                    "reference count for chunk {k} beyond the pool"
                )));
            }
            self.data.load(Chunk(k), c);
        }
        Ok(())
    }

    /// The last committed state, read again from the same copies: what a
    /// failed pool goes back to (`pool clear`). Everything not committed is
    /// dropped.
    pub fn reopen(&self) -> Result<MetaStore> {
        let cache_nodes = self.blocks.cache_capacity();
        let mut s = MetaStore::open(
            self.blocks.mirror.reopened(),
            self.blocks.layout,
            self.committed.pool_uuid,
            self.member_states.len(),
            self.data.total().max(self.committed.data_chunks),
            cache_nodes,
        )?;
        s.load(self.blocks.array.clone())?;
        s.blocks.pool_name = self.blocks.pool_name.clone();
        Ok(s)
    }

    /// A commit interrupted between superblock copies leaves some copies one
    /// transaction behind; rewrite them (best effort on read-only devices).
    fn bring_superblocks_up_to_date(&mut self, sb: &Superblock) {
        let off = Superblock::slot_offset(self.blocks.layout.meta_offset, sb.txid);
        let bytes = sb.encode();
        for idx in 0..self.blocks.mirror.copies().len() {
            let (member, Some(dev)) = &self.blocks.mirror.copies()[idx] else {
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

    fn read_catalog(&self) -> Result<Catalog> {
        let mut bytes = Vec::with_capacity(self.catalog_bytes as usize);
        let mut b = self.catalog_head;
        let mut hops = 0u64;
        while !b.is_none() {
            hops += 1;
            if hops > self.blocks.msm.span() {
                return Err(corrupt("catalog chain loops".into()));
            }
            let blk = self.blocks.read_block(b, BlockKind::Catalog)?;
            let h = Header::read(&blk);
            let n = (h.low_key as usize).min(BLOCK_SIZE - HEADER_SIZE);
            bytes.extend_from_slice(&blk[HEADER_SIZE..HEADER_SIZE + n]);
            b = Block(h.next);
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

    /// Blocks of the catalog chain (the staged one while a commit of it is
    /// pending).
    pub fn catalog_blocks(&self) -> Result<Vec<Block>> {
        if self.catalog_tree {
            return Ok(Vec::new());
        }
        if let Some(chain) = &self.catalog_chain {
            return Ok(chain.clone());
        }
        let mut out = Vec::new();
        let mut b = self.catalog_head;
        while !b.is_none() && out.len() as u64 <= self.blocks.msm.span() {
            out.push(b);
            let blk = self.blocks.read_block(b, BlockKind::Catalog)?;
            b = Block(Header::read(&blk).next);
        }
        Ok(out)
    }
}
