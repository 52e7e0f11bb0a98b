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
    create_with(dev, false)
}

fn create_with(dev: &Arc<MemDevice>, checksums: bool) -> MetaStore {
    MetaStore::create(
        mirror(dev),
        layout(),
        UUID,
        "t",
        CHUNKS,
        65536,
        1,
        256,
        checksums,
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
        let (root, old) = btree::insert(s, &spec, vr.root, k, &mapping_value(c)).unwrap();
        assert!(old.is_none());
        vr.root = root;
        vr.mapped += 1;
    }
    s.set_volume_root(vol, vr).unwrap();
}

/// (virtual chunk, data chunk) of every mapping of `vol`.
fn mappings(s: &MetaStore, vol: u64) -> Vec<(u64, Chunk)> {
    let vr = s.volume_root(vol).unwrap();
    let mut out = Vec::new();
    btree::walk(
        s,
        &mapping_spec(vol),
        vr.root,
        0,
        u64::MAX,
        &mut |k, v, _| {
            out.push((k, mapped_chunk(v)));
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
    let mut s = reopen(&dev);
    assert_eq!(
        (mappings(&s, 1), mappings(&s, 2), s.msm().used()),
        committed
    );
    // Runs of intents wait for this build's first commit (the pool may
    // have been committed by an older one that cannot read them).
    assert!(!s.log_runs(), "no runs before a commit by this build");
    map(&mut s, 4, 0..1);
    s.commit().unwrap();
    assert!(s.log_runs());
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
    let chunks: Vec<Chunk> = mappings(&s, 1).iter().map(|(_, c)| *c).collect();
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

/// The store's state a test compares: mappings of volumes 1 and 2, the
/// metadata blocks in use, and the transaction.
type Mappings = Vec<(u64, Chunk)>;

fn state(s: &MetaStore) -> (Mappings, Mappings, u64, u64) {
    (
        mappings(s, 1),
        mappings(s, 2),
        s.msm().used(),
        s.committed().txid,
    )
}

#[test]
fn a_commit_cut_at_any_write_reopens_whole_at_one_transaction() {
    // The space map switches page slots at every commit (the selector in
    // the superblock says which slot is current): a power cut at each
    // write of a commit in turn, with unflushed writes kept or lost at
    // random and the last one torn, must reopen exactly the old or the new
    // transaction, with counts that match what it maps.
    let (mut saw_old, mut saw_new) = (0, 0);
    for cut in 0..30u64 {
        let mut sim = crate::device::CrashSim::new(1, 64 << 20, 0x5eed + cut);
        let dev = sim.devices[0].clone() as DeviceRef;
        let m = || MetaMirror::new(vec![(0, Some(dev.clone()))]);
        let mut s =
            MetaStore::create(m(), layout(), UUID, "t", CHUNKS, 65536, 1, 256, false).unwrap();
        map(&mut s, 1, 0..900);
        s.commit().unwrap();
        let old = state(&s);
        // The commit under test: new mappings, and some released.
        map(&mut s, 2, 0..700);
        let mut vr = s.volume_root(1).unwrap();
        for k in 0..300 {
            vr.root = btree::remove(&mut s, &mapping_spec(1), vr.root, k)
                .unwrap()
                .0;
            vr.mapped -= 1;
        }
        s.set_volume_root(1, vr).unwrap();
        sim.cut_after(cut);
        let committed = s.commit().is_ok() && !sim.power_lost();
        let new = state(&s);
        drop(s);
        // Several draws of what survives the same cut.
        for draw in 0..5 {
            let img = sim.crash().remove(0);
            let again = MetaStore::open(
                MetaMirror::new(vec![(0, Some(img as DeviceRef))]),
                layout(),
                UUID,
                1,
                CHUNKS,
                256,
            )
            .map(|mut s| s.load(None).map(|()| s));
            let again = match again {
                Ok(Ok(s)) => s,
                Ok(Err(e)) | Err(e) => panic!("cut at write {cut}/{draw}: reopen failed: {e}"),
            };
            let got = state(&again);
            saw_old += (got == old) as u32;
            saw_new += (got == new) as u32;
            if committed {
                assert_eq!(
                    got, new,
                    "cut at write {cut}/{draw}: a finished commit was lost"
                );
            } else {
                assert!(got == old || got == new, "cut at write {cut}/{draw}: a mix");
            }
            for (_, c) in mappings(&again, 1).iter().chain(&mappings(&again, 2)) {
                assert_eq!(
                    again.data_count(*c).unwrap(),
                    1,
                    "cut {cut}/{draw}: chunk {c}"
                );
            }
        }
    }
    // The cuts fell both before and after the commit point.
    assert!(saw_old > 0 && saw_new > 0, "old {saw_old}, new {saw_new}");
}

#[test]
fn the_catalog_tree_keeps_every_record_through_changes_and_reopens() {
    use crate::thin::store::catalog::VolumeRecord;
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    let rec = |id: u64, name: String| VolumeRecord {
        id,
        name,
        snapshot_of: id.is_multiple_of(3).then_some(id - 1),
        cloned_from: id.is_multiple_of(5).then(|| format!("v{}@s", id - 1)),
        size: id << 20,
        created: 1_700_000_000 + id,
        uuid: [id as u8; 16],
    };
    let empty = {
        s.commit().unwrap();
        s.msm().used()
    };
    // Far more records than one leaf holds: the tree splits.
    for id in 1..=400 {
        s.catalog_mut().volumes.push(rec(id, format!("v{id}")));
    }
    s.commit().unwrap();
    assert!(s.catalog_is_tree());
    let model = s.catalog().clone();
    assert_eq!(reopen(&dev).catalog(), &model);
    // Remove every third record, rename others, add new ones.
    {
        let c = s.catalog_mut();
        c.volumes.retain(|r| r.id % 3 != 1);
        for r in c.volumes.iter_mut().filter(|r| r.id % 7 == 0) {
            r.name = format!("renamed-{}", r.id);
        }
        for id in 401..=450 {
            c.volumes.push(rec(id, format!("v{id}")));
        }
    }
    s.commit().unwrap();
    let model = s.catalog().clone();
    let again = reopen(&dev);
    assert_eq!(again.catalog(), &model);
    assert!(again
        .catalog()
        .volumes
        .iter()
        .any(|r| r.name == "renamed-14"));
    // Every record gone: the tree's blocks are all given back.
    s.catalog_mut().volumes.clear();
    s.commit().unwrap();
    assert!(reopen(&dev).catalog().volumes.is_empty());
    assert_eq!(s.msm().used(), empty, "catalog blocks leaked");
}

/// A record of intents written as a pair reads as its newest whole
/// version, whichever of its two blocks holds it; a torn rewrite leaves
/// the version before; the records after the pair follow it.
#[test]
fn a_pair_reads_as_its_newest_whole_version_and_the_log_goes_on_after_it() {
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    assert!(s.create_log().unwrap());
    s.commit().unwrap();
    let read = |s: &MetaStore| -> Vec<(Vec<u8>, u64)> {
        s.read_log()
            .into_iter()
            .map(|r| (r.payload, r.slot))
            .collect()
    };
    let rec = |p: &[u8], slot: u64| (p.to_vec(), slot);
    s.write_log_durable(0, &[(1, b"one", &[])]).unwrap();
    s.write_log_pair(2, 1, 1, b"a").unwrap();
    assert_eq!(read(&s), vec![rec(b"one", 0), rec(b"a", 1)]);
    s.write_log_pair(2, 1, 2, b"ab").unwrap();
    s.write_log_pair(2, 1, 3, b"abc").unwrap();
    s.write_log_durable(3, &[(3, b"three", &[])]).unwrap();
    assert_eq!(
        read(&s),
        vec![rec(b"one", 0), rec(b"abc", 1), rec(b"three", 3)]
    );
    // Version 4 torn in the second block: version 3 stands.
    s.write_log_pair(2, 1, 4, b"abcd").unwrap();
    assert_eq!(read(&s)[1], rec(b"abcd", 2));
    s.write_log_data(2, &[0xa5; BLOCK_SIZE]).unwrap();
    assert_eq!(read(&s)[1], rec(b"abc", 1));
    // Version 3 torn too (as if version 5 were): version 2 is gone
    // already, so the log ends after record 1.
    s.write_log_data(1, &[0x5a; BLOCK_SIZE]).unwrap();
    assert_eq!(read(&s), vec![rec(b"one", 0)]);
    // A version in the second block alone is the record.
    s.write_log_pair(2, 1, 2, b"ab").unwrap();
    assert_eq!(read(&s)[1], rec(b"ab", 2));
    // Versions start at 1; a pair needs its two blocks.
    assert!(s.write_log_pair(2, 1, 0, b"x").is_err());
    let last = s.log_blocks().len() as u64 - 1;
    assert!(s.write_log_pair(9, last, 1, b"x").is_err());
}

#[test]
fn checksum_groups_read_through_the_cache_follow_every_change() {
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create_with(&dev, true);
    let key = |c: u64, g: u64| super::csum::csum_key(Chunk(c), g * super::csum::GROUP_BYTES);
    for c in 0..50u64 {
        s.csum_put(key(c, 0), &[c as u32; 16]).unwrap();
    }
    s.commit().unwrap();
    // Read (and so cached), then changed, then read again: the change.
    assert_eq!(s.csum_get(key(7, 0)).unwrap(), Some([7; 16]));
    s.csum_put(key(7, 0), &[70; 16]).unwrap();
    assert_eq!(s.csum_get(key(7, 0)).unwrap(), Some([70; 16]));
    // A group put is kept as put: the next write to it (after the commit
    // that put it) needs no walk of the tree.
    s.csum_put(key(60, 0), &[60; 16]).unwrap();
    assert_eq!(s.csum_cache.holds(key(60, 0)), Some([60; 16]));
    // A freed chunk's groups are gone, cached or not.
    assert_eq!(s.csum_get(key(9, 0)).unwrap(), Some([9; 16]));
    s.csum_forget_chunk(Chunk(9)).unwrap();
    assert_eq!(s.csum_get(key(9, 0)).unwrap(), None);
    s.commit().unwrap();
    let again = reopen(&dev);
    assert_eq!(again.csum_get(key(7, 0)).unwrap(), Some([70; 16]));
    assert_eq!(again.csum_get(key(9, 0)).unwrap(), None);
    assert_eq!(again.csum_get(key(8, 0)).unwrap(), Some([8; 16]));
}

#[test]
fn a_new_log_takes_what_the_area_holds_beyond_4_mib() {
    use super::log::{log_size, LOG_BLOCKS};
    // Areas up to 4 MiB keep a 32nd (a user's 1 MiB area: 8 blocks).
    assert_eq!(log_size(256, 250), 8);
    assert_eq!(log_size(1024, 1000), 32);
    // Beyond 4 MiB: what is beyond, up to the most a directory lists.
    assert_eq!(log_size(1024 + 300, 1024 + 301), 300);
    assert_eq!(log_size(1024 + 600, 1024 + 590), LOG_BLOCKS);
    assert_eq!(log_size(1 << 20, 1 << 20), LOG_BLOCKS);
    // An area mostly used leaves 4 MiB free, or takes a 32nd at least.
    assert_eq!(log_size(4096, 1200), 1200 - 1025);
    assert_eq!(log_size(4096, 1100), 128);
}

#[test]
fn an_area_over_4_mib_gets_a_full_log() {
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    assert!(s.create_log().unwrap());
    s.commit().unwrap();
    assert_eq!(s.log_blocks().len() as u64, super::log::LOG_BLOCKS);
    let used = s.msm().used();
    assert!(
        BLOCKS - used >= 1024,
        "the log left {} blocks free",
        BLOCKS - used
    );
}

/// A log an older build made small is replaced at a commit: the new one is
/// not used before the commit names it (records, and raid5 partial
/// parities, go to the committed log only), the old one's records stay
/// readable until then (its blocks are not reused), and the commit that
/// names the new one releases every block of the old one.
#[test]
fn a_small_log_is_replaced_by_a_larger_one_at_a_commit() {
    use super::log::{LOG_BLOCKS, REGROW_SHARE};
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    s.set_log_ring(true);
    assert!(s.create_log_of(16).unwrap());
    s.commit().unwrap();
    assert!(s.log_ready());
    let (old_dir, old) = (s.log_dir(), s.log_blocks().to_vec());
    let used = s.msm().used();
    s.write_log_durable(0, &[(1, b"before", &[])]).unwrap();
    // Replaced in memory: not ready, no ring, until a commit names it.
    // It takes an eighth of what is available (a full log would leave
    // this area short of room for checksums and mappings).
    let want = (s.msm().available() / REGROW_SHARE).min(LOG_BLOCKS);
    assert!(want > 32, "{want}");
    assert!(s.regrow_log().unwrap());
    assert_eq!(s.log_blocks().len() as u64, want);
    assert!(!s.log_ready(), "a log no commit named is in use");
    assert!(
        s.log_ring().is_empty(),
        "partial parities in an unnamed log"
    );
    assert!(!s.regrow_log().unwrap(), "replaced twice in a transaction");
    // A crash now: the committed log, its record, its blocks whole.
    let crashed = reopen(&dev);
    assert_eq!(crashed.log_dir(), old_dir);
    assert_eq!(crashed.log_blocks(), old.as_slice());
    let got: Vec<Vec<u8>> = crashed.read_log().into_iter().map(|r| r.payload).collect();
    assert_eq!(got, vec![b"before".to_vec()]);
    drop(crashed);
    s.commit().unwrap();
    assert!(s.log_ready());
    assert!(!s.log_ring().is_empty());
    for b in std::iter::once(old_dir).chain(old.iter().copied()) {
        assert_eq!(s.msm().count(b), 0, "old log block {b} kept");
    }
    assert_eq!(s.msm().used(), used - 17 + want + 1);
    let again = reopen(&dev);
    assert_eq!(again.log_blocks().len() as u64, want);
    assert!(again.read_log().is_empty(), "a new log starts empty");
    // Not replaced again while less space is available than that took.
    s.write_log_durable(0, &[(1, b"after", &[])]).unwrap();
    assert!(!s.regrow_log().unwrap());
    drop(again);
    let got: Vec<Vec<u8>> = reopen(&dev)
        .read_log()
        .into_iter()
        .map(|r| r.payload)
        .collect();
    assert_eq!(got, vec![b"after".to_vec()]);
}

/// A log half the size a replacement would have, or more, stays: a pool
/// whose metadata filled up since does not swap logs at every commit.
#[test]
fn a_log_at_least_half_the_new_size_stays() {
    use super::log::REGROW_SHARE;
    let dev = Arc::new(MemDevice::new("m0", 64 << 20));
    let mut s = create(&dev);
    // Half of an eighth of what is available now, and a little more.
    let half = s.msm().available() / REGROW_SHARE / 2 + 8;
    assert!(s.create_log_of(half).unwrap());
    s.commit().unwrap();
    assert!(!s.regrow_log().unwrap());
    assert_eq!(s.log_blocks().len() as u64, half);
}
