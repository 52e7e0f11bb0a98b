//! Unit tests of the B-tree against a model, over an in-memory node store
//! that enforces the copy-on-write rule (a block of a committed transaction
//! is never written again) and counts every reference.

use super::*;
use crate::error::{BlockFault, Error, Why};
use proptest::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

const SPEC: TreeSpec = TreeSpec {
    owner: 7,
    value_size: 8,
    values: ValueKind::DataChunk,
};

#[derive(Default)]
struct MemStore {
    nodes: HashMap<Block, Arc<Node>>,
    refs: HashMap<Block, u32>,
    new: HashSet<Block>,
    next: u64,
    txid: u64,
    /// Reference counts of the data chunks the values name.
    chunks: HashMap<u64, i64>,
}

impl MemStore {
    /// End the transaction: what it wrote becomes immutable.
    fn commit(&mut self) {
        self.txid += 1;
        for b in std::mem::take(&mut self.new) {
            if let Some(n) = self.nodes.get(&b) {
                let resolved = n.resolved(self.txid);
                self.nodes.insert(b, Arc::new(resolved));
            }
        }
    }

    fn chunk_refs(&self) -> HashMap<u64, i64> {
        self.chunks
            .iter()
            .filter(|(_, &n)| n != 0)
            .map(|(&k, &n)| (k, n))
            .collect()
    }
}

impl NodeStore for MemStore {
    fn read_node(&self, b: Block) -> Result<Arc<Node>> {
        self.nodes
            .get(&b)
            .cloned()
            .ok_or_else(|| Error::corrupt(format!("no block {b}")))
    }
    fn write_node(&mut self, b: Block, node: Node) {
        assert!(
            self.new.contains(&b),
            "block {b} of a committed transaction written in place"
        );
        self.nodes.insert(b, Arc::new(node));
    }
    fn is_new(&self, b: Block) -> bool {
        self.new.contains(&b)
    }
    fn alloc_block(&mut self) -> Result<Block> {
        self.next += 1;
        let b = Block(self.next);
        self.refs.insert(b, 1);
        self.new.insert(b);
        Ok(b)
    }
    fn refcount(&self, b: Block) -> u32 {
        self.refs.get(&b).copied().unwrap_or(0)
    }
    fn inc_block(&mut self, b: Block) {
        *self.refs.entry(b).or_default() += 1;
    }
    fn dec_block(&mut self, b: Block) {
        let r = self.refs.get_mut(&b).expect("a block with no references");
        *r -= 1;
        if *r == 0 {
            self.refs.remove(&b);
        }
    }
    fn inc_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()> {
        if spec.values == ValueKind::DataChunk {
            let c = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
            *self.chunks.entry(c).or_default() += 1;
        }
        Ok(())
    }
    fn dec_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()> {
        if spec.values == ValueKind::DataChunk {
            let c = u64::from_le_bytes(v[..8].try_into().unwrap_or_default());
            *self.chunks.entry(c).or_default() -= 1;
        }
        Ok(())
    }
}

fn val(k: u64) -> [u8; 8] {
    (k * 7 + 1).to_le_bytes()
}

/// Insert through the tree and count the chunk the value names, as the
/// thin layer does.
fn put(s: &mut MemStore, root: Block, k: u64) -> Block {
    let (root, old) = insert(s, &SPEC, root, k, &val(k)).unwrap();
    if old.is_none() {
        s.inc_value(&SPEC, &val(k)).unwrap();
    }
    root
}

fn del(s: &mut MemStore, root: Block, k: u64) -> Block {
    let (root, old) = remove(s, &SPEC, root, k).unwrap();
    if let Some(v) = old {
        s.dec_value(&SPEC, &v).unwrap();
    }
    root
}

fn entries(s: &MemStore, root: Block, lo: u64, hi: u64) -> Vec<u64> {
    let mut keys = Vec::new();
    walk(s, &SPEC, root, lo, hi, &mut |k, v, _| {
        assert_eq!(v, val(k), "value of {k}");
        keys.push(k);
        Ok(true)
    })
    .unwrap();
    keys
}

