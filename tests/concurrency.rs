//! Metadata operations under concurrency (issue 15): every check happens
//! under the lock that protects the change. Eight threads run random
//! creates, snapshots, clones, rollbacks, resizes and removals, on names
//! they share (contended: checked by invariants) and names of their own
//! (checked against an exact model), while a writer runs I/O; then the
//! catalog has no duplicate, every snapshot has its volume, nothing of
//! the threads' own is lost, `check` is clean and a reopen sees the same.

mod common;
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vpool::raid::RaidLevel;
use vpool::{Error, Pool};

const THREADS: usize = 8;
const SIZE: u64 = 1 << 20;

/// A thread's own volumes: name → snapshots.
type Own = BTreeMap<String, BTreeSet<String>>;

fn random_op(pool: &Pool, rng: &mut Rng, own: &mut Own, t: usize) {
    let shared = format!("shared{}", rng.below(3));
    let snap = format!("s{}", rng.below(3));
    let mine = format!("own{t}-{}", rng.below(3));
    // Half the ops on shared names (contended), half on the thread's own
    // (nobody else touches them: the model says exactly what must happen).
    let on_own = rng.below(2) == 0;
    let name = if on_own { &mine } else { &shared };
    let exists = own.contains_key(name);
    let has_snap = own.get(name).is_some_and(|s| s.contains(&snap));
    let kind = rng.below(8);
    let r: Result<(), Error> = match kind {
        0 | 1 => pool.create_volume(name, SIZE).map(|_| ()),
        2 => pool.snapshot(name, &snap),
        3 => pool.clone_volume(&shared, Some(&snap), name),
        4 => pool.rollback(name, &snap),
        5 => pool
            .resize(name, SIZE * (1 + rng.below(3)), rng.below(2) == 0)
            .map(|_| ()),
        6 => pool.remove_snapshot(name, &snap),
        _ => pool.remove_volume(name, true),
    };
    let found = |r: &Result<(), Error>| !matches!(r, Err(Error::NotFound(_)));
    match &r {
        Ok(()) | Err(Error::Exists(_) | Error::NotFound(_) | Error::Invalid(_)) => {}
        Err(e) => panic!("thread {t}: {kind} on {name}: {e}"),
    }
    if !on_own {
        return;
    }
    let what = format!("thread {t}, op {kind} on {name}@{snap}: {r:?}");
    match kind {
        0 | 1 => {
            assert_eq!(r.is_ok(), !exists, "{what}");
            own.entry(name.clone()).or_default();
        }
        2 => {
            assert_eq!(r.is_ok(), exists && !has_snap, "{what}");
            if let Some(s) = own.get_mut(name) {
                s.insert(snap);
            }
        }
        // The source is shared (its state unknown); the target is ours.
        3 => {
            if exists {
                assert!(r.is_err(), "{what}");
            } else if r.is_ok() {
                own.insert(name.clone(), BTreeSet::new());
            }
        }
        4 => assert_eq!(r.is_ok(), has_snap, "{what}"),
        // A shrink without --force over written data is refused.
        5 => assert_eq!(found(&r), exists, "{what}"),
        6 => {
            assert_eq!(r.is_ok(), has_snap, "{what}");
            if let Some(s) = own.get_mut(name) {
                s.remove(&snap);
            }
        }
        _ => {
            assert_eq!(r.is_ok(), exists, "{what}");
            own.remove(name);
        }
    }
}

