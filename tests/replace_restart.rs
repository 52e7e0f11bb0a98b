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

/// One random run: a member replaced in service, then rebuild steps,
/// writes, flushes, clean restarts, the old device failing, and a power
/// cut, in random order. After a clean restart the old device serves
/// again exactly when it served at the stop (a failure nothing noticed
/// cost it no write); after the cut, never once a flush or commit
/// completed after its failure was noticed. Every byte a flush or commit
/// made durable reads back, also with another member lost while the old
/// device still serves.
fn campaign(seed: u64) {
    let (level, n) = [
        (RaidLevel::Raid1, 2),
        (RaidLevel::Raid5, 3),
        (RaidLevel::Raid5, 4),
    ][(seed % 3) as usize];
    let mut sim = CrashSim::new(n + 1, 32 * MIB, seed);
    let media: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let k = (sim.random() % n as u64) as usize;
    let what = format!("seed {seed}: {level} x{n} replacing {k}");
    let (devs, mut plans) = wrap(media[..n].to_vec());
    let pool = create_with_unit(level, devs, 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, seed);
    pool.commit().unwrap();
    pool.replace_member(k, media[n].clone(), false).unwrap();
    let mut pool = Some(pool);
    let (mut durable, mut dirty) = (model.clone(), vec![false; VOL]);
    let (mut old_failed, mut done) = (false, false);
    // The old device served when a flush or commit last completed.
    let serves = |p: &Pool| p.info().members[k].replacing.is_some();
    let mut gone = false;
    // One run in four keeps its old device to the end (it fails in nearly
    // every other): the losses checked after the cut need it serving.
    // Chosen by the seed, so the seeds above still replay as found.
    let old_may_fail = seed % 4 != 1;
    for i in 0..40u64 {
        let p = pool.as_ref().unwrap();
        match sim.random() % 10 {
            0..=2 if !done => {
                let bytes = (64 * 1024) << (sim.random() % 5);
                done = p
                    .job_step(bytes)
                    .unwrap_or_else(|e| panic!("{what}: step: {e}"));
            }
            0..=5 => {
                let off = (sim.random() % VOL as u64) as usize;
                let len = [5_000, 40_000, 200_000][(sim.random() % 3) as usize].min(VOL - off);
                model_write(p, &mut model, off, len, seed * 1000 + i);
                dirty[off..off + len].fill(true);
            }
            6 => {
                p.volume("a", None).unwrap().flush().unwrap();
                gone |= !serves(p);
                durable.copy_from_slice(&model);
                dirty.fill(false);
            }
            7 => {
                let p = pool.take().unwrap();
                p.commit().unwrap();
                let serving = serves(&p);
                drop(p);
                durable.copy_from_slice(&model);
                dirty.fill(false);
                let (devs, new_plans) = wrap(media.clone());
                let p = Pool::open(devs).unwrap_or_else(|e| panic!("{what}: reopen: {e}"));
                assert_eq!(serving_again(&p), serving, "{what}: {:?}", p.warnings());
                gone = !serving;
                plans = new_plans;
                model_verify(&p, &model, &format!("{what}: restarted at step {i}"));
                pool = Some(p);
            }
            8 if old_may_fail && !old_failed && !done => {
                plans[k].vanish();
                old_failed = true;
            }
            _ => {}
        }
    }
    // The power goes at a random write of what follows.
    let p = pool.take().unwrap();
    let at = sim.random() % 400;
    sim.cut_after(at);
    // Nothing is read once it went: the pool would read its own lost
    // writes back (a dream, not a machine).
    for i in 0..6u64 {
        let off = (sim.random() % VOL as u64) as usize;
        let len = 30_000.min(VOL - off);
        let data = pattern(len, seed * 1000 + 100 + i);
        let r = p.volume("a", None).unwrap().write_at(&data, off as u64);
        model[off..off + len].copy_from_slice(&data);
        dirty[off..off + len].fill(true);
        if sim.power_lost() {
            break;
        }
        r.unwrap_or_else(|e| panic!("{what}: write: {e}"));
        if !done {
            let r = p.job_step(256 * 1024);
            if sim.power_lost() {
                break;
            }
            done = r.unwrap_or_else(|e| panic!("{what}: step: {e}"));
        }
    }
    // The flush's own writes may meet the cut: it counts only if none did.
    let flushed = match sim.power_lost() {
        true => None,
        false => Some(p.volume("a", None).unwrap().flush()),
    };
    let cut = sim.power_lost();
    if !cut {
        if let Some(Err(e)) = flushed {
            panic!("{what}: flush: {e}");
        }
    }
    if !cut {
        gone |= !serves(&p);
        durable.copy_from_slice(&model);
        dirty.fill(false);
    }
    drop(p);
    let after: Vec<DeviceRef> = sim.crash().into_iter().map(|d| d as DeviceRef).collect();
    // A rebuild that ended only in the lost writes is still running.
    let done = done && !cut;
    let (pool, plans) = {
        let (devs, plans) = wrap(after.clone());
        (
            Pool::open(devs).unwrap_or_else(|e| panic!("{what}: after the cut: {e}")),
            plans,
        )
    };
    let serving = serving_again(&pool);
    assert!(!(serving && gone), "{what}: a failed old device put back");
    let check = |pool: &Pool, when: &str| {
        let got = read_vol(pool, "a", None, VOL);
        if let Some(j) = (0..VOL).find(|&j| !dirty[j] && got[j] != durable[j]) {
            panic!("{what}, {when}: byte {j}: {} != {}", got[j], durable[j]);
        }
    };
    check(&pool, "after the cut");
    if serving && pool.job().is_some() && !done {
        // Another member lost: the old device holds the rows not rebuilt.
        let other = (k + 1) % n;
        plans[other].vanish();
        check(&pool, &format!("member {other} lost too"));
        drop(pool);
        // And missing at a restart: the old device's metadata copy may be
        // the only current one (raid1 x2), and the rebuild copies from it.
        let without: Vec<DeviceRef> = (0..=n)
            .filter(|&i| i != other)
            .map(|i| after[i].clone())
            .collect();
        let pool = Pool::open(without)
            .unwrap_or_else(|e| panic!("{what}: reopened without member {other}: {e}"));
        check(&pool, &format!("reopened without member {other}"));
        pool.run_job(&std::sync::atomic::AtomicBool::new(false), |_| {})
            .unwrap_or_else(|e| panic!("{what}: rebuilt without member {other}: {e}"));
        check(&pool, &format!("rebuilt without member {other}"));
    }
}

