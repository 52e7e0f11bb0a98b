//! Unit tests of the thin layer on a raid0 array of two in-memory members
//! with data checksums: reads and writes against a byte model, snapshots
//! that share until written, discards that give chunks back, and a reopen
//! that finds what was committed.

use super::ThinPool;
use crate::device::{DeviceRef, MemDevice};
use crate::meta::spacemap::pages_for;
use crate::raid::{Array, Geometry, MetaMirror, RaidLevel};
use crate::thin::store::{MetaLayout, MetaStore};
use crate::units::ChunkSize;
use proptest::prelude::*;
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const BLOCKS: u64 = 2048;
const UUID: [u8; 16] = [9; 16];
const VOL: u64 = 8 * MIB;

fn layout() -> MetaLayout {
    MetaLayout {
        meta_offset: MIB,
        msm_pages: pages_for(BLOCKS),
        meta_blocks: BLOCKS,
    }
}

fn geometry() -> Geometry {
    Geometry {
        level: RaidLevel::Raid0,
        stripe_unit: 64 << 10,
        data_start: 16 * MIB,
        member_data: vec![32 * MIB; 2],
    }
}

fn members() -> Vec<Arc<MemDevice>> {
    (0..2)
        .map(|i| Arc::new(MemDevice::new(&format!("m{i}"), 48 * MIB)))
        .collect()
}

fn mirror(devs: &[Arc<MemDevice>]) -> MetaMirror {
    MetaMirror::new(vec![(0, Some(devs[0].clone() as DeviceRef))])
}

fn array(devs: &[Arc<MemDevice>]) -> Arc<Array> {
    let m = devs.iter().map(|d| Some(d.clone() as DeviceRef)).collect();
    Arc::new(Array::new(geometry(), m))
}

fn chunk_size() -> u64 {
    geometry().stripe_width()
}

fn create(devs: &[Arc<MemDevice>]) -> ThinPool {
    create_on(devs.iter().map(|d| d.clone() as DeviceRef).collect())
}

/// A new pool on any two members (the first holds the metadata).
fn create_on(devs: Vec<DeviceRef>) -> ThinPool {
    let chunks = geometry().capacity() / chunk_size();
    let mirror = MetaMirror::new(vec![(0, Some(devs[0].clone()))]);
    let meta = MetaStore::create(
        mirror,
        layout(),
        UUID,
        "t",
        chunks,
        chunk_size(),
        2,
        256,
        true,
    )
    .unwrap();
    let array = Arc::new(Array::new(geometry(), devs.into_iter().map(Some).collect()));
    ThinPool::new(array, meta, ChunkSize::new(chunk_size()))
}

fn reopen(devs: &[Arc<MemDevice>]) -> ThinPool {
    let chunks = geometry().capacity() / chunk_size();
    let mut meta = MetaStore::open(mirror(devs), layout(), UUID, 2, chunks, 256).unwrap();
    let a = array(devs);
    meta.load(Some(a.clone())).unwrap();
    ThinPool::new(a, meta, ChunkSize::new(chunk_size()))
}

fn read(t: &ThinPool, vol: u64) -> Vec<u8> {
    let mut buf = vec![0u8; VOL as usize];
    t.read(vol, 0, &mut buf).unwrap();
    buf
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed * 131) as u8 | 1)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Writes and discards of any size and alignment, and commits: every
    /// byte equals the model, before and after a reopen.
    #[test]
    fn reads_return_what_was_written(
        ops in prop::collection::vec((0u64..VOL, 1u64..(600 << 10), 0u8..8), 1..40)
    ) {
        let devs = members();
        let t = create(&devs);
        t.create_volume(1).unwrap();
        let mut model = vec![0u8; VOL as usize];
        for (i, (off, len, kind)) in ops.into_iter().enumerate() {
            let len = len.min(VOL - off);
            match kind {
                0 => {
                    // Discard: the range reads as zeros (whole chunks are
                    // unmapped, partial ones written with zeros).
                    t.discard(1, off, len).unwrap();
                    model[off as usize..(off + len) as usize].fill(0);
                }
                1 => t.commit().unwrap(),
                _ => {
                    let data = pattern(len as usize, i as u64);
                    t.write(1, off, &data).unwrap();
                    model[off as usize..(off + len) as usize].copy_from_slice(&data);
                }
            }
        }
        prop_assert!(read(&t, 1) == model, "before the reopen");
        t.commit().unwrap();
        drop(t);
        let t = reopen(&devs);
        prop_assert!(read(&t, 1) == model, "after the reopen");
    }
}

#[test]
fn a_snapshot_shares_chunks_until_the_volume_writes_them() {
    let devs = members();
    let t = create(&devs);
    t.create_volume(1).unwrap();
    let base = pattern(VOL as usize, 1);
    t.write(1, 0, &base).unwrap();
    let used = |t: &ThinPool| t.meta.read().data.used();
    let full = used(&t);
    assert_eq!(full, VOL / chunk_size());
    t.share_volume(1, 2).unwrap();
    assert_eq!(used(&t), full, "a snapshot copies nothing");
    let cs = chunk_size() as usize;
    let patch = pattern(cs / 2, 9);
    t.write(1, 3 * cs as u64 + 100, &patch).unwrap();
    assert_eq!(used(&t), full + 1, "one chunk copied on write");
    let mut want = base.clone();
    want[3 * cs + 100..3 * cs + 100 + patch.len()].copy_from_slice(&patch);
    assert!(read(&t, 1) == want);
    assert!(read(&t, 2) == base, "the snapshot keeps its bytes");
    // Dropping the snapshot frees what only it held, in steps.
    t.delete_volume(2).unwrap();
    while t.release_step().unwrap() {
        t.commit().unwrap();
    }
    t.commit().unwrap();
    assert_eq!(used(&t), full, "the old copy of the written chunk is free");
    assert!(read(&t, 1) == want);
}