#[test]
fn eight_threads_of_metadata_operations_under_io() {
    for level in [RaidLevel::Raid1, RaidLevel::Raid5] {
        let (pool, devs) = small_pool(level, 64 * MIB);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (pool, stop) = (pool.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    for v in pool.list() {
                        let Some(name) = v.name.strip_prefix("tank/") else {
                            continue;
                        };
                        if name.contains('@') {
                            continue;
                        }
                        if let Ok(vol) = pool.volume(name, None) {
                            let data = pattern(64 * 1024, n);
                            let _ = vol.write_at(&data, (n % 8) * 65536);
                            n += 1;
                        }
                    }
                }
                n
            })
        };
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let pool = pool.clone();
                std::thread::spawn(move || {
                    let mut rng = Rng(0x9E37_79B9 + t as u64 * 7919);
                    let mut own = Own::new();
                    for _ in 0..600 {
                        random_op(&pool, &mut rng, &mut own, t);
                    }
                    own
                })
            })
            .collect();
        let models: Vec<Own> = threads.into_iter().map(|h| h.join().unwrap()).collect();
        stop.store(true, Ordering::Relaxed);
        let writes = writer.join().unwrap();
        assert!(writes > 0, "the writer ran");
        let check_catalog = |p: &Pool, what: &str| {
            let list = p.list();
            let names: Vec<&str> = list.iter().map(|v| v.name.as_str()).collect();
            let unique: BTreeSet<&str> = names.iter().copied().collect();
            assert_eq!(
                unique.len(),
                names.len(),
                "{what}: duplicate names in {names:?}"
            );
            // Snapshots follow their volume in the list: each has one.
            for v in &list {
                if let Some((vol, _)) = v.name.split_once('@') {
                    assert!(unique.contains(vol), "{what}: {} has no volume", v.name);
                }
            }
            for (t, own) in models.iter().enumerate() {
                for i in 0..3 {
                    let name = format!("own{t}-{i}");
                    let want = own.get(&name);
                    let got = p.volume(&name, None).is_ok();
                    assert_eq!(want.is_some(), got, "{what}: {name}");
                    if let Some(snaps) = want {
                        for s in snaps {
                            assert!(p.volume(&name, Some(s)).is_ok(), "{what}: {name}@{s} lost");
                        }
                    }
                }
            }
        };
        check_catalog(&pool, &format!("{level}"));
        let report = pool.check(false).unwrap();
        assert!(report.errors.is_empty(), "{level}: {:?}", report.errors);
        assert_eq!(
            (report.leaked_blocks, report.leaked_chunks),
            (0, 0),
            "{level}"
        );
        pool.close().unwrap();
        drop(pool);
        let p = Pool::open(refs(&devs)).unwrap();
        check_catalog(&p, &format!("{level}, reopened"));
    }
}

/// Eight threads released at once onto the same name, many times: exactly
/// one create, snapshot or clone of a name wins each round.
#[test]
fn racing_for_one_name_has_one_winner() {
    let (pool, _devs) = small_pool(RaidLevel::Raid1, 64 * MIB);
    pool.create_volume("base", SIZE).unwrap();
    pool.snapshot("base", "origin").unwrap();
    let rounds = 150;
    let barrier = Arc::new(std::sync::Barrier::new(THREADS));
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let (pool, barrier) = (pool.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut won = vec![0u32; rounds * 3];
                for round in 0..rounds {
                    let name = format!("race{round}");
                    barrier.wait();
                    won[round * 3] += u32::from(pool.create_volume(&name, SIZE).is_ok());
                    barrier.wait();
                    won[round * 3 + 1] += u32::from(pool.snapshot("base", &name).is_ok());
                    barrier.wait();
                    let clone = format!("clone{round}");
                    let r = pool.clone_volume("base", Some("origin"), &clone);
                    won[round * 3 + 2] += u32::from(r.is_ok());
                    let _ = t;
                }
                won
            })
        })
        .collect();
    let mut total = vec![0u32; rounds * 3];
    for h in threads {
        for (i, w) in h.join().unwrap().into_iter().enumerate() {
            total[i] += w;
        }
    }
    for (i, w) in total.iter().enumerate() {
        let what = ["create", "snapshot", "clone"][i % 3];
        assert_eq!(*w, 1, "round {}: {what} won {w} times", i / 3);
    }
    let names: Vec<String> = pool.list().into_iter().map(|v| v.name).collect();
    let unique: BTreeSet<&String> = names.iter().collect();
    assert_eq!(unique.len(), names.len(), "duplicate names");
    let report = pool.check(false).unwrap();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
}
