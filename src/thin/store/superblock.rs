//! The superblock: the root of one committed transaction. Two slots per
//! metadata copy, written alternately (slot = txid % 2); on open the valid
//! superblock with the highest transaction id wins.

use crate::error::BlockFault;
use crate::meta::codec::*;
use crate::meta::node::{pack_ptr, unpack_ptr};
use crate::units::Block;

pub const SB_MAGIC: u32 = 0x4253_5056; // "VPSB"
pub const SB_VERSION: u32 = 1;
/// Written while a layout transition (reshape, resync) is in progress, so
/// that a reader that does not know transitions refuses the pool.
pub const SB_VERSION_TRANSITION: u32 = 2;
/// Written while a member is failed or being rebuilt (states 2 and 3), so
/// that a reader that does not know those states refuses the pool instead
/// of trusting a failed member's stale data. Carries a transition (or kind
/// 0 for none) like version 2.
pub const SB_VERSION_HEALTH: u32 = 3;
/// A pool with per-block data checksums: version 3's fields plus the root
/// of the checksum tree and the write-intent block. Older readers refuse it
/// (they would write data without updating its checksums).
pub const SB_VERSION_CSUM: u32 = 4;
/// Every block pointer carries its target's generation tag (B-tree child
/// pointers, the roots here, the mapping roots in the volumes tree): the
/// fields of version 4, with the checksum fields present when bit 0 of the
/// feature word at byte 12 is set, a transition when its kind is not 0,
/// and the top 24 bits of the three root pointers holding their tags.
/// Older readers refuse it (they would take a tagged pointer for a block
/// number). Every commit writes this version.
pub const SB_VERSION_GEN: u32 = 5;
/// Version 5 plus metadata extents (metadata space taken from the data
/// area after creation: their list fills bytes 2048..4096, the selector
/// ends before it) and the catalog kept in a B-tree (feature bit 2).
/// Written when either is in use. Older readers refuse it (they would not
/// find the blocks).
pub const SB_VERSION_EXTENTS: u32 = 6;
/// Version 6 plus the flush log (feature bit 3): bytes 2032..2040 hold
/// the block number of its directory, and the selector ends before them.
/// Written once a pool has a log (its first commit by this version).
/// Older readers refuse it (they would not replay the flushes it holds).
pub const SB_VERSION_LOG: u32 = 7;
/// Version 7 whose log records may be followed by journaled data blocks
/// (a record's header field `next` counts them; see `store::log`). Every
/// commit of a pool with a log writes it; older readers refuse it (they
/// would take a data block for the end of the log).
pub const SB_VERSION_JOURNAL: u32 = 8;
/// Version 8 whose log may hold a record of intents written as a pair
/// (header field `nr_entries` its version; see `store::log`). Every commit
/// of a pool with a log writes it; older readers refuse it (they would
/// take the pair's second block for the end of the log).
pub const SB_VERSION_PAIRS: u32 = 9;
/// Version 9 whose log may hold runs of intents (entry type 6: one entry
/// for consecutive blocks of a chunk; see `thin::log_entry`). Every
/// commit of a pool with a log writes it; older readers refuse it (they
/// would stop their replay at the first run and lose its intents).
pub const SB_VERSION_RUNS: u32 = 10;
/// Version 10 whose log may hold RAID5 partial parities (entry type 7, a
/// `Parity` entry and its block; see `thin::ppl`). Every commit of a pool
/// with a log writes it; older readers refuse it (they would stop their
/// replay at the first partial parity, and a pool that lost a member
/// would rebuild rows from stale parity).
pub const SB_VERSION_PARITY: u32 = 11;
/// Version 11 whose log may hold intents with their tags
/// (entry types 8 and 9; see `thin::log_entry`). Every commit of a pool
/// with a log writes it; older readers refuse it (they would stop their
/// replay at the first such intent, and adopt whatever its block holds).
pub const SB_VERSION_HEADS: u32 = 12;
/// Feature bit (byte 12, version 5): the pool keeps data checksums.
const FEATURE_CSUM: u32 = 1;
/// Feature bit: the metadata area does not grow on its own (`pool set
/// metadata-autogrow=off`). Advisory: a reader that ignores it is safe.
const FEATURE_NO_AUTOGROW: u32 = 2;
/// Feature bit (version 6): the catalog is a B-tree of fixed records whose
/// root pointer (with its generation tag) is at byte 56.
const FEATURE_CATALOG_TREE: u32 = 4;
/// Feature bit (version 7): the pool has a flush log (see `store::log`).
const FEATURE_LOG: u32 = 8;
/// Feature bit: the member a rebuild record names is being replaced in
/// service, and its former device, if it comes back with the label of the
/// member table before this one, still serves the rows not yet rebuilt.
/// Cleared by the first commit after that device fails. Advisory: a reader
/// that ignores it leaves the former device out, which is safe.
const FEATURE_REPLACING: u32 = 16;
const FEATURES: usize = 12;
/// Member states recorded in the superblock.
pub const MEMBER_ONLINE: u8 = 0;
/// Missing when a transaction committed: its contents are stale.
pub const MEMBER_STALE: u8 = 1;
/// Failed while serving (I/O errors) or by `pool fail`: not used again
/// until replaced or cleared (which rebuilds it).
pub const MEMBER_FAILED: u8 = 2;
/// Being rebuilt (the transition's `removed` names it): in sync below the
/// transition's `pos`.
pub const MEMBER_REBUILDING: u8 = 3;
const STATES: usize = 136;
const MAX_STATES: usize = 64;
const TRANSITION: usize = 200;
const CSUM_ROOT: usize = 240;
const INTENT_BLOCK: usize = 248;
const SELECTOR: usize = 256;
/// Version 6: the metadata extent list.
const EXTENTS: usize = BLOCK_SIZE - crate::meta::extent::LIST_BYTES;
/// Version 7: the flush log's directory block (u64), then (while a
/// transition is recorded) [`SbTransition::backup_copy`].
const LOG_DIR: usize = EXTENTS - 16;
const BACKUP_COPY: usize = LOG_DIR + 8;
/// Most space-map pages a superblock of version 6 or 7 can select between
/// (the fixed area alone may have up to [`MAX_MSM_PAGES_V5`]).
pub const MAX_MSM_PAGES: usize = crate::meta::spacemap::MAX_PAGES;
const _: () = assert!(MAX_MSM_PAGES == (LOG_DIR - SELECTOR) * 8);
/// Most space-map pages a version-6 superblock could select between.
const MAX_MSM_PAGES_V6: usize = (EXTENTS - SELECTOR) * 8;
/// Most space-map pages before version 6 (a fixed area this large cannot
/// grow: it already holds 118 GiB of metadata).
pub const MAX_MSM_PAGES_V5: usize = (BLOCK_SIZE - SELECTOR) * 8;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub txid: u64,
    pub pool_uuid: [u8; 16],
    pub volumes_root: Block,
    pub dsm_root: Block,
    pub catalog_head: Block,
    pub catalog_bytes: u64,
    pub data_chunks: u64,
    pub used_chunks: u64,
    pub meta_blocks: u64,
    pub used_meta_blocks: u64,
    pub next_volume_id: u64,
    pub chunk_size: u64,
    pub time: u64,
    pub msm_pages: u32,
    pub member_states: Vec<u8>,
    /// Bit p set: space-map page p is current in slot 1, else slot 0.
    pub selector: Vec<u8>,
    /// A layout change in progress (adding a member), with its checkpoint.
    pub transition: Option<SbTransition>,
    /// Data checksums: the checksum tree's root (0 while empty) and the
    /// write-intent block. `None` for a pool without data checksums.
    pub csum: Option<SbCsum>,
    /// Generation tags of the volumes, reference-count and checksum tree
    /// roots (0: not recorded, as in versions before 5).
    pub root_gens: [u32; 3],
    /// Metadata extents (version 6; empty before).
    pub extents: Vec<crate::meta::extent::MetaExtent>,
    /// The metadata area grows only by command.
    pub no_autogrow: bool,
    /// The catalog is a tree rooted at `catalog_head` (version 6).
    pub catalog_tree: bool,
    /// The catalog tree root's generation tag.
    pub catalog_gen: u32,
    /// The flush log's directory block (version 7; 0: no log).
    pub log_dir: Block,
    /// The rebuild in progress replaces a member in service, whose former
    /// device still serves (`FEATURE_REPLACING`).
    pub replacing: bool,
}

