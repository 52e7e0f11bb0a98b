//! Out-of-band damage to member images, done behind vpool's back while
//! the pool is closed: members presented in another order under other
//! names, a member truncated, a member swapped for a member of another
//! pool. Each is detected and named, and a raid5 pool serves every byte
//! from redundancy and is repaired with `pool replace`.

mod common;
use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use vpool::device::{DeviceRef, MemDevice};
use vpool::raid::RaidLevel;
use vpool::thin::store::DEFAULT_CACHE_NODES;
use vpool::Pool;

const VOL: usize = 4 << 20;

/// A raid5 pool of three members with volume "a" written; returns the
/// member images, the model and the pool uuid.
fn written_pool() -> (Vec<Vec<u8>>, Vec<u8>, [u8; 16]) {
    let mem = mem_devices(3, 32 * MIB);
    let pool = create_with_unit(RaidLevel::Raid5, refs(&mem), 16 * 1024);
    pool.create_volume("a", VOL as u64).unwrap();
    let mut model = vec![0u8; VOL];
    model_write(&pool, &mut model, 0, VOL, 7);
    pool.commit().unwrap();
    let uuid = *pool.uuid().as_bytes();
    drop(pool);
    (mem.iter().map(|d| d.snapshot()).collect(), model, uuid)
}

fn dev(name: &str, img: Vec<u8>) -> DeviceRef {
    Arc::new(MemDevice::from_bytes(name, img))
}

fn repair_and_verify(pool: &Pool, model: &[u8], k: usize) {
    pool.replace_member(k, Arc::new(MemDevice::new("fresh", 32 * MIB)), false)
        .unwrap();
    pool.run_job(&AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(pool.info().health, "online");
    model_verify(pool, model, "after the replace");
}

#[test]
fn members_in_another_order_under_other_names_are_matched_by_uuid() {
    let (imgs, model, _) = written_pool();
    let devs = vec![
        dev("renamed-c", imgs[2].clone()),
        dev("renamed-a", imgs[0].clone()),
        dev("renamed-b", imgs[1].clone()),
    ];
    let pool = Pool::open(devs).unwrap();
    assert_eq!(pool.info().health, "online", "{:?}", pool.warnings());
    let names: Vec<String> = pool
        .info()
        .members
        .iter()
        .filter_map(|m| m.device.clone())
        .collect();
    assert_eq!(names, ["renamed-a", "renamed-b", "renamed-c"]);
    model_verify(&pool, &model, "reordered");
}

#[test]
fn a_truncated_member_is_named_and_left_out() {
    let (imgs, model, _) = written_pool();
    let mut short = imgs[1].clone();
    short.truncate(short.len() / 2);
    let devs = vec![
        dev("m0", imgs[0].clone()),
        dev("m1", short),
        dev("m2", imgs[2].clone()),
    ];
    let pool = Pool::open(devs).unwrap();
    let w = pool.warnings().join("\n");
    assert!(w.contains("m1") && w.contains("truncated"), "{w}");
    assert_eq!(pool.info().health, "degraded");
    assert_eq!(pool.info().members[1].state, "missing");
    model_verify(&pool, &model, "with a truncated member");
    repair_and_verify(&pool, &model, 1);
}

#[test]
fn a_member_swapped_for_another_pools_member_is_named() {
    let (imgs, model, uuid) = written_pool();
    let other = mem_devices(2, 32 * MIB);
    let p = create_with_unit(RaidLevel::Raid1, refs(&other), 16 * 1024);
    drop(p);
    let devs = vec![
        dev("m0", imgs[0].clone()),
        other[0].clone() as DeviceRef,
        dev("m2", imgs[2].clone()),
    ];
    // Without knowing which pool is meant: refused, both named.
    let e = Pool::open(devs.clone())
        .err()
        .expect("must refuse")
        .to_string();
    assert!(e.contains("several pools"), "{e}");
    // The pool the host knows (by uuid): opens degraded, the stranger named.
    let pool = Pool::open_with(devs, Some(uuid), DEFAULT_CACHE_NODES).unwrap();
    let w = pool.warnings().join("\n");
    assert!(w.contains("mem0") && w.contains("another pool"), "{w}");
    assert_eq!(pool.info().health, "degraded");
    model_verify(&pool, &model, "with a foreign member");
    repair_and_verify(&pool, &model, 1);
}
