//! Property test: random sequences of volume operations, checked byte for
//! byte against a trivial model (a Vec<u8> per volume and snapshot), on every
//! RAID level, including raid1/raid5 losing a member partway through, or a
//! member failing in service (one injected fault per run: it vanishes, fails
//! its reads, fails its writes, or dies after a few writes), or bytes of one
//! member's data area overwritten behind the pool's back (found by the
//! checksums, served from redundancy, repaired by a scrub).

mod common;
use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use vpool::device::{BlockDevice, DeviceRef, FaultDevice, FaultPlan, MemDevice};
use vpool::raid::RaidLevel;
use vpool::Pool;

#[derive(Clone, Debug)]
enum Op {
    Write {
        vol: usize,
        off: u64,
        len: usize,
        seed: u64,
    },
    Discard {
        vol: usize,
        off: u64,
        len: u64,
    },
    Snapshot {
        vol: usize,
    },
    Clone {
        snap: usize,
    },
    Rollback {
        snap: usize,
    },
    Resize {
        vol: usize,
        size: u64,
    },
    RemoveVolume {
        vol: usize,
    },
    RemoveSnapshot {
        snap: usize,
    },
    Create {
        size: u64,
    },
    Commit,
    Reopen,
    LoseMember {
        member: usize,
    },
    /// A member starts failing while the pool serves (raid1/raid5).
    Fault {
        member: usize,
        kind: u8,
    },
    /// Garbage over `len` bytes of a member's data area (raid1/raid5).
    Damage {
        member: usize,
        off: u64,
        len: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let size = (1u64..=512).prop_map(|k| k * 8192);
    prop_oneof![
        8 => (0usize..8, 0u64..4_000_000, 1usize..300_000, any::<u64>())
            .prop_map(|(vol, off, len, seed)| Op::Write { vol, off, len, seed }),
        2 => (0usize..8, 0u64..4_000_000, 1u64..1_000_000).prop_map(|(vol, off, len)| Op::Discard { vol, off, len }),
        2 => (0usize..8).prop_map(|vol| Op::Snapshot { vol }),
        1 => (0usize..8).prop_map(|snap| Op::Clone { snap }),
        1 => (0usize..8).prop_map(|snap| Op::Rollback { snap }),
        1 => (0usize..8, size.clone()).prop_map(|(vol, size)| Op::Resize { vol, size }),
        1 => (0usize..8).prop_map(|vol| Op::RemoveVolume { vol }),
        1 => (0usize..8).prop_map(|snap| Op::RemoveSnapshot { snap }),
        1 => size.prop_map(|size| Op::Create { size }),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
        1 => (0usize..3).prop_map(|member| Op::LoseMember { member }),
        1 => (0usize..3, 0u8..4).prop_map(|(member, kind)| Op::Fault { member, kind }),
        2 => (0usize..3, any::<u64>(), 1usize..40_000).prop_map(|(member, off, len)| Op::Damage { member, off, len }),
    ]
}

struct Harness {
    pool: Pool,
    devs: Vec<Arc<MemDevice>>,
    /// The fault plans of the devices the pool was created on.
    plans: Vec<FaultPlan>,
    faulted: bool,
    lost: Option<usize>,
    /// The one member whose bytes are damaged.
    damaged: Option<usize>,
    vols: BTreeMap<String, Vec<u8>>,
    snaps: BTreeMap<(String, String), Vec<u8>>,
    next: usize,
}

impl Harness {
    fn members(&self) -> Vec<DeviceRef> {
        self.devs
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != self.lost)
            .map(|(_, d)| d.clone() as DeviceRef)
            .collect()
    }

    fn pick_vol(&self, i: usize) -> Option<String> {
        let n = self.vols.len();
        (n > 0)
            .then(|| self.vols.keys().nth(i % n).cloned())
            .flatten()
    }

    fn pick_snap(&self, i: usize) -> Option<(String, String)> {
        let n = self.snaps.len();
        (n > 0)
            .then(|| self.snaps.keys().nth(i % n).cloned())
            .flatten()
    }

