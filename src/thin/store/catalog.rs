//! The catalog: names and properties of volumes and snapshots. A variable
//! record, serialized with bincode 1.3 inside a versioned, checksummed
//! envelope, stored in a chain of catalog blocks. Rewritten (copy-on-write)
//! only by operations that change names or sizes, never by data writes.

use bincode::Options;
use serde::{Deserialize, Serialize};

/// bincode 1.3's legacy encoding (fixed-width LE integers), with a size limit
/// on decode so a damaged length cannot make us allocate without bound.
fn bincode_options() -> impl Options {
    bincode::options()
        .with_fixint_encoding()
        .allow_trailing_bytes()
}

pub const ENVELOPE_MAGIC: u32 = 0x5441_4356; // "VCAT"
pub const CATALOG_VERSION: u32 = 1;
pub const ENVELOPE_HEADER: usize = 20;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct VolumeRecord {
    pub id: u64,
    /// Volume name; for a snapshot, the snapshot's own name (after `@`).
    pub name: String,
    /// For a snapshot: the id of the volume it was taken of.
    pub snapshot_of: Option<u64>,
    /// For a clone: "vol@snap" it was cloned from (informational).
    pub cloned_from: Option<String>,
    pub size: u64,
    pub created: u64,
    pub uuid: [u8; 16],
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Catalog {
    pub pool_name: String,
    pub volumes: Vec<VolumeRecord>,
}

impl Catalog {
    /// Index of the record with `id`: records are kept in id order (new
    /// ids are the largest, a tree reads back in key order), so a binary
    /// search finds it; a linear scan backs it up.
    fn index_of(&self, id: u64) -> Option<usize> {
        match self.volumes.binary_search_by_key(&id, |r| r.id) {
            Ok(i) => Some(i),
            Err(_) => self.volumes.iter().position(|r| r.id == id),
        }
    }

    /// The record with `id` (the data path checks sizes with it on every
    /// request: it must not grow with the number of snapshots).
    pub fn by_id(&self, id: u64) -> Option<&VolumeRecord> {
        self.index_of(id).map(|i| &self.volumes[i])
    }

    /// What users call the volume or snapshot `id`: `pool/volume` or
    /// `pool/volume@snapshot` (`volume id N` if the catalog has no such id).
    pub fn display_name(&self, id: u64) -> String {
        let Some(r) = self.by_id(id) else {
            return format!("volume id {id}");
        };
        match r.snapshot_of.and_then(|p| self.by_id(p)) {
            Some(v) => format!("{}/{}@{}", self.pool_name, v.name, r.name),
            None => format!("{}/{}", self.pool_name, r.name),
        }
    }

    pub fn by_id_mut(&mut self, id: u64) -> Option<&mut VolumeRecord> {
        self.index_of(id).map(|i| &mut self.volumes[i])
    }

    /// Envelope: magic u32, version u32, payload length u64, CRC32 of the
    /// payload u32 (all LE), then the bincode payload.
    pub fn encode(&self) -> Vec<u8> {
        let payload = bincode_options().serialize(self).unwrap_or_default();
        let mut out = Vec::with_capacity(ENVELOPE_HEADER + payload.len());
        out.extend_from_slice(&ENVELOPE_MAGIC.to_le_bytes());
        out.extend_from_slice(&CATALOG_VERSION.to_le_bytes());
        out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        out.extend_from_slice(&payload);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Catalog, String> {
        if b.len() < ENVELOPE_HEADER {
            return Err("catalog envelope truncated".into());
        }
        let word = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if word(0) != ENVELOPE_MAGIC {
            return Err("catalog envelope magic missing".into());
        }
        if word(4) != CATALOG_VERSION {
            return Err(format!("catalog version {} is not supported", word(4)));
        }
        let mut l = [0u8; 8];
        l.copy_from_slice(&b[8..16]);
        let len = u64::from_le_bytes(l);
        if len > (b.len() - ENVELOPE_HEADER) as u64 {
            return Err("catalog payload truncated".into());
        }
        let len = len as usize;
        let payload = &b[ENVELOPE_HEADER..ENVELOPE_HEADER + len];
        if crc32fast::hash(payload) != word(16) {
            return Err("catalog checksum mismatch".into());
        }
        bincode_options()
            .with_limit(len as u64)
            .deserialize(payload)
            .map_err(|e| format!("catalog record: {e}"))
    }
}

/// Bytes of one record in the catalog tree (superblock version 6 with
/// feature bit 2): a fixed, field-by-field layout, so a snapshot changes
/// one leaf of the tree instead of a serialized whole catalog.
pub const RECORD_BYTES: usize = 256;
const NAME_MAX: usize = 63;
const CLONED_MAX: usize = 140;

impl VolumeRecord {
    /// The record's tree value (see docs/FORMAT.md, "Catalog tree").
    pub fn encode_fixed(&self) -> Result<[u8; RECORD_BYTES], String> {
        let mut b = [0u8; RECORD_BYTES];
        if self.name.is_empty() || self.name.len() > NAME_MAX {
            return Err(format!(
                "volume name '{}' does not fit a catalog record",
                self.name
            ));
        }
        b[0..8].copy_from_slice(&self.id.to_le_bytes());
        b[8..16].copy_from_slice(&self.snapshot_of.unwrap_or(0).to_le_bytes());
        b[16..24].copy_from_slice(&self.size.to_le_bytes());
        b[24..32].copy_from_slice(&self.created.to_le_bytes());
        b[32..48].copy_from_slice(&self.uuid);
        b[48] = self.name.len() as u8;
        b[49..49 + self.name.len()].copy_from_slice(self.name.as_bytes());
        if let Some(c) = &self.cloned_from {
            if c.len() > CLONED_MAX {
                return Err(format!("clone origin '{c}' does not fit a catalog record"));
            }
            b[112] = 1;
            b[113] = c.len() as u8;
            b[114..114 + c.len()].copy_from_slice(c.as_bytes());
        }
        Ok(b)
    }

    pub fn decode_fixed(b: &[u8]) -> Result<VolumeRecord, String> {
        if b.len() != RECORD_BYTES {
            return Err(format!("catalog record of {} bytes", b.len()));
        }
        let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let text = |at: usize, len: usize, max: usize| -> Result<String, String> {
            if len > max {
                return Err(format!(
                    "catalog record text of {len} bytes (at most {max})"
                ));
            }
            String::from_utf8(b[at..at + len].to_vec())
                .map_err(|_| "catalog record text is not UTF-8".to_string())
        };
        if b[48] == 0 {
            return Err("catalog record without a name".into());
        }
        let name = text(49, b[48] as usize, NAME_MAX)?;
        let cloned_from = match b[112] {
            0 => None,
            1 => Some(text(114, b[113] as usize, CLONED_MAX)?),
            x => return Err(format!("catalog record clone flag {x}")),
        };
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[32..48]);
        Ok(VolumeRecord {
            id: u(0),
            name,
            snapshot_of: Some(u(8)).filter(|&v| v != 0),
            cloned_from,
            size: u(16),
            created: u(24),
            uuid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_found_by_id_in_order_or_not() {
        let rec = |id: u64| VolumeRecord {
            id,
            name: format!("v{id}"),
            snapshot_of: None,
            cloned_from: None,
            size: id * 10,
            created: 0,
            uuid: [0; 16],
        };
        let mut c = Catalog {
            pool_name: "p".into(),
            volumes: [1, 3, 5, 9].map(rec).to_vec(),
        };
        assert_eq!(c.by_id(5).map(|r| r.size), Some(50));
        assert!(c.by_id(4).is_none());
        // Out of order (never written so, but found all the same).
        c.volumes.swap(0, 3);
        for id in [1, 3, 5, 9] {
            assert_eq!(c.by_id(id).map(|r| r.id), Some(id));
        }
        if let Some(r) = c.by_id_mut(3) {
            r.size = 7;
        }
        assert_eq!(c.by_id(3).map(|r| r.size), Some(7));
    }

    #[test]
    fn display_names_are_what_users_type() {
        let rec = |id: u64, name: &str, snapshot_of| VolumeRecord {
            id,
            name: name.into(),
            snapshot_of,
            cloned_from: None,
            size: 0,
            created: 0,
            uuid: [0; 16],
        };
        let c = Catalog {
            pool_name: "tank".into(),
            volumes: vec![rec(1, "db", None), rec(2, "nightly", Some(1))],
        };
        assert_eq!(c.display_name(1), "tank/db");
        assert_eq!(c.display_name(2), "tank/db@nightly");
        assert_eq!(c.display_name(7), "volume id 7");
    }

    #[test]
    fn fixed_records_round_trip_and_refuse_garbage() {
        let r = VolumeRecord {
            id: 42,
            name: "db".into(),
            snapshot_of: Some(7),
            cloned_from: Some("a@b".into()),
            size: 1 << 30,
            created: 5,
            uuid: [3; 16],
        };
        let b = r.encode_fixed().unwrap();
        assert_eq!(VolumeRecord::decode_fixed(&b).unwrap(), r);
        let plain = VolumeRecord {
            snapshot_of: None,
            cloned_from: None,
            ..r.clone()
        };
        assert_eq!(
            VolumeRecord::decode_fixed(&plain.encode_fixed().unwrap()).unwrap(),
            plain
        );
        let mut bad = b;
        bad[48] = 200;
        assert!(VolumeRecord::decode_fixed(&bad).is_err());
        let mut bad = b;
        bad[48] = 0;
        assert!(VolumeRecord::decode_fixed(&bad).is_err());
        let mut bad = b;
        bad[112] = 9;
        assert!(VolumeRecord::decode_fixed(&bad).is_err());
        let mut bad = b;
        bad[49] = 0xff;
        assert!(VolumeRecord::decode_fixed(&bad).is_err());
        assert!(VolumeRecord {
            name: "x".repeat(64),
            ..r
        }
        .encode_fixed()
        .is_err());
    }

    /// Locks the on-disk encoding: bincode 1.3 with its default (fixed-int,
    /// little-endian) options. If this changes, the format version must.
    #[test]
    fn catalog_golden_bytes() {
        let c = Catalog {
            pool_name: "tank".into(),
            volumes: vec![VolumeRecord {
                id: 1,
                name: "db".into(),
                snapshot_of: None,
                cloned_from: Some("a@b".into()),
                size: 4096,
                created: 2,
                uuid: [7; 16],
            }],
        };
        let b = c.encode();
        let expected_payload: Vec<u8> = [
            &4u64.to_le_bytes()[..],
            b"tank",                 // pool_name
            &1u64.to_le_bytes()[..], // volumes.len
            &1u64.to_le_bytes()[..], // id
            &2u64.to_le_bytes()[..],
            b"db",      // name
            &[0u8][..], // snapshot_of: None
            &[1u8][..],
            &3u64.to_le_bytes()[..],
            b"a@b",                     // cloned_from: Some
            &4096u64.to_le_bytes()[..], // size
            &2u64.to_le_bytes()[..],    // created
            &[7u8; 16][..],             // uuid
        ]
        .concat();
        assert_eq!(&b[ENVELOPE_HEADER..], &expected_payload[..]);
        assert_eq!(&b[0..4], b"VCAT");
        assert_eq!(Catalog::decode(&b).unwrap(), c);
        let mut bad = b.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(Catalog::decode(&bad).is_err());
    }
}
