//! Fuzz entry points for the thin schema's blocks (see `meta::fuzzing`):
//! the superblock and the catalog, each from arbitrary bytes, never
//! panicking and never accepting bytes that do not re-encode to themselves.

use super::catalog::Catalog;
use super::superblock::Superblock;
use crate::meta::codec::salt;
use crate::meta::fuzzing::both;

pub fn superblock(data: &[u8]) {
    for b in both(data, salt::SUPERBLOCK) {
        if let Ok(s) = Superblock::decode(&b) {
            let again = Superblock::decode(&s.encode()).expect("a decoded superblock re-encodes");
            assert_eq!(again, s);
        }
    }
}

pub fn catalog(data: &[u8]) {
    // As given, and as the payload of a well-formed envelope (so bincode
    // decoding of arbitrary bytes is exercised).
    let mut wrapped = Vec::with_capacity(data.len() + 20);
    wrapped.extend_from_slice(&0x5441_4356u32.to_le_bytes());
    wrapped.extend_from_slice(&1u32.to_le_bytes());
    wrapped.extend_from_slice(&(data.len() as u64).to_le_bytes());
    wrapped.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    wrapped.extend_from_slice(data);
    for b in [data, &wrapped[..]] {
        if let Ok(c) = Catalog::decode(b) {
            assert_eq!(Catalog::decode(&c.encode()).expect("re-encodes"), c);
        }
    }
    // A catalog-tree record: any 256 bytes decode or are refused, and a
    // decoded record encodes back to a record that decodes the same.
    let mut rec = [0u8; super::catalog::RECORD_BYTES];
    let n = data.len().min(rec.len());
    rec[..n].copy_from_slice(&data[..n]);
    if let Ok(r) = super::catalog::VolumeRecord::decode_fixed(&rec) {
        let again = r.encode_fixed().expect("a decoded record re-encodes");
        assert_eq!(
            super::catalog::VolumeRecord::decode_fixed(&again).expect("decodes"),
            r
        );
    }
}
