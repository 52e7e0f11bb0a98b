//! A copy-on-write, reference-counted B-tree with u64 keys and fixed-size
//! values (the persistent-data design of dm-thin and btrfs). It knows nothing
//! of what it stores: a [`NodeStore`] gives it blocks and reference counts.
//!
//! Rules: a block that the last committed transaction can reach is never
//! modified; it is *shadowed* (copied to a new block) first. A block shared by
//! several trees (refcount > 1) is shadowed by copying and raising the counts
//! of everything it points at; an unshared one hands its children over to the
//! copy. Snapshots share a whole tree by raising the root's count: O(1).

use super::node::{gen_tag, Node, GEN_NEW};
use crate::error::{BlockFault, Damage, Error, Result, Why};
use crate::units::Block;
use std::sync::Arc;

/// What a leaf value points at, for reference counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueKind {
    /// Nothing.
    Plain,
    /// First 8 bytes (LE) are a data chunk number.
    DataChunk,
    /// First 8 bytes (LE) are the root block of another tree.
    Subtree,
}

#[derive(Clone, Copy, Debug)]
pub struct TreeSpec {
    pub owner: u64,
    pub value_size: usize,
    pub values: ValueKind,
}

/// Visitor of `walk`: key, value, path shared; returns false to stop.
pub type Visitor<'a> = &'a mut dyn FnMut(u64, &[u8], bool) -> Result<bool>;

/// Owners at or above this one name a tree kind of which a pool has one
/// (volumes, reference counts, checksums); below it, a tree of one volume
/// (whose nodes snapshots share, so a node's owner is any volume's).
pub const FIXED_OWNERS: u64 = u64::MAX - 255;

/// What a parent says about its child `i` (thin-provisioning-tools checks
/// the same): the level below the parent's, the parent's tree (value size,
/// owner kind), and keys in `[lo, hi)`. A block that disagrees is a lost or
/// misdirected write, or another tree's node: never trusted.
#[derive(Clone, Copy, Debug)]
pub struct Expect {
    /// `None` for a root (any height).
    pub level: Option<u8>,
    pub value_size: usize,
    pub owner: u64,
    pub lo: u64,
    pub hi: Option<u64>,
    /// The generation tag the parent recorded for the child (0: none, or
    /// [`GEN_NEW`]: written in the running transaction; not checked).
    pub gen: u32,
}

impl Expect {
    /// The expectation for child `i` of `parent`, whose own keys are
    /// below `hi`.
    pub fn child(parent: &Node, i: usize, hi: Option<u64>) -> Expect {
        Expect {
            level: Some(parent.level.saturating_sub(1)),
            value_size: parent.value_size,
            owner: parent.owner,
            lo: parent.keys[i],
            hi: parent.keys.get(i + 1).copied().or(hi),
            gen: parent.gens.get(i).copied().unwrap_or(0),
        }
    }

    /// The expectation for the root of a tree of `spec`'s kind.
    pub fn root(spec: &TreeSpec) -> Expect {
        Expect {
            level: None,
            value_size: spec.value_size,
            owner: spec.owner,
            lo: 0,
            hi: None,
            gen: 0,
        }
    }

    /// The error for block `b`, refused for `why`.
    pub fn damage(&self, b: Block, why: BlockFault) -> Error {
        Damage::block("tree node", b, Why::Block(why))
            .in_tree(self.owner)
            .into()
    }

    /// Why `n` is not the child its parent points at, if it is not.
    pub fn check(&self, n: &Node) -> std::result::Result<(), BlockFault> {
        if let Some(level) = self.level.filter(|&l| l != n.level) {
            return Err(BlockFault::Level {
                found: n.level,
                expected: level,
            });
        }
        if n.value_size != self.value_size {
            return Err(BlockFault::ValueSize {
                found: n.value_size as u16,
                expected: self.value_size as u16,
            });
        }
        if self.gen != 0 && self.gen != GEN_NEW && gen_tag(n.txid) != self.gen {
            return Err(BlockFault::Stale(n.txid));
        }
        let fixed = |o: u64| o >= FIXED_OWNERS;
        if (fixed(self.owner) || fixed(n.owner)) && n.owner != self.owner {
            return Err(BlockFault::Owner {
                found: n.owner,
                expected: self.owner,
            });
        }
        let (Some(&first), Some(&last)) = (n.keys.first(), n.keys.last()) else {
            if self.level.is_none() {
                return Ok(());
            }
            return Err(BlockFault::Empty);
        };
        if first < self.lo {
            return Err(BlockFault::KeysBelow {
                first,
                low: self.lo,
            });
        }
        if let Some(high) = self.hi.filter(|&hi| last >= hi) {
            return Err(BlockFault::KeysPast { last, high });
        }
        Ok(())
    }
}

