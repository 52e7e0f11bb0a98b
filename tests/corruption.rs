//! Corruption tests: damage one copy of a label, a superblock or a B-tree
//! node and the pool opens from the redundant copy while `check` names the
//! damage; damage every copy and the error is clear, with no panic.

mod common;
use common::*;
use std::sync::Arc;
use vpool::device::MemDevice;
use vpool::raid::RaidLevel;
use vpool::thin::store::superblock::Superblock;
use vpool::{Error, Pool};

fn setup() -> (Vec<Arc<MemDevice>>, Vec<u8>, u64, u64) {
    let (pool, devs) = small_pool(RaidLevel::Raid1, 40 * MIB);
    pool.create_volume("db", 4 * MIB).unwrap();
    let data = pattern(4 * MIB as usize, 5);
    pool.volume("db", None).unwrap().write_at(&data, 0).unwrap();
    pool.commit().unwrap();
    let root = pool.mapping_root("db", None).unwrap();
    let off = pool.metadata_block_offset(root);
    let sb_off = Superblock::slot_offset(pool.label().meta_offset, pool.info().transaction);
    (devs, data, off, sb_off)
    // pool dropped: closed
}

fn flip(dev: &MemDevice, off: u64) {
    let mut b = [0u8; 1];
    use vpool::device::BlockDevice;
    dev.read_at(&mut b, off).unwrap();
    dev.poke(off, &[b[0] ^ 0x5a]);
}

fn read_all(pool: &Pool) -> vpool::Result<Vec<u8>> {
    let v = pool.volume("db", None)?;
    let mut got = vec![0u8; 4 * MIB as usize];
    v.read_at(&mut got, 0)?;
    Ok(got)
}

#[test]
fn damaged_label_copy_is_named_and_rewritten() {
    let (devs, data, _, _) = setup();
    flip(&devs[0], 200);
    let pool = Pool::open(refs(&devs)).unwrap();
    assert!(
        pool.warnings()
            .iter()
            .any(|w| w.contains("label copy at the start is damaged")),
        "{:?}",
        pool.warnings()
    );
    assert_eq!(read_all(&pool).unwrap(), data);
    let r = pool.check(false).unwrap();
    assert!(
        r.damaged_copies.iter().any(|d| d.contains("label")),
        "{r:?}"
    );
    drop(pool);
    // Rewritten on open: a second open sees no damage.
    let pool = Pool::open(refs(&devs)).unwrap();
    assert!(pool.warnings().is_empty(), "{:?}", pool.warnings());
}

#[test]
fn damaged_superblock_copy_opens_from_the_other() {
    let (devs, data, _, sb_off) = setup();
    flip(&devs[0], sb_off + 100);
    let pool = Pool::open(refs(&devs)).unwrap();
    assert_eq!(read_all(&pool).unwrap(), data);
    let r = pool.check(false).unwrap();
    assert!(
        r.damaged_copies
            .iter()
            .any(|d| d.contains("superblock") && d.contains("checksum")),
        "{r:?}"
    );
}

#[test]
fn damaged_node_copy_is_repaired_from_the_mirror() {
    // Copy 0 is read first: the read itself repairs it, and says so.
    let (devs, data, node_off, _) = setup();
    flip(&devs[0], node_off + 300);
    let pool = Pool::open(refs(&devs)).unwrap();
    assert_eq!(read_all(&pool).unwrap(), data);
    let r = pool.check(false).unwrap();
    assert!(
        r.damaged_copies.iter().any(|d| d.contains("metadata block")
            && d.contains("checksum")
            && d.contains("rewritten")),
        "{r:?}"
    );
    assert!(r.errors.is_empty());
    assert!(pool.info().metadata_repairs >= 1);
    drop(pool);
    // Copy 1 is never read while copy 0 is good: the checker finds it, and
    // repairs it when asked.
    flip(&devs[1], node_off + 300);
    let pool = Pool::open(refs(&devs)).unwrap();
    let r = pool.check(false).unwrap();
    assert!(
        r.damaged_copies
            .iter()
            .any(|d| d.contains("metadata block") && d.contains("member 1")),
        "{r:?}"
    );
    pool.check(true).unwrap();
    drop(pool);
    let pool = Pool::open(refs(&devs)).unwrap();
    let r = pool.check(false).unwrap();
    assert!(r.clean(), "{r:?}");
    assert_eq!(read_all(&pool).unwrap(), data);
}

