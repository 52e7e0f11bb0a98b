//! Data checksums in the data path. Every 4 KiB block written gets a CRC32,
//! kept in memory for the running transaction and folded into the
//! checksum tree at the commit. A read verifies each block; a block that
//! fails is read from the other copies (raid1 mirrors, raid5
//! reconstruction), the first copy that matches is returned and written
//! over the bad ones, and the member is counted. Without a good copy the
//! read fails with EIO: never silent garbage.

use super::ThinPool;
use crate::error::{Error, Result};
use crate::raid::Copy;
use crate::thin::store::csum::{
    csum_key, csum_key_chunk, Group, CSUM_BLOCK, CSUM_GROUP, GROUP_BYTES,
};
use crate::units::Chunk;
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

const SHARDS: usize = 64;
const BLK: usize = CSUM_BLOCK as usize;

/// Checksums written in the running transaction, and what was found.
pub struct Csums {
    pending: Vec<Mutex<HashMap<u64, Group>>>,
    /// Keys of `pending` changed since the last flush-log record, by shard.
    unlogged: Vec<Mutex<HashSet<u64>>>,
    /// Groups in `pending` (each may copy a checksum leaf at the commit).
    groups: AtomicU64,
    pub repaired: AtomicU64,
    pub unrecoverable: AtomicU64,
}

/// What checking one block found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlockCheck {
    /// Copies that failed the checksum (each counted on its member).
    pub bad_copies: u64,
    /// Of those, rewritten from a good copy.
    pub repaired: u64,
    /// No copy matched.
    pub unrecoverable: bool,
}

/// The CRC32 of a block: from the table of the `known::with_known` scope
/// this thread is in when `block` is one of its blocks, else computed.
pub fn crc(block: &[u8]) -> u32 {
    super::known::lookup(block).unwrap_or_else(|| crc32fast::hash(block))
}

/// Sectors of a 4 KiB block, as a disk may tear a write of it.
const SECTOR: usize = 512;
/// Bits of a tag that hold its sector's CRC32 (the rest, its index).
const TAG_BITS: u32 = 13;

/// The tag of a block about to be written, kept with its intent: the
/// first 512-byte sector the client's write covers in it (`first`, a byte
/// offset in the block) and its bytes, as the sector's index (top 3
/// bits) and the low 13 bits of its CRC32. The sectors before it hold
/// the flushed bytes already (a write widened to the block), so a block
/// that after a crash differs from its flushed bytes holds a tear of this
/// write only if it has that sector of it (disks land a write's sectors
/// in order); one that has not holds older bytes (see `thin::replay`).
pub fn head(block: &[u8], first: usize) -> u16 {
    let j = (first / SECTOR).min(CSUM_BLOCK as usize / SECTOR - 1);
    let sector = &block[(j * SECTOR).min(block.len())..((j + 1) * SECTOR).min(block.len())];
    let c = super::known::lookup_first(sector).unwrap_or_else(|| crc32fast::hash(sector));
    ((j as u16) << TAG_BITS) | (c as u16 & ((1 << TAG_BITS) - 1))
}

/// Whether `block` holds the sector a tag (`head`) names.
pub fn has_head(block: &[u8], tag: u16) -> bool {
    let j = usize::from(tag >> TAG_BITS);
    head(block, j * SECTOR) == tag
}

/// The tags (`head`) of each whole 4 KiB block of `data`, a write widened
/// to whole blocks whose client bytes start `first` bytes into it.
pub fn heads(data: &[u8], first: usize) -> Vec<u16> {
    data.chunks_exact(CSUM_BLOCK as usize)
        .enumerate()
        .map(|(i, b)| head(b, if i == 0 { first } else { 0 }))
        .collect()
}

impl Csums {
    pub fn new() -> Csums {
        Csums {
            pending: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            unlogged: (0..SHARDS).map(|_| Mutex::new(HashSet::new())).collect(),
            groups: AtomicU64::new(0),
            repaired: AtomicU64::new(0),
            unrecoverable: AtomicU64::new(0),
        }
    }

    /// Forget the running transaction's checksums (the pool went back to
    /// its last commit).
    pub fn drop_pending(&self) {
        for s in &self.pending {
            s.lock().clear();
        }
        self.forget_unlogged();
        self.groups.store(0, Ordering::Relaxed);
    }

