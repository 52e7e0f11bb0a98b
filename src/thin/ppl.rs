//! RAID5 small overwrites of committed data, in place under a partial
//! parity log (md's PPL, in the flush log).
//!
//! A write that changes part of one data unit of a stripe row updates the
//! unit and the row's parity in two member writes. Torn by a power cut,
//! the parity no longer matches the row's *other* data units at the
//! written offsets, and if a member holding one of them is then lost, its
//! bytes rebuild wrong: the write hole. Before such a write goes in place,
//! the log makes durable, per 4 KiB block, the XOR of the other data units
//! at the same offset (the partial parity): the block in a slot of the
//! log's ring (its last quarter), then a `Parity` entry naming the slot in
//! a round of intents (writers share rounds; records of intents alone are
//! rewritten pairs, so the log does not grow a block per write). A slot is
//! free again once a member flush that started after its write completed
//! has completed: the write is durable, its partial parity not needed. A
//! writer that finds the ring full flushes the members itself (md's PPL
//! likewise reuses its area). A write to a row whose other unit was
//! written at the same offset, not yet durably, goes afresh (`Ring::
//! conflicts`). After a crash that also lost a member, the replay rebuilds
//! each block behind the missing member from the partial parity and the
//! units still there, keeps the result only where its checksum says it is
//! the block's content (a later write may have made a partial parity
//! stale), and writes it back through the degraded array, which sets the
//! row's parity to match. With every member present the replay (and the
//! crash resync, where the write-intent block names the chunk) recomputes
//! the rows' parity from data.
//!
//! Only for pools with checksums (the candidates are judged by them) and a
//! write-intent block, whose chunks are exactly one stripe row, while the
//! array is whole. Anything else (and any write the log cannot take now)
//! is written afresh elsewhere, as before (see ARCHITECTURE.md, "The RAID5
//! write hole").

use super::csum::{crc, heads};
use super::journal::intents;
use super::log_entry::Entry;
use super::ThinPool;
use crate::error::{Error, Result};
use crate::raid::parity::xor_into;
use crate::raid::RaidLevel;
use crate::thin::store::csum::CSUM_BLOCK;
use crate::units::Chunk;
use std::collections::HashSet;
use std::sync::atomic::Ordering;

const BLK: u64 = CSUM_BLOCK;

/// Largest write that goes in place under partial parities (whole 4 KiB
/// blocks): larger ones cost about as much written afresh, and would take
/// the ring's slots faster.
const PARITY_MAX: u64 = 16 << 10;

/// Where a chunk's row puts a write: its stripe unit size, data units per
/// row, the unit the write falls in, and the members whose metadata copies
/// keep its partial parity (that unit's and the row's parity member).
struct RowPiece {
    unit: u64,
    data_units: u64,
    k: u64,
    keepers: [usize; 2],
}

impl ThinPool {
    /// May a write of `len` bytes at byte `within` of committed chunk
    /// `phys` go in place under partial parities (as far as the pool's
    /// shape says; the log may still refuse)?
    pub(crate) fn may_log_parity(&self, phys: Chunk, within: u64, len: u64) -> bool {
        let a0 = within / BLK * BLK;
        let a1 = (within + len).div_ceil(BLK) * BLK;
        self.parity_piece(phys, a0, a1 - a0).is_some()
    }

    /// Is chunk `phys` exactly one stripe row `width` bytes wide?
    fn whole_row(&self, phys: Chunk, width: u64) -> bool {
        self.chunk_size.bytes() == width && self.chunk_size.at(phys, 0).is_multiple_of(width)
    }

    /// The row piece of a write of whole blocks `[a0, a0 + len)` of chunk
    /// `phys` that may go in place under partial parities, if it may.
    fn parity_piece(&self, phys: Chunk, a0: u64, len: u64) -> Option<RowPiece> {
        if self.csums.is_none() || self.intent.is_none() || len == 0 {
            return None;
        }
        let geo = self.array.geometry();
        let (unit, width) = (geo.stripe_unit, geo.stripe_width());
        let k = a0 / unit;
        let one_unit = k == (a0 + len - 1) / unit;
        let usable = geo.level == RaidLevel::Raid5
            && self.whole_row(phys, width)
            && one_unit
            && len <= PARITY_MAX
            && self.array.health().redundant_now();
        let row = self.chunk_size.at(phys, 0) / width;
        usable.then(|| RowPiece {
            unit,
            data_units: geo.data_members(),
            k,
            keepers: [geo.data_member(row, k), geo.parity_member(row)],
        })
    }

