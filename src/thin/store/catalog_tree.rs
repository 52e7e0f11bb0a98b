//! The catalog as a B-tree (superblock version 6, feature bit 2): one
//! fixed record per volume or snapshot, keyed by id (the pool name under
//! key 0), so a metadata operation changes a leaf and its path instead of
//! rewriting the whole serialized catalog (700 KB at 10,000 snapshots).
//! Pools keep their catalog chain until its next change, which converts it.

use super::*;
use crate::thin::store::catalog::{VolumeRecord, RECORD_BYTES};
use crate::thin::store::superblock::MAX_MSM_PAGES;

pub const CATALOG_OWNER: u64 = u64::MAX - 4;
/// Catalog records: volume id → [`VolumeRecord::encode_fixed`]; key 0 holds
/// the pool name (a record with id 0 and only a name).
pub const CATALOG_SPEC: TreeSpec = TreeSpec {
    owner: CATALOG_OWNER,
    value_size: RECORD_BYTES,
    values: ValueKind::Plain,
};

fn name_record(pool_name: &str) -> VolumeRecord {
    VolumeRecord {
        id: 0,
        name: pool_name.to_string(),
        snapshot_of: None,
        cloned_from: None,
        size: 0,
        created: 0,
        uuid: [0; 16],
    }
}

impl MetaStore {
    /// Is the catalog kept as a tree?
    pub fn catalog_is_tree(&self) -> bool {
        self.catalog_tree
    }

    /// The catalog tree's root (none when empty, or the catalog is a chain).
    pub fn catalog_root(&self) -> Block {
        if self.catalog_tree {
            self.catalog_head
        } else {
            Block::NONE
        }
    }

    /// Can this pool keep its catalog as a tree? (A version-6 superblock
    /// selects at most [`MAX_MSM_PAGES`] space-map pages.)
    pub(crate) fn catalog_tree_fits(&self) -> bool {
        (self.blocks.msm.span() as usize).div_ceil(ENTRIES_PER_PAGE) <= MAX_MSM_PAGES
    }

    /// Bring the catalog tree in step with the catalog in memory: the
    /// records that changed are inserted, the ones gone removed. The
    /// first time, the serialized chain is released.
    pub(crate) fn stage_catalog_tree(&mut self) -> Result<()> {
        if !self.catalog_tree {
            self.release_catalog_chain()?;
            self.catalog_staged = false;
            self.catalog_head = Block::NONE;
            self.catalog_bytes = 0;
            self.catalog_saved.clear();
            self.catalog_tree = true;
        }
        let mut want: HashMap<u64, VolumeRecord> = self
            .catalog
            .volumes
            .iter()
            .map(|r| (r.id, r.clone()))
            .collect();
        want.insert(0, name_record(&self.catalog.pool_name));
        let mut root = self.catalog_head;
        let mut gone: Vec<u64> = self
            .catalog_saved
            .keys()
            .filter(|k| !want.contains_key(k))
            .copied()
            .collect();
        gone.sort_unstable();
        for k in gone {
            root = btree::remove(self, &CATALOG_SPEC, root, k)?.0;
        }
        let mut changed: Vec<&VolumeRecord> = want
            .values()
            .filter(|r| self.catalog_saved.get(&r.id) != Some(r))
            .collect();
        changed.sort_unstable_by_key(|r| r.id);
        let changed: Vec<(u64, [u8; RECORD_BYTES])> = changed
            .into_iter()
            .map(|r| r.encode_fixed().map(|v| (r.id, v)).map_err(Error::Invalid))
            .collect::<Result<_>>()?;
        for (k, v) in changed {
            root = btree::insert(self, &CATALOG_SPEC, root, k, &v)?.0;
        }
        self.catalog_head = root;
        self.catalog_saved = want;
        self.catalog_dirty = false;
        Ok(())
    }

    /// Read the catalog tree (at open).
    pub(crate) fn read_catalog_tree(&mut self) -> Result<Catalog> {
        let mut records = Vec::new();
        let mut bad = None;
        btree::walk(
            self,
            &CATALOG_SPEC,
            self.catalog_head,
            0,
            u64::MAX,
            &mut |k, v, _| {
                match VolumeRecord::decode_fixed(v) {
                    Ok(r) if r.id == k => records.push(r),
                    Ok(r) => bad = Some(format!("catalog record under key {k} names id {}", r.id)),
                    Err(e) => bad = Some(format!("catalog record {k}: {e}")),
                }
                Ok(bad.is_none())
            },
        )?;
        if let Some(e) = bad {
            return Err(Error::corrupt(e));
        }
        let name = match records.first() {
            Some(r) if r.id == 0 => records.remove(0).name,
            _ => return Err(Error::corrupt("the catalog tree has no pool name record")),
        };
        self.catalog_saved = records.iter().map(|r| (r.id, r.clone())).collect();
        self.catalog_saved.insert(0, name_record(&name));
        Ok(Catalog {
            pool_name: name,
            volumes: records,
        })
    }
}