/// Where a checksummed pool keeps its data checksums and write intents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbCsum {
    pub root: Block,
    pub intent_block: Block,
}

/// Checkpoint of a layout transition, recorded with every commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SbTransition {
    /// [`TRANSITION_RESTRIPE`], [`TRANSITION_RESYNC`] or [`TRANSITION_SHRINK`].
    pub kind: u32,
    /// Members before the change (an added one follows them).
    pub old_members: u32,
    /// Shrink: index of the member being removed; rebuild: of the member
    /// being rebuilt (0 otherwise).
    pub removed: u32,
    /// Array bytes already in the new layout.
    pub pos: u64,
    /// Restripe: [`PHASE_START`], [`PHASE_BACKUP`] or [`PHASE_MAIN`];
    /// shrink: [`PHASE_EVACUATE`], [`PHASE_MAIN`], [`PHASE_BACKUP`], [`PHASE_DONE`].
    pub phase: u32,
    /// Where the backup of the first rows sits on the new member, and its length.
    pub backup_offset: u64,
    pub backup_len: u64,
    /// Restripe of a raid5 pool with a flush log, in phase BACKUP: the
    /// array byte offset (old layout) of a second copy of the first rows,
    /// in data chunks allocated to it alone; 0 = none. Stored at 2040
    /// (the reserved word after the log directory).
    pub backup_copy: u64,
}