    fn apply(&mut self, op: &Op, level: RaidLevel) {
        match op.clone() {
            Op::Write {
                vol,
                off,
                len,
                seed,
            } => {
                let Some(name) = self.pick_vol(vol) else {
                    return;
                };
                let model = self.vols.get_mut(&name).unwrap();
                if model.is_empty() {
                    return;
                }
                let off = off % model.len() as u64;
                let len = len.min(model.len() - off as usize);
                let data = pattern(len, seed);
                self.pool
                    .volume(&name, None)
                    .unwrap()
                    .write_at(&data, off)
                    .unwrap();
                model[off as usize..off as usize + len].copy_from_slice(&data);
            }
            Op::Discard { vol, off, len } => {
                let Some(name) = self.pick_vol(vol) else {
                    return;
                };
                let model = self.vols.get_mut(&name).unwrap();
                let off = off % model.len() as u64;
                let len = len.min(model.len() as u64 - off);
                self.pool
                    .volume(&name, None)
                    .unwrap()
                    .discard(off, len)
                    .unwrap();
                model[off as usize..(off + len) as usize].fill(0);
            }
            Op::Snapshot { vol } => {
                let Some(name) = self.pick_vol(vol) else {
                    return;
                };
                let s = format!("s{}", self.next);
                self.next += 1;
                self.pool.snapshot(&name, &s).unwrap();
                self.snaps
                    .insert((name.clone(), s), self.vols[&name].clone());
            }
            Op::Clone { snap } => {
                let Some((v, s)) = self.pick_snap(snap) else {
                    return;
                };
                let new = format!("c{}", self.next);
                self.next += 1;
                self.pool.clone_volume(&v, Some(&s), &new).unwrap();
                self.vols.insert(new, self.snaps[&(v, s)].clone());
            }
            Op::Rollback { snap } => {
                let Some((v, s)) = self.pick_snap(snap) else {
                    return;
                };
                self.pool.rollback(&v, &s).unwrap();
                self.vols.insert(v.clone(), self.snaps[&(v, s)].clone());
            }
            Op::Resize { vol, size } => {
                let Some(name) = self.pick_vol(vol) else {
                    return;
                };
                self.pool.resize(&name, size, true).unwrap();
                self.vols.get_mut(&name).unwrap().resize(size as usize, 0);
            }
            Op::RemoveVolume { vol } => {
                let Some(name) = self.pick_vol(vol) else {
                    return;
                };
                self.pool.remove_volume(&name, true).unwrap();
                self.vols.remove(&name);
                self.snaps.retain(|(v, _), _| *v != name);
            }
            Op::RemoveSnapshot { snap } => {
                let Some((v, s)) = self.pick_snap(snap) else {
                    return;
                };
                self.pool.remove_snapshot(&v, &s).unwrap();
                self.snaps.remove(&(v, s));
            }
            Op::Create { size } => {
                let name = format!("v{}", self.next);
                self.next += 1;
                self.pool.create_volume(&name, size).unwrap();
                self.vols.insert(name, vec![0; size as usize]);
            }
            Op::Commit => self.pool.commit().unwrap(),
            Op::Reopen => self.reopen(),
            Op::Fault { member, kind } => {
                let redundant = matches!(level, RaidLevel::Raid1 | RaidLevel::Raid5);
                if redundant
                    && self.lost.is_none()
                    && !self.faulted
                    && self.damaged.is_none()
                    && !self.plans.is_empty()
                {
                    self.faulted = true;
                    let plan = &self.plans[member % self.plans.len()];
                    match kind {
                        0 => plan.vanish(),
                        1 => plan.fail_reads(0..u64::MAX),
                        2 => plan.fail_writes(0..u64::MAX),
                        _ => plan.die_after_writes(3),
                    }
                }
            }
            Op::Damage { member, off, len } => {
                let redundant = matches!(level, RaidLevel::Raid1 | RaidLevel::Raid5);
                if !redundant || self.lost.is_some() || self.faulted {
                    return;
                }
                let m = *self.damaged.get_or_insert(member % self.devs.len());
                let label = self.pool.label();
                // The first MiBs: where the data is (chunks are allocated low).
                let span = (label.members[m].data_size - len as u64).min(3 << 20);
                let at = label.data_start + off % span;
                let bytes: Vec<u8> = pattern(len, off).iter().map(|b| b ^ 0xa5).collect();
                self.devs[m].write_at(&bytes, at).unwrap();
            }
            Op::LoseMember { member } => {
                let redundant = matches!(level, RaidLevel::Raid1 | RaidLevel::Raid5);
                if redundant && self.lost.is_none() && !self.faulted && self.damaged.is_none() {
                    self.pool.commit().unwrap();
                    self.lost = Some(member % self.devs.len());
                    self.reopen();
                    assert_eq!(self.pool.info().health, "degraded");
                }
            }
        }
    }

