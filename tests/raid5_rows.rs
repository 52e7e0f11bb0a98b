//! RAID5 small overwrites of committed rows under partial parities
//! (`thin::ppl`): the row's other units, read for the partial parity, give
//! the new parity too (no read of the old data and parity), every row's
//! parity stays right (each member can be lost afterwards), and a unit
//! that is silently corrupt when it is read is never folded into the
//! parity: the read-modify-write keeps the parity of the good bytes, from
//! which the bad unit is then repaired.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use vpool::device::{BlockDevice, DeviceRef, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

const UNIT: u64 = 16 * 1024;

/// A member whose reads are counted (in a counter its pool's members
/// share).
struct Counted(Arc<MemDevice>, Arc<AtomicU64>);

impl BlockDevice for Counted {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.1.fetch_add(1, Ordering::Relaxed);
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.0.write_at(buf, offset)
    }
    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
    fn name(&self) -> String {
        self.0.name()
    }
}

/// A raid5 pool of `n` members in memory, and its members' reads.
fn mem_pool(n: usize) -> (Vec<Arc<MemDevice>>, Pool, Arc<AtomicU64>) {
    let devs: Vec<Arc<MemDevice>> = (0..n)
        .map(|m| Arc::new(MemDevice::new(&format!("m{m}"), 32 * MIB)))
        .collect();
    let reads = Arc::new(AtomicU64::new(0));
    let refs = (devs.iter())
        .map(|d| Arc::new(Counted(d.clone(), reads.clone())) as DeviceRef)
        .collect();
    (devs, create_with_unit(RaidLevel::Raid5, refs, UNIT), reads)
}

/// The pool on `devs` with member `lost` gone, reopened.
fn without(devs: &[Arc<MemDevice>], lost: usize) -> Pool {
    let left: Vec<DeviceRef> = (0..devs.len())
        .filter(|&m| m != lost)
        .map(|m| Arc::new(MemDevice::from_bytes(&format!("m{m}"), devs[m].snapshot())) as DeviceRef)
        .collect();
    Pool::open(left).expect("the pool opens without one member")
}

#[test]
fn small_overwrites_read_only_the_rows_other_units() {
    for n in [3usize, 4] {
        let (devs, pool, counted) = mem_pool(n);
        pool.create_volume("a", 4 * MIB).unwrap();
        let vol = pool.volume("a", None).unwrap();
        let mut model = pattern(4 * MIB as usize, 7);
        vol.write_at(&model, 0).unwrap();
        pool.commit().unwrap();
        let row = UNIT * (n as u64 - 1);
        let (named, reads) = (
            pool.flush_stats().named_writes,
            counted.load(Ordering::Relaxed),
        );
        let mut rng = Rng(n as u64);
        let writes = 64;
        for i in 0..writes {
            // One 4 KiB block of a unit of a row not written before (a
            // second write to a row whose last one is not yet durable may
            // go afresh).
            let off = (i * row + rng.below(n as u64 - 1) * UNIT + rng.below(4) * 4096) as usize;
            let data = pattern(4096, 1000 + i);
            vol.write_at(&data, off as u64).unwrap();
            model[off..off + 4096].copy_from_slice(&data);
        }
        let what = format!("raid5 x{n}");
        let named = pool.flush_stats().named_writes - named;
        assert_eq!(named, writes, "{what}: every write in place");
        // The other units' blocks, and nothing else: the read-modify-write
        // would read the old data and the old parity as well.
        let reads = counted.load(Ordering::Relaxed) - reads;
        assert_eq!(reads, writes * (n as u64 - 2), "{what}: member reads");
        vol.flush().unwrap();
        drop(vol);
        pool.commit().unwrap();
        drop(pool);
        for lost in 0..n {
            let pool = without(&devs, lost);
            model_verify(&pool, &model, &format!("{what}, member {lost} lost"));
        }
    }
}

#[test]
fn a_silently_corrupt_unit_is_not_folded_into_the_parity() {
    let (devs, pool, _) = mem_pool(3);
    pool.create_volume("a", 4 * MIB).unwrap();
    let vol = pool.volume("a", None).unwrap();
    let mut model = pattern(4 * MIB as usize, 9);
    vol.write_at(&model, 0).unwrap();
    pool.commit().unwrap();
    // The first block of the second unit of the volume's first row, found
    // on its member by its (unique) bytes, turned to garbage behind the
    // pool's back.
    let victim = model[UNIT as usize..UNIT as usize + 4096].to_vec();
    let (m, at) = (0..devs.len())
        .find_map(|m| {
            let img = devs[m].snapshot();
            (0..img.len() / 4096)
                .find(|&b| img[b * 4096..(b + 1) * 4096] == victim[..])
                .map(|b| (m, (b * 4096) as u64))
        })
        .expect("the block is on a member");
    devs[m].poke(at, &pattern(4096, 99));
    // A write to the first unit at the same offset: its partial parity is
    // read from the corrupt block.
    let named = pool.flush_stats().named_writes;
    let data = pattern(4096, 1234);
    vol.write_at(&data, 0).unwrap();
    model[..4096].copy_from_slice(&data);
    assert_eq!(pool.flush_stats().named_writes, named + 1, "in place");
    // The parity still holds the good bytes: the read repairs the block.
    let mut got = vec![0u8; 4096];
    vol.read_at(&mut got, UNIT)
        .expect("the corrupt block is rebuilt");
    assert!(got == victim, "the rebuilt block holds its bytes");
    vol.flush().unwrap();
    drop(vol);
    pool.commit().unwrap();
    drop(pool);
    for lost in 0..devs.len() {
        let pool = without(&devs, lost);
        model_verify(&pool, &model, &format!("member {lost} lost"));
    }
}

