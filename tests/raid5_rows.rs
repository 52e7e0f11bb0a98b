//! RAID5 small overwrites of committed rows under partial parities
//! (`thin::ppl`): the row's other units, read for the partial parity, give
//! the new parity too (no read of the old data and parity), every row's
//! parity stays right (each member can be lost afterwards), and a unit
//! that is silently corrupt when it is read is never folded into the
//! parity: the read-modify-write keeps the parity of the good bytes, from
//! which the bad unit is then repaired.

mod common;
use common::*;
use std::sync::atomic::{AtomicU64, Ordering};
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
            let pool = reopened_without(&devs, lost);
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
        let pool = reopened_without(&devs, lost);
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
