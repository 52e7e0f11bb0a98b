//! Metadata space that never wedges a pool: snapshots fill a small metadata
//! area, ordinary use stops at the reserve with ENOSPC, and removing things
//! alone frees the pool again (issue 16).

mod common;

use common::*;
use vpool::device::{CrashSim, DeviceRef};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Error, Pool};

const VOL: u64 = 16 * MIB;
const BLK: u64 = 4096;

fn pool_with_metadata(
    level: RaidLevel,
    members: usize,
    size: u64,
    meta: u64,
) -> (Pool, Vec<std::sync::Arc<vpool::device::MemDevice>>) {
    let devs = mem_devices(members, size);
    let mut opts = CreateOptions::new(level);
    opts.stripe_unit = 4096;
    opts.metadata_size = Some(meta);
    let (pool, _) = Pool::create("tank", refs(&devs), &opts).expect("create pool");
    // These tests fill the metadata area: it must not grow on its own.
    pool.set_metadata_autogrow(false).unwrap();
    (pool, devs)
}

/// Close, reopen on the same members, check the model and that `check`
/// is clean; returns the reopened pool.
fn reopen_clean(
    pool: Pool,
    devs: &[std::sync::Arc<vpool::device::MemDevice>],
    model: &[u8],
) -> Pool {
    pool.close().unwrap();
    drop(pool);
    let pool = Pool::open(refs(devs)).unwrap();
    model_verify(&pool, model, "after reopening");
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
    pool
}

fn is_enospc(e: &Error) -> bool {
    matches!(e, Error::NoSpace { .. })
}

/// Random 4 KiB writes to volume "a", mirrored in `model`; stops at the
/// first ENOSPC and returns it.
fn random_writes(pool: &Pool, model: &mut [u8], rng: &mut Rng, n: usize) -> Option<Error> {
    let vol = pool.volume("a", None).unwrap();
    for _ in 0..n {
        let off = rng.below(VOL / BLK) * BLK;
        let data = pattern(BLK as usize, rng.next());
        match vol.write_at(&data, off) {
            Ok(()) => model[off as usize..(off + BLK) as usize].copy_from_slice(&data),
            Err(e) if is_enospc(&e) => return Some(e),
            Err(e) => panic!("write at {off}: {e}"),
        }
    }
    None
}

fn fill_with_snapshots(
    pool: &Pool,
    model: &mut [u8],
    rng: &mut Rng,
) -> (Vec<String>, Vec<Vec<u8>>, String) {
    let mut snaps = Vec::new();
    let mut contents = Vec::new();
    for i in 0..10_000 {
        if let Some(e) = random_writes(pool, model, rng, 300) {
            return (snaps, contents, format!("write: {e}"));
        }
        let name = format!("s{i}");
        match pool.snapshot("a", &name) {
            Ok(()) => {
                snaps.push(name);
                contents.push(model.to_vec());
            }
            Err(e) if is_enospc(&e) => return (snaps, contents, format!("snapshot: {e}")),
            Err(e) => panic!("snapshot {name}: {e}"),
        }
    }
    panic!("the metadata area never filled");
}

