//! Write intents: which data regions may hold writes that the last commit
//! does not describe. Chunks the last commit refers to are overwritten in
//! place on linear, raid0 and raid1 pools (and by whole-row writes on
//! raid5); a crash in the middle leaves mirrors that differ and blocks
//! whose committed checksum no longer matches. Before the first such write
//! to a region, its bit is set in the intent block and flushed (md's
//! write-intent bitmap); after a crash, only the regions whose bits are set
//! are resynced (see `resync`), not the whole pool.
//!
//! Every commit clears the bits (the rewrite needs no flush of its own):
//! a bit on the medium in an intent block of the committed transaction
//! means a write in place since that commit. After a crash, only such a
//! block lets the resync keep a copy that no longer matches its committed
//! checksum as the unflushed new data; an older intent block (its clearing
//! rewrite lost, or not yet on the medium) or an unreadable one only makes
//! mirrors equal, so a device that lost, tore or misplaced a write is
//! never taken at its word (the block reads as EIO without redundancy).
//! The price: the first write in place to a region in each transaction
//! writes and flushes the intent block.

use crate::error::Result;
use crate::sync::RwLock;
use crate::thin::store::csum::INTENT_BYTES;
use crate::thin::store::MetaStore;
use crate::units::{Chunk, ChunkSize};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Regions a bitmap holds.
pub const REGIONS: u64 = INTENT_BYTES as u64 * 8;
/// A pool may grow this much (members added) with regions still distinct.
const GROWTH: u64 = 16;
/// Regions are at least this large (md's bitmap chunks are 64 MiB by
/// default): the first write in place to a region in each transaction
/// writes and flushes the intent block, which a random writer pays on
/// nearly every write when regions are small; a crash resyncs a whole
/// region for one write in it.
pub const MIN_REGION_BYTES: u64 = 16 << 20;

pub struct Intent {
    pub region_chunks: u64,
    /// Bits set on the medium (or being set: then `lock` is held).
    on_disk: Vec<AtomicU64>,
    lock: Mutex<()>,
    /// The bits read at open name writes in flight (the block was current):
    /// the resync may keep a copy that no longer matches its checksum.
    adopt: std::sync::atomic::AtomicBool,
    /// Bits read at open stay set until the resync has run (commits made
    /// before it, by a layout change's recovery, must not clear them).
    hold: std::sync::atomic::AtomicBool,
}

fn words() -> usize {
    (REGIONS / 64) as usize
}

fn test(v: &[AtomicU64], r: u64) -> bool {
    v[(r / 64) as usize].load(Ordering::Acquire) & (1 << (r % 64)) != 0
}

fn set(v: &[AtomicU64], r: u64) {
    v[(r / 64) as usize].fetch_or(1 << (r % 64), Ordering::AcqRel);
}

fn to_bytes(v: &[AtomicU64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(INTENT_BYTES);
    for w in v {
        out.extend_from_slice(&w.load(Ordering::Acquire).to_le_bytes());
    }
    out.truncate(INTENT_BYTES);
    out
}

impl Intent {
    /// The intents of a pool of `data_chunks` chunks of `chunk_size`
    /// bytes, as recorded (`None`: a fresh pool) with `region_chunks`
    /// chunks per region. Regions are sized afresh when no bit is set.
    pub fn new(
        data_chunks: u64,
        chunk_size: ChunkSize,
        recorded: Option<(u64, &[u8], bool)>,
    ) -> Intent {
        let fresh = (data_chunks * GROWTH)
            .div_ceil(REGIONS)
            .max(chunk_size.count(MIN_REGION_BYTES))
            .max(1);
        let region_chunks = match recorded {
            Some((rc, bits, _)) if rc > 0 && bits.iter().any(|b| *b != 0) => rc,
            _ => fresh,
        };
        let on_disk: Vec<AtomicU64> = (0..words()).map(|_| AtomicU64::new(0)).collect();
        if let Some((_, bits, _)) = recorded {
            for (i, b) in bits.iter().enumerate().take(INTENT_BYTES) {
                on_disk[i / 8].fetch_or((*b as u64) << (8 * (i % 8)), Ordering::Relaxed);
            }
        }
        let dirty = on_disk.iter().any(|w| w.load(Ordering::Relaxed) != 0);
        Intent {
            region_chunks,
            on_disk,
            lock: Mutex::new(()),
            adopt: std::sync::atomic::AtomicBool::new(
                recorded.is_none_or(|(_, _, current)| current),
            ),
            hold: std::sync::atomic::AtomicBool::new(dirty),
        }
    }

    pub fn region(&self, chunk: Chunk) -> u64 {
        (chunk.index() / self.region_chunks).min(REGIONS - 1)
    }

    /// May the resync take a copy that fails its committed checksum as the
    /// new data written in flight?
    pub fn may_adopt(&self) -> bool {
        self.adopt.load(Ordering::Acquire)
    }

    /// The bits in memory are exact (every one was on the medium before
    /// its writes): the pool goes back to its last commit in service
    /// (`pool clear`), so its regions hold writes in flight.
    pub fn vouch(&self) {
        self.adopt.store(true, Ordering::Release);
    }

    /// The resync is done (or was not needed): bits may be cleared.
    pub fn release(&self) {
        self.hold.store(false, Ordering::Release);
    }

    /// Regions whose bits are set (to resync after a crash).
    pub fn dirty_regions(&self) -> Vec<u64> {
        (0..REGIONS).filter(|&r| test(&self.on_disk, r)).collect()
    }

    /// Chunks of region `r`.
    pub fn chunks_of(&self, r: u64, total: u64) -> std::ops::Range<u64> {
        let start = r * self.region_chunks;
        let end = if r == REGIONS - 1 {
            total
        } else {
            ((r + 1) * self.region_chunks).min(total)
        };
        start.min(total)..end
    }

    /// Make sure the intent to overwrite `chunk` in place is on the medium.
    pub fn mark(&self, meta: &RwLock<MetaStore>, chunk: Chunk) -> Result<()> {
        let r = self.region(chunk);
        if test(&self.on_disk, r) {
            return Ok(());
        }
        let _l = self.lock.lock();
        if test(&self.on_disk, r) {
            return Ok(());
        }
        let mut bits = to_bytes(&self.on_disk);
        bits[(r / 8) as usize] |= 1 << (r % 8);
        meta.read().write_intent(self.region_chunks, &bits, true)?;
        set(&self.on_disk, r);
        Ok(())
    }

    /// After a commit (no I/O in flight): clear every bit; with `all`
    /// (clean close, or a resync done) wait for it to be on the medium.
    pub fn committed(&self, meta: &MetaStore, all: bool) -> Result<()> {
        let _l = self.lock.lock();
        if self.hold.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut changed = false;
        for d in &self.on_disk {
            changed |= d.swap(0, Ordering::AcqRel) != 0;
        }
        if changed {
            meta.write_intent(self.region_chunks, &to_bytes(&self.on_disk), all)?;
        }
        Ok(())
    }
}
