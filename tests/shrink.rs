//! Removing members online (`pool remove`): linear (middle and last
//! member), raid0 and raid1, with writes interleaved with the background
//! job, power cuts at random points of the evacuation and the restripe
//! down, a member lying while the job runs, and the bad inputs.

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vpool::device::{CrashSim, DeviceRef, FaultDevice, FaultPlan, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

fn create(level: RaidLevel, devs: Vec<DeviceRef>) -> Pool {
    create_with_unit(level, devs, 16 * 1024)
}

/// A volume as large as the pool, written whole, then mostly discarded
/// from the bottom: the chunks left in use sit at the top of the array,
/// where the removal must move them from. A snapshot shares them.
fn fill_top(pool: &Pool) -> (Vec<u8>, Vec<u8>) {
    let cap = pool.info().capacity as usize;
    pool.create_volume("a", cap as u64).unwrap();
    let mut model = vec![0u8; cap];
    model_write(pool, &mut model, 0, cap, 1);
    pool.commit().unwrap();
    let cut = cap * 7 / 10;
    pool.volume("a", None)
        .unwrap()
        .discard(0, cut as u64)
        .unwrap();
    model[..cut].fill(0);
    pool.commit().unwrap();
    pool.snapshot("a", "s").unwrap();
    let snap = model.clone();
    model_write(pool, &mut model, cap - 300_000, 100_000, 2);
    (model, snap)
}

fn remove_while_writing(level: RaidLevel, members: usize, leaving: usize) {
    let what = format!("{level} {members} members, removing {leaving}");
    let devs = mem_devices(members, 32 * MIB);
    let pool = create(level, refs(&devs));
    let before = pool.info().capacity;
    let (mut model, snap) = fill_top(&pool);
    let message = pool.remove_member(leaving).unwrap();
    assert!(message.contains("mem"), "{message}");
    let mut i = 0u64;
    let mut kinds = Vec::new();
    while !pool.job_step(256 * 1024).unwrap() {
        i += 1;
        if let Some(j) = pool.job() {
            if kinds.last() != Some(&j.kind) {
                kinds.push(j.kind.clone());
            }
            assert!(j.done_bytes <= j.total_bytes, "{what}: {j:?}");
        }
        let off = ((i * 7_777_777) % model.len() as u64) as usize;
        model_write(&pool, &mut model, off, 40_000, 100 + i);
        if i.is_multiple_of(7) {
            model_verify(&pool, &model, &format!("{what}: during the job"));
        }
    }
    if level != RaidLevel::Raid1 {
        assert!(kinds.contains(&"evacuate".to_string()), "{what}: {kinds:?}");
    }
    assert!(pool.job().is_none());
    model_verify(&pool, &model, &format!("{what}: after the job"));
    let info = pool.info();
    assert_eq!(info.members.len(), members - 1, "{what}");
    if level != RaidLevel::Raid1 {
        assert!(
            info.capacity < before,
            "{what}: {before} -> {}",
            info.capacity
        );
    }
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{what}: {r:?}");
    pool.commit().unwrap();
    drop(pool);
    // The pool opens from the remaining members alone.
    let rest: Vec<DeviceRef> = (0..members)
        .filter(|&m| m != leaving)
        .map(|m| devs[m].clone() as DeviceRef)
        .collect();
    let pool = Pool::open(rest).unwrap();
    assert!(pool.warnings().is_empty(), "{what}: {:?}", pool.warnings());
    model_verify(&pool, &model, &format!("{what}: reopened"));
    assert!(
        read_vol(&pool, "a", Some("s"), snap.len()) == snap,
        "{what}: snapshot changed"
    );
    assert!(pool.check(false).unwrap().clean());
    // The former member is free again: adding it back needs no --force.
    pool.add_member(devs[leaving].clone() as DeviceRef, false)
        .unwrap();
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    model_verify(&pool, &model, &format!("{what}: added back"));
    assert_eq!(pool.info().members.len(), members);
}

#[test]
fn remove_middle_member_of_linear() {
    remove_while_writing(RaidLevel::Linear, 3, 1);
}

#[test]
fn remove_first_and_last_member_of_linear() {
    remove_while_writing(RaidLevel::Linear, 3, 2);
    remove_while_writing(RaidLevel::Linear, 2, 0);
}

#[test]
fn remove_member_of_raid0() {
    remove_while_writing(RaidLevel::Raid0, 3, 1);
    remove_while_writing(RaidLevel::Raid0, 4, 3);
}

#[test]
fn remove_mirror_of_raid1() {
    remove_while_writing(RaidLevel::Raid1, 3, 0);
}

/// A metadata copy moves when one of the first three members leaves a
/// pool of more than three: the pool must open from the new copies alone.
#[test]
fn removing_a_metadata_member_moves_the_copy() {
    let devs = mem_devices(4, 32 * MIB);
    let pool = create(RaidLevel::Linear, refs(&devs));
    pool.create_volume("a", 4 * MIB).unwrap();
    let mut model = vec![0u8; 4 * MIB as usize];
    model_write(&pool, &mut model, 0, 4 * MIB as usize, 3);
    pool.remove_member(0).unwrap();
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(pool.label().meta_copies, 3);
    drop(pool);
    let pool = Pool::open(refs(&devs[1..])).unwrap();
    model_verify(&pool, &model, "after removing member 0");
    assert!(pool.check(false).unwrap().clean());
}

/// Where a power cut falls: anywhere in the job, or inside one of its last
/// steps (the raid0 copy on the leaving member, the label change).
#[derive(Clone, Copy)]
enum Cut {
    Anywhere,
    LastSteps(usize),
}

/// Power cut during the removal; reopen, finish, verify. A dry run of the
/// same scenario (same seed, so the same writes) finds where each job step
/// starts, in member writes, so the cut can be aimed.
fn crash_run(level: RaidLevel, members: usize, leaving: usize, seed: u64, at: Cut) {
    let steps = scenario(level, members, leaving, seed, None);
    let end = *steps.last().unwrap_or(&1);
    let r = seed.wrapping_mul(2_654_435_761) >> 7;
    let cut = match at {
        Cut::Anywhere => r % end,
        Cut::LastSteps(k) => {
            let from = steps[steps.len().saturating_sub(k + 1)];
            from + r % (end - from).max(1)
        }
    };
    scenario(level, members, leaving, seed, Some(cut + 1));
}

/// Run the removal with client writes between steps. Without a cut,
/// returns the member writes counted from the job's start at the start of
/// each step, and at the end; with one, checks the pool after the cut.
fn scenario(
    level: RaidLevel,
    members: usize,
    leaving: usize,
    seed: u64,
    cut: Option<u64>,
) -> Vec<u64> {
    let mut sim = CrashSim::new(members, 32 * MIB, seed);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let pool = create(level, devs.clone());
    let (mut model, _) = fill_top(&pool);
    pool.commit().unwrap();
    let mut durable = model.clone();
    // Ranges written since the last commit known to have completed.
    let mut dirty: Vec<(usize, usize)> = Vec::new();
    pool.remove_member(leaving).unwrap();
    let start = sim.writes();
    sim.cut_after(cut.unwrap_or(u64::MAX / 2));
    let mut i = 0;
    let mut steps = Vec::new();
    loop {
        steps.push(sim.writes() - start);
        let r = pool.job_step(256 * 1024);
        if sim.power_lost() {
            break;
        }
        for (off, len) in dirty.drain(..) {
            durable[off..off + len].copy_from_slice(&model[off..off + len]);
        }
        if r.unwrap() {
            break;
        }
        i += 1;
        // Low (fresh chunks) or high (copy-on-write from the snapshot), in
        // bounded areas so the pool never fills.
        let area = 4 * MIB as usize;
        let base = if i % 2 == 0 { 0 } else { model.len() - area };
        let off = base + (sim.random() % area as u64) as usize;
        let len = 20_000.min(model.len() - off);
        model_write(&pool, &mut model, off, len, seed + i);
        dirty.push((off, len));
        if sim.power_lost() {
            break;
        }
    }
    if cut.is_none() {
        steps.push(sim.writes() - start);
        return steps;
    }
    drop(pool);
    let after: Vec<Arc<MemDevice>> = sim.crash();
    let what = format!("{level} seed {seed} cut {cut:?}");
    let pool = Pool::open(after.iter().map(|d| d.clone() as DeviceRef).collect())
        .unwrap_or_else(|e| panic!("{what}: must open after a cut: {e}"));
    let mut unknown = vec![false; durable.len()];
    for &(off, len) in &dirty {
        unknown[off..off + len].fill(true);
    }
    let check_bytes = |pool: &Pool, stage: &str| {
        let got = read_vol(pool, "a", None, durable.len());
        for j in 0..got.len() {
            if !unknown[j] && got[j] != durable[j] {
                panic!("{what} {stage}: byte {j}: {} != {}", got[j], durable[j]);
            }
        }
    };
    check_bytes(&pool, "after reopen");
    pool.run_job(&AtomicBool::new(false), |_| {})
        .unwrap_or_else(|e| panic!("{what}: job must resume: {e}"));
    assert!(pool.job().is_none());
    check_bytes(&pool, "after the job resumed");
    let r = pool.check(false).unwrap();
    assert!(r.errors.is_empty(), "{what}: {r:?}");
    assert_eq!(pool.info().members.len(), members - 1);
    drop(pool);
    let rest: Vec<DeviceRef> = (0..members)
        .filter(|&m| m != leaving)
        .map(|m| after[m].clone() as DeviceRef)
        .collect();
    let pool = Pool::open(rest).unwrap_or_else(|e| panic!("{what}: without the member: {e}"));
    check_bytes(&pool, "without the removed member");
    Vec::new()
}

/// `crash_iters(24, 50, 4)` removals of member `i / 2 % members`: half with the cut
/// anywhere in the job, half inside its last steps (the raid0 copy on the
/// leaving member, the label change).
fn crash_series(level: RaidLevel, leavers: u64, first_seed: u64, stride: u64) {
    for i in 0..crash_iters(24, 50, 4) {
        let at = if i % 2 == 0 {
            Cut::Anywhere
        } else {
            Cut::LastSteps(3)
        };
        let leaving = (i / 2 % leavers) as usize;
        crash_run(level, 3, leaving, first_seed + i * stride, at);
    }
}

#[test]
fn power_cut_while_removing_from_raid0() {
    crash_series(RaidLevel::Raid0, 3, 11_000, 43);
}

#[test]
fn power_cut_while_removing_from_linear() {
    crash_series(RaidLevel::Linear, 2, 13_000, 47);
}

#[test]
fn bad_removals_are_refused() {
    // raid5 cannot shrink.
    let pool = create(RaidLevel::Raid5, refs(&mem_devices(3, 32 * MIB)));
    let e = pool.remove_member(1).unwrap_err();
    assert!(e.to_string().contains("raid5"), "{e}");
    // The fewest members a level can have.
    let pool = create(RaidLevel::Raid0, refs(&mem_devices(2, 32 * MIB)));
    let e = pool.remove_member(1).unwrap_err();
    assert!(e.to_string().contains("fewest"), "{e}");
    let pool = create(RaidLevel::Linear, refs(&mem_devices(1, 32 * MIB)));
    let e = pool.remove_member(0).unwrap_err();
    assert!(e.to_string().contains("fewest"), "{e}");
    // Not enough room on the others.
    let devs = mem_devices(4, 32 * MIB);
    let pool = create(RaidLevel::Linear, refs(&devs[..2]));
    let cap = pool.info().capacity;
    pool.create_volume("a", cap).unwrap();
    let mut model = vec![0u8; cap as usize];
    model_write(&pool, &mut model, 0, (cap * 3 / 4) as usize, 5);
    pool.commit().unwrap();
    let e = pool.remove_member(1).unwrap_err();
    assert!(e.to_string().contains("free"), "{e}");
    assert!(pool.job().is_none());
    // No such member.
    assert!(pool.remove_member(7).is_err());
    // One change at a time.
    pool.add_member(devs[2].clone() as DeviceRef, false)
        .unwrap();
    pool.volume("a", None).unwrap().discard(0, cap / 2).unwrap();
    model[..(cap / 2) as usize].fill(0);
    pool.commit().unwrap();
    pool.remove_member(0).unwrap();
    let e = pool.remove_member(1).unwrap_err();
    assert!(e.to_string().contains("still moving data"), "{e}");
    let e = pool
        .add_member(devs[3].clone() as DeviceRef, false)
        .unwrap_err();
    assert!(e.to_string().contains("still moving data"), "{e}");
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    model_verify(&pool, &model, "after the refused requests");
}

/// `fill_top` without the snapshot, committed: the volume's bytes, and a
/// 4 KiB block near the top (above what `fill_top` wrote last, so in a
/// chunk the removal moves) with its one home on `media`: (model, block,
/// member, byte offset).
fn top_block(pool: &Pool, media: &[Arc<MemDevice>]) -> (Vec<u8>, usize, usize, u64) {
    const BLK: usize = 4096;
    let (model, _) = fill_top(pool);
    pool.remove_snapshot("a", "s").unwrap();
    pool.commit().unwrap();
    let b = model.len() / BLK - 5;
    let homes = homes_in(media, &model[b * BLK..(b + 1) * BLK]);
    let [(member, at)] = homes[..] else {
        panic!("block {b} has homes {homes:?}");
    };
    (model, b, member, at)
}

/// A block no copy of which is good (a member tore or lost a write, and
/// the pool has no other copy) does not stop `pool remove`: its chunk
/// moves with the checksum the block fails, so after the move it reads as
/// an error, as before, never as other bytes; every other byte reads
/// back and the pool event names the chunk.
#[test]
fn a_block_without_a_good_copy_moves_and_still_reads_as_an_error() {
    const BLK: usize = 4096;
    for level in [RaidLevel::Linear, RaidLevel::Raid0] {
        let devs = mem_devices(3, 32 * MIB);
        let pool = create(level, refs(&devs));
        let (model, b, leaving, at) = top_block(&pool, &devs);
        devs[leaving].poke(at + 100, b"torn");
        pool.remove_member(leaving).unwrap();
        while !pool.job_step(256 * 1024).unwrap() {}
        assert_eq!(pool.info().members.len(), 2, "{level}");
        let vol = pool.volume("a", None).unwrap();
        let mut got = vec![0u8; BLK];
        for k in 0..model.len() / BLK {
            match vol.read_at(&mut got, (k * BLK) as u64) {
                Ok(()) if k == b => panic!("{level}: the torn block reads as data"),
                Ok(()) => assert!(got == model[k * BLK..(k + 1) * BLK], "{level}: block {k}"),
                Err(e) => assert_eq!(k, b, "{level}: block {k}: {e}"),
            }
        }
        let events = pool.info().events;
        assert!(
            events
                .iter()
                .any(|e| e.contains("moved to") && e.contains("1 of its 4 KiB blocks")),
            "{level}: {events:?}"
        );
    }
}

/// A chunk the members cannot read at all (an I/O error, not a bad
/// checksum) stops the removal with an error that names the volume range
/// that maps it and what to do; nothing is lost, and once the member
/// reads again the job finishes.
#[test]
fn an_unreadable_chunk_stops_the_removal_naming_its_volume_range() {
    const BLK: usize = 4096;
    let media = mem_devices(3, 32 * MIB);
    let (devs, plans): (Vec<DeviceRef>, Vec<FaultPlan>) = (media.iter())
        .map(|m| {
            let (d, p) = FaultDevice::wrap(m.clone() as DeviceRef);
            (d as DeviceRef, p)
        })
        .unzip();
    let pool = create(RaidLevel::Linear, devs);
    let (model, b, leaving, at) = top_block(&pool, &media);
    plans[leaving].fail_reads(at..at + BLK as u64);
    pool.remove_member(leaving).unwrap();
    let e = loop {
        match pool.job_step(256 * 1024) {
            Ok(true) => panic!("the removal read an unreadable chunk"),
            Ok(false) => {}
            Err(e) => break e.to_string(),
        }
    };
    let cs = pool.info().chunk_size as usize;
    let (from, to) = (b * BLK / cs * cs, (b * BLK / cs + 1) * cs);
    assert!(
        e.contains(&format!("tank/a bytes {from}..{to}")) && e.contains("run the removal again"),
        "{e}"
    );
    plans[leaving].heal();
    while !pool.job_step(256 * 1024).unwrap() {}
    assert_eq!(pool.info().members.len(), 2);
    model_verify(&pool, &model, "after the removal");
}

/// A member removal while one member (leaving or staying) loses,
/// misplaces or tears writes, with client writes between the job's
/// steps: without redundancy a lie may cost an error, never other bytes.
/// The data sits at the top of the array (`fill_top`), so the
/// evacuation relocates chunks (`thin::relocate`) and the restripe moves
/// the rest (`reshape::read_used`): both read through the checksums, and a
/// stale block without a good copy moves as it stands with the checksum
/// it fails, so it still reads as an error. A lie never stops the job.
#[test]
fn a_removal_under_a_lie_never_returns_other_bytes() {
    for seed in 1..=6 {
        for level in [RaidLevel::Linear, RaidLevel::Raid0] {
            removal_under_a_lie(level, (seed % 3) as usize, seed);
        }
    }
}

fn removal_under_a_lie(level: RaidLevel, leaving: usize, seed: u64) {
    const BLK: usize = 4096;
    let (m, devs) = cached_members(mem_devices(3, 32 * MIB));
    let pool = create(level, devs);
    // Data at the top of the array, where the evacuation moves it from;
    // not shared, so that writes there go in place (where lies strike).
    let (mut model, _) = fill_top(&pool);
    pool.remove_snapshot("a", "s").unwrap();
    pool.commit().unwrap();
    let vol = pool.volume("a", None).unwrap();
    let (size, low) = (model.len(), model.len() * 7 / 10);
    let faulty = ((seed / 3 + seed) % 3) as usize;
    let what = format!("{level} x3, removing {leaving}, seed {seed}, member {faulty} lying");
    let mut rng = Rng(seed * 0x9E37_79B9 + 5);
    // Blocks a failed write left undefined.
    let mut unknown = vec![false; size / BLK];
    pool.remove_member(leaving).unwrap();
    let mut step = 0u64;
    // Small steps, so that writes and lies come between the moves.
    let job = loop {
        match pool.job_step(256 * 1024) {
            Ok(true) => break Ok(()),
            Ok(false) => {}
            Err(e) => break Err(e),
        }
        step += 1;
        maybe_lie(&mut rng, &m.plans[faulty]);
        // Whole blocks half the time: small overwrites go in place
        // (under intents), where a lie leaves a chunk stale.
        let mut off = low + rng.below((size - low) as u64 - 20000) as usize;
        let mut len = 1 + rng.below(20000) as usize;
        if rng.below(2) == 0 {
            (off, len) = (off / BLK * BLK, BLK);
        }
        let data = pattern(len, seed * 1000 + step);
        match vol.write_at(&data, off as u64) {
            Ok(()) => model[off..off + len].copy_from_slice(&data),
            Err(_) => unknown[off / BLK..(off + len).div_ceil(BLK)].fill(true),
        }
    };
    m.plans[faulty].heal();
    let lied = m.plans[faulty].struck() > 0;
    if let Err(e) = job {
        panic!("{what}: the removal failed (lied: {lied}): {e}");
    }
    let (mut errors, mut got) = (0, vec![0u8; BLK]);
    for b in 0..size / BLK {
        match vol.read_at(&mut got, (b * BLK) as u64) {
            Ok(()) => assert!(
                unknown[b] || got == model[b * BLK..(b + 1) * BLK],
                "{what}: block {b} reads other bytes"
            ),
            Err(_) => errors += 1,
        }
    }
    assert!(errors == 0 || lied, "{what}: {errors} errors without a lie");
}
