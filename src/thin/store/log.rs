//! The flush log's blocks: where a flush makes the running transaction's
//! changes durable without a commit (what the records say is the thin
//! layer's business, see `thin::log`; here they are opaque payloads).
//!
//! A directory block (kind `LogDir`, named by the superblock from version
//! 7) lists the log's blocks. They stay allocated while the log is in
//! use; a commit may replace a log holding less than half of what a
//! replacement would get (`regrow_log`: a new directory, named like any
//! other) and release the old one's blocks. Record `seq`
//! (1, 2, ...) of the transaction after commit `txid` is written whole
//! into a block, on every metadata copy, by one flush; its header says
//! `txid` (the commit it applies to), `seq`, and (from version 8) how many
//! raw 4 KiB blocks of journaled data follow it before the next record.
//! Record 1 is in the first block. After a crash the records of the last
//! commit are read in order up to the first block that is not the next
//! one (torn, stale, or never written).
//! A commit starts the log again from its first block: the records of
//! older transactions no longer match the committed `txid`.
//!
//! Pairs (version 9): a record of write intents alone may be rewritten,
//! each time holding more, in turns into two blocks (its *pair*; header
//! field `nr_entries` = 1, 2, ... counts the writes, 0 in other records):
//! a torn rewrite leaves the other block's version whole. The next record
//! goes after both blocks; the replay takes the newest whole version.

use super::*;
use crate::error::{BlockFault, Damage, Why};
use crate::meta::spacemap::pages_for;
use crate::thin::store::superblock::MAX_MSM_PAGES;
use std::io;

/// One record as read back: its payload, the log block it is in, and how
/// many journaled data blocks follow it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogRecord {
    pub payload: Vec<u8>,
    pub slot: u64,
    pub data: u64,
}

/// A record to write: its sequence number, payload, and the journaled
/// data blocks that follow it.
pub type LogWrite<'a> = (u64, &'a [u8], &'a [&'a [u8]]);

/// Payload bytes one log block holds.
pub const LOG_PAYLOAD: usize = BLOCK_SIZE - HEADER_SIZE;
/// Block numbers a directory block holds.
const DIR_ENTRIES: usize = (BLOCK_SIZE - HEADER_SIZE) / 8;
/// Blocks a log has at most (records and journaled data; a commit starts
/// it again): as many as one directory block lists.
pub const LOG_BLOCKS: u64 = DIR_ENTRIES as u64;
/// Blocks of the fixed area a new log leaves to the rest of the metadata
/// (4 MiB) before it grows past a 32nd of the area: a larger log commits
/// less often under a stream of small flushed writes (each commit writes
/// every checksum leaf they touched), and pool creation sizes default
/// areas with room for it (`pool::layout::plan`).
pub const LOG_KEEPS_FREE: u64 = 1024;

/// A log replacing a small one takes at most this share of the metadata
/// blocks available (see `MetaStore::regrow_log`). An old pool of three
/// 768 MiB members, 512 MiB written, random 4 KiB overwrites: the 64-block
/// log committed 126-160 times in 8 s; replaced by one of an eighth (231
/// blocks) 41-63 times; of a quarter (450) 160-198 times, and by a full
/// one (504, leaving 1,150 blocks available) 524-551 times.
pub const REGROW_SHARE: u64 = 8;

/// The blocks of a new log in a fixed area of `area` blocks with `free`
/// of them free: a 32nd of the area, or what the area holds beyond
/// [`LOG_KEEPS_FREE`] and leaves free beyond them when that is more; at
/// most [`LOG_BLOCKS`].
pub fn log_size(area: u64, free: u64) -> u64 {
    let beyond = area
        .saturating_sub(LOG_KEEPS_FREE)
        .min(free.saturating_sub(LOG_KEEPS_FREE + 1));
    (area / 32).max(beyond).min(LOG_BLOCKS)
}

impl MetaStore {
    /// The log's blocks in order (empty: the pool has no log yet).
    pub fn log_blocks(&self) -> &[Block] {
        &self.log_blocks
    }

    /// The log's directory block (none: no log).
    pub fn log_dir(&self) -> Block {
        self.log_dir
    }

