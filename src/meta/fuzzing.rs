//! Entry points shared by the `fuzz/` targets and the decoder robustness
//! tests: each takes arbitrary bytes, must never panic, and must never accept
//! bytes that do not re-encode to themselves. The generic blocks (labels,
//! tree nodes) are here; the thin schema's (superblock, catalog) are in
//! `thin::store::fuzzing`.

use super::codec::{salt, seal, BLOCK_SIZE};
use super::header::{BlockKind, Header};
use super::label::Label;
use super::node::Node;

fn block(data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK_SIZE];
    let n = data.len().min(BLOCK_SIZE);
    b[..n].copy_from_slice(&data[..n]);
    b
}

/// The bytes as given, and with a valid checksum so that decoding gets past
/// the CRC to the field checks.
pub fn both(data: &[u8], s: u32) -> [Vec<u8>; 2] {
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

pub fn node(data: &[u8]) {
    let [_, b] = both(data, salt::NODE);
    let h = Header::read(&b);
    if Header::validate(&b, BlockKind::Node, h.blocknr, h.pool_tag, u64::MAX).is_ok() {
        if let Ok(n) = Node::decode(&b) {
            let again = Node::decode(&n.encode(crate::units::Block(h.blocknr), h.txid, h.pool_tag))
                .expect("re-encodes");
            assert_eq!(again, n);
        }
    }
    // Structure checks alone, without the checksum, must not panic either.
    let _ = Node::decode(&b);
}