fn depth(s: &MemStore, root: Block) -> u8 {
    s.read_node(root).map(|n| n.level + 1).unwrap_or(0)
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u64),
    Remove(u64),
    RemoveRange(u64, u64),
    Commit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u64..4000).prop_map(Op::Insert),
        3 => (0u64..4000).prop_map(Op::Remove),
        1 => (0u64..4000, 1u64..600).prop_map(|(a, n)| Op::RemoveRange(a, n)),
        1 => Just(Op::Commit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Inserts, removes and commits in any order: every lookup and every
    /// range walk equals the model; splits and merges keep the tree valid
    /// (every read is checked against its parent's expectations).
    #[test]
    fn matches_a_model(ops in prop::collection::vec(op(), 1..700)) {
        let mut s = MemStore::default();
        let mut model = BTreeMap::new();
        let mut root = Block::NONE;
        for op in ops {
            match op {
                Op::Insert(k) => {
                    root = put(&mut s, root, k);
                    model.insert(k, ());
                }
                Op::Remove(k) => {
                    root = del(&mut s, root, k);
                    model.remove(&k);
                }
                Op::RemoveRange(a, n) => {
                    for k in a..a + n {
                        root = del(&mut s, root, k);
                        model.remove(&k);
                    }
                }
                Op::Commit => s.commit(),
            }
        }
        for k in (0..4000).step_by(37) {
            let got = lookup(&s, &SPEC, root, k).unwrap().map(|(v, _)| v);
            prop_assert_eq!(got, model.get(&k).map(|_| val(k).to_vec()));
        }
        let all: Vec<u64> = model.keys().copied().collect();
        prop_assert_eq!(entries(&s, root, 0, u64::MAX), all.clone());
        let mid: Vec<u64> = model.range(1000..2500).map(|(k, _)| *k).collect();
        prop_assert_eq!(entries(&s, root, 1000, 2500), mid);
        // Every chunk is referenced once per entry, no more, no less.
        let want: HashMap<u64, i64> = all.iter().map(|&k| (k * 7 + 1, 1)).collect();
        prop_assert_eq!(s.chunk_refs(), want);
        // Releasing the tree frees every block and every chunk.
        dec_tree(&mut s, &SPEC, root).unwrap();
        prop_assert!(s.refs.is_empty(), "blocks left: {:?}", s.refs);
        prop_assert!(s.chunk_refs().is_empty());
    }
}

#[test]
fn splits_grow_the_tree_and_merges_shrink_it() {
    let mut s = MemStore::default();
    let mut root = Block::NONE;
    assert_eq!(lookup(&s, &SPEC, root, 5).unwrap(), None, "an empty tree");
    // More than two full levels hold: at least three levels.
    let n =
        (super::super::node::max_entries(0, 8) * super::super::node::max_entries(1, 8)) as u64 + 1;
    for k in 0..n {
        root = put(&mut s, root, k);
    }
    let tall = depth(&s, root);
    assert!(tall >= 3, "{n} entries need at least three levels: {tall}");
    s.commit();
    for k in 0..n - 10 {
        root = del(&mut s, root, k);
    }
    assert!(depth(&s, root) < tall, "merges lower the tree");
    assert_eq!(
        entries(&s, root, 0, u64::MAX),
        (n - 10..n).collect::<Vec<_>>()
    );
    for k in n - 10..n {
        root = del(&mut s, root, k);
    }
    assert_eq!(root, Block::NONE, "the last remove empties the tree");
    assert!(s.refs.is_empty(), "no block is left: {:?}", s.refs);
    // Removing what is not there changes nothing.
    let r = put(&mut s, Block::NONE, 3);
    let (same, old) = remove(&mut s, &SPEC, r, 4).unwrap();
    assert_eq!((same, old), (r, None));
}