/// The scenario, small: a raid1 pool, one volume written full, a
/// snapshot after every 300 random 4 KiB writes until the metadata area is
/// full. Then every snapshot is removed, oldest first (a retention
/// policy): each removal works, writes work again, the pool closes and
/// reopens clean, and the metadata use returns near where it started.
#[test]
fn snapshots_that_fill_the_metadata_are_removed_oldest_first() {
    let (pool, devs) = pool_with_metadata(RaidLevel::Raid1, 2, 96 * MIB, 4 * MIB);
    pool.create_volume("a", VOL).unwrap();
    let mut model = vec![0u8; VOL as usize];
    model_write(&pool, &mut model, 0, VOL as usize, 1);
    pool.commit().unwrap();
    let start = pool.info();
    let mut rng = Rng(0x5eed_1234_abcd);
    let (snaps, contents, why) = fill_with_snapshots(&pool, &mut model, &mut rng);
    let full = pool.info();
    assert!(
        snaps.len() >= 3,
        "only {} snapshots before: {why}",
        snaps.len()
    );
    eprintln!("{} snapshots filled the metadata area; {why}", snaps.len());
    assert!(
        why.contains("metadata area is full") && why.contains("remove snapshots"),
        "{why}"
    );
    assert!(
        full.allocated * 2 < full.capacity,
        "the data area should be far from full ({} of {})",
        full.allocated,
        full.capacity
    );
    // The full pool still commits (the reserve holds what its commits need).
    pool.commit().unwrap();
    // Middle snapshots read as they were when taken.
    let mid = snaps.len() / 2;
    assert_eq!(
        read_vol(&pool, "a", Some(&snaps[mid]), VOL as usize),
        contents[mid]
    );
    for s in &snaps {
        pool.remove_snapshot("a", s)
            .unwrap_or_else(|e| panic!("removing snapshot {s} of {}: {e}", snaps.len()));
    }
    assert!(
        random_writes(&pool, &mut model, &mut rng, 2000).is_none(),
        "writes work again"
    );
    model_verify(&pool, &model, "after the removals");
    pool.close().unwrap();
    let after = pool.info();
    assert!(
        after.metadata_used <= start.metadata_used + start.metadata_used / 2 + 64 * BLK,
        "metadata use {} did not return near its start {}",
        after.metadata_used,
        start.metadata_used
    );
    reopen_clean(pool, &devs, &model);
}

/// `vol remove --recursive` of a volume and all its snapshots on a full
/// metadata area: one transaction hands the trees over, the release runs
/// in steps each of which fits, and the space comes back.
#[test]
fn removing_a_volume_with_its_snapshots_frees_a_full_pool() {
    let (pool, devs) = pool_with_metadata(RaidLevel::Linear, 1, 96 * MIB, 3 * MIB);
    pool.create_volume("a", VOL).unwrap();
    let mut model = vec![0u8; VOL as usize];
    model_write(&pool, &mut model, 0, VOL as usize, 2);
    let mut rng = Rng(77);
    let (snaps, _, why) = fill_with_snapshots(&pool, &mut model, &mut rng);
    assert!(snaps.len() >= 3, "{why}");
    pool.create_volume("b", MIB)
        .expect_err("a create must stop at the reserve");
    pool.remove_volume("a", true).unwrap();
    let info = pool.info();
    assert_eq!(info.allocated, 0, "every chunk is free again");
    pool.create_volume("b", VOL).unwrap();
    pool.close().unwrap();
    drop(pool);
    let pool = Pool::open(refs(&devs)).unwrap();
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
}

/// Power cuts at points spread over the removal of three snapshots from a
/// full metadata area (the removal's own transaction, the release steps,
/// their commits): every time the pool opens, finishes any release left
/// over, reads as the model, and `check` is clean.
#[test]
fn power_cuts_during_removals_leave_a_pool_that_opens_clean() {
    let size = 64 * MIB;
    let mut sim = CrashSim::new(2, size, 11);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let mut opts = CreateOptions::new(RaidLevel::Raid1);
    opts.stripe_unit = 4096;
    opts.metadata_size = Some(3 * MIB);
    let (pool, _) = Pool::create("tank", devs, &opts).unwrap();
    pool.set_metadata_autogrow(false).unwrap();
    pool.create_volume("a", VOL).unwrap();
    let mut model = vec![0u8; VOL as usize];
    model_write(&pool, &mut model, 0, VOL as usize, 5);
    let mut rng = Rng(99);
    let (snaps, contents, why) = fill_with_snapshots(&pool, &mut model, &mut rng);
    assert!(snaps.len() >= 4, "{why}");
    pool.close().unwrap();
    drop(pool);
    let base: Vec<Vec<u8>> = sim.crash().iter().map(|d| d.snapshot()).collect();
    let remove_three = |pool: &Pool| -> vpool::Result<()> {
        for s in &snaps[..3] {
            pool.remove_snapshot("a", s)?;
        }
        Ok(())
    };
    // How many writes the removals issue when nothing interrupts them.
    let sim = CrashSim::from_images(base.clone(), 1);
    let pool = Pool::open(sim.devices.iter().map(|d| d.clone() as DeviceRef).collect()).unwrap();
    let before = sim.writes();
    remove_three(&pool).unwrap();
    let total = sim.writes() - before;
    drop(pool);
    let cuts = crash_iters(12, 100, 4);
    for k in 0..cuts {
        let cut = 1 + total * k / cuts;
        let mut sim = CrashSim::from_images(base.clone(), 1000 + k);
        let pool =
            Pool::open(sim.devices.iter().map(|d| d.clone() as DeviceRef).collect()).unwrap();
        sim.cut_after(cut);
        let _ = remove_three(&pool);
        drop(pool);
        let after = sim.crash();
        let pool = Pool::open(refs(&after))
            .unwrap_or_else(|e| panic!("open after a cut at write {cut} of {total}: {e}"));
        model_verify(&pool, &model, &format!("volume after a cut at write {cut}"));
        for (i, s) in snaps.iter().enumerate().take(4) {
            if let Ok(v) = pool.volume("a", Some(s)) {
                let mut got = vec![0u8; VOL as usize];
                v.read_at(&mut got, 0).unwrap();
                assert!(
                    got == contents[i],
                    "snapshot {s} changed (cut at write {cut})"
                );
            } else {
                assert!(i < 3, "snapshot {s} was not being removed");
            }
        }
        let r = pool.check(false).unwrap();
        assert!(
            r.clean() && r.releasing == 0,
            "cut at write {cut} of {total}: {r:?}"
        );
    }
}

