//! A member lost while the pool changes its layout (a raid5 reshape onto a
//! new member, the resync of a new raid1 mirror): the job goes on degraded
//! and ends, `pool replace` or `pool clear` then restores the redundancy,
//! and nothing written is lost (md goes on with a degraded reshape too).
//! Before, the job stopped ("cannot finish its layout change with a member
//! missing") and `pool replace` waited for the job: a pool stuck degraded
//! for good once the lost disk was dead.

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vpool::device::{CrashSim, DeviceRef, FaultDevice, FaultPlan, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 6 << 20;

struct Rig {
    pool: Pool,
    /// The media: members, the added one at `n`, then a spare.
    mem: Vec<Arc<MemDevice>>,
    devs: Vec<DeviceRef>,
    plans: Vec<FaultPlan>,
    model: Vec<u8>,
}

/// A pool of `n` members with its volume written and committed, and two
/// more devices (`n`, `n + 1`) beside it.
fn written(level: RaidLevel, n: usize) -> Rig {
    let mem = mem_devices(n + 2, 32 * MIB);
    let (mut devs, mut plans): (Vec<DeviceRef>, _) = (Vec::new(), Vec::new());
    for m in &mem {
        let (d, p) = FaultDevice::wrap(m.clone() as DeviceRef);
        devs.push(d);
        plans.push(p);
    }
    let pool = create_with_unit(level, devs[..n].to_vec(), 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 1);
    pool.commit().unwrap();
    Rig {
        pool,
        mem,
        devs,
        plans,
        model,
    }
}

/// [`written`], one member added, and the layout change a few steps in.
fn rig(level: RaidLevel, n: usize) -> Rig {
    let Rig {
        pool,
        mem,
        devs,
        plans,
        mut model,
    } = written(level, n);
    pool.add_member(devs[n].clone(), false).unwrap();
    for i in 0..3 {
        assert!(!pool.job_step(256 * 1024).unwrap());
        model_write(
            &pool,
            &mut model,
            1_000_000 + i * 77_777,
            40_000,
            10 + i as u64,
        );
    }
    Rig {
        pool,
        mem,
        devs,
        plans,
        model,
    }
}

/// Run the job to its end, writing between steps and committing now and
/// then: it must not stop.
fn finish(pool: &Pool, model: &mut [u8], seed: u64) {
    let mut i = 0u64;
    loop {
        let done = pool
            .job_step(256 * 1024)
            .unwrap_or_else(|e| panic!("the job must go on degraded: {e}"));
        if done {
            break;
        }
        i += 1;
        let off = ((i * 2_345_678 + seed) % model.len() as u64) as usize;
        let len = if i.is_multiple_of(3) { 200_000 } else { 6_000 };
        model_write(pool, model, off, len, seed * 1000 + i);
        if i.is_multiple_of(4) {
            pool.commit().unwrap();
        }
    }
    assert!(pool.job().is_none());
}

fn states(pool: &Pool) -> Vec<String> {
    pool.info()
        .members
        .iter()
        .map(|m| m.state.clone())
        .collect()
}

/// The pool from `mem` without the devices at `skip`.
fn open_without(mem: &[Arc<MemDevice>], skip: &[usize]) -> Pool {
    let devs: Vec<DeviceRef> = (0..mem.len())
        .filter(|i| !skip.contains(i))
        .map(|i| mem[i].clone() as DeviceRef)
        .collect();
    Pool::open(devs).unwrap_or_else(|e| panic!("open without {skip:?}: {e}"))
}

/// Lose member `lost` of a layout change of `n` members (one added):
/// the job ends degraded, the member is failed, `pool replace` rebuilds it
/// onto the spare device, and every byte then reads back with any other
/// member missing.
fn lose_finish_replace(level: RaidLevel, n: usize, lost: usize, seed: u64) {
    let what = format!("{level} x{n}+1, member {lost} lost");
    let Rig {
        pool,
        mem,
        devs,
        plans,
        mut model,
    } = rig(level, n);
    plans[lost].vanish();
    finish(&pool, &mut model, seed);
    model_verify(&pool, &model, &format!("{what}, after the job"));
    assert_eq!(states(&pool)[lost], "failed", "{what}");
    assert_eq!(pool.info().members.len(), n + 1);
    // The redundancy comes back with a new device in its place.
    pool.replace_member(lost, devs[n + 1].clone(), false)
        .unwrap();
    finish(&pool, &mut model, seed + 1);
    assert_eq!(pool.info().health, "online", "{what}");
    pool.commit().unwrap();
    drop(pool);
    for other in (0..n + 2).filter(|&m| m != lost) {
        let pool = open_without(&mem, &[lost, other]);
        model_verify(
            &pool,
            &model,
            &format!("{what}, replaced, then {other} missing"),
        );
    }
}

#[test]
fn a_raid5_reshape_that_loses_any_member_ends_and_loses_nothing() {
    // Members 0-2 were there; 3 is the one being added (lost once the
    // first rows, saved on it, are in place).
    for lost in 0..4 {
        lose_finish_replace(RaidLevel::Raid5, 3, lost, 100 + 2 * lost as u64);
    }
}

#[test]
fn a_raid1_resync_goes_on_without_an_old_mirror() {
    for lost in 0..2 {
        lose_finish_replace(RaidLevel::Raid1, 2, lost, 300 + 2 * lost as u64);
    }
}

#[test]
fn a_new_mirror_lost_mid_resync_ends_the_job_and_is_never_trusted() {
    let Rig {
        pool,
        mem,
        plans,
        mut model,
        ..
    } = rig(RaidLevel::Raid1, 2);
    plans[2].vanish();
    finish(&pool, &mut model, 500);
    assert_eq!(states(&pool)[2], "failed");
    model_verify(&pool, &model, "new mirror lost");
    model_write(&pool, &mut model, 3_000_000, 500_000, 501);
    pool.commit().unwrap();
    drop(pool);
    // It comes back: a resync it never finished and writes it missed. Its
    // failure was recorded with the end of the job, so no read goes to it.
    plans[2].heal();
    let pool = open_without(&mem, &[1, 3]);
    assert_eq!(states(&pool)[2], "failed");
    model_verify(&pool, &model, "the lost mirror back beside mirror 0");
    let msg = pool.clear_member(2).unwrap();
    assert!(msg.contains("rebuilding"), "{msg}");
    finish(&pool, &mut model, 502);
    assert_eq!(pool.info().health, "degraded", "mirror 1 is still missing");
    pool.commit().unwrap();
    drop(pool);
    let pool = open_without(&mem, &[1, 3]);
    assert_eq!(states(&pool)[2], "online");
    model_verify(&pool, &model, "the rebuilt new mirror beside mirror 0");
}

#[test]
fn a_reshape_resumes_after_a_restart_without_a_member() {
    let Rig {
        pool,
        mem,
        mut model,
        ..
    } = rig(RaidLevel::Raid5, 3);
    pool.commit().unwrap();
    drop(pool);
    let pool = open_without(&mem, &[1, 4]);
    assert!(pool.job().is_some());
    model_verify(&pool, &model, "reopened without member 1");
    finish(&pool, &mut model, 600);
    model_verify(&pool, &model, "after the degraded reshape");
    pool.commit().unwrap();
    drop(pool);
    // Member 1 back: it holds the old layout and missed every write since.
    let pool = open_without(&mem, &[4]);
    assert_eq!(states(&pool)[1], "stale");
    model_verify(&pool, &model, "member 1 back, stale");
    pool.clear_member(1).unwrap();
    finish(&pool, &mut model, 601);
    assert_eq!(pool.info().health, "online");
    pool.commit().unwrap();
    drop(pool);
    for other in [0, 2, 3] {
        let pool = open_without(&mem, &[other, 4]);
        model_verify(&pool, &model, &format!("rebuilt, then {other} missing"));
    }
}

/// A power cut at a random write of a raid5 reshape running without
/// member `lost`: the pool opens, every byte reads back, the job resumes
/// and ends, and `check` finds nothing wrong. No client writes run
/// beside the job here: in the new layout a row holds parts of two
/// chunks, and a client's write torn over one, with a member missing,
/// can damage the other's unit on that member (ARCHITECTURE.md, "Known
/// limits", the first: the write hole of grown raid5 pools, which a
/// missing member leaves no crash resync to mend). The job's own rows
/// are whole-row writes, redone from the old rows after a cut.
fn degraded_cut(seed: u64) {
    let n = 3;
    let mut sim = CrashSim::new(n + 1, 32 * MIB, seed);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let pool = create_with_unit(RaidLevel::Raid5, devs[..n].to_vec(), 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL - 300_000, seed);
    pool.commit().unwrap();
    pool.add_member(devs[n].clone(), false).unwrap();
    assert!(!pool.job_step(128 * 1024).unwrap());
    pool.commit().unwrap();
    drop(pool);
    let lost = (seed % n as u64) as usize;
    let without: Vec<DeviceRef> = (0..=n)
        .filter(|&i| i != lost)
        .map(|i| devs[i].clone())
        .collect();
    let pool = Pool::open(without).unwrap();
    let cut = sim.random() % if seed.is_multiple_of(3) { 4_000 } else { 400 } + 1;
    sim.cut_after(cut);
    loop {
        let r = pool.job_step(128 * 1024);
        if sim.power_lost() {
            break;
        }
        if r.unwrap_or_else(|e| panic!("seed {seed}: degraded step: {e}")) {
            break;
        }
    }
    drop(pool);
    let after = sim.crash();
    let without: Vec<DeviceRef> = (0..=n)
        .filter(|&i| i != lost)
        .map(|i| after[i].clone() as DeviceRef)
        .collect();
    let pool =
        Pool::open(without).unwrap_or_else(|e| panic!("seed {seed}: must open after a cut: {e}"));
    let what = format!("seed {seed}, member {lost} lost, cut after {cut} writes");
    model_verify(&pool, &model, &format!("{what}: reopened"));
    pool.run_job(&AtomicBool::new(false), |_| {})
        .unwrap_or_else(|e| panic!("{what}: the job must resume degraded: {e}"));
    assert!(pool.job().is_none());
    model_verify(&pool, &model, &format!("{what}: after the job"));
    let r = pool.check(false).unwrap();
    assert!(r.errors.is_empty(), "{what}: {r:?}");
}

#[test]
fn power_cut_during_a_degraded_raid5_reshape() {
    for i in 0..crash_iters(30, 20, 4) {
        degraded_cut(11_000 + i * 43);
    }
}

#[test]
fn a_hot_spare_takes_the_place_of_a_member_lost_mid_reshape() {
    let Rig {
        pool,
        mem,
        devs,
        plans,
        mut model,
    } = rig(RaidLevel::Raid5, 3);
    pool.add_spare(devs[4].clone(), false).unwrap();
    plans[2].vanish();
    model_write(&pool, &mut model, 2_000_000, 100_000, 700);
    // Not while the reshape runs: a rebuild waits for it.
    assert_eq!(pool.use_spares().unwrap(), None);
    finish(&pool, &mut model, 701);
    let msg = pool
        .use_spares()
        .unwrap()
        .expect("the spare is used once the job ends");
    assert!(msg.contains("rebuilding"), "{msg}");
    finish(&pool, &mut model, 702);
    assert_eq!(pool.info().health, "online");
    pool.commit().unwrap();
    drop(pool);
    for other in [0, 1, 3, 4] {
        let pool = open_without(&mem, &[2, other]);
        model_verify(
            &pool,
            &model,
            &format!("spare in place of 2, then {other} missing"),
        );
    }
}

#[test]
fn a_new_member_that_dies_before_the_first_step_is_replaced_and_the_reshape_starts_over() {
    // raid0 and raid5: the first step saves the first rows on the new
    // member; until that is committed nothing is on it, and `pool replace`
    // (or a hot spare, on the daemon's tick) puts another device in its
    // place. Before (2026-12-07) the job could never run again, and
    // `pool replace` and the spare waited for it.
    for (level, n, restart, spare) in [
        (RaidLevel::Raid5, 3, false, false),
        (RaidLevel::Raid0, 2, false, false),
        (RaidLevel::Raid5, 3, true, false),
        (RaidLevel::Raid5, 3, false, true),
    ] {
        let what = format!("{level} x{n}, restart {restart}, spare {spare}");
        let Rig {
            pool,
            mem,
            devs,
            plans,
            mut model,
        } = written(level, n);
        if spare {
            pool.add_spare(devs[n + 1].clone(), false).unwrap();
        }
        pool.add_member(devs[n].clone(), false).unwrap();
        // Nothing to take while the new member serves.
        assert_eq!(pool.use_spares().unwrap(), None, "{what}");
        plans[n].vanish();
        let e = pool.job_step(256 * 1024).unwrap_err().to_string();
        assert!(e.contains("pool replace"), "{what}: {e}");
        assert!(
            pool.members_out().contains(&n),
            "{what}: {:?}",
            pool.members_out()
        );
        assert!(pool.job_step(256 * 1024).is_err(), "{what}");
        model_write(&pool, &mut model, 500_000, 300_000, 2);
        let pool = if restart {
            pool.commit().unwrap();
            drop(pool);
            let p = Pool::open(devs[..n].to_vec()).unwrap();
            let e = p.job_step(256 * 1024).unwrap_err().to_string();
            assert!(e.contains("pool replace"), "{what}: {e}");
            p
        } else {
            pool
        };
        model_verify(&pool, &model, &format!("{what}: stuck"));
        let msg = if spare {
            let m = pool.use_spares().unwrap();
            assert!(pool.spares().is_empty(), "{what}");
            m.expect("the spare takes the dead new member's place")
        } else {
            pool.replace_member(n, devs[n + 1].clone(), false)
                .unwrap()
                .0
        };
        assert!(msg.contains("starts over"), "{what}: {msg}");
        finish(&pool, &mut model, 7);
        assert_eq!(pool.info().health, "online", "{what}");
        assert!(pool.check(false).unwrap().clean(), "{what}");
        model_verify(&pool, &model, &format!("{what}: reshaped"));
        drop(pool);
        // The dead device back is a former member, ignored.
        let mut all = devs[..n].to_vec();
        all.push(devs[n + 1].clone());
        all.push(mem[n].clone() as DeviceRef);
        let pool = Pool::open(all).unwrap();
        assert_eq!(
            pool.info().health,
            "online",
            "{what}: {:?}",
            pool.warnings()
        );
        model_verify(&pool, &model, &format!("{what}: reopened"));
        if level == RaidLevel::Raid5 {
            drop(pool);
            lose_each_with_the_replacement(&mem, n, &model, &what);
        }
    }
}

/// Open a raid5 pool whose new member `n` was replaced by device `n + 1`
/// without each of its members in turn: every byte must read back.
fn lose_each_with_the_replacement(mem: &[Arc<MemDevice>], n: usize, model: &[u8], what: &str) {
    for lost in 0..=n {
        let devs: Vec<DeviceRef> = (0..=n)
            .filter(|&i| i != lost)
            .map(|i| if i == n { mem[n + 1].clone() } else { mem[i].clone() } as DeviceRef)
            .collect();
        let pool = Pool::open(devs).unwrap();
        model_verify(&pool, model, &format!("{what}: member {lost} lost"));
    }
}
