//! Redundant pools with one member that lies (loses, misplaces or tears a
//! write it reports done). RAID5 pools grown by `pool add`, whose chunks
//! are narrower than their rows, so whole-chunk writes are
//! reconstruct-writes (`raid/array/rcw.rs`); random campaigns on grown
//! raid5 pools and on ones that never grew; a raid5 reshape and a raid1
//! resync with the lie while they run. Each ends with the lying member
//! failed: every byte must read back.

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use vpool::device::{BlockDevice, DeviceRef};
use vpool::raid::RaidLevel;
use vpool::Pool;

const UNIT: u64 = 16 * 1024;

/// A raid5 pool grown by `pool add` (x3 to x4, volume "a" on it): its
/// chunks (one x3 row: two 16 KiB units) are narrower than its rows
/// (three units), so a write of whole chunks writes parts of rows.
fn grown_pool() -> (Cached, Pool) {
    let (m, devs) = cached_members(mem_devices(4, 32 * MIB));
    let pool = create_with_unit(RaidLevel::Raid5, devs[..3].to_vec(), UNIT);
    pool.add_member(devs[3].clone(), false).unwrap();
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    pool.create_volume("a", 4 * MIB).unwrap();
    pool.commit().unwrap();
    (m, pool)
}

/// On a grown raid5 pool, a chunk's whole write over part of a row used
/// to be a read-modify-write whose old bytes came from the members: over
/// free space, or a chunk of this transaction, no checksum covers them,
/// so a unit a member's lost write left stale went into the new parity,
/// and once that member was lost the unit rebuilt wrong. Such writes now
/// take the parity from the row's other units, judged by their checksums
/// (a reconstruct-write). Chunks 0-2 are written one by one (chunk 1 is
/// row 0's third unit and row 1's first), a member losing a write of
/// chunk 1's, then chunks 1-2 are written again whole in one write (row
/// 0's third unit a part of a row, row 1 whole), then that member fails.
#[test]
fn a_grown_pools_chunk_writes_do_not_fold_a_lost_write_into_the_parity() {
    let chunk = 2 * UNIT as usize;
    for faulty in 0..4 {
        let (m, pool) = grown_pool();
        let vol = pool.volume("a", None).unwrap();
        let mut model = pattern(3 * chunk, 40 + faulty as u64);
        for c in 0..3 {
            if c == 1 {
                m.plans[faulty].lose_writes(1);
            }
            vol.write_at(&model[c * chunk..(c + 1) * chunk], (c * chunk) as u64)
                .unwrap();
        }
        let data = pattern(2 * chunk, 50 + faulty as u64);
        vol.write_at(&data, chunk as u64).unwrap();
        model[chunk..].copy_from_slice(&data);
        pool.fail_member(faulty).unwrap();
        let mut got = vec![0u8; model.len()];
        vol.read_at(&mut got, 0)
            .unwrap_or_else(|e| panic!("member {faulty} failed: {e}"));
        assert!(got == model, "member {faulty} failed: wrong bytes");
    }
}

/// The reconstruct-write reads the row's other units: one a member's lost
/// write left stale must not go into the parity either. Chunk 0 (row 0's
/// first two units) is written with a member losing a write of it, then
/// chunks 1 and 2 (row 0's third unit is chunk 1's), then that member
/// fails: the stale unit, found by its checksum, is rebuilt from the
/// parity before the new parity is computed, and written back.
#[test]
fn a_reconstruct_write_does_not_fold_a_stale_unit_of_another_chunk() {
    let chunk = 2 * UNIT as usize;
    let mut struck = 0;
    for faulty in 0..4 {
        let (m, pool) = grown_pool();
        let vol = pool.volume("a", None).unwrap();
        let model = pattern(3 * chunk, 60 + faulty as u64);
        m.plans[faulty].lose_writes(1);
        for c in 0..3 {
            vol.write_at(&model[c * chunk..(c + 1) * chunk], (c * chunk) as u64)
                .unwrap();
            if c == 0 {
                // Only a write of chunk 0 (the members of its units and
                // of row 0's parity): the test before covers the others.
                struck += m.plans[faulty].struck();
                m.plans[faulty].heal();
            }
        }
        // Written back where found: a read has nothing left to repair.
        let repairs = pool.info().checksum_repairs;
        let mut got = vec![0u8; model.len()];
        vol.read_at(&mut got, 0).unwrap();
        assert!(got == model, "member {faulty} lost a write: wrong bytes");
        assert_eq!(pool.info().checksum_repairs, repairs, "member {faulty}");
        pool.fail_member(faulty).unwrap();
        let mut got = vec![0u8; model.len()];
        vol.read_at(&mut got, 0)
            .unwrap_or_else(|e| panic!("member {faulty} failed: {e}"));
        assert!(got == model, "member {faulty} failed: wrong bytes");
    }
    assert_eq!(struck, 3, "chunk 0's writes lost on three members");
}

