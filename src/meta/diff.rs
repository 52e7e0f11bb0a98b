//! Comparing two B-trees of one kind that share subtrees (a snapshot and
//! an older one of the same volume): the keys whose values differ, found
//! by walking both trees together and skipping every subtree they share
//! unread, so the cost grows with what changed, not with the trees' size
//! (thin-provisioning-tools' `thin_delta` walks dm-thin's trees so).

use super::btree::{read, Expect, NodeStore, TreeSpec};
use crate::error::Result;
use crate::units::Block;

/// What one side has left to compare, in key order (the next one last).
enum Item {
    /// A subtree not yet read, with what its parent says of it and its
    /// level (`u8::MAX` for a root, whose level is not known yet).
    Tree {
        block: Block,
        expect: Expect,
        level: u8,
    },
    /// An entry of a leaf that was read.
    Entry(u64, Vec<u8>),
}

/// One side of the comparison.
struct Side {
    stack: Vec<Item>,
}

impl Side {
    fn new(spec: &TreeSpec, root: Block) -> Side {
        let mut stack = Vec::new();
        if !root.is_none() {
            stack.push(Item::Tree {
                block: root,
                expect: Expect::root(spec),
                level: u8::MAX,
            });
        }
        Side { stack }
    }

    /// Replace the subtree on top with its children or entries.
    fn open<S: NodeStore>(&mut self, s: &S, reads: &mut u64) -> Result<()> {
        let Some(Item::Tree { block, expect, .. }) = self.stack.pop() else {
            return Ok(());
        };
        *reads += 1;
        let node = read(s, block, Some(&expect))?;
        if node.is_leaf() {
            for i in (0..node.len()).rev() {
                self.stack
                    .push(Item::Entry(node.keys[i], node.value(i).to_vec()));
            }
        } else {
            for i in (0..node.len()).rev() {
                self.stack.push(Item::Tree {
                    block: node.children[i],
                    expect: Expect::child(&node, i, expect.hi),
                    level: node.level.saturating_sub(1),
                });
            }
        }
        Ok(())
    }
}

/// Visitor of [`diff`]: key, its value in the first tree and in the second
/// (`None`: absent there); returns false to stop.
pub type DiffVisitor<'a> = &'a mut dyn FnMut(u64, Option<&[u8]>, Option<&[u8]>) -> Result<bool>;

/// Every key whose value differs between the trees at `a` and `b`, in key
/// order. Returns the number of nodes read (for tests and figures).
pub fn diff<S: NodeStore>(
    s: &S,
    spec: &TreeSpec,
    a: Block,
    b: Block,
    f: DiffVisitor,
) -> Result<u64> {
    let (mut a, mut b) = (Side::new(spec, a), Side::new(spec, b));
    let mut reads = 0;
    loop {
        match (a.stack.last(), b.stack.last()) {
            (None, None) => return Ok(reads),
            // One block on both sides: the same entries. Both sides have
            // compared everything before it, so skipping it on both keeps
            // them in step.
            (Some(Item::Tree { block: x, .. }), Some(Item::Tree { block: y, .. })) if x == y => {
                a.stack.pop();
                b.stack.pop();
            }
            (Some(Item::Tree { level: la, .. }), Some(Item::Tree { level: lb, .. })) => {
                // Open the higher one: its children may be the other's.
                if la >= lb {
                    a.open(s, &mut reads)?
                } else {
                    b.open(s, &mut reads)?
                }
            }
            (Some(Item::Tree { .. }), _) => a.open(s, &mut reads)?,
            (_, Some(Item::Tree { .. })) => b.open(s, &mut reads)?,
            (Some(Item::Entry(ka, va)), Some(Item::Entry(kb, vb))) => {
                let go = if ka < kb {
                    f(*ka, Some(va), None)?
                } else if kb < ka {
                    f(*kb, None, Some(vb))?
                } else if va != vb {
                    f(*ka, Some(va), Some(vb))?
                } else {
                    true
                };
                let (ka, kb) = (*ka, *kb);
                if ka <= kb {
                    a.stack.pop();
                }
                if kb <= ka {
                    b.stack.pop();
                }
                if !go {
                    return Ok(reads);
                }
            }
            (Some(Item::Entry(k, v)), None) => {
                if !f(*k, Some(v), None)? {
                    return Ok(reads);
                }
                a.stack.pop();
            }
            (None, Some(Item::Entry(k, v))) => {
                if !f(*k, None, Some(v))? {
                    return Ok(reads);
                }
                b.stack.pop();
            }
        }
    }
}
