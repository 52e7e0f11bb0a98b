//! End-to-end behaviour of the engine through the pool facade, on memory members.

mod common;
use common::*;
use vpool::raid::RaidLevel;
use vpool::{Error, Pool};

const LEVELS: [RaidLevel; 4] = [
    RaidLevel::Linear,
    RaidLevel::Raid0,
    RaidLevel::Raid1,
    RaidLevel::Raid5,
];

#[test]
fn write_snapshot_clone_rollback_reopen() {
    for level in LEVELS {
        let (pool, devs) = small_pool(level, 64 * MIB);
        pool.create_volume("db", 8 * MIB).unwrap();
        let v = pool.volume("db", None).unwrap();
        let a = pattern(3 * MIB as usize, 1);
        v.write_at(&a, 12345).unwrap();
        pool.snapshot("db", "before").unwrap();
        let b = pattern(100_000, 2);
        v.write_at(&b, 20_000).unwrap();
        let snap = pool.volume("db", Some("before")).unwrap();
        let mut got = vec![0u8; a.len()];
        snap.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, a, "{level}: snapshot keeps old data");
        assert!(matches!(snap.write_at(&b, 0), Err(Error::ReadOnly(_))));
        pool.clone_volume("db", Some("before"), "db2").unwrap();
        let c = pool.volume("db2", None).unwrap();
        c.write_at(&pattern(5000, 3), 0).unwrap();
        let mut expect = a.clone();
        expect[20_000 - 12345..20_000 - 12345 + b.len()].copy_from_slice(&b);
        v.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, expect, "{level}: origin has new data");
        pool.rollback("db", "before").unwrap();
        v.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, a, "{level}: rollback");
        v.write_at(&b, 20_000).unwrap();
        v.flush().unwrap();
        let report = pool.check(false).unwrap();
        assert!(report.clean(), "{level}: {report:?}");
        drop((v, snap, c));
        drop(pool);
        let pool = Pool::open(refs(&devs)).unwrap();
        let v = pool.volume("db", None).unwrap();
        v.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, expect, "{level}: after reopen");
        let report = pool.check(false).unwrap();
        assert!(report.clean(), "{level}: {report:?}");
        pool.remove_volume("db", true).unwrap();
        pool.remove_volume("db2", false).unwrap();
        let report = pool.check(false).unwrap();
        assert!(report.clean(), "{level}: {report:?}");
        assert_eq!(pool.info().allocated, 0, "{level}: all space returned");
    }
}

/// Enough chunks for multi-level B-trees: snapshot, overwrite, discard,
/// remove, and every count still adds up.
#[test]
fn deep_trees_share_and_free_correctly() {
    let (pool, _devs) = small_pool(RaidLevel::Raid1, 400 * MIB);
    let size = 160 * MIB;
    pool.create_volume("big", size).unwrap();
    let v = pool.volume("big", None).unwrap();
    let data = pattern(size as usize, 9);
    for (i, piece) in data.chunks(MIB as usize).enumerate() {
        v.write_at(piece, i as u64 * MIB).unwrap();
    }
    pool.snapshot("big", "s").unwrap();
    let chunk = pool.chunk_size();
    let mut expect = data.clone();
    // Overwrite every third chunk: copy-on-write splits shared leaves.
    for c in (0..size / chunk).step_by(3) {
        let d = pattern(100, c);
        v.write_at(&d, c * chunk + 7).unwrap();
        expect[(c * chunk + 7) as usize..(c * chunk + 107) as usize].copy_from_slice(&d);
    }
    v.discard(10 * MIB, 30 * MIB).unwrap();
    expect[10 * MIB as usize..40 * MIB as usize].fill(0);
    let mut got = vec![0u8; size as usize];
    v.read_at(&mut got, 0).unwrap();
    assert!(got == expect);
    let s = pool.volume("big", Some("s")).unwrap();
    s.read_at(&mut got, 0).unwrap();
    assert!(got == data);
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
    assert!(
        r.blocks_checked > 200,
        "trees should span many nodes: {}",
        r.blocks_checked
    );
    pool.remove_snapshot("big", "s").unwrap();
    pool.remove_volume("big", false).unwrap();
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
    assert_eq!(pool.info().allocated, 0);
}

#[test]
fn full_pool_gives_enospc_and_recovers() {
    let (pool, _devs) = small_pool(RaidLevel::Raid0, 40 * MIB);
    let cap = pool.info().capacity;
    let warnings = pool.create_volume("a", cap * 2).unwrap();
    assert!(warnings.iter().any(|w| w.contains("overprovisioned")));
    let v = pool.volume("a", None).unwrap();
    let block = vec![0xabu8; MIB as usize];
    let mut written = 0u64;
    let err = loop {
        match v.write_at(&block, written) {
            Ok(()) => written += MIB,
            Err(e) => break e,
        }
    };
    assert!(matches!(err, Error::NoSpace { .. }), "{err}");
    assert_eq!(err.errno(), libc::ENOSPC);
    assert!(written + MIB >= cap - 4 * MIB);
    // What was written is intact.
    let mut got = vec![0u8; MIB as usize];
    for off in (0..written).step_by(MIB as usize) {
        v.read_at(&mut got, off).unwrap();
        assert!(got == block);
    }
    // Discard frees space; writing works again.
    v.discard(0, 8 * MIB).unwrap();
    v.write_at(&block, written).unwrap();
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
}

/// Removed volumes give their space back to image files (hole punching).
#[test]
fn removed_data_is_discarded_on_image_members() {
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;
    use vpool::device::{DeviceRef, FileDevice};
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<_> = (0..2)
        .map(|i| {
            let p = dir.path().join(format!("m{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(256 * MIB)
                .unwrap();
            p
        })
        .collect();
    let devs: Vec<DeviceRef> = paths
        .iter()
        .map(|p| Arc::new(FileDevice::open(p).unwrap()) as DeviceRef)
        .collect();
    let (pool, _) =
        Pool::create("tank", devs, &vpool::CreateOptions::new(RaidLevel::Raid1)).unwrap();
    let used = || {
        paths
            .iter()
            .map(|p| std::fs::metadata(p).unwrap().blocks() * 512)
            .sum::<u64>()
    };
    pool.create_volume("v", 128 * MIB).unwrap();
    let v = pool.volume("v", None).unwrap();
    v.write_at(&pattern(64 * MIB as usize, 4), 0).unwrap();
    v.flush().unwrap();
    let full = used();
    assert!(full >= 128 * MIB, "{full}");
    pool.remove_volume("v", false).unwrap();
    let after = used();
    assert!(
        after < full - 100 * MIB,
        "space not returned: {full} -> {after}"
    );
}
