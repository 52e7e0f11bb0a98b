//! The checker: verifies every copy of every reachable metadata block, every
//! metadata and data reference count, and the catalog against the trees.
//! Over-counted blocks and chunks are leaks (reclaimable); under-counted ones
//! are errors (something in use could be handed out again).

use super::Pool;
use crate::error::Result;
use crate::meta::btree;
use crate::meta::codec::{get_u32, get_u64, BLOCK_SIZE};
use crate::meta::header::{BlockKind, Header};
use crate::meta::node::Node;
use crate::thin::store::catalog_tree::CATALOG_SPEC;
use crate::thin::store::csum::CSUM_SPEC;
use crate::thin::store::superblock::Superblock;
use crate::thin::store::MetaStore;
use crate::thin::store::Place;
use crate::thin::store::{mapping_spec, VolumeRoot, DSM_SPEC, RELEASING, VOLUMES_SPEC};
use crate::units::Block;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Serialize, serde::Deserialize, Debug, Default, Clone)]
pub struct CheckReport {
    pub pool: String,
    pub transaction: u64,
    /// Damage that makes data or metadata untrustworthy.
    pub errors: Vec<String>,
    /// Copies of metadata that failed validation while another copy was good.
    pub damaged_copies: Vec<String>,
    pub leaked_blocks: u64,
    pub leaked_chunks: u64,
    pub blocks_checked: u64,
    pub chunks_checked: u64,
    pub volumes_checked: u64,
    /// Trees of removed volumes whose release is not finished (a crash
    /// interrupted it; the next open or removal goes on with it).
    #[serde(default)]
    pub releasing: u64,
    pub repaired: bool,
}

impl CheckReport {
    pub fn clean(&self) -> bool {
        self.errors.is_empty()
            && self.damaged_copies.is_empty()
            && self.leaked_blocks == 0
            && self.leaked_chunks == 0
    }
}

impl Pool {
    /// Check the pool's metadata; with `repair`, rewrite damaged copies and
    /// reclaim leaks, then commit.
    pub fn check(&self, repair: bool) -> Result<CheckReport> {
        let _ops = self.s.ops.lock();
        let thin = self.thin();
        let _gate = thin.exclusive();
        thin.commit_locked()?;
        let mut meta = thin.meta.write();
        let mut r = CheckReport {
            pool: self.name(),
            transaction: meta.committed().txid,
            ..Default::default()
        };
        r.damaged_copies.extend(
            self.warnings()
                .iter()
                .filter(|w| w.contains("label"))
                .cloned(),
        );
        r.damaged_copies
            .extend(meta.superblock_problems.iter().cloned());
        let (expected_meta, expected_data, stored_data) = count_references(&meta, &mut r)?;
        r.damaged_copies.extend(meta.blocks.mirror.events());
        check_copies(&meta, &expected_meta, &mut r, repair);
        // Metadata block counts.
        let msm_counts = meta.msm().counts().to_vec();
        let mut fixes = Vec::new();
        for (b, &stored) in msm_counts.iter().enumerate().skip(1) {
            if stored == crate::meta::spacemap::HOLE {
                continue;
            }
            let exp = expected_meta.get(&Block(b as u64)).copied().unwrap_or(0);
            if stored < exp {
                r.errors.push(format!(
                    "metadata block {b}: referenced {exp} times but counted {stored}"
                ));
            } else if stored > exp {
                r.leaked_blocks += 1;
                fixes.push((Block(b as u64), exp));
            }
        }
        // Data chunk counts.
        let total = meta.data.total();
        let mut data_fixes = Vec::new();
        let all: HashSet<u64> = expected_data
            .keys()
            .chain(stored_data.keys())
            .copied()
            .collect();
        for c in all {
            let exp = expected_data.get(&c).copied().unwrap_or(0);
            let stored = stored_data.get(&c).copied().unwrap_or(0);
            if c >= total {
                r.errors.push(format!(
                    "data chunk {c} is beyond the pool's {total} chunks"
                ));
            } else if stored < exp {
                r.errors.push(if stored == 0 {
                    format!("data chunk {c} is mapped {exp} times but marked free")
                } else {
                    format!("data chunk {c}: mapped {exp} times but counted {stored}")
                });
            } else if stored > exp {
                r.leaked_chunks += 1;
                data_fixes.push((c, stored, exp));
            }
        }
        r.chunks_checked = expected_data.len() as u64;
        if repair && r.errors.is_empty() {
            for (b, exp) in fixes {
                meta.msm_mut().repair(b, exp);
            }
            for (c, stored, exp) in data_fixes {
                meta.data.set_count(crate::units::Chunk(c), stored, exp);
            }
            drop(meta);
            thin.commit_locked()?;
            r.repaired = true;
        }
        Ok(r)
    }
}

/// Reference counts of data chunks.
type Counts = HashMap<u64, u32>;
/// Reference counts of metadata blocks.
type BlockCounts = HashMap<Block, u32>;

/// A metadata location to verify on every copy: where, description, validator.
type CopyCheck = (
    Loc,
    String,
    Box<dyn Fn(&[u8]) -> std::result::Result<(), String>>,
);

