//! Helpers shared by the integration tests: in-memory pools and a byte model.
#![allow(dead_code)]

use std::sync::Arc;
use vpool::device::{DeviceRef, MemDevice, WritebackDevice, WritebackPlan};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Pool};

pub mod ceph;
pub mod cleanup;
pub mod daemon;
pub mod engines;
pub mod fs;
pub mod grpc;
pub mod nbd_client;
pub mod plugin;

pub const MIB: u64 = 1 << 20;

pub fn mem_devices(n: usize, size: u64) -> Vec<Arc<MemDevice>> {
    (0..n)
        .map(|i| Arc::new(MemDevice::new(&format!("mem{i}"), size)))
        .collect()
}

pub fn refs(devs: &[Arc<MemDevice>]) -> Vec<DeviceRef> {
    devs.iter().map(|d| d.clone() as DeviceRef).collect()
}

pub fn members_for(level: RaidLevel) -> usize {
    match level {
        RaidLevel::Linear => 2,
        RaidLevel::Raid0 => 3,
        RaidLevel::Raid1 => 2,
        RaidLevel::Raid5 => 3,
    }
}

/// A small pool with a small stripe unit, so tests cross many chunks.
pub fn small_pool(level: RaidLevel, size: u64) -> (Pool, Vec<Arc<MemDevice>>) {
    let devs = mem_devices(members_for(level), size);
    let mut opts = CreateOptions::new(level);
    opts.stripe_unit = 4096;
    let (pool, _) = Pool::create("tank", refs(&devs), &opts).expect("create pool");
    (pool, devs)
}

pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Stored damage: bytes unlike any `pattern` writes, over `len` bytes at
/// `off` of a member, behind the pool's back.
pub fn garbage(mem: &MemDevice, off: u64, len: usize) {
    use vpool::device::BlockDevice;
    let bytes: Vec<u8> = pattern(len, 999).iter().map(|b| b ^ 0x5a).collect();
    mem.write_at(&bytes, off).unwrap();
}