/// Storage and reference counts for B-tree blocks.
pub trait NodeStore {
    fn read_node(&self, b: Block) -> Result<Arc<Node>>;
    /// Read a child and check it against what its parent expects. A store
    /// with several copies tries the next copy when one disagrees.
    fn read_child(&self, b: Block, expect: &Expect) -> Result<Arc<Node>> {
        let n = self.read_node(b)?;
        expect.check(&n).map_err(|e| expect.damage(b, e))?;
        Ok(n)
    }
    fn write_node(&mut self, b: Block, node: Node);
    /// True if `b` was allocated in the running transaction.
    fn is_new(&self, b: Block) -> bool;
    fn alloc_block(&mut self) -> Result<Block>;
    fn refcount(&self, b: Block) -> u32;
    fn inc_block(&mut self, b: Block);
    /// Lower the count; at zero the block is released (reusable after commit).
    fn dec_block(&mut self, b: Block);
    fn inc_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()>;
    fn dec_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()>;
}

fn child_index(node: &Node, key: u64) -> usize {
    match node.keys.binary_search(&key) {
        Ok(i) => i,
        Err(0) => 0,
        Err(i) => i - 1,
    }
}

fn inc_children<S: NodeStore>(s: &mut S, spec: &TreeSpec, node: &Node) -> Result<()> {
    if node.is_leaf() {
        for i in 0..node.len() {
            s.inc_value(spec, node.value(i))?;
        }
    } else {
        for &c in &node.children {
            s.inc_block(c);
        }
    }
    Ok(())
}

/// Make `b` writable in this transaction; returns the block to write to.
pub fn shadow<S: NodeStore>(s: &mut S, spec: &TreeSpec, b: Block) -> Result<Block> {
    if s.is_new(b) && s.refcount(b) == 1 {
        return Ok(b);
    }
    let node = (*s.read_node(b)?).clone();
    let nb = s.alloc_block()?;
    if s.refcount(b) > 1 {
        inc_children(s, spec, &node)?;
    }
    s.dec_block(b);
    s.write_node(nb, node);
    Ok(nb)
}

/// Look `key` up. Returns the value and whether any block on the path is
/// shared with another tree.
pub fn lookup<S: NodeStore>(
    s: &S,
    spec: &TreeSpec,
    root: Block,
    key: u64,
) -> Result<Option<(Vec<u8>, bool)>> {
    let mut b = root;
    let mut shared = false;
    let mut expect = Some(Expect::root(spec));
    while !b.is_none() {
        shared |= s.refcount(b) > 1;
        let node = read(s, b, expect.as_ref())?;
        if node.is_leaf() {
            return Ok(node
                .keys
                .binary_search(&key)
                .ok()
                .map(|i| (node.value(i).to_vec(), shared)));
        }
        if node.is_empty() {
            return Ok(None);
        }
        let i = child_index(&node, key);
        expect = Some(Expect::child(&node, i, expect.and_then(|e| e.hi)));
        b = node.children[i];
    }
    Ok(None)
}

pub(crate) fn read<S: NodeStore>(s: &S, b: Block, expect: Option<&Expect>) -> Result<Arc<Node>> {
    match expect {
        Some(e) => s.read_child(b, e),
        None => s.read_node(b),
    }
}

/// Insert or replace. Returns the new root and the replaced value.
pub fn insert<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    root: Block,
    key: u64,
    value: &[u8],
) -> Result<(Block, Option<Vec<u8>>)> {
    debug_assert_eq!(value.len(), spec.value_size);
    if root.is_none() {
        let mut leaf = Node::leaf(spec.owner, spec.value_size);
        leaf.keys.push(key);
        leaf.values.extend_from_slice(value);
        let b = s.alloc_block()?;
        s.write_node(b, leaf);
        return Ok((b, None));
    }
    s.read_child(root, &Expect::root(spec))?;
    let r = shadow(s, spec, root)?;
    let (old, split) = insert_rec(s, spec, r, None, key, value)?;
    if let Some((sep, right)) = split {
        let left = s.read_node(r)?;
        let mut top = Node::internal(spec.owner, spec.value_size, left.level + 1);
        top.keys = vec![left.keys[0], sep];
        top.children = vec![r, right];
        top.gens = vec![GEN_NEW, GEN_NEW];
        let nb = s.alloc_block()?;
        s.write_node(nb, top);
        return Ok((nb, old));
    }
    Ok((r, old))
}