    /// Records of the running transaction are on the log (written, or
    /// found at open): the next commit must move to a new transaction even
    /// when nothing else changed, or the log, started again, would hold
    /// records of two generations with the same `txid` (a lost write of
    /// a new one would bring back the old one).
    pub fn log_used(&mut self) {
        self.shape_dirty = true;
    }

    /// May flushes use the log? Only once a commit recorded it.
    /// May the log hold what this build added to it (runs of intents,
    /// partial parities)? Only once this build committed the pool: a pool
    /// last committed by an older build may be opened by it again after a
    /// crash, and it would not read them.
    pub fn log_runs(&self) -> bool {
        self.log_runs
    }

    /// The log's blocks records may use: all of them, or on raid5 pools
    /// with checksums those before the ring of partial parities (its last
    /// quarter) once this build committed the pool (see `thin::ppl`).
    pub fn log_record_room(&self) -> u64 {
        self.log_ring().start
    }

    /// Keep a ring of partial parities in the log (raid5 pools with
    /// checksums).
    pub fn set_log_ring(&mut self, on: bool) {
        self.log_ring = on;
    }

    /// The log's blocks that hold RAID5 partial parities (empty but on
    /// raid5 pools with checksums, before this build committed the pool,
    /// and while the log is not the one the last commit named).
    pub fn log_ring(&self) -> std::ops::Range<u64> {
        let n = self.log_blocks.len() as u64;
        match self.log_runs && self.log_ring && self.log_ready() {
            true => n - n / 4..n,
            false => n..n,
        }
    }

    /// Write one partial parity into the ring's block `slot` on the
    /// metadata copies of members `on` (every copy when none is live, or
    /// when the log lies in an extent), durable (that block alone) when
    /// this returns.
    pub fn write_log_ring(&self, slot: u64, data: &[u8], on: &[usize]) -> io::Result<()> {
        if !self.log_ring().contains(&slot) || data.len() != BLOCK_SIZE {
            return Err(io::Error::other("a partial parity outside the log's ring"));
        }
        let b = self.log_slot(slot)?;
        self.blocks
            .write_place_durable_on(Place::Block(b), data, on)
    }

    /// May records go to the log? Only to the log the last commit named:
    /// after a crash the replay reads that one. A log made (or grown) in
    /// the running transaction is used once a commit names it.
    pub fn log_ready(&self) -> bool {
        !self.log_dir.is_none()
            && self.committed.log_dir == self.log_dir
            && !self.log_blocks.is_empty()
    }

    /// Give the pool a flush log, recorded by the next commit: what the
    /// fixed area holds beyond [`LOG_KEEPS_FREE`] blocks (and leaves free
    /// beyond them), at most [`LOG_BLOCKS`], at least a 32nd of the area.
    /// Nothing when it has one, when the area is too small (under 1 MiB)
    /// or nearly full, or when its space map is too large for a version-7
    /// superblock. Returns whether a log was made.
    pub fn create_log(&mut self) -> Result<bool> {
        match (self.log_dir.is_none(), self.new_log_size()) {
            (true, Some(n)) => self.make_log(n),
            _ => Ok(false),
        }
    }

    /// Replace a log that holds less than half of what a new one would
    /// (a pool made before new logs took what the area holds beyond 4 MiB)
    /// with a new one, recorded by the next commit. The new one takes at
    /// most a [`REGROW_SHARE`]th of the blocks available: such a pool's
    /// area was sized without room for a larger log, and what is free in
    /// it sets how often checksummed overwrites commit (a commit's room is
    /// estimated per checksum group written). The old log's blocks are
    /// released, and as every block released in a transaction they are
    /// not reused before the commit: until it, the committed state and its
    /// log stay whole. Returns whether the log was replaced.
    pub fn regrow_log(&mut self) -> Result<bool> {
        let have = self.log_blocks.len() as u64;
        let Some(n) = self.new_log_size() else {
            return Ok(false);
        };
        let n = n.min(self.blocks.msm.available() / REGROW_SHARE);
        if !self.log_ready() || n <= 2 * have {
            return Ok(false);
        }
        let (dir, old) = (self.log_dir, std::mem::take(&mut self.log_blocks));
        self.log_dir = Block::NONE;
        match self.make_log(n) {
            Ok(true) => {
                for b in std::iter::once(dir).chain(old) {
                    self.blocks.msm.dec(b);
                }
                Ok(true)
            }
            other => {
                (self.log_dir, self.log_blocks) = (dir, old);
                other
            }
        }
    }