/// A raid5 x3 pool on members with a write cache, volume "a" on it, and
/// `rows` stripe rows written at its start (new chunks, written whole)
/// with member `faulty` losing that write (reported done, never stored):
/// the members, the pool and the bytes written.
fn after_a_lost_write(faulty: usize, rows: usize, seed: u64) -> (Cached, Pool, Vec<u8>) {
    let (m, devs) = cached_members(mem_devices(3, 32 * MIB));
    let pool = create_with_unit(RaidLevel::Raid5, devs, UNIT);
    pool.create_volume("a", 4 * MIB).unwrap();
    pool.commit().unwrap();
    let model = pattern(rows * 2 * UNIT as usize, seed);
    m.plans[faulty].lose_writes(1);
    pool.volume("a", None).unwrap().write_at(&model, 0).unwrap();
    assert_eq!(m.plans[faulty].struck(), 1, "the write was lost");
    (m, pool, model)
}

/// Found by CI's `fault_model::torture` (raid5 x3, a lost write, then
/// that member failed): chunks written in this transaction are
/// overwritten in place with read-modify-writes; a block their member lost
/// (reported written, never stored) must not be read as the old data the
/// new parity is computed from, or the parity keeps the lost write's stale
/// bytes and the block rebuilds wrong once that member is gone. It takes
/// the old bytes as the checksums vouch for them, not as the member
/// holds them (a repair of the member may be lost as well). Whole 4
/// KiB blocks, so nothing is widened (read through the checksums) first:
/// one write within a chunk, one over two chunks (the batched path).
#[test]
fn a_lost_write_is_not_folded_into_the_parity_of_a_new_chunk() {
    for faulty in 0..3 {
        let (m, pool, mut model) = after_a_lost_write(faulty, 2, 5);
        let vol = pool.volume("a", None).unwrap();
        let row = 2 * UNIT as usize;
        // The next write there is lost too: the read that finds the stale
        // block rewrites it from the parity, in vain.
        m.plans[faulty].lose_writes(1);
        for (off, len) in [(0, 4096), (4096, row)] {
            let data = pattern(len, 100 + off as u64);
            vol.write_at(&data, off as u64).unwrap();
            model[off..off + len].copy_from_slice(&data);
        }
        pool.fail_member(faulty).unwrap();
        let mut got = vec![0u8; 2 * row];
        vol.read_at(&mut got, 0)
            .unwrap_or_else(|e| panic!("member {faulty} failed: {e}"));
        assert!(got == model, "member {faulty} failed: wrong bytes");
    }
}

/// The same lost write met by a crash: overwrites in place under partial
/// parities (one reads the stale unit as the row's other unit, so it goes
/// by read-modify-write), flushed through the flush log, then the power
/// is cut. The replay must not recompute the row's parity from the stale
/// unit (which would make it the unit's content for good).
#[test]
fn a_replay_does_not_fold_a_lost_write_into_the_parity() {
    for faulty in 0..3 {
        let (m, pool, mut model) = after_a_lost_write(faulty, 1, 11);
        let vol = pool.volume("a", None).unwrap();
        let row = model.len();
        pool.commit().unwrap();
        let named = pool.flush_stats().named_writes;
        for off in [0, UNIT as usize + 4096] {
            let data = pattern(4096, 200 + off as u64);
            vol.write_at(&data, off as u64).unwrap();
            model[off..off + 4096].copy_from_slice(&data);
        }
        assert_eq!(pool.flush_stats().named_writes, named + 2, "in place");
        vol.flush().unwrap();
        drop(vol);
        drop(pool);
        for c in &m.caches {
            c.drop_cache();
        }
        let media: Vec<DeviceRef> = (m.media.iter().enumerate())
            .map(|(i, d)| {
                Arc::new(MemDevice::from_bytes(&format!("m{i}"), d.snapshot())) as DeviceRef
            })
            .collect();
        let pool = Pool::open(media).expect("the pool opens");
        let what = format!("member {faulty} lost a write, then a power cut");
        let mut got = vec![0u8; row];
        let vol = pool.volume("a", None).unwrap();
        vol.read_at(&mut got, 0)
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(got == model, "{what}: wrong bytes");
        drop(vol);
        pool.fail_member(faulty).unwrap();
        model_verify(&pool, &model, &format!("{what}, then failed"));
    }
}

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
        let pool = without(&devs, lost);
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
    const SIZE: usize = 2 << 20;
    for seed in 1..=12u64 {
        let (m, devs) = cached_members(mem_devices(4, 32 * MIB));
        let pool = create_with_unit(RaidLevel::Raid5, devs[..3].to_vec(), UNIT);
        pool.create_volume("a", SIZE as u64).unwrap();
        let vol = pool.volume("a", None).unwrap();
        let mut model = pattern(SIZE, seed);
        vol.write_at(&model, 0).unwrap();
        pool.commit().unwrap();
        let faulty = (seed % 4) as usize;
        let what = format!("seed {seed}, member {faulty} lying");
        pool.add_member(devs[3].clone(), false).unwrap();
        let mut rng = Rng(seed * 0x9E37_79B9);
        let mut step = 0u64;
        pool.run_job(&AtomicBool::new(false), |_| {
            step += 1;
            match rng.below(6) {
                0 | 1 => m.plans[faulty].lose_writes(1),
                2 => {
                    let delta = (rng.below(64) as i64 - 32) * 4096;
                    m.plans[faulty].misdirect_writes(1, if delta == 0 { 4096 } else { delta })
                }
                3 => m.plans[faulty].tear_writes(1),
                _ => {}
            }
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