#[test]
fn random_restarts_crashes_and_failures_while_replacing_in_service() {
    if let Ok(seed) = std::env::var("VPOOL_REPLACE_SEED") {
        // One seed again: `VPOOL_REPLACE_SEED=N cargo test --release --test replace_restart random`
        campaign(seed.parse().unwrap_or(0));
        return;
    }
    // Found by a longer run: a power cut during the rebuild, then another
    // member lost, when the crash resync left raid5 parity unchecked
    // during a layout change.
    campaign(50_908);
    // And one where the old device came back after a power cut without
    // writes a flush had acknowledged: flushes did not flush it.
    campaign(54_443);
    // And one where the crash resync of raid1 left the old device's copy
    // of a block with a write in flight unlike member 0's (it compared
    // member 0 with nothing); member 0 lost, the block read as damage.
    campaign(81_309);
    for i in 0..crash_iters(30, 10, 6) {
        campaign(40_000 + i * 101);
    }
}

#[test]
fn a_rebuild_ends_when_the_old_device_failed_unnoticed() {
    // Member 0 holds a metadata copy, on the old device until the end.
    let mem = mem_devices(4, 32 * MIB);
    let (devs, plans) = wrap(refs(&mem));
    let (pool, model) = replacing(&devs[..3], devs[3].clone(), RaidLevel::Raid5, 0);
    plans[0].vanish();
    pool.run_job(&std::sync::atomic::AtomicBool::new(false), |_| {})
        .unwrap_or_else(|e| panic!("the rebuild must end without the old device: {e}"));
    assert_eq!(pool.info().health, "online");
    model_verify(&pool, &model, "rebuilt without the old device");
}

#[test]
fn an_old_device_whose_metadata_copy_failed_serves_no_more() {
    let mem = mem_devices(4, 32 * MIB);
    let (devs, plans) = wrap(refs(&mem));
    let (pool, model) = replacing(&devs[..3], devs[3].clone(), RaidLevel::Raid5, 1);
    plans[1].vanish();
    // A commit writes its metadata copy and fails there (a snapshot: a
    // change of metadata alone); no data I/O reaches it.
    pool.snapshot("a", "s").unwrap();
    pool.commit().unwrap();
    assert_eq!(pool.info().members[1].replacing, None);
    drop(pool);
    let pool = Pool::open(refs(&mem)).unwrap();
    assert!(!serving_again(&pool), "{:?}", pool.warnings());
    model_verify(&pool, &model, "reopened");
}

