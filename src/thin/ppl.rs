//! RAID5 small overwrites of committed data, in place under a partial
//! parity log (md's PPL, in the flush log).
//!
//! A write that changes part of one data unit of a stripe row updates the
//! unit and the row's parity in two member writes. Torn by a power cut,
//! the parity no longer matches the row's *other* data units at the
//! written offsets, and if a member holding one of them is then lost, its
//! bytes rebuild wrong: the write hole. Before such a write goes in place,
//! a round of the log makes durable, per 4 KiB block, the XOR of the other
//! data units at the same offset (the partial parity, a `Parity` entry and
//! its block). After a crash that also lost a member, the replay rebuilds
//! each block behind the missing member from the partial parity and the
//! units still there, keeps the result only where its checksum says it is
//! the block's content (a later write may have made a partial parity
//! stale), and writes it back through the degraded array, which sets the
//! row's parity to match. With every member present the crash resync
//! (the write-intent block names the chunk) recomputes parity from data.
//!
//! Only for pools with checksums (the candidates are judged by them) and a
//! write-intent block, whose chunks are exactly one stripe row, while the
//! array is whole. Anything else (and any write the log cannot take now)
//! is written afresh elsewhere, as before (see ARCHITECTURE.md, "The RAID5
//! write hole").

use super::csum::crc;
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

/// Where a chunk's row puts a write: its stripe unit size, data units per
/// row, and the unit the write falls in.
struct RowPiece {
    unit: u64,
    data_units: u64,
    k: u64,
}

impl ThinPool {
    /// The row piece of a write of whole blocks `[a0, a0 + len)` of chunk
    /// `phys` that may go in place under partial parities, if it may.
    fn parity_piece(&self, phys: Chunk, a0: u64, len: u64) -> Option<RowPiece> {
        if self.csums.is_none() || self.intent.is_none() || len == 0 {
            return None;
        }
        let geo = self.array.geometry();
        let (unit, width) = (geo.stripe_unit, geo.stripe_width());
        let whole_row =
            self.chunk_size.bytes() == width && self.chunk_size.at(phys, 0).is_multiple_of(width);
        let k = a0 / unit;
        let one_unit = k == (a0 + len - 1) / unit;
        let usable = geo.level == RaidLevel::Raid5
            && whole_row
            && one_unit
            && self.array.health().redundant_now();
        usable.then_some(RowPiece {
            unit,
            data_units: geo.data_members(),
            k,
        })
    }

    /// Write whole blocks `buf` at byte `a0` of committed chunk `phys` in
    /// place under partial parities, when it may (see the module notes).
    /// False: it may not, or the log cannot take them now; nothing was
    /// written. Caller holds the gate for read and the chunk's lock, not
    /// `write_in_progress` (a round takes it).
    pub(crate) fn write_parity_logged(&self, phys: Chunk, a0: u64, buf: &[u8]) -> Result<bool> {
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
        let io = |e| Error::io("reading a stripe row", e);
        let o = a0 % row.unit;
        let mut pp = vec![0u8; len as usize];
        let mut other = vec![0u8; len as usize];
        for d in (0..row.data_units).filter(|&d| d != row.k) {
            let at = self.chunk_size.at(phys, d * row.unit + o);
            self.array.read(at, &mut other).map_err(io)?;
            xor_into(&mut pp, &other);
        }
        let blocks = pp.chunks(BLK as usize).enumerate().map(|(i, b)| {
            let e = Entry::Parity {
                phys,
                within: a0 + i as u64 * BLK,
                crc: crc(b),
            };
            (e, b.to_vec())
        });
        // Intents too: a replay keeps a block that holds the write as the
        // write (as on pools without a second copy), whichever metadata
        // copy the write-intent block survived on.
        let crcs: Vec<u32> = buf.chunks(BLK as usize).map(crc).collect();
        self.log.intents.lock().extend(intents(phys, a0, &crcs));
        self.log.parity.lock().extend(blocks);
        let ticket = self.log.istarted.load(Ordering::Acquire);
        let logged = self.intent_round(ticket)?;
        let counter = match logged {
            true => &self.log.named,
            false => &self.log.unnamed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(logged)
    }

    /// The partial parities of one record at `slot` (its `Parity` entries,
    /// numbered among the blocks after it): each with the first copy of
    /// its block that matches its checksum. One none of whose copies
    /// matches belongs to a round a crash cut short, whose write never
    /// went in place: it is left out.
    pub(crate) fn partial_parities(
        &self,
        slot: u64,
        carried: &[(u64, Entry)],
    ) -> std::result::Result<Vec<(Chunk, u64, Vec<u8>)>, String> {
        let total = self.meta.read().data.total();
        let mut out = Vec::new();
        for &(j, e) in carried {
            let Entry::Parity {
                phys,
                within,
                crc: want,
            } = e
            else {
                continue;
            };
            if phys.index() >= total || within % BLK != 0 || within >= self.chunk_size.bytes() {
                return Err(format!(
                    "partial parity at {phys}+{within} is outside the pool"
                ));
            }
            let copies = self.meta.read().read_log_data(slot + 1 + j);
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
    /// Returns the blocks rebuilt.
    pub(crate) fn repair_rows(&self, parities: Vec<(Chunk, u64, Vec<u8>)>) -> Result<u64> {
        let geo = self.array.geometry();
        if parities.is_empty() || geo.level != RaidLevel::Raid5 || self.csums.is_none() {
            return Ok(0);
        }
        let health = self.array.health();
        let gone: Vec<usize> = (0..geo.members()).filter(|&m| health.is_gone(m)).collect();
        // None missing: the resync recomputes parity from data. More than
        // one: nothing to rebuild from.
        let [missing] = gone[..] else {
            return Ok(0);
        };
        let (unit, width) = (geo.stripe_unit, geo.stripe_width());
        let io = |e| Error::io("rebuilding a stripe row from the log", e);
        let mut settled = HashSet::new();
        let mut rebuilt = 0;
        for (phys, within, pp) in parities.into_iter().rev() {
            let row0 = self.chunk_size.at(phys, 0);
            if self.chunk_size.bytes() != width
                || !row0.is_multiple_of(width)
                || !self.meta.read().data.in_use(phys)
            {
                continue;
            }
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
        Ok(rebuilt)
    }
}
