//! Bytes and chunks: the one place a byte offset or length becomes a chunk
//! number and an offset within it, and back. Data is allocated, mapped,
//! shared and checksummed by the chunk; clients, members and the array
//! address bytes. Code above this layer converts through [`ChunkSize`]
//! rather than multiplying and dividing by a bare `u64`.
//!
//! Two kinds of chunk number, kept apart by type: a volume's *virtual*
//! chunk (its byte offset over the chunk size: the key of its mapping
//! tree, a bare `u64`), and a *physical* [`Chunk`] of the pool's data area
//! (what a mapping points at, what the data space map counts, what
//! checksums and write intents are kept for). Only a physical chunk has a
//! place on the array ([`ChunkSize::at`]).

use std::fmt;

/// A physical data chunk: chunk `n` of the pool's data area, at array byte
/// `n × chunk size`. Stored on disk as its number (`Chunk::index`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chunk(pub u64);

impl Chunk {
    /// The chunk's number, as mapping values and space-map keys store it.
    pub const fn index(self) -> u64 {
        self.0
    }

    /// The chunk after this one.
    pub const fn next(self) -> Chunk {
        Chunk(self.0 + 1)
    }
}

impl fmt::Display for Chunk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The size of a data chunk, in bytes (a power of two, at least 4 KiB,
/// as `pool create` enforces; any non-zero size works here).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkSize(u64);

impl ChunkSize {
    /// A chunk size of `bytes` (at least 1).
    pub const fn new(bytes: u64) -> ChunkSize {
        ChunkSize(if bytes == 0 { 1 } else { bytes })
    }

    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }

    /// The byte offset of byte `within` of chunk `chunk`.
    pub const fn offset(self, chunk: u64, within: u64) -> u64 {
        chunk * self.0 + within
    }

    /// The byte offset where chunk `chunk` starts.
    pub const fn start(self, chunk: u64) -> u64 {
        chunk * self.0
    }

    /// The array byte offset of byte `within` of physical chunk `c`.
    pub const fn at(self, c: Chunk, within: u64) -> u64 {
        c.0 * self.0 + within
    }

    /// The physical chunk array byte `off` is in.
    pub const fn chunk_at(self, off: u64) -> Chunk {
        Chunk(off / self.0)
    }

    /// The physical chunks any byte of array range `[off, off+len)` is in.
    pub fn placed(self, off: u64, len: u64) -> impl Iterator<Item = Chunk> {
        self.covering(off, len).map(Chunk)
    }

    /// The bytes `n` chunks hold.
    pub const fn span(self, n: u64) -> u64 {
        n * self.0
    }

    /// The chunk byte `pos` is in, and where in it.
    pub const fn split(self, pos: u64) -> (u64, u64) {
        (pos / self.0, pos % self.0)
    }

    /// The chunk byte `pos` is in.
    pub const fn chunk_of(self, pos: u64) -> u64 {
        pos / self.0
    }

    /// Where in its chunk byte `pos` is.
    pub const fn within(self, pos: u64) -> u64 {
        pos % self.0
    }

    /// Chunks needed to hold `bytes` (the last one partly filled).
    pub const fn count(self, bytes: u64) -> u64 {
        bytes.div_ceil(self.0)
    }

    /// Whole chunks in `bytes` (a partial last one left out).
    pub const fn whole(self, bytes: u64) -> u64 {
        bytes / self.0
    }

    /// Does `pos` fall on a chunk boundary?
    pub const fn aligned(self, pos: u64) -> bool {
        pos.is_multiple_of(self.0)
    }

    /// The chunks any byte of `[offset, offset+len)` falls in.
    pub const fn covering(self, offset: u64, len: u64) -> std::ops::Range<u64> {
        self.chunk_of(offset)..self.count(offset + len)
    }

    /// The chunks wholly inside `[offset, offset+len)` (maybe none).
    pub const fn inside(self, offset: u64, len: u64) -> std::ops::Range<u64> {
        self.count(offset)..self.whole(offset + len)
    }

    /// The chunks a byte range touches, each as (chunk, offset within,
    /// length): the pieces a request is cut into.
    pub fn pieces(self, offset: u64, len: u64) -> Pieces {
        Pieces {
            cs: self,
            pos: offset,
            end: offset.saturating_add(len),
        }
    }
}

/// See [`ChunkSize::pieces`].
#[derive(Clone)]
pub struct Pieces {
    cs: ChunkSize,
    pos: u64,
    end: u64,
}

impl Iterator for Pieces {
    /// (chunk, offset within it, length)
    type Item = (u64, u64, u64);

    fn next(&mut self) -> Option<(u64, u64, u64)> {
        if self.pos >= self.end {
            return None;
        }
        let (c, within) = self.cs.split(self.pos);
        let n = (self.cs.0 - within).min(self.end - self.pos);
        self.pos += n;
        Some((c, within, n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let cs = ChunkSize::new(64 << 10);
        assert_eq!(cs.offset(3, 100), 3 * 65536 + 100);
        assert_eq!(cs.split(cs.offset(3, 100)), (3, 100));
        assert_eq!((cs.count(1), cs.count(65536), cs.count(65537)), (1, 1, 2));
        assert_eq!((cs.whole(65535), cs.whole(131072)), (0, 2));
        assert!(cs.aligned(131072) && !cs.aligned(131073));
        assert_eq!(ChunkSize::new(0).bytes(), 1);
        assert_eq!(cs.covering(65535, 2), 0..2);
        assert_eq!(cs.covering(65536, 65536), 1..2);
        assert_eq!(cs.inside(1, 3 * 65536), 1..3);
        assert!(cs.inside(1, 100).is_empty());
        assert_eq!(cs.at(Chunk(3), 100), cs.offset(3, 100));
        assert_eq!(Chunk(3).next(), Chunk(4));
    }

    #[test]
    fn pieces_cover_the_range_in_chunk_order() {
        let cs = ChunkSize::new(4096);
        let p: Vec<_> = cs.pieces(4000, 5000).collect();
        assert_eq!(p, vec![(0, 4000, 96), (1, 0, 4096), (2, 0, 808)]);
        assert_eq!(p.iter().map(|x| x.2).sum::<u64>(), 5000);
        assert_eq!(cs.pieces(10, 0).count(), 0);
        assert_eq!(
            cs.pieces(8192, 4096).collect::<Vec<_>>(),
            vec![(2, 0, 4096)]
        );
    }
}
