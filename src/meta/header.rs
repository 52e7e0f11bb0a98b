//! The 64-byte header every metadata block (B-tree node, catalog block,
//! space-map page) starts with. It makes each block self-identifying: kind,
//! own block number, writing transaction, pool, owning tree, level, key range.

use super::codec::*;
use crate::error::BlockFault;

pub const HEADER_SIZE: usize = 64;
pub const FORMAT_VERSION: u16 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum BlockKind {
    Node = 1,
    Catalog = 2,
    SpaceMap = 3,
    /// The write-intent bitmap of a checksummed pool (rewritten in place).
    Intent = 4,
    /// The list of the flush log's blocks (see `store::log`).
    LogDir = 5,
    /// One block of the flush log: records of flushes since the last commit.
    Log = 6,
}

impl BlockKind {
    pub fn salt(self) -> u32 {
        match self {
            BlockKind::Node => salt::NODE,
            BlockKind::Catalog => salt::CATALOG,
            BlockKind::SpaceMap => salt::SPACE_MAP,
            BlockKind::Intent => salt::INTENT,
            BlockKind::LogDir => salt::LOG_DIR,
            BlockKind::Log => salt::LOG,
        }
    }

    /// How errors name the kind.
    pub fn name(self) -> &'static str {
        match self {
            BlockKind::Node => "tree node",
            BlockKind::Catalog => "catalog block",
            BlockKind::SpaceMap => "space-map page",
            BlockKind::Intent => "write-intent block",
            BlockKind::LogDir => "flush-log directory",
            BlockKind::Log => "flush-log block",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Header {
    pub kind: u16,
    pub blocknr: u64,
    pub txid: u64,
    pub pool_tag: u64,
    pub owner: u64,
    pub level: u8,
    pub nr_entries: u16,
    pub value_size: u16,
    /// Lowest key in a node; payload length in a catalog block.
    pub low_key: u64,
    /// Next block of a catalog chain.
    pub next: u64,
}

// Offsets (bytes) of header fields.
const KIND: usize = 4;
const VERSION: usize = 6;
const BLOCKNR: usize = 8;
const TXID: usize = 16;
const POOL_TAG: usize = 24;
const OWNER: usize = 32;
const LEVEL: usize = 40;
const NR_ENTRIES: usize = 42;
const VALUE_SIZE: usize = 44;
const LOW_KEY: usize = 48;
const NEXT: usize = 56;

impl Header {
    pub fn write(&self, b: &mut [u8]) {
        put_u16(b, KIND, self.kind);
        put_u16(b, VERSION, FORMAT_VERSION);
        put_u64(b, BLOCKNR, self.blocknr);
        put_u64(b, TXID, self.txid);
        put_u64(b, POOL_TAG, self.pool_tag);
        put_u64(b, OWNER, self.owner);
        b[LEVEL] = self.level;
        b[LEVEL + 1] = 0;
        put_u16(b, NR_ENTRIES, self.nr_entries);
        put_u16(b, VALUE_SIZE, self.value_size);
        put_u16(b, VALUE_SIZE + 2, 0);
        put_u64(b, LOW_KEY, self.low_key);
        put_u64(b, NEXT, self.next);
    }

    pub fn read(b: &[u8]) -> Header {
        Header {
            kind: get_u16(b, KIND),
            blocknr: get_u64(b, BLOCKNR),
            txid: get_u64(b, TXID),
            pool_tag: get_u64(b, POOL_TAG),
            owner: get_u64(b, OWNER),
            level: b[LEVEL],
            nr_entries: get_u16(b, NR_ENTRIES),
            value_size: get_u16(b, VALUE_SIZE),
            low_key: get_u64(b, LOW_KEY),
            next: get_u64(b, NEXT),
        }
    }

    /// Validate a whole block against what the reader expects. Returns why
    /// it is unusable, never a partially trusted block.
    pub fn validate(
        b: &[u8],
        kind: BlockKind,
        blocknr: u64,
        pool_tag: u64,
        max_txid: u64,
    ) -> Result<Header, BlockFault> {
        if b.len() != BLOCK_SIZE {
            return Err(BlockFault::Size(b.len()));
        }
        let h = Header::read(b);
        if h.kind != kind as u16 {
            return Err(BlockFault::Kind {
                found: h.kind,
                expected: kind.name(),
            });
        }
        if !verify(b, kind.salt()) {
            return Err(BlockFault::Checksum);
        }
        if get_u16(b, VERSION) != FORMAT_VERSION {
            return Err(BlockFault::Version(get_u16(b, VERSION) as u32));
        }
        if h.blocknr != blocknr {
            return Err(BlockFault::Misplaced(h.blocknr));
        }
        if h.pool_tag != pool_tag {
            return Err(BlockFault::ForeignPool);
        }
        if h.txid > max_txid {
            return Err(BlockFault::Future {
                found: h.txid,
                last: max_txid,
            });
        }
        Ok(h)
    }
}
