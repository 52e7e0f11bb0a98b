//! Data checksums, self-healing reads, scrub and crash resync, in process:
//! bytes of a member overwritten behind vpool's back (stored damage),
//! flipped on the way (silent corruption of a read), and mirrors left
//! different by a power cut during in-place writes.

mod common;
use common::*;
use std::sync::Arc;
use vpool::device::{DeviceRef, FaultDevice, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 8 << 20;

fn filled(level: RaidLevel, n: usize) -> (Pool, Vec<Arc<MemDevice>>, Vec<u8>) {
    let mem = mem_devices(n, 32 * MIB);
    let pool = create_with_unit(level, refs(&mem), 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 7);
    pool.commit().unwrap();
    (pool, mem, model)
}

#[test]
fn damage_on_one_copy_is_repaired_by_scrub_exactly() {
    for (level, n) in [
        (RaidLevel::Raid1, 2),
        (RaidLevel::Raid5, 3),
        (RaidLevel::Raid5, 4),
    ] {
        let (pool, mem, model) = filled(level, n);
        let what = format!("{level} x{n}");
        let ds = pool.label().data_start;
        let before = mem[1].snapshot();
        // 40 blocks of member 1, inside the allocated rows (data or parity).
        garbage(&mem[1], ds + 256 * 1024, 40 * 4096);
        let check = pool.scrub(true, |_, _| {}).unwrap();
        assert_eq!(
            check.bad_blocks + check.parity_errors,
            40,
            "{what}: {check:?}"
        );
        assert_eq!(check.repaired + check.parity_repaired, 0, "{what}");
        assert_ne!(
            mem[1].snapshot(),
            before,
            "{what}: check-only changed nothing"
        );
        let fix = pool.scrub(false, |_, _| {}).unwrap();
        assert_eq!(fix.repaired + fix.parity_repaired, 40, "{what}: {fix:?}");
        assert_eq!(fix.unrecoverable, 0, "{what}");
        assert!(
            mem[1].snapshot() == before,
            "{what}: member 1 is whole again"
        );
        assert_eq!(
            pool.info().members[1].errors.checksum,
            80,
            "{what}: counted twice (two scrubs)"
        );
        let again = pool.scrub(true, |_, _| {}).unwrap();
        assert_eq!(
            again.bad_blocks + again.parity_errors,
            0,
            "{what}: {again:?}"
        );
        model_verify(&pool, &model, &what);
    }
}

#[test]
fn reads_return_the_good_copy_and_rewrite_the_bad_one() {
    for (level, n) in [
        (RaidLevel::Raid1, 2),
        (RaidLevel::Raid1, 3),
        (RaidLevel::Raid5, 3),
    ] {
        let (pool, mem, model) = filled(level, n);
        let what = format!("{level} x{n}");
        let ds = pool.label().data_start;
        let before: Vec<Vec<u8>> = mem.iter().map(|m| m.snapshot()).collect();
        // Damage on every member, at different places.
        for (i, m) in mem.iter().enumerate() {
            garbage(m, ds + (64 + 200 * i as u64) * 1024, 8192);
        }
        // Every read returns the right bytes, whichever copy serves it.
        for _ in 0..n {
            model_verify(&pool, &model, &what);
        }
        let counted =
            |p: &Pool| -> u64 { p.info().members.iter().map(|m| m.errors.checksum).sum() };
        let by_reads = counted(&pool);
        assert!(by_reads > 0, "{what}: reads met damage");
        // A bad copy a read met was rewritten then: the scrub finds only
        // the rest, and each of the 2n damaged blocks is counted once.
        let r = pool.scrub(false, |_, _| {}).unwrap();
        assert_eq!(
            r.bad_blocks + r.parity_errors,
            2 * n as u64 - by_reads,
            "{what}: {r:?}"
        );
        assert_eq!(counted(&pool), 2 * n as u64, "{what}");
        for (m, b) in mem.iter().zip(&before) {
            assert!(m.snapshot() == *b, "{what}: every member whole again");
        }
    }
}

#[test]
fn silent_corruption_on_the_way_is_caught() {
    let mem = mem_devices(2, 32 * MIB);
    let mut devs: Vec<DeviceRef> = Vec::new();
    let mut plans = Vec::new();
    for m in &mem {
        let (d, p) = FaultDevice::wrap(m.clone() as DeviceRef);
        devs.push(d);
        plans.push(p);
    }
    let pool = create_with_unit(RaidLevel::Raid1, devs, 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 3);
    pool.commit().unwrap();
    let ds = pool.label().data_start;
    for off in [0u64, 70_000, 1 << 20, 5_000_000] {
        plans[0].flip_on_read(ds + off);
    }
    for _ in 0..4 {
        model_verify(&pool, &model, "raid1 with bit flips on reads");
    }
    assert!(pool.info().members[0].errors.checksum >= 4);
    assert_eq!(pool.info().members[1].errors.checksum, 0);
}

#[test]
fn without_redundancy_a_bad_block_is_an_error_never_garbage() {
    for level in [RaidLevel::Linear, RaidLevel::Raid0] {
        let (pool, mem, model) = filled(level, 2);
        let ds = pool.label().data_start;
        garbage(&mem[0], ds + 4096, 100);
        let vol = pool.volume("a", None).unwrap();
        let mut errors = 0;
        for off in (0..VOL).step_by(16 * 1024) {
            let mut got = vec![0u8; 16 * 1024];
            match vol.read_at(&mut got, off as u64) {
                Ok(()) => assert_eq!(got, model[off..off + got.len()], "{level}: garbage"),
                Err(e) => {
                    assert_eq!(std::io::Error::from(e).raw_os_error(), Some(libc::EIO));
                    errors += 1;
                }
            }
        }
        assert_eq!(errors, 1, "{level}: exactly the damaged block fails");
        let r = pool.scrub(false, |_, _| {}).unwrap();
        assert_eq!(r.unrecoverable, 1, "{level}: {r:?}");
    }
}

/// A power cut during in-place overwrites of committed data: one mirror
/// got the writes, the other did not. The intent block names the regions;
/// the next open makes the mirrors equal and the checksums right, so every
/// block reads (old or new) and a scrub finds nothing.
#[test]
fn mirrors_left_different_by_a_crash_are_resynced() {
    for (level, n) in [
        (RaidLevel::Raid1, 2),
        (RaidLevel::Raid0, 2),
        (RaidLevel::Raid5, 3),
    ] {
        let (pool, mem, model) = filled(level, n);
        let durable: Vec<Vec<u8>> = mem.iter().map(|m| m.snapshot()).collect();
        let vol = pool.volume("a", None).unwrap();
        let mut newer = model.clone();
        // Whole-chunk writes stay in place on raid5 too; 4K ones elsewhere.
        let len = if level == RaidLevel::Raid5 {
            32 * 1024
        } else {
            4096
        };
        for i in 0..16u64 {
            let off = (i * 300_000) / len as u64 * len as u64;
            let data = pattern(len, 100 + i);
            vol.write_at(&data, off).unwrap();
            newer[off as usize..off as usize + len].copy_from_slice(&data);
        }
        let torn: Vec<Vec<u8>> = mem.iter().map(|m| m.snapshot()).collect();
        // The intent block was flushed before the data writes: a member the
        // writes did not reach still has it (its data area is the old one).
        let ds = pool.label().data_start as usize;
        let end = torn[0].len() - (1 << 20);
        let missed: Vec<Vec<u8>> = (0..n)
            .map(|m| {
                let mut img = torn[m].clone();
                img[ds..end].copy_from_slice(&durable[m][ds..end]);
                img
            })
            .collect();
        drop(vol);
        drop(pool);
        for landed in 0..(1u32 << n) {
            let what = format!("{level} x{n}, writes landed on {landed:b}");
            let devs: Vec<DeviceRef> = (0..n)
                .map(|m| {
                    let img = if landed & (1 << m) != 0 {
                        &torn[m]
                    } else {
                        &missed[m]
                    };
                    Arc::new(MemDevice::from_bytes(&format!("m{m}"), img.clone())) as DeviceRef
                })
                .collect();
            let pool = Pool::open(devs).unwrap_or_else(|e| panic!("{what}: {e}"));
            let got = read_vol(&pool, "a", None, VOL);
            for j in 0..VOL {
                assert!(
                    got[j] == model[j] || got[j] == newer[j],
                    "{what}: byte {j} is neither old nor new"
                );
            }
            let r = pool.scrub(true, |_, _| {}).unwrap();
            assert_eq!(
                r.bad_blocks + r.parity_errors + r.unrecoverable,
                0,
                "{what}: {r:?}"
            );
            if landed != 0 && landed != (1 << n) - 1 && level != RaidLevel::Raid0 {
                assert!(
                    pool.info().warnings.iter().any(|w| w.contains("resynced")),
                    "{what}: {:?}",
                    pool.info().warnings
                );
            }
        }
    }
}

#[test]
fn a_pool_without_checksums_still_scrubs_mirrors() {
    let mem = mem_devices(2, 32 * MIB);
    let mut opts = vpool::CreateOptions::new(RaidLevel::Raid1);
    opts.checksums = false;
    let pool = Pool::create("tank", refs(&mem), &opts).unwrap().0;
    assert!(!pool.info().checksums);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 5);
    pool.commit().unwrap();
    garbage(&mem[1], pool.label().data_start + 8192, 4096);
    let r = pool.scrub(true, |_, _| {}).unwrap();
    assert_eq!(r.mismatched, 1, "{r:?}");
    assert_eq!(r.unverified, r.blocks);
    drop(pool);
    let pool = Pool::open(refs(&mem)).unwrap();
    assert!(!pool.info().checksums);
}

