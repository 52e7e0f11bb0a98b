//! Recent mapping look-ups, kept beside the mapping tree: what
//! `ThinPool::lookup` found for a (volume, chunk), with the metadata
//! lock's write count it was found under (`sync::RwLock::writes`). A
//! write lock is the only way to change a mapping, a volume's root or a
//! chunk's sharing, so an entry whose count is still the lock's, read
//! under a read guard, is what the tree would say now. Anything that takes
//! the lock for writing (an allocation, a commit, a snapshot) makes every
//! entry stale at once; in-place overwrites of committed data take it for
//! reading only, so their look-ups (one when a write is named ahead, one
//! when it runs, one per read) stop walking the tree twice or more per
//! request.
//!
//! Direct-mapped (a (volume, chunk) has one slot; a newer one takes it):
//! `SLOTS` entries, about 320 KiB per pool, in `SHARDS` locks so that
//! threads looking up different chunks rarely meet.

use crate::units::Chunk;
use parking_lot::Mutex;

const SHARDS: usize = 16;
const SLOTS: usize = 8192;
const PER_SHARD: usize = SLOTS / SHARDS;

/// A mapping as `ThinPool::lookup` gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Mapping {
    pub(super) phys: Chunk,
    pub(super) exclusive: bool,
    /// Allocated in the running transaction: no committed state refers to it.
    pub(super) new: bool,
}

#[derive(Clone, Copy)]
struct Slot {
    /// The write count it was found under; `u64::MAX`: empty.
    writes: u64,
    vol: u64,
    vchunk: u64,
    found: Option<Mapping>,
}

const EMPTY: Slot = Slot {
    writes: u64::MAX,
    vol: 0,
    vchunk: 0,
    found: None,
};

pub(super) struct MapCache {
    shards: Box<[Mutex<Box<[Slot]>>]>,
}

impl Default for MapCache {
    fn default() -> MapCache {
        MapCache {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![EMPTY; PER_SHARD].into_boxed_slice()))
                .collect(),
        }
    }
}

/// A (volume, chunk) spread over 64 bits, for tables indexed by it (the
/// chunk locks, this cache).
pub(super) fn chunk_hash(vol: u64, vchunk: u64) -> u64 {
    vol.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ vchunk.wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
}

/// The shard and slot of (vol, vchunk).
fn place(vol: u64, vchunk: u64) -> (usize, usize) {
    let h = chunk_hash(vol, vchunk);
    let h = (h ^ (h >> 29)) as usize;
    (h % SHARDS, (h / SHARDS) % PER_SHARD)
}

impl MapCache {
    /// What a look-up of (vol, vchunk) found under write count `writes`
    /// (`Some(None)`: unmapped), if it is kept.
    pub(super) fn get(&self, vol: u64, vchunk: u64, writes: u64) -> Option<Option<Mapping>> {
        let (shard, slot) = place(vol, vchunk);
        let s = self.shards[shard].lock()[slot];
        (s.writes == writes && s.vol == vol && s.vchunk == vchunk).then_some(s.found)
    }

    /// Keep what a look-up of (vol, vchunk) found under write count
    /// `writes`. Caller holds the metadata lock for read.
    pub(super) fn put(&self, vol: u64, vchunk: u64, writes: u64, found: Option<Mapping>) {
        let (shard, slot) = place(vol, vchunk);
        self.shards[shard].lock()[slot] = Slot {
            writes,
            vol,
            vchunk,
            found,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_answers_only_its_own_chunk_under_its_own_count() {
        let c = MapCache::default();
        let m = Mapping {
            phys: Chunk(7),
            exclusive: true,
            new: false,
        };
        assert_eq!(c.get(1, 2, 5), None, "empty");
        c.put(1, 2, 5, Some(m));
        c.put(1, 3, 5, None);
        assert_eq!(c.get(1, 2, 5), Some(Some(m)));
        assert_eq!(c.get(1, 3, 5), Some(None), "unmapped is kept too");
        assert_eq!(c.get(1, 2, 6), None, "a write since: stale");
        assert_eq!(c.get(2, 2, 5), None, "another volume's chunk");
        // A chunk that lands on the same slot replaces it.
        let other = (0..1_000_000u64)
            .find(|&v| v != 2 && place(1, v) == place(1, 2))
            .expect("a colliding chunk");
        c.put(1, other, 5, None);
        assert_eq!(c.get(1, 2, 5), None);
        assert_eq!(c.get(1, other, 5), Some(None));
    }
}
