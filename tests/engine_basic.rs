//! End-to-end behaviour of the engine through the pool facade, on memory members.

mod common;
use common::*;
use vpool::raid::RaidLevel;
use vpool::{Error, Pool};

const LEVELS: [RaidLevel; 4] = [RaidLevel::Linear, RaidLevel::Raid0, RaidLevel::Raid1, RaidLevel::Raid5];

#[test]
fn write_snapshot_clone_rollback_reopen() {
    for level in LEVELS {
        let (pool, devs) = small_pool(level, 64 * MIB);
        pool.create_volume("db", 8 * MIB).unwrap();
        let v = pool.volume("db", None).unwrap();
        let a = pattern(3 * MIB as usize, 1);
        v.write_at(&a, 12345).unwrap();
        pool.snapshot("db", "before").unwrap();
        let b = pattern(100_000, 2);
        v.write_at(&b, 20_000).unwrap();
        let snap = pool.volume("db", Some("before")).unwrap();
        let mut got = vec![0u8; a.len()];
        snap.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, a, "{level}: snapshot keeps old data");
        assert!(matches!(snap.write_at(&b, 0), Err(Error::ReadOnly(_))));
        pool.clone_volume("db", Some("before"), "db2").unwrap();
        let c = pool.volume("db2", None).unwrap();
        c.write_at(&pattern(5000, 3), 0).unwrap();
        let mut expect = a.clone();
        expect[20_000 - 12345..20_000 - 12345 + b.len()].copy_from_slice(&b);
        v.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, expect, "{level}: origin has new data");
        pool.rollback("db", "before").unwrap();
        v.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, a, "{level}: rollback");
        v.write_at(&b, 20_000).unwrap();
        v.flush().unwrap();
        let report = pool.check(false).unwrap();
        assert!(report.clean(), "{level}: {report:?}");
        drop((v, snap, c));
        drop(pool);
        let pool = Pool::open(refs(&devs)).unwrap();
        let v = pool.volume("db", None).unwrap();
        v.read_at(&mut got, 12345).unwrap();
        assert_eq!(got, expect, "{level}: after reopen");
        let report = pool.check(false).unwrap();
        assert!(report.clean(), "{level}: {report:?}");
        pool.remove_volume("db", true).unwrap();
        pool.remove_volume("db2", false).unwrap();
        let report = pool.check(false).unwrap();
        assert!(report.clean(), "{level}: {report:?}");
        assert_eq!(pool.info().allocated, 0, "{level}: all space returned");
    }
}