type Split = Option<(u64, Block)>;

/// Insert into the subtree at `b` (already shadowed and checked), whose
/// keys are below `hi`.
fn insert_rec<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    b: Block,
    hi: Option<u64>,
    key: u64,
    value: &[u8],
) -> Result<(Option<Vec<u8>>, Split)> {
    let mut node = (*s.read_node(b)?).clone();
    let vs = node.value_size;
    let old;
    if node.is_leaf() {
        match node.keys.binary_search(&key) {
            Ok(i) => {
                old = Some(node.value(i).to_vec());
                node.values[i * vs..(i + 1) * vs].copy_from_slice(value);
            }
            Err(i) => {
                old = None;
                node.keys.insert(i, key);
                node.values.splice(i * vs..i * vs, value.iter().copied());
            }
        }
    } else {
        let i = child_index(&node, key);
        let expect = Expect::child(&node, i, hi);
        s.read_child(node.children[i], &expect)?;
        let c = shadow(s, spec, node.children[i])?;
        node.children[i] = c;
        node.gens[i] = GEN_NEW;
        if key < node.keys[i] {
            node.keys[i] = key;
        }
        let (o, split) = insert_rec(s, spec, c, expect.hi, key, value)?;
        old = o;
        if let Some((sep, right)) = split {
            node.keys.insert(i + 1, sep);
            node.children.insert(i + 1, right);
            node.gens.insert(i + 1, GEN_NEW);
        }
    }
    let split = if node.len() > node.capacity() {
        Some(split_node(s, &mut node)?)
    } else {
        None
    };
    s.write_node(b, node);
    Ok((old, split))
}

/// Move the upper half of `node` into a new block. Returns (separator, block).
fn split_node<S: NodeStore>(s: &mut S, node: &mut Node) -> Result<(u64, Block)> {
    let mid = node.len() / 2;
    let mut right = Node::internal(node.owner, node.value_size, node.level);
    right.keys = node.keys.split_off(mid);
    if node.is_leaf() {
        right.values = node.values.split_off(mid * node.value_size);
    } else {
        right.children = node.children.split_off(mid);
        right.gens = node.gens.split_off(mid);
    }
    let sep = right.keys[0];
    let rb = s.alloc_block()?;
    s.write_node(rb, right);
    Ok((sep, rb))
}

/// Remove `key`. Returns the new root ([`Block::NONE`] when the tree became empty) and the
/// removed value; the caller releases what the value referenced.
pub fn remove<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    root: Block,
    key: u64,
) -> Result<(Block, Option<Vec<u8>>)> {
    if root.is_none() || lookup(s, spec, root, key)?.is_none() {
        return Ok((root, None));
    }
    let mut r = shadow(s, spec, root)?;
    let (old, empty) = remove_rec(s, spec, r, None, key)?;
    if empty {
        s.dec_block(r);
        return Ok((Block::NONE, old));
    }
    // Collapse a root with a single child; the child keeps its reference.
    loop {
        let node = s.read_node(r)?;
        if node.is_leaf() || node.len() != 1 {
            break;
        }
        let child = node.children[0];
        s.dec_block(r);
        r = child;
    }
    Ok((r, old))
}

fn remove_rec<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    b: Block,
    hi: Option<u64>,
    key: u64,
) -> Result<(Option<Vec<u8>>, bool)> {
    let mut node = (*s.read_node(b)?).clone();
    let old;
    if node.is_leaf() {
        match node.keys.binary_search(&key) {
            Ok(i) => {
                let vs = node.value_size;
                old = Some(node.value(i).to_vec());
                node.keys.remove(i);
                node.values.drain(i * vs..(i + 1) * vs);
            }
            Err(_) => old = None,
        }
    } else {
        let i = child_index(&node, key);
        let expect = Expect::child(&node, i, hi);
        s.read_child(node.children[i], &expect)?;
        let c = shadow(s, spec, node.children[i])?;
        node.children[i] = c;
        node.gens[i] = GEN_NEW;
        let (o, child_empty) = remove_rec(s, spec, c, expect.hi, key)?;
        old = o;
        if child_empty {
            s.dec_block(c);
            node.keys.remove(i);
            node.children.remove(i);
            node.gens.remove(i);
        } else {
            merge_small_leaf(s, spec, &mut node, i, hi)?;
        }
    }
    let empty = node.is_empty();
    s.write_node(b, node);
    Ok((old, empty))
}