/// `pool set metadata-size` grows the metadata area online from the data
/// area: snapshots go on past where the fixed area filled, the pool
/// reopens (format version 6) with everything in place, `check` is clean,
/// and the grown space is released by removals like any other.
#[test]
fn the_metadata_area_grows_by_command_and_reopens() {
    for level in [RaidLevel::Linear, RaidLevel::Raid1, RaidLevel::Raid5] {
        let n = members_for(level);
        let (pool, devs) = pool_with_metadata(level, n, 96 * MIB, 2 * MIB);
        pool.create_volume("a", VOL).unwrap();
        let mut model = vec![0u8; VOL as usize];
        model_write(&pool, &mut model, 0, VOL as usize, 6);
        let mut rng = Rng(1234);
        let (first, _, why) = fill_with_snapshots(&pool, &mut model, &mut rng);
        assert!(why.contains("metadata"), "{level}: {why}");
        let before = pool.info();
        let msg = pool.set_metadata_size(8 * MIB).unwrap();
        assert!(msg.contains("grown"), "{msg}");
        let after = pool.info();
        assert!(
            after.metadata_total >= 8 * MIB - 64 * 1024,
            "{level}: {}",
            after.metadata_total
        );
        assert_eq!(after.metadata_extents, 1);
        assert!(
            after.allocated > before.allocated,
            "the extent takes data chunks"
        );
        // More snapshots fit now; each still reads as taken.
        let mut snaps = Vec::new();
        for i in 0..3 {
            assert!(
                random_writes(&pool, &mut model, &mut rng, 300).is_none(),
                "{level}"
            );
            let s = format!("more{i}");
            pool.snapshot("a", &s).unwrap();
            snaps.push((s, model.clone()));
        }
        pool.close().unwrap();
        drop(pool);
        let pool = Pool::open(refs(&devs)).unwrap();
        assert_eq!(pool.info().metadata_extents, 1);
        model_verify(&pool, &model, &format!("{level} after reopening"));
        for (s, content) in &snaps {
            assert!(
                read_vol(&pool, "a", Some(s), VOL as usize) == *content,
                "{level} {s}"
            );
        }
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "{level}: {r:?}");
        for s in first.iter().chain(snaps.iter().map(|(s, _)| s)) {
            pool.remove_snapshot("a", s).unwrap();
        }
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "{level} after removals: {r:?}");
        pool.set_metadata_size(MIB)
            .expect_err("the area never shrinks");
    }
}

