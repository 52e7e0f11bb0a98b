//! Adding members online (`pool add`): every level, with writes interleaved
//! with the background job, power cuts in the middle of a raid0/raid5
//! restripe or a raid1 resync, and the bad inputs.

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vpool::device::{CrashSim, DeviceRef, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

fn create(level: RaidLevel, devs: Vec<DeviceRef>) -> Pool {
    create_with_unit(level, devs, 4096)
}

const VOL: u64 = 6 * MIB;

#[test]
fn add_member_on_every_level_while_writing() {
    for level in [
        RaidLevel::Linear,
        RaidLevel::Raid0,
        RaidLevel::Raid1,
        RaidLevel::Raid5,
    ] {
        let n = members_for(level);
        let devs = mem_devices(n + 1, 32 * MIB);
        let pool = create(level, refs(&devs[..n]));
        let before = pool.info().capacity;
        pool.create_volume("a", VOL).unwrap();
        let mut model = vec![0u8; VOL as usize];
        model_write(&pool, &mut model, 0, 3 * MIB as usize, 1);
        pool.snapshot("a", "s").unwrap();
        let snap = model.clone();
        model_write(&pool, &mut model, 100_000, 200_000, 2);
        pool.commit().unwrap();
        let (message, _) = pool
            .add_member(devs[n].clone() as DeviceRef, false)
            .unwrap();
        assert!(message.contains("tank"), "{message}");
        // Small steps, with writes in between: both layouts serve I/O.
        let mut i = 0u64;
        while !pool.job_step(256 * 1024).unwrap() {
            i += 1;
            let off = ((i * 7_777_777) % VOL) as usize;
            model_write(&pool, &mut model, off, 50_000, 100 + i);
            if i.is_multiple_of(5) {
                model_verify(&pool, &model, &format!("{level} during the job"));
            }
        }
        assert!(pool.job().is_none());
        model_verify(&pool, &model, &format!("{level} after the job"));
        let info = pool.info();
        assert_eq!(info.members.len(), n + 1);
        match level {
            RaidLevel::Raid1 => assert_eq!(info.capacity, before),
            _ => assert!(
                info.capacity > before,
                "{level}: capacity {before} -> {}",
                info.capacity
            ),
        }
        let r = pool.check(false).unwrap();
        assert!(r.clean(), "{level}: {r:?}");
        pool.commit().unwrap();
        drop(pool);
        // Reopen from the new member table; for raid1 the new mirror alone
        // plus one old one must hold everything.
        let pool = Pool::open(refs(&devs)).unwrap();
        model_verify(&pool, &model, &format!("{level} reopened"));
        let s = pool.volume("a", Some("s")).unwrap();
        let mut got = vec![0u8; VOL as usize];
        s.read_at(&mut got, 0).unwrap();
        assert!(got == snap, "{level}: snapshot changed");
        if level == RaidLevel::Raid1 {
            let pool = pool.clone();
            drop(pool);
            let only_new = vec![devs[0].clone() as DeviceRef, devs[n].clone() as DeviceRef];
            let pool = Pool::open(only_new).unwrap();
            model_verify(&pool, &model, "raid1 from the new mirror");
        }
        if level == RaidLevel::Raid5 {
            drop(pool);
            // One member missing after the reshape: parity is right everywhere.
            let pool = Pool::open(refs(&devs[1..])).unwrap();
            model_verify(&pool, &model, "raid5 degraded after reshape");
        }
    }
}

#[test]
fn new_capacity_is_usable() {
    for level in [RaidLevel::Linear, RaidLevel::Raid0, RaidLevel::Raid5] {
        let n = members_for(level);
        let devs = mem_devices(n + 1, 32 * MIB);
        let pool = create(level, refs(&devs[..n]));
        let old = pool.info().capacity;
        pool.add_member(devs[n].clone() as DeviceRef, false)
            .unwrap();
        pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
        let cap = pool.info().capacity;
        // Fill the whole new capacity: every chunk must be writable.
        pool.create_volume("a", cap).unwrap();
        let mut model = vec![0u8; cap as usize];
        model_write(&pool, &mut model, 0, cap as usize, 9);
        pool.commit().unwrap();
        assert!(cap > old);
        drop(pool);
        let pool = Pool::open(refs(&devs)).unwrap();
        model_verify(&pool, &model, &format!("{level} full"));
        if level == RaidLevel::Raid5 {
            drop(pool);
            let pool = Pool::open(refs(&devs[..n])).unwrap();
            model_verify(&pool, &model, "raid5 full, new member missing");
        }
    }
}

/// Power cut at a random write during the job; reopen, finish, verify.
fn crash_run(level: RaidLevel, seed: u64) {
    let n = members_for(level);
    let mut sim = CrashSim::new(n + 1, 32 * MIB, seed);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let pool = create(level, devs[..n].to_vec());
    pool.create_volume("a", VOL).unwrap();
    let mut model = vec![0u8; VOL as usize];
    model_write(&pool, &mut model, 0, VOL as usize - 300_000, seed);
    pool.commit().unwrap();
    let mut durable = model.clone();
    // Bytes written since the last commit known to have completed.
    let mut dirty = vec![false; VOL as usize];
    pool.add_member(devs[n].clone(), false).unwrap();
    let range = if seed.is_multiple_of(3) {
        20_000
    } else {
        1_500
    };
    let cut = sim.random() % range + 1;
    sim.cut_after(cut);
    let mut i = 0;
    loop {
        // Each step commits (its checkpoint), client writes included.
        let r = pool.job_step(128 * 1024);
        if sim.power_lost() {
            break;
        }
        durable.copy_from_slice(&model);
        dirty.fill(false);
        if r.unwrap() {
            break;
        }
        i += 1;
        let off = (sim.random() % VOL) as usize;
        let len = 30_000.min(VOL as usize - off);
        model_write(&pool, &mut model, off, len, seed + i);
        dirty[off..off + len].fill(true);
        if sim.power_lost() {
            break;
        }
    }
    drop(pool);
    let after: Vec<Arc<MemDevice>> = sim.crash();
    let pool = Pool::open(after.iter().map(|d| d.clone() as DeviceRef).collect())
        .unwrap_or_else(|e| panic!("{level} seed {seed}: must open after a cut: {e}"));
    let check_bytes = |pool: &Pool, what: &str| {
        let mut got = vec![0u8; VOL as usize];
        pool.volume("a", None)
            .unwrap()
            .read_at(&mut got, 0)
            .unwrap();
        for j in 0..got.len() {
            if !dirty[j] && got[j] != durable[j] {
                panic!(
                    "{level} seed {seed} {what}: byte {j}: {} != {}",
                    got[j], durable[j]
                );
            }
        }
    };
    check_bytes(&pool, "after reopen");
    pool.run_job(&AtomicBool::new(false), |_| {})
        .unwrap_or_else(|e| panic!("{level} seed {seed}: job must resume: {e}"));
    assert!(pool.job().is_none());
    check_bytes(&pool, "after the job resumed");
    let r = pool.check(false).unwrap();
    assert!(r.errors.is_empty(), "{level} seed {seed}: {r:?}");
    assert_eq!(pool.info().members.len(), n + 1);
}

#[test]
fn power_cut_during_raid5_reshape() {
    for i in 0..crash_iters(60, 20, 5) {
        crash_run(RaidLevel::Raid5, 5000 + i * 31);
    }
}

#[test]
fn power_cut_during_raid0_reshape() {
    for i in 0..crash_iters(60, 20, 5) {
        crash_run(RaidLevel::Raid0, 7000 + i * 37);
    }
}

#[test]
fn power_cut_during_raid1_resync() {
    for i in 0..crash_iters(60, 20, 5) / 2 {
        crash_run(RaidLevel::Raid1, 9000 + i * 41);
    }
}

#[test]
fn bad_additions_are_refused() {
    let devs = mem_devices(5, 32 * MIB);
    let pool = create(RaidLevel::Raid5, refs(&devs[..3]));
    // Already a member.
    let e = pool
        .add_member(devs[0].clone() as DeviceRef, false)
        .unwrap_err();
    assert!(e.to_string().contains("already a member"), "{e}");
    // Too small.
    let small = Arc::new(MemDevice::new("small", 16 * MIB)) as DeviceRef;
    let e = pool.add_member(small, false).unwrap_err();
    assert!(e.to_string().contains("at least"), "{e}");
    // A member of another pool.
    let other = create(RaidLevel::Linear, vec![devs[4].clone() as DeviceRef]);
    drop(other);
    let e = pool
        .add_member(devs[4].clone() as DeviceRef, false)
        .unwrap_err();
    assert!(e.to_string().contains("belongs to pool"), "{e}");
    // A second member while the reshape runs.
    pool.add_member(devs[3].clone() as DeviceRef, false)
        .unwrap();
    let e = pool
        .add_member(devs[4].clone() as DeviceRef, true)
        .unwrap_err();
    assert!(e.to_string().contains("still moving data"), "{e}");
    assert_eq!(pool.info().members.len(), 4);
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    pool.add_member(devs[4].clone() as DeviceRef, true).unwrap();
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(pool.info().members.len(), 5);
}