/// A grown pool (x3 to x4) under random writes (whole chunks, runs of
/// them, blocks, unaligned bytes), reads and commits, with one member
/// losing, misplacing or tearing a write now and then (reported done;
/// never repaired behind the pool's back): once that member fails, every
/// byte reads back.
#[test]
fn a_grown_pool_loses_nothing_to_one_member_losing_writes() {
    one_member_lying(grown_pool, 4, 16);
}

/// The same on pools that never grew (x3 and x4: chunks are rows).
#[test]
fn a_pool_loses_nothing_to_one_member_losing_writes() {
    for n in [3, 4] {
        let pool = || {
            let (m, devs) = cached_members(mem_devices(n, 32 * MIB));
            let pool = create_with_unit(RaidLevel::Raid5, devs, UNIT);
            pool.create_volume("a", 4 * MIB).unwrap();
            pool.commit().unwrap();
            (m, pool)
        };
        one_member_lying(pool, n, 8);
    }
}

/// `seeds` runs of the campaign above on pools of `n` members `make`s.
fn one_member_lying(make: impl Fn() -> (Cached, Pool), n: usize, seeds: u64) {
    const SIZE: usize = 2 << 20;
    for seed in 1..=seeds {
        let (m, pool) = make();
        let chunk = pool.info().chunk_size;
        let faulty = (seed % n as u64) as usize;
        let vol = pool.volume("a", None).unwrap();
        let mut model = vec![0u8; SIZE];
        let mut rng = Rng(seed * 0x9E37_79B9);
        let what = format!("x{n}, seed {seed}, member {faulty} lying");
        for step in 0..80u64 {
            match rng.below(12) {
                0..=3 => m.plans[faulty].lose_writes(1),
                4 => {
                    // As fault_model's: up to 1 MiB either way, whole blocks.
                    let delta = (rng.below(512) as i64 - 256) * 4096;
                    m.plans[faulty].misdirect_writes(1, if delta == 0 { 4096 } else { delta })
                }
                5 => m.plans[faulty].tear_writes(1),
                _ => {}
            }
            let (off, len) = match rng.below(5) {
                0 => (rng.below(SIZE as u64 / chunk) * chunk, chunk),
                1 => {
                    let n = 2 + rng.below(3);
                    (rng.below(SIZE as u64 / chunk - n) * chunk, n * chunk)
                }
                2 => (rng.below(SIZE as u64 / 4096) * 4096, 4096),
                3 => (rng.below(SIZE as u64 - 9000), 1 + rng.below(9000)),
                _ => {
                    let off = rng.below(SIZE as u64 - 65536);
                    let mut got = vec![0u8; 65536];
                    vol.read_at(&mut got, off)
                        .unwrap_or_else(|e| panic!("{what}: step {step}: {e}"));
                    let o = off as usize;
                    assert!(
                        got == model[o..o + 65536],
                        "{what}: step {step}: wrong bytes"
                    );
                    continue;
                }
            };
            let data = pattern(len as usize, seed * 1000 + step);
            vol.write_at(&data, off)
                .unwrap_or_else(|e| panic!("{what}: step {step}: {e}"));
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
            if rng.below(12) == 0 {
                pool.commit().unwrap();
            }
        }
        m.plans[faulty].heal();
        pool.fail_member(faulty).unwrap();
        drop(vol);
        model_verify(&pool, &model, &format!("{what}, then failed"));
    }
}

/// Writers of neighbouring chunks at once on a grown pool (each thread
/// owns every fourth chunk, so the rows' other units are other threads'):
/// a reconstruct-write may read a unit another writer just wrote, before
/// its checksum is recorded, and must keep it as the member holds it.
/// Then each member in turn is lost: every byte reads back.
#[test]
fn grown_pool_writers_of_neighbouring_chunks_keep_each_others_bytes() {
    const THREADS: u64 = 4;
    const SIZE: u64 = 2 << 20;
    let chunk = 2 * UNIT;
    let devs = mem_devices(4, 32 * MIB);
    let pool = create_with_unit(RaidLevel::Raid5, refs(&devs[..3]), UNIT);
    pool.add_member(devs[3].clone() as DeviceRef, false)
        .unwrap();
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    pool.create_volume("a", SIZE).unwrap();
    let model = std::sync::Mutex::new(vec![0u8; SIZE as usize]);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (pool, model) = (&pool, &model);
            s.spawn(move || {
                let vol = pool.volume("a", None).unwrap();
                let mut rng = Rng(t + 7);
                let mine = SIZE / chunk / THREADS;
                for step in 0..150 {
                    let c = rng.below(mine) * THREADS + t;
                    let (off, len) = match rng.below(3) {
                        0 => (c * chunk, chunk),
                        1 => (c * chunk + rng.below(chunk / 4096) * 4096, 4096),
                        _ => (c * chunk + rng.below(chunk - 5000), 1 + rng.below(5000)),
                    };
                    let data = pattern(len as usize, t * 1000 + step);
                    vol.write_at(&data, off).unwrap();
                    let o = off as usize;
                    model.lock().unwrap()[o..o + len as usize].copy_from_slice(&data);
                    if step % 50 == 49 {
                        pool.commit().unwrap();
                    }
                }
            });
        }
    });
    let model = model.into_inner().unwrap();
    model_verify(&pool, &model, "all members");
    pool.commit().unwrap();
    drop(pool);
    for lost in 0..4 {
        let pool = reopened_without(&devs, lost);
        model_verify(&pool, &model, &format!("member {lost} lost"));
    }
}

