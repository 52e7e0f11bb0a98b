//! The data space map in memory: one "in use" bit and one "shared" bit per
//! data chunk, plus this transaction's reference-count changes. The persistent
//! counts live in a B-tree (chunk → count, only non-zero entries) that the
//! commit updates from `overlay`. Bits are rebuilt from that tree at open.

use crate::units::Chunk;
use std::collections::{HashMap, HashSet};

pub struct DataSpace {
    total: u64,
    used_bits: Vec<u64>,
    shared_bits: Vec<u64>,
    /// Counts changed in the running transaction (absolute values).
    pub overlay: HashMap<Chunk, u32>,
    allocated: HashSet<Chunk>,
    /// Of `allocated`, the chunks a flush-log record maps.
    logged: HashSet<Chunk>,
    decremented: HashSet<Chunk>,
    freed: Vec<Chunk>,
    /// Chunks whose release the last commit made final (to discard on the members).
    released: Vec<Chunk>,
    used: u64,
    hint: u64,
    /// Allocate only below this chunk (a member is being removed).
    limit: Option<u64>,
}

fn bit(v: &[u64], c: Chunk) -> bool {
    let i = c.index();
    v[(i / 64) as usize] & (1 << (i % 64)) != 0
}

fn set_bit(v: &mut [u64], c: Chunk, on: bool) {
    let i = c.index();
    let w = &mut v[(i / 64) as usize];
    if on {
        *w |= 1 << (i % 64);
    } else {
        *w &= !(1 << (i % 64));
    }
}

impl DataSpace {
    pub fn new(total: u64) -> DataSpace {
        let words = total.div_ceil(64) as usize;
        DataSpace {
            total,
            used_bits: vec![0; words],
            shared_bits: vec![0; words],
            overlay: HashMap::new(),
            allocated: HashSet::new(),
            logged: HashSet::new(),
            decremented: HashSet::new(),
            freed: Vec::new(),
            released: Vec::new(),
            used: 0,
            hint: 0,
            limit: None,
        }
    }

    /// Make chunks up to `total` allocatable (the array grew).
    pub fn grow(&mut self, total: u64) {
        if total > self.total {
            let words = total.div_ceil(64) as usize;
            self.used_bits.resize(words, 0);
            self.shared_bits.resize(words, 0);
            self.total = total;
        }
    }

    /// Make chunks at or past `total` unusable (the array shrank). The
    /// caller made sure none of them is in use.
    pub fn shrink(&mut self, total: u64) {
        if total < self.total {
            let words = total.div_ceil(64) as usize;
            self.used_bits.truncate(words);
            self.shared_bits.truncate(words);
            self.total = total;
            self.hint = 0;
        }
    }

    /// Allocate only below `limit` from now on (`None`: anywhere).
    pub fn set_limit(&mut self, limit: Option<u64>) {
        self.limit = limit;
        self.hint = 0;
    }

    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// Chunks new data can go to: below the limit, if one is set.
    pub fn usable(&self) -> u64 {
        self.limit.map_or(self.total, |l| l.min(self.total))
    }

