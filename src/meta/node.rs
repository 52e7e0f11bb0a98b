//! B-tree node: in-memory form and its explicit on-disk encoding.
//! Layout after the 64-byte header: `nr` keys (u64 LE), then either `nr`
//! child block numbers (u64 LE, internal nodes, level > 0) or `nr` values of
//! `value_size` bytes (leaves, level 0).

use super::codec::*;
use super::header::{BlockKind, Header, HEADER_SIZE};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub level: u8,
    pub owner: u64,
    pub value_size: usize,
    pub keys: Vec<u64>,
    /// Leaf values, `value_size` bytes each, flat.
    pub values: Vec<u8>,
    /// Internal children.
    pub children: Vec<u64>,
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
        }
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

    pub fn encode(&self, blocknr: u64, txid: u64, pool_tag: u64) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let h = Header {
            kind: BlockKind::Node as u16,
            blocknr,
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
            for c in &self.children {
                put_u64(&mut b, o, *c);
                o += 8;
            }
        }
        seal(&mut b, BlockKind::Node.salt());
        b
    }

    /// Decode a block already validated by [`Header::validate`]; checks the
    /// node's own structure (sizes, key order).
    pub fn decode(b: &[u8]) -> Result<Node, String> {
        if b.len() != BLOCK_SIZE {
            return Err("node is not 4096 bytes".into());
        }
        let h = Header::read(b);
        let nr = h.nr_entries as usize;
        let vs = h.value_size as usize;
        if vs == 0 || vs > 256 {
            return Err(format!("node value size {vs} out of range"));
        }
        if nr > max_entries(h.level, vs) {
            return Err(format!("node holds {nr} entries, more than fit"));
        }
        let mut keys = Vec::with_capacity(nr);
        let mut o = HEADER_SIZE;
        for _ in 0..nr {
            keys.push(get_u64(b, o));
            o += 8;
        }
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err("node keys out of order".into());
        }
        let mut node = Node::internal(h.owner, vs, h.level);
        node.keys = keys;
        if h.level == 0 {
            node.values = b[o..o + nr * vs].to_vec();
        } else {
            for _ in 0..nr {
                let c = get_u64(b, o);
                if c == 0 {
                    return Err("internal node points at block 0".into());
                }
                node.children.push(c);
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
        let b = n.encode(42, 7, 99);
        let h = Header::validate(&b, BlockKind::Node, 42, 99, 7).unwrap();
        assert_eq!(h.level, 0);
        assert_eq!(Node::decode(&b).unwrap(), n);
        assert!(Header::validate(&b, BlockKind::Node, 43, 99, 7).is_err());
        assert!(Header::validate(&b, BlockKind::Catalog, 42, 99, 7).is_err());
        assert_eq!(max_entries(0, 16), 168);
        assert_eq!(max_entries(1, 16), 252);
    }
}
