//! B-tree node: in-memory form and its explicit on-disk encoding.
//! Layout after the 64-byte header: `nr` keys (u64 LE), then either `nr`
//! child pointers (u64 LE, internal nodes, level > 0) or `nr` values of
//! `value_size` bytes (leaves, level 0). A child pointer holds the block
//! number in its low 40 bits and the child's generation tag in its top 24
//! (see [`gen_tag`]): the transaction that wrote the child, so a reader
//! knows a stale child (an older version left by a lost write) when it
//! sees one, as btrfs does with its parent transid.

use super::codec::*;
use super::header::{BlockKind, Header, HEADER_SIZE};
use crate::error::BlockFault;
use crate::units::Block;

/// Bits of a block pointer that hold the block number.
pub const BLOCK_BITS: u32 = 40;
pub const BLOCK_MASK: u64 = (1 << BLOCK_BITS) - 1;
/// In memory only: the child was written in the running transaction (its
/// tag is known at the commit).
pub const GEN_NEW: u32 = u32::MAX;

/// The 24-bit generation tag of transaction `txid` (never 0, which means
/// "not recorded": pointers written before format version 5).
pub fn gen_tag(txid: u64) -> u32 {
    (txid % 0xFF_FFFF) as u32 + 1
}

/// A block pointer with its generation tag (0: none).
pub fn pack_ptr(block: Block, tag: u32) -> u64 {
    (block.index() & BLOCK_MASK) | ((tag as u64 & 0xFF_FFFF) << BLOCK_BITS)
}

/// (block, generation tag) of a packed pointer.
pub fn unpack_ptr(raw: u64) -> (Block, u32) {
    (Block(raw & BLOCK_MASK), (raw >> BLOCK_BITS) as u32)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub level: u8,
    pub owner: u64,
    pub value_size: usize,
    pub keys: Vec<u64>,
    /// Leaf values, `value_size` bytes each, flat.
    pub values: Vec<u8>,
    /// Internal children.
    pub children: Vec<Block>,
    /// Internal nodes: each child's generation tag (0 unknown, [`GEN_NEW`]
    /// written in the running transaction).
    pub gens: Vec<u32>,
    /// The transaction that wrote this node (read from its header; 0 for
    /// a node built in memory and not yet committed).
    pub txid: u64,
}

impl Node {
    pub fn leaf(owner: u64, value_size: usize) -> Node {
        Node {
            level: 0,
            owner,
            value_size,
            keys: vec![],
            values: vec![],
            children: vec![],
            gens: vec![],
            txid: 0,
        }
    }

    pub fn internal(owner: u64, value_size: usize, level: u8) -> Node {
        Node {
            level,
            owner,
            value_size,
            keys: vec![],
            values: vec![],
            children: vec![],
            gens: vec![],
            txid: 0,
        }
    }

    /// The node as committed by transaction `txid`: children written in it
    /// get its tag.
    pub fn resolved(&self, txid: u64) -> Node {
        let mut n = self.clone();
        for g in &mut n.gens {
            if *g == GEN_NEW {
                *g = gen_tag(txid);
            }
        }
        n.txid = txid;
        n
    }

    pub fn is_leaf(&self) -> bool {
        self.level == 0
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn value(&self, i: usize) -> &[u8] {
        &self.values[i * self.value_size..(i + 1) * self.value_size]
    }

    /// Most entries that fit in one block.
    pub fn capacity(&self) -> usize {
        max_entries(self.level, self.value_size)
    }

    pub fn encode(&self, at: Block, txid: u64, pool_tag: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let h = Header {
            kind: BlockKind::Node as u16,
            blocknr: at.index(),
            txid,
            pool_tag,
            owner: self.owner,
            level: self.level,
            nr_entries: self.keys.len() as u16,
            value_size: self.value_size as u16,
            low_key: self.keys.first().copied().unwrap_or(0),
            next: 0,
        };
        h.write(&mut b);
        let mut o = HEADER_SIZE;
        for k in &self.keys {
            put_u64(&mut b, o, *k);
            o += 8;
        }
        if self.is_leaf() {
            b[o..o + self.values.len()].copy_from_slice(&self.values);
        } else {
            for (i, c) in self.children.iter().enumerate() {
                let tag = match self.gens.get(i).copied().unwrap_or(0) {
                    GEN_NEW => gen_tag(txid),
                    g => g,
                };
                put_u64(&mut b, o, pack_ptr(*c, tag));
                o += 8;
            }
        }
        seal(&mut b, BlockKind::Node.salt());
        b
    }

    /// Decode a block already validated by [`Header::validate`]; checks the
    /// node's own structure (sizes, key order).
    pub fn decode(b: &[u8]) -> Result<Node, BlockFault> {
        if b.len() != BLOCK_SIZE {
            return Err(BlockFault::Size(b.len()));
        }
        let h = Header::read(b);
        let nr = h.nr_entries as usize;
        let vs = h.value_size as usize;
        if vs == 0 || vs > 256 {
            return Err(BlockFault::Malformed(format!(
                "node value size {vs} out of range"
            )));
        }
        if nr > max_entries(h.level, vs) {
            return Err(BlockFault::Malformed(format!(
                "node holds {nr} entries, more than fit"
            )));
        }
        let mut keys = Vec::with_capacity(nr);
        let mut o = HEADER_SIZE;
        for _ in 0..nr {
            keys.push(get_u64(b, o));
            o += 8;
        }
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err(BlockFault::Malformed("node keys out of order".into()));
        }
        let mut node = Node::internal(h.owner, vs, h.level);
        node.keys = keys;
        node.txid = h.txid;
        if h.level == 0 {
            node.values = b[o..o + nr * vs].to_vec();
        } else {
            for _ in 0..nr {
                let (c, tag) = unpack_ptr(get_u64(b, o));
                if c.is_none() {
                    return Err(BlockFault::Malformed(
                        "internal node points at block 0".into(),
                    ));
                }
                node.children.push(c);
                node.gens.push(tag);
                o += 8;
            }
        }
        Ok(node)
    }
}

pub fn max_entries(level: u8, value_size: usize) -> usize {
    let room = BLOCK_SIZE - HEADER_SIZE;
    if level == 0 {
        room / (8 + value_size)
    } else {
        room / 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_roundtrip() {
        let mut n = Node::leaf(5, 16);
        for k in 0..10u64 {
            n.keys.push(k * 3);
            n.values.extend_from_slice(&[k as u8; 16]);
        }
        let b = n.encode(Block(42), 7, 99);
        let h = Header::validate(&b, BlockKind::Node, 42, 99, 7).unwrap();
        assert_eq!(h.level, 0);
        assert_eq!(Node::decode(&b).unwrap(), n.resolved(7));
        // Child pointers carry their generation: new children get the
        // writer's, others keep theirs.
        let mut i = Node::internal(5, 16, 1);
        i.keys = vec![0, 100];
        i.children = vec![Block(3), Block((1 << 40) - 1)];
        i.gens = vec![GEN_NEW, gen_tag(2)];
        let d = Node::decode(&i.encode(Block(43), 9, 99)).unwrap();
        assert_eq!(d.children, i.children);
        assert_eq!(d.gens, vec![gen_tag(9), gen_tag(2)]);
        assert_eq!(d, i.resolved(9));
        assert!(Header::validate(&b, BlockKind::Node, 43, 99, 7).is_err());
        assert!(Header::validate(&b, BlockKind::Catalog, 42, 99, 7).is_err());
        assert_eq!(max_entries(0, 16), 168);
        assert_eq!(max_entries(1, 16), 252);
    }
}