/// Where a checked structure lives: a superblock slot (fixed area only),
/// or a block or space-map page (fixed area or a metadata extent).
enum Loc {
    Superblock(u64),
    Place(Place),
}

/// Count the references of mapping tree `root` (of volume `id`): its
/// blocks (each reach from a parent) and, for blocks not seen before
/// (shared with a tree counted already), the data chunks its leaves map.
/// Returns those chunks.
fn count_mapping(
    meta: &MetaStore,
    id: u64,
    root: Block,
    exp_meta: &mut BlockCounts,
    exp_data: &mut Counts,
    seen: &mut HashSet<Block>,
) -> Result<Vec<u64>> {
    let mut chunks = Vec::new();
    btree::visit_blocks(
        meta,
        &mapping_spec(id),
        root,
        &mut |b, node: &Node, first| {
            *exp_meta.entry(b).or_default() += 1;
            if first && node.is_leaf() {
                for i in 0..node.len() {
                    let phys = get_u64(node.value(i), 0);
                    *exp_data.entry(phys).or_default() += 1;
                    chunks.push(phys);
                }
            }
            Ok(())
        },
        seen,
    )?;
    Ok(chunks)
}

fn count_references(
    meta: &MetaStore,
    r: &mut CheckReport,
) -> Result<(BlockCounts, Counts, Counts)> {
    let mut exp_meta: BlockCounts = HashMap::new();
    let mut exp_data: Counts = HashMap::new();
    let mut stored_data: Counts = HashMap::new();
    for b in meta.catalog_blocks()? {
        *exp_meta.entry(b).or_default() += 1;
    }
    let mut catalog_seen = HashSet::new();
    btree::visit_blocks(
        meta,
        &CATALOG_SPEC,
        meta.catalog_root(),
        &mut |b, _: &Node, _| {
            *exp_meta.entry(b).or_default() += 1;
            Ok(())
        },
        &mut catalog_seen,
    )?;
    // Volumes tree, and the mapping trees its leaves point at.
    let mut roots: BTreeMap<u64, VolumeRoot> = BTreeMap::new();
    let mut seen = HashSet::new();
    btree::visit_blocks(
        meta,
        &VOLUMES_SPEC,
        meta.volumes_root,
        &mut |b, node: &Node, first| {
            *exp_meta.entry(b).or_default() += 1;
            if first && node.is_leaf() {
                for i in 0..node.len() {
                    roots.insert(node.keys[i], VolumeRoot::decode(node.value(i)));
                }
            }
            Ok(())
        },
        &mut seen,
    )?;
    let total = meta.data.total();
    let cat = meta.catalog();
    for rec in &cat.volumes {
        if !roots.contains_key(&rec.id) {
            r.errors.push(format!(
                "catalog volume '{}' (id {}) has no mapping entry",
                rec.name, rec.id
            ));
        }
    }
    let mut mapping_seen = HashSet::new();
    for (id, vr) in &roots {
        r.volumes_checked += 1;
        if *id >= RELEASING {
            // A removed volume's tree, released in steps: counted, not named.
            r.releasing += 1;
            count_mapping(
                meta,
                *id,
                vr.root,
                &mut exp_meta,
                &mut exp_data,
                &mut mapping_seen,
            )?;
            continue;
        }
        let Some(rec) = cat.by_id(*id) else {
            r.errors.push(format!(
                "mapping tree for volume id {id} is not in the catalog"
            ));
            continue;
        };
        let limit = meta.committed().chunk().count(rec.size);
        let mut mapped = 0u64;
        let mut beyond = count_mapping(
            meta,
            *id,
            vr.root,
            &mut exp_meta,
            &mut exp_data,
            &mut mapping_seen,
        )?
        .iter()
        .filter(|&&phys| phys >= total)
        .count() as u64;
        btree::walk(
            meta,
            &mapping_spec(*id),
            vr.root,
            0,
            u64::MAX,
            &mut |k, _, _| {
                mapped += 1;
                if k >= limit {
                    beyond += 1;
                }
                Ok(true)
            },
        )?;
        if beyond > 0 {
            r.errors.push(format!(
                "volume '{}': {beyond} mappings beyond its size or the pool",
                rec.name
            ));
        }
        if mapped != vr.mapped {
            r.errors.push(format!(
                "volume '{}': {} chunks mapped but {} recorded",
                rec.name, mapped, vr.mapped
            ));
        }
    }
    let mut dsm_seen = HashSet::new();
    btree::visit_blocks(
        meta,
        &DSM_SPEC,
        meta.dsm_root(),
        &mut |b, node: &Node, first| {
            *exp_meta.entry(b).or_default() += 1;
            if first && node.is_leaf() {
                for i in 0..node.len() {
                    stored_data.insert(node.keys[i], get_u32(node.value(i), 0));
                }
            }
            Ok(())
        },
        &mut dsm_seen,
    )?;
    // Data checksums: their tree, and the intent block (never freed).
    let mut csum_seen = HashSet::new();
    btree::visit_blocks(
        meta,
        &CSUM_SPEC,
        meta.csum_root(),
        &mut |b, _: &Node, _| {
            *exp_meta.entry(b).or_default() += 1;
            Ok(())
        },
        &mut csum_seen,
    )?;
    if let Some(b) = meta.intent_block() {
        *exp_meta.entry(b).or_default() += 1;
    }
    // The flush log: its directory and blocks (never freed).
    if !meta.log_dir().is_none() {
        *exp_meta.entry(meta.log_dir()).or_default() += 1;
    }
    for &b in meta.log_blocks() {
        *exp_meta.entry(b).or_default() += 1;
    }
    // Metadata extents: the data chunks they take.
    for c in meta.extent_chunks() {
        *exp_data.entry(c.index()).or_default() += 1;
    }
    r.blocks_checked = exp_meta.len() as u64;
    Ok((exp_meta, exp_data, stored_data))
}