pub const TRANSITION_RESTRIPE: u32 = 1;
pub const TRANSITION_RESYNC: u32 = 2;
/// A member leaves (`pool remove`): evacuate, then restripe downwards.
pub const TRANSITION_SHRINK: u32 = 3;
/// A failed member's replacement is rebuilt from the others (`pool
/// replace`, `pool clear`); `removed` is its index, `pos` the checkpoint.
pub const TRANSITION_REBUILD: u32 = 4;
/// Nothing moved yet.
pub const PHASE_START: u32 = 0;
/// The first rows are saved at `backup_offset`; rewriting them is in progress.
pub const PHASE_BACKUP: u32 = 1;
/// Rows are moved in place, `pos` is the checkpoint.
pub const PHASE_MAIN: u32 = 2;
/// Shrink: data chunks above the new capacity are being relocated below it.
pub const PHASE_EVACUATE: u32 = 3;
/// Shrink: the data is in the new layout; labels and member table remain.
pub const PHASE_DONE: u32 = 4;

impl Superblock {
    /// The data chunk size, for converting bytes and chunks.
    pub fn chunk(&self) -> crate::units::ChunkSize {
        crate::units::ChunkSize::new(self.chunk_size)
    }

    /// Does this superblock need version 6 (extents, or the catalog tree)?
    pub fn is_v6(&self) -> bool {
        !self.extents.is_empty() || self.catalog_tree
    }

    pub fn slot_offset(meta_offset: u64, txid: u64) -> u64 {
        meta_offset + (txid % 2) * BLOCK_SIZE as u64
    }

    pub fn selector_bit(&self, page: usize) -> usize {
        self.selector
            .get(page / 8)
            .map_or(0, |s| ((s >> (page % 8)) & 1) as usize)
    }

    pub fn set_selector_bit(&mut self, page: usize, slot: usize) {
        if slot == 1 {
            self.selector[page / 8] |= 1 << (page % 8);
        } else {
            self.selector[page / 8] &= !(1 << (page % 8));
        }
    }

