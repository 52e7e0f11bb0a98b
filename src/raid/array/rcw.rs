//! RAID5 reconstruct-writes of part of a stripe row whose other units are
//! judged by the caller (`Vouch`): the new parity is the XOR of the row's
//! data units as they will stand, read from the members where the write
//! does not cover them, never computed from the written unit's old bytes
//! or the old parity.
//!
//! Why: a read-modify-write takes the old bytes of the unit it writes
//! from its member. Where those bytes have no checksum (free space a
//! fresh chunk takes, on a pool grown by `pool add`, whose chunks are
//! narrower than its rows), a write that member lost earlier (reported
//! done, never stored) leaves stale bytes there that nothing can catch,
//! and the new parity would carry them: once the member is gone, the new
//! unit rebuilds wrong. The reconstruct-write does not read them. It
//! reads the row's *other* units instead, which the caller can judge: a
//! block that fails its checksum is rebuilt from the parity and the rest
//! of the row, and taken (and written back) when that matches, so a stale
//! unit on a lying member is not folded into the parity either.

use super::super::health::{Dir, FaultResult};
use super::super::parity::xor_into;
use super::View;
use std::ops::Range;

/// Judges a block a reconstruct-write keeps: its bytes and where they are
/// (the array's logical byte offset, 4 KiB aligned). False: a checksum
/// says they are not the block's content; true when they match, or when
/// nothing can tell (free space, a block without a checksum).
pub type Vouch<'a> = &'a (dyn Fn(u64, &[u8]) -> bool + Sync);

/// Blocks judged one at a time.
const BLOCK: u64 = 4096;

/// `a` ∩ `b`, or an empty range at `a.start`.
fn meet(a: &Range<u64>, b: &Range<u64>) -> Range<u64> {
    let (s, e) = (a.start.max(b.start), a.end.min(b.end));
    if s < e {
        s..e
    } else {
        a.start..a.start
    }
}

/// Where a reconstruct-write of part of one stripe row works.
struct Row {
    /// The row's first logical byte, and its units' offset on the members.
    row0: u64,
    moff: u64,
    /// The members of its data units, in order.
    dm: Vec<usize>,
    /// Each data unit's bytes the write covers (offsets within the unit).
    covered: Vec<Range<u64>>,
    /// Within each unit, the 4 KiB-aligned span whose parity changes.
    span: Range<u64>,
}

impl Row {
    /// The logical byte of offset `o` within data unit `d`.
    fn logical(&self, su: u64, d: usize, o: u64) -> u64 {
        self.row0 + d as u64 * su + o
    }
}

