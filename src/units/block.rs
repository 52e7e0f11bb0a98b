//! Metadata blocks: the 4 KiB units the metadata layer reads, writes,
//! counts and points at. A [`Block`] is a number in the pool's metadata
//! address space: the fixed area on the metadata copies first, then each
//! metadata extent taken from the data area. Where that number lives on a
//! device is worked out in one place per area (`meta::blocks::MetaLayout`
//! and `meta::extent::MetaExtent`), both through [`Block::bytes_after`].

use std::fmt;

/// Bytes in a metadata block.
pub const BLOCK_BYTES: u64 = 4096;

/// Metadata block `n`. Block 0 is never allocated: [`Block::NONE`] is how
/// "no tree" and "no block" are written, on disk and in memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Block(pub u64);

impl Block {
    /// No block: an empty tree's root, an unset pointer.
    pub const NONE: Block = Block(0);

    /// The block's number, as pointers, headers and space maps store it.
    pub const fn index(self) -> u64 {
        self.0
    }

    pub const fn is_none(self) -> bool {
        self.0 == 0
    }

    /// The block `n` after this one.
    pub const fn plus(self, n: u64) -> Block {
        Block(self.0 + n)
    }

    /// Bytes from the start of block `first` to the start of this one
    /// (`first` at or before it): the one block-to-byte conversion.
    pub const fn bytes_after(self, first: Block) -> u64 {
        (self.0 - first.0) * BLOCK_BYTES
    }
}

impl fmt::Display for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_convert_to_bytes_from_a_first_block() {
        assert_eq!(Block(7).bytes_after(Block(5)), 2 * BLOCK_BYTES);
        assert_eq!(Block(5).bytes_after(Block(5)), 0);
        assert!(Block::NONE.is_none() && !Block(1).is_none());
        assert_eq!(Block(3).plus(4), Block(7));
        assert_eq!(Block(9).to_string(), "9");
    }
}