    /// The version field of an encoded superblock (checked by `decode`).
    pub fn version_of(b: &[u8]) -> u32 {
        get_u32(b, 8)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        put_u32(&mut b, 4, SB_MAGIC);
        put_u32(
            &mut b,
            8,
            if !self.log_dir.is_none() {
                SB_VERSION_HEADS
            } else if self.is_v6() {
                SB_VERSION_EXTENTS
            } else {
                SB_VERSION_GEN
            },
        );
        put_u32(
            &mut b,
            FEATURES,
            (if self.csum.is_some() { FEATURE_CSUM } else { 0 })
                | (if self.no_autogrow {
                    FEATURE_NO_AUTOGROW
                } else {
                    0
                })
                | (if self.catalog_tree {
                    FEATURE_CATALOG_TREE
                } else {
                    0
                })
                | (if self.log_dir.is_none() {
                    0
                } else {
                    FEATURE_LOG
                })
                | (if self.replacing { FEATURE_REPLACING } else { 0 }),
        );
        put_u64(&mut b, 16, self.txid);
        b[24..40].copy_from_slice(&self.pool_uuid);
        put_u64(&mut b, 40, pack_ptr(self.volumes_root, self.root_gens[0]));
        put_u64(&mut b, 48, pack_ptr(self.dsm_root, self.root_gens[1]));
        put_u64(
            &mut b,
            56,
            match self.catalog_tree {
                true => pack_ptr(self.catalog_head, self.catalog_gen),
                false => self.catalog_head.index(),
            },
        );
        put_u64(&mut b, 64, self.catalog_bytes);
        put_u64(&mut b, 72, self.data_chunks);
        put_u64(&mut b, 80, self.used_chunks);
        put_u64(&mut b, 88, self.meta_blocks);
        put_u64(&mut b, 96, self.used_meta_blocks);
        put_u64(&mut b, 104, self.next_volume_id);
        put_u64(&mut b, 112, self.chunk_size);
        put_u64(&mut b, 120, self.time);
        put_u32(&mut b, 128, self.msm_pages);
        put_u32(&mut b, 132, self.member_states.len() as u32);
        for (i, s) in self.member_states.iter().enumerate().take(MAX_STATES) {
            b[STATES + i] = *s;
        }
        if let Some(t) = &self.transition {
            put_u32(&mut b, TRANSITION, t.kind);
            put_u32(&mut b, TRANSITION + 4, t.old_members);
            put_u64(&mut b, TRANSITION + 8, t.pos);
            put_u32(&mut b, TRANSITION + 16, t.phase);
            put_u32(&mut b, TRANSITION + 20, t.removed);
            put_u64(&mut b, TRANSITION + 24, t.backup_offset);
            put_u64(&mut b, TRANSITION + 32, t.backup_len);
        }
        if let Some(c) = &self.csum {
            put_u64(&mut b, CSUM_ROOT, pack_ptr(c.root, self.root_gens[2]));
            put_block(&mut b, INTENT_BLOCK, c.intent_block);
        }
        let end = if !self.log_dir.is_none() {
            put_block(&mut b, LOG_DIR, self.log_dir);
            if let Some(t) = &self.transition {
                put_u64(&mut b, BACKUP_COPY, t.backup_copy);
            }
            LOG_DIR
        } else if self.extents.is_empty() {
            BLOCK_SIZE
        } else {
            EXTENTS
        };
        let n = self.selector.len().min(end - SELECTOR);
        b[SELECTOR..SELECTOR + n].copy_from_slice(&self.selector[..n]);
        if !self.extents.is_empty() {
            crate::meta::extent::encode(&self.extents, &mut b[EXTENTS..]);
        }
        seal(&mut b, salt::SUPERBLOCK);
        b
    }