/// Past 80% use the metadata area grows on its own: a snapshot workload
/// that fills the fixed area runs on without ENOSPC, in several steps.
#[test]
fn the_metadata_area_grows_on_its_own() {
    let (pool, devs) = pool_with_metadata(RaidLevel::Raid1, 2, 128 * MIB, 2 * MIB);
    pool.set_metadata_autogrow(true).unwrap();
    pool.create_volume("a", VOL).unwrap();
    let mut model = vec![0u8; VOL as usize];
    model_write(&pool, &mut model, 0, VOL as usize, 7);
    let mut rng = Rng(4321);
    for i in 0..20 {
        assert!(
            random_writes(&pool, &mut model, &mut rng, 300).is_none(),
            "snapshot {i}"
        );
        pool.snapshot("a", &format!("s{i}")).unwrap();
    }
    let info = pool.info();
    assert!(info.metadata_extents >= 1, "{info:?}");
    assert!(info.metadata_total > 2 * MIB);
    reopen_clean(pool, &devs, &model);
}

/// Removing the member that holds a metadata extent (`pool remove` on a
/// linear pool) moves the extent's runs below the new end with the data;
/// the pool reopens from the remaining member with everything in place.
#[test]
fn removing_the_member_under_a_metadata_extent_moves_it() {
    let devs = mem_devices(2, 48 * MIB);
    let mut opts = CreateOptions::new(RaidLevel::Linear);
    opts.stripe_unit = 16 * 1024;
    let (pool, _) = Pool::create("tank", refs(&devs), &opts).unwrap();
    let cap = pool.info().capacity;
    pool.create_volume("a", cap).unwrap();
    let mut model = vec![0u8; cap as usize];
    let used = (cap * 6 / 10) as usize;
    model_write(&pool, &mut model, 0, used, 8);
    // The extent's runs go to the first free chunks: past the data, on
    // the second member.
    let total = pool.info().metadata_total;
    pool.set_metadata_size(total + 4 * MIB).unwrap();
    pool.volume("a", None)
        .unwrap()
        .discard(0, cap * 3 / 10)
        .unwrap();
    model[..(cap * 3 / 10) as usize].fill(0);
    pool.snapshot("a", "s").unwrap();
    pool.remove_member(1).unwrap();
    while !pool.job_step(1 << 20).unwrap() {}
    model_verify(&pool, &model, "after the removal");
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
    assert_eq!(pool.info().metadata_extents, 1);
    pool.close().unwrap();
    drop(pool);
    let pool = Pool::open(vec![devs[0].clone() as DeviceRef]).unwrap();
    model_verify(&pool, &model, "reopened from the remaining member");
    assert!(read_vol(&pool, "a", Some("s"), model.len()) == model);
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
}

