//! Helpers shared by the integration tests: in-memory pools and a byte model.
#![allow(dead_code)]

use std::sync::Arc;
use vpool::device::{DeviceRef, MemDevice};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Pool};

pub mod cleanup;
pub mod daemon;
pub mod fs;
pub mod nbd_client;

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