    /// Make a log of `n` blocks now, as an older build did (a 32nd of the
    /// area): for tests of what pools made by those builds do.
    #[doc(hidden)]
    pub fn create_log_of(&mut self, n: u64) -> Result<bool> {
        match self.log_dir.is_none() && (1..=LOG_BLOCKS).contains(&n) {
            true => self.make_log(n),
            false => Ok(false),
        }
    }

    /// The blocks of a log made now (see `create_log`), or none when no
    /// log may be made.
    fn new_log_size(&self) -> Option<u64> {
        let area = self.blocks.layout.meta_blocks;
        let free = self
            .blocks
            .msm
            .span()
            .saturating_sub(self.blocks.msm.used());
        let least = (area / 32).min(LOG_BLOCKS);
        let refused = !self.loaded
            || least < 8
            || pages_for(self.blocks.msm.span()) as usize > MAX_MSM_PAGES
            || free < 4 * (least + 1);
        (!refused).then(|| log_size(area, free))
    }

    /// Allocate a directory and `n` log blocks and write the directory.
    fn make_log(&mut self, n: u64) -> Result<bool> {
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
        if let Err(e) = self.blocks.write_place(Place::Block(dir), &blk) {
            for b in taken {
                self.blocks.msm.dec(b);
            }
            return Err(Error::io("writing the flush log's directory", e));
        }
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

    /// Write version `version` (1, 2, ...) of record `seq`, a record of
    /// intents alone whose pair is blocks `first` and `first + 1`: into
    /// the first for odd versions, else the second, and make it durable on
    /// every copy (a durable write of that block alone: the round that
    /// writes it needs nothing else on the copies flushed).
    pub fn write_log_pair(
        &self,
        seq: u64,
        first: u64,
        version: u16,
        payload: &[u8],
    ) -> io::Result<()> {
        if version == 0 {
            return Err(io::Error::other("a pair's versions start at 1"));
        }
        self.log_slot(first + 1)?;
        let slot = first + u64::from(1 - version % 2);
        let blk = self.log_block_bytes(seq, slot, payload, 0, version)?;
        self.blocks
            .write_place_durable(Place::Block(self.log_slot(slot)?), &blk)
    }

    /// Record `seq` (version `version` of a pair, else 0) as the log's
    /// block `slot` holds it, `data` journaled blocks after it.
    fn log_block_bytes(
        &self,
        seq: u64,
        slot: u64,
        payload: &[u8],
        data: u64,
        version: u16,
    ) -> io::Result<Vec<u8>> {
        // Its data blocks must fit after it.
        self.log_slot(slot.saturating_add(data))?;
        let b = self.log_slot(slot)?;
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
            next: data,
            nr_entries: version,
            ..Header::default()
        }
        .write(&mut blk);
        blk[HEADER_SIZE..HEADER_SIZE + payload.len()].copy_from_slice(payload);
        seal(&mut blk, BlockKind::Log.salt());
        Ok(blk)
    }

