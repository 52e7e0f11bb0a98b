//! Members whose I/O is slow (direct I/O to disks, remote images): a
//! mirror's copies of a write, the metadata area's copies, and a raid0
//! request's pieces on different members (reads and writes) go to the
//! members at once rather than one after another (`device::write_each`,
//! `device::read_each`); a mirror member that fails such a write is
//! failed as before, with nothing lost, and a raid0 member's failure is
//! the request's error. Alone in its test binary: the I/O-time averages
//! that pick the parallel paths are process-wide.

mod common;

use common::{mem_devices, pattern, MIB};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use vpool::device::{BlockDevice, DeviceRef, MemDevice};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Pool};

/// Writes in flight across all members, and the most seen at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl InFlight {
    /// Take 1 ms, counted in flight.
    fn wait(&self) {
        let n = self.now.fetch_add(1, Ordering::AcqRel) + 1;
        self.most.fetch_max(n, Ordering::AcqRel);
        std::thread::sleep(Duration::from_millis(1));
        self.now.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A member in memory whose reads and writes take 1 ms, and whose
/// writes can be made to fail.
struct Slow {
    inner: Arc<MemDevice>,
    flight: Arc<InFlight>,
    fail: AtomicBool,
}

impl BlockDevice for Slow {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.flight.wait();
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.flight.wait();
        if self.fail.load(Ordering::Acquire) {
            return Err(io::Error::other("injected write error"));
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

/// A pool of `level` over three slow members, with an 8 MiB volume `a`.
fn slow_pool(level: RaidLevel) -> (Arc<InFlight>, Vec<Arc<Slow>>, Pool) {
    let flight = Arc::new(InFlight::default());
    let slow = slow_devices(&flight);
    let devs: Vec<DeviceRef> = slow.iter().map(|s| s.clone() as DeviceRef).collect();
    let (pool, _) = Pool::create("tank", devs, &CreateOptions::new(level)).expect("create");
    pool.create_volume("a", 8 * MIB).expect("volume");
    (flight, slow, pool)
}

fn slow_devices(flight: &Arc<InFlight>) -> Vec<Arc<Slow>> {
    mem_devices(3, 64 * MIB)
        .into_iter()
        .map(|inner| {
            Arc::new(Slow {
                inner,
                flight: flight.clone(),
                fail: AtomicBool::new(false),
            })
        })
        .collect()
}

#[test]
fn slow_mirrors_are_written_at_once_and_a_failed_one_loses_nothing() {
    let (flight, slow, pool) = slow_pool(RaidLevel::Raid1);
    let vol = pool.volume("a", None).expect("open");
    // One request at a time: whatever overlaps is one request's copies.
    flight.most.store(0, Ordering::Release);
    let data = pattern(4 * MIB as usize, 3);
    for (i, piece) in data.chunks(256 << 10).enumerate() {
        vol.write_at(piece, i as u64 * (256 << 10)).expect("write");
    }
    vol.flush().expect("flush");
    pool.commit().expect("commit");
    let most = flight.most.load(Ordering::Acquire);
    assert!(
        most >= 3,
        "a write's three copies were never in flight together (at most {most})"
    );
    // A member fails its writes: failed, and the others hold everything.
    slow[1].fail.store(true, Ordering::Release);
    let more = pattern(4 * MIB as usize, 4);
    for (i, piece) in more.chunks(256 << 10).enumerate() {
        let at = 4 * MIB + i as u64 * (256 << 10);
        vol.write_at(piece, at)
            .expect("a mirror write survives one failed copy");
    }
    vol.flush().expect("flush without the failed member");
    let info = pool.info();
    assert_eq!(info.members[1].state, "failed", "{info:?}");
    assert!(info.members[1].errors.write >= 1, "{info:?}");
    assert_eq!(info.members[0].state, "online");
    assert_eq!(info.members[2].state, "online");
    let mut got = vec![0u8; 8 * MIB as usize];
    vol.read_at(&mut got, 0).expect("read");
    assert!(got[..4 * MIB as usize] == data[..], "the first half");
    assert!(got[4 * MIB as usize..] == more[..], "the second half");
}

#[test]
fn slow_raid0_members_read_and_write_a_requests_pieces_at_once() {
    let (flight, slow, pool) = slow_pool(RaidLevel::Raid0);
    let vol = pool.volume("a", None).expect("open");
    flight.most.store(0, Ordering::Release);
    let data = pattern(4 * MIB as usize, 5);
    for (i, piece) in data.chunks(MIB as usize).enumerate() {
        vol.write_at(piece, i as u64 * MIB).expect("write");
    }
    // Taken before the flush, whose metadata copies go at once too.
    let most = flight.most.load(Ordering::Acquire);
    assert!(
        most >= 3,
        "a request's pieces on three members were never in flight together (at most {most})"
    );
    vol.flush().expect("flush");
    flight.most.store(0, Ordering::Release);
    let mut got = vec![0u8; 4 * MIB as usize];
    for (i, piece) in got.chunks_mut(MIB as usize).enumerate() {
        vol.read_at(piece, i as u64 * MIB).expect("read");
    }
    assert!(got == data, "reads back as written");
    let most = flight.most.load(Ordering::Acquire);
    assert!(
        most >= 3,
        "a read's pieces went one after another (at most {most} at once)"
    );
    // A member failing its writes fails the request (no redundancy).
    slow[2].fail.store(true, Ordering::Release);
    let err = vol.write_at(&pattern(MIB as usize, 6), 0);
    assert!(err.is_err(), "a failed piece is the request's error");
    assert!(pool.info().members[2].errors.write >= 1);
}
