//! Power cuts during a rebuild (`pool replace` after a member failed), on
//! raid1 and raid5: the pool must open with every flushed byte, resume the
//! rebuild, pass `check`, and then survive the loss of any other member,
//! which proves the rebuilt member holds the right bytes.

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vpool::device::{CrashSim, DeviceRef, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 8 << 20;

/// Run the rebuild with client writes between steps. Without a cut,
/// returns the member writes at the start of each step (and at the end);
/// with one, checks the pool after the cut.
fn scenario(level: RaidLevel, n: usize, k: usize, seed: u64, cut: Option<u64>) -> Vec<u64> {
    // Members 0..n, then the replacement.
    let mut sim = CrashSim::new(n + 1, 32 * MIB, seed);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let pool = create_with_unit(level, devs[..n].to_vec(), 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL * 3 / 4, seed);
    pool.commit().unwrap();
    pool.fail_member(k).unwrap();
    model_write(&pool, &mut model, VOL / 2, VOL / 3, seed + 1);
    pool.commit().unwrap();
    let mut durable = model.clone();
    let mut dirty: Vec<(usize, usize)> = Vec::new();
    let start = sim.writes();
    sim.cut_after(cut.unwrap_or(u64::MAX / 2));
    let mut steps = vec![0];
    let replaced = pool.replace_member(k, devs[n].clone(), false);
    let mut i = 0;
    if !sim.power_lost() {
        replaced.unwrap();
        loop {
            steps.push(sim.writes() - start);
            let r = pool.job_step(256 * 1024);
            if sim.power_lost() {
                break;
            }
            // Steps do not commit each time; the last one does.
            if r.unwrap() {
                for (off, len) in dirty.drain(..) {
                    durable[off..off + len].copy_from_slice(&model[off..off + len]);
                }
                break;
            }
            i += 1;
            let off = (sim.random() % (VOL as u64 - 40_000)) as usize;
            model_write(&pool, &mut model, off, 30_000, seed + 10 + i);
            dirty.push((off, 30_000));
            if sim.power_lost() {
                break;
            }
            if i % 3 == 0 {
                let c = pool.commit();
                if sim.power_lost() {
                    break;
                }
                c.unwrap();
                for (off, len) in dirty.drain(..) {
                    durable[off..off + len].copy_from_slice(&model[off..off + len]);
                }
            }
        }
    }
    let Some(cut) = cut else {
        steps.push(sim.writes() - start);
        return steps;
    };
    drop(pool);
    let after: Vec<Arc<MemDevice>> = sim.crash();
    let what = format!("{level} x{n} replacing {k}, seed {seed}, cut {cut}");
    // Every device is still attached, the failed one included.
    let all: Vec<DeviceRef> = after.iter().map(|d| d.clone() as DeviceRef).collect();
    let pool = Pool::open(all).unwrap_or_else(|e| panic!("{what}: must open: {e}"));
    let mut unknown = vec![false; VOL];
    for &(off, len) in &dirty {
        unknown[off..off + len].fill(true);
    }
    let check = |pool: &Pool, stage: &str| {
        let got = read_vol(pool, "a", None, VOL);
        if let Some(j) = (0..VOL).find(|&j| !unknown[j] && got[j] != durable[j]) {
            panic!("{what} {stage}: byte {j}: {} != {}", got[j], durable[j]);
        }
    };
    check(&pool, "after reopen");
    let k_missing = pool.member_devices()[k].is_none();
    if k_missing || (pool.job().is_none() && pool.info().health != "online") {
        // Cut before the rebuild was recorded, or before the replacement
        // got its label: start it again, as a user would.
        pool.replace_member(k, after[n].clone(), false)
            .unwrap_or_else(|e| panic!("{what}: replace again: {e}"));
    }
    pool.run_job(&AtomicBool::new(false), |_| {})
        .unwrap_or_else(|e| panic!("{what}: the rebuild must resume: {e}"));
    assert_eq!(pool.info().health, "online", "{what}: {:?}", pool.info());
    check(&pool, "after the rebuild");
    let r = pool.check(false).unwrap();
    assert!(r.errors.is_empty(), "{what}: {r:?}");
    drop(pool);
    let rebuilt = |i: usize| if i == k { n } else { i };
    for lost in 0..n {
        if lost == k {
            continue;
        }
        let devs: Vec<DeviceRef> = (0..n)
            .filter(|&i| i != lost)
            .map(|i| after[rebuilt(i)].clone() as DeviceRef)
            .collect();
        let pool = Pool::open(devs).unwrap_or_else(|e| panic!("{what}: without {lost}: {e}"));
        check(&pool, &format!("without member {lost}"));
    }
    Vec::new()
}

/// Cuts aimed with a dry run of the same seed: half anywhere from the
/// replace to the end, half inside the first or last two steps (the
/// record, the labels, the metadata copy and the final commit).
fn series(level: RaidLevel, n: usize, first_seed: u64) {
    for i in 0..crash_iters(16, 50, 4) {
        let seed = first_seed + i * 31;
        let k = (i as usize) % n;
        let steps = scenario(level, n, k, seed, None);
        let end = *steps.last().unwrap_or(&1);
        let r = seed.wrapping_mul(2_654_435_761) >> 7;
        let cut = match i % 4 {
            0 | 2 => r % end,
            1 => r % steps.get(2).copied().unwrap_or(end).max(1),
            _ => {
                let from = steps[steps.len().saturating_sub(3)];
                from + r % (end - from).max(1)
            }
        };
        scenario(level, n, k, seed, Some(cut + 1));
    }
}

#[test]
fn power_cut_while_rebuilding_raid5() {
    series(RaidLevel::Raid5, 3, 21_000);
}

#[test]
fn power_cut_while_rebuilding_raid1() {
    series(RaidLevel::Raid1, 2, 23_000);
}

/// The RAID5 write hole, forced: committed data, then partial-stripe
/// writes into the same chunks, in place under partial parities, that
/// reach their members or not when the power goes (each unflushed write
/// survives or not, the last one on a member may be torn; what was made
/// durable stays), then the loss of a member. Every committed byte must
/// read back, and each 4 KiB block written as its old or its new bytes,
/// for many such cuts and every member lost. Without the partial parities
/// (rows rebuilt from stale parity) it fails at once.
#[test]
fn raid5_write_hole_is_closed() {
    for n in [3usize, 4] {
        let mut sim = CrashSim::new(n, 32 * MIB, 41 + n as u64);
        let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
        let pool = create_with_unit(RaidLevel::Raid5, devs, 16 * 1024);
        pool.create_volume("a", 4 * MIB).unwrap();
        let mut model = vec![0u8; 4 * MIB as usize];
        let len = model.len();
        model_write(&pool, &mut model, 0, len, 5);
        pool.commit().unwrap();
        // Small writes inside committed stripes, never flushed: they go
        // in place once the log holds their rows' partial parities.
        // Each second write is to the next unit of the first's row at the
        // same offset: the first's partial parity is then stale. (Writes
        // never overlap, so each byte has one old and one new value.)
        let mut written = Vec::new();
        for i in 0..24u64 {
            for (j, off) in [i * 170_000 + 5000, i * 170_000 + 5000 + 16384]
                .into_iter()
                .enumerate()
            {
                let data = pattern(3000, 50 + 2 * i + j as u64);
                pool.volume("a", None)
                    .unwrap()
                    .write_at(&data, off)
                    .unwrap();
                written.push((off as usize, data));
            }
        }
        // (Pieces that cross a stripe unit's end are written afresh.)
        let in_place = pool.flush_stats().named_writes;
        assert!(in_place >= 30, "x{n}: {in_place} pieces in place");
        each_cut_without_each_member(&mut sim, &model, &written);
        drop(pool);
    }
}

/// Power cuts of `sim`'s members, each cut's images then opened without
/// each member in turn: volume "a" must read as `verify_old_or_new` says.
fn each_cut_without_each_member(sim: &mut CrashSim, model: &[u8], written: &[(usize, Vec<u8>)]) {
    let n = sim.devices.len();
    for cut in 0..crash_iters(12, 10, 12) {
        let images: Vec<Vec<u8>> = sim.crash().iter().map(|d| d.snapshot()).collect();
        for lost in 0..n {
            let devs: Vec<DeviceRef> = (0..n)
                .filter(|&m| m != lost)
                .map(|m| {
                    Arc::new(MemDevice::from_bytes(&format!("m{m}"), images[m].clone()))
                        as DeviceRef
                })
                .collect();
            let what = format!("raid5 x{n}, cut {cut}, member {lost} lost");
            let pool = Pool::open(devs).unwrap_or_else(|e| panic!("{what}: {e}"));
            verify_old_or_new(&pool, model, written, &what);
        }
    }
}

/// Volume "a" reads as `model`, except that each 512-byte sector of the
/// unflushed `written` may read as its old bytes or those of a write over
/// it (a torn write: a power cut keeps sectors whole), never anything
/// else.
fn verify_old_or_new(pool: &Pool, model: &[u8], written: &[(usize, Vec<u8>)], what: &str) {
    let mut got = vec![0u8; model.len()];
    (pool.volume("a", None).unwrap().read_at(&mut got, 0))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut settled = got.clone();
    for (off, data) in written {
        let mut at = *off;
        while at < off + data.len() {
            let end = ((at / 512 + 1) * 512).min(off + data.len());
            let here = &got[at..end];
            let by_a_write = written
                .iter()
                .any(|(o, d)| *o <= at && end <= o + d.len() && here == &d[at - o..end - o]);
            assert!(
                *here == model[at..end] || by_a_write,
                "{what}: bytes {at}..{end} read neither old nor written"
            );
            settled[at..end].copy_from_slice(&model[at..end]);
            at = end;
        }
    }
    let got = settled;
    if let Some(i) = (0..model.len()).find(|&i| got[i] != model[i]) {
        panic!("{what}: byte {i} reads {} instead of {}", got[i], model[i]);
    }
}

/// The write hole inside a chunk allocated in the running transaction:
/// one unit of each fresh chunk written and flushed (durable through the
/// log, not committed), then a small write into another unit of the same
/// row, in flight at a power cut, then the loss of a member. The flushed
/// unit must read back whatever the cut left of the second write.
#[test]
fn raid5_write_hole_is_closed_for_flushed_uncommitted_rows() {
    for n in [3usize, 4] {
        let mut sim = CrashSim::new(n, 32 * MIB, 77 + n as u64);
        let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
        let unit = 16 * 1024usize;
        let chunk = unit * (n - 1);
        let pool = create_with_unit(RaidLevel::Raid5, devs, unit as u64);
        pool.create_volume("a", 4 * MIB).unwrap();
        pool.commit().unwrap();
        let mut model = vec![0u8; 4 * MIB as usize];
        for i in 0..24 {
            model_write(&pool, &mut model, i * chunk, unit, 300 + i as u64);
        }
        pool.volume("a", None).unwrap().flush().unwrap();
        let mut written = Vec::new();
        for i in 0..24usize {
            let off = i * chunk + unit + 4096;
            let data = pattern(4096, 400 + i as u64);
            pool.volume("a", None)
                .unwrap()
                .write_at(&data, off as u64)
                .unwrap();
            written.push((off, data));
        }
        // Flushed through the log, not committed.
        let st = pool.flush_stats();
        assert!(st.log_rounds >= 1 && st.commits == 0, "x{n}: {st:?}");
        each_cut_without_each_member(&mut sim, &model, &written);
        drop(pool);
    }
}
