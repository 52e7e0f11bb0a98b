//! A raid1 pool mixing a local member with a remote one (an RBD image)
//! reads from the local member, like md's write-mostly members, and from
//! the remote one once the local member is gone.

mod common;

use common::{mem_devices, pattern, MIB};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use vpool::device::{BlockDevice, DeviceRef, MemDevice};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Pool};

/// A member in memory that counts its reads and says whether it is remote.
struct Counted {
    inner: Arc<MemDevice>,
    remote: bool,
    reads: AtomicU64,
}

impl BlockDevice for Counted {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
    fn remote(&self) -> bool {
        self.remote
    }
}

#[test]
fn a_mirror_reads_its_local_member_first_and_the_remote_one_without_it() {
    let mem = mem_devices(2, 64 * MIB);
    let counted: Vec<Arc<Counted>> = mem
        .into_iter()
        .zip([true, false])
        .map(|(inner, remote)| {
            Arc::new(Counted {
                inner,
                remote,
                reads: AtomicU64::new(0),
            })
        })
        .collect();
    let (remote, local) = (&counted[0], &counted[1]);
    let devs: Vec<DeviceRef> = counted.iter().map(|c| c.clone() as DeviceRef).collect();
    let (pool, _) = Pool::create("tank", devs, &CreateOptions::new(RaidLevel::Raid1)).unwrap();
    pool.create_volume("a", 8 * MIB).unwrap();
    let data = pattern(8 * MIB as usize, 7);
    let vol = pool.volume("a", None).unwrap();
    vol.write_at(&data, 0).unwrap();
    vol.flush().unwrap();

    let read_all = || {
        let mut got = vec![0u8; data.len()];
        for (i, piece) in got.chunks_mut(64 << 10).enumerate() {
            vol.read_at(piece, i as u64 * (64 << 10)).unwrap();
        }
        assert!(got == data, "the volume reads back what was written");
    };
    let before = (
        remote.reads.load(Ordering::Relaxed),
        local.reads.load(Ordering::Relaxed),
    );
    read_all();
    let remote_reads = remote.reads.load(Ordering::Relaxed) - before.0;
    let local_reads = local.reads.load(Ordering::Relaxed) - before.1;
    assert_eq!(remote_reads, 0, "no read went to the remote mirror");
    assert!(
        local_reads >= 128,
        "the local mirror served every read ({local_reads})"
    );

    // Without the local member, the remote one serves everything.
    pool.fail_member(1).unwrap();
    let before = remote.reads.load(Ordering::Relaxed);
    read_all();
    assert!(remote.reads.load(Ordering::Relaxed) - before >= 128);
}
