//! Entry points shared by the `fuzz/` targets and the decoder robustness
//! tests: each takes arbitrary bytes, must never panic, and must never accept
//! bytes that do not re-encode to themselves.

use super::catalog::Catalog;
use super::codec::{salt, seal, BLOCK_SIZE};
use super::header::{BlockKind, Header};
use super::label::Label;
use super::node::Node;
use super::superblock::Superblock;

fn block(data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    b
}

/// The bytes as given, and with a valid checksum so that decoding gets past
/// the CRC to the field checks.
fn both(data: &[u8], s: u32) -> [Vec<u8>; 2] {
    let b = block(data);
    let mut sealed = b.clone();
    seal(&mut sealed, s);
    [b, sealed]
}

pub fn label(data: &[u8]) {
    for b in both(data, salt::LABEL) {
        if let Ok(l) = Label::decode(&b) {
            let again = Label::decode(&l.encode()).expect("a decoded label re-encodes");
            assert_eq!(again, l);
        }
    }
}

pub fn superblock(data: &[u8]) {
    for b in both(data, salt::SUPERBLOCK) {
        if let Ok(s) = Superblock::decode(&b) {
            let again = Superblock::decode(&s.encode()).expect("a decoded superblock re-encodes");
            assert_eq!(again, s);
        }
    }
}

pub fn node(data: &[u8]) {
    let [_, b] = both(data, salt::NODE);
    let h = Header::read(&b);
    if Header::validate(&b, BlockKind::Node, h.blocknr, h.pool_tag, u64::MAX).is_ok() {
        if let Ok(n) = Node::decode(&b) {
            let again = Node::decode(&n.encode(h.blocknr, h.txid, h.pool_tag)).expect("re-encodes");
            assert_eq!(again, n);
        }
    }
    // Structure checks alone, without the checksum, must not panic either.
    let _ = Node::decode(&b);
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
    let mut rec = [0u8; crate::meta::catalog::RECORD_BYTES];
    let n = data.len().min(rec.len());
    rec[..n].copy_from_slice(&data[..n]);
    if let Ok(r) = crate::meta::catalog::VolumeRecord::decode_fixed(&rec) {
        let again = r.encode_fixed().expect("a decoded record re-encodes");
        assert_eq!(
            crate::meta::catalog::VolumeRecord::decode_fixed(&again).expect("decodes"),
            r
        );
    }
}
