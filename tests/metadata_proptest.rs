//! Property test: random volume operations on a metadata area small enough
//! to fill (1 MiB, automatic growth off), against a byte model. Ordinary
//! operations may get ENOSPC (and then change nothing, or for a write or
//! discard stopped part way, only whole chunks of it); removals never
//! fail; whatever happened, removing everything frees the pool, and
//! `check` is clean after every reopen (issue 16).

mod common;
use common::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Error, Pool};

const VOL: u64 = 4 * MIB;

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
    RemoveSnapshot {
        snap: usize,
    },
    RemoveVolume {
        vol: usize,
    },
    Create,
    Commit,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0usize..4, 0u64..VOL, 1usize..400_000, any::<u64>())
            .prop_map(|(vol, off, len, seed)| Op::Write { vol, off, len, seed }),
        2 => (0usize..4, 0u64..VOL, 1u64..600_000).prop_map(|(vol, off, len)| Op::Discard { vol, off, len }),
        4 => (0usize..4).prop_map(|vol| Op::Snapshot { vol }),
        1 => (0usize..8).prop_map(|snap| Op::Clone { snap }),
        1 => (0usize..8).prop_map(|snap| Op::Rollback { snap }),
        1 => (0usize..8).prop_map(|snap| Op::RemoveSnapshot { snap }),
        1 => (0usize..40).prop_map(|vol| Op::RemoveVolume { vol }),
        1 => Just(Op::Create),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

struct Harness {
    pool: Pool,
    devs: Vec<std::sync::Arc<vpool::device::MemDevice>>,
    vols: BTreeMap<String, Vec<u8>>,
    snaps: BTreeMap<(String, String), Vec<u8>>,
    next: usize,
}

fn enospc<T>(r: vpool::Result<T>, what: &str) -> Option<T> {
    match r {
        Ok(t) => Some(t),
        Err(Error::NoSpace { .. }) => None,
        Err(e) => panic!("{what}: {e}"),
    }
}

impl Harness {
    fn pick<T: Clone>(keys: Vec<T>, i: usize) -> Option<T> {
        (!keys.is_empty()).then(|| keys[i % keys.len()].clone())
    }