    /// Close and open again, on the plain devices: a member that failed
    /// in service is back, with stale data, and must not be used.
    fn reopen(&mut self) {
        self.pool.commit().unwrap();
        self.plans.clear();
        let members = self.members();
        self.pool = Pool::open(members).unwrap();
    }

    fn verify(&self) {
        for (name, model) in &self.vols {
            let v = self.pool.volume(name, None).unwrap();
            assert_eq!(v.size().unwrap(), model.len() as u64, "size of {name}");
            let mut got = vec![0u8; model.len()];
            v.read_at(&mut got, 0).unwrap();
            assert!(got == *model, "contents of volume {name}");
        }
        for ((v, s), model) in &self.snaps {
            let h = self.pool.volume(v, Some(s)).unwrap();
            let mut got = vec![0u8; model.len()];
            h.read_at(&mut got, 0).unwrap();
            assert!(got == *model, "contents of snapshot {v}@{s}");
        }
    }
}

fn run(level: RaidLevel, ops: Vec<Op>) {
    let devs = mem_devices(members_for(level), 40 * MIB);
    let (faulty, plans): (Vec<DeviceRef>, Vec<FaultPlan>) = devs
        .iter()
        .map(|d| {
            let (f, p) = FaultDevice::wrap(d.clone() as DeviceRef);
            (f as DeviceRef, p)
        })
        .unzip();
    let pool = create_with_unit(level, faulty, 4096);
    pool.create_volume("v0", 4 * MIB).unwrap();
    let mut h = Harness {
        pool,
        devs,
        plans,
        faulted: false,
        lost: None,
        damaged: None,
        vols: [("v0".to_string(), vec![0u8; 4 * MIB as usize])].into(),
        snaps: BTreeMap::new(),
        next: 1,
    };
    for (i, op) in ops.iter().enumerate() {
        h.apply(op, level);
        if i % 8 == 7 {
            h.verify();
        }
    }
    h.verify();
    // Damage the reads did not meet is repaired by a scrub, all of it.
    let fix = h.pool.scrub(false, |_, _| {}).unwrap();
    assert_eq!(fix.unrecoverable, 0, "{fix:?}");
    let again = h.pool.scrub(true, |_, _| {}).unwrap();
    assert_eq!(
        again.bad_blocks + again.parity_errors,
        0,
        "{fix:?} then {again:?}"
    );
    h.verify();
    let report = h.pool.check(false).unwrap();
    assert!(
        report.errors.is_empty() && report.leaked_blocks == 0 && report.leaked_chunks == 0,
        "{report:?}"
    );
    // Everything removed: all space comes back.
    let names: Vec<String> = h.vols.keys().cloned().collect();
    for n in names {
        h.pool.remove_volume(&n, true).unwrap();
    }
    assert_eq!(h.pool.info().allocated, 0);
    let report = h.pool.check(false).unwrap();
    assert!(
        report.errors.is_empty() && report.leaked_blocks == 0,
        "{report:?}"
    );
    // What stays: the flush log and a few blocks.
    let info = h.pool.info();
    assert!(
        info.metadata_used <= info.metadata_log + 4096 * 4,
        "{} bytes of metadata in use, {} of them the log",
        info.metadata_used,
        info.metadata_log
    );
}

fn cases() -> u32 {
    std::env::var("VPOOL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48)
}

macro_rules! level_test {
    ($name:ident, $level:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
            #[test]
            fn $name(ops in prop::collection::vec(op(), 1..80)) {
                run($level, ops);
            }
        }
    };
}

level_test!(model_linear, RaidLevel::Linear);
level_test!(model_raid0, RaidLevel::Raid0);
level_test!(model_raid1, RaidLevel::Raid1);
level_test!(model_raid5, RaidLevel::Raid5);