/// Power cuts at every few writes of a metadata growth (its extent's
/// space-map pages, the extent list, the reference counts of the chunks
/// it takes, the superblock), with client writes committed just before:
/// the pool always opens, with or without the new extent, reads as the
/// model, takes new snapshots into the grown space, and `check` is clean.
#[test]
fn power_cuts_during_a_metadata_growth() {
    let mut sim = CrashSim::new(2, 64 * MIB, 21);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let mut opts = CreateOptions::new(RaidLevel::Raid1);
    opts.stripe_unit = 4096;
    opts.metadata_size = Some(2 * MIB);
    let (pool, _) = Pool::create("tank", devs, &opts).unwrap();
    pool.set_metadata_autogrow(false).unwrap();
    pool.create_volume("a", VOL).unwrap();
    let mut model = vec![0u8; VOL as usize];
    model_write(&pool, &mut model, 0, VOL as usize, 9);
    pool.snapshot("a", "s").unwrap();
    pool.close().unwrap();
    drop(pool);
    let base: Vec<Vec<u8>> = sim.crash().iter().map(|d| d.snapshot()).collect();
    let mut rng = Rng(5);
    let load: Vec<(u64, u64)> = (0..200)
        .map(|_| (rng.below(VOL / BLK) * BLK, rng.next()))
        .collect();
    let load_and_commit = |pool: &Pool, model: &mut Vec<u8>| -> vpool::Result<()> {
        let vol = pool.volume("a", None)?;
        for &(off, seed) in &load {
            let data = pattern(BLK as usize, seed);
            vol.write_at(&data, off)?;
            model[off as usize..(off + BLK) as usize].copy_from_slice(&data);
        }
        pool.commit()
    };
    let run = |pool: &Pool, model: &mut Vec<u8>| -> vpool::Result<()> {
        load_and_commit(pool, model)?;
        pool.set_metadata_size(6 * MIB).map(|_| ())
    };
    let mut after_load = model.clone();
    let sim = CrashSim::from_images(base.clone(), 1);
    let pool = Pool::open(sim.devices.iter().map(|d| d.clone() as DeviceRef).collect()).unwrap();
    let before = sim.writes();
    load_and_commit(&pool, &mut after_load).unwrap();
    let loaded = sim.writes() - before;
    pool.set_metadata_size(6 * MIB).unwrap();
    let total = sim.writes() - before;
    drop(pool);
    // A few cuts during the load, most during the growth, one after it.
    let cuts = crash_iters(20, 50, 6);
    let mut grown = 0;
    for k in 0..=cuts {
        let cut = match k {
            0..=2 => 1 + loaded * k / 3,
            k if k == cuts => total + 1,
            k => loaded + 1 + (total - loaded) * (k - 3) / (cuts - 3),
        };
        let mut sim = CrashSim::from_images(base.clone(), 500 + k);
        let pool =
            Pool::open(sim.devices.iter().map(|d| d.clone() as DeviceRef).collect()).unwrap();
        sim.cut_after(cut);
        let mut m = model.clone();
        // After the cut the devices take writes and drop them: the
        // outcome is read from what the pool opens with.
        let _ = run(&pool, &mut m);
        drop(pool);
        let after = sim.crash();
        let pool = Pool::open(refs(&after))
            .unwrap_or_else(|e| panic!("open after a cut at write {cut} of {total}: {e}"));
        let info = pool.info();
        grown += info.metadata_extents;
        // The client writes were committed before the growth started:
        // once the growth began they are all there.
        let got = read_vol(&pool, "a", None, VOL as usize);
        if info.metadata_extents > 0 {
            assert!(
                got == after_load,
                "cut at write {cut}: the volume lost committed writes"
            );
        } else {
            // Cut before the growth committed: each block holds the old
            // data or a write of the load (flushed or not).
            for (i, b) in got.chunks(BLK as usize).enumerate() {
                let r = i * BLK as usize..(i + 1) * BLK as usize;
                let written = load
                    .iter()
                    .any(|&(off, seed)| off == r.start as u64 && b == pattern(BLK as usize, seed));
                assert!(
                    b == &model[r] || written,
                    "cut at write {cut}: block {i} holds neither the old data nor a write of the load"
                );
            }
        }
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "cut at write {cut} of {total}: {r:?}");
        pool.snapshot("a", "after").unwrap();
        assert!(read_vol(&pool, "a", Some("s"), VOL as usize).len() == VOL as usize);
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "cut at write {cut}, after a snapshot: {r:?}");
    }
    eprintln!("growth: writes {loaded}..{total}, {grown} of {cuts} cuts found it committed");
    assert!(grown > 0, "no cut fell after the growth's commit");
}

