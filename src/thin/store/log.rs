//! The flush log's blocks: where a flush makes the running transaction's
//! changes durable without a commit (what the records say is the thin
//! layer's business, see `thin::log`; here they are opaque payloads).
//!
//! A directory block (kind `LogDir`, named by the superblock from version
//! 7) lists the log's blocks, allocated once and never freed. Record `seq`
//! (1, 2, ...) of the transaction after commit `txid` is written whole
//! into the `seq`-th block, on every metadata copy, by one flush; its
//! header says `txid` (the commit it applies to) and `seq`, so that after
//! a crash the records of the last commit are read in order up to the
//! first block that is not the next one (torn, stale, or never written).
//! A commit starts the log again from its first block: the records of
//! older transactions no longer match the committed `txid`.

use super::*;
use crate::error::{BlockFault, Damage, Why};
use crate::meta::spacemap::pages_for;
use crate::thin::store::superblock::MAX_MSM_PAGES;
use std::io;

/// Payload bytes one log block holds.
pub const LOG_PAYLOAD: usize = BLOCK_SIZE - HEADER_SIZE;
/// Blocks a log has at most (one flush each before a commit is needed).
pub const LOG_BLOCKS: u64 = 256;
/// Block numbers a directory block holds.
const DIR_ENTRIES: usize = (BLOCK_SIZE - HEADER_SIZE) / 8;

impl MetaStore {
    /// The log's blocks in order (empty: the pool has no log yet).
    pub fn log_blocks(&self) -> &[Block] {
        &self.log_blocks
    }

    /// The log's directory block (none: no log).
    pub fn log_dir(&self) -> Block {
        self.log_dir
    }

    /// May flushes use the log? Only once a commit recorded it.
    pub fn log_ready(&self) -> bool {
        !self.committed.log_dir.is_none() && !self.log_blocks.is_empty()
    }

    /// Give the pool a flush log, recorded by the next commit: a 32nd of
    /// the fixed area, at most [`LOG_BLOCKS`]. Nothing when it has one, when
    /// the area is too small (under 1 MiB) or nearly full, or when its
    /// space map is too large for a version-7 superblock. Returns whether
    /// a log was made.
    pub fn create_log(&mut self) -> Result<bool> {
        let n = (self.blocks.layout.meta_blocks / 32).min(LOG_BLOCKS);
        if !self.log_dir.is_none()
            || !self.loaded
            || n < 8
            || pages_for(self.blocks.msm.span()) as usize > MAX_MSM_PAGES
            || self
                .blocks
                .msm
                .span()
                .saturating_sub(self.blocks.msm.used())
                < 4 * (n + 1)
        {
            return Ok(false);
        }
        let mut taken = Vec::with_capacity(n as usize + 1);
        for _ in 0..=n {
            match self.alloc_block() {
                Ok(b) => taken.push(b),
                Err(e) => {
                    for b in taken {
                        self.blocks.msm.dec(b);
                    }
                    return Err(e);
                }
            }
        }
        let dir = taken[0];
        let blocks = taken[1..].to_vec();
        let mut blk = vec![0u8; BLOCK_SIZE];
        Header {
            kind: BlockKind::LogDir as u16,
            blocknr: dir.index(),
            txid: self.committed.txid + 1,
            pool_tag: self.blocks.pool_tag,
            nr_entries: blocks.len() as u16,
            ..Header::default()
        }
        .write(&mut blk);
        for (i, b) in blocks.iter().enumerate() {
            put_block(&mut blk, HEADER_SIZE + 8 * i, *b);
        }
        seal(&mut blk, BlockKind::LogDir.salt());
        // No committed state reaches it yet: written now, flushed by the
        // commit before its superblock.
        self.blocks
            .write_place(Place::Block(dir), &blk)
            .map_err(|e| Error::io("writing the flush log's directory", e))?;
        self.log_dir = dir;
        self.log_blocks = blocks;
        self.shape_dirty = true;
        Ok(true)
    }

    /// Read the log's directory (at load).
    pub(crate) fn load_log(&mut self) -> Result<()> {
        let dir = self.committed.log_dir;
        if dir.is_none() {
            return Ok(());
        }
        let blk = self.blocks.read_block(dir, BlockKind::LogDir)?;
        let n = Header::read(&blk).nr_entries as usize;
        if n > DIR_ENTRIES {
            let why = BlockFault::Malformed(format!("lists {n} blocks"));
            return Err(Damage::block(BlockKind::LogDir.name(), dir, Why::Block(why)).into());
        }
        let blocks: Vec<Block> = (0..n)
            .map(|i| get_block(&blk, HEADER_SIZE + 8 * i))
            .collect();
        if let Some(b) = blocks
            .iter()
            .find(|&&b| !self.blocks.place_exists(Place::Block(b)))
        {
            let why = BlockFault::Malformed(format!("names block {b}, outside the metadata area"));
            return Err(Damage::block(BlockKind::LogDir.name(), dir, Why::Block(why)).into());
        }
        self.log_dir = dir;
        self.log_blocks = blocks;
        Ok(())
    }

    /// Write record `seq` of the running transaction into the log's
    /// `seq`-th block on every metadata copy (not flushed).
    pub fn write_log_record(&self, seq: u64, payload: &[u8]) -> io::Result<()> {
        let Some(&b) = self.log_blocks.get((seq as usize).wrapping_sub(1)) else {
            return Err(io::Error::other(format!(
                "flush log record {seq} past its end"
            )));
        };
        if payload.len() > LOG_PAYLOAD {
            return Err(io::Error::other("flush log record larger than a block"));
        }
        let mut blk = vec![0u8; BLOCK_SIZE];
        Header {
            kind: BlockKind::Log as u16,
            blocknr: b.index(),
            txid: self.committed.txid,
            pool_tag: self.blocks.pool_tag,
            owner: payload.len() as u64,
            low_key: seq,
            ..Header::default()
        }
        .write(&mut blk);
        blk[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
        seal(&mut blk, BlockKind::Log.salt());
        self.blocks.write_place(Place::Block(b), &blk)
    }

    /// The payloads of the records of the running transaction, in order:
    /// up to the first block that is not the next record on any copy. A
    /// record a crash left on some copies only is taken from one that has
    /// it (its data was flushed before it was written); the replay's
    /// commit makes the log's copies irrelevant, so none is rewritten.
    pub fn read_log(&self) -> Vec<Vec<u8>> {
        let (base, tag) = (self.committed.txid, self.blocks.pool_tag);
        let mut out = Vec::new();
        for (i, &b) in self.log_blocks.iter().enumerate() {
            let seq = i as u64 + 1;
            let check = |blk: &[u8]| {
                let h = Header::validate(blk, BlockKind::Log, b.index(), tag, base).ok()?;
                (h.txid == base && h.low_key == seq && h.owner as usize <= LOG_PAYLOAD)
                    .then_some(h.owner as usize)
            };
            let found = self
                .blocks
                .read_place_copies(Place::Block(b))
                .into_iter()
                .find_map(|(_, _, r)| {
                    let blk = r.ok()?;
                    let len = check(&blk)?;
                    Some(blk[HEADER_SIZE..HEADER_SIZE + len].to_vec())
                });
            match found {
                Some(p) => out.push(p),
                None => break,
            }
        }
        out
    }

    /// Make the log's writes durable on every copy.
    pub fn flush_log(&self) -> io::Result<()> {
        self.blocks.flush_meta()
    }
}