/// Look-ups are kept between changes of the metadata (`mapcache`): one
/// made before a snapshot, a commit, a discard or a copy-on-write must not
/// answer after it. Each answer is checked against the tree itself.
#[test]
fn kept_look_ups_follow_every_change_of_the_mappings() {
    let devs = members();
    let t = create(&devs);
    t.create_volume(1).unwrap();
    let cs = chunk_size();
    t.write(1, 0, &pattern(4 * cs as usize, 1)).unwrap();
    let state = |t: &ThinPool, c: u64| {
        let m = t.lookup(1, c).unwrap();
        // Asked twice: the second answer is the kept one.
        assert_eq!(t.lookup(1, c).unwrap(), m);
        m.map(|m| (m.phys, m.exclusive, m.new))
    };
    let first = state(&t, 3).expect("mapped");
    assert_eq!(
        (first.1, first.2),
        (true, true),
        "written in this transaction"
    );
    t.commit().unwrap();
    assert_eq!(state(&t, 3), Some((first.0, true, false)), "committed");
    t.share_volume(1, 2).unwrap();
    assert_eq!(
        state(&t, 3),
        Some((first.0, false, false)),
        "shared with a snapshot"
    );
    // A write copies it, as the snapshot keeps its bytes.
    t.write(1, 3 * cs + 4096, &[7; 4096]).unwrap();
    let copied = state(&t, 3).expect("mapped");
    assert_ne!(copied.0, first.0, "copied on write");
    assert_eq!((copied.1, copied.2), (true, true));
    let mut old = vec![0; 4096];
    t.read(2, 3 * cs + 4096, &mut old).unwrap();
    assert_eq!(
        old,
        pattern(4 * cs as usize, 1)[(3 * cs + 4096) as usize..][..4096]
    );
    t.discard(1, 3 * cs, cs).unwrap();
    assert_eq!(state(&t, 3), None, "discarded");
}

#[test]
fn discarded_chunks_go_back_to_the_pool() {
    let devs = members();
    let t = create(&devs);
    t.create_volume(1).unwrap();
    t.write(1, 0, &pattern(VOL as usize, 3)).unwrap();
    t.commit().unwrap();
    let cs = chunk_size();
    t.discard(1, cs, 4 * cs).unwrap();
    t.commit().unwrap();
    assert_eq!(
        t.mapped_chunks(1, 0, VOL / cs).unwrap().len() as u64,
        VOL / cs - 4
    );
    assert_eq!(t.meta.read().data.used(), VOL / cs - 4);
    let mut buf = vec![1u8; 4 * cs as usize];
    t.read(1, cs, &mut buf).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0),
        "a discarded chunk reads as zeros"
    );
}

/// A pool whose flush log an older build made small (a 32nd of the area)
/// gets a full one at its next commit, and the flushes after it go to the
/// new log: a power cut then loses none of them, as the replay reads the
/// log the superblock names. The flushes before it, through the small
/// log, are in that commit.
#[test]
fn flushes_after_a_commit_that_grew_the_log_survive_a_power_cut() {
    use crate::device::CrashSim;
    let mut sim = CrashSim::new(2, 48 * MIB, 5);
    let t = create_on(sim.devices.iter().map(|d| d.clone() as DeviceRef).collect());
    assert!(t.meta.write().create_log_of(16).unwrap());
    t.create_volume(1).unwrap();
    t.commit().unwrap();
    let log_len = |t: &ThinPool| t.meta.read().log_blocks().len() as u64;
    assert_eq!(log_len(&t), 16);
    let mut model = vec![0u8; VOL as usize];
    let mut put = |t: &ThinPool, off: u64, len: usize, seed: u64| {
        let data = pattern(len, seed);
        t.write(1, off, &data).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
        t.flush().unwrap();
    };
    for i in 0..4 {
        put(&t, i * MIB, 64 << 10, i);
    }
    t.commit().unwrap();
    let grown = log_len(&t);
    assert!(grown >= 64, "the commit did not grow the log: {grown}");
    let before = t.flush_stats();
    for i in 0..12u64 {
        // New chunks, and overwrites of committed ones (journaled).
        put(
            &t,
            (i % 6) * MIB + 4096 * i,
            4096 + 1000 * i as usize,
            100 + i,
        );
    }
    let after = t.flush_stats();
    assert_eq!(
        after.commits, before.commits,
        "a flush fell back to a commit"
    );
    assert!(after.log_rounds >= before.log_rounds + 12);
    let images = sim.crash();
    drop(t);
    let t = reopen(&images);
    assert_eq!(log_len(&t), grown);
    let replayed = t.replay_log().unwrap();
    assert!(replayed.records >= 12, "{replayed:?}");
    assert!(read(&t, 1) == model, "a flushed write lost");
}
