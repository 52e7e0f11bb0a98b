//! A raid5 reshape's first step rewrites the first rows in the new layout
//! over old rows not yet moved, from a copy saved first; until that step's
//! checkpoint the saved rows may be their only whole copy. A power cut in
//! that step, then the new member gone at the restart: the pool opens from
//! the second copy the step also wrote through the old layout, the reshape
//! goes on degraded and ends, and nothing written is lost. Before
//! (2026-12-07) the only copy was on the new member, and such a pool did
//! not open ("new member missing").

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use vpool::device::{CrashSim, DeviceRef};
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 6 << 20;

/// Where the new member holds its copy of the first rows (raid5 x3 onto
/// a fourth member, 16 KiB units: rows 2..8 of its data area, 96 KiB).
fn new_members_copy(data_start: u64) -> (u64, usize) {
    (data_start + 2 * UNIT, (2 * 3 * UNIT) as usize)
}

const UNIT: u64 = 16 * 1024;

/// The pool written and committed, the new member added; the first step
/// cut after `cut` writes (None: not cut). Returns the simulation, the
/// model, the writes the step made and the members' data start.
fn first_step(seed: u64, cut: Option<u64>) -> (CrashSim, Vec<u8>, u64, u64) {
    let n = 3;
    let sim = CrashSim::new(n + 1, 32 * MIB, seed);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let pool = create_with_unit(RaidLevel::Raid5, devs[..n].to_vec(), UNIT);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL - 300_000, seed);
    pool.commit().unwrap();
    pool.add_member(devs[n].clone(), false).unwrap();
    let before = sim.writes();
    if let Some(cut) = cut {
        sim.cut_after(cut);
    }
    let r = pool.job_step(128 * 1024);
    if !sim.power_lost() {
        assert!(!r.unwrap_or_else(|e| panic!("seed {seed}: first step: {e}")));
    }
    let writes = sim.writes() - before;
    let data_start = pool.label().data_start;
    drop(pool);
    (sim, model, writes, data_start)
}

#[test]
fn a_cut_in_the_first_step_then_the_new_member_gone_loses_nothing() {
    let n = 3;
    let (_, _, step, _) = first_step(1, None);
    assert!(
        step > 8,
        "the first step writes the copies and the rows: {step}"
    );
    let mut past_start = false;
    for i in 0..crash_iters(40, 25, 8) {
        let seed = 21_000 + i * 61;
        let cut = seed % step + 1;
        let (mut sim, model, _, _) = first_step(seed, Some(cut));
        let after = sim.crash();
        let what = format!("seed {seed}, cut after {cut} of {step} writes, new member gone");
        let without: Vec<DeviceRef> = (0..n).map(|i| after[i].clone() as DeviceRef).collect();
        let pool = Pool::open(without).unwrap_or_else(|e| panic!("{what}: must open: {e}"));
        model_verify(&pool, &model, &format!("{what}: reopened"));
        let job = pool.job().expect("the reshape is still recorded");
        if job.done_bytes == 0 {
            // Phase START: the new member held nothing yet.
            let e = pool.job_step(128 * 1024).unwrap_err().to_string();
            assert!(e.contains("pool replace"), "{what}: {e}");
            continue;
        }
        past_start = true;
        pool.run_job(&AtomicBool::new(false), |_| {})
            .unwrap_or_else(|e| panic!("{what}: the job must go on degraded: {e}"));
        assert!(pool.job().is_none(), "{what}");
        model_verify(&pool, &model, &format!("{what}: after the job"));
        let r = pool.check(false).unwrap();
        assert!(r.errors.is_empty(), "{what}: {r:?}");
    }
    assert!(past_start, "no cut left the reshape past phase START");
}

#[test]
fn a_cut_in_the_first_step_then_damage_to_the_new_members_copy_loses_nothing() {
    // The new member's copy is not read through checksums: a write it
    // lost or tore (here: garbage over the whole copy after the cut)
    // would be rewritten as the first rows. Each block is taken from the
    // second copy where only that one matches the block's checksum.
    let (_, _, step, _) = first_step(1, None);
    for i in 0..crash_iters(30, 30, 6) {
        let seed = 31_000 + i * 53;
        let cut = seed % step + 1;
        let (mut sim, model, _, data_start) = first_step(seed, Some(cut));
        let after = sim.crash();
        let (at, len) = new_members_copy(data_start);
        garbage(&after[3], at, len);
        let what = format!("seed {seed}, cut after {cut} of {step} writes, its copy damaged");
        let all: Vec<DeviceRef> = after.iter().map(|d| d.clone() as DeviceRef).collect();
        let pool = Pool::open(all).unwrap_or_else(|e| panic!("{what}: must open: {e}"));
        model_verify(&pool, &model, &format!("{what}: reopened"));
        pool.run_job(&AtomicBool::new(false), |_| {})
            .unwrap_or_else(|e| panic!("{what}: the job must end: {e}"));
        model_verify(&pool, &model, &format!("{what}: after the job"));
        let r = pool.check(false).unwrap();
        assert!(r.errors.is_empty(), "{what}: {r:?}");
    }
}
