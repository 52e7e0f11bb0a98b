//! The harsh fault model against a byte model (issue 15): members with a
//! volatile write cache (`WritebackDevice`) whose flushes fail and drop
//! what they held (EIO, ENOSPC at writeback), and whose writes are lost,
//! misdirected or torn, at random points of random writes, flushes and
//! power cuts.
//!
//! - raid1 x2, raid5 x3, one faulty member: no byte is ever lost, in
//!   service or after a power cut, and the faulty member is named (failed,
//!   or its checksum errors counted).
//! - linear x1, linear x2, raid0 x2, faults on any member: a read returns
//!   the client's bytes or an error, never others; after a power cut each
//!   block is what was last flushed or what was written after it. Lies
//!   (lost, misdirected, torn writes), from one member between power cuts,
//!   meet power cuts where the metadata has two copies (the data
//!   journal's work, see `thin::log`).
//!
//! `VPOOL_FAULT_CASES=n` runs more random cases (default 12 per level).

mod common;
use common::*;
use std::sync::Arc;
use vpool::device::WritebackPlan;
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 3 << 20;
const BLK: usize = 4096;

/// A client's flush: through the flush log (two in three) or a commit.
fn client_flush(pool: &Pool, rng: &mut Rng) -> vpool::Result<()> {
    if rng.below(3) == 0 {
        pool.commit()
    } else {
        pool.volume("a", None)?.flush()
    }
}

/// Arm one fault of the kinds in `kinds` (0, 1: flush failures that drop
/// the cache; 2, 3, 4: lies, a lost, misdirected or torn write reported done).
fn arm(rng: &mut Rng, plan: &WritebackPlan, kinds: std::ops::Range<u64>) -> &'static str {
    match kinds.start + rng.below(kinds.end - kinds.start) {
        0 => {
            plan.fail_flushes(1);
            "flush EIO"
        }
        1 => {
            plan.enospc_at_writeback(1);
            "ENOSPC at writeback"
        }
        2 => {
            plan.lose_writes(1);
            "lost write"
        }
        3 => {
            let delta = (rng.below(512) as i64 - 256) * 4096;
            plan.misdirect_writes(1, if delta == 0 { 4096 } else { delta });
            "misdirected write"
        }
        _ => {
            plan.tear_writes(1);
            "torn write"
        }
    }
}

fn write(rng: &mut Rng, pool: &Pool, model: &mut [u8]) -> (usize, usize, vpool::Result<()>) {
    let off = rng.below((VOL - BLK) as u64) as usize / 512 * 512;
    let len = (1 + rng.below(64) as usize) * 512;
    let len = len.min(VOL - off);
    let data = pattern(len, rng.next());
    let r = pool
        .volume("a", None)
        .and_then(|v| v.write_at(&data, off as u64));
    if r.is_ok() {
        model[off..off + len].copy_from_slice(&data);
    }
    (off, len, r)
}