    /// The groups changed since the last call, with their current values
    /// (for a flush-log record).
    pub fn take_unlogged(&self) -> Vec<(u64, Group)> {
        let mut out = Vec::new();
        for (i, q) in self.unlogged.iter().enumerate() {
            let keys = std::mem::take(&mut *q.lock());
            if keys.is_empty() {
                continue;
            }
            let pending = self.pending[i].lock();
            out.extend(keys.iter().filter_map(|k| pending.get(k).map(|g| (*k, *g))));
        }
        out
    }

    /// Nothing is waiting for a flush-log record (a commit holds it all).
    pub fn forget_unlogged(&self) {
        for q in &self.unlogged {
            q.lock().clear();
        }
    }

    /// Keep only the pending groups whose key `keep` accepts.
    pub fn retain(&self, keep: impl Fn(u64) -> bool) {
        for s in &self.pending {
            s.lock().retain(|k, _| keep(*k));
        }
        let n: usize = self.pending.iter().map(|s| s.lock().len()).sum();
        self.groups.store(n as u64, Ordering::Relaxed);
    }

    /// Checksum groups written in the running transaction.
    pub fn pending_groups(&self) -> u64 {
        self.groups.load(Ordering::Relaxed)
    }

    pub(crate) fn put(&self, key: u64, g: Group) {
        let i = Self::shard_of(key);
        if self.pending[i].lock().insert(key, g).is_none() {
            self.groups.fetch_add(1, Ordering::Relaxed);
        }
        self.unlogged[i].lock().insert(key);
    }

    pub fn has_pending(&self) -> bool {
        self.pending.iter().any(|s| !s.lock().is_empty())
    }

    fn shard_of(key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) as usize % SHARDS
    }

    fn shard(&self, key: u64) -> &Mutex<HashMap<u64, Group>> {
        &self.pending[Self::shard_of(key)]
    }
}

impl Default for Csums {
    fn default() -> Self {
        Csums::new()
    }
}

impl ThinPool {
    /// The checksums of the group holding byte `within` of chunk `phys`.
    fn group(&self, cs: &Csums, key: u64) -> Result<Option<Group>> {
        if let Some(g) = cs.shard(key).lock().get(&key) {
            return Ok(Some(*g));
        }
        self.meta.read().csum_get(key)
    }

    /// Checksum of block `within` (4 KiB aligned) of chunk `phys`, if known.
    pub(crate) fn block_csum(&self, phys: Chunk, within: u64) -> Result<Option<u32>> {
        let Some(cs) = &self.csums else {
            return Ok(None);
        };
        let slot = ((within % GROUP_BYTES) / CSUM_BLOCK) as usize;
        Ok(self.group(cs, csum_key(phys, within))?.map(|g| g[slot]))
    }

    /// Record the checksums of `data`, just written at byte `within` of
    /// chunk `phys` (both 4 KiB aligned).
    pub(crate) fn record(&self, phys: Chunk, within: u64, data: &[u8]) -> Result<()> {
        if self.csums.is_none() {
            return Ok(());
        }
        let crcs: Vec<u32> = data.chunks(BLK).map(crc).collect();
        self.record_crcs(phys, within, &crcs)
    }

    /// [`ThinPool::record`] with the blocks' checksums already computed
    /// (one per 4 KiB block written at byte `within` of chunk `phys`).
    pub(crate) fn record_crcs(&self, phys: Chunk, within: u64, crcs: &[u32]) -> Result<()> {
        let Some(cs) = &self.csums else {
            return Ok(());
        };
        // One group (16 blocks) at a time: one look-up, one insert.
        let mut at = within;
        let mut rest = crcs;
        while !rest.is_empty() {
            let key = csum_key(phys, at);
            let first = ((at % GROUP_BYTES) / CSUM_BLOCK) as usize;
            let n = (CSUM_GROUP - first).min(rest.len());
            let whole = first == 0 && n == CSUM_GROUP;
            let base = if whole {
                None
            } else {
                cs.shard(key).lock().get(&key).copied()
            };
            let mut g = match base {
                Some(g) => g,
                None if whole => [0; CSUM_GROUP],
                None => self.meta.read().csum_get(key)?.unwrap_or([0; CSUM_GROUP]),
            };
            g[first..first + n].copy_from_slice(&rest[..n]);
            cs.put(key, g);
            rest = &rest[n..];
            at += (n * BLK) as u64;
        }
        Ok(())
    }