impl View<'_> {
    /// Write `buf` at logical byte `offset`, within one stripe row, by a
    /// reconstruct-write (see the module notes). Caller holds the row's
    /// stripe lock. False: a member of the row is missing (nothing was
    /// done; the caller writes degraded as before).
    pub(super) fn write_reconstruct(
        &self,
        offset: u64,
        buf: &[u8],
        vouch: Vouch,
    ) -> FaultResult<bool> {
        let (su, width) = (self.geo.stripe_unit, self.geo.stripe_width());
        let r = offset / width;
        let pm = self.geo.parity_member(r);
        let dm: Vec<usize> = (0..self.geo.data_members())
            .map(|d| self.geo.data_member(r, d))
            .collect();
        if dm.iter().chain([&pm]).any(|&m| self.dev(m).is_none()) {
            return Ok(false);
        }
        // The bytes written, in row terms, and each unit's share of them.
        let row0 = r * width;
        let w = offset - row0..offset - row0 + buf.len() as u64;
        let covered: Vec<Range<u64>> = (0..dm.len() as u64)
            .map(|d| {
                let c = meet(&(d * su..(d + 1) * su), &w);
                c.start - d * su..c.end - d * su
            })
            .collect();
        let touched = covered.iter().filter(|c| !c.is_empty());
        let lo = touched.clone().map(|c| c.start).min().unwrap_or(0) / BLOCK * BLOCK;
        let hi = touched.map(|c| c.end).max().unwrap_or(0).div_ceil(BLOCK) * BLOCK;
        let row = Row {
            row0,
            moff: self.geo.data_start + r * su,
            dm,
            covered,
            span: lo..hi,
        };
        // Each unit's bytes over the span as they will stand: the
        // member's (judged) where the write does not cover them, then the
        // caller's.
        let mut units: Vec<Vec<u8>> = Vec::with_capacity(row.dm.len());
        for (d, &m) in row.dm.iter().enumerate() {
            let mut u = vec![0u8; (hi - lo) as usize];
            let c = &row.covered[d];
            if c.start > lo || c.end < hi {
                let dev = self.dev(m).ok_or_else(|| super::missing("write"))?;
                let at = row.moff + lo;
                self.io(m, dev, Dir::Read, Some(at), || dev.read_at(&mut u, at))?;
            }
            units.push(u);
        }
        self.settle_units(&row, &mut units, vouch)?;
        for (d, c) in row
            .covered
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_empty())
        {
            let from = (row.logical(su, d, c.start) - offset) as usize;
            let at = (c.start - lo) as usize;
            let n = (c.end - c.start) as usize;
            units[d][at..at + n].copy_from_slice(&buf[from..from + n]);
        }
        let mut parity = units[0].clone();
        for u in &units[1..] {
            xor_into(&mut parity, u);
        }
        for (d, c) in row
            .covered
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.is_empty())
        {
            let m = row.dm[d];
            let dev = self.dev(m).ok_or_else(|| super::missing("write"))?;
            let (at, from) = (row.moff + c.start, (c.start - lo) as usize);
            let bytes = &units[d][from..from + (c.end - c.start) as usize];
            self.io(m, dev, Dir::Write, Some(at), || dev.write_at(bytes, at))?;
        }
        let pd = self.dev(pm).ok_or_else(|| super::missing("write"))?;
        let at = row.moff + lo;
        self.io(pm, pd, Dir::Write, Some(at), || pd.write_at(&parity, at))?;
        Ok(true)
    }

    /// The blocks of `units` (each data unit's bytes over `row.span`) the
    /// write does not cover whole, judged by `vouch`: one that fails is
    /// rebuilt from the parity and the other units as the members hold
    /// them, and when `vouch` takes the rebuilt bytes they replace the
    /// member's, there and in `units`. When it does not either, the
    /// member's bytes stay (nothing knows better: a write of that block
    /// may be on its way to its checksum).
    fn settle_units(&self, row: &Row, units: &mut [Vec<u8>], vouch: Vouch) -> FaultResult<()> {
        let su = self.geo.stripe_unit;
        for (d, &m) in row.dm.iter().enumerate() {
            let c = &row.covered[d];
            for o in row.span.clone().step_by(BLOCK as usize) {
                if c.start <= o && c.end >= o + BLOCK {
                    continue; // written whole: its old bytes do not count
                }
                let b = (o - row.span.start) as usize..(o - row.span.start + BLOCK) as usize;
                if vouch(row.logical(su, d, o), &units[d][b.clone()]) {
                    continue;
                }
                // The other members' bytes, parity included: what the
                // member's must be for the row to hold.
                let at = row.moff + o;
                let mut rebuilt = vec![0u8; BLOCK as usize];
                self.xor_others(m, at, &mut rebuilt)?;
                if !vouch(row.logical(su, d, o), &rebuilt) {
                    continue;
                }
                // The member's bytes were wrong: counted as a read that
                // failed its checksum is.
                self.health.count_checksum(m);
                let dev = self.dev(m).ok_or_else(|| super::missing("write"))?;
                self.io(m, dev, Dir::Write, Some(at), || dev.write_at(&rebuilt, at))?;
                units[d][b].copy_from_slice(&rebuilt);
            }
        }
        Ok(())
    }
}