/// Validate every copy of every referenced block, space-map page and the
/// current superblock; rewrite bad copies from a good one when repairing.
fn check_copies(meta: &MetaStore, expected: &BlockCounts, r: &mut CheckReport, repair: bool) {
    let layout = *meta.layout();
    let sb = meta.committed().clone();
    let tag = meta.pool_tag();
    let mut items: Vec<CopyCheck> = Vec::new();
    let off = Superblock::slot_offset(layout.meta_offset, sb.txid);
    let want = sb.txid;
    items.push((
        Loc::Superblock(off),
        "current superblock".into(),
        Box::new(move |b: &[u8]| {
            let s = Superblock::decode(b).map_err(|e| e.to_string())?;
            if s.txid != want {
                Err(format!("holds transaction {} not {want}", s.txid))
            } else {
                Ok(())
            }
        }),
    ));
    for p in 0..sb.msm_pages as usize {
        if !meta.blocks.place_exists(Place::Page(p, 0)) {
            continue;
        }
        let slot = sb.selector_bit(p);
        let nr = (2 * p + slot) as u64;
        let max = sb.txid;
        items.push((
            Loc::Place(Place::Page(p, slot)),
            format!("space-map page {p}"),
            Box::new(move |b: &[u8]| {
                Header::validate(b, BlockKind::SpaceMap, nr, tag, max)
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }),
        ));
    }
    let catalog: HashSet<Block> = meta
        .catalog_blocks()
        .unwrap_or_default()
        .into_iter()
        .collect();
    // Log blocks hold records of any earlier transaction, or nothing yet
    // (replay reads what is current): not checked here.
    let log: HashSet<Block> = meta.log_blocks().iter().copied().collect();
    let mut blocks: Vec<Block> = expected
        .keys()
        .copied()
        .filter(|b| !log.contains(b))
        .collect();
    blocks.sort_unstable();
    for b in blocks {
        let kind = if catalog.contains(&b) {
            BlockKind::Catalog
        } else if meta.intent_block() == Some(b) {
            BlockKind::Intent
        } else if meta.log_dir() == b {
            BlockKind::LogDir
        } else {
            BlockKind::Node
        };
        let max = sb.txid;
        items.push((
            Loc::Place(Place::Block(b)),
            format!("metadata block {b} ({kind:?})"),
            Box::new(move |blk: &[u8]| {
                Header::validate(blk, kind, b.index(), tag, max).map_err(|e| e.to_string())?;
                if kind == BlockKind::Node {
                    Node::decode(blk).map_err(|e| e.to_string())?;
                }
                Ok(())
            }),
        ));
    }
    for (loc, what, valid) in items {
        let copies: Vec<(usize, String, std::io::Result<Vec<u8>>)> = match loc {
            Loc::Place(p) => meta.blocks.read_place_copies(p),
            Loc::Superblock(off) => meta
                .blocks
                .mirror
                .copies()
                .iter()
                .enumerate()
                .filter_map(|(idx, (member, dev))| {
                    let dev = dev.as_ref()?;
                    let mut b = vec![0u8; BLOCK_SIZE];
                    let r = meta.blocks.mirror.read_copy(idx, off, &mut b).map(|()| b);
                    Some((idx, format!("copy on member {member} ({})", dev.name()), r))
                })
                .collect(),
        };
        let mut good: Option<Vec<u8>> = None;
        let mut bad = Vec::new();
        for (idx, desc, res) in copies {
            match res
                .map_err(|e| e.to_string())
                .and_then(|b| valid(&b).map(|()| b))
            {
                Ok(b) => good = Some(b),
                Err(why) => bad.push((idx, format!("{what}, {desc}: {why}"))),
            }
        }
        match &good {
            None => r.errors.push(format!(
                "{what}: no valid copy ({})",
                bad.iter()
                    .map(|b| b.1.clone())
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
            Some(g) => {
                for (idx, msg) in bad {
                    r.damaged_copies.push(msg);
                    if repair {
                        let _ = match loc {
                            Loc::Place(p) => meta.blocks.rewrite_place_copy(p, idx, g),
                            Loc::Superblock(off) => meta.blocks.mirror.write_copy(idx, off, g),
                        };
                    }
                }
            }
        }
    }
    if repair {
        let _ = meta.blocks.flush_meta();
    }
}