/// After a removal left leaf child `i` of `node` (written in this
/// transaction) under a quarter full, fold a neighbour into it when both
/// fit in half a leaf. Nothing is allocated (the neighbour's block is
/// released, or loses our reference if shared, its values gaining one), so
/// trees thinned by removals stay compact at no cost in metadata space.
fn merge_small_leaf<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    node: &mut Node,
    i: usize,
    hi: Option<u64>,
) -> Result<()> {
    let c = node.children[i];
    let child = s.read_node(c)?;
    if !child.is_leaf() || child.len() * 4 >= child.capacity() || node.len() < 2 {
        return Ok(());
    }
    let j = if i + 1 < node.len() { i + 1 } else { i - 1 };
    let sb = node.children[j];
    let sib = s.read_child(sb, &Expect::child(node, j, hi))?;
    if !sib.is_leaf() || child.len() + sib.len() > child.capacity() / 2 {
        return Ok(());
    }
    if s.refcount(sb) > 1 {
        for k in 0..sib.len() {
            s.inc_value(spec, sib.value(k))?;
        }
    }
    let (first, second) = if j > i {
        (&*child, &*sib)
    } else {
        (&*sib, &*child)
    };
    let mut merged = first.clone();
    merged.keys.extend_from_slice(&second.keys);
    merged.values.extend_from_slice(&second.values);
    s.dec_block(sb);
    s.write_node(c, merged);
    if j < i {
        // The merged leaf starts at the left neighbour's key.
        node.children[j] = c;
        node.gens[j] = GEN_NEW;
        node.keys.remove(i);
        node.children.remove(i);
        node.gens.remove(i);
    } else {
        node.keys.remove(j);
        node.children.remove(j);
        node.gens.remove(j);
    }
    Ok(())
}

/// Drop one reference to the tree at `root`, freeing what no one else uses.
pub fn dec_tree<S: NodeStore>(s: &mut S, spec: &TreeSpec, root: Block) -> Result<()> {
    dec_tree_rec(s, spec, root, Some(Expect::root(spec)))
}

fn dec_tree_rec<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    root: Block,
    expect: Option<Expect>,
) -> Result<()> {
    if root.is_none() {
        return Ok(());
    }
    if s.refcount(root) > 1 {
        s.dec_block(root);
        return Ok(());
    }
    let node = read(s, root, expect.as_ref())?;
    if node.is_leaf() {
        for i in 0..node.len() {
            s.dec_value(spec, node.value(i))?;
        }
    } else {
        let hi = expect.and_then(|e| e.hi);
        for (i, &c) in node.children.iter().enumerate() {
            dec_tree_rec(s, spec, c, Some(Expect::child(&node, i, hi)))?;
        }
    }
    s.dec_block(root);
    Ok(())
}

/// Visit entries with `lo <= key < hi` in order. The visitor gets the key, the
/// value and whether the path is shared; it returns false to stop.
pub fn walk<S: NodeStore>(
    s: &S,
    spec: &TreeSpec,
    root: Block,
    lo: u64,
    hi: u64,
    f: Visitor,
) -> Result<bool> {
    walk_rec(s, root, Some(Expect::root(spec)), lo, hi, false, f)
}

