//! CRC32s of a write's 4 KiB blocks computed where its bytes arrived.
//!
//! A write's checksums were computed by the thread that runs it, often
//! twice (when its intents are named ahead, and when it runs), and on
//! bytes another core had just received: a large payload is no longer in
//! this core's cache then (1 MiB: about 110 us of CRC32 cold, 25 us hot).
//! The NBD reactor now computes them as each block of a payload comes off
//! the socket (`Received`), and the worker runs the write inside
//! `with_known`, where `csum::crc` of one of those very blocks (the same
//! address, 4 KiB long) answers from the table. The CRC32 of each block's
//! first 512-byte sector comes out of the same pass (the hasher's state
//! after it), for the tags of intents (`csum::head`), which would
//! otherwise read every block's first sector again on the worker's core.
//!
//! Why an answer is right: the table is only ever consulted for a slice
//! lying inside the buffer the scope was given, at a whole block from its
//! start, and that buffer is borrowed immutably for the whole scope, so
//! its bytes are those the CRC32s were computed from (checked in debug
//! builds, so every test that writes through NBD checks it). Any other
//! buffer (a copy, a block read back, a partial block) is outside it and
//! computed as before. The table is per thread and put back as it was
//! when the scope ends, even by a panic.

use super::store::csum::CSUM_BLOCK;
use std::cell::RefCell;

const BLK: usize = CSUM_BLOCK as usize;
/// A block's first sector, whose CRC32 a tag takes (`csum::head`).
const SECTOR: usize = 512;

/// The CRC32 of each whole 4 KiB block of a buffer being filled in order
/// (a write's payload as it is received), and of its first sector,
/// computed as each block fills. The default computes nothing (`advance`
/// does nothing).
#[derive(Default)]
pub struct Received {
    on: bool,
    crcs: Vec<u32>,
    firsts: Vec<u32>,
}

impl Received {
    /// For a buffer of `len` bytes.
    pub fn start(len: usize) -> Received {
        Received {
            on: true,
            crcs: Vec::with_capacity(len / BLK),
            firsts: Vec::with_capacity(len / BLK),
        }
    }

    /// Compute the CRC32s of the blocks of `data` that `filled` bytes now
    /// complete, past those already computed. `data[..filled]` must be
    /// final: a block's CRC32 is computed once.
    pub fn advance(&mut self, data: &[u8], filled: usize) {
        if !self.on {
            return;
        }
        let whole = filled.min(data.len()) / BLK;
        for b in self.crcs.len()..whole {
            let block = &data[b * BLK..(b + 1) * BLK];
            let mut h = crc32fast::Hasher::new();
            h.update(&block[..SECTOR]);
            self.firsts.push(h.clone().finalize());
            h.update(&block[SECTOR..]);
            self.crcs.push(h.finalize());
        }
    }

    /// The CRC32s computed so far, block by block from the start.
    pub fn crcs(&self) -> &[u32] {
        &self.crcs
    }
}

struct Table {
    /// The scope's buffer: its address and length.
    base: usize,
    len: usize,
    crcs: Vec<u32>,
    firsts: Vec<u32>,
}

thread_local! {
    static KNOWN: RefCell<Option<Table>> = const { RefCell::new(None) };
}

#[cfg(test)]
thread_local! {
    static HITS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many CRC32s this thread took from a table (tests only).
#[cfg(test)]
pub fn hits() -> u64 {
    HITS.with(|h| h.get())
}

/// Run `f` with the CRC32s `received` computed of `data`'s blocks known
/// to `csum::crc` on this thread (lent to the scope, given back after it).
pub fn with_known<R>(data: &[u8], received: &mut Received, f: impl FnOnce() -> R) -> R {
    if received.crcs.is_empty() {
        return f();
    }
    let mut crcs = std::mem::take(&mut received.crcs);
    let mut firsts = std::mem::take(&mut received.firsts);
    crcs.truncate(data.len() / BLK);
    firsts.truncate(crcs.len());
    debug_assert!(
        (crcs.iter().zip(&firsts).zip(data.chunks_exact(BLK)))
            .all(|((&c, &f), b)| crc32fast::hash(b) == c && crc32fast::hash(&b[..SECTOR]) == f),
        "the CRC32s given are not those of the buffer's blocks"
    );
    let table = Table {
        base: data.as_ptr() as usize,
        len: crcs.len() * BLK,
        crcs,
        firsts,
    };
    let before = KNOWN.with(|k| k.replace(Some(table)));
    /// Puts back the table of the scope around this one, and gives the
    /// CRC32s back, also on a panic.
    struct Restore<'a> {
        before: Option<Option<Table>>,
        to: &'a mut Received,
    }
    impl Drop for Restore<'_> {
        fn drop(&mut self) {
            let before = self.before.take().flatten();
            if let Some(t) = KNOWN.with(|k| k.replace(before)) {
                self.to.crcs = t.crcs;
                self.to.firsts = t.firsts;
            }
        }
    }
    let _restore = Restore {
        before: Some(before),
        to: received,
    };
    f()
}

/// The CRC32 of `block` if it is one of the blocks of the buffer of the
/// `with_known` scope this thread is in.
pub(super) fn lookup(block: &[u8]) -> Option<u32> {
    find(block, BLK, |t, i| t.crcs[i])
}

