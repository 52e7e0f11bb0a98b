//! The flush log's ring of RAID5 partial parities, in memory: which slots
//! are free, which cover writes not yet durable, and which rows' blocks
//! were written under partial parities since the last member flush (see
//! `thin::ppl`, which uses it, and `thin::log`, which holds it).

use crate::raid::Array;
use crate::units::Chunk;
use std::collections::HashMap;

/// Rows' blocks remembered before those made durable are forgotten.
const ROWS_KEPT: usize = 16 << 10;

/// The ring's slots: free, and taken with the flush stamp of the write
/// they cover once it completed (`None` while it runs).
#[derive(Default)]
pub(crate) struct Ring {
    free: Vec<u64>,
    taken: Vec<(u64, Option<u64>)>,
    /// The ring `free` and `taken` cover (empty until first used).
    span: std::ops::Range<u64>,
    /// Blocks of rows written under partial parities, by chunk and offset
    /// in the unit: the unit written and the flush stamp it completed at.
    rows: HashMap<(u64, u64), (u64, u64)>,
}

impl Ring {
    /// Every slot free (a commit: the log starts again).
    pub(crate) fn reset(&mut self) {
        *self = Ring::default();
    }

    /// Take `n` slots of `span`, freeing those whose writes a flush made
    /// durable first; None when too few are free.
    pub(super) fn take(
        &mut self,
        n: usize,
        span: std::ops::Range<u64>,
        array: &Array,
    ) -> Option<Vec<u64>> {
        if self.span != span {
            self.free = span.clone().rev().collect();
            self.taken.clear();
            self.span = span;
        }
        if self.free.len() < n {
            let free = &mut self.free;
            self.taken.retain(|&(slot, stamp)| match stamp {
                Some(s) if array.flushed_since(s) => {
                    free.push(slot);
                    false
                }
                _ => true,
            });
        }
        if self.free.len() < n {
            return None;
        }
        let got = self.free.split_off(self.free.len() - n);
        self.taken.extend(got.iter().map(|&s| (s, None)));
        Some(got)
    }

    /// The writes `slots` cover completed at flush stamp `stamp`.
    pub(super) fn completed(&mut self, slots: &[u64], stamp: u64) {
        for t in self.taken.iter_mut().filter(|t| slots.contains(&t.0)) {
            t.1 = Some(stamp);
        }
    }

    /// Would a write to unit `k` at blocks `offs` (offsets in the unit) of
    /// chunk `phys` compute its partial parity from another unit's write
    /// that is not yet durable? The replay could then rebuild neither
    /// (each partial parity holds the other's new bytes, the member one of
    /// the old), so such a write is written afresh instead.
    pub(super) fn conflicts(&mut self, phys: Chunk, offs: &[u64], k: u64, array: &Array) -> bool {
        if self.rows.len() > ROWS_KEPT {
            self.rows
                .retain(|_, &mut (_, stamp)| !array.flushed_since(stamp));
        }
        offs.iter().any(|&o| {
            self.rows
                .get(&(phys.index(), o))
                .is_some_and(|&(u, stamp)| u != k && !array.flushed_since(stamp))
        })
    }

    /// Unit `k`'s write at blocks `offs` of chunk `phys` completed at `stamp`.
    pub(super) fn row_written(&mut self, phys: Chunk, offs: &[u64], k: u64, stamp: u64) {
        for &o in offs {
            self.rows.insert((phys.index(), o), (k, stamp));
        }
    }

    /// `slots` were never named by a record: free at once.
    pub(super) fn unused(&mut self, slots: &[u64]) {
        self.taken.retain(|t| !slots.contains(&t.0));
        self.free.extend_from_slice(slots);
    }
}