#[test]
fn a_snapshot_shares_the_tree_until_either_side_changes() {
    let mut s = MemStore::default();
    let mut root = Block::NONE;
    for k in 0..3000 {
        root = put(&mut s, root, k);
    }
    s.commit();
    // A snapshot: one more reference on the root, nothing copied.
    let blocks_before = s.nodes.len();
    s.inc_block(root);
    let snap = root;
    assert_eq!(s.nodes.len(), blocks_before);
    assert!(lookup(&s, &SPEC, root, 10).unwrap().unwrap().1, "shared");
    for k in (0..3000).step_by(3) {
        root = del(&mut s, root, k);
    }
    for k in 5000..5500 {
        root = put(&mut s, root, k);
    }
    assert_ne!(root, snap);
    assert_eq!(
        entries(&s, snap, 0, u64::MAX),
        (0..3000).collect::<Vec<_>>()
    );
    let mut live: Vec<u64> = (0..3000).filter(|k| k % 3 != 0).collect();
    live.extend(5000..5500);
    assert_eq!(entries(&s, root, 0, u64::MAX), live);
    // Chunks both trees map are counted once per tree.
    assert_eq!(s.chunk_refs()[&u64::from_le_bytes(val(1))], 2);
    assert_eq!(s.chunk_refs()[&u64::from_le_bytes(val(5000))], 1);
    s.commit();
    dec_tree(&mut s, &SPEC, snap).unwrap();
    assert_eq!(entries(&s, root, 0, u64::MAX), live, "the other side stays");
    dec_tree(&mut s, &SPEC, root).unwrap();
    assert!(s.refs.is_empty(), "blocks left: {:?}", s.refs);
    assert!(s.chunk_refs().is_empty(), "chunks left");
}

#[test]
fn an_uncommitted_change_leaves_the_committed_tree_whole() {
    // What a rolled-back transaction relies on: the last commit's root
    // still reads as it was, whatever the running transaction did.
    let mut s = MemStore::default();
    let mut root = Block::NONE;
    for k in 0..2000 {
        root = put(&mut s, root, k);
    }
    s.commit();
    let committed = root;
    let mut r = root;
    for k in 0..2000 {
        r = if k % 2 == 0 {
            del(&mut s, r, k)
        } else {
            put(&mut s, r, k + 10_000)
        };
    }
    assert_eq!(
        entries(&s, committed, 0, u64::MAX),
        (0..2000).collect::<Vec<_>>()
    );
}

#[test]
fn prune_releases_from_the_end_in_bounded_steps() {
    let mut s = MemStore::default();
    let mut root = Block::NONE;
    for k in 0..5000 {
        root = put(&mut s, root, k);
    }
    s.commit();
    let mut steps = 0;
    while !root.is_none() {
        let mut budget = 300;
        root = prune(&mut s, &SPEC, root, &mut budget).unwrap();
        steps += 1;
        s.commit();
        let left = entries(&s, root, 0, u64::MAX);
        assert_eq!(
            left,
            (0..left.len() as u64).collect::<Vec<_>>(),
            "a prefix is left"
        );
        assert_eq!(
            s.chunk_refs().len(),
            left.len(),
            "released entries' chunks are released"
        );
    }
    assert!(steps >= 5000 / 600, "bounded steps: {steps}");
    assert!(s.refs.is_empty(), "blocks left: {:?}", s.refs);
}

#[test]
fn a_node_that_is_not_what_its_parent_expects_is_refused() {
    let mut s = MemStore::default();
    let mut root = Block::NONE;
    for k in 0..2000 {
        root = put(&mut s, root, k);
    }
    s.commit();
    let top = s.read_node(root).unwrap();
    assert!(!top.is_leaf());
    let (a, b) = (top.children[0], top.children[1]);
    // A misdirected write: the first child's block holds the second's node.
    let stray = (*s.read_node(b).unwrap()).clone();
    s.nodes.insert(a, Arc::new(stray));
    let err = lookup(&s, &SPEC, root, 0).unwrap_err();
    // The error names the block, its tree and why: keys past the bound.
    let d = err.damage().unwrap_or_else(|| panic!("not damage: {err}"));
    assert_eq!((d.block, d.tree), (Some(a), Some(SPEC.owner)), "{err}");
    assert!(
        matches!(d.why, Why::Block(BlockFault::KeysPast { .. })),
        "{err}"
    );
    // Another tree's node (other owner kind) at a child's place.
    let mut foreign = (*s.read_node(b).unwrap()).clone();
    foreign.owner = FIXED_OWNERS + 1;
    s.nodes.insert(b, Arc::new(foreign));
    let k = top.keys[1];
    let err = lookup(&s, &SPEC, root, k).unwrap_err();
    let d = err.damage().unwrap_or_else(|| panic!("not damage: {err}"));
    assert_eq!(d.block, Some(b));
    assert!(
        matches!(d.why, Why::Block(BlockFault::Owner { found, .. }) if found == FIXED_OWNERS + 1),
        "{err}"
    );
}

