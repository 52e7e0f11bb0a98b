//! Where things go on a member, decided once at pool creation and recorded
//! in every label.

use crate::error::{Error, Result};
use crate::meta::codec::BLOCK_SIZE;
use crate::meta::spacemap::pages_for;
use crate::thin::store::log::LOG_BLOCKS;
use crate::thin::store::superblock::MAX_MSM_PAGES;
use crate::thin::store::MetaLayout;

pub const MIB: u64 = 1 << 20;
pub const DEFAULT_STRIPE_UNIT: u64 = 64 * 1024;
/// Smallest member accepted.
pub const MIN_MEMBER: u64 = 32 * MIB;
const MIN_META_BLOCKS: u64 = 1024;
/// The smallest metadata area a user may ask for (1 MiB).
const USER_MIN_META_BLOCKS: u64 = 256;
/// Blocks a default-sized area adds for the flush log: its directory and
/// the most blocks it may list (2 MiB), and 64 for what the pool's first
/// transaction holds when the log is made, so the log takes nothing from
/// the room planned for mappings and checksums.
const LOG_AREA: u64 = LOG_BLOCKS + 1 + 64;

#[derive(Clone, Debug)]
pub struct MemberLayout {
    pub meta: MetaLayout,
    pub data_start: u64,
}

/// Metadata bytes reserved per data chunk: a mapping entry costs 16 bytes
/// and a reference count 12, so this leaves room for each chunk to be mapped
/// by several diverged snapshots.
pub const META_BYTES_PER_CHUNK: u64 = 256;

/// Metadata bytes reserved per 64 KiB of data for its checksums: one tree
/// entry (8-byte key, 64 bytes of CRC32s), twice, so a transaction can
/// rewrite every checksum leaf while the committed ones stay intact.
pub const CSUM_META_BYTES_PER_GROUP: u64 = 2 * 72;

/// Size the metadata area for the smallest member of `member_size` bytes in
/// a pool of about `chunks` data chunks and `data_bytes` of data, with room
/// for the checksums of `chunk_size` chunks if `checksums` (4 MiB at least),
/// or `metadata_size` bytes when the user chose (1 MiB at least).
pub fn plan(
    member_size: u64,
    chunks: u64,
    data_bytes: u64,
    chunk_size: Option<u64>,
    metadata_size: Option<u64>,
) -> Result<MemberLayout> {
    if member_size < MIN_MEMBER {
        return Err(Error::Invalid(format!(
            "a member of {} is too small (at least {})",
            crate::units::size_exact(member_size),
            crate::units::format_size(MIN_MEMBER)
        )));
    }
    let max_blocks = (MAX_MSM_PAGES as u64) * crate::meta::spacemap::ENTRIES_PER_PAGE as u64;
    // One checksum entry per 64 KiB of each chunk (a smaller chunk has one).
    let csum_bytes = match chunk_size {
        Some(cs) => {
            let per_chunk = cs.div_ceil(crate::thin::store::csum::GROUP_BYTES);
            data_bytes / cs.max(1) * per_chunk * CSUM_META_BYTES_PER_GROUP
        }
        None => 0,
    };
    let meta_blocks = match metadata_size {
        Some(bytes) => {
            let blocks = bytes / BLOCK_SIZE as u64;
            if !(USER_MIN_META_BLOCKS..=max_blocks).contains(&blocks) {
                return Err(Error::Invalid(format!(
                    "--metadata-size must be between 1M and {}",
                    crate::units::format_size(max_blocks * BLOCK_SIZE as u64)
                )));
            }
            blocks
        }
        None => {
            ((chunks * META_BYTES_PER_CHUNK + csum_bytes) / BLOCK_SIZE as u64)
                .clamp(MIN_META_BLOCKS, max_blocks - LOG_AREA)
                + LOG_AREA
        }
    };
    let meta = MetaLayout {
        meta_offset: BLOCK_SIZE as u64,
        msm_pages: pages_for(meta_blocks),
        meta_blocks,
    };
    let data_start = (meta.meta_offset + meta.area_bytes()).div_ceil(MIB) * MIB;
    if data_start + MIB > member_size {
        return Err(Error::Invalid(format!(
            "a member of {} cannot hold {} of metadata and data; use larger members or a larger --stripe-unit",
            crate::units::size_exact(member_size),
            crate::units::format_size(data_start + MIB)
        )));
    }
    Ok(MemberLayout { meta, data_start })
}

/// Data bytes a member holds: from `data_start` to before the backup label,
/// rounded down to whole stripe units.
pub fn member_data(member_size: u64, data_start: u64, stripe_unit: u64) -> u64 {
    let end = (member_size / BLOCK_SIZE as u64 - 1) * BLOCK_SIZE as u64;
    (end.saturating_sub(data_start) / stripe_unit) * stripe_unit
}