/// Ten thousand snapshots of one (small) volume with a write before each,
/// then every one removed in random order: each removal succeeds, sampled
/// snapshots read as taken until removed, the metadata use returns near
/// its start, and the pool reopens clean. `VPOOL_SNAPSHOTS` sets the count.
#[test]
fn ten_thousand_snapshots_then_removed_in_random_order() {
    let n: usize = std::env::var("VPOOL_SNAPSHOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let vol = MIB;
    // Each snapshot copies a mapping leaf and the root above it: about
    // 10 KiB of metadata each, 100 MiB for ten thousand (grown online).
    let devs = mem_devices(2, 288 * MIB);
    let mut opts = CreateOptions::new(RaidLevel::Raid1);
    opts.stripe_unit = 4096;
    let (pool, _) = Pool::create("tank", refs(&devs), &opts).unwrap();
    pool.create_volume("a", vol).unwrap();
    let v = pool.volume("a", None).unwrap();
    let mut model = pattern(vol as usize, 1);
    v.write_at(&model, 0).unwrap();
    pool.commit().unwrap();
    let start = pool.info().metadata_used;
    let mut rng = Rng(0xabcdef);
    let mut samples = Vec::new();
    for i in 0..n {
        let off = rng.below(vol / BLK) * BLK;
        let data = pattern(BLK as usize, rng.next());
        v.write_at(&data, off).unwrap();
        model[off as usize..(off + BLK) as usize].copy_from_slice(&data);
        pool.snapshot("a", &format!("s{i}")).unwrap();
        if i % 997 == 0 {
            samples.push((format!("s{i}"), model.clone()));
        }
    }
    let full = pool.info();
    assert_eq!(full.snapshots, n);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for (k, i) in order.into_iter().enumerate() {
        let name = format!("s{i}");
        if let Some((_, content)) = samples.iter().find(|(s, _)| *s == name) {
            assert!(
                read_vol(&pool, "a", Some(&name), vol as usize) == *content,
                "{name}"
            );
        }
        pool.remove_snapshot("a", &name)
            .unwrap_or_else(|e| panic!("removal {k} ({name}) failed: {e}"));
    }
    model_verify(&pool, &model, "after the removals");
    pool.close().unwrap();
    let after = pool.info();
    assert_eq!(after.snapshots, 0);
    assert_eq!(after.releasing, 0);
    assert!(
        after.metadata_used <= 2 * start + MIB,
        "metadata use {} (with {n} snapshots {}) did not return near its start {start}",
        after.metadata_used,
        full.metadata_used
    );
    drop(pool);
    let pool = Pool::open(refs(&devs)).unwrap();
    model_verify(&pool, &model, "after reopening");
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
}

/// A pool written by the vpool before this format change (superblock
/// version 5, the catalog a serialized chain; `tests/fixtures/
/// old-pool-v5.tar.gz`, made with the CLI of commit 97b7707: raid1, volume
/// `a` with snapshot `s1` and writes after it, volume `b`, clone `c` of
/// `a@s1`) opens with everything in place; its first metadata operation
/// converts the catalog to a tree (version 6), and it reopens the same.
#[test]
fn a_pool_written_before_the_catalog_tree_opens_and_converts() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/old-pool-v5.tar.gz");
    let out = std::process::Command::new("tar")
        .args([
            "-xzf",
            fixture.to_str().unwrap(),
            "-C",
            dir.path().to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pat = |n: usize, seed: usize| -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7 + seed * 13 + (i >> 12)) % 251) as u8)
            .collect()
    };
    let (a1, a2, b1) = (pat(8 << 20, 1), pat(1 << 20, 2), pat(2 << 20, 3));
    let mut a = a1.clone();
    a[3 << 20..4 << 20].copy_from_slice(&a2);
    let mut b = vec![0u8; 4 << 20];
    b[1 << 20..3 << 20].copy_from_slice(&b1);
    let devs = || -> Vec<DeviceRef> {
        ["d1.img", "d2.img"]
            .iter()
            .map(|f| {
                std::sync::Arc::new(vpool::device::FileDevice::open(&dir.path().join(f)).unwrap())
                    as DeviceRef
            })
            .collect()
    };
    let verify = |pool: &Pool, what: &str| {
        assert!(read_vol(pool, "a", None, a.len()) == a, "{what}: a");
        assert!(
            read_vol(pool, "a", Some("s1"), a1.len()) == a1,
            "{what}: a@s1"
        );
        assert!(read_vol(pool, "b", None, b.len()) == b, "{what}: b");
        assert!(read_vol(pool, "c", None, a1.len()) == a1, "{what}: c");
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "{what}: {r:?}");
    };
    let version = || {
        let img = std::fs::read(dir.path().join("d1.img")).unwrap();
        let v = |slot: usize| {
            let o = 4096 + slot * 4096;
            let txid = u64::from_le_bytes(img[o + 16..o + 24].try_into().unwrap());
            (
                txid,
                u32::from_le_bytes(img[o + 8..o + 12].try_into().unwrap()),
            )
        };
        v(0).max(v(1)).1
    };
    assert_eq!(version(), 5);
    let pool = Pool::open(devs()).unwrap();
    verify(&pool, "as written by the older vpool");
    pool.snapshot("a", "s2").unwrap();
    pool.close().unwrap();
    drop(pool);
    assert_eq!(
        version(),
        12,
        "the catalog is a tree, and the pool has a flush log (with the data journal, pairs, runs of intents, partial parities and tagged intents), from the first change on"
    );
    let pool = Pool::open(devs()).unwrap();
    verify(&pool, "converted");
    assert!(read_vol(&pool, "a", Some("s2"), a.len()) == a);
}

