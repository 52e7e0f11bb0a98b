//! Crash resync: after an unclean shutdown, the chunks of every region the
//! write-intent block names may hold writes the last commit does not
//! describe (never flushed, so their contents are undefined: old, new or
//! torn). Each 4 KiB block is brought back to one state: the copy that
//! matches the committed checksum if one does (the old data), else, when
//! the intent block was written since the last commit (see `intent`), the
//! first readable copy (the new data, whose checksum is recorded); mirrors
//! that differ are rewritten from it, and raid5 parity is recomputed. A
//! block no copy of which matches, where the intent block does not vouch
//! for a write in flight, is damage: left to fail its reads.

use super::csum::crc;
use super::ThinPool;
use crate::error::{Error, Result};
use crate::thin::store::csum::CSUM_BLOCK;
use crate::units::Chunk;

/// What a resync did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resynced {
    pub regions: u64,
    pub chunks: u64,
    /// Blocks whose copies differed and were made equal.
    pub blocks_fixed: u64,
    /// Blocks that kept an unflushed write (their checksum was updated).
    pub blocks_new: u64,
    /// Blocks no copy of which matches its checksum, left as they are
    /// (the intent block did not name writes in flight).
    pub blocks_damaged: u64,
}

impl ThinPool {
    /// Resync the regions the intent block marks (at open, before any I/O).
    pub fn resync_intents(&self) -> Result<Resynced> {
        let Some(intent) = &self.intent else {
            return Ok(Resynced::default());
        };
        let mut out = Resynced::default();
        let regions = intent.dirty_regions();
        if regions.is_empty() {
            intent.release();
            return Ok(out);
        }
        let _gate = self.gate.write();
        let total = self.meta.read().data.total();
        for r in regions {
            out.regions += 1;
            for c in intent.chunks_of(r, total).map(Chunk) {
                if self.meta.read().data.in_use(c) {
                    self.resync_chunk(c, intent.may_adopt(), &mut out)?;
                    out.chunks += 1;
                }
            }
        }
        intent.release();
        self.commit_inner(true)?;
        Ok(out)
    }

    /// Bring chunks that are whole RAID5 rows to one state, as the crash
    /// resync does without the intent block's word (a block no copy of
    /// which matches its checksum is left as damage), and recompute
    /// their parity from the result. Caller holds the gate for write.
    pub(crate) fn resync_rows(&self, rows: Vec<Chunk>) -> Result<Resynced> {
        let mut out = Resynced::default();
        for c in rows {
            if self.meta.read().data.in_use(c) {
                self.resync_chunk(c, false, &mut out)?;
                out.chunks += 1;
            }
        }
        Ok(out)
    }

    fn resync_chunk(&self, c: Chunk, adopt: bool, out: &mut Resynced) -> Result<()> {
        let cs = self.chunk_size;
        let io = |e| Error::io("resyncing after a crash", e);
        for within in (0..cs.bytes()).step_by(CSUM_BLOCK as usize) {
            let off = cs.at(c, within);
            let want = self.block_csum(c, within)?;
            let mut reads = Vec::new();
            for cp in self.array.copies(off, CSUM_BLOCK as usize) {
                let mut b = vec![0u8; CSUM_BLOCK as usize];
                if self.array.read_copy(cp, off, &mut b).is_ok() {
                    reads.push(b);
                }
            }
            if reads.is_empty() {
                let mut b = vec![0u8; CSUM_BLOCK as usize];
                self.array.read(off, &mut b).map_err(io)?;
                reads.push(b);
            }
            let matching = reads.iter().find(|b| Some(crc(b)) == want);
            if matching.is_none() && !adopt {
                // Nothing says this block was being written: it is damage,
                // left for reads to report (and scrub to count).
                out.blocks_damaged += 1;
                continue;
            }
            let good = matching.unwrap_or(&reads[0]).clone();
            if want != Some(crc(&good)) {
                self.record(c, within, &good)?;
                out.blocks_new += 1;
            }
            // Written through the array: every mirror (a new one too) and
            // the parity get the chosen bytes.
            if reads.iter().any(|b| *b != good) {
                self.array.write(off, &good).map_err(io)?;
                out.blocks_fixed += 1;
            }
        }
        self.array
            .check_parity(cs.at(c, 0), cs.bytes(), true)
            .map_err(io)?;
        Ok(())
    }
}