    /// Write records, each followed by its journaled data blocks, into the
    /// log's blocks from `slot` on, on every copy, and make them durable:
    /// one durable write per copy for each run of consecutive blocks (the
    /// log's blocks are allocated together, so usually one), not a flush of
    /// the members (which would write back every dirty page of theirs
    /// first). Each record is `(seq, payload, data blocks)`.
    pub fn write_log_durable(&self, slot: u64, records: &[LogWrite<'_>]) -> io::Result<()> {
        let mut bytes = Vec::new();
        let mut at = slot;
        for (seq, payload, data) in records {
            let d = data.len() as u64;
            bytes.extend(self.log_block_bytes(*seq, at, payload, d, 0)?);
            for blk in *data {
                if blk.len() != BLOCK_SIZE {
                    return Err(io::Error::other("journaled data is not one block"));
                }
                bytes.extend_from_slice(blk);
            }
            at += 1 + d;
        }
        let blocks = (slot..at)
            .map(|s| self.log_slot(s))
            .collect::<io::Result<Vec<Block>>>()?;
        let mut i = 0;
        while i < blocks.len() {
            let mut j = i + 1;
            while j < blocks.len() && blocks[j] == blocks[j - 1].plus(1) {
                j += 1;
            }
            self.blocks
                .write_run_durable(blocks[i], &bytes[i * BLOCK_SIZE..j * BLOCK_SIZE])?;
            i = j;
        }
        Ok(())
    }

    /// Write raw bytes into the log's block `slot` on every copy (tests:
    /// a torn or stale block).
    #[cfg(test)]
    pub fn write_log_data(&self, slot: u64, data: &[u8]) -> io::Result<()> {
        let b = self.log_slot(slot)?;
        self.blocks.write_place(Place::Block(b), data)
    }

    /// Every readable copy of the log's block `slot` (journaled data).
    pub fn read_log_data(&self, slot: u64) -> Vec<Vec<u8>> {
        let Ok(b) = self.log_slot(slot) else {
            return Vec::new();
        };
        self.blocks
            .read_place_copies(Place::Block(b))
            .into_iter()
            .filter_map(|(_, _, r)| r.ok())
            .collect()
    }

    fn log_slot(&self, slot: u64) -> io::Result<Block> {
        self.log_blocks
            .get(slot as usize)
            .copied()
            .ok_or_else(|| io::Error::other(format!("flush log block {slot} past its end")))
    }

    /// The records of the running transaction, in order: up to the first
    /// block that is not the next record on any copy. Record 1 is in the
    /// first block, and each record's journaled data blocks come between
    /// it and the next. A record a crash left on some copies only is taken
    /// from one that has it; the replay's commit makes the log's copies
    /// irrelevant, so none is rewritten. A record written as a pair (see
    /// the module's notes) is its newest whole version in either block.
    pub fn read_log(&self) -> Vec<LogRecord> {
        let mut out = Vec::new();
        let mut slot = 0u64;
        loop {
            let seq = out.len() as u64 + 1;
            let here = self.log_record_at(slot, seq);
            if let Some((r, 0)) = here {
                slot += 1 + r.data;
                out.push(r);
                continue;
            }
            // A pair's first block (or a torn rewrite of it, or the end).
            let there = self
                .log_record_at(slot + 1, seq)
                .filter(|&(_, version)| version > 0);
            let newest = [here, there].into_iter().flatten().max_by_key(|r| r.1);
            match newest {
                Some((r, _)) => {
                    slot += 2;
                    out.push(r);
                }
                None => break,
            }
        }
        out
    }

    /// Record `seq` in the log's block `slot`, if a copy holds it, with
    /// its pair version (0: not a pair; the newest of the copies').
    fn log_record_at(&self, slot: u64, seq: u64) -> Option<(LogRecord, u16)> {
        let (base, tag) = (self.committed.txid, self.blocks.pool_tag);
        let room = self.log_blocks.len() as u64;
        let b = *self.log_blocks.get(slot as usize)?;
        let check = |blk: &[u8]| {
            let h = Header::validate(blk, BlockKind::Log, b.index(), tag, base).ok()?;
            (h.txid == base
                && h.low_key == seq
                && h.owner as usize <= LOG_PAYLOAD
                && h.next < room - slot
                && (h.nr_entries == 0 || h.next == 0))
                .then_some((h.owner as usize, h.next, h.nr_entries))
        };
        self.blocks
            .read_place_copies(Place::Block(b))
            .into_iter()
            .filter_map(|(_, _, r)| {
                let blk = r.ok()?;
                let (len, data, version) = check(&blk)?;
                let payload = blk[HEADER_SIZE..HEADER_SIZE + len].to_vec();
                Some((
                    LogRecord {
                        payload,
                        slot,
                        data,
                    },
                    version,
                ))
            })
            .max_by_key(|r| r.1)
    }
}
