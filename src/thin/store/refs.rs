//! Reference counts: data chunks, the volumes tree, and the block store the
//! B-trees run on.

use super::*;

impl MetaStore {
    // ---- data chunk reference counts ----

    pub fn data_count(&self, c: Chunk) -> Result<u32> {
        if let Some(n) = self.data.overlay.get(&c) {
            return Ok(*n);
        }
        Ok(btree::lookup(self, &DSM_SPEC, self.dsm_root, c.index())?
            .map(|(v, _)| get_u32(&v, 0))
            .unwrap_or(0))
    }

    pub fn data_alloc(&mut self) -> Result<Chunk> {
        self.data.alloc().ok_or_else(|| Error::NoSpace {
            pool: self.blocks.pool_name.clone(),
            detail: format!(
                "all {} data chunks are in use ({} freed, reusable after the next commit)",
                self.data.total(),
                self.data.pending_free()
            ),
        })
    }

    /// `n` free data chunks in a row, each with one reference; None when
    /// no such run is free (allocate one at a time then).
    pub fn data_alloc_run(&mut self, n: u64) -> Option<Chunk> {
        self.data.alloc_data_run(n)
    }

    pub fn data_inc(&mut self, c: Chunk) -> Result<()> {
        let n = self.data_count(c)?;
        if n == 0 {
            return Err(corrupt(format!(
                "data chunk {c} is referenced but marked free"
            )));
        }
        self.data.set_count(c, n, n + 1);
        Ok(())
    }

    pub fn data_dec(&mut self, c: Chunk) -> Result<()> {
        let n = self.data_count(c)?;
        if n == 0 {
            return Err(corrupt(format!("data chunk {c} released twice")));
        }
        self.data.set_count(c, n, n - 1);
        Ok(())
    }

    // ---- volumes tree ----

    pub fn volume_root(&self, id: u64) -> Result<VolumeRoot> {
        Ok(self.roots.get(&id).copied().unwrap_or_default())
    }

    /// Replace a volume's entry. The volumes tree owns one reference to the
    /// mapping root; the caller has already accounted for it.
    pub fn set_volume_root(&mut self, id: u64, vr: VolumeRoot) -> Result<()> {
        let root = self.volumes_root;
        // Insert without touching reference counts of the old/new roots.
        let (nr, _old) = btree::insert(self, &VOLUMES_SPEC, root, id, &vr.encode())?;
        self.volumes_root = nr;
        self.roots.insert(id, vr);
        Ok(())
    }

    /// Take volume `id`'s entry out of the volumes tree, leaving its
    /// mapping tree's reference with the caller.
    fn detach_volume_root(&mut self, id: u64) -> Result<Option<VolumeRoot>> {
        let root = self.volumes_root;
        let (nr, old) = btree::remove(self, &VOLUMES_SPEC, root, id)?;
        self.volumes_root = nr;
        self.roots.remove(&id);
        Ok(old.map(|v| VolumeRoot::decode(&v)))
    }

    /// Hand a mapping tree (one reference to `vr.root`) over to be
    /// released in steps ([`MetaStore::prune_released`]): it moves to a
    /// fresh key at or above [`RELEASING`] of the volumes tree. O(depth):
    /// this is what removing a volume or a snapshot costs in its own
    /// transaction, so a removal always fits in the metadata reserve.
    pub fn release_root(&mut self, vr: VolumeRoot) -> Result<()> {
        if vr.root.is_none() {
            return Ok(());
        }
        let key = RELEASING | self.next_volume_id;
        self.next_volume_id += 1;
        self.set_volume_root(key, VolumeRoot { mapped: 0, ..vr })
    }

    /// Remove volume `id` from the volumes tree; its mapping tree is
    /// released in steps.
    pub fn release_volume(&mut self, id: u64) -> Result<()> {
        match self.detach_volume_root(id)? {
            Some(vr) => self.release_root(vr),
            None => Ok(()),
        }
    }

    /// Mapping trees still being released.
    pub fn releasing(&self) -> usize {
        self.roots.keys().filter(|&&k| k >= RELEASING).count()
    }

    /// Release up to about `budget` values of the trees being released
    /// (see [`btree::prune`]). Returns true while some are left.
    pub fn prune_released(&mut self, mut budget: u64) -> Result<bool> {
        let mut keys: Vec<u64> = self
            .roots
            .keys()
            .copied()
            .filter(|&k| k >= RELEASING)
            .collect();
        keys.sort_unstable();
        for key in keys {
            if budget == 0 {
                return Ok(true);
            }
            let vr = self.roots.get(&key).copied().unwrap_or_default();
            let root = btree::prune(self, &mapping_spec(key), vr.root, &mut budget)?;
            if root.is_none() {
                self.detach_volume_root(key)?;
            } else {
                self.set_volume_root(key, VolumeRoot { root, ..vr })?;
            }
        }
        Ok(self.releasing() > 0)
    }
}

/// The trees run on the generic block store; what a value refers to (a
/// data chunk, a mapping tree) is the schema's to count.
impl NodeStore for MetaStore {
    fn read_node(&self, b: Block) -> Result<Arc<Node>> {
        self.blocks.read_node(b)
    }

    fn read_child(&self, b: Block, expect: &btree::Expect) -> Result<Arc<Node>> {
        self.blocks.read_child(b, expect)
    }

    fn write_node(&mut self, b: Block, node: Node) {
        self.blocks.write_node(b, node)
    }

    fn is_new(&self, b: Block) -> bool {
        self.blocks.is_new(b)
    }

    fn alloc_block(&mut self) -> Result<Block> {
        self.blocks.alloc_block()
    }

    fn refcount(&self, b: Block) -> u32 {
        self.blocks.refcount(b)
    }

    fn inc_block(&mut self, b: Block) {
        self.blocks.inc_block(b)
    }

    fn dec_block(&mut self, b: Block) {
        self.blocks.dec_block(b)
    }

    fn inc_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()> {
        match spec.values {
            ValueKind::Plain => Ok(()),
            ValueKind::DataChunk => self.data_inc(mapped_chunk(v)),
            ValueKind::Subtree => {
                let r = get_block(v, 0);
                if !r.is_none() {
                    self.blocks.msm.inc(r);
                }
                Ok(())
            }
        }
    }

    fn dec_value(&mut self, spec: &TreeSpec, v: &[u8]) -> Result<()> {
        match spec.values {
            ValueKind::Plain => Ok(()),
            ValueKind::DataChunk => self.data_dec(mapped_chunk(v)),
            ValueKind::Subtree => btree::dec_tree(self, &mapping_spec(0), get_block(v, 0)),
        }
    }
}