    /// Set the checksum of block `within` (4 KiB aligned) of chunk `phys`.
    pub(crate) fn set_block_csum(&self, phys: Chunk, within: u64, value: u32) -> Result<()> {
        let Some(cs) = &self.csums else {
            return Ok(());
        };
        let key = csum_key(phys, within);
        let mut g = self.group(cs, key)?.unwrap_or([0; CSUM_GROUP]);
        g[((within % GROUP_BYTES) / CSUM_BLOCK) as usize] = value;
        cs.put(key, g);
        Ok(())
    }

    /// Record the checksums of chunk `newc`, a copy of chunk `old` (just
    /// read and verified; `None`: zeros) with `[within, within + len)`
    /// overwritten: the copied blocks keep `old`'s checksums, only the
    /// blocks the write touched are computed. `full` is the new content.
    pub(crate) fn record_cow(
        &self,
        newc: Chunk,
        old: Option<Chunk>,
        full: &[u8],
        within: u64,
        len: u64,
    ) -> Result<()> {
        let Some(cs) = &self.csums else {
            return Ok(());
        };
        static ZERO: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
        let zero = *ZERO.get_or_init(|| crc(&[0u8; BLK]));
        let (a0, a1) = (within / CSUM_BLOCK * CSUM_BLOCK, within + len);
        let mut at = 0u64;
        while at < full.len() as u64 {
            let blocks = (((full.len() as u64 - at) / CSUM_BLOCK) as usize).min(CSUM_GROUP);
            let base = match old {
                Some(o) => self.group(cs, csum_key(o, at))?,
                None => Some([zero; CSUM_GROUP]),
            };
            let mut g = base.unwrap_or([0; CSUM_GROUP]);
            for (i, slot) in g.iter_mut().enumerate().take(blocks) {
                let b = at + i as u64 * CSUM_BLOCK;
                if base.is_none() || (b + CSUM_BLOCK > a0 && b < a1) {
                    *slot = crc(&full[b as usize..(b + CSUM_BLOCK) as usize]);
                }
            }
            let key = csum_key(newc, at);
            cs.put(key, g);
            at += GROUP_BYTES;
        }
        Ok(())
    }

    /// Read `buf` at byte `within` of chunk `phys` (4 KiB aligned) and
    /// verify it, repairing bad copies.
    pub(crate) fn read_verified(&self, phys: Chunk, within: u64, buf: &mut [u8]) -> Result<()> {
        let off = self.chunk_size.at(phys, within);
        self.array
            .read(off, buf)
            .map_err(|e| Error::io("reading data", e))?;
        self.verify(phys, within, buf)
    }

    /// Check bytes `[within, within + buf.len())` of chunk `phys`, just
    /// read into `buf` (whole 4 KiB blocks), against their checksums,
    /// repairing a bad block from a good copy.
    pub(crate) fn verify(&self, phys: Chunk, within: u64, buf: &mut [u8]) -> Result<()> {
        if self.csums.is_none() {
            return Ok(());
        }
        let mut at = within;
        let mut group: Option<(u64, Option<Group>)> = None;
        let cs = self.csums.as_ref();
        for block in buf.chunks_mut(BLK) {
            let key = csum_key(phys, at);
            let g = match group {
                Some((k, g)) if k == key => g,
                _ => {
                    let g = match cs {
                        Some(cs) => self.group(cs, key)?,
                        None => None,
                    };
                    group = Some((key, g));
                    g
                }
            };
            let slot = ((at % GROUP_BYTES) / CSUM_BLOCK) as usize;
            if let Some(want) = g.map(|g| g[slot]) {
                if crc(block) != want {
                    let r = self.heal_block(self.chunk_size.at(phys, at), block, want, true)?;
                    if r.unrecoverable {
                        return Err(Error::io(
                            "reading data",
                            std::io::Error::other(format!(
                                "checksum mismatch in data chunk {phys} at byte {at} and no copy of it is good: restore this data from a backup (`vpool pool status` lists the event)"
                            )),
                        ));
                    }
                }
            }
            at += BLK as u64;
        }
        Ok(())
    }