    /// Up to `max` chunks in use at or past `from`, in order.
    pub fn used_from(&self, from: Chunk, max: usize) -> Vec<Chunk> {
        let mut out = Vec::new();
        let mut c = from.index();
        while c < self.total && out.len() < max {
            if c.is_multiple_of(64) && self.used_bits[(c / 64) as usize] == 0 {
                c += 64;
                continue;
            }
            if bit(&self.used_bits, Chunk(c)) {
                out.push(Chunk(c));
            }
            c += 1;
        }
        out
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Chunks referenced by something (including ones released in the
    /// running transaction until it commits? no: those are not counted).
    pub fn used(&self) -> u64 {
        self.used
    }

    /// Chunks released in this transaction, reusable after the commit.
    pub fn pending_free(&self) -> u64 {
        self.freed.len() as u64
    }

    /// Load one persistent entry at open.
    pub fn load(&mut self, chunk: Chunk, count: u32) {
        if chunk.index() < self.total && count > 0 {
            if !bit(&self.used_bits, chunk) {
                self.used += 1;
            }
            set_bit(&mut self.used_bits, chunk, true);
            set_bit(&mut self.shared_bits, chunk, count > 1);
        }
    }

    pub fn in_use(&self, c: Chunk) -> bool {
        c.index() < self.total && bit(&self.used_bits, c)
    }

    /// May `c` be overwritten in place by its one owner? Not if shared now,
    /// and not if it lost a reference in this transaction (the committed
    /// state may still show it to someone else) unless it is new.
    pub fn exclusive(&self, c: Chunk) -> bool {
        !bit(&self.shared_bits, c)
            && (self.allocated.contains(&c) || !self.decremented.contains(&c))
    }

    /// Was `c` allocated in the running transaction, and not named by a
    /// flush-log record since (so nothing durable refers to it)?
    pub fn is_new(&self, c: Chunk) -> bool {
        self.allocated.contains(&c) && !self.logged.contains(&c)
    }

    /// A flush-log record now maps `c`: after a crash the log gives it back
    /// its contents, so it is overwritten as committed chunks are.
    pub fn set_logged(&mut self, c: Chunk) {
        if self.allocated.contains(&c) {
            self.logged.insert(c);
        }
    }

    /// Take chunk `c` with one reference, as the flush log's replay does
    /// for a chunk a logged write went to. False if it is not free.
    pub fn claim(&mut self, c: Chunk) -> bool {
        if c.index() >= self.total || bit(&self.used_bits, c) {
            return false;
        }
        self.take(c);
        true
    }

    /// Give free chunk `c` its first reference in the running transaction.
    fn take(&mut self, c: Chunk) {
        set_bit(&mut self.used_bits, c, true);
        self.overlay.insert(c, 1);
        self.allocated.insert(c);
        self.used += 1;
    }

    pub fn alloc(&mut self) -> Option<Chunk> {
        let total = self.usable();
        if total == 0 {
            return None;
        }
        let words = total.div_ceil(64);
        let start = self.hint / 64;
        for i in 0..=words {
            let w = (start + i) % words;
            let word = self.used_bits[w as usize];
            if word == u64::MAX {
                continue;
            }
            let c = w * 64 + (!word).trailing_zeros() as u64;
            if c >= total {
                continue;
            }
            self.take(Chunk(c));
            self.hint = c + 1;
            return Some(Chunk(c));
        }
        None
    }

    /// Allocate `n` consecutive chunks below the usable limit (first fit),
    /// each with one reference. For metadata extents.
    pub fn alloc_run(&mut self, n: u64) -> Option<Chunk> {
        let start = self.find_run(0, self.usable(), n)?;
        Some(self.take_run(start, n))
    }

    /// Allocate `n` consecutive chunks at or past chunk `from`, below the
    /// usable limit (first fit), each with one reference.
    pub fn alloc_run_from(&mut self, from: u64, n: u64) -> Option<Chunk> {
        let start = self.find_run(from, self.usable(), n)?;
        Some(self.take_run(start, n))
    }

    /// Allocate `n` consecutive chunks for data, from where the last
    /// allocation left off (then from the start): a write over several
    /// unmapped chunks lies on the array in one piece, which later reads
    /// and overwrites move in one I/O (see `thin::batch`).
    pub fn alloc_data_run(&mut self, n: u64) -> Option<Chunk> {
        let total = self.usable();
        let start = (self.find_run(self.hint.min(total), total, n))
            .or_else(|| self.find_run(0, total, n))?;
        self.hint = start + n;
        Some(self.take_run(start, n))
    }

    fn take_run(&mut self, start: u64, n: u64) -> Chunk {
        for x in start..start + n {
            self.take(Chunk(x));
        }
        Chunk(start)
    }

    /// The first of `n` free chunks in a row within `[from, to)`.
    fn find_run(&self, from: u64, to: u64, n: u64) -> Option<u64> {
        let (mut start, mut c) = (from, from);
        while c < to && n > 0 {
            if c.is_multiple_of(64) && c == start && self.used_bits[(c / 64) as usize] == u64::MAX {
                c += 64;
                start = c;
                continue;
            }
            if bit(&self.used_bits, Chunk(c)) {
                c += 1;
                start = c;
                continue;
            }
            c += 1;
            if c - start == n {
                return Some(start);
            }
        }
        None
    }

    pub fn set_count(&mut self, c: Chunk, old: u32, new: u32) {
        self.overlay.insert(c, new);
        set_bit(&mut self.shared_bits, c, new > 1);
        if new < old {
            self.decremented.insert(c);
        }
        if old > 0 && new == 0 {
            self.freed.push(c);
            self.used -= 1;
        } else if old == 0 && new > 0 {
            if !bit(&self.used_bits, c) {
                set_bit(&mut self.used_bits, c, true);
            }
            self.used += 1;
        }
    }

    /// Chunks whose count fell to zero in the running transaction (the
    /// commit releases them).
    pub fn freed_now(&self) -> Vec<Chunk> {
        let mut v: Vec<Chunk> = self
            .freed
            .iter()
            .copied()
            .filter(|&c| self.overlay_count_is_zero(c))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// After a commit: released chunks become allocatable.
    pub fn committed(&mut self) {
        for c in std::mem::take(&mut self.freed) {
            if self.overlay_count_is_zero(c) {
                set_bit(&mut self.used_bits, c, false);
                self.released.push(c);
            }
        }
        self.overlay.clear();
        self.allocated.clear();
        self.logged.clear();
        self.decremented.clear();
    }

    /// Chunks released for good by the last commits, sorted; clears the list.
    pub fn take_released(&mut self) -> Vec<Chunk> {
        let mut r = std::mem::take(&mut self.released);
        r.sort_unstable();
        r
    }

    fn overlay_count_is_zero(&self, c: Chunk) -> bool {
        self.overlay.get(&c).is_none_or(|&n| n == 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_runs_follow_the_last_allocation_and_skip_taken_chunks() {
        let mut d = DataSpace::new(200);
        assert_eq!(d.alloc(), Some(Chunk(0)));
        // Chunk 5 taken by someone else: the run of 8 starts after it.
        assert!(d.claim(Chunk(5)));
        assert_eq!(d.alloc_data_run(8), Some(Chunk(6)));
        assert_eq!(d.alloc_data_run(4), Some(Chunk(14)), "after the last run");
        for c in 6..18 {
            assert!(d.in_use(Chunk(c)) && d.is_new(Chunk(c)), "chunk {c}");
        }
        // 182 free after the last run, 4 before chunk 5.
        assert_eq!(d.alloc_data_run(183), None);
        assert_eq!(d.alloc_data_run(182), Some(Chunk(18)));
        assert_eq!(d.alloc_data_run(4), Some(Chunk(1)), "back from the start");
        assert_eq!(d.alloc_data_run(1), None);
        assert_eq!(d.used(), 200);
    }
}