/// Every difference `diff` reports between two trees, as (key, in a, in b).
type Diffs = Vec<(u64, Option<Vec<u8>>, Option<Vec<u8>>)>;

fn diffs(s: &MemStore, a: Block, b: Block) -> (Diffs, u64) {
    let mut out = Vec::new();
    let reads = crate::meta::diff::diff(s, &SPEC, a, b, &mut |k, x, y| {
        out.push((k, x.map(<[u8]>::to_vec), y.map(<[u8]>::to_vec)));
        Ok(true)
    })
    .unwrap();
    (out, reads)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// A snapshot, then inserts, overwrites (another value) and removes on
    /// the live tree, with commits between: `diff` reports exactly the
    /// keys whose values differ, in order, both ways round.
    #[test]
    fn diff_matches_a_model(
        base in prop::collection::btree_set(0u64..3000, 0..1500),
        ops in prop::collection::vec((0u64..3000, 0u8..3), 0..300),
        commit_every in 1usize..50,
    ) {
        let mut s = MemStore::default();
        let mut root = Block::NONE;
        let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        for &k in &base {
            root = put(&mut s, root, k);
            model.insert(k, val(k).to_vec());
        }
        s.commit();
        let snap = root;
        if !snap.is_none() {
            s.inc_block(snap);
        }
        let old = model.clone();
        for (i, &(k, what)) in ops.iter().enumerate() {
            match what {
                0 => {
                    root = del(&mut s, root, k);
                    model.remove(&k);
                }
                1 => {
                    root = put(&mut s, root, k);
                    model.insert(k, val(k).to_vec());
                }
                _ => {
                    let v = (k * 7 + 2).to_le_bytes();
                    root = insert(&mut s, &SPEC, root, k, &v).unwrap().0;
                    model.insert(k, v.to_vec());
                }
            }
            if i % commit_every == 0 {
                s.commit();
            }
        }
        let keys: std::collections::BTreeSet<u64> = old.keys().chain(model.keys()).copied().collect();
        let want: Diffs = keys
            .into_iter()
            .filter(|k| old.get(k) != model.get(k))
            .map(|k| (k, old.get(&k).cloned(), model.get(&k).cloned()))
            .collect();
        prop_assert_eq!(diffs(&s, snap, root).0, want.clone());
        let back: Diffs = want.into_iter().map(|(k, a, b)| (k, b, a)).collect();
        prop_assert_eq!(diffs(&s, root, snap).0, back);
    }
}

#[test]
fn diff_reads_only_what_changed() {
    let mut s = MemStore::default();
    let mut root = Block::NONE;
    for k in 0..20_000 {
        root = put(&mut s, root, k);
    }
    s.commit();
    let snap = root;
    s.inc_block(snap);
    let (none, reads) = diffs(&s, snap, root);
    assert!(none.is_empty());
    assert_eq!(reads, 0, "one tree: nothing read");
    let v = 99u64.to_le_bytes();
    root = insert(&mut s, &SPEC, root, 12_345, &v).unwrap().0;
    s.commit();
    let (one, reads) = diffs(&s, snap, root);
    assert_eq!(
        one,
        vec![(12_345, Some(val(12_345).to_vec()), Some(v.to_vec()))]
    );
    // One path down each tree (and the siblings of each node on it, at
    // most: a node is opened to find which of its children differ).
    let d = depth(&s, root) as u64;
    assert!(
        reads <= 2 * d,
        "{reads} nodes read for one change in a tree of depth {d}"
    );
    // Against an empty tree: every entry, in order.
    let (all, _) = diffs(&s, Block::NONE, snap);
    assert_eq!(all.len(), 20_000);
    assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
}