/// Power cuts during the two repair paths: the crash resync at open (after
/// a crash that left mirrors different), and a scrub's rewrites. After each
/// cut the pool opens, every block reads (old or new data where writes were
/// in flight, committed data elsewhere) and a scrub then finds nothing.
#[test]
fn power_cuts_during_resync_and_scrub_repairs() {
    use vpool::device::CrashSim;
    for (level, n) in [(RaidLevel::Raid1, 2), (RaidLevel::Raid5, 3)] {
        // A crash during in-place overwrites: mirrors and checksums differ.
        let mut sim = CrashSim::new(n, 32 * MIB, 5);
        let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
        let pool = create_with_unit(level, devs, 16 * 1024);
        pool.create_volume("a", VOL as u64).unwrap();
        let mut model = vec![0u8; VOL];
        model_write(&pool, &mut model, 0, VOL, 9);
        pool.commit().unwrap();
        let mut newer = model.clone();
        let len = if level == RaidLevel::Raid5 {
            32 * 1024
        } else {
            8192
        };
        for i in 0..24u64 {
            let off = (i * 333_333) / len as u64 * len as u64;
            let data = pattern(len, 500 + i);
            pool.volume("a", None)
                .unwrap()
                .write_at(&data, off)
                .unwrap();
            newer[off as usize..off as usize + len].copy_from_slice(&data);
        }
        drop(pool);
        let crashed: Vec<Vec<u8>> = sim.crash().iter().map(|d| d.snapshot()).collect();
        let either = |got: &[u8], what: &str| {
            for j in 0..VOL {
                assert!(got[j] == model[j] || got[j] == newer[j], "{what}: byte {j}");
            }
        };
        // 1. Cuts at every few writes of the resync at open.
        let mut total = None;
        for cut in (1..).step_by(3) {
            let what = format!("{level} x{n}: cut {cut} into the resync");
            let mut sim = CrashSim::from_images(crashed.clone(), cut);
            sim.cut_after(cut);
            let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
            let opened = Pool::open(devs);
            let done = !sim.power_lost();
            drop(opened);
            let after = sim.crash();
            let pool = Pool::open(after.iter().map(|d| d.clone() as DeviceRef).collect())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            either(&read_vol(&pool, "a", None, VOL), &what);
            let r = pool.scrub(true, |_, _| {}).unwrap();
            assert_eq!(
                r.bad_blocks + r.parity_errors + r.unrecoverable,
                0,
                "{what}: {r:?}"
            );
            if done {
                total = Some(cut);
                break;
            }
            assert!(cut < 2000, "{what}: the resync never ends");
        }
        assert!(
            total.is_some_and(|c| c > 3),
            "{level}: the resync wrote something"
        );
        // 2. Damage on member 1, then cuts during the scrub that repairs it.
        let mems: Vec<Arc<MemDevice>> = crashed
            .iter()
            .enumerate()
            .map(|(i, b)| Arc::new(MemDevice::from_bytes(&format!("m{i}"), b.clone())))
            .collect();
        let pool = Pool::open(refs(&mems)).unwrap();
        let settled = read_vol(&pool, "a", None, VOL);
        let ds = pool.label().data_start;
        pool.close().unwrap();
        drop(pool);
        garbage(&mems[1], ds + 128 * 1024, 40 * 4096);
        let damaged: Vec<Vec<u8>> = mems.iter().map(|m| m.snapshot()).collect();
        for cut in (1..).step_by(2) {
            let what = format!("{level} x{n}: cut {cut} into the scrub");
            let mut sim = CrashSim::from_images(damaged.clone(), cut);
            let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
            let pool = Pool::open(devs).unwrap();
            sim.cut_after(cut);
            let _ = pool.scrub(false, |_, _| {});
            let done = !sim.power_lost();
            drop(pool);
            let after = sim.crash();
            let pool = Pool::open(after.iter().map(|d| d.clone() as DeviceRef).collect())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(
                read_vol(&pool, "a", None, VOL) == settled,
                "{what}: contents"
            );
            pool.scrub(false, |_, _| {}).unwrap();
            let r = pool.scrub(true, |_, _| {}).unwrap();
            assert_eq!(
                r.bad_blocks + r.parity_errors + r.unrecoverable,
                0,
                "{what}: {r:?}"
            );
            if done {
                break;
            }
            assert!(cut < 2000, "{what}: the scrub never ends");
        }
    }
}
