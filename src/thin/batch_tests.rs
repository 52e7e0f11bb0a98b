//! Requests over several chunks (`batch`): pieces on chunks next to each
//! other on the array move in one member I/O, pieces elsewhere each where
//! it is, and every byte reads back as written, before and after a reopen.

use super::ThinPool;
use crate::device::{BlockDevice, DeviceRef, MemDevice};
use crate::meta::spacemap::pages_for;
use crate::raid::{Array, Geometry, MetaMirror, RaidLevel};
use crate::thin::store::{MetaLayout, MetaStore};
use crate::units::ChunkSize;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;
const BLOCKS: u64 = 2048;
const UUID: [u8; 16] = [7; 16];
const DATA_START: u64 = 16 * MIB;
const UNIT: u64 = 64 * KIB;

/// A member in memory that counts its reads and writes of the data area.
struct Counting {
    mem: MemDevice,
    reads: AtomicU64,
    writes: AtomicU64,
}

impl Counting {
    fn take(&self) -> (u64, u64) {
        (
            self.reads.swap(0, Ordering::SeqCst),
            self.writes.swap(0, Ordering::SeqCst),
        )
    }
}

impl BlockDevice for Counting {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset >= DATA_START {
            self.reads.fetch_add(1, Ordering::SeqCst);
        }
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset >= DATA_START {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        self.mem.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.mem.flush()
    }
    fn name(&self) -> String {
        self.mem.name()
    }
}

fn members(n: usize) -> Vec<Arc<Counting>> {
    (0..n)
        .map(|i| {
            Arc::new(Counting {
                mem: MemDevice::new(&format!("m{i}"), 48 * MIB),
                reads: AtomicU64::new(0),
                writes: AtomicU64::new(0),
            })
        })
        .collect()
}

fn geometry(level: RaidLevel, n: usize) -> Geometry {
    Geometry {
        level,
        stripe_unit: UNIT,
        data_start: DATA_START,
        member_data: vec![32 * MIB; n],
    }
}

fn layout() -> MetaLayout {
    MetaLayout {
        meta_offset: MIB,
        msm_pages: pages_for(BLOCKS),
        meta_blocks: BLOCKS,
    }
}

fn parts(level: RaidLevel, devs: &[Arc<Counting>]) -> (MetaMirror, Arc<Array>, u64, u64) {
    let geo = geometry(level, devs.len());
    let cs = geo.stripe_width();
    let chunks = geo.capacity() / cs;
    let copies = devs.iter().enumerate();
    let mirror = MetaMirror::new(
        copies
            .map(|(i, d)| (i, Some(d.clone() as DeviceRef)))
            .collect(),
    );
    let m = devs.iter().map(|d| Some(d.clone() as DeviceRef)).collect();
    (mirror, Arc::new(Array::new(geo, m)), chunks, cs)
}

fn create(level: RaidLevel, devs: &[Arc<Counting>]) -> ThinPool {
    let (mirror, array, chunks, cs) = parts(level, devs);
    let meta = MetaStore::create(mirror, layout(), UUID, "t", chunks, cs, 2, 256, true).unwrap();
    ThinPool::new(array, meta, ChunkSize::new(cs))
}

fn reopen(level: RaidLevel, devs: &[Arc<Counting>]) -> ThinPool {
    let (mirror, array, chunks, cs) = parts(level, devs);
    let mut meta = MetaStore::open(mirror, layout(), UUID, 2, chunks, 256).unwrap();
    meta.load(Some(array.clone())).unwrap();
    ThinPool::new(array, meta, ChunkSize::new(cs))
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64).wrapping_mul(29).wrapping_add(seed * 97) as u8 | 1)
        .collect()
}

fn read(t: &ThinPool, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    t.read(1, offset, &mut buf).unwrap();
    buf
}

/// Fill 1 MiB of fresh chunks, overwrite it once committed, and read it:
/// one data I/O per member each (16 before, one per chunk).
fn one_io_per_member(level: RaidLevel, n: usize) {
    let devs = members(n);
    let t = create(level, &devs);
    t.create_volume(1).unwrap();
    t.write(1, 0, &pattern(MIB as usize, 1)).unwrap();
    for d in &devs {
        assert_eq!(
            d.take(),
            (0, 1),
            "{level:?}: a fill of fresh chunks in one write"
        );
    }
    t.commit().unwrap();
    devs.iter().for_each(|d| {
        d.take();
    });
    let new = pattern(MIB as usize, 2);
    t.write(1, 0, &new).unwrap();
    for d in &devs {
        assert_eq!(d.take(), (0, 1), "{level:?}: one data write per member");
    }
    assert!(read(&t, 0, MIB as usize) == new);
    let reads: u64 = devs.iter().map(|d| d.take().0).sum();
    assert_eq!(reads, 1, "{level:?}: one data read");
    // Unaligned, across the same chunks and beyond the written ones.
    let odd = pattern((MIB + 3 * UNIT) as usize, 3);
    t.write(1, 4097, &odd).unwrap();
    let mut want = new.clone();
    want.resize((MIB + 4 * UNIT) as usize, 0);
    want[4097..4097 + odd.len()].copy_from_slice(&odd);
    assert!(read(&t, 0, want.len()) == want, "{level:?}");
    t.flush().unwrap();
    t.commit().unwrap();
    drop(t);
    let t = reopen(level, &devs);
    assert!(read(&t, 0, want.len()) == want, "{level:?}: after a reopen");
}

#[test]
fn an_overwrite_of_chunks_next_to_each_other_is_one_io_per_member() {
    // Without a second copy (intents in the log), and with one (in place).
    one_io_per_member(RaidLevel::Linear, 1);
    one_io_per_member(RaidLevel::Raid1, 2);
}

#[test]
fn pieces_on_chunks_apart_or_shared_are_each_written_where_they_belong() {
    let devs = members(1);
    let t = create(RaidLevel::Linear, &devs);
    t.create_volume(1).unwrap();
    // Chunks written last to first: the volume's chunks lie backwards.
    let mut want = Vec::new();
    for c in (0..16u64).rev() {
        let p = pattern(UNIT as usize, 10 + c);
        t.write(1, c * UNIT, &p).unwrap();
        want.push((c, p));
    }
    want.sort_by_key(|(c, _)| *c);
    let mut want: Vec<u8> = want.into_iter().flat_map(|(_, p)| p).collect();
    t.commit().unwrap();
    assert!(read(&t, 0, MIB as usize) == want);
    devs[0].take();
    let new = pattern(MIB as usize, 4);
    t.write(1, 0, &new).unwrap();
    assert_eq!(devs[0].take().1, 16, "one data write per chunk");
    assert!(read(&t, 0, MIB as usize) == new);
    want.copy_from_slice(&new);
    // A snapshot shares every chunk: the next write copies on write.
    t.commit().unwrap();
    t.share_volume(1, 2).unwrap();
    let newer = pattern(MIB as usize / 2, 5);
    t.write(1, UNIT / 2, &newer).unwrap();
    let mut snap = vec![0u8; MIB as usize];
    t.read(2, 0, &mut snap).unwrap();
    assert!(snap == want, "the snapshot keeps its bytes");
    want[UNIT as usize / 2..UNIT as usize / 2 + newer.len()].copy_from_slice(&newer);
    assert!(read(&t, 0, MIB as usize) == want);
    t.commit().unwrap();
    drop(t);
    let t = reopen(RaidLevel::Linear, &devs);
    assert!(read(&t, 0, MIB as usize) == want, "after a reopen");
}