/// The CRC32 of `sector` if it is the first sector of one of the blocks
/// of the buffer of the `with_known` scope this thread is in.
pub(super) fn lookup_first(sector: &[u8]) -> Option<u32> {
    find(sector, SECTOR, |t, i| t.firsts[i])
}

/// `get` of the table's block at which `bytes` (`len` long) starts, if
/// it starts at one of its blocks.
fn find(bytes: &[u8], len: usize, get: impl Fn(&Table, usize) -> u32) -> Option<u32> {
    if bytes.len() != len {
        return None;
    }
    KNOWN.with(|k| {
        let k = k.borrow();
        let t = k.as_ref()?;
        let at = (bytes.as_ptr() as usize).checked_sub(t.base)?;
        let hit = (at < t.len && at % BLK == 0).then(|| get(t, at / BLK));
        #[cfg(test)]
        HITS.with(|h| h.set(h.get() + u64::from(hit.is_some())));
        hit
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thin::csum::crc;

    fn filled(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 4096) as u8).collect()
    }

    #[test]
    fn received_blocks_get_their_crcs_as_they_fill() {
        let data = filled(3 * BLK + 100);
        let mut off = Received::default();
        off.advance(&data, data.len());
        assert!(off.crcs().is_empty());
        let mut r = Received::start(data.len());
        r.advance(&data, BLK - 1);
        assert!(r.crcs().is_empty());
        r.advance(&data, 2 * BLK + 5);
        r.advance(&data, 2 * BLK + 9);
        assert_eq!(r.crcs().len(), 2);
        r.advance(&data, data.len());
        let want: Vec<u32> = data.chunks_exact(BLK).map(crc32fast::hash).collect();
        assert_eq!(r.crcs(), &want[..]);
    }

    fn received(data: &[u8], filled: usize) -> Received {
        let mut r = Received::start(data.len());
        r.advance(data, filled);
        r
    }

    #[test]
    fn only_the_scopes_own_blocks_answer_from_the_table() {
        let data = filled(4 * BLK);
        let mut r = received(&data, data.len());
        let real = r.crcs().to_vec();
        with_known(&data, &mut r, || {
            assert_eq!(lookup(&data[BLK..2 * BLK]), Some(real[1]));
            let before = hits();
            assert_eq!(crc(&data[3 * BLK..]), real[3]);
            assert_eq!(hits(), before + 1, "crc did not take it from the table");
            // Not at a whole block from the start, not 4 KiB, a copy.
            assert_eq!(lookup(&data[100..100 + BLK]), None);
            assert_eq!(lookup(&data[..BLK - 1]), None);
            let copy = data[..BLK].to_vec();
            assert_eq!(lookup(&copy), None);
            // A scope inside: its buffer only, then the outer one again.
            let other = filled(BLK + 1);
            let mut o = received(&other, other.len());
            let c = o.crcs()[0];
            with_known(&other, &mut o, || {
                assert_eq!(lookup(&other[..BLK]), Some(c));
                assert_eq!(lookup(&data[..BLK]), None);
            });
            assert_eq!(o.crcs(), &[c], "the inner scope's CRC32s not given back");
            assert_eq!(lookup(&data[..BLK]), Some(real[0]));
        });
        assert_eq!(lookup(&data[..BLK]), None, "the table outlived its scope");
        assert_eq!(r.crcs(), &real[..], "the CRC32s not given back");
        // Fewer CRC32s than blocks: the rest are computed.
        let mut first = received(&data, BLK + 7);
        with_known(&data, &mut first, || {
            assert_eq!(lookup(&data[..BLK]), Some(real[0]));
            assert_eq!(lookup(&data[BLK..2 * BLK]), None);
        });
    }

    #[test]
    fn first_sectors_answer_from_the_table_and_tags_agree() {
        let data = filled(3 * BLK);
        let mut r = received(&data, data.len());
        let want: Vec<u32> = (data.chunks_exact(BLK))
            .map(|b| crc32fast::hash(&b[..SECTOR]))
            .collect();
        let tags = crate::thin::csum::heads(&data, 700);
        with_known(&data, &mut r, || {
            assert_eq!(lookup_first(&data[BLK..BLK + SECTOR]), Some(want[1]));
            // Not a block's first sector, not a sector long, a copy.
            assert_eq!(lookup_first(&data[SECTOR..2 * SECTOR]), None);
            assert_eq!(lookup_first(&data[..SECTOR - 1]), None);
            let copy = data[..SECTOR].to_vec();
            assert_eq!(lookup_first(&copy), None);
            let before = hits();
            assert_eq!(crate::thin::csum::heads(&data, 700), tags);
            // The first block's tag names its second sector (computed).
            assert_eq!(hits(), before + 2, "the tags did not take the table's");
        });
        assert_eq!(lookup_first(&data[..SECTOR]), None);
    }

    #[test]
    fn a_panic_in_the_scope_takes_the_table_with_it() {
        let data = filled(BLK);
        let mut r = received(&data, BLK);
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            with_known(&data, &mut r, || panic!("in the scope"))
        }));
        assert!(caught.is_err());
        assert_eq!(lookup(&data), None);
        assert_eq!(r.crcs().len(), 1);
    }
}
