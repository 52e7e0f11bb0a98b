//! The metadata space map: a reference count (u32) for every metadata block.
//! It lives outside the B-trees, in a fixed region of pages with two slots
//! each; a commit writes each changed page to the slot the last commit did
//! not use and flips that page's selector bit in the new superblock. So it
//! never needs itself to allocate, and a torn commit leaves the old pages
//! whole. The whole map is held in memory (4 bytes per metadata block).

use super::codec::*;
use super::header::{BlockKind, Header, HEADER_SIZE};
use crate::error::BlockFault;
use crate::units::Block;
use std::collections::{BTreeSet, HashSet};

pub const ENTRIES_PER_PAGE: usize = (BLOCK_SIZE - HEADER_SIZE) / 4;

pub fn pages_for(blocks: u64) -> u32 {
    (blocks as usize).div_ceil(ENTRIES_PER_PAGE) as u32
}

pub struct MetaSpaceMap {
    counts: Vec<u32>,
    dirty_pages: BTreeSet<usize>,
    /// Blocks released in the running transaction: the committed state may
    /// still reach them, so they are not reused before the commit.
    freed: HashSet<Block>,
    /// Blocks allocated in the running transaction.
    allocated: HashSet<Block>,
    hint: u64,
    used: u64,
    /// Block numbers that are not metadata space (block 0, and the gaps
    /// before metadata extents, which start on page boundaries): their
    /// count is `u32::MAX`, never allocated nor counted as used.
    holes: u64,
}

/// The count of a block number that is not metadata space.
pub const HOLE: u32 = u32::MAX;

/// Most space-map pages a metadata area may have: as many as the thin
/// superblock's page selector has bits (`thin::store::superblock` checks
/// this at compile time). Labels are checked against it.
pub const MAX_PAGES: usize = 14_208;

impl MetaSpaceMap {
    /// A fresh map: only block 0 (the null block) is taken.
    pub fn new(blocks: u64) -> MetaSpaceMap {
        let mut counts = vec![0u32; blocks as usize];
        counts[0] = u32::MAX;
        let pages = pages_for(blocks) as usize;
        MetaSpaceMap {
            counts,
            dirty_pages: (0..pages).collect(),
            freed: HashSet::new(),
            allocated: HashSet::new(),
            hint: 1,
            used: 0,
            holes: 1,
        }
    }

    pub fn from_counts(mut counts: Vec<u32>) -> MetaSpaceMap {
        if let Some(c) = counts.first_mut() {
            *c = HOLE;
        }
        let used = counts.iter().filter(|&&c| c > 0 && c != HOLE).count() as u64;
        let holes = counts.iter().filter(|&&c| c == HOLE).count() as u64;
        MetaSpaceMap {
            counts,
            dirty_pages: BTreeSet::new(),
            freed: HashSet::new(),
            allocated: HashSet::new(),
            hint: 1,
            used,
            holes,
        }
    }

    /// Metadata blocks (block numbers that are metadata space, block 0
    /// included as in the label's count).
    pub fn blocks(&self) -> u64 {
        self.counts.len() as u64 + 1 - self.holes
    }

    /// Block numbers covered (the fixed area, gaps and extents).
    pub fn span(&self) -> u64 {
        self.counts.len() as u64
    }