/// A raid5 reshape (x3 to x4) while one member now and then loses,
/// misplaces or tears a write (reported done), with client writes between
/// its steps: every byte reads back during and after it, and once that
/// member fails. Found on 2026-12-07: during a restripe no block could be
/// repaired (the array listed no copies while changing layout), so a
/// client's read or unaligned write of a stale block failed, and the
/// restripe moved rows as the members held them, so a stale block went
/// into the new layout with a parity that vouched for it.
#[test]
fn a_reshape_loses_nothing_to_one_member_lying() {
    growth_under_a_lie(RaidLevel::Raid5, 3, 12);
}

/// The same for a raid1 mirror added (x2 to x3) and resynced.
#[test]
fn a_mirror_resync_loses_nothing_to_one_member_lying() {
    growth_under_a_lie(RaidLevel::Raid1, 2, 12);
}

/// `seeds` runs of a `level` pool of `n` members growing by one while a
/// member lies (see `a_reshape_loses_nothing_to_one_member_lying`).
fn growth_under_a_lie(level: RaidLevel, n: usize, seeds: u64) {
    const SIZE: usize = 2 << 20;
    for seed in 1..=seeds {
        let (m, devs) = cached_members(mem_devices(n + 1, 32 * MIB));
        let pool = create_with_unit(level, devs[..n].to_vec(), UNIT);
        pool.create_volume("a", SIZE as u64).unwrap();
        let vol = pool.volume("a", None).unwrap();
        let mut model = pattern(SIZE, seed);
        vol.write_at(&model, 0).unwrap();
        pool.commit().unwrap();
        let faulty = (seed % (n as u64 + 1)) as usize;
        let what = format!("{level} x{n}, seed {seed}, member {faulty} lying");
        pool.add_member(devs[n].clone(), false).unwrap();
        let mut rng = Rng(seed * 0x9E37_79B9);
        let mut step = 0u64;
        pool.run_job(&AtomicBool::new(false), |_| {
            step += 1;
            maybe_lie(&mut rng, &m.plans[faulty]);
            let off = rng.below(SIZE as u64 - 20000);
            let len = 1 + rng.below(20000);
            let data = pattern(len as usize, seed * 1000 + step);
            vol.write_at(&data, off)
                .unwrap_or_else(|e| panic!("{what}: step {step}: {e}"));
            model[off as usize..(off + len) as usize].copy_from_slice(&data);
        })
        .unwrap_or_else(|e| panic!("{what}: the reshape: {e}"));
        m.plans[faulty].heal();
        model_verify(&pool, &model, &format!("{what}: after the reshape"));
        pool.fail_member(faulty).unwrap();
        drop(vol);
        model_verify(&pool, &model, &format!("{what}, then failed"));
    }
}

/// A raid1 resync (`pool add`) copies chunks read through the checksums:
/// a block one mirror holds stale (a lost write found by nothing yet) is
/// repaired from the other before it is copied, so the new mirror gets
/// the good bytes. Before, the copy read one mirror raw, and a stale
/// block could reach the new mirror: a second stale copy, and the block
/// lost once the one good mirror is. Each old mirror in turn holds the
/// stale block (the lie made on its media, at the block's home found by
/// its bytes), then the good one is lost.
#[test]
fn a_mirror_resync_copies_no_stale_block() {
    const SIZE: usize = 1 << 20;
    const BLK: usize = 4096;
    for stale in 0..2 {
        let what = format!("raid1 x2 to x3, mirror {stale} stale");
        let (m, devs) = cached_members(mem_devices(3, 32 * MIB));
        let pool = create_with_unit(RaidLevel::Raid1, devs[..2].to_vec(), UNIT);
        pool.create_volume("a", SIZE as u64).unwrap();
        let vol = pool.volume("a", None).unwrap();
        let model = pattern(SIZE, 7);
        vol.write_at(&model, 0).unwrap();
        pool.commit().unwrap();
        land_caches(&m);
        // Block 5's home on the stale mirror holds older bytes.
        let homes = homes_of(&m, &model[5 * BLK..6 * BLK]);
        let at = homes
            .iter()
            .find(|h| h.0 == stale)
            .expect("on the mirror")
            .1;
        m.media[stale].write_at(&pattern(BLK, 8), at).unwrap();
        pool.add_member(devs[2].clone(), false).unwrap();
        pool.run_job(&AtomicBool::new(false), |_| {})
            .unwrap_or_else(|e| panic!("{what}: the resync: {e}"));
        drop(vol);
        pool.commit().unwrap();
        land_caches(&m);
        drop(pool);
        // The good mirror lost: the block must still read right.
        let pool = reopened_without(&m.media, 1 - stale);
        model_verify(&pool, &model, &format!("{what}, good mirror lost"));
    }
}
