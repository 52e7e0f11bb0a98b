//! A flushed write a device lost, with no copy of it left in the log, then
//! an overwrite of the same block in flight at a power cut. The replay
//! keeps what a block with a write in flight holds (the write, the flushed
//! bytes, or a tear of the two), and before intents carried their first
//! sector's tag it also kept the older bytes the lost write left: read
//! back as data, with no error (the torture campaign's linear x2 and raid0
//! x2 seeds in RELIABILITY.md). A tear of the write starts with its first
//! sector (disks land a write's sectors in order); older bytes do not.
//!
//! The lie and the tear are made on the media directly (the block's home
//! found by its bytes), so each case strikes exactly the home write.

mod common;
use common::*;
use vpool::device::BlockDevice;
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: u64 = 1 << 20;
const BLK: usize = 4096;

/// A pool over write-cached members with volume "a" filled and
/// committed, then chunk 0 rewritten whole with `flushed` (a write large
/// enough that the log keeps no copy of it) and committed: the log holds
/// nothing of it.
fn with_flushed_chunk(level: RaidLevel, n: usize) -> (Cached, Pool, Vec<u8>) {
    let (m, devs) = cached_members(mem_devices(n, 32 * MIB));
    let pool = create_with_unit(level, devs, 16 * 1024);
    pool.create_volume("a", VOL).unwrap();
    let vol = pool.volume("a", None).unwrap();
    vol.write_at(&pattern(VOL as usize, 1), 0).unwrap();
    pool.commit().unwrap();
    let flushed = pattern(pool.info().chunk_size as usize, 2);
    vol.write_at(&flushed, 0).unwrap();
    vol.flush().unwrap();
    pool.commit().unwrap();
    (m, pool, flushed[..BLK].to_vec())
}

/// The member and byte offset on the media holding exactly `block` (4 KiB
/// aligned), which must be there once.
fn home_of(m: &Cached, block: &[u8]) -> (usize, u64) {
    let found = homes_of(m, block);
    assert_eq!(found.len(), 1, "the block is on the media once: {found:?}");
    found[0]
}

fn read_block(pool: &Pool) -> vpool::Result<Vec<u8>> {
    let mut got = vec![0u8; BLK];
    pool.volume("a", None)?.read_at(&mut got, 0)?;
    Ok(got)
}

const LEVELS: [(RaidLevel, usize); 3] = [
    (RaidLevel::Linear, 2),
    (RaidLevel::Raid0, 2),
    (RaidLevel::Raid5, 3),
];

/// The overwrite in flight covers the whole block, or (`from` 512) all
/// but its first sector, which the flushed write and the older bytes
/// share (a tag of the block's first sector would take any older bytes
/// with that sector for a tear); or it comes after a restart, before any
/// commit (the torture's linear x2 case 1493304016405, whose intents
/// carried no tag until the pool's next commit).
#[test]
fn older_bytes_under_a_write_in_flight_are_never_read_as_data() {
    for (level, n) in LEVELS {
        for (from, reopen) in [(0, false), (512, false), (0, true)] {
            older_bytes_under(level, n, from, reopen);
        }
    }
}

/// With `reopen`, the pool is opened again after its last commit (a
/// restart, as between the torture's power cuts): its intents must carry
/// tags before it commits again.
fn older_bytes_under(level: RaidLevel, n: usize, from: usize, reopen: bool) {
    let what = format!("{level} x{n}, write from byte {from}, reopened {reopen}");
    let (m, pool, flushed) = with_flushed_chunk(level, n);
    let (m, pool) = match reopen {
        true => {
            drop(pool);
            power_cut(&m).unwrap()
        }
        false => (m, pool),
    };
    land_caches(&m);
    let (member, at) = home_of(&m, &flushed);
    // An overwrite in place, under intents, still in the cache when
    // the power goes.
    let stats = pool.flush_stats().named_writes;
    let vol = pool.volume("a", None).unwrap();
    vol.write_at(&pattern(BLK - from, 4), from as u64).unwrap();
    assert_eq!(
        pool.flush_stats().named_writes,
        stats + 1,
        "{what}: the overwrite went in place under intents"
    );
    drop(vol);
    drop(pool);
    // The device had lost the flushed write: its home holds older
    // bytes (with the same first sector), which the write in flight
    // never reached. (Made after the write, whose widening read of
    // the block's other bytes would have found them.)
    let mut older = pattern(BLK, 3);
    older[..512].copy_from_slice(&flushed[..512]);
    m.media[member].write_at(&older, at).unwrap();
    let (_m, pool) = power_cut(&m).unwrap();
    let said = pool.warnings().join("\n");
    assert!(
        said.contains(
            "1 blocks with a write in flight hold bytes older than their last flushed write"
        ),
        "{what}: the open warning does not count it: {said}"
    );
    match read_block(&pool) {
        // Without redundancy the flushed bytes are gone: an error.
        Err(_) => assert_ne!(level, RaidLevel::Raid5, "{what}: parity holds the block"),
        // RAID5 rebuilds them from the parity.
        Ok(got) => assert!(
            got == flushed,
            "{what}: bytes older than the flushed write read back as data"
        ),
    }
}

#[test]
fn a_torn_write_in_flight_is_kept_as_it_landed() {
    for (level, n) in LEVELS {
        let what = format!("{level} x{n}");
        let (m, pool, flushed) = with_flushed_chunk(level, n);
        let vol = pool.volume("a", None).unwrap();
        let written = pattern(BLK, 4);
        vol.write_at(&written, 0).unwrap();
        drop(vol);
        drop(pool);
        // The write landed its first half of sectors before the power
        // went (the media keep the flushed bytes' second half).
        land_caches(&m);
        let (member, at) = home_of(&m, &written);
        let half = BLK / 2;
        m.media[member]
            .write_at(&flushed[half..], at + half as u64)
            .unwrap();
        let (_m, pool) = power_cut(&m).unwrap();
        let said = pool.warnings().join("\n");
        assert!(
            said.contains("1 blocks with a write in flight keep what they hold")
                && !said.contains("older"),
            "{what}: {said}"
        );
        let got = read_block(&pool).unwrap_or_else(|e| panic!("{what}: a tear reads as {e}"));
        assert!(
            got[..half] == written[..half] && got[half..] == flushed[half..],
            "{what}: the torn write does not read as it landed"
        );
        // And it stays so: the replay recorded its checksum.
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "{what}: {r:?}");
    }
}
