//! How a connection's input reaches its requests: large write payloads go
//! straight into their own buffers, not through the read buffer and a copy;
//! a write's payload brings the CRC32s of its blocks, computed as it came.

use super::conn::{Conn, Held, Work};
use super::conn_tests::connection;
use super::handshake::Negotiated;
use super::input::{Entry, Phase, MIN_BUF};
use super::proto::{Request, CMD_WRITE};
use crate::thin::known;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

const LARGE: usize = 1 << 20;

fn write_request(cookie: u64, len: usize) -> Vec<u8> {
    let req = Request {
        flags: 0,
        kind: CMD_WRITE,
        cookie,
        offset: cookie * len as u64,
        length: len as u32,
    };
    let mut out = req.encode().to_vec();
    out.extend((0..len).map(|i| (i as u64 + cookie) as u8));
    out
}

/// The reactor's entry for `conn`, reading from `ours`, at a request header.
fn entry(conn: Arc<Conn>, ours: UnixStream) -> Entry {
    Entry {
        conn,
        reader: Box::new(ours),
        buf: vec![0; MIN_BUF],
        start: 0,
        end: 0,
        phase: Phase::Header,
        last_input: Instant::now(),
        batch: Vec::new(),
        after_large: false,
    }
}

#[test]
fn large_write_payloads_skip_the_read_buffer() {
    let (_hub, conn, _client) = connection();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut entry = entry(conn, ours);
    // Three 1 MiB writes, all waiting in the socket at once (a writer
    // thread: the socket holds less than that).
    let sender = std::thread::spawn(move || {
        let mut theirs = theirs;
        for cookie in 0..3 {
            theirs.write_all(&write_request(cookie, LARGE)).unwrap();
        }
        theirs
    });
    let (mut staged, mut read) = (0usize, 0usize);
    while entry.batch.len() < 3 {
        let before = entry.end - entry.start;
        let n = entry.read_more().unwrap();
        assert!(n > 0, "the client hung up early");
        read += n;
        // Bytes that went into the read buffer (what `frame` copies on).
        staged += entry.end - entry.start - before;
        assert!(entry.frame().is_ok(), "a well-formed request was refused");
    }
    let _theirs = sender.join().unwrap();
    assert_eq!(read, 3 * (Request::SIZE + LARGE));
    for (cookie, w) in entry.batch.iter().enumerate() {
        let Work::Request(job) = w else {
            panic!("request {cookie} was not framed as a request");
        };
        assert_eq!(job.req.cookie, cookie as u64);
        assert_eq!(
            job.data,
            write_request(cookie as u64, LARGE)[Request::SIZE..]
        );
    }
    // The first header comes into the buffer with what fits of its
    // payload; after a large write, only the next header and a little.
    assert!(
        staged <= MIN_BUF + 2 * (4 << 10),
        "{staged} of {read} bytes went through the read buffer"
    );
}

/// A connection serving volume `v` of a new raid0 pool on memory
/// devices, with checksums or without, and its reactor's entry.
pub(super) fn serving(checksums: bool) -> (Entry, UnixStream, UnixStream) {
    use crate::device::{DeviceRef, MemDevice};
    use crate::pool::{CreateOptions, Pool};
    use crate::raid::RaidLevel;
    let (_hub, conn, client) = connection();
    let devs: Vec<DeviceRef> = (0..2)
        .map(|i| Arc::new(MemDevice::new(&format!("m{i}"), 64 << 20)) as DeviceRef)
        .collect();
    let mut opts = CreateOptions::new(RaidLevel::Raid0);
    opts.checksums = checksums;
    let pool = Pool::create("tank", devs, &opts).unwrap().0;
    pool.create_volume("v", 16 << 20).unwrap();
    let neg = Negotiated {
        volume: pool.volume("v", None).unwrap(),
        structured: false,
        allocation_context: false,
    };
    assert!(conn.serving.set(neg).is_ok());
    let (ours, theirs) = UnixStream::pair().unwrap();
    let entry = entry(conn, ours);
    (entry, theirs, client)
}

fn write_at(cookie: u64, offset: u64, len: usize) -> Vec<u8> {
    let req = Request {
        flags: 0,
        kind: CMD_WRITE,
        cookie,
        offset,
        length: len as u32,
    };
    let mut out = req.encode().to_vec();
    out.extend((0..len).map(|i| (i as u64 * 31 + i as u64 / 4096 + cookie) as u8));
    out
}

