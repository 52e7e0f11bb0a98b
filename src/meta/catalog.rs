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

#[cfg(test)]
mod tests {
    use super::*;

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