fn walk_rec<S: NodeStore>(
    s: &S,
    b: Block,
    expect: Option<Expect>,
    lo: u64,
    hi: u64,
    shared: bool,
    f: Visitor,
) -> Result<bool> {
    if b.is_none() {
        return Ok(true);
    }
    let shared = shared || s.refcount(b) > 1;
    let node = read(s, b, expect.as_ref())?;
    if node.is_leaf() {
        let start = node.keys.partition_point(|&k| k < lo);
        for i in start..node.len() {
            if node.keys[i] >= hi {
                return Ok(false);
            }
            if !f(node.keys[i], node.value(i), shared)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    let start = if node.is_empty() {
        0
    } else {
        child_index(&node, lo)
    };
    for i in start..node.len() {
        if node.keys[i] >= hi && i > start {
            return Ok(false);
        }
        let e = Expect::child(&node, i, expect.and_then(|e| e.hi));
        if !walk_rec(s, node.children[i], Some(e), lo, hi, shared, f)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every block of the tree, each once, with how many times it is reached from
/// parents within the tree. For the checker.
pub fn visit_blocks<S: NodeStore>(
    s: &S,
    spec: &TreeSpec,
    root: Block,
    f: &mut dyn FnMut(Block, &Node, bool) -> Result<()>,
    seen: &mut std::collections::HashSet<Block>,
) -> Result<()> {
    visit_rec(s, root, Some(Expect::root(spec)), f, seen)
}

fn visit_rec<S: NodeStore>(
    s: &S,
    root: Block,
    expect: Option<Expect>,
    f: &mut dyn FnMut(Block, &Node, bool) -> Result<()>,
    seen: &mut std::collections::HashSet<Block>,
) -> Result<()> {
    if root.is_none() {
        return Ok(());
    }
    let first = seen.insert(root);
    let node = read(s, root, expect.as_ref())?;
    f(root, &node, first)?;
    if first && !node.is_leaf() {
        let hi = expect.and_then(|e| e.hi);
        for (i, &c) in node.children.iter().enumerate() {
            visit_rec(s, c, Some(Expect::child(&node, i, hi)), f, seen)?;
        }
    }
    Ok(())
}

/// Release the tree at `root` (one reference to it) from its last entries
/// backwards, until about `budget` values and shared subtrees were released
/// or nothing is left; returns the new root ([`Block::NONE`]: all released). Each
/// step leaves a valid tree holding the entries not yet released, so a
/// large tree can be released over several transactions, each with a
/// bounded cost (every value released may change a reference count).
pub fn prune<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    root: Block,
    budget: &mut u64,
) -> Result<Block> {
    if root.is_none() {
        return Ok(Block::NONE);
    }
    if s.refcount(root) > 1 {
        s.dec_block(root);
        *budget = budget.saturating_sub(1);
        return Ok(Block::NONE);
    }
    let node = read(s, root, Some(&Expect::root(spec)))?;
    if node.is_leaf() {
        for i in 0..node.len() {
            s.dec_value(spec, node.value(i))?;
        }
        *budget = budget.saturating_sub(node.len() as u64);
        s.dec_block(root);
        return Ok(Block::NONE);
    }
    let r = shadow(s, spec, root)?;
    if prune_rec(s, spec, r, None, budget)? {
        s.dec_block(r);
        return Ok(Block::NONE);
    }
    Ok(r)
}

/// Prune internal node `b` (writable in this transaction) from its last
/// child backwards. Returns true when it became empty.
fn prune_rec<S: NodeStore>(
    s: &mut S,
    spec: &TreeSpec,
    b: Block,
    hi: Option<u64>,
    budget: &mut u64,
) -> Result<bool> {
    let mut node = (*s.read_node(b)?).clone();
    while *budget > 0 && !node.is_empty() {
        let i = node.len() - 1;
        let c = node.children[i];
        let expect = Expect::child(&node, i, hi);
        let released = if s.refcount(c) > 1 {
            s.dec_block(c);
            *budget = budget.saturating_sub(1);
            true
        } else {
            let child = s.read_child(c, &expect)?;
            if child.is_leaf() {
                for j in 0..child.len() {
                    s.dec_value(spec, child.value(j))?;
                }
                *budget = budget.saturating_sub(child.len().max(1) as u64);
                s.dec_block(c);
                true
            } else {
                let nc = shadow(s, spec, c)?;
                node.children[i] = nc;
                node.gens[i] = GEN_NEW;
                let empty = prune_rec(s, spec, nc, expect.hi, budget)?;
                if empty {
                    s.dec_block(nc);
                }
                empty
            }
        };
        if !released {
            break;
        }
        node.keys.pop();
        node.children.pop();
        node.gens.pop();
    }
    let empty = node.is_empty();
    s.write_node(b, node);
    Ok(empty)
}

#[cfg(test)]
#[path = "btree_tests.rs"]
mod tests;