    pub fn decode(b: &[u8]) -> Result<Superblock, BlockFault> {
        if b.len() < BLOCK_SIZE {
            return Err(BlockFault::Size(b.len()));
        }
        let b = &b[..BLOCK_SIZE];
        if get_u32(b, 4) != SB_MAGIC {
            return Err(BlockFault::NoMagic);
        }
        if !verify(b, salt::SUPERBLOCK) {
            return Err(BlockFault::Checksum);
        }
        let version = get_u32(b, 8);
        if !(SB_VERSION..=SB_VERSION_HEADS).contains(&version) {
            return Err(BlockFault::Version(version));
        }
        let msm_pages = get_u32(b, 128);
        // Before version 6 the selector could reach the last bytes.
        let max_pages = match version {
            SB_VERSION_LOG..=SB_VERSION_HEADS => MAX_MSM_PAGES,
            SB_VERSION_EXTENTS => MAX_MSM_PAGES_V6,
            _ => MAX_MSM_PAGES_V5,
        };
        if msm_pages as usize > max_pages {
            return Err(BlockFault::Malformed(format!(
                "superblock claims {msm_pages} space-map pages"
            )));
        }
        let members = get_u32(b, 132) as usize;
        if members > MAX_STATES {
            return Err(BlockFault::Malformed(format!(
                "superblock claims {members} members"
            )));
        }
        let mut pool_uuid = [0u8; 16];
        pool_uuid.copy_from_slice(&b[24..40]);
        let sel_len = (msm_pages as usize).div_ceil(8);
        let features = if version >= SB_VERSION_GEN {
            get_u32(b, FEATURES)
        } else {
            0
        };
        // Before version 5, pointers hold block numbers alone.
        let ptr = |off: usize| match version >= SB_VERSION_GEN {
            true => unpack_ptr(get_u64(b, off)),
            false => (get_block(b, off), 0),
        };
        let has_csum = version == SB_VERSION_CSUM
            || (version >= SB_VERSION_GEN && features & FEATURE_CSUM != 0);
        let (volumes_root, volumes_gen) = ptr(40);
        let (dsm_root, dsm_gen) = ptr(48);
        let (csum_root, csum_gen) = if has_csum {
            ptr(CSUM_ROOT)
        } else {
            (Block::NONE, 0)
        };
        if [volumes_root, dsm_root, csum_root]
            .iter()
            .any(|&r| r.index() > crate::meta::node::BLOCK_MASK)
        {
            return Err(BlockFault::Malformed(
                "superblock root pointer beyond any metadata area".into(),
            ));
        }
        let transition = if version == SB_VERSION_TRANSITION
            || (version >= SB_VERSION_HEALTH && get_u32(b, TRANSITION) != 0)
        {
            let t = SbTransition {
                kind: get_u32(b, TRANSITION),
                old_members: get_u32(b, TRANSITION + 4),
                pos: get_u64(b, TRANSITION + 8),
                phase: get_u32(b, TRANSITION + 16),
                removed: get_u32(b, TRANSITION + 20),
                backup_offset: get_u64(b, TRANSITION + 24),
                backup_len: get_u64(b, TRANSITION + 32),
                backup_copy: match version >= SB_VERSION_LOG && features & FEATURE_LOG != 0 {
                    true => get_u64(b, BACKUP_COPY),
                    false => 0,
                },
            };
            let ok = match t.kind {
                TRANSITION_RESTRIPE | TRANSITION_RESYNC => {
                    t.phase <= PHASE_MAIN && (t.old_members as usize) < members.max(1)
                }
                TRANSITION_SHRINK => {
                    t.phase <= PHASE_DONE
                        && t.old_members as usize == members
                        && t.removed < t.old_members
                }
                TRANSITION_REBUILD => {
                    t.phase == PHASE_MAIN
                        && t.old_members as usize == members
                        && t.removed < t.old_members
                }
                _ => false,
            };
            if !ok {
                return Err(BlockFault::Malformed(format!(
                    "superblock records an impossible transition {t:?}"
                )));
            }
            Some(t)
        } else {
            None
        };
        // The fixed area's size is the label's; the superblock's own block
        // count covers the extents, so the list is checked against the
        // space before the first extent (its start is checked at open).
        let extents = match version >= SB_VERSION_EXTENTS {
            true => {
                let list = &b[EXTENTS..];
                let first = get_u64(list, 8);
                crate::meta::extent::decode(list, first).map_err(BlockFault::Malformed)?
            }
            false => Vec::new(),
        };
        let catalog_tree = version >= SB_VERSION_EXTENTS && features & FEATURE_CATALOG_TREE != 0;
        let (catalog_head, catalog_gen) = match catalog_tree {
            true => unpack_ptr(get_u64(b, 56)),
            false => (get_block(b, 56), 0),
        };
        if catalog_tree && catalog_head.index() > crate::meta::node::BLOCK_MASK {
            return Err(BlockFault::Malformed(
                "superblock catalog root beyond any metadata area".into(),
            ));
        }
        let log_dir = match version >= SB_VERSION_LOG && features & FEATURE_LOG != 0 {
            true => get_block(b, LOG_DIR),
            false => Block::NONE,
        };
        if log_dir.index() > crate::meta::node::BLOCK_MASK {
            return Err(BlockFault::Malformed(
                "superblock flush-log directory beyond any metadata area".into(),
            ));
        }
        Ok(Superblock {
            txid: get_u64(b, 16),
            pool_uuid,
            volumes_root,
            dsm_root,
            catalog_head,
            catalog_bytes: get_u64(b, 64),
            data_chunks: get_u64(b, 72),
            used_chunks: get_u64(b, 80),
            meta_blocks: get_u64(b, 88),
            used_meta_blocks: get_u64(b, 96),
            next_volume_id: get_u64(b, 104),
            chunk_size: get_u64(b, 112),
            time: get_u64(b, 120),
            msm_pages,
            member_states: b[STATES..STATES + members].to_vec(),
            selector: b[SELECTOR..SELECTOR + sel_len].to_vec(),
            transition,
            csum: has_csum.then(|| SbCsum {
                root: csum_root,
                intent_block: get_block(b, INTENT_BLOCK),
            }),
            root_gens: [volumes_gen, dsm_gen, csum_gen],
            no_autogrow: features & FEATURE_NO_AUTOGROW != 0,
            replacing: features & FEATURE_REPLACING != 0,
            catalog_tree,
            catalog_gen,
            extents,
            log_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_roundtrip() {
        let mut sb = Superblock {
            txid: 7,
            pool_uuid: [9; 16],
            volumes_root: Block(3),
            dsm_root: Block(4),
            catalog_head: Block(5),
            catalog_bytes: 100,
            data_chunks: 1000,
            used_chunks: 10,
            meta_blocks: 2048,
            used_meta_blocks: 12,
            next_volume_id: 2,
            chunk_size: 65536,
            time: 1,
            msm_pages: 3,
            member_states: vec![0, 1, 0],
            selector: vec![0],
            transition: None,
            csum: None,
            root_gens: [5, 0, 0],
            extents: Vec::new(),
            no_autogrow: false,
            catalog_tree: false,
            catalog_gen: 0,
            log_dir: Block::NONE,
            replacing: false,
        };
        sb.set_selector_bit(2, 1);
        let b = sb.encode();
        let d = Superblock::decode(&b).unwrap();
        assert_eq!(d, sb);
        // A member replaced in service: a feature bit, same version.
        let mut r = sb.clone();
        r.replacing = true;
        let rb = r.encode();
        assert_eq!(get_u32(&rb, 8), get_u32(&b, 8));
        assert_eq!(
            get_u32(&rb, FEATURES) & FEATURE_REPLACING,
            FEATURE_REPLACING
        );
        assert_eq!(Superblock::decode(&rb).unwrap(), r);
        // With metadata extents: version 6, the list block at the end.
        let mut x = sb.clone();
        x.extents = vec![crate::meta::extent::MetaExtent {
            first_block: Block(2016),
            blocks: 100,
            copies: vec![1 << 20, 2 << 20],
        }];
        let xb = x.encode();
        assert_eq!(get_u32(&xb, 8), SB_VERSION_EXTENTS);
        assert_eq!(get_u32(&xb, EXTENTS), 1);
        assert_eq!(Superblock::decode(&xb).unwrap(), x);
        // The catalog as a tree: version 6 without extents, a tagged root.
        let mut t = sb.clone();
        t.catalog_tree = true;
        t.catalog_head = Block(99);
        t.catalog_gen = 12;
        let tb = t.encode();
        assert_eq!(get_u32(&tb, 8), SB_VERSION_EXTENTS);
        assert_eq!(get_u64(&tb, 56), pack_ptr(Block(99), 12));
        assert_eq!(Superblock::decode(&tb).unwrap(), t);
        // A flush log: version 12, its directory before the extent list;
        // versions 7 to 11 (written before the data journal, pairs, runs,
        // partial parities and tagged intents) read the same.
        let mut l = x.clone();
        l.log_dir = Block(77);
        let mut lb = l.encode();
        assert_eq!(get_u32(&lb, 8), SB_VERSION_HEADS);
        assert_eq!(Superblock::decode(&lb).unwrap(), l);
        for older in [SB_VERSION_PARITY, SB_VERSION_RUNS, SB_VERSION_PAIRS] {
            put_u32(&mut lb, 8, older);
            seal(&mut lb, salt::SUPERBLOCK);
            assert_eq!(Superblock::decode(&lb).unwrap(), l);
        }
        put_u32(&mut lb, 8, SB_VERSION_HEADS + 1);
        seal(&mut lb, salt::SUPERBLOCK);
        assert!(
            Superblock::decode(&lb).is_err(),
            "a newer version is refused"
        );
        put_u32(&mut lb, 8, SB_VERSION_JOURNAL);
        seal(&mut lb, salt::SUPERBLOCK);
        assert_eq!(Superblock::decode(&lb).unwrap(), l);
        put_u32(&mut lb, 8, SB_VERSION_LOG);
        seal(&mut lb, salt::SUPERBLOCK);
        assert_eq!(get_u64(&lb, LOG_DIR), 77);
        assert_eq!(get_u32(&lb, FEATURES) & FEATURE_LOG, FEATURE_LOG);
        assert_eq!(Superblock::decode(&lb).unwrap(), l);
        // A restripe's second copy of its first rows: the word after the
        // log directory, only with a log (without one it is not kept).
        l.transition = Some(SbTransition {
            kind: TRANSITION_RESTRIPE,
            old_members: 2,
            removed: 0,
            pos: 0,
            phase: PHASE_BACKUP,
            backup_offset: 1 << 20,
            backup_len: 96 << 10,
            backup_copy: 5 << 20,
        });
        let lb = l.encode();
        assert_eq!(get_u64(&lb, BACKUP_COPY), 5 << 20);
        assert_eq!(Superblock::decode(&lb).unwrap(), l);
        l.log_dir = Block::NONE;
        let lb = l.encode();
        let t = Superblock::decode(&lb).unwrap().transition;
        assert_eq!(t.map(|t| t.backup_copy), Some(0));
        assert_eq!(d.selector_bit(2), 1);
        assert_eq!(d.selector_bit(1), 0);
        assert_eq!(Superblock::slot_offset(4096, 7), 4096 + 4096);
        assert_eq!(get_u32(&b, 8), SB_VERSION_GEN);
        assert_eq!(
            unpack_ptr(get_u64(&b, 40)),
            (Block(3), 5),
            "the root carries its tag"
        );
        sb.transition = Some(SbTransition {
            kind: TRANSITION_RESTRIPE,
            old_members: 2,
            pos: 1 << 20,
            phase: PHASE_MAIN,
            removed: 0,
            backup_offset: 12288,
            backup_len: 8192,
            backup_copy: 0,
        });
        let b = sb.encode();
        assert_eq!(get_u32(&b, 8), SB_VERSION_GEN);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        // A shrink names the leaving member; it must be one of the members.
        sb.transition = Some(SbTransition {
            kind: TRANSITION_SHRINK,
            old_members: 3,
            removed: 1,
            pos: 0,
            phase: PHASE_EVACUATE,
            backup_offset: 0,
            backup_len: 0,
            backup_copy: 0,
        });
        let b = sb.encode();
        assert_eq!(get_u32(&b, TRANSITION + 20), 1);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        if let Some(t) = sb.transition.as_mut() {
            t.removed = 3;
        }
        let err = Superblock::decode(&sb.encode()).unwrap_err();
        assert!(err.to_string().contains("impossible transition"), "{err}");
        // A failed member needs version 3, with or without a transition.
        sb.transition = None;
        sb.member_states = vec![0, 2, 0];
        let b = sb.encode();
        assert_eq!(get_u32(&b, 8), SB_VERSION_GEN);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        sb.member_states = vec![3, 0, 0];
        sb.transition = Some(SbTransition {
            kind: TRANSITION_REBUILD,
            old_members: 3,
            removed: 0,
            pos: 1 << 20,
            phase: PHASE_MAIN,
            backup_offset: 0x0102_0304_0506_0708,
            backup_len: 9,
            backup_copy: 0,
        });
        let b = sb.encode();
        assert_eq!(get_u32(&b, 8), SB_VERSION_GEN);
        assert_eq!(get_u32(&b, TRANSITION), TRANSITION_REBUILD);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        // Data checksums: version 4, with or without a transition.
        sb.csum = Some(SbCsum {
            root: Block(77),
            intent_block: Block(5),
        });
        let b = sb.encode();
        assert_eq!(get_u32(&b, 8), SB_VERSION_GEN);
        assert_eq!(unpack_ptr(get_u64(&b, CSUM_ROOT)).0, Block(77));
        assert_eq!(get_u64(&b, INTENT_BLOCK), 5);
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        sb.transition = None;
        sb.member_states = vec![0, 0, 0];
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
        // A version-4 superblock (older pools): plain block numbers, no tags.
        let mut b = sb.encode();
        put_u32(&mut b, 8, SB_VERSION_CSUM);
        put_u32(&mut b, FEATURES, 0);
        put_u64(&mut b, 40, 3);
        put_u64(&mut b, CSUM_ROOT, 77);
        seal(&mut b, salt::SUPERBLOCK);
        let d = Superblock::decode(&b).unwrap();
        assert_eq!((d.volumes_root, d.root_gens), (Block(3), [0, 0, 0]));
        assert_eq!(d.csum.map(|c| c.root), Some(Block(77)));
        // A block number no pointer of version 5 can hold is refused, so
        // what decodes re-encodes to itself (the fuzz targets' rule).
        put_u64(&mut b, 40, 1 << 41);
        seal(&mut b, salt::SUPERBLOCK);
        assert!(Superblock::decode(&b).is_err());
        crate::thin::store::fuzzing::superblock(&b);
    }
}