/// Frame `n` requests sent by a writer thread.
pub(super) fn frame_all(entry: &mut Entry, theirs: UnixStream, sent: Vec<u8>, n: usize) {
    let sender = std::thread::spawn(move || {
        let mut theirs = theirs;
        theirs.write_all(&sent).unwrap();
        theirs
    });
    while entry.batch.len() < n {
        assert!(entry.read_more().unwrap() > 0, "the client hung up early");
        assert!(entry.frame().is_ok(), "a well-formed request was refused");
    }
    let _theirs = sender.join().unwrap();
}

#[test]
fn write_payloads_come_with_their_blocks_crc32s_and_the_write_uses_them() {
    const BLK: usize = 4096;
    // (offset, length, CRC32s expected): a large payload read straight
    // into its buffer, a small one copied from the read buffer, one not at
    // a whole block, one shorter than a block.
    let writes = [
        (0u64, LARGE, true),
        (8 << 20, 2 * BLK + 100, true),
        (100, 2 * BLK, false),
        (12 << 20, 1000, false),
    ];
    let (mut entry, theirs, _client) = serving(true);
    let sent: Vec<u8> = (0..writes.len())
        .flat_map(|k| write_at(k as u64, writes[k].0, writes[k].1))
        .collect();
    frame_all(&mut entry, theirs, sent, writes.len());
    let batch = std::mem::take(&mut entry.batch);
    let mut jobs = Vec::new();
    for (k, w) in batch.into_iter().enumerate() {
        let Work::Request(job) = w else {
            panic!("request {k} was not framed as a request");
        };
        let want: Vec<u32> = match writes[k].2 {
            true => job.data.chunks_exact(BLK).map(crc32fast::hash).collect(),
            false => Vec::new(),
        };
        assert_eq!(job.crcs.crcs(), &want[..], "write {k}'s CRC32s");
        jobs.push(job);
    }
    // Run the large write here, as a worker would: its blocks' checksums
    // are taken from what the reactor computed, not computed again.
    let before = known::hits();
    let mut held = Held::default();
    super::transmission::run(&entry.conn, Work::Request(jobs.remove(0)), &mut held);
    assert!(
        known::hits() >= before + (LARGE / BLK) as u64,
        "the write computed its blocks' CRC32s again"
    );
    let neg = entry.conn.serving.get().unwrap();
    let mut back = vec![0u8; LARGE];
    neg.volume.read_at(&mut back, 0).unwrap();
    assert_eq!(back, write_at(0, 0, LARGE)[Request::SIZE..]);

    // Without checksums, nothing is computed.
    let (mut entry, theirs, _client) = serving(false);
    frame_all(&mut entry, theirs, write_at(0, 0, LARGE), 1);
    let Some(Work::Request(job)) = entry.batch.pop() else {
        panic!("not framed as a request");
    };
    assert!(job.crcs.crcs().is_empty());
}

static RAN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count(_: &Conn, w: Work, _: &mut Held) {
    if let Work::Request(_) = w {
        RAN.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A read that gets fewer bytes than it asked for found the socket
/// empty: the reactor frames what came and waits for the next edge
/// instead of calling `recv` again only to hear EAGAIN. Everything sent
/// is still framed, in as many passes as there were arrivals.
#[test]
fn a_short_read_waits_for_the_next_edge() {
    use super::conn_tests::Counted;
    use super::workers::Workers;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    let (hub, conn, _client) = connection();
    let workers = Workers::with_cores(count, 1, hub);
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let reader = Counted::new(ours, &Arc::new(AtomicUsize::new(0)));
    let eagain = reader.eagain.clone();
    let mut entry = entry(conn, UnixStream::pair().unwrap().0);
    entry.reader = Box::new(reader);
    let wait_ran = |n: usize| {
        let until = Instant::now() + Duration::from_secs(20);
        while RAN.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < until, "framed requests never ran");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    // Three small writes in one arrival, then a large one and a small one
    // (read in passes that fill what they ask for, then a short one).
    let small: Vec<u8> = (0..3).flat_map(|k| write_request(k, 512)).collect();
    theirs.write_all(&small).unwrap();
    assert!(matches!(entry.pump(&workers), Ok(true)));
    wait_ran(3);
    let _theirs = std::thread::spawn(move || {
        let sent = [write_request(3, 64 << 10), write_request(4, 512)].concat();
        theirs.write_all(&sent).unwrap();
        theirs
    })
    .join()
    .unwrap();
    assert!(matches!(entry.pump(&workers), Ok(true)));
    wait_ran(5);
    assert_eq!(eagain.load(Ordering::SeqCst), 0, "a recv heard EAGAIN");
    workers.stop();
}
