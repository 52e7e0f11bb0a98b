//! Data checksums in the metadata: a copy-on-write B-tree keyed by physical
//! data location (one entry per 64 KiB group of a chunk: 16 CRC32s of its
//! 4 KiB blocks), and the write-intent block, a bitmap of data regions that
//! may hold writes the last commit does not describe (see `thin::intent`).
//! The tree is committed with everything else; the intent block is
//! rewritten in place between commits.

use super::*;

pub const CSUM_OWNER: u64 = u64::MAX - 3;
/// Bytes of data one checksum covers.
pub const CSUM_BLOCK: u64 = 4096;
/// Checksums per tree entry.
pub const CSUM_GROUP: usize = 16;
/// Data bytes one tree entry covers.
pub const GROUP_BYTES: u64 = CSUM_BLOCK * CSUM_GROUP as u64;

/// Checksum tree: (chunk << 16 | group) → 16 × u32 CRC32 (LE).
pub const CSUM_SPEC: TreeSpec = TreeSpec {
    owner: CSUM_OWNER,
    value_size: 4 * CSUM_GROUP,
    values: ValueKind::Plain,
};

pub type Group = [u32; CSUM_GROUP];

/// Bits of a checksum key below the chunk number: the group within it.
const GROUP_BITS: u32 = 16;

/// Key of the group holding byte `within` of physical chunk `chunk`.
pub fn csum_key(chunk: Chunk, within: u64) -> u64 {
    (chunk.index() << GROUP_BITS) | (within / GROUP_BYTES)
}

/// The physical chunk a checksum key belongs to.
pub fn csum_key_chunk(key: u64) -> Chunk {
    Chunk(key >> GROUP_BITS)
}

/// The keys of every group of `chunk`: `[first, end)`.
pub fn csum_keys_of(chunk: Chunk) -> (u64, u64) {
    (
        chunk.index() << GROUP_BITS,
        chunk.next().index() << GROUP_BITS,
    )
}

/// Bitmap bytes an intent block holds.
pub const INTENT_BYTES: usize = BLOCK_SIZE - HEADER_SIZE;

const CACHE_SHARDS: usize = 16;
/// Groups a shard keeps (16 x 4,096 groups: 4 GiB of data, about 5 MB).
const CACHE_PER_SHARD: usize = 4096;

/// Groups of the checksum tree recently read or written, so that a read
/// verifies its blocks without a second tree walk after the mapping's, and
/// a write of part of a group finds the rest. Filled under the store's read
/// lock by look-ups; every change to the tree (under its write lock) puts
/// the group it wrote or forgets the keys it removed. A full shard starts
/// again empty.
pub(crate) struct GroupCache {
    shards: Vec<parking_lot::Mutex<HashMap<u64, Group>>>,
}

