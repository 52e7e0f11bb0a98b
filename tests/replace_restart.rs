//! A member replaced in service (md's `--replace`) keeps serving the rows
//! not yet rebuilt across a restart: found again by its label, it is put
//! back beside its replacement, so the pool keeps its redundancy to the
//! end of the rebuild. Before (2026-12-07) a restart left it out, and one
//! more member lost meant the rows not yet rebuilt were gone. A device
//! that failed meanwhile is never put back: its failure is in the
//! superblock before the next flush completes.

mod common;
use common::*;
use vpool::device::{CrashSim, DeviceRef, FaultDevice, FaultPlan};
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 6 << 20;

/// `devs` wrapped so that each can be made to fail.
fn wrap(devs: Vec<DeviceRef>) -> (Vec<DeviceRef>, Vec<FaultPlan>) {
    devs.into_iter()
        .map(|d| {
            let (f, p) = FaultDevice::wrap(d);
            (f as DeviceRef, p)
        })
        .unzip()
}

/// Mixed writes, committed now and then.
fn churn(pool: &Pool, model: &mut [u8], rounds: u64, seed: u64) {
    for i in 0..rounds {
        let off = ((i * 1_234_567 + seed * 7_654_321) % model.len() as u64) as usize;
        let len = if i % 3 == 0 { 300_000 } else { 5_000 };
        model_write(pool, model, off, len, seed * 1000 + i);
        if i % 4 == 3 {
            pool.commit().unwrap();
        }
    }
}

/// A pool of `n` members on `devs`, its volume written and committed,
/// member `k` being replaced in service by `new`, part of the way.
fn replacing(devs: &[DeviceRef], new: DeviceRef, level: RaidLevel, k: usize) -> (Pool, Vec<u8>) {
    let pool = create_with_unit(level, devs.to_vec(), 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 1);
    pool.commit().unwrap();
    pool.replace_member(k, new, false).unwrap();
    for _ in 0..3 {
        assert!(!pool.job_step(256 * 1024).unwrap());
    }
    let job = pool.job().unwrap();
    assert!(
        job.done_bytes > 0 && job.done_bytes < job.total_bytes,
        "{job:?}"
    );
    churn(&pool, &mut model, 6, 3);
    (pool, model)
}

fn serving_again(pool: &Pool) -> bool {
    pool.warnings()
        .iter()
        .any(|w| w.contains("being replaced in service; it serves"))
}

#[test]
fn a_member_replaced_in_service_serves_again_after_a_restart() {
    for (level, n, k) in [
        (RaidLevel::Raid1, 2, 1),
        (RaidLevel::Raid5, 3, 1),
        (RaidLevel::Raid5, 4, 0),
    ] {
        let what = format!("{level} x{n} replacing {k}");
        let mem = mem_devices(n + 1, 32 * MIB);
        let (pool, mut model) = replacing(&refs(&mem[..n]), mem[n].clone(), level, k);
        pool.commit().unwrap();
        drop(pool);
        // Restarted: every device given, the old one among them.
        let (devs, plans) = wrap(refs(&mem));
        let pool = Pool::open(devs).unwrap();
        assert!(serving_again(&pool), "{what}: {:?}", pool.warnings());
        churn(&pool, &mut model, 5, 4);
        // Another member lost: the rows not yet rebuilt still have their
        // copy (or their unit) on the old device.
        let other = (k + 1) % n;
        plans[other].vanish();
        model_verify(
            &pool,
            &model,
            &format!("{what}: member {other} lost after a restart"),
        );
        churn(&pool, &mut model, 4, 5);
        model_verify(&pool, &model, &format!("{what}: writes after that"));
    }
}

#[test]
fn a_replaced_device_that_failed_is_not_put_back_after_a_crash() {
    for (level, n, k, whole) in [
        (RaidLevel::Raid1, 2, 1, true),
        (RaidLevel::Raid5, 3, 1, true),
        (RaidLevel::Raid1, 2, 1, false),
        (RaidLevel::Raid5, 3, 1, false),
    ] {
        // `whole`: the device vanishes (its metadata copy fails too);
        // else only writes to its data area fail.
        let what = format!("{level} x{n} replacing {k}, whole device failing: {whole}");
        let mut sim = CrashSim::new(n + 1, 32 * MIB, 7);
        let media: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
        let (devs, plans) = wrap(media[..n].to_vec());
        let (pool, mut model) = replacing(&devs, media[n].clone(), level, k);
        pool.commit().unwrap();
        // The old device fails; the next flush (through the log, no
        // commit asked) must carry that into the superblock.
        if whole {
            plans[k].vanish();
        } else {
            plans[k].fail_writes(pool.info().data_start..u64::MAX);
        }
        // It comes back with every byte it held when it failed.
        let pool = flush_and_cut(pool, &mut sim, &mut model);
        assert!(!serving_again(&pool), "{what}: {:?}", pool.warnings());
        model_verify(&pool, &model, &format!("{what}: after the crash"));
        pool.run_job(&std::sync::atomic::AtomicBool::new(false), |_| {})
            .unwrap();
        assert_eq!(pool.info().health, "online", "{what}");
        model_verify(&pool, &model, &format!("{what}: rebuilt"));
    }
}

/// Writes and one flush (no commit asked for; while a layout change runs a
/// flush commits), then the power goes; the pool from every device.
fn flush_and_cut(pool: Pool, sim: &mut CrashSim, model: &mut [u8]) -> Pool {
    for i in 0..8u64 {
        let off = ((i * 2_345_671) % model.len() as u64) as usize;
        model_write(&pool, model, off, 70_000, 900 + i);
    }
    pool.volume("a", None).unwrap().flush().unwrap();
    sim.cut_after(0);
    drop(pool);
    let after: Vec<DeviceRef> = sim.crash().into_iter().map(|d| d as DeviceRef).collect();
    Pool::open(after).unwrap()
}

#[test]
fn an_old_device_missing_at_a_restart_is_not_put_back_later() {
    let mut sim = CrashSim::new(4, 32 * MIB, 9);
    let media: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let (pool, mut model) = replacing(&media[..3], media[3].clone(), RaidLevel::Raid5, 1);
    pool.commit().unwrap();
    drop(pool);
    // Restarted without it: it misses the writes of this session.
    let without: Vec<DeviceRef> = [0, 2, 3].iter().map(|&i| media[i].clone()).collect();
    let pool = Pool::open(without).unwrap();
    assert!(!serving_again(&pool));
    let pool = flush_and_cut(pool, &mut sim, &mut model);
    assert!(!serving_again(&pool), "{:?}", pool.warnings());
    model_verify(
        &pool,
        &model,
        "the old device back after a session without it",
    );
}
