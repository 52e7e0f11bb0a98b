//! Member faults in service, through the fault-injection device: a member
//! that vanishes, fails writes, fails reads, dies after a number of writes
//! or errs transiently, on raid1 and raid5 pools, with every byte checked
//! against a model during and after, and after reopening with and without
//! the faulty member. Then `pool fail`, `pool replace` and `pool clear`
//! with their rebuilds, and the bad inputs.

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vpool::device::{DeviceRef, FaultDevice, FaultPlan, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 6 << 20;

struct Rig {
    pool: Pool,
    mem: Vec<Arc<MemDevice>>,
    plans: Vec<FaultPlan>,
    model: Vec<u8>,
}

fn rig(level: RaidLevel, n: usize) -> Rig {
    let mem = mem_devices(n, 32 * MIB);
    let mut plans = Vec::new();
    let mut devs: Vec<DeviceRef> = Vec::new();
    for m in &mem {
        let (d, p) = FaultDevice::wrap(m.clone() as DeviceRef);
        devs.push(d);
        plans.push(p);
    }
    let pool = create_with_unit(level, devs, 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 1);
    pool.commit().unwrap();
    Rig {
        pool,
        mem,
        plans,
        model,
    }
}

fn state(pool: &Pool, m: usize) -> String {
    pool.info().members[m].state.clone()
}

/// Mixed writes (full chunks and small pieces) and verified reads.
fn churn(pool: &Pool, model: &mut [u8], rounds: u64, seed: u64) {
    for i in 0..rounds {
        let off = ((i * 1_234_567 + seed * 7_654_321) % model.len() as u64) as usize;
        let len = if i % 3 == 0 { 300_000 } else { 5_000 };
        model_write(pool, model, off, len, seed * 1000 + i);
        let mut got = vec![0u8; 100_000.min(model.len() - off)];
        pool.volume("a", None)
            .unwrap()
            .read_at(&mut got, off as u64)
            .unwrap();
        assert_eq!(got, model[off..off + got.len()], "read back at {off}");
        if i % 5 == 4 {
            pool.commit().unwrap();
        }
    }
}

fn open(mem: &[Arc<MemDevice>], skip: Option<usize>) -> Pool {
    let devs: Vec<DeviceRef> = (0..mem.len())
        .filter(|&i| Some(i) != skip)
        .map(|i| mem[i].clone() as DeviceRef)
        .collect();
    Pool::open(devs).expect("reopen")
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Vanish,
    WriteErrors,
    ReadErrors,
    DiesAfterWrites,
}

const FAULTS: [Fault; 4] = [
    Fault::Vanish,
    Fault::WriteErrors,
    Fault::ReadErrors,
    Fault::DiesAfterWrites,
];

fn inject(plan: &FaultPlan, f: Fault) {
    match f {
        Fault::Vanish => plan.vanish(),
        Fault::WriteErrors => plan.fail_writes(0..u64::MAX),
        Fault::ReadErrors => plan.fail_reads(0..u64::MAX),
        Fault::DiesAfterWrites => plan.die_after_writes(7),
    }
}

fn member_fails_in_service(level: RaidLevel, n: usize, victim: usize, fault: Fault) {
    let what = format!("{level} x{n}, member {victim}, {fault:?}");
    let Rig {
        pool,
        mem,
        plans,
        mut model,
    } = rig(level, n);
    inject(&plans[victim], fault);
    churn(&pool, &mut model, 30, 3);
    // Reads alone must find a read fault: read everything.
    model_verify(&pool, &model, &what);
    pool.commit().unwrap();
    let info = pool.info();
    assert_eq!(info.members[victim].state, "failed", "{what}: {info:?}");
    assert_eq!(info.health, "degraded", "{what}");
    let e = info.members[victim].errors;
    // A read or write is retried once, both errors counted; a member that
    // dies may first fail a durable write of the flush log (raid5 partial
    // parities), which is a flush: never retried, one error.
    let least = match fault {
        Fault::DiesAfterWrites => 1,
        _ => 2,
    };
    assert!(e.read + e.write >= least, "{what}: errors counted: {e:?}");
    assert!(info.events.iter().any(|e| e.contains("FAILED")), "{what}");
    for (i, m) in info.members.iter().enumerate() {
        if i != victim {
            assert_eq!(m.state, "online", "{what}: member {i}");
        }
    }
    drop(pool);
    // The member comes back (the fault was transient) with stale data: the
    // superblock says it failed, so it is not used.
    let pool = open(&mem, None);
    assert_eq!(state(&pool, victim), "failed", "{what}: after reopen");
    assert!(
        pool.warnings().iter().any(|w| w.contains("failed")),
        "{what}: {:?}",
        pool.warnings()
    );
    model_verify(
        &pool,
        &model,
        &format!("{what}: reopened with the member back"),
    );
    drop(pool);
    let pool = open(&mem, Some(victim));
    model_verify(
        &pool,
        &model,
        &format!("{what}: reopened without the member"),
    );
}

#[test]
fn raid1_member_failures_in_service_lose_nothing() {
    for (i, f) in FAULTS.into_iter().enumerate() {
        member_fails_in_service(RaidLevel::Raid1, 2, i % 2, f);
        member_fails_in_service(RaidLevel::Raid1, 3, i % 3, f);
    }
}

#[test]
fn raid5_member_failures_in_service_lose_nothing() {
    for (i, f) in FAULTS.into_iter().enumerate() {
        member_fails_in_service(RaidLevel::Raid5, 3, i % 3, f);
        member_fails_in_service(RaidLevel::Raid5, 4, (i + 1) % 4, f);
    }
}

#[test]
fn a_transient_error_is_retried_and_counted() {
    let Rig {
        pool,
        plans,
        mut model,
        ..
    } = rig(RaidLevel::Raid5, 3);
    plans[1].transient(1);
    churn(&pool, &mut model, 5, 9);
    let info = pool.info();
    assert_eq!(info.members[1].state, "online");
    assert_eq!(info.health, "online");
    let e = info.members[1].errors;
    assert_eq!(e.read + e.write, 1, "{e:?}");
    pool.clear_member(1).unwrap();
    assert_eq!(pool.info().members[1].errors.read, 0);
    assert_eq!(pool.info().members[1].errors.write, 0);
}

#[test]
fn a_second_failure_stops_writes_and_never_returns_garbage() {
    for level in [RaidLevel::Raid5, RaidLevel::Raid1] {
        let Rig {
            pool,
            plans,
            mut model,
            ..
        } = rig(level, 3);
        let second = if level == RaidLevel::Raid1 { 1 } else { 2 };
        plans[0].vanish();
        if level == RaidLevel::Raid1 {
            plans[2].vanish();
        }
        churn(&pool, &mut model, 10, 4);
        pool.commit().unwrap();
        assert_eq!(pool.info().health, "degraded", "{level}");
        // Now the last redundancy goes, for part of the member.
        plans[second].fail_reads(0..u64::MAX);
        plans[second].fail_writes(0..u64::MAX);
        let vol = pool.volume("a", None).unwrap();
        let w = vol.write_at(&pattern(50_000, 5), 0);
        assert!(
            w.is_err(),
            "{level}: a write with no redundancy left must fail: {w:?}"
        );
        assert_eq!(pool.info().health, "failed", "{level}: {w:?}");
        // Every read either fails or returns the right bytes.
        let mut errors = 0;
        for off in (0..VOL).step_by(64 * 1024) {
            let mut got = vec![0u8; 64 * 1024];
            match vol.read_at(&mut got, off as u64) {
                Ok(()) => assert_eq!(
                    got,
                    model[off..off + got.len()],
                    "{level}: garbage at {off}"
                ),
                Err(_) => errors += 1,
            }
        }
        assert!(errors > 0, "{level}: {:?}", pool.info().members);
        let e = vol.write_at(&pattern(10, 6), 0).unwrap_err().to_string();
        assert!(e.contains("failed"), "{level}: {e}");
    }
}

#[test]
fn linear_and_raid0_fail_the_io_and_keep_the_member() {
    for level in [RaidLevel::Linear, RaidLevel::Raid0] {
        let Rig { pool, plans, .. } = rig(level, 2);
        // Data (not the metadata copy) on member 0, where linear starts.
        plans[0].fail_reads(pool.label().data_start..u64::MAX);
        let vol = pool.volume("a", None).unwrap();
        let mut first_err = None;
        for off in (0..VOL).step_by(1 << 20) {
            let mut got = vec![0u8; 1 << 20];
            if let Err(e) = vol.read_at(&mut got, off as u64) {
                first_err.get_or_insert(e);
            }
        }
        let e = first_err.unwrap_or_else(|| panic!("{level}: reads from the bad member must fail"));
        // The error names the member, the operation and where.
        let m = e
            .member()
            .unwrap_or_else(|| panic!("{level}: no member in {e}"));
        assert_eq!(
            (m.member, m.op),
            (0, vpool::error::Op::Read),
            "{level}: {e}"
        );
        let at = m
            .offset
            .unwrap_or_else(|| panic!("{level}: no offset in {e}"));
        assert!(at >= pool.label().data_start, "{level}: {e}");
        assert!(e.to_string().contains("member 0 ("), "{level}: {e}");
        // And the volume whose read met it.
        assert!(
            e.to_string()
                .starts_with(&format!("volume '{}/a'", pool.name())),
            "{level}: {e}"
        );
        let info = pool.info();
        assert_eq!(info.members[0].state, "online", "{level}");
        assert_eq!(info.health, "online", "{level}");
        assert!(info.members[0].errors.read > 0, "{level}");
        assert!(
            pool.fail_member(0).is_err(),
            "{level}: no redundancy to fail"
        );
        plans[0].heal();
        let mut got = vec![0u8; 4096];
        vol.read_at(&mut got, 0).unwrap();
    }
}

/// Run the job to the end with client writes between steps.
fn rebuild_while_writing(pool: &Pool, model: &mut [u8], seed: u64) {
    let mut i = 0;
    while !pool.job_step(512 * 1024).unwrap() {
        i += 1;
        let off = ((i * 2_345_678 + seed) % model.len() as u64) as usize;
        model_write(pool, model, off, 30_000, seed + i);
        if i % 4 == 0 {
            pool.commit().unwrap();
        }
        let j = pool.job().unwrap();
        assert_eq!(j.kind, "rebuild");
    }
    assert!(pool.job().is_none());
    model_verify(pool, model, "after the rebuild");
}

/// Fail `k`, write degraded, replace it with a blank device, rebuild while
/// writing; then every other member must be able to fail in turn.
fn replace_and_rebuild(level: RaidLevel, n: usize, k: usize) {
    let what = format!("{level} x{n} replacing {k}");
    let Rig {
        pool,
        mut mem,
        mut model,
        ..
    } = rig(level, n);
    let msg = pool.fail_member(k).unwrap();
    assert!(msg.contains("pool replace"), "{msg}");
    churn(&pool, &mut model, 8, 5);
    let new = Arc::new(MemDevice::new("fresh", 32 * MIB));
    let (msg, warnings) = pool.replace_member(k, new.clone(), false).unwrap();
    assert!(msg.contains("rebuilding"), "{msg}");
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(state(&pool, k), "rebuilding", "{what}");
    rebuild_while_writing(&pool, &mut model, 77);
    assert_eq!(state(&pool, k), "online", "{what}");
    assert_eq!(pool.info().health, "online", "{what}");
    pool.commit().unwrap();
    drop(pool);
    let old = std::mem::replace(&mut mem[k], new);
    // The old device is a former member now; the pool opens without it.
    let mut with_old: Vec<DeviceRef> = mem.iter().map(|d| d.clone() as DeviceRef).collect();
    with_old.push(old as DeviceRef);
    let pool = Pool::open(with_old).unwrap();
    assert_eq!(
        pool.info().health,
        "online",
        "{what}: {:?}",
        pool.warnings()
    );
    model_verify(&pool, &model, &what);
    drop(pool);
    for other in 0..n {
        let pool = open(&mem, Some(other));
        model_verify(
            &pool,
            &model,
            &format!("{what}: then without member {other}"),
        );
    }
}

#[test]
fn replace_rebuilds_raid1_and_raid5() {
    replace_and_rebuild(RaidLevel::Raid1, 2, 0);
    replace_and_rebuild(RaidLevel::Raid1, 3, 2);
    replace_and_rebuild(RaidLevel::Raid5, 3, 0);
    replace_and_rebuild(RaidLevel::Raid5, 4, 2);
}

#[test]
fn a_rebuild_covers_only_allocated_chunks() {
    let mem = mem_devices(3, 64 * MIB);
    let pool = create_with_unit(RaidLevel::Raid5, refs(&mem), 16 * 1024);
    pool.create_volume("a", 4 * MIB).unwrap();
    let mut model = vec![0u8; 4 * MIB as usize];
    let len = model.len();
    model_write(&pool, &mut model, 0, len, 3);
    pool.fail_member(1).unwrap();
    let fresh = Arc::new(MemDevice::new("fresh", 64 * MIB));
    pool.replace_member(1, fresh.clone(), false).unwrap();
    let stop = AtomicBool::new(false);
    pool.run_job(&stop, |_| {}).unwrap();
    assert_eq!(pool.info().health, "online");
    model_verify(&pool, &model, "after the rebuild");
    // The blank device got the member's share of the 4 MiB written (half
    // of it, on 3-member raid5), not of the whole 120 MiB pool.
    let data_start = pool.label().data_start as usize;
    let bytes = fresh.snapshot();
    let written = bytes[data_start..bytes.len() - 64 * 1024]
        .chunks(4096)
        .filter(|b| b.iter().any(|&x| x != 0))
        .count()
        * 4096;
    assert!(
        (2 * MIB as usize..3 * MIB as usize).contains(&written),
        "rebuilt {written} bytes of data"
    );
}

#[test]
fn clear_rebuilds_a_member_that_came_back() {
    let Rig {
        pool,
        mem,
        plans,
        mut model,
    } = rig(RaidLevel::Raid5, 3);
    plans[1].vanish();
    churn(&pool, &mut model, 10, 8);
    assert_eq!(state(&pool, 1), "failed");
    plans[1].heal();
    let msg = pool.clear_member(1).unwrap();
    assert!(msg.contains("rebuilding"), "{msg}");
    rebuild_while_writing(&pool, &mut model, 99);
    assert_eq!(pool.info().members[1].errors.read, 0);
    drop(pool);
    for other in [0, 2] {
        let pool = open(&mem, Some(other));
        model_verify(&pool, &model, &format!("without member {other}"));
    }
}

#[test]
fn a_failed_member_is_cleared_after_a_restart() {
    let Rig {
        pool,
        mem,
        plans,
        mut model,
    } = rig(RaidLevel::Raid1, 2);
    plans[0].fail_writes(0..u64::MAX);
    churn(&pool, &mut model, 6, 2);
    pool.commit().unwrap();
    drop(pool);
    let pool = open(&mem, None);
    assert_eq!(state(&pool, 0), "failed");
    pool.clear_member(0).unwrap();
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(pool.info().health, "online");
    drop(pool);
    let pool = open(&mem, Some(1));
    model_verify(&pool, &model, "the cleared member alone");
}

#[test]
fn bad_fail_and_replace_requests_change_nothing() {
    let Rig { pool, mem, .. } = rig(RaidLevel::Raid5, 3);
    // Replacing with a device that is too small.
    let small = Arc::new(MemDevice::new("small", 2 * MIB));
    let e = pool
        .replace_member(0, small, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("smaller"), "{e}");
    // With a member of the pool.
    let e = pool
        .replace_member(0, mem[1].clone() as DeviceRef, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already a member"), "{e}");
    assert_eq!(pool.info().health, "online");
    pool.fail_member(0).unwrap();
    // A second member of a raid5 pool cannot be failed.
    let e = pool.fail_member(1).unwrap_err().to_string();
    assert!(e.contains("would lose data"), "{e}");
    let e = pool.fail_member(0).unwrap_err().to_string();
    assert!(e.contains("already out of service"), "{e}");
    // A device of another pool needs --force.
    let other = mem_devices(2, 32 * MIB);
    let _p = create_with_unit(RaidLevel::Raid1, refs(&other), 16 * 1024);
    let e = pool
        .replace_member(0, other[0].clone() as DeviceRef, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("--force"), "{e}");
    assert_eq!(state(&pool, 0), "failed");
}

#[test]
fn a_hot_spare_replaces_a_failed_member() {
    for (level, n) in [(RaidLevel::Raid1, 2), (RaidLevel::Raid5, 3)] {
        let Rig {
            pool,
            mut mem,
            plans,
            mut model,
        } = rig(level, n);
        let spare = Arc::new(MemDevice::new("spare", 32 * MIB));
        let msg = pool.add_spare(spare.clone(), false).unwrap();
        assert!(msg.contains("hot spare"), "{msg}");
        assert_eq!(pool.info().spares, ["spare"]);
        // Nothing to do while every member is in service.
        assert!(pool.use_spares().unwrap().is_none());
        plans[1].vanish();
        churn(&pool, &mut model, 8, 6);
        let started = pool.use_spares().unwrap().expect("the spare must be used");
        assert!(started.contains("spare"), "{level}: {started}");
        assert!(pool.info().spares.is_empty(), "{level}");
        rebuild_while_writing(&pool, &mut model, 55);
        assert_eq!(pool.info().members[1].device.as_deref(), Some("spare"));
        assert_eq!(pool.info().health, "online", "{level}");
        drop(pool);
        mem[1] = spare;
        for lost in 0..n {
            let pool = open(&mem, Some(lost));
            model_verify(
                &pool,
                &model,
                &format!("{level}: spare in, member {lost} lost"),
            );
        }
    }
}

#[test]
fn spares_are_found_again_at_open_and_can_be_removed() {
    let Rig { pool, mem, .. } = rig(RaidLevel::Raid5, 3);
    let spare = Arc::new(MemDevice::new("spare", 32 * MIB));
    pool.add_spare(spare.clone(), false).unwrap();
    assert!(pool.add_spare(spare.clone(), false).is_err(), "twice");
    let small = Arc::new(MemDevice::new("small", 2 * MIB));
    assert!(pool
        .add_spare(small, false)
        .unwrap_err()
        .to_string()
        .contains("smaller"));
    drop(pool);
    let mut devs: Vec<DeviceRef> = vec![spare.clone()];
    devs.extend(mem.iter().map(|d| d.clone() as DeviceRef));
    let pool = Pool::open(devs).unwrap();
    assert_eq!(pool.info().spares, ["spare"], "{:?}", pool.warnings());
    assert_eq!(pool.info().health, "online");
    assert!(pool.remove_spare(std::path::Path::new("spare")).unwrap());
    assert!(pool.info().spares.is_empty());
    // Its label is free now: another pool may take it without --force.
    let linear = create_with_unit(
        RaidLevel::Raid1,
        vec![spare as DeviceRef, Arc::new(MemDevice::new("x", 32 * MIB))],
        16 * 1024,
    );
    assert_eq!(linear.info().health, "online");
    // Linear pools have no use for spares.
    let Rig { pool, .. } = rig(RaidLevel::Linear, 2);
    let e = pool
        .add_spare(Arc::new(MemDevice::new("s2", 32 * MIB)), false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no redundancy"), "{e}");
}

/// `pool replace` of a member still in service (md's `--replace`): the old
/// device serves the rows not yet rebuilt, so while the rebuild is half done
/// another member can be lost (raid1 x2: the only other mirror; raid5: any
/// other member) and every byte still reads back. Before, the member was
/// failed first and this lost data.
#[test]
fn replacing_a_member_in_service_keeps_redundancy() {
    for (level, n, k) in [
        (RaidLevel::Raid1, 2, 1),
        (RaidLevel::Raid5, 3, 1),
        (RaidLevel::Raid5, 4, 0),
    ] {
        let what = format!("{level} x{n} replacing {k} in service");
        let Rig {
            pool,
            plans,
            mut model,
            ..
        } = rig(level, n);
        let new = Arc::new(MemDevice::new("fresh", 32 * MIB));
        let (msg, warnings) = pool.replace_member(k, new.clone(), false).unwrap();
        assert!(msg.contains("rebuilding"), "{what}: {msg}");
        assert!(
            warnings.iter().any(|w| w.contains("keeps serving")),
            "{what}: {warnings:?}"
        );
        // Part of the way, with writes on both sides of the checkpoint.
        for _ in 0..3 {
            pool.job_step(256 * 1024).unwrap();
        }
        let job = pool.job().unwrap();
        assert!(
            job.done_bytes > 0 && job.done_bytes < job.total_bytes,
            "{what}: {job:?}"
        );
        churn(&pool, &mut model, 6, 31);
        // Now another member goes.
        let other = (k + 1) % n;
        plans[other].vanish();
        model_verify(
            &pool,
            &model,
            &format!("{what}, member {other} lost mid-rebuild"),
        );
        churn(&pool, &mut model, 4, 37);
        model_verify(&pool, &model, &format!("{what}, after writes"));
    }
}

/// The device being replaced fails mid-rebuild: it is left out (its rows
/// are rebuilt from the other members), nothing is lost, the rebuild ends
/// with the pool online and the new member right.
#[test]
fn a_replaced_member_that_fails_mid_rebuild_is_left_out() {
    for (level, n) in [(RaidLevel::Raid1, 2), (RaidLevel::Raid5, 3)] {
        let what = format!("{level} x{n}");
        let Rig {
            pool,
            mut mem,
            plans,
            mut model,
        } = rig(level, n);
        let new = Arc::new(MemDevice::new("fresh", 32 * MIB));
        pool.replace_member(1, new.clone(), false).unwrap();
        pool.job_step(256 * 1024).unwrap();
        plans[1].vanish();
        churn(&pool, &mut model, 6, 41);
        model_verify(&pool, &model, &what);
        assert!(
            pool.info()
                .events
                .iter()
                .any(|e| e.contains("being replaced, failed")),
            "{what}: {:?}",
            pool.info().events
        );
        rebuild_while_writing(&pool, &mut model, 43);
        assert_eq!(pool.info().health, "online", "{what}");
        model_verify(&pool, &model, &what);
        pool.commit().unwrap();
        drop(pool);
        mem[1] = new;
        // The rebuilt member alone with the others: each other one lost in turn.
        for other in (0..n).filter(|&i| i != 1) {
            let pool = open(&mem, Some(other));
            model_verify(&pool, &model, &format!("{what}: without member {other}"));
        }
    }
}

/// A member (a raid1 mirror, a raid5 member) that vanishes with nothing
/// written to it afterwards is found by a scrub's reads: the member
/// fails, and the scrub finishes degraded (its copies are the rebuild's
/// to restore, not repairs to write), with nothing unrecoverable and
/// every byte still read back.
#[test]
fn a_scrub_that_finds_a_vanished_mirror_fails_it_and_goes_on() {
    for level in [RaidLevel::Raid1, RaidLevel::Raid5] {
        let n = if level == RaidLevel::Raid1 { 2 } else { 3 };
        let Rig {
            pool, plans, model, ..
        } = rig(level, n);
        plans[1].vanish();
        // Repairing (not `check_only`): no repair is written to it.
        let r = pool
            .scrub(false, |_, _| {})
            .unwrap_or_else(|e| panic!("{level:?}: the scrub stopped: {e}"));
        assert_eq!(r.unrecoverable + r.repaired, 0, "{level:?}: {r:?}");
        assert!(r.bytes >= VOL as u64, "{level:?}: not every chunk: {r:?}");
        assert_eq!(state(&pool, 1), "failed", "{level:?}");
        model_verify(&pool, &model, &format!("{level:?} after the scrub"));
    }
}

/// 16 KiB stripe units (see `rig`); raid5 x3 puts row `s`'s parity on
/// member `2 - s % 3`, so member 1 holds parity on rows 1, 4, 7...
const UNIT: u64 = 16 * 1024;

/// A scrub finds damaged copies on member 1 and its repair writes fail:
/// the write fails the member, as a write error in service does, and the
/// scrub goes on degraded. Every chunk is still checked, nothing is
/// counted repaired, and every byte reads back. On raid5 the damage is on
/// data units (rows 0, 3, 6...), so the failing write is a data repair.
#[test]
fn a_scrub_whose_repair_write_fails_the_member_goes_on() {
    for level in [RaidLevel::Raid1, RaidLevel::Raid5] {
        let n = if level == RaidLevel::Raid1 { 2 } else { 3 };
        let Rig {
            pool,
            mem,
            plans,
            model,
        } = rig(level, n);
        let ds = pool.label().data_start;
        for row in (0..60).step_by(3) {
            garbage(&mem[1], ds + row * UNIT + 4096, 4096);
        }
        plans[1].fail_writes(0..u64::MAX);
        let r = pool
            .scrub(false, |_, _| {})
            .unwrap_or_else(|e| panic!("{level:?}: the scrub stopped: {e}"));
        assert!(r.bad_blocks > 0, "{level:?}: the damage was not met: {r:?}");
        assert_eq!(r.repaired + r.unrecoverable, 0, "{level:?}: {r:?}");
        assert!(r.bytes >= VOL as u64, "{level:?}: not every chunk: {r:?}");
        assert_eq!(state(&pool, 1), "failed", "{level:?}");
        model_verify(&pool, &model, &format!("{level:?} after the scrub"));
    }
}

/// Raid5 parity on member 1 damaged at `rows` (and nothing else: a
/// checking scrub finds no bad data block), then `arm` sets a fault on
/// member 1 (given the data area's start) and a repairing scrub runs: the
/// fault fails the member, and the parity check ends there, degraded,
/// instead of stopping the scrub. Every chunk is checked, no parity
/// rewrite is counted, every byte reads back. Returns member 1's plan.
fn scrub_with_a_parity_fault(
    rows: impl Iterator<Item = u64>,
    arm: impl FnOnce(&FaultPlan, u64),
) -> FaultPlan {
    let Rig {
        pool,
        mem,
        plans,
        model,
    } = rig(RaidLevel::Raid5, 3);
    let ds = pool.label().data_start;
    for row in rows {
        garbage(&mem[1], ds + row * UNIT, 4096);
    }
    let found = pool.scrub(true, |_, _| {}).unwrap();
    assert!(found.parity_errors > 0, "{found:?}");
    assert_eq!(found.bad_blocks, 0, "{found:?}");
    arm(&plans[1], ds);
    let r = pool
        .scrub(false, |_, _| {})
        .unwrap_or_else(|e| panic!("the scrub stopped: {e}"));
    assert_eq!(r.parity_repaired, 0, "no rewrite succeeded: {r:?}");
    assert!(r.bytes >= VOL as u64, "not every chunk: {r:?}");
    assert_eq!(state(&pool, 1), "failed");
    model_verify(&pool, &model, "raid5 after the scrub");
    plans[1].clone()
}

/// The parity rewrite fails the member (its writes fail).
#[test]
fn a_scrub_whose_parity_rewrite_fails_the_member_goes_on() {
    scrub_with_a_parity_fault((1..60).step_by(3), |p, _| p.fail_writes(0..u64::MAX));
}

/// The parity check's own read of the damaged parity fails the member; the
/// scrub's data reads before it, which read that parity to rebuild each
/// data unit of the row, get through.
#[test]
fn a_scrub_whose_parity_read_fails_the_member_goes_on() {
    let row = 4;
    let plan = scrub_with_a_parity_fault(std::iter::once(row), |p, ds| {
        // Two reads rebuild the row's two data units; the third is the check's.
        p.fail_reads_after(ds + row * UNIT..ds + (row + 1) * UNIT, 2)
    });
    // The read and its retry.
    assert!(plan.injected() >= 1, "no read failed");
}
