//! Crash tests: power is cut at a random write (inside data writes, metadata
//! commits, snapshot creation...), unflushed writes are randomly lost or torn,
//! and the pool is reopened. It must open, the checker must find no error
//! (leaks are allowed and reclaimed), and every byte flushed before the cut
//! (by a client's flush, through the flush log, or a commit) must read back.

mod common;
use common::*;
use std::collections::BTreeMap;
use vpool::device::{CrashSim, DeviceRef};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Pool};

type Model = BTreeMap<String, Vec<u8>>;

/// Byte ranges written since the last commit, per volume: unknown after a crash.
type Dirty = BTreeMap<String, Vec<(usize, usize)>>;

fn iterations() -> u64 {
    std::env::var("VPOOL_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1200)
}

fn one_run(level: RaidLevel, seed: u64) {
    let n = members_for(level);
    let mut sim = CrashSim::new(n, 32 * MIB, seed);
    let devs: Vec<DeviceRef> = sim.devices.iter().map(|d| d.clone() as DeviceRef).collect();
    let mut opts = CreateOptions::new(level);
    opts.stripe_unit = 4096;
    let (pool, _) = Pool::create("tank", devs, &opts).unwrap();
    pool.create_volume("a", 2 * MIB).unwrap();
    let mut model: Model = [("a".to_string(), vec![0u8; 2 * MIB as usize])].into();
    let mut durable = model.clone();
    let mut dirty: Dirty = BTreeMap::new();
    let mut candidate: Option<Model> = None;
    // Arm the cut somewhere in the next few hundred writes.
    let budget = 20 + sim.random() % 600;
    sim.cut_after(budget);
    let mut step = 0u64;
    while !sim.power_lost() && step < 200 {
        step += 1;
        let r = sim.random();
        let names: Vec<String> = model.keys().cloned().collect();
        let name = names[(r as usize / 7) % names.len()].clone();
        let mut commits = false;
        let outcome: vpool::Result<()> = (|| {
            match r % 10 {
                0..=5 => {
                    let len = model[&name].len();
                    let off = (sim.random() as usize) % len;
                    let l = ((sim.random() as usize) % 70_000 + 1).min(len - off);
                    let data = pattern(l, r);
                    pool.volume(&name, None)?.write_at(&data, off as u64)?;
                    model.get_mut(&name).unwrap()[off..off + l].copy_from_slice(&data);
                    dirty.entry(name).or_default().push((off, off + l));
                }
                6 => {
                    let len = model[&name].len();
                    let off = (sim.random() as usize) % len;
                    let l = ((sim.random() as usize) % 300_000 + 1).min(len - off);
                    pool.volume(&name, None)?.discard(off as u64, l as u64)?;
                    model.get_mut(&name).unwrap()[off..off + l].fill(0);
                    dirty.entry(name).or_default().push((off, off + l));
                }
                7 => {
                    // A client's flush (through the flush log) or a commit:
                    // either makes every write so far durable.
                    commits = true;
                    if sim.random().is_multiple_of(3) {
                        pool.commit()?;
                    } else {
                        pool.volume(&name, None)?.flush()?;
                    }
                }
                8 => {
                    // A snapshot is a new volume-like entity we track as a clone.
                    let new = format!("c{step}");
                    commits = true;
                    pool.snapshot(&name, &format!("s{step}"))?;
                    let content = model[&name].clone();
                    model.insert(new.clone(), content);
                    pool.clone_volume(&name, Some(&format!("s{step}")), &new)?;
                    pool.remove_snapshot(&name, &format!("s{step}"))?;
                }
                _ => {
                    commits = true;
                    if model.len() > 1 {
                        model.remove(&name);
                        pool.remove_volume(&name, true)?;
                    } else {
                        pool.commit()?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = outcome {
            assert!(
                sim.power_lost(),
                "{level} seed {seed}: error without a power cut: {e}"
            );
        }
        if sim.power_lost() {
            if commits {
                candidate = Some(model.clone());
            }
            break;
        }
        if commits {
            durable = model.clone();
            dirty.clear();
        }
    }
    drop(pool);
    let after = sim.crash();
    let members: Vec<DeviceRef> = after.iter().map(|d| d.clone() as DeviceRef).collect();
    let pool = Pool::open(members.clone())
        .unwrap_or_else(|e| panic!("{level} seed {seed}: pool must open after a crash: {e}"));
    let report = pool.check(false).unwrap();
    assert!(
        report.errors.is_empty(),
        "{level} seed {seed}: {:?}",
        report.errors
    );
    assert!(
        report.damaged_copies.is_empty(),
        "{level} seed {seed}: {:?}",
        report.damaged_copies
    );
    let names: Vec<String> = pool
        .list()
        .iter()
        .filter(|v| v.kind == "volume")
        .map(|v| v.name[5..].to_string())
        .collect();
    let expect = if names == durable.keys().cloned().collect::<Vec<_>>() {
        &durable
    } else {
        candidate.as_ref().unwrap_or_else(|| {
            panic!("{level} seed {seed}: volumes {names:?} match no committed state")
        })
    };
    assert_eq!(names, expect.keys().cloned().collect::<Vec<_>>());
    for (name, content) in expect {
        let v = pool.volume(name, None).unwrap();
        let mut got = vec![0u8; content.len()];
        v.read_at(&mut got, 0).unwrap();
        let mut unknown = vec![false; content.len()];
        for &(a, b) in dirty.get(name).map(|v| v.as_slice()).unwrap_or(&[]) {
            unknown[a..b].fill(true);
        }
        for i in 0..content.len() {
            if !unknown[i] && got[i] != content[i] {
                panic!(
                    "{level} seed {seed}: volume {name} byte {i}: {} != flushed {}",
                    got[i], content[i]
                );
            }
        }
    }
    // Leaks are reclaimed; afterwards the pool is clean and writable.
    pool.check(true).unwrap();
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{level} seed {seed}: {r:?}");
    let any = expect.keys().next().unwrap().clone();
    pool.volume(&any, None)
        .unwrap()
        .write_at(&[1u8; 8192], 0)
        .unwrap();
    pool.commit().unwrap();
}

fn run_level(level: RaidLevel, salt: u64) {
    for i in 0..iterations() / 4 {
        one_run(level, salt * 1_000_003 + i * 7919 + 1);
    }
}

#[test]
fn crash_linear() {
    run_level(RaidLevel::Linear, 1);
}

#[test]
fn crash_raid0() {
    run_level(RaidLevel::Raid0, 2);
}

#[test]
fn crash_raid1() {
    run_level(RaidLevel::Raid1, 3);
}

#[test]
fn crash_raid5() {
    run_level(RaidLevel::Raid5, 4);
}