/// The volume the two tests below overwrite: 96 MiB, written whole and
/// committed, on raid0 with 192 KiB chunks (the default stripe unit) and a
/// 2 MiB metadata area that never grows: pending checksums run it short
/// every few MiB written, so commits are frequent.
const FILLED: u64 = 96 * MIB;

fn filled_small_area() -> Pool {
    let devs = mem_devices(3, 48 * MIB);
    let mut opts = CreateOptions::new(RaidLevel::Raid0);
    opts.metadata_size = Some(2 * MIB);
    let (pool, _) = Pool::create("tank", refs(&devs), &opts).expect("create pool");
    pool.set_metadata_autogrow(false).unwrap();
    pool.create_volume("v", FILLED).unwrap();
    let vol = pool.volume("v", None).unwrap();
    let block = vec![0x5au8; MIB as usize];
    for off in (0..FILLED).step_by(MIB as usize) {
        vol.write_at(&block, off).unwrap();
    }
    pool.commit().unwrap();
    pool
}

/// `writers` threads each overwrite their share of the volume `rounds`
/// times, 1 MiB at a time; any write's error fails the test.
fn overwrite_concurrently(pool: &Pool, writers: u64, rounds: usize) {
    let region = FILLED / writers;
    std::thread::scope(|s| {
        for w in 0..writers {
            let vol = pool.volume("v", None).unwrap();
            s.spawn(move || {
                let data = vec![w as u8 + 1; MIB as usize];
                for round in 0..rounds {
                    for off in (w * region..(w + 1) * region - MIB + 1).step_by(MIB as usize) {
                        if let Err(e) = vol.write_at(&data, off) {
                            panic!("writer {w}, round {round}, at {off}: {e}");
                        }
                    }
                }
            });
        }
    });
}

/// Writers that overwrite a filled volume in place, concurrently: their
/// pending checksums fill the running transaction's estimate, and each
/// writer that runs short commits (or finds that another just did) and
/// goes on. None may see ENOSPC while the metadata area is mostly free (it
/// did: a writer with nothing of its own to commit gave up right after
/// another writer's commit).
#[test]
fn concurrent_overwrites_never_see_a_spurious_enospc() {
    let pool = filled_small_area();
    overwrite_concurrently(&pool, 6, 12);
    let info = pool.info();
    assert!(info.metadata_used * 2 < info.metadata_total, "{info:?}");
}

/// Writers that run short of metadata room together wait for one commit
/// and go on: they do not each commit in turn (every volume waits at the
/// gate through each of those commits, and on a disk each one flushes the
/// members). Six writers write the same bytes as one writer did; they may
/// commit a little more often than the one writer (a commit can land
/// while others are mid-write), not once each.
#[test]
fn writers_short_of_room_together_share_one_commit() {
    let commits = |writers: u64| {
        let pool = filled_small_area();
        let before = pool.info();
        overwrite_concurrently(&pool, writers, 4);
        let after = pool.info();
        // What `pool status` and the metrics report.
        assert!(after.room_waits > before.room_waits, "{after:?}");
        after.commits - before.commits
    };
    let alone = commits(1);
    let together = commits(6);
    eprintln!("commits: one writer {alone}, six writers {together}");
    assert!(alone >= 3, "the area never ran short ({alone} commits)");
    assert!(
        together <= 2 * alone + 2,
        "six writers committed {together} times where one committed {alone}"
    );
}