impl GroupCache {
    pub(crate) fn new() -> GroupCache {
        GroupCache {
            shards: (0..CACHE_SHARDS)
                .map(|_| parking_lot::Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, key: u64) -> &parking_lot::Mutex<HashMap<u64, Group>> {
        &self.shards[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize % CACHE_SHARDS]
    }

    fn get(&self, key: u64) -> Option<Group> {
        self.shard(key).lock().get(&key).copied()
    }

    fn put(&self, key: u64, g: Group) {
        let mut s = self.shard(key).lock();
        if s.len() >= CACHE_PER_SHARD {
            s.clear();
        }
        s.insert(key, g);
    }

    /// What the cache holds for `key`, without a look-up.
    #[cfg(test)]
    pub(crate) fn holds(&self, key: u64) -> Option<Group> {
        self.get(key)
    }

    fn forget(&self, key: u64) {
        self.shard(key).lock().remove(&key);
    }
}

impl MetaStore {
    /// Does this pool keep data checksums?
    pub fn has_csums(&self) -> bool {
        self.csum.is_some()
    }

    pub fn csum_get(&self, key: u64) -> Result<Option<Group>> {
        let Some(c) = &self.csum else {
            return Ok(None);
        };
        if let Some(g) = self.csum_cache.get(key) {
            return Ok(Some(g));
        }
        let found = btree::lookup(self, &CSUM_SPEC, c.root, key)?.map(|(v, _)| {
            let mut g = [0u32; CSUM_GROUP];
            for (i, x) in g.iter_mut().enumerate() {
                *x = get_u32(&v, 4 * i);
            }
            g
        });
        if let Some(g) = found {
            self.csum_cache.put(key, g);
        }
        Ok(found)
    }

    pub fn csum_put(&mut self, key: u64, g: &Group) -> Result<()> {
        let Some(mut c) = self.csum else {
            return Ok(());
        };
        let mut v = [0u8; 4 * CSUM_GROUP];
        for (i, x) in g.iter().enumerate() {
            put_u32(&mut v, 4 * i, *x);
        }
        self.csum_cache.forget(key);
        c.root = btree::insert(self, &CSUM_SPEC, c.root, key, &v)?.0;
        self.csum = Some(c);
        // What a look-up finds now: the next write to the group after a
        // commit (which puts every group a transaction wrote) merges its
        // blocks into it without walking the tree.
        self.csum_cache.put(key, *g);
        Ok(())
    }

    /// Drop every entry of chunk `chunk` (it was freed).
    pub fn csum_forget_chunk(&mut self, chunk: Chunk) -> Result<()> {
        let Some(mut c) = self.csum else {
            return Ok(());
        };
        let mut keys = Vec::new();
        let (first, end) = csum_keys_of(chunk);
        btree::walk(self, &CSUM_SPEC, c.root, first, end, &mut |k, _, _| {
            keys.push(k);
            Ok(true)
        })?;
        for k in keys {
            self.csum_cache.forget(k);
            c.root = btree::remove(self, &CSUM_SPEC, c.root, k)?.0;
        }
        self.csum = Some(c);
        Ok(())
    }

    pub fn csum_root(&self) -> Block {
        self.csum.map(|c| c.root).unwrap_or(Block::NONE)
    }

    pub fn intent_block(&self) -> Option<Block> {
        self.csum.map(|c| c.intent_block)
    }

    /// Rewrite the intent block on every metadata copy; with `durable`,
    /// flush before returning (a bit must be on the medium before the write
    /// it announces).
    pub fn write_intent(&self, region_chunks: u64, bits: &[u8], durable: bool) -> Result<()> {
        let Some(b) = self.intent_block() else {
            return Ok(());
        };
        let mut blk = vec![0u8; BLOCK_SIZE];
        Header {
            kind: BlockKind::Intent as u16,
            blocknr: b.index(),
            txid: self.committed.txid,
            pool_tag: self.blocks.pool_tag,
            low_key: region_chunks,
            ..Header::default()
        }
        .write(&mut blk);
        let n = bits.len().min(INTENT_BYTES);
        blk[HEADER_SIZE..HEADER_SIZE + n].copy_from_slice(&bits[..n]);
        seal(&mut blk, BlockKind::Intent.salt());
        let io = |e| Error::io("writing the write-intent block", e);
        self.blocks
            .write_place(super::Place::Block(b), &blk)
            .map_err(io)?;
        if durable {
            self.blocks.flush_meta().map_err(io)?;
        }
        Ok(())
    }

    /// The recorded intents: (chunks per region, bitmap). An intent block
    /// that no copy holds intact (a torn rewrite) is an error: the caller
    /// then treats every region as dirty.
    ///
    /// Also says whether the block is current: written since the last
    /// commit (its transaction id is the committed one). Only then do its
    /// bits name writes in flight; an older one (a lost write, or a commit
    /// whose clearing rewrite did not reach the medium) names regions
    /// whose writes were all committed.
    pub fn read_intent(&self) -> Result<Option<(u64, Vec<u8>, bool)>> {
        let Some(b) = self.intent_block() else {
            return Ok(None);
        };
        let blk = self.blocks.read_block(b, BlockKind::Intent)?;
        let h = Header::read(&blk);
        let current = h.txid == self.committed.txid;
        Ok(Some((h.low_key, blk[HEADER_SIZE..].to_vec(), current)))
    }
}
