//! The member label: 4 KiB at the start of every member and again in its last
//! 4 KiB. It says which pool the member belongs to, its place in the array,
//! the RAID geometry and where the metadata and data areas are. A pool can be
//! assembled from labels alone.

use super::codec::*;
use crate::raid::RaidLevel;

pub const LABEL_MAGIC: &[u8; 8] = b"VPOOLMBR";
pub const LABEL_VERSION: u32 = 1;
pub const MAX_MEMBERS: usize = 64;
pub const MAX_NAME: usize = 63;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PoolState {
    Active = 1,
    Exported = 2,
    Destroyed = 3,
    /// A hot spare of the pool: not in the member table; takes a failed
    /// member's place automatically.
    Spare = 4,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEntry {
    pub uuid: [u8; 16],
    pub data_size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Label {
    pub pool_uuid: [u8; 16],
    pub member_uuid: [u8; 16],
    pub member_index: u32,
    pub level: RaidLevel,
    pub state: PoolState,
    pub stripe_unit: u64,
    pub chunk_size: u64,
    /// Device size when the label was written.
    pub device_size: u64,
    /// Start of the metadata area (superblock slots follow the label).
    pub meta_offset: u64,
    pub meta_blocks: u64,
    pub msm_pages: u32,
    /// Members 0..meta_copies hold the metadata area.
    pub meta_copies: u32,
    pub data_start: u64,
    pub created: u64,
    pub pool_name: String,
    pub members: Vec<MemberEntry>,
    /// Bumped each time the member table changes; on assembly the newest
    /// table wins (0 on pools that never changed their members).
    pub generation: u64,
}

const MAGIC: usize = 4;
const VERSION: usize = 12;
const POOL_UUID: usize = 16;
const MEMBER_UUID: usize = 32;
const MEMBER_INDEX: usize = 48;
const MEMBER_COUNT: usize = 52;
const LEVEL: usize = 56;
const STATE: usize = 60;
const STRIPE_UNIT: usize = 64;
const CHUNK_SIZE: usize = 72;
const DEVICE_SIZE: usize = 80;
const META_OFFSET: usize = 88;
const META_BLOCKS: usize = 96;
const MSM_PAGES: usize = 104;
const META_COPIES: usize = 108;
const DATA_START: usize = 112;
const CREATED: usize = 120;
const NAME: usize = 128; // 64 bytes, NUL padded
const GENERATION: usize = 192;
const TABLE: usize = 256; // MAX_MEMBERS x (uuid 16 + data_size 8)
const ENTRY: usize = 24;

impl Label {
    /// The data chunk size, for converting bytes and chunks.
    pub fn chunk(&self) -> crate::units::ChunkSize {
        crate::units::ChunkSize::new(self.chunk_size)
    }

    /// This pool's label as member `i` (of the member table) writes it, on
    /// a device of `device_size` bytes.
    pub fn for_member(&self, i: usize, device_size: u64) -> Label {
        let mut l = self.clone();
        l.member_index = i as u32;
        l.member_uuid = l.members[i].uuid;
        l.device_size = device_size;
        l
    }

    /// Offset of the second copy on a device of `size` bytes.
    pub fn backup_offset(size: u64) -> u64 {
        (size / BLOCK_SIZE as u64 - 1) * BLOCK_SIZE as u64
    }

    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    pub fn data_size(&self) -> u64 {
        self.members[self.member_index as usize].data_size
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        b[MAGIC..MAGIC + 8].copy_from_slice(LABEL_MAGIC);
        put_u32(&mut b, VERSION, LABEL_VERSION);
        b[POOL_UUID..POOL_UUID + 16].copy_from_slice(&self.pool_uuid);
        b[MEMBER_UUID..MEMBER_UUID + 16].copy_from_slice(&self.member_uuid);
        put_u32(&mut b, MEMBER_INDEX, self.member_index);
        put_u32(&mut b, MEMBER_COUNT, self.members.len() as u32);
        put_u32(&mut b, LEVEL, self.level.code());
        put_u32(&mut b, STATE, self.state as u32);
        put_u64(&mut b, STRIPE_UNIT, self.stripe_unit);
        put_u64(&mut b, CHUNK_SIZE, self.chunk_size);
        put_u64(&mut b, DEVICE_SIZE, self.device_size);
        put_u64(&mut b, META_OFFSET, self.meta_offset);
        put_u64(&mut b, META_BLOCKS, self.meta_blocks);
        put_u32(&mut b, MSM_PAGES, self.msm_pages);
        put_u32(&mut b, META_COPIES, self.meta_copies);
        put_u64(&mut b, DATA_START, self.data_start);
        put_u64(&mut b, CREATED, self.created);
        put_u64(&mut b, GENERATION, self.generation);
        let name = self.pool_name.as_bytes();
        let n = name.len().min(MAX_NAME);
        b[NAME..NAME + n].copy_from_slice(&name[..n]);
        for (i, m) in self.members.iter().enumerate().take(MAX_MEMBERS) {
            let o = TABLE + i * ENTRY;
            b[o..o + 16].copy_from_slice(&m.uuid);
            put_u64(&mut b, o + 16, m.data_size);
        }
        seal(&mut b, salt::LABEL);
        b
    }

    /// Decode and validate. Never panics on arbitrary bytes.
    pub fn decode(b: &[u8]) -> Result<Label, String> {
        if b.len() < BLOCK_SIZE {
            return Err("label shorter than 4096 bytes".into());
        }
        let b = &b[..BLOCK_SIZE];
        if &b[MAGIC..MAGIC + 8] != LABEL_MAGIC {
            return Err("no vpool label (magic missing)".into());
        }
        if !verify(b, salt::LABEL) {
            return Err("label checksum mismatch".into());
        }
        let version = get_u32(b, VERSION);
        if version != LABEL_VERSION {
            return Err(format!(
                "label version {version} is not supported (this vpool reads {LABEL_VERSION})"
            ));
        }
        let count = get_u32(b, MEMBER_COUNT) as usize;
        if count == 0 || count > MAX_MEMBERS {
            return Err(format!("label says {count} members"));
        }
        let member_index = get_u32(b, MEMBER_INDEX);
        if member_index as usize >= count {
            return Err(format!("member index {member_index} out of {count}"));
        }
        let level = RaidLevel::from_code(get_u32(b, LEVEL)).ok_or("unknown RAID level code")?;
        let state = match get_u32(b, STATE) {
            1 => PoolState::Active,
            2 => PoolState::Exported,
            3 => PoolState::Destroyed,
            4 => PoolState::Spare,
            s => return Err(format!("unknown pool state {s}")),
        };
        let stripe_unit = get_u64(b, STRIPE_UNIT);
        let chunk_size = get_u64(b, CHUNK_SIZE);
        if stripe_unit == 0
            || !stripe_unit.is_multiple_of(4096)
            || chunk_size == 0
            || !chunk_size.is_multiple_of(4096)
        {
            return Err("label has an invalid stripe unit or chunk size".into());
        }
        let name_bytes = &b[NAME..NAME + 64];
        let end = name_bytes
            .iter()
            .position(|&c| c == 0)
            .ok_or("pool name in label is not terminated")?;
        let pool_name = String::from_utf8(name_bytes[..end].to_vec())
            .map_err(|_| "pool name in label is not UTF-8".to_string())?;
        let members = (0..count)
            .map(|i| {
                let o = TABLE + i * ENTRY;
                let mut uuid = [0u8; 16];
                uuid.copy_from_slice(&b[o..o + 16]);
                MemberEntry {
                    uuid,
                    data_size: get_u64(b, o + 16),
                }
            })
            .collect();
        let mut pool_uuid = [0u8; 16];
        pool_uuid.copy_from_slice(&b[POOL_UUID..POOL_UUID + 16]);
        let mut member_uuid = [0u8; 16];
        member_uuid.copy_from_slice(&b[MEMBER_UUID..MEMBER_UUID + 16]);
        let meta_copies = get_u32(b, META_COPIES);
        if meta_copies == 0 || meta_copies as usize > count {
            return Err(format!("label says {meta_copies} metadata copies"));
        }
        let l = Label {
            pool_uuid,
            member_uuid,
            member_index,
            level,
            state,
            stripe_unit,
            chunk_size,
            device_size: get_u64(b, DEVICE_SIZE),
            meta_offset: get_u64(b, META_OFFSET),
            meta_blocks: get_u64(b, META_BLOCKS),
            msm_pages: get_u32(b, MSM_PAGES),
            meta_copies,
            data_start: get_u64(b, DATA_START),
            created: get_u64(b, CREATED),
            pool_name,
            members,
            generation: get_u64(b, GENERATION),
        };
        l.check_geometry()?;
        Ok(l)
    }

    /// Reject geometry no vpool writes, before anything computes with it.
    fn check_geometry(&self) -> Result<(), String> {
        let su = self.stripe_unit;
        if !su.is_power_of_two() || !(4096..=1 << 30).contains(&su) {
            return Err(format!(
                "label stripe unit {su} is not a power of two between 4K and 1G"
            ));
        }
        let n = self.members.len();
        if n < self.level.min_members() {
            return Err(format!(
                "label says {n} members, fewer than {} needs",
                self.level
            ));
        }
        let data_members = match self.level {
            RaidLevel::Linear | RaidLevel::Raid1 => 1,
            RaidLevel::Raid0 => n as u64,
            RaidLevel::Raid5 => n as u64 - 1,
        };
        // The chunk is one full stripe at creation; adding members widens
        // the stripe, the chunk stays. Removing a raid0 member narrows the
        // stripe under it (harmless without parity).
        let widest = match self.level {
            RaidLevel::Raid0 => su * MAX_MEMBERS as u64,
            _ => su * data_members,
        };
        if !self.chunk_size.is_multiple_of(su) || self.chunk_size > widest {
            return Err(format!(
                "label chunk size {} does not match the geometry",
                self.chunk_size
            ));
        }
        let max_blocks = (super::spacemap::MAX_PAGES * super::spacemap::ENTRIES_PER_PAGE) as u64;
        if self.meta_offset != BLOCK_SIZE as u64
            || self.meta_blocks == 0
            || self.meta_blocks > max_blocks
            || self.msm_pages != super::spacemap::pages_for(self.meta_blocks)
        {
            return Err("label describes an impossible metadata area".into());
        }
        let meta_end = self.meta_offset
            + (2 + 2 * self.msm_pages as u64 + self.meta_blocks) * BLOCK_SIZE as u64;
        if self.data_start < meta_end
            || !self.data_start.is_multiple_of(BLOCK_SIZE as u64)
            || self.data_start > 1 << 60
        {
            return Err("label data area overlaps the metadata area".into());
        }
        if self
            .members
            .iter()
            .any(|m| m.data_size % su != 0 || m.data_size > 1 << 60)
        {
            return Err("label member data size is not whole stripe units".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample() -> Label {
        Label {
            pool_uuid: [1; 16],
            member_uuid: [2; 16],
            member_index: 1,
            level: RaidLevel::Raid5,
            state: PoolState::Active,
            stripe_unit: 65536,
            chunk_size: 131072,
            device_size: 1 << 30,
            meta_offset: 4096,
            meta_blocks: 4096,
            msm_pages: 5,
            meta_copies: 3,
            data_start: 1 << 25,
            created: 1_700_000_000,
            pool_name: "tank".into(),
            members: vec![
                MemberEntry {
                    uuid: [3; 16],
                    data_size: 1 << 29
                };
                3
            ],
            generation: 0,
        }
    }

    #[test]
    fn label_roundtrip_and_corruption_detected() {
        let l = sample();
        let mut b = l.encode();
        assert_eq!(Label::decode(&b).unwrap(), l);
        b[300] ^= 1;
        assert!(Label::decode(&b).unwrap_err().contains("checksum"));
    }

    #[test]
    fn label_golden_prefix() {
        let b = sample().encode();
        assert_eq!(&b[4..12], b"VPOOLMBR");
        assert_eq!(get_u32(&b, 12), 1);
        assert_eq!(get_u32(&b, 56), 5);
        assert_eq!(get_u64(&b, 64), 65536);
        assert_eq!(&b[128..132], b"tank");
    }
}