/// How many power cuts a crash test makes: `default`, or with
/// `VPOOL_CRASH_ITERS=n` set, `n / divisor` (at least `min`).
pub fn crash_iters(default: u64, divisor: u64, min: u64) -> u64 {
    std::env::var("VPOOL_CRASH_ITERS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(default, |n| (n / divisor).max(min))
}

/// A pool with the given stripe unit (small units: many rows to move).
pub fn create_with_unit(level: RaidLevel, devs: Vec<DeviceRef>, stripe_unit: u64) -> Pool {
    let mut opts = CreateOptions::new(level);
    opts.stripe_unit = stripe_unit;
    Pool::create("tank", devs, &opts).expect("create").0
}

/// The first `len` bytes of `vol` (or its snapshot).
pub fn read_vol(pool: &Pool, vol: &str, snap: Option<&str>, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    pool.volume(vol, snap)
        .unwrap()
        .read_at(&mut got, 0)
        .unwrap();
    got
}

/// Volume "a" reads exactly as `model`.
pub fn model_verify(pool: &Pool, model: &[u8], what: &str) {
    let got = read_vol(pool, "a", None, model.len());
    if let Some(i) = (0..model.len()).find(|&i| got[i] != model[i]) {
        panic!("{what}: byte {i} reads {} instead of {}", got[i], model[i]);
    }
}

/// Write a pattern to volume "a" and to `model` alike.
pub fn model_write(pool: &Pool, model: &mut [u8], off: usize, len: usize, seed: u64) {
    let len = len.min(model.len() - off);
    let data = pattern(len, seed);
    pool.volume("a", None)
        .unwrap()
        .write_at(&data, off as u64)
        .unwrap();
    model[off..off + len].copy_from_slice(&data);
}

/// A deterministic random source (xorshift64) for randomized tests.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Members with a volatile write cache (`WritebackDevice`) over in-memory
/// media: what a power cut leaves is `media`.
pub struct Cached {
    pub media: Vec<Arc<MemDevice>>,
    pub caches: Vec<Arc<WritebackDevice>>,
    pub plans: Vec<WritebackPlan>,
}

/// Write caches over `media`, and the devices to build a pool on.
pub fn cached_members(media: Vec<Arc<MemDevice>>) -> (Cached, Vec<DeviceRef>) {
    let (mut caches, mut plans, mut devs) = (Vec::new(), Vec::new(), Vec::<DeviceRef>::new());
    for m in &media {
        let (d, p) = WritebackDevice::wrap(m.clone() as DeviceRef);
        devs.push(d.clone());
        caches.push(d);
        plans.push(p);
    }
    (
        Cached {
            media,
            caches,
            plans,
        },
        devs,
    )
}

/// Is `got` what a block written since the last flush may hold after a
/// power cut: each 512-byte sector from the flushed bytes or from one of
/// the versions written since (unflushed writes may be torn, as on disk)?
#[allow(dead_code)]
pub fn torn_of(got: &[u8], flushed: &[u8], since: &[Vec<u8>]) -> bool {
    got.chunks(512).enumerate().all(|(i, s)| {
        let at = i * 512..(i + 1) * 512;
        flushed[at.clone()] == *s || since.iter().any(|v| v[at.clone()] == *s)
    })
}

/// Power cut: every member's cache is lost; the pool is opened again on
/// copies of the media alone.
#[allow(dead_code)]
pub fn power_cut(m: &Cached) -> vpool::Result<(Cached, Pool)> {
    for c in &m.caches {
        c.drop_cache();
    }
    let media: Vec<Arc<MemDevice>> = m
        .media
        .iter()
        .enumerate()
        .map(|(i, d)| Arc::new(MemDevice::from_bytes(&format!("mem{i}"), d.snapshot())))
        .collect();
    let (m, devs) = cached_members(media);
    Ok((m, Pool::open(devs)?))
}

/// Maybe arm one lie on `plan` for its next write: lost (a third of the
/// time), misdirected up to 32 blocks away or torn (a sixth each), or
/// none.
#[allow(dead_code)]
pub fn maybe_lie(rng: &mut Rng, plan: &WritebackPlan) {
    match rng.below(6) {
        0 | 1 => plan.lose_writes(1),
        2 => {
            let delta = (rng.below(64) as i64 - 32) * 4096;
            plan.misdirect_writes(1, if delta == 0 { 4096 } else { delta })
        }
        3 => plan.tear_writes(1),
        _ => {}
    }
}

/// Land every member's cached writes on its media, as a disk's own
/// writeback would before a power cut, without the pool knowing.
#[allow(dead_code)]
pub fn land_caches(m: &Cached) {
    use vpool::device::BlockDevice;
    for c in &m.caches {
        c.flush().expect("a cache lands on its medium");
    }
}

/// `homes_in` of the media under the caches.
#[allow(dead_code)]
pub fn homes_of(m: &Cached, block: &[u8]) -> Vec<(usize, u64)> {
    homes_in(&m.media, block)
}

/// Where `media` hold exactly `block` (4 KiB aligned): (member, byte
/// offset) of each place.
#[allow(dead_code)]
pub fn homes_in(media: &[Arc<MemDevice>], block: &[u8]) -> Vec<(usize, u64)> {
    let mut found = Vec::new();
    for (i, d) in media.iter().enumerate() {
        let bytes = d.snapshot();
        for (k, b) in bytes.chunks_exact(block.len()).enumerate() {
            if b == block {
                found.push((i, (k * block.len()) as u64));
            }
        }
    }
    found
}

/// The pool on `devs` (copies of their bytes) with member `lost` gone,
/// reopened.
pub fn reopened_without(devs: &[Arc<MemDevice>], lost: usize) -> Pool {
    let left: Vec<DeviceRef> = (0..devs.len())
        .filter(|&m| m != lost)
        .map(|m| Arc::new(MemDevice::from_bytes(&format!("m{m}"), devs[m].snapshot())) as DeviceRef)
        .collect();
    Pool::open(left).expect("the pool opens without one member")
}