fn cases() -> u64 {
    std::env::var("VPOOL_FAULT_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

/// What a campaign did.
#[derive(Default, Debug)]
struct Stats {
    steps: u64,
    power_cuts: u64,
    faults: u64,
    metadata_ops: u64,
    errors: u64,
}

#[test]
fn redundant_pools_lose_no_byte_to_any_fault_of_one_member() {
    for (level, n) in [(RaidLevel::Raid1, 2), (RaidLevel::Raid5, 3)] {
        for case in 0..cases() {
            redundant_case(level, n, case, 150, false);
        }
    }
}

#[test]
fn without_redundancy_a_fault_is_an_error_never_wrong_data() {
    for (level, n) in [
        (RaidLevel::Linear, 1),
        (RaidLevel::Linear, 2),
        (RaidLevel::Raid0, 2),
    ] {
        for case in 0..cases() {
            plain_case(level, n, case, 150, true);
        }
    }
}

/// The campaign `tools/torture` runs: random levels and seeds, with
/// metadata operations in another thread on redundant pools, for
/// `VPOOL_TORTURE_SECS` seconds (default 15). Prints what it did; any
/// byte lost fails it.
#[test]
fn torture() {
    let secs: u64 = std::env::var("VPOOL_TORTURE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let seed0: u64 = std::env::var("VPOOL_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut total = Stats::default();
    let mut cycles = 0u64;
    let levels = [
        (RaidLevel::Raid1, 2),
        (RaidLevel::Raid1, 3),
        (RaidLevel::Raid5, 3),
        (RaidLevel::Raid5, 4),
        (RaidLevel::Linear, 1),
        (RaidLevel::Linear, 2),
        (RaidLevel::Raid0, 2),
    ];
    while std::time::Instant::now() < deadline {
        let seed = seed0.wrapping_add(cycles.wrapping_mul(0x9E37_79B9));
        let (level, n) = levels[(seed % levels.len() as u64) as usize];
        eprintln!("torture: cycle {cycles}: {level} x{n}, seed {seed}");
        let st = if level.tolerated_failures(n) > 0 {
            redundant_case(level, n, seed, 300, true)
        } else {
            plain_case(level, n, seed, 300, true)
        };
        total.steps += st.steps;
        total.power_cuts += st.power_cuts;
        total.faults += st.faults;
        total.metadata_ops += st.metadata_ops;
        total.errors += st.errors;
        cycles += 1;
    }
    println!(
        "torture: {cycles} cycles in {secs} s (first seed {seed0}): {} I/O steps, {} power cuts, {} faults struck, {} metadata operations, {} I/O errors seen by clients (never wrong data), 0 bytes lost",
        total.steps, total.power_cuts, total.faults, total.metadata_ops, total.errors
    );
}

/// A random run on a redundant pool with one faulty member: no byte lost.
fn redundant_case(level: RaidLevel, n: usize, case: u64, steps: u64, churn: bool) -> Stats {
    let mut st = Stats::default();
    {
        {
            let mut rng = Rng(0x5DEECE66D ^ (case + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (mut m, devs) = cached_members(mem_devices(n, 32 * MIB));
            let mut pool = create_with_unit(level, devs, 16 * 1024);
            pool.create_volume("a", VOL as u64).unwrap();
            let mut model = vec![0u8; VOL];
            let faulty = (case % n as u64) as usize;
            let mut log = Vec::new();
            let mut names = Names::default();
            let mut churner = churn.then(|| Churn::start(&pool, names.clone(), case));
            for step in 0..steps {
                st.steps += 1;
                let what = format!("{level} x{n} case {case} step {step} after {log:?}");
                match rng.below(10) {
                    0..=4 => {
                        let (off, len, r) = write(&mut rng, &pool, &mut model);
                        r.unwrap_or_else(|e| panic!("{what}: write {off}+{len}: {e}"));
                    }
                    5 | 6 => {
                        let off = rng.below((VOL - 65536) as u64) as usize;
                        let mut got = vec![0u8; 65536];
                        let v = pool.volume("a", None).unwrap();
                        v.read_at(&mut got, off as u64)
                            .unwrap_or_else(|e| panic!("{what}: read {off}: {e}"));
                        assert!(got == model[off..off + 65536], "{what}: read {off}");
                    }
                    7 => client_flush(&pool, &mut rng)
                        .unwrap_or_else(|e| panic!("{what}: flush: {e}")),
                    8 => log.push(arm(&mut rng, &m.plans[faulty], 0..5)),
                    _ => {
                        if let Some(c) = churner.take() {
                            names = c.stop(&mut st);
                        }
                        pool.commit()
                            .unwrap_or_else(|e| panic!("{what}: flush: {e}"));
                        drop(pool);
                        st.faults += m.plans.iter().map(|p| p.struck()).sum::<u64>();
                        let (m2, p2) =
                            power_cut(&m).unwrap_or_else(|e| panic!("{what}: open: {e}"));
                        (m, pool) = (m2, p2);
                        st.power_cuts += 1;
                        log.push("power cut");
                        // Metadata operations commit at once: all survive.
                        names.verify(&pool, &what);
                        churner = churn.then(|| Churn::start(&pool, names.clone(), case + step));
                    }
                }
            }
            if let Some(c) = churner.take() {
                names = c.stop(&mut st);
            }
            let what = format!("{level} x{n} case {case}, end, after {log:?}");
            names.verify(&pool, &what);
            st.faults += m.plans.iter().map(|p| p.struck()).sum::<u64>();
            model_verify(&pool, &model, &what);
            pool.commit()
                .unwrap_or_else(|e| panic!("{what}: flush: {e}"));
            // A scrub repairs whatever the faults left on the faulty member
            // (a lost write no read met yet), from the others; a second one
            // finds nothing. Only the faulty member is ever blamed.
            drop(pool);
            let (_, pool) = power_cut(&m).unwrap_or_else(|e| panic!("{what}: open: {e}"));
            model_verify(&pool, &model, &format!("{what}: after a power cut"));
            let first = pool.scrub(false, |_, _| {}).unwrap();
            assert_eq!(first.unrecoverable, 0, "{what}: {first:?}");
            let again = pool.scrub(true, |_, _| {}).unwrap();
            assert_eq!(
                (again.bad_blocks, again.parity_errors),
                (0, 0),
                "{what}: {again:?}"
            );
            let info = pool.info();
            for (i, x) in info.members.iter().enumerate() {
                if i != faulty {
                    assert!(
                        x.state == "online" && x.errors.checksum == 0,
                        "{what}: member {i} blamed: {:?}",
                        info.members
                    );
                }
            }
            if first.bad_blocks > 0 {
                assert!(info.members[faulty].errors.checksum > 0, "{what}: named");
            }
            let report = pool.check(false).unwrap();
            assert!(report.errors.is_empty(), "{what}: {:?}", report.errors);
        }
    }
    st
}

/// A random run on a pool without redundancy, faults on any member: a
/// read is the client's bytes or an error, never others. Odd cases: the
/// device lies (lost, misdirected, torn writes reported done), and the
/// power is cut when `lie_cuts` and the metadata has two copies (else the
/// pool restarts cleanly); even cases: flushes fail and drop the cache,
/// and the power is cut.
#[allow(clippy::needless_range_loop)] // a block number indexes several arrays
fn plain_case(level: RaidLevel, n: usize, case: u64, steps: u64, lie_cuts: bool) -> Stats {
    let mut st = Stats::default();
    {
        {
            let mut rng =
                Rng(0xB5AD_4ECE_DA1C_E2A9 ^ (case + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let (mut m, devs) = cached_members(mem_devices(n, 32 * MIB));
            let mut pool = create_with_unit(level, devs, 16 * 1024);
            pool.create_volume("a", VOL as u64).unwrap();
            pool.commit().unwrap();
            let mut model = vec![0u8; VOL];
            // What the last good flush made durable, and blocks a failed
            // write may have left in any state (never acknowledged).
            let mut durable = model.clone();
            let mut unknown = vec![false; VOL / BLK];
            let mut log = Vec::new();
            let mut errors = 0;
            let lies = case % 2 == 1;
            // Lies meet power cuts where the metadata has two copies (the
            // data journal's work); one copy cannot survive a lie about
            // metadata, so a one-member pool restarts cleanly after lies.
            let clean_restarts = lies && (n < 2 || !lie_cuts);
            // Between power cuts only one member lies: two copies cannot
            // outvote lies on both (as with one faulty member of a mirror).
            let mut liar = rng.below(n as u64) as usize;
            // Every version of a block written since the last good flush:
            // after a crash any of them may be there (writes reach the
            // medium in any order before a flush).
            let mut since_flush: std::collections::HashMap<usize, Vec<Vec<u8>>> =
                std::collections::HashMap::new();
            for step in 0..steps {
                st.steps += 1;
                let what = format!("{level} x{n} case {case} step {step} after {log:?}");
                let cut = match rng.below(10) {
                    0..=4 => {
                        let (off, len, r) = write(&mut rng, &pool, &mut model);
                        for b in off / BLK..(off + len).div_ceil(BLK) {
                            let v = model[b * BLK..(b + 1) * BLK].to_vec();
                            since_flush.entry(b).or_default().push(v);
                        }
                        if r.is_err() {
                            errors += 1;
                            for u in &mut unknown[off / BLK..(off + len).div_ceil(BLK)] {
                                *u = true;
                            }
                        }
                        pool.failure().is_some()
                    }
                    5 | 6 => {
                        let off = rng.below((VOL - 65536) as u64) as usize / BLK * BLK;
                        let mut got = vec![0u8; 65536];
                        let v = pool.volume("a", None).unwrap();
                        match v.read_at(&mut got, off as u64) {
                            Ok(()) => {
                                for (i, b) in (off / BLK..off / BLK + 16).enumerate() {
                                    let (s, e) = (b * BLK, (b + 1) * BLK);
                                    assert!(
                                        unknown[b] || got[i * BLK..(i + 1) * BLK] == model[s..e],
                                        "{what}: block {b} reads wrong data"
                                    );
                                }
                            }
                            Err(_) => errors += 1,
                        }
                        false
                    }
                    7 => match client_flush(&pool, &mut rng) {
                        Ok(()) => {
                            assert!(pool.failure().is_none(), "{what}");
                            durable.copy_from_slice(&model);
                            since_flush.clear();
                            false
                        }
                        Err(e) => {
                            errors += 1;
                            // Final: a failed flush is never retried into success.
                            assert!(pool.commit().is_err(), "{what}: {e}: retried into success");
                            assert!(
                                client_flush(&pool, &mut rng).is_err(),
                                "{what}: {e}: retried into success"
                            );
                            pool.failure().is_some()
                        }
                    },
                    8 => {
                        let victim = match lies && !clean_restarts {
                            true => liar,
                            false => rng.below(n as u64) as usize,
                        };
                        let kinds = if lies { 2..5 } else { 0..2 };
                        log.push(arm(&mut rng, &m.plans[victim], kinds));
                        false
                    }
                    _ => true,
                };
                if !cut {
                    continue;
                }
                if clean_restarts {
                    // A clean restart: everything written is committed.
                    if let Err(e) = pool.close() {
                        // A lie met by the commit (a damaged block it read).
                        assert!(!log.is_empty(), "{what}: close failed without a fault: {e}");
                        errors += 1;
                        break;
                    }
                    durable.copy_from_slice(&model);
                    since_flush.clear();
                    log.push("restart");
                } else {
                    // A power cut (or a restart after the pool failed).
                    st.power_cuts += 1;
                    liar = rng.below(n as u64) as usize;
                    log.push("power cut");
                }
                drop(pool);
                st.faults += m.plans.iter().map(|p| p.struck()).sum::<u64>();
                let (m2, p2) = match power_cut(&m) {
                    Ok(x) => x,
                    Err(e) => {
                        // Lost metadata without a second copy: an error,
                        // never a pool that serves wrong data.
                        assert!(!log.is_empty(), "{what}: open failed without a fault: {e}");
                        errors += 1;
                        break;
                    }
                };
                (m, pool) = (m2, p2);
                let v = pool.volume("a", None).unwrap();
                for b in 0..VOL / BLK {
                    let mut got = vec![0u8; BLK];
                    let (s, e) = (b * BLK, (b + 1) * BLK);
                    match v.read_at(&mut got, s as u64) {
                        Ok(()) if got == model[s..e] => {}
                        Ok(()) if got == durable[s..e] => model[s..e].copy_from_slice(&got),
                        Ok(())
                            if since_flush
                                .get(&b)
                                .is_some_and(|v| torn_of(&got, &durable[s..e], v)) =>
                        {
                            model[s..e].copy_from_slice(&got)
                        }
                        Ok(()) => {
                            assert!(
                                unknown[b],
                                "{what}: block {b} is neither flushed nor written data"
                            );
                            model[s..e].copy_from_slice(&got);
                        }
                        Err(_) => {
                            errors += 1;
                            unknown[b] = true;
                        }
                    }
                }
                durable.copy_from_slice(&model);
                since_flush.clear();
            }
            if errors > 0 {
                assert!(
                    !log.is_empty(),
                    "{level} x{n} case {case}: errors without a fault"
                );
            }
            st.errors += errors;
            st.faults += m.plans.iter().map(|p| p.struck()).sum::<u64>();
        }
    }
    st
}

/// Volumes and snapshots a churning thread made, by name: what must be
/// there (metadata operations commit before they return).
#[derive(Clone, Default)]
struct Names(std::collections::BTreeMap<String, std::collections::BTreeSet<String>>);

impl Names {
    fn verify(&self, pool: &Pool, what: &str) {
        let list = pool.list();
        let all: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
        let unique: std::collections::BTreeSet<&str> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "{what}: duplicate names");
        for (v, snaps) in &self.0 {
            assert!(pool.volume(v, None).is_ok(), "{what}: volume {v} lost");
            for s in snaps {
                assert!(pool.volume(v, Some(s)).is_ok(), "{what}: {v}@{s} lost");
            }
        }
        let extra = list
            .iter()
            .filter_map(|x| x.name.strip_prefix("tank/"))
            .filter(|x| x.starts_with('m') && !x.contains('@'))
            .filter(|x| !self.0.contains_key(*x))
            .count();
        assert_eq!(extra, 0, "{what}: volumes nobody made");
    }
}

/// A thread of random metadata operations (create, snapshot, clone,
/// resize, rollback, remove) on names of its own, with its model.
struct Churn {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(Names, u64)>,
}

impl Churn {
    fn start(pool: &Pool, names: Names, seed: u64) -> Churn {
        use std::sync::atomic::Ordering;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (pool, flag) = (pool.clone(), stop.clone());
        let handle = std::thread::spawn(move || {
            let mut rng = Rng(seed | 1);
            let mut names = names;
            let mut ops = 0;
            while !flag.load(Ordering::Relaxed) && ops < 400 {
                ops += 1;
                let v = format!("m{}", rng.below(4));
                let snap = format!("s{}", rng.below(3));
                let exists = names.0.contains_key(&v);
                let has = names.0.get(&v).is_some_and(|s| s.contains(&snap));
                match rng.below(6) {
                    0 => {
                        let r = pool.create_volume(&v, 1 << 20);
                        assert_eq!(r.is_ok(), !exists, "create {v}: {r:?}");
                        names.0.entry(v).or_default();
                    }
                    1 => {
                        let r = pool.snapshot(&v, &snap);
                        assert_eq!(r.is_ok(), exists && !has, "snapshot {v}@{snap}: {r:?}");
                        if let Some(s) = names.0.get_mut(&v) {
                            s.insert(snap);
                        }
                    }
                    2 => {
                        let r = pool.rollback(&v, &snap);
                        assert_eq!(r.is_ok(), has, "rollback {v}@{snap}: {r:?}");
                    }
                    3 => {
                        let r = pool.resize(&v, (1 + rng.below(3)) << 20, true);
                        assert_eq!(r.is_ok(), exists, "resize {v}: {r:?}");
                    }
                    4 => {
                        let r = pool.remove_snapshot(&v, &snap);
                        assert_eq!(r.is_ok(), has, "remove {v}@{snap}: {r:?}");
                        if let Some(s) = names.0.get_mut(&v) {
                            s.remove(&snap);
                        }
                    }
                    _ => {
                        let r = pool.remove_volume(&v, true);
                        assert_eq!(r.is_ok(), exists, "remove {v}: {r:?}");
                        names.0.remove(&v);
                    }
                }
            }
            (names, ops)
        });
        Churn { stop, handle }
    }

    fn stop(self, st: &mut Stats) -> Names {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (names, ops) = self.handle.join().expect("the metadata thread panicked");
        st.metadata_ops += ops;
        names
    }
}

/// Found by `tools/torture` (22 minutes in): lies only, clean restarts; a
/// lost write of the intent block's clearing left bits that the next open
/// took as writes in flight, and the resync kept a damaged block as new
/// data. The intent block must be current for that.
#[test]
fn a_stale_intent_block_does_not_vouch_for_damaged_blocks() {
    plain_case(RaidLevel::Raid0, 2, 2542878113243, 300, false);
}