#[test]
fn a_flush_makes_the_old_devices_writes_durable() {
    // A member without a metadata copy (copies are on members 0-2): a
    // commit's flush of the metadata copies does not reach its device.
    for (level, n) in [(RaidLevel::Raid5, 4)] {
        let what = format!("{level} x{n}");
        let mut sim = CrashSim::new(n + 1, 32 * MIB, 3);
        let media: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
        let pool = create_with_unit(level, media[..n].to_vec(), 16 * 1024);
        pool.create_volume("a", VOL as u64).unwrap();
        let mut model = vec![0u8; VOL];
        model_write(&pool, &mut model, 0, VOL, 1);
        pool.commit().unwrap();
        // Nothing rebuilt yet: every row is the old device's.
        pool.replace_member(3, media[n].clone(), false).unwrap();
        for i in 0..8u64 {
            model_write(
                &pool,
                &mut model,
                (i * 700_001) as usize % VOL,
                9_000,
                50 + i,
            );
        }
        pool.volume("a", None).unwrap().flush().unwrap();
        sim.cut_after(0);
        drop(pool);
        let after: Vec<DeviceRef> = sim.crash().into_iter().map(|d| d as DeviceRef).collect();
        let pool = Pool::open(after.clone()).unwrap();
        assert!(serving_again(&pool), "{what}: {:?}", pool.warnings());
        model_verify(&pool, &model, &format!("{what}: after the cut"));
        drop(pool);
        // Member 0 lost too: the old device's bytes must be the flushed ones.
        let pool = Pool::open(after[1..].to_vec()).unwrap();
        model_verify(&pool, &model, &format!("{what}: member 0 lost too"));
    }
}

#[test]
fn a_pool_mid_replacement_opens_without_a_member_whose_copy_the_old_device_also_holds() {
    // raid1 x2 replacing member 1: the superblock's only current copies
    // are member 0's and the old device's (the new device gets its copy at
    // the end). Member 0 lost at a restart: the old device's copy opens
    // the pool, and the old device serves the rows not yet rebuilt.
    // raid5 x3 keeps a copy on member 2 as well: checked alongside.
    for (level, n, k) in [(RaidLevel::Raid1, 2, 1), (RaidLevel::Raid5, 3, 1)] {
        let what = format!("{level} x{n} replacing {k}");
        let mem = mem_devices(n + 1, 32 * MIB);
        let (pool, mut model) = replacing(&refs(&mem[..n]), mem[n].clone(), level, k);
        pool.commit().unwrap();
        drop(pool);
        let without_0 = refs(&mem[1..]);
        let pool = Pool::open(without_0.clone())
            .unwrap_or_else(|e| panic!("{what}: opened without member 0: {e}"));
        assert!(serving_again(&pool), "{what}: {:?}", pool.warnings());
        model_verify(&pool, &model, &format!("{what}: without member 0"));
        churn(&pool, &mut model, 4, 9);
        pool.run_job(&std::sync::atomic::AtomicBool::new(false), |_| {})
            .unwrap_or_else(|e| panic!("{what}: the rebuild must end: {e}"));
        model_verify(&pool, &model, &format!("{what}: rebuilt"));
        drop(pool);
        // The new device now holds every row and a metadata copy.
        let pool = Pool::open(without_0).unwrap();
        assert!(!serving_again(&pool), "{what}: {:?}", pool.warnings());
        model_verify(
            &pool,
            &model,
            &format!("{what}: reopened after the rebuild"),
        );
    }
}

#[test]
fn a_replacement_that_held_an_older_copy_of_the_pool_is_never_read_as_current() {
    // The new device was a member of this pool before (replaced out, now
    // reused): its metadata area holds an older superblock of the pool,
    // one with no job in it. Member 0 and the old device lost
    // mid-rebuild: nothing current is left to open the pool from, and
    // the older copy must not be taken for it.
    let mem = mem_devices(3, 32 * MIB);
    let pool = create_with_unit(RaidLevel::Raid1, refs(&mem[..2]), 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 1);
    pool.commit().unwrap();
    drop(pool);
    // Member 1 missing for a while, then replaced by mem[2].
    let pool = Pool::open(refs(&mem[..1])).unwrap();
    churn(&pool, &mut model, 4, 11);
    pool.replace_member(1, mem[2].clone(), false).unwrap();
    pool.run_job(&std::sync::atomic::AtomicBool::new(false), |_| {})
        .unwrap();
    // mem[1] comes back as the replacement of member 1 in service.
    pool.replace_member(1, mem[1].clone(), false).unwrap();
    assert!(!pool.job_step(256 * 1024).unwrap());
    churn(&pool, &mut model, 4, 12);
    pool.commit().unwrap();
    drop(pool);
    match Pool::open(refs(&mem[1..2])) {
        Err(e) => assert!(
            e.to_string().contains("cannot be opened")
                && e.to_string().contains("no current metadata copy"),
            "{e}"
        ),
        Ok(p) => panic!("opened from an older copy: {:?}", p.warnings()),
    }
    let pool = Pool::open(refs(&mem)).unwrap();
    assert!(serving_again(&pool), "{:?}", pool.warnings());
    model_verify(&pool, &model, "every device back");
}