    /// Add block numbers `[span, end)`: those below `first` are a gap
    /// (not metadata space), the others free. Their pages are written at
    /// the next commit.
    pub fn extend(&mut self, first: Block, end: Block) {
        let old = self.counts.len() as u64;
        for b in old..end.index() {
            let v = if b < first.index() { HOLE } else { 0 };
            if v == HOLE {
                self.holes += 1;
            }
            self.counts.push(v);
            self.dirty_pages.insert(b as usize / ENTRIES_PER_PAGE);
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// Blocks that can be allocated now: free, and not released in the
    /// running transaction (the committed state may still reach those).
    pub fn available(&self) -> u64 {
        (self.counts.len() as u64)
            .saturating_sub(self.holes + self.used)
            .saturating_sub(self.freed.len() as u64)
    }

    pub fn count(&self, b: Block) -> u32 {
        self.counts.get(b.index() as usize).copied().unwrap_or(0)
    }

    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    pub fn is_new(&self, b: Block) -> bool {
        self.allocated.contains(&b)
    }

    fn set(&mut self, b: Block, v: u32) {
        let i = b.index() as usize;
        let old = self.counts[i];
        if old == 0 && v > 0 {
            self.used += 1;
        } else if old > 0 && v == 0 {
            self.used -= 1;
        }
        self.counts[i] = v;
        self.dirty_pages.insert(i / ENTRIES_PER_PAGE);
    }

    pub fn alloc(&mut self) -> Option<Block> {
        let n = self.counts.len() as u64;
        for i in 0..n {
            let b = Block((self.hint + i) % n);
            if !b.is_none() && self.counts[b.index() as usize] == 0 && !self.freed.contains(&b) {
                self.set(b, 1);
                self.allocated.insert(b);
                self.hint = b.index() + 1;
                return Some(b);
            }
        }
        None
    }

    pub fn inc(&mut self, b: Block) {
        let c = self.count(b);
        if c == HOLE {
            return;
        }
        self.set(b, c.saturating_add(1));
    }

    pub fn dec(&mut self, b: Block) {
        let c = self.count(b);
        if c == HOLE {
            return;
        }
        debug_assert!(c > 0, "metadata block {b} released twice");
        if c == 0 {
            return;
        }
        self.set(b, c - 1);
        if c == 1 {
            self.freed.insert(b);
        }
    }

    /// Force a count (repair of leaks by the checker).
    pub fn repair(&mut self, b: Block, v: u32) {
        self.set(b, v);
    }

    pub fn dirty_pages(&self) -> Vec<usize> {
        self.dirty_pages.iter().copied().collect()
    }

    /// Encode page `p` for slot address `slot_nr` (2p or 2p+1).
    pub fn encode_page(&self, p: usize, slot_nr: u64, txid: u64, pool_tag: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let first = p * ENTRIES_PER_PAGE;
        let last = ((p + 1) * ENTRIES_PER_PAGE).min(self.counts.len());
        let h = Header {
            kind: BlockKind::SpaceMap as u16,
            blocknr: slot_nr,
            txid,
            pool_tag,
            owner: 0,
            level: 0,
            nr_entries: (last - first) as u16,
            value_size: 4,
            low_key: first as u64,
            next: 0,
        };
        h.write(&mut b);
        for (i, c) in self.counts[first..last].iter().enumerate() {
            put_u32(&mut b, HEADER_SIZE + i * 4, *c);
        }
        seal(&mut b, BlockKind::SpaceMap.salt());
        b
    }

    /// Decode a validated page into `counts`.
    pub fn decode_page(b: &[u8], p: usize, counts: &mut [u32]) -> Result<(), BlockFault> {
        let h = Header::read(b);
        let first = p * ENTRIES_PER_PAGE;
        let last = ((p + 1) * ENTRIES_PER_PAGE).min(counts.len());
        if h.low_key != first as u64 || h.nr_entries as usize != last - first {
            return Err(BlockFault::Malformed(format!(
                "space-map page {p} describes the wrong range"
            )));
        }
        for i in 0..last - first {
            counts[first + i] = get_u32(b, HEADER_SIZE + i * 4);
        }
        Ok(())
    }

    /// After a commit: released blocks become reusable, nothing is new.
    pub fn committed(&mut self) {
        self.dirty_pages.clear();
        self.freed.clear();
        self.allocated.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_blocks_wait_for_the_commit() {
        let mut m = MetaSpaceMap::new(8);
        assert_eq!((m.blocks(), m.used(), m.available()), (8, 0, 7));
        let got: Vec<Block> = (0..7).filter_map(|_| m.alloc()).collect();
        assert_eq!(
            got,
            (1..8).map(Block).collect::<Vec<_>>(),
            "block 0 is never given"
        );
        assert_eq!(m.alloc(), None, "full");
        assert!(got.iter().all(|&b| m.is_new(b)));
        m.committed();
        assert!(!m.is_new(Block(3)));
        m.inc(Block(3));
        m.dec(Block(3));
        assert_eq!(m.count(Block(3)), 1, "still referenced once");
        m.dec(Block(3));
        assert_eq!((m.count(Block(3)), m.used(), m.available()), (0, 6, 0));
        assert_eq!(
            m.alloc(),
            None,
            "the committed state may still reach block 3"
        );
        m.committed();
        assert_eq!(m.available(), 1);
        assert_eq!(m.alloc(), Some(Block(3)), "reusable after the commit");
    }

    #[test]
    fn holes_are_neither_space_nor_counted() {
        let mut m = MetaSpaceMap::new(4);
        m.committed();
        // An extent whose first blocks are a gap up to a page boundary.
        m.extend(Block(10), Block(14));
        assert_eq!(m.span(), 14);
        assert_eq!(m.blocks(), 4 + 4, "the gap 4..10 is not metadata space");
        assert_eq!(m.count(Block(5)), HOLE);
        m.inc(Block(5));
        m.dec(Block(5));
        assert_eq!(m.count(Block(5)), HOLE, "a hole's count never moves");
        let got: Vec<u64> = (0..7).filter_map(|_| m.alloc()).map(Block::index).collect();
        assert_eq!(got, vec![1, 2, 3, 10, 11, 12, 13]);
        assert_eq!(m.dirty_pages(), vec![0], "the extension's page is written");
    }

    #[test]
    fn pages_round_trip_and_refuse_the_wrong_range() {
        let n = ENTRIES_PER_PAGE as u64 + 10;
        let mut m = MetaSpaceMap::new(n);
        for _ in 0..ENTRIES_PER_PAGE + 5 {
            m.alloc();
        }
        m.inc(Block(ENTRIES_PER_PAGE as u64 + 2));
        assert_eq!(m.dirty_pages(), vec![0, 1]);
        let mut counts = vec![0u32; n as usize];
        for p in 0..2 {
            let page = m.encode_page(p, 2 * p as u64, 9, 77);
            MetaSpaceMap::decode_page(&page, p, &mut counts).unwrap();
        }
        assert_eq!(counts, m.counts());
        let page1 = m.encode_page(1, 2, 9, 77);
        assert!(MetaSpaceMap::decode_page(&page1, 0, &mut counts).is_err());
        let again = MetaSpaceMap::from_counts(counts);
        assert_eq!((again.used(), again.blocks()), (m.used(), m.blocks()));
    }
}
