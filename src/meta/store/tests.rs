//! Unit tests of the metadata store on one in-memory copy: what a commit
//! makes durable, what a reopen finds, and that releasing a volume gives
//! back every metadata block and data chunk it held.

use super::*;
use crate::device::{DeviceRef, MemDevice};
use crate::meta::spacemap::pages_for;
use std::sync::Arc;

const BLOCKS: u64 = 2048;
const UUID: [u8; 16] = [7; 16];
const CHUNKS: u64 = 4096;

fn layout() -> MetaLayout {
    MetaLayout {
        meta_offset: 1 << 20,
        msm_pages: pages_for(BLOCKS),
        meta_blocks: BLOCKS,
    }
}

fn mirror(dev: &Arc<MemDevice>) -> MetaMirror {
    MetaMirror::new(vec![(0, Some(dev.clone() as DeviceRef))])
}

fn create(dev: &Arc<MemDevice>) -> MetaStore {
    MetaStore::create(
        mirror(dev),
        layout(),
        UUID,
        "t",
        CHUNKS,
        65536,
        1,
        256,
        false,
    )
    .unwrap()
}

fn reopen(dev: &Arc<MemDevice>) -> MetaStore {
    let mut s = MetaStore::open(mirror(dev), layout(), UUID, 1, CHUNKS, 256).unwrap();
    s.load(None).unwrap();
    s
}

/// Map virtual chunks `keys` of volume `vol` to fresh data chunks.
fn map(s: &mut MetaStore, vol: u64, keys: std::ops::Range<u64>) {
    let spec = mapping_spec(vol);
    let mut vr = s.volume_root(vol).unwrap();
    for k in keys {
        let c = s.data_alloc().unwrap();
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&c.to_le_bytes());
        let (root, old) = btree::insert(s, &spec, vr.root, k, &v).unwrap();
        assert!(old.is_none());
        vr.root = root;
        vr.mapped += 1;
    }
    s.set_volume_root(vol, vr).unwrap();
}

/// (virtual chunk, data chunk) of every mapping of `vol`.
fn mappings(s: &MetaStore, vol: u64) -> Vec<(u64, u64)> {
    let vr = s.volume_root(vol).unwrap();
    let mut out = Vec::new();
    btree::walk(
        s,
        &mapping_spec(vol),
        vr.root,
        0,
        u64::MAX,
        &mut |k, v, _| {
            out.push((k, u64::from_le_bytes(v[..8].try_into().unwrap_or_default())));
            Ok(true)
        },
    )
    .unwrap();
    out
}

#[test]
fn a_reopen_finds_the_last_commit_and_nothing_after_it() {
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    map(&mut s, 1, 0..600);
    map(&mut s, 2, 100..150);
    s.commit().unwrap();
    let committed = (mappings(&s, 1), mappings(&s, 2), s.msm().used());
    // Changes after the commit: a crash (a drop without commit) loses them.
    map(&mut s, 1, 600..900);
    map(&mut s, 3, 0..10);
    drop(s);
    let s = reopen(&dev);
    assert_eq!(
        (mappings(&s, 1), mappings(&s, 2), s.msm().used()),
        committed
    );
    assert!(mappings(&s, 3).is_empty());
    assert_eq!(s.volume_root(1).unwrap().mapped, 600);
    // Every data chunk mapped is counted once, and only those.
    for (_, c) in mappings(&s, 1).iter().chain(&mappings(&s, 2)) {
        assert_eq!(s.data_count(*c).unwrap(), 1, "chunk {c}");
    }
}

#[test]
fn every_commit_reopens_at_its_transaction() {
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    for round in 0..6u64 {
        map(&mut s, 1, round * 50..(round + 1) * 50);
        s.commit().unwrap();
        let txid = s.committed().txid;
        let again = reopen(&dev);
        assert_eq!(again.committed().txid, txid, "round {round}");
        assert_eq!(mappings(&again, 1).len() as u64, (round + 1) * 50);
    }
}

#[test]
fn releasing_a_volume_gives_back_every_block_and_chunk() {
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    s.commit().unwrap();
    let empty = s.msm().used();
    map(&mut s, 1, 0..2000);
    s.commit().unwrap();
    assert!(s.msm().used() > empty);
    let chunks: Vec<u64> = mappings(&s, 1).iter().map(|(_, c)| *c).collect();
    s.release_volume(1).unwrap();
    s.commit().unwrap();
    // Released in bounded steps, each its own transaction.
    while s.prune_released(64).unwrap() {
        s.commit().unwrap();
    }
    s.commit().unwrap();
    let s = reopen(&dev);
    assert_eq!(s.msm().used(), empty, "metadata blocks leaked");
    for c in chunks {
        assert_eq!(s.data_count(c).unwrap(), 0, "chunk {c} leaked");
    }
}