    /// Write whole blocks `buf` (a client's write at byte `within` of
    /// committed chunk `phys`, widened to whole blocks) in place under
    /// partial parities, when it may (see the module notes),
    /// and record it as `ThinPool::write_journaled` does. False: it may
    /// not, or the log cannot take them now; nothing was written. Caller
    /// holds the gate for read and the chunk's lock, not
    /// `write_in_progress` (a round takes it; this takes it back for the
    /// write).
    pub(crate) fn write_parity_logged(&self, phys: Chunk, within: u64, buf: &[u8]) -> Result<bool> {
        let a0 = within / BLK * BLK;
        let len = buf.len() as u64;
        let Some(row) = self.parity_piece(phys, a0, len) else {
            return Ok(false);
        };
        if self.log.unlogged.load(Ordering::Acquire) || !self.meta.read().log_runs() {
            self.log.unnamed.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        // The crash resync, with every member present, recomputes the
        // row's parity from data: the chunk must be named first.
        if let Some(intent) = &self.intent {
            intent.mark(&self.meta, phys)?;
        }
        let o = a0 % row.unit;
        let n = (len / BLK) as usize;
        let offs: Vec<u64> = (0..n as u64).map(|i| o + i * BLK).collect();
        if (self.log.ring.lock()).conflicts(phys, &offs, row.k, &self.array) {
            self.log.unnamed.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        let (pp, verified) = self.row_others(phys, &row, o, len)?;
        let Some(slots) = self.ring_slots(n)? else {
            self.log.unnamed.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        };
        let crcs: Vec<u32> = buf.chunks(BLK as usize).map(crc).collect();
        let sums = (&crcs[..], &heads(buf, (within - a0) as usize)[..]);
        let written = self.log_partial_parities(phys, a0, sums, &pp, &slots, row.keepers);
        if !matches!(written, Ok(true)) {
            self.log.ring.lock().unused(&slots);
            written?;
            self.log.unnamed.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        self.log.named.fetch_add(1, Ordering::Relaxed);
        let result = {
            let _w = self.write_in_progress();
            let others = verified.then_some(&pp[..]);
            self.write_journaled_with(phys, a0, buf, &crcs, others)
        };
        // Done (or failed part way): free again after the next flush.
        let stamp = self.array.flush_stamp();
        let mut ring = self.log.ring.lock();
        ring.completed(&slots, stamp);
        ring.row_written(phys, &offs, row.k, stamp);
        drop(ring);
        result.map(|()| true)
    }

    /// The XOR of the row's data units other than `row.k` at bytes `[o,
    /// o + len)` of each (the write's partial parity), and whether each
    /// block read matched its checksum: then the write's new parity is
    /// the partial parity XOR the new bytes, and the old data and parity
    /// need not be read (a unit silently corrupt would be folded into the
    /// parity, so one that does not match, or has no checksum, leaves the
    /// write to the read-modify-write, which keeps the parity as it was).
    fn row_others(&self, phys: Chunk, row: &RowPiece, o: u64, len: u64) -> Result<(Vec<u8>, bool)> {
        let io = |e| Error::io("reading a stripe row", e);
        let mut pp = vec![0u8; len as usize];
        let mut other = vec![0u8; len as usize];
        let mut verified = true;
        for d in (0..row.data_units).filter(|&d| d != row.k) {
            let within = d * row.unit + o;
            self.array
                .read(self.chunk_size.at(phys, within), &mut other)
                .map_err(io)?;
            for (i, b) in other.chunks(BLK as usize).enumerate() {
                if verified {
                    let at = within + i as u64 * BLK;
                    verified = self.block_csum(phys, at)? == Some(crc(b));
                }
            }
            xor_into(&mut pp, &other);
        }
        Ok((pp, verified))
    }

    /// `n` free slots of the ring, flushing the members when too few are
    /// (every partial parity of a completed write is then stale). None:
    /// the log has no ring, or the slots stay taken by writes in flight.
    fn ring_slots(&self, n: usize) -> Result<Option<Vec<u64>>> {
        let span = self.meta.read().log_ring();
        if (span.end - span.start) < 2 * n as u64 {
            return Ok(None);
        }
        for _ in 0..2 {
            if let Some(s) = self.log.ring.lock().take(n, span.clone(), &self.array) {
                return Ok(Some(s));
            }
            let _f = self.log.ring_flush.lock();
            if let Some(s) = self.log.ring.lock().take(n, span.clone(), &self.array) {
                return Ok(Some(s));
            }
            self.array
                .flush()
                .map_err(|e| Error::io("flushing data", e))?;
        }
        Ok(None)
    }

    /// The partial parities `pp` of the blocks at byte `a0` of chunk
    /// `phys` into the ring's `slots` on the metadata copies of members
    /// `keepers`, then their entries and the intents of the new bytes
    /// (checksums and tags `sums`) in a round. False: the log cannot take
    /// them now.
    /// A partial parity is needed only when a member holding another data
    /// unit of the row is lost: the copies on the written unit's member
    /// and the row's parity member then survive (md's PPL keeps one, on
    /// the parity member).
    fn log_partial_parities(
        &self,
        phys: Chunk,
        a0: u64,
        (crcs, heads): (&[u32], &[u16]),
        pp: &[u8],
        slots: &[u64],
        keepers: [usize; 2],
    ) -> Result<bool> {
        let mut entries = Vec::with_capacity(2 * slots.len());
        for (i, (b, &slot)) in pp.chunks(BLK as usize).zip(slots).enumerate() {
            (self.meta.read().write_log_ring(slot, b, &keepers))
                .map_err(|e| Error::io("writing a partial parity to the flush log", e))?;
            entries.push(Entry::Parity {
                phys,
                within: a0 + i as u64 * BLK,
                crc: crc(b),
                slot,
            });
        }
        // Intents too: a replay keeps a block that holds the write as the
        // write (as on pools without a second copy), whichever metadata
        // copy the write-intent block survived on.
        entries.extend(intents(phys, a0, crcs, heads));
        self.intend_all(entries)
    }

    /// The partial parities of one record's entries: each with the first
    /// copy of its ring block that matches its checksum. One none of whose
    /// copies matches was never made durable (its round, or the block, was
    /// cut short: its write never went in place) or its slot was taken
    /// again after a flush made its write durable: it is left out.
    pub(crate) fn partial_parities(
        &self,
        entries: &[Entry],
    ) -> std::result::Result<Vec<(Chunk, u64, Vec<u8>)>, String> {
        let total = self.meta.read().data.total();
        let mut out = Vec::new();
        for &e in entries {
            let Entry::Parity {
                phys,
                within,
                crc: want,
                slot,
            } = e
            else {
                continue;
            };
            if phys.index() >= total || within % BLK != 0 || within >= self.chunk_size.bytes() {
                return Err(format!(
                    "partial parity at {phys}+{within} is outside the pool"
                ));
            }
            let copies = self.meta.read().read_log_data(slot);
            if let Some(good) = copies.into_iter().find(|b| crc(b) == want) {
                out.push((phys, within, good));
            }
        }
        Ok(out)
    }

    /// At a replay with one member of a raid5 pool missing: rebuild each
    /// block behind it whose row a partial parity names (the newest first)
    /// from the partial parity and the row's other units, where the result
    /// matches the block's checksum and the array would rebuild it
    /// otherwise; written through the array, which sets the parity.
    /// Returns the blocks rebuilt. With every member present: the named
    /// rows, whose parity the caller recomputes once the replay has
    /// settled their checksums (`ThinPool::resync_rows`), not from the
    /// data as it stands (a unit a member's lost write left stale would
    /// be folded into the parity).
    pub(crate) fn repair_rows(
        &self,
        parities: Vec<(Chunk, u64, Vec<u8>)>,
    ) -> Result<(u64, Vec<Chunk>)> {
        let geo = self.array.geometry();
        if parities.is_empty() || geo.level != RaidLevel::Raid5 || self.csums.is_none() {
            return Ok((0, Vec::new()));
        }
        let health = self.array.health();
        let gone: Vec<usize> = (0..geo.members()).filter(|&m| health.is_gone(m)).collect();
        let io = |e| Error::io("rebuilding a stripe row from the log", e);
        let (unit, width) = (geo.stripe_unit, geo.stripe_width());
        let missing = match gone[..] {
            [m] => m,
            [] => {
                // Every member here: each named row's parity from its
                // verified data (the resync does it too, where the
                // write-intent block names the chunk on the copy the open
                // took).
                let rows: HashSet<Chunk> = parities.iter().map(|p| p.0).collect();
                let rows = rows.into_iter().filter(|&p| self.whole_row(p, width));
                return Ok((0, rows.collect()));
            }
            // More than one gone: nothing to rebuild from.
            _ => return Ok((0, Vec::new())),
        };
        let mut settled = HashSet::new();
        let mut rebuilt = 0;
        for (phys, within, pp) in parities.into_iter().rev() {
            if !self.whole_row(phys, width) || !self.meta.read().data.in_use(phys) {
                continue;
            }
            let row0 = self.chunk_size.at(phys, 0);
            let (k, o) = (within / unit, within % unit);
            let member_of = |d: u64| geo.map(row0 + d * unit + o, BLK).first().map(|x| x.member);
            let Some(j) = (0..geo.data_members()).find(|&d| member_of(d) == Some(missing)) else {
                continue; // the parity's member is the one missing
            };
            if j == k || settled.contains(&(phys, j * unit + o)) {
                continue;
            }
            let mut candidate = pp;
            let mut other = vec![0u8; BLK as usize];
            for d in (0..geo.data_members()).filter(|&d| d != j && d != k) {
                self.array
                    .read(row0 + d * unit + o, &mut other)
                    .map_err(io)?;
                xor_into(&mut candidate, &other);
            }
            if self.block_csum(phys, j * unit + o)? != Some(crc(&candidate)) {
                continue; // stale: a later write changed the block
            }
            settled.insert((phys, j * unit + o));
            let at = row0 + j * unit + o;
            let mut now = vec![0u8; BLK as usize];
            if self.array.read(at, &mut now).is_ok() && now == candidate {
                continue;
            }
            self.array.write(at, &candidate).map_err(io)?;
            rebuilt += 1;
        }
        Ok((rebuilt, Vec::new()))
    }
}
