//! RAID geometry: which member and member offset hold an array offset.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RaidLevel {
    Linear,
    Raid0,
    Raid1,
    Raid5,
}

impl RaidLevel {
    pub fn code(self) -> u32 {
        match self {
            RaidLevel::Linear => 1,
            RaidLevel::Raid0 => 2,
            RaidLevel::Raid1 => 3,
            RaidLevel::Raid5 => 5,
        }
    }

    pub fn from_code(c: u32) -> Option<RaidLevel> {
        Some(match c {
            1 => RaidLevel::Linear,
            2 => RaidLevel::Raid0,
            3 => RaidLevel::Raid1,
            5 => RaidLevel::Raid5,
            _ => return None,
        })
    }

    /// Fewest members the level accepts.
    pub fn min_members(self) -> usize {
        match self {
            RaidLevel::Linear => 1,
            RaidLevel::Raid0 | RaidLevel::Raid1 => 2,
            RaidLevel::Raid5 => 3,
        }
    }

    /// How many members may be missing with no data lost.
    pub fn tolerated_failures(self, members: usize) -> usize {
        match self {
            RaidLevel::Linear | RaidLevel::Raid0 => 0,
            RaidLevel::Raid1 => members.saturating_sub(1),
            RaidLevel::Raid5 => 1,
        }
    }
}

impl fmt::Display for RaidLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RaidLevel::Linear => "linear",
            RaidLevel::Raid0 => "raid0",
            RaidLevel::Raid1 => "raid1",
            RaidLevel::Raid5 => "raid5",
        })
    }
}

impl FromStr for RaidLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "linear" => RaidLevel::Linear,
            "raid0" | "stripe" => RaidLevel::Raid0,
            "raid1" | "mirror" => RaidLevel::Raid1,
            "raid5" => RaidLevel::Raid5,
            _ => {
                return Err(format!(
                    "unknown RAID level '{s}' (use linear, raid0, raid1 or raid5)"
                ))
            }
        })
    }
}

/// Shape of an array. Every member keeps its data area at `data_start`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub level: RaidLevel,
    /// Bytes per member per stripe (the md "chunk").
    pub stripe_unit: u64,
    /// Start of the data area on every member.
    pub data_start: u64,
    /// Usable data bytes on each member (a multiple of `stripe_unit`).
    pub member_data: Vec<u64>,
}

/// One contiguous piece of an I/O on one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub member: usize,
    /// Byte offset on the member device.
    pub offset: u64,
    pub len: u64,
    /// Offset of this piece within the caller's buffer.
    pub buf_offset: u64,
}

impl Geometry {
    pub fn members(&self) -> usize {
        self.member_data.len()
    }

    fn min_member(&self) -> u64 {
        self.member_data.iter().copied().min().unwrap_or(0)
    }

    /// Members holding data in one stripe.
    pub fn data_members(&self) -> u64 {
        match self.level {
            RaidLevel::Linear | RaidLevel::Raid1 => 1,
            RaidLevel::Raid0 => self.members() as u64,
            RaidLevel::Raid5 => self.members() as u64 - 1,
        }
    }

    /// Data bytes in one full stripe: the natural allocation unit.
    pub fn stripe_width(&self) -> u64 {
        self.stripe_unit * self.data_members()
    }

    /// Usable array bytes.
    pub fn capacity(&self) -> u64 {
        match self.level {
            RaidLevel::Linear => self.member_data.iter().sum(),
            RaidLevel::Raid1 => self.min_member(),
            RaidLevel::Raid0 | RaidLevel::Raid5 => {
                (self.min_member() / self.stripe_unit) * self.stripe_width()
            }
        }
    }

    /// Parity member of stripe `s` (md left-symmetric).
    pub fn parity_member(&self, stripe: u64) -> usize {
        let n = self.members() as u64;
        ((n - 1) - (stripe % n)) as usize
    }

    /// Member holding data unit `d` of stripe `s` (left-symmetric: data
    /// follows the parity member, wrapping around).
    pub fn data_member(&self, stripe: u64, d: u64) -> usize {
        let n = self.members() as u64;
        ((self.parity_member(stripe) as u64 + 1 + d) % n) as usize
    }

    /// Split `[offset, offset+len)` of the array into per-member pieces,
    /// for levels with one copy of each byte (linear, raid0, raid5 data).
    /// For raid1 the member is 0; the caller picks the mirror.
    pub fn map(&self, offset: u64, len: u64) -> Vec<Extent> {
        let mut out = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let (member, moff, room) = self.locate(pos);
            let n = room.min(end - pos);
            out.push(Extent {
                member,
                offset: moff,
                len: n,
                buf_offset: pos - offset,
            });
            pos += n;
        }
        out
    }

    /// (member, member offset, bytes until the next unit boundary).
    fn locate(&self, pos: u64) -> (usize, u64, u64) {
        let su = self.stripe_unit;
        match self.level {
            RaidLevel::Linear => {
                let mut base = 0;
                for (m, size) in self.member_data.iter().enumerate() {
                    if pos < base + size {
                        let within = pos - base;
                        return (m, self.data_start + within, size - within);
                    }
                    base += size;
                }
                (self.members() - 1, self.data_start, 0)
            }
            RaidLevel::Raid1 => (0, self.data_start + pos, self.min_member() - pos),
            RaidLevel::Raid0 | RaidLevel::Raid5 => {
                let width = self.stripe_width();
                let stripe = pos / width;
                let within = pos % width;
                let unit = within / su;
                let member = if self.level == RaidLevel::Raid0 {
                    unit as usize
                } else {
                    self.data_member(stripe, unit)
                };
                let moff = self.data_start + stripe * su + within % su;
                (member, moff, su - within % su)
            }
        }
    }
}

/// `n` members of 1 MiB of data each from 1 MiB on, 4 KiB stripe units
/// (tests' layouts).
#[cfg(test)]
pub(crate) fn small(level: RaidLevel, n: usize) -> Geometry {
    Geometry {
        level,
        stripe_unit: 4096,
        data_start: 1 << 20,
        member_data: vec![1 << 20; n],
    }
}

#[cfg(test)]
mod tests {
    use super::small as geo;
    use super::*;

    #[test]
    fn raid5_left_symmetric_layout_matches_md() {
        let g = geo(RaidLevel::Raid5, 4);
        // md left-symmetric, 4 disks: stripe 0 parity on disk 3, data D0 on disk 0.
        assert_eq!(g.parity_member(0), 3);
        assert_eq!(g.data_member(0, 0), 0);
        assert_eq!(g.parity_member(1), 2);
        assert_eq!(g.data_member(1, 0), 3);
        assert_eq!(g.data_member(1, 1), 0);
        assert_eq!(g.parity_member(3), 0);
        assert_eq!(g.data_member(3, 0), 1);
        assert_eq!(g.capacity(), 256 * 4096 * 3);
    }

    #[test]
    fn raid0_and_linear_map_cover_request() {
        let g = geo(RaidLevel::Raid0, 3);
        let ex = g.map(4096 * 2 + 100, 8192);
        assert_eq!(ex.len(), 3);
        assert_eq!(ex[0].member, 2);
        assert_eq!(ex[1].member, 0);
        assert_eq!(ex[1].offset, (1 << 20) + 4096);
        assert_eq!(ex.iter().map(|e| e.len).sum::<u64>(), 8192);
        let l = Geometry {
            level: RaidLevel::Linear,
            member_data: vec![8192, 4096],
            ..g
        };
        let ex = l.map(4096, 8192);
        assert_eq!(ex.len(), 2);
        assert_eq!((ex[1].member, ex[1].offset), (1, 1 << 20));
    }
}