#[test]
fn every_copy_damaged_gives_clear_errors() {
    // A B-tree node damaged on every copy: reads fail with EIO, check names it.
    let (devs, _, node_off, _) = setup();
    for d in &devs {
        flip(d, node_off + 300);
    }
    let pool = Pool::open(refs(&devs)).unwrap();
    let err = read_all(&pool).unwrap_err();
    assert!(matches!(err, Error::Corrupt(_)), "{err}");
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.to_string().contains("metadata block"), "{err}");
    // Typed: the pool, the volume, the block, and each copy's reason.
    let d = err.damage().expect("damage");
    assert_eq!(d.pool.as_deref(), Some(pool.name().as_str()), "{err}");
    assert_eq!(
        d.volume.as_deref(),
        Some(format!("{}/db", pool.name()).as_str()),
        "{err}"
    );
    assert!(err.to_string().contains("volume '"), "{err}");
    assert_eq!(
        d.block,
        Some(pool.mapping_root("db", None).unwrap()),
        "{err}"
    );
    match &d.why {
        vpool::error::Why::Copies(c) => {
            assert_eq!(c.len(), 2, "{err}");
            assert!(c.iter().all(
                |c| c.why == vpool::error::CopyWhy::Invalid(vpool::error::BlockFault::Checksum)
            ));
        }
        w => panic!("not a per-copy reason: {w:?}"),
    }
    let e = pool.check(false).unwrap_err();
    assert!(e.to_string().contains("checksum"), "{e}");
    drop(pool);

    // Every superblock damaged: open refuses, naming the problem.
    let (devs, _, _, _) = setup();
    for d in &devs {
        for slot in 0..2 {
            flip(d, 4096 + slot * 4096 + 64);
        }
    }
    let err = Pool::open(refs(&devs)).err().expect("must not open");
    assert!(err.to_string().contains("no valid superblock"), "{err}");

    // Every label damaged: not recognised as a member.
    let (devs, _, _, _) = setup();
    for d in &devs {
        flip(d, 100);
        flip(d, d.snapshot().len() as u64 - 4096 + 100);
    }
    let err = Pool::open(refs(&devs)).err().expect("must not open");
    assert!(err.to_string().contains("label checksum mismatch"), "{err}");
}

#[test]
fn garbage_members_never_panic() {
    let (devs, _, _, _) = setup();
    // Random garbage over the metadata area of every copy.
    for (i, d) in devs.iter().enumerate() {
        let junk = pattern(2 * MIB as usize, i as u64 + 100);
        d.poke(4096 * 2, &junk);
    }
    match Pool::open(refs(&devs)) {
        Ok(pool) => {
            let _ = read_all(&pool);
            let _ = pool.check(false);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// A lost or misdirected metadata write can leave a valid node of the
/// pool at a block number its parent does not expect (another node's
/// keys, checksum and number right). The parent's expectations (level,
/// tree, key range) catch it: a mirror copy is used and rewritten, and
/// without a good copy the read fails: never another range's mappings.
#[test]
fn a_valid_node_where_its_parent_expects_another_is_never_trusted() {
    use vpool::device::BlockDevice;
    use vpool::meta::header::Header;
    use vpool::meta::node::Node;
    let setup = || {
        let (pool, devs) = small_pool(RaidLevel::Raid1, 64 * MIB);
        pool.create_volume("db", 24 * MIB).unwrap();
        let data = pattern(24 * MIB as usize, 9);
        pool.volume("db", None).unwrap().write_at(&data, 0).unwrap();
        pool.commit().unwrap();
        let root = pool.mapping_root("db", None).unwrap();
        let at = |b: vpool::units::Block| pool.metadata_block_offset(b);
        let mut blk = vec![0u8; 4096];
        devs[0].read_at(&mut blk, at(root)).unwrap();
        let parent = Node::decode(&blk).unwrap();
        assert!(parent.level > 0 && parent.len() >= 2, "a two-level tree");
        let (c0, c1) = (parent.children[0], parent.children[1]);
        devs[0].read_at(&mut blk, at(c0)).unwrap();
        let stale = Node::decode(&blk).unwrap();
        devs[0].read_at(&mut blk, at(c1)).unwrap();
        let h = Header::read(&blk);
        // Child 0's entries, sealed as block c1: valid, but the wrong range.
        let forged = stale.encode(c1, h.txid, h.pool_tag);
        (devs, data, at(c1), forged)
    };
    let read_all = |pool: &Pool| -> vpool::Result<Vec<u8>> {
        let mut got = vec![0u8; 24 * MIB as usize];
        pool.volume("db", None)?.read_at(&mut got, 0)?;
        Ok(got)
    };
    // On one copy: the mirror serves, the bad copy is named and rewritten.
    let (devs, data, off, forged) = setup();
    devs[0].poke(off, &forged);
    let pool = Pool::open(refs(&devs)).unwrap();
    assert!(read_all(&pool).unwrap() == data, "the mirror's copy serves");
    let r = pool.check(false).unwrap();
    assert!(r.errors.is_empty(), "{r:?}");
    assert!(
        r.damaged_copies
            .iter()
            .any(|d| d.contains("below its parent") && d.contains("rewritten")),
        "{r:?}"
    );
    drop(pool);
    let pool = Pool::open(refs(&devs)).unwrap();
    assert!(pool.check(false).unwrap().clean());
    drop(pool);
    // On every copy: an error naming the node (at open, when the crash
    // resync reads through it, or at the read), never child 0's data.
    let (devs, data, off, forged) = setup();
    devs[0].poke(off, &forged);
    devs[1].poke(off, &forged);
    let pool = match Pool::open(refs(&devs)) {
        Ok(pool) => pool,
        Err(e) => {
            assert!(e.to_string().contains("below its parent"), "{e}");
            return;
        }
    };
    let vol = pool.volume("db", None).unwrap();
    let mut failed = 0;
    for o in (0..data.len()).step_by(1 << 20) {
        let mut got = vec![0u8; 1 << 20];
        match vol.read_at(&mut got, o as u64) {
            Ok(()) => assert!(got == data[o..o + got.len()], "wrong data at {o}"),
            Err(e) => {
                assert!(e.to_string().contains("below its parent"), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed > 0, "the forged range must fail");
    let e = pool.check(false).unwrap_err();
    assert!(e.to_string().contains("below its parent"), "{e}");
}
