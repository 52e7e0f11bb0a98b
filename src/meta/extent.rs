//! Metadata extents: metadata space taken from the pool's data area after
//! creation, so that the metadata area grows online (`pool set
//! metadata-size`, or on its own past a threshold).
//!
//! An extent is a run of metadata block numbers (starting on a space-map
//! page boundary, after the label's fixed area or the previous extent),
//! stored once per metadata copy in a run of data chunks, addressed
//! through the RAID array like data (so RAID redundancy, reshapes and
//! rebuilds carry it). Each copy's run holds the extent's space-map page
//! slots first (two per page, as in the fixed area), then its blocks.
//! The list of extents is part of the superblock (format version 6), so
//! it is written with every commit and read before anything else.

use super::codec::*;
use super::spacemap::ENTRIES_PER_PAGE;
use crate::units::Block;

/// Copies an extent may have (as the fixed area: up to three).
pub const MAX_COPIES: usize = 3;
const ENTRY: usize = 48;
/// Bytes of the list in the superblock: a count (u32), 4 zero bytes, entries.
pub const LIST_BYTES: usize = 2048;
/// Extents the list holds.
pub const MAX_EXTENTS: usize = (LIST_BYTES - 8) / ENTRY;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetaExtent {
    /// First metadata block number (a multiple of the entries per page).
    pub first_block: Block,
    pub blocks: u64,
    /// Array byte offset of each copy's run.
    pub copies: Vec<u64>,
}

impl MetaExtent {
    pub fn first_page(&self) -> usize {
        (self.first_block.index() / ENTRIES_PER_PAGE as u64) as usize
    }

    pub fn pages(&self) -> usize {
        (self.blocks as usize).div_ceil(ENTRIES_PER_PAGE)
    }

    /// Bytes each copy's run takes: page slots, then blocks.
    pub fn run_bytes(&self) -> u64 {
        Self::bytes_for(self.blocks)
    }

    pub fn bytes_for(blocks: u64) -> u64 {
        (2 * (blocks as usize).div_ceil(ENTRIES_PER_PAGE) as u64 + blocks) * BLOCK_SIZE as u64
    }

    /// The block after its last.
    pub fn end_block(&self) -> Block {
        self.first_block.plus(self.blocks)
    }

    pub fn holds_block(&self, b: Block) -> bool {
        (self.first_block..self.end_block()).contains(&b)
    }

    pub fn holds_page(&self, p: usize) -> bool {
        (self.first_page()..self.first_page() + self.pages()).contains(&p)
    }

    /// Array offset of block `b` in copy `c`.
    pub fn block_offset(&self, c: usize, b: Block) -> u64 {
        self.copies[c]
            + 2 * self.pages() as u64 * BLOCK_SIZE as u64
            + b.bytes_after(self.first_block)
    }

    /// Array offset of slot `slot` of space-map page `p` in copy `c`.
    pub fn page_offset(&self, c: usize, p: usize, slot: usize) -> u64 {
        self.copies[c] + (2 * (p - self.first_page()) + slot) as u64 * BLOCK_SIZE as u64
    }
}

/// The first block number an extent added after `end` (the last block
/// number in use + 1) starts at: the next page boundary.
pub fn next_first_block(end: Block) -> Block {
    Block(end.index().div_ceil(ENTRIES_PER_PAGE as u64) * ENTRIES_PER_PAGE as u64)
}

/// Encode the list into `b` ([`LIST_BYTES`] long).
pub fn encode(extents: &[MetaExtent], b: &mut [u8]) {
    put_u32(b, 0, extents.len().min(MAX_EXTENTS) as u32);
    for (i, e) in extents.iter().enumerate().take(MAX_EXTENTS) {
        let at = 8 + i * ENTRY;
        put_u64(b, at, e.first_block.index());
        put_u64(b, at + 8, e.blocks);
        put_u32(b, at + 16, e.copies.len() as u32);
        for (c, off) in e.copies.iter().enumerate().take(MAX_COPIES) {
            put_u64(b, at + 24 + 8 * c, *off);
        }
    }
}

/// Decode the list from `b`. `fixed_blocks`: the fixed area's size;
/// extents must follow it and each other in order, page aligned.
pub fn decode(b: &[u8], fixed_blocks: u64) -> Result<Vec<MetaExtent>, String> {
    let n = get_u32(b, 0) as usize;
    if n > MAX_EXTENTS {
        return Err(format!("metadata extent list claims {n} entries"));
    }
    let mut out = Vec::with_capacity(n);
    let mut end = Block(fixed_blocks);
    for i in 0..n {
        let at = 8 + i * ENTRY;
        let copies = get_u32(b, at + 16) as usize;
        let e = MetaExtent {
            first_block: Block(get_u64(b, at)),
            blocks: get_u64(b, at + 8),
            copies: (0..copies.min(MAX_COPIES))
                .map(|c| get_u64(b, at + 24 + 8 * c))
                .collect(),
        };
        if copies == 0 || copies > MAX_COPIES {
            return Err(format!("metadata extent {i} has {copies} copies"));
        }
        if e.blocks == 0 || e.first_block != next_first_block(end) {
            return Err(format!(
                "metadata extent {i} starts at block {} with {} blocks; expected to start at {}",
                e.first_block,
                e.blocks,
                next_first_block(end)
            ));
        }
        if e.end_block().index() > super::node::BLOCK_MASK {
            return Err(format!(
                "metadata extent {i} reaches past any block pointer"
            ));
        }
        end = e.end_block();
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extents_round_trip_and_offsets() {
        let e = vec![
            MetaExtent {
                first_block: Block(2016),
                blocks: 3000,
                copies: vec![1 << 20, 9 << 20],
            },
            MetaExtent {
                first_block: next_first_block(Block(5016)),
                blocks: 10,
                copies: vec![64 << 20],
            },
        ];
        let mut b = vec![0u8; LIST_BYTES];
        encode(&e, &mut b);
        assert_eq!(decode(&b, 1500).unwrap(), e);
        assert!(decode(&b, 2100).is_err(), "must follow the fixed area");
        assert_eq!(e[0].first_page(), 2);
        assert_eq!(e[0].pages(), 3);
        assert_eq!(e[0].page_offset(1, 3, 1), (9 << 20) + 3 * 4096);
        assert_eq!(e[0].block_offset(0, Block(2016)), (1 << 20) + 6 * 4096);
        assert_eq!(e[0].run_bytes(), (6 + 3000) * 4096);
    }
}
