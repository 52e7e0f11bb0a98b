//! Flush means durable under device errors (issue 15): a failed flush is
//! final (never retried into success), commits that fail part way are
//! retried whole or fail the pool, and `pool clear` brings a failed pool
//! back to its last commit. Members have a volatile write cache whose
//! failed flushes drop data, as Linux does (`WritebackDevice`).

mod common;
use common::*;
use std::sync::Arc;
use vpool::device::{DeviceRef, FaultDevice, FaultPlan, MemDevice, WritebackDevice, WritebackPlan};
use vpool::raid::RaidLevel;
use vpool::Pool;

const VOL: usize = 4 << 20;

struct Rig {
    pool: Pool,
    /// The media under the write caches: what survives a power cut.
    media: Vec<Arc<MemDevice>>,
    caches: Vec<Arc<WritebackDevice>>,
    plans: Vec<WritebackPlan>,
}

fn rig(level: RaidLevel, n: usize) -> Rig {
    let (c, devs) = cached_members(mem_devices(n, 32 * MIB));
    let pool = create_with_unit(level, devs, 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    Rig {
        pool,
        media: c.media,
        caches: c.caches,
        plans: c.plans,
    }
}

/// The pool as a restart finds it: only what reached the media.
fn reopen_media(media: &[Arc<MemDevice>], skip: Option<usize>) -> Pool {
    let devs: Vec<DeviceRef> = (0..media.len())
        .filter(|&i| Some(i) != skip)
        .map(|i| {
            Arc::new(MemDevice::from_bytes(
                &format!("mem{i}"),
                media[i].snapshot(),
            )) as DeviceRef
        })
        .collect();
    Pool::open(devs).expect("reopen")
}

/// Every 4 KiB block of volume "a" reads as `old` or `new` (writes not
/// acknowledged by a flush may or may not have landed, block by block).
/// Returns what it reads.
fn old_or_new(pool: &Pool, old: &[u8], new: &[u8], what: &str) -> Vec<u8> {
    let got = read_vol(pool, "a", None, old.len());
    for b in (0..old.len()).step_by(4096) {
        let e = (b + 4096).min(old.len());
        assert!(
            got[b..e] == old[b..e] || got[b..e] == new[b..e],
            "{what}: block at {b} is neither the old nor the new data"
        );
    }
    got
}

/// A pool reopened after a commit failed: clean, the snapshot (committed
/// before) intact, every block the old or the new data.
fn old_or_new_commit(p: &Pool, committed: &[u8], model: &[u8], what: &str) {
    let report = p.check(false).unwrap();
    assert!(report.errors.is_empty(), "{what}: {:?}", report.errors);
    let snap = read_vol(p, "a", Some("s"), VOL);
    assert!(snap == committed, "{what}: the snapshot changed");
    old_or_new(p, committed, model, what);
}

/// Reads of volume "a" return the model's bytes or an error, never others.
fn never_wrong(pool: &Pool, model: &[u8], what: &str) -> usize {
    let vol = pool.volume("a", None).unwrap();
    let mut errors = 0;
    for off in (0..model.len()).step_by(64 * 1024) {
        let mut got = vec![0u8; 64 * 1024];
        match vol.read_at(&mut got, off as u64) {
            Ok(()) => assert!(
                got == model[off..off + got.len()],
                "{what}: wrong bytes at {off}"
            ),
            Err(_) => errors += 1,
        }
    }
    errors
}

#[test]
fn a_failed_flush_without_redundancy_fails_the_pool_until_cleared() {
    for (level, n) in [
        (RaidLevel::Linear, 1),
        (RaidLevel::Raid0, 2),
        (RaidLevel::Linear, 2),
    ] {
        let what = format!("{level} x{n}");
        let r = rig(level, n);
        let mut committed = vec![0u8; VOL];
        model_write(&r.pool, &mut committed, 0, VOL, 1);
        r.pool.commit().unwrap();
        // New data over it, then a flush that fails on the last member and
        // drops its cached writes (the member with the data's tail).
        let mut model = committed.clone();
        model_write(&r.pool, &mut model, 0, VOL, 2);
        let victim = n - 1;
        r.plans[victim].fail_flushes(1);
        let e = r.pool.commit().expect_err("the flush failed");
        assert!(e.to_string().contains("flush"), "{what}: {e}");
        let why = r.pool.failure().expect("the pool is failed");
        assert!(why.contains("pool clear"), "{what}: says what to do: {why}");
        assert_eq!(r.pool.info().health, "failed", "{what}");
        // Final: the device's next flush returns 0, the pool's does not.
        let again = r
            .pool
            .commit()
            .expect_err("a flush after a failed one fails");
        assert!(again.to_string().contains("failed"), "{what}: {again}");
        let vol = r.pool.volume("a", None).unwrap();
        assert!(
            vol.write_at(&[9u8; 4096], 0).is_err(),
            "{what}: writes refused"
        );
        assert!(vol.flush().is_err(), "{what}");
        assert!(
            r.pool.create_volume("b", 1 << 20).is_err(),
            "{what}: no metadata changes"
        );
        // Reads: the client's bytes or an error (checksums), never others.
        never_wrong(&r.pool, &model, &format!("{what}, failed"));
        // A restart finds the last commit (blocks overwritten in place may
        // hold the unacknowledged new data: flushes of write intents let
        // some reach the medium before the failure).
        let restarted = reopen_media(&r.media, None);
        old_or_new(&restarted, &committed, &model, &format!("{what}: restart"));
        // `pool clear` after the device is fixed: back to the last commit.
        r.plans[victim].heal();
        let msg = r.pool.reload_from_last_commit().expect("reload");
        assert!(msg.contains("last commit"), "{msg}");
        assert!(r.pool.failure().is_none(), "{what}");
        let cleared = format!("{what}: after pool clear");
        let mut model = old_or_new(&r.pool, &committed, &model, &cleared);
        model_write(&r.pool, &mut model, 100_000, 900_000, 3);
        r.pool.commit().unwrap();
        model_verify(
            &reopen_media(&r.media, None),
            &model,
            &format!("{what}: clear, write, restart"),
        );
        let report = reopen_media(&r.media, None).check(false).unwrap();
        assert!(report.errors.is_empty(), "{what}: {:?}", report.errors);
    }
}

#[test]
fn a_failed_flush_with_redundancy_fails_the_member_and_loses_nothing() {
    for (level, n) in [
        (RaidLevel::Raid1, 2),
        (RaidLevel::Raid1, 3),
        (RaidLevel::Raid5, 3),
    ] {
        for enospc in [false, true] {
            let what = format!("{level} x{n}, enospc {enospc}");
            let r = rig(level, n);
            let mut model = vec![0u8; VOL];
            model_write(&r.pool, &mut model, 0, VOL, 1);
            r.pool.commit().unwrap();
            model_write(&r.pool, &mut model, 50_000, 2_000_000, 2);
            if enospc {
                r.plans[1].enospc_at_writeback(1);
            } else {
                r.plans[1].fail_flushes(1);
            }
            r.pool.commit().expect("the others hold the data");
            let info = r.pool.info();
            assert_eq!(info.members[1].state, "failed", "{what}");
            assert!(info.members[1].errors.write >= 1, "{what}: counted");
            assert!(
                info.events.iter().any(|e| e.contains("member 1")),
                "{what}: named"
            );
            model_verify(&r.pool, &model, &what);
            model_write(&r.pool, &mut model, 3_000_000, 500_000, 3);
            r.pool.commit().unwrap();
            // Power cut: every byte flushed is on the surviving members;
            // the failed member is recorded and not trusted.
            for c in &r.caches {
                c.drop_cache();
            }
            let p = reopen_media(&r.media, None);
            assert_eq!(p.info().members[1].state, "failed", "{what}: recorded");
            model_verify(&p, &model, &format!("{what}: restart"));
            model_verify(
                &reopen_media(&r.media, Some(1)),
                &model,
                &format!("{what}: without it"),
            );
        }
    }
}

/// Members with immediate write errors (FaultDevice) under write caches.
struct FaultRig {
    pool: Pool,
    media: Vec<Arc<MemDevice>>,
    faults: Vec<FaultPlan>,
    caches: Vec<WritebackPlan>,
}

fn fault_rig(level: RaidLevel, n: usize, media: Option<&[Arc<MemDevice>]>) -> FaultRig {
    let media: Vec<Arc<MemDevice>> = match media {
        Some(m) => m.to_vec(),
        None => mem_devices(n, 32 * MIB),
    };
    let (mut faults, mut caches, mut devs) = (Vec::new(), Vec::new(), Vec::<DeviceRef>::new());
    for m in &media {
        let (c, cp) = WritebackDevice::wrap(m.clone() as DeviceRef);
        let (f, fp) = FaultDevice::wrap(c as DeviceRef);
        devs.push(f);
        faults.push(fp);
        caches.push(cp);
    }
    let pool = match media
        .iter()
        .all(|m| m.snapshot()[..8].iter().all(|&b| b == 0))
    {
        true => {
            let p = create_with_unit(level, devs, 16 * 1024);
            p.create_volume("a", VOL as u64).unwrap();
            p
        }
        false => Pool::open(devs).expect("open"),
    };
    FaultRig {
        pool,
        media,
        faults,
        caches,
    }
}

/// A commit's metadata writes and flushes, counted on a dry run, each
/// made to fail in turn: a failed write is retried by the next commit
/// (nothing lost, nothing half-committed); a failed flush fails the pool,
/// which reopens at its last commit, and `pool clear` brings it back.
#[test]
fn a_failure_at_each_write_and_flush_of_a_commit() {
    for (level, n) in [
        (RaidLevel::Linear, 1),
        (RaidLevel::Raid0, 2),
        (RaidLevel::Raid1, 2),
    ] {
        let base = mem_devices(n, 32 * MIB);
        let mut committed = vec![0u8; VOL];
        {
            let r = fault_rig(level, n, Some(&base));
            model_write(&r.pool, &mut committed, 0, VOL, 1);
            r.pool.commit().unwrap();
            r.pool.snapshot("a", "s").unwrap();
            r.pool.close().unwrap();
        }
        let image: Vec<Vec<u8>> = base.iter().map(|m| m.snapshot()).collect();
        let fresh = || -> Vec<Arc<MemDevice>> {
            image
                .iter()
                .enumerate()
                .map(|(i, b)| Arc::new(MemDevice::from_bytes(&format!("mem{i}"), b.clone())))
                .collect()
        };
        // The transaction under test: new data over chunks the snapshot
        // shares (copied on write) and over chunks of its own (in place).
        let change = |r: &FaultRig, model: &mut Vec<u8>| {
            model_write(&r.pool, model, 30_000, 1_500_000, 7);
            model_write(&r.pool, model, 30_000, 20_000, 9);
            model_write(&r.pool, model, 2_000_000, 300_000, 8);
        };
        // Dry run: how many writes and flushes reach the last member.
        let victim = n - 1;
        let (writes, flushes) = {
            let r = fault_rig(level, n, Some(&fresh()));
            let mut model = committed.clone();
            change(&r, &mut model);
            r.faults[victim].reset_counts();
            r.caches[victim].reset_counts();
            r.pool.commit().unwrap();
            (
                r.faults[victim].writes_seen(),
                r.caches[victim].flushes_seen(),
            )
        };
        assert!(
            writes > 3 && flushes >= 2,
            "{level}: {writes} writes, {flushes} flushes"
        );
        for k in 0..writes {
            let what = format!("{level} x{n}: write {k} of {writes} fails");
            let r = fault_rig(level, n, Some(&fresh()));
            let mut model = committed.clone();
            change(&r, &mut model);
            r.faults[victim].fail_writes_after(k, 2);
            match r.pool.commit() {
                Ok(()) => assert!(
                    level == RaidLevel::Raid1,
                    "{what}: only redundancy hides it"
                ),
                Err(e) if r.pool.failure().is_none() => {
                    assert!(level != RaidLevel::Raid1, "{what}: {e}");
                    // Only blocks no superblock reaches were written: the
                    // next commit writes them all again.
                    r.pool
                        .commit()
                        .unwrap_or_else(|e| panic!("{what}: retry: {e}"));
                }
                Err(e) => {
                    // The superblock write failed: a copy may hold it, so
                    // the pool is failed; it reopens at one commit or the
                    // other, whole.
                    assert!(e.to_string().contains("metadata"), "{what}: {e}");
                    assert!(r.pool.commit().is_err(), "{what}: not retried");
                    old_or_new_commit(&reopen_media(&r.media, None), &committed, &model, &what);
                    r.faults[victim].heal();
                    r.pool.reload_from_last_commit().unwrap();
                    let p = reopen_media(&r.media, None);
                    old_or_new_commit(&p, &committed, &model, &format!("{what}, cleared"));
                    continue;
                }
            }
            model_verify(&r.pool, &model, &what);
            let p = reopen_media(&r.media, None);
            old_or_new_commit(&p, &committed, &model, &what);
            model_verify(&p, &model, &format!("{what}: committed"));
        }
        for k in 0..flushes {
            let what = format!("{level} x{n}: flush {k} of {flushes} fails");
            let r = fault_rig(level, n, Some(&fresh()));
            let mut model = committed.clone();
            change(&r, &mut model);
            r.caches[victim].fail_flush_after(k);
            let result = r.pool.commit();
            let p = reopen_media(&r.media, None);
            let report = p.check(false).unwrap();
            assert!(report.errors.is_empty(), "{what}: {:?}", report.errors);
            if level == RaidLevel::Raid1 {
                result.unwrap_or_else(|e| panic!("{what}: {e}"));
                model_verify(&p, &model, &format!("{what}: reopened"));
                continue;
            }
            assert!(result.is_err() && r.pool.failure().is_some(), "{what}");
            assert!(
                r.pool.commit().is_err(),
                "{what}: never retried into success"
            );
            // Nothing of the failed transaction is trusted: the restart
            // finds the last commit (no snapshot; blocks overwritten in
            // place old or new).
            old_or_new_commit(&p, &committed, &model, &what);
            r.caches[victim].heal();
            r.pool.reload_from_last_commit().unwrap();
            let mut again = old_or_new(&r.pool, &committed, &model, &format!("{what}: cleared"));
            change(&r, &mut again);
            r.pool.commit().unwrap();
            model_verify(
                &reopen_media(&r.media, None),
                &again,
                &format!("{what}: redone"),
            );
        }
    }
}