    /// After an ENOSPC part way through a write or discard of `[off,
    /// off+len)`: each chunk of it holds the old bytes or the new ones.
    fn settle(&mut self, name: &str, off: usize, new: &[u8]) {
        let got = read_vol(&self.pool, name, None, VOL as usize);
        let cs = self.pool.chunk_size() as usize;
        let model = self.vols.get_mut(name).unwrap();
        let end = off + new.len();
        let mut c = off / cs * cs;
        while c < end {
            let (a, b) = (c.max(off), (c + cs).min(end));
            let piece = &got[a..b];
            assert!(
                piece == &model[a..b] || piece == &new[a - off..b - off],
                "{name}: bytes {a}..{b} hold neither the old data nor the new after an ENOSPC"
            );
            c += cs;
        }
        assert!(
            got[..off] == model[..off] && got[end..] == model[end..],
            "{name}: bytes outside the write changed"
        );
        model.copy_from_slice(&got);
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Write {
                vol,
                off,
                len,
                seed,
            } => {
                let Some(name) = Self::pick(self.vols.keys().cloned().collect(), vol) else {
                    return;
                };
                let len = len.min((VOL - off) as usize);
                let data = pattern(len, seed);
                let r = self.pool.volume(&name, None).unwrap().write_at(&data, off);
                match enospc(r, "write") {
                    Some(()) => self.vols.get_mut(&name).unwrap()[off as usize..off as usize + len]
                        .copy_from_slice(&data),
                    None => {
                        self.settle(&name, off as usize, &data);
                    }
                }
            }
            Op::Discard { vol, off, len } => {
                let Some(name) = Self::pick(self.vols.keys().cloned().collect(), vol) else {
                    return;
                };
                let len = len.min(VOL - off) as usize;
                let r = self
                    .pool
                    .volume(&name, None)
                    .unwrap()
                    .discard(off, len as u64);
                match enospc(r, "discard") {
                    Some(()) => {
                        self.vols.get_mut(&name).unwrap()[off as usize..off as usize + len].fill(0)
                    }
                    None => {
                        self.settle(&name, off as usize, &vec![0u8; len]);
                    }
                }
            }
            Op::Snapshot { vol } => {
                let Some(name) = Self::pick(self.vols.keys().cloned().collect(), vol) else {
                    return;
                };
                let s = format!("s{}", self.next);
                self.next += 1;
                if enospc(self.pool.snapshot(&name, &s), "snapshot").is_some() {
                    let content = self.vols[&name].clone();
                    self.snaps.insert((name, s), content);
                }
            }
            Op::Clone { snap } => {
                let Some((v, s)) = Self::pick(self.snaps.keys().cloned().collect(), snap) else {
                    return;
                };
                let new = format!("c{}", self.next);
                self.next += 1;
                if enospc(self.pool.clone_volume(&v, Some(&s), &new), "clone").is_some() {
                    let content = self.snaps[&(v, s)].clone();
                    self.vols.insert(new, content);
                }
            }
            Op::Rollback { snap } => {
                let Some((v, s)) = Self::pick(self.snaps.keys().cloned().collect(), snap) else {
                    return;
                };
                self.pool.rollback(&v, &s).unwrap();
                let content = self.snaps[&(v.clone(), s)].clone();
                self.vols.insert(v, content);
            }
            Op::RemoveSnapshot { snap } => {
                let Some((v, s)) = Self::pick(self.snaps.keys().cloned().collect(), snap) else {
                    return;
                };
                self.pool
                    .remove_snapshot(&v, &s)
                    .expect("a removal never fails");
                self.snaps.remove(&(v, s));
            }
            Op::RemoveVolume { vol } => {
                if vol >= self.vols.len() {
                    return;
                }
                let Some(name) = Self::pick(self.vols.keys().cloned().collect(), vol) else {
                    return;
                };
                self.pool
                    .remove_volume(&name, true)
                    .expect("a removal never fails");
                self.vols.remove(&name);
                self.snaps.retain(|(v, _), _| *v != name);
            }
            Op::Create => {
                let name = format!("v{}", self.next);
                self.next += 1;
                if enospc(self.pool.create_volume(&name, VOL), "create").is_some() {
                    self.vols.insert(name, vec![0; VOL as usize]);
                }
            }
            Op::Commit => self.pool.commit().expect("a commit of a full pool works"),
            Op::Reopen => {
                self.pool.close().expect("a full pool closes");
                self.pool = Pool::open(refs(&self.devs)).unwrap();
                let r = self.pool.check(false).unwrap();
                assert!(r.clean(), "{r:?}");
            }
        }
    }

    fn verify(&self) {
        for (name, model) in &self.vols {
            assert!(
                read_vol(&self.pool, name, None, VOL as usize) == *model,
                "volume {name}"
            );
        }
        for ((v, s), model) in &self.snaps {
            assert!(
                read_vol(&self.pool, v, Some(s), VOL as usize) == *model,
                "snapshot {v}@{s}"
            );
        }
    }
}

fn run(level: RaidLevel, ops: Vec<Op>) {
    let devs = mem_devices(members_for(level), 64 * MIB);
    let mut opts = CreateOptions::new(level);
    opts.stripe_unit = 4096;
    opts.metadata_size = Some(MIB);
    let (pool, _) = Pool::create("tank", refs(&devs), &opts).unwrap();
    pool.set_metadata_autogrow(false).unwrap();
    let mut h = Harness {
        pool,
        devs,
        vols: BTreeMap::new(),
        snaps: BTreeMap::new(),
        next: 0,
    };
    h.apply(Op::Create);
    for op in ops {
        h.apply(op);
        h.verify();
    }
    // Removing everything frees the pool, whatever state it is in.
    let names: Vec<String> = h.vols.keys().cloned().collect();
    for n in names {
        h.apply(Op::RemoveVolume { vol: 0 });
        let _ = n;
    }
    assert_eq!(h.pool.info().allocated, 0, "every chunk is free again");
    h.pool.create_volume("after", VOL).unwrap();
    h.pool
        .volume("after", None)
        .unwrap()
        .write_at(&pattern(VOL as usize, 3), 0)
        .unwrap();
    h.apply(Op::Reopen);
}

fn cases() -> u32 {
    std::env::var("VPOOL_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(10, |n: u32| (n / 4).max(4))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]
    #[test]
    fn full_metadata_raid1(ops in prop::collection::vec(op(), 1..300)) {
        run(RaidLevel::Raid1, ops);
    }

    #[test]
    fn full_metadata_linear(ops in prop::collection::vec(op(), 1..300)) {
        run(RaidLevel::Linear, ops);
    }
}