    /// Check every copy of the block at array offset `off` against `want`;
    /// leave a good one in `block`. With `repair`, rewrite the bad copies.
    pub(crate) fn heal_block(
        &self,
        off: u64,
        block: &mut [u8],
        want: u32,
        repair: bool,
    ) -> Result<BlockCheck> {
        let mut out = BlockCheck::default();
        let copies = self.array.copies(off, block.len());
        let mut bad: Vec<Copy> = Vec::new();
        let mut good: Option<Vec<u8>> = None;
        let mut tmp = vec![0u8; block.len()];
        for c in &copies {
            if self.array.read_copy(*c, off, &mut tmp).is_ok() && crc(&tmp) == want {
                if good.is_none() {
                    good = Some(tmp.clone());
                }
            } else if c.direct {
                // (A raid5 reconstruction that fails means bad parity or
                // another bad unit: scrub's parity check finds it.)
                bad.push(*c);
            }
        }
        let health = self.array.health();
        for c in &bad {
            health.count_checksum(c.member);
            out.bad_copies += 1;
        }
        if copies.is_empty() {
            health.count_checksum(self.array.member_at(off));
            out.bad_copies += 1;
        }
        let Some(g) = good else {
            out.unrecoverable = true;
            if let Some(cs) = &self.csums {
                cs.unrecoverable.fetch_add(1, Ordering::Relaxed);
            }
            health.event(format!(
                "data block at pool offset {off} failed its checksum on every copy ({} copies): unrecoverable",
                copies.len()
            ));
            return Ok(out);
        };
        block.copy_from_slice(&g);
        for c in bad.iter().filter(|c| c.direct) {
            if !repair {
                continue;
            }
            match self.array.rewrite_copy(*c, off, &g) {
                Ok(()) => {
                    out.repaired += 1;
                    if let Some(cs) = &self.csums {
                        cs.repaired.fetch_add(1, Ordering::Relaxed);
                    }
                    health.event(format!(
                        "data block at pool offset {off}: bad copy on member {} rewritten from a good copy",
                        c.member
                    ));
                }
                Err(e) => health.event(format!(
                    "data block at pool offset {off}: bad copy on member {} could not be rewritten: {e}",
                    c.member
                )),
            }
        }
        Ok(out)
    }

    /// Fold this transaction's checksums into the checksum tree (caller
    /// holds the gate for write), after dropping the entries of chunks this
    /// transaction frees (the committed tree keeps them until the commit;
    /// the chunks are not reused before it).
    pub(crate) fn fold_csums(&self) -> Result<()> {
        let Some(cs) = &self.csums else {
            return Ok(());
        };
        let mut meta = self.meta.write();
        let freed = meta.data.freed_now();
        for &c in &freed {
            meta.csum_forget_chunk(c)?;
        }
        // A chunk written and freed in this transaction keeps nothing.
        // Nothing is dropped before every group is in the tree: a fold that
        // fails (damaged metadata) leaves them all for the next commit.
        let mut all: Vec<(u64, Group)> = Vec::new();
        for s in &cs.pending {
            all.extend(
                s.lock()
                    .iter()
                    .filter(|(k, _)| freed.binary_search(&csum_key_chunk(**k)).is_err())
                    .map(|(k, g)| (*k, *g)),
            );
        }
        all.sort_unstable_by_key(|(k, _)| *k);
        for (k, g) in all {
            meta.csum_put(k, &g)?;
        }
        // The caller holds the I/O gate: no write added any meanwhile.
        cs.drop_pending();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{has_head, head, heads};

    #[test]
    fn a_tag_names_the_first_sector_written_and_finds_it_in_a_tear() {
        let flushed: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        // A client write from byte 600 (sector 1), widened to the block.
        let mut written = flushed.clone();
        written[600..]
            .iter_mut()
            .for_each(|b| *b = b.wrapping_add(1));
        let tag = head(&written, 600);
        assert_eq!(tag >> 13, 1, "sector 1 is the first the write covers");
        assert!(has_head(&written, tag));
        // Torn after sector 1, 2 or 7: the sector is there.
        for k in [2, 3, 7] {
            let mut torn = written[..k * 512].to_vec();
            torn.extend_from_slice(&flushed[k * 512..]);
            assert!(has_head(&torn, tag), "torn after {k} sectors");
        }
        // Older bytes sharing the flushed first sector: not a tear.
        let mut older = vec![9u8; 4096];
        older[..512].copy_from_slice(&flushed[..512]);
        assert!(!has_head(&older, tag));
        assert!(!has_head(&flushed, tag));
        // Later blocks of a write start at their sector 0.
        let two = [written.clone(), flushed.clone()].concat();
        let tags = heads(&two, 600);
        assert_eq!((tags[0] >> 13, tags[1] >> 13), (1, 0));
    }
}
