//! The NBD server against a raw-socket client that sends what real clients
//! never do. After every abuse the daemon must still serve everyone else.

mod common;
use common::daemon::*;
use common::nbd_client::*;
use std::io::{Read, Write};

fn setup() -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 256 << 20, &[]);
    let d = Daemon::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "16M"]);
    d.vpool_ok(&["snap", "create", "tank/db@s"]);
    (dir, d)
}

/// A well-behaved client still gets served.
fn still_serving(d: &Daemon) {
    let mut c = Client::open(d.port, "tank/db", false);
    assert_eq!(c.write(4096, &[7u8; 4096]), 0);
    assert_eq!(c.read(4096, 4096).unwrap(), vec![7u8; 4096]);
}

fn closed(s: &mut std::net::TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(0) | Err(_))
}

#[test]
fn handshake_abuse() {
    let (_dir, d) = setup();
    // Unknown client flags: disconnected.
    let mut s = connect(d.port);
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    s.write_all(&0xffff_ffffu32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));
    // Bad option magic: disconnected.
    let mut s = connect(d.port);
    greet(&mut s);
    s.write_all(&[0u8; 16]).unwrap();
    assert!(closed(&mut s));
    // Unknown option: UNSUP, and the session goes on.
    let mut s = connect(d.port);
    greet(&mut s);
    send_option(&mut s, 0x7777, b"xyz");
    assert_eq!(read_option_reply(&mut s).1, (1 << 31) + 1);
    // LIST with data: INVALID; LIST: every export.
    send_option(&mut s, 3, b"junk");
    assert_eq!(read_option_reply(&mut s).1, (1 << 31) + 3);
    send_option(&mut s, 3, &[]);
    let mut names = Vec::new();
    loop {
        let (_, kind, data) = read_option_reply(&mut s);
        if kind == 1 {
            break;
        }
        names.push(String::from_utf8(data[4..].to_vec()).unwrap());
    }
    assert_eq!(names, vec!["tank/db", "tank/db@s"]);
    // Oversized option payload: TOO_BIG after the server skips it.
    send_option(&mut s, 6, &vec![0u8; 1 << 20]);
    assert_eq!(read_option_reply(&mut s).1, (1 << 31) + 9);
    // Truncated INFO payload and unknown export: INVALID / UNKNOWN.
    send_option(&mut s, 6, &[0, 0, 0, 9, b'x']);
    assert_eq!(read_option_reply(&mut s).1, (1 << 31) + 3);
    send_option(&mut s, 7, &go_payload("tank/nope"));
    let (_, kind, msg) = read_option_reply(&mut s);
    assert_eq!(kind, (1 << 31) + 6);
    assert!(String::from_utf8_lossy(&msg).contains("tank/nope"));
    // Meta context before structured replies: INVALID.
    send_option(&mut s, 10, &go_payload("tank/db"));
    assert_eq!(read_option_reply(&mut s).1, (1 << 31) + 3);
    // A 4 GiB option: disconnected without reading it.
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&6u32.to_be_bytes());
    m.extend_from_slice(&u32::MAX.to_be_bytes());
    s.write_all(&m).unwrap();
    assert!(closed(&mut s));
    // EXPORT_NAME of an unknown export: the protocol's answer is a hang-up.
    let mut s = connect(d.port);
    greet(&mut s);
    send_option(&mut s, 1, b"tank/nope");
    assert!(closed(&mut s));
    // Silence during the handshake: the client may disconnect mid-greeting.
    let s = connect(d.port);
    drop(s);
    still_serving(&d);
}

#[test]
fn transmission_abuse() {
    let (_dir, d) = setup();
    let mut c = Client::open(d.port, "tank/db", false);
    assert_eq!(c.size, 16 << 20);
    let ask = |c: &mut Client, kind: u16, flags: u16, off: u64, len: u32| {
        c.request(kind, flags, 42, off, len, &[]);
        let (cookie, err, _) = c.simple_reply(0);
        assert_eq!(cookie, 42);
        err
    };
    assert_eq!(ask(&mut c, 99, 0, 0, 0), 22, "unknown command");
    assert_eq!(ask(&mut c, 0, 1 << 9, 0, 512), 22, "unknown flag");
    assert_eq!(ask(&mut c, 0, 1 << 3, 0, 512), 22, "flag not for READ");
    assert_eq!(ask(&mut c, 0, 0, u64::MAX - 10, 100), 22, "offset overflow");
    assert_eq!(ask(&mut c, 0, 0, 16 << 20, 512), 22, "read past the end");
    assert_eq!(ask(&mut c, 0, 0, 0, 64 << 20), 75, "read over the maximum");
    assert_eq!(
        ask(&mut c, 4, 0, (16 << 20) - 512, 4096),
        22,
        "trim past the end"
    );
    assert_eq!(
        ask(&mut c, 7, 0, 0, 4096),
        22,
        "block status without a context"
    );
    // Writes past the end: ENOSPC, payload consumed.
    c.request(1, 0, 43, (16 << 20) - 512, 1024, &[1u8; 1024]);
    assert_eq!(c.simple_reply(0).1, 28);
    // A write over the maximum: refused, payload skipped, connection usable.
    let big = vec![5u8; (32 << 20) + 4096];
    c.request(1, 0, 44, 0, big.len() as u32, &big);
    assert_eq!(c.simple_reply(0).1, 22);
    assert_eq!(c.write(0, &[9u8; 512]), 0);
    assert_eq!(c.read(0, 512).unwrap(), vec![9u8; 512]);
    // Snapshots are read-only: EPERM.
    let mut s = Client::open(d.port, "tank/db@s", false);
    assert_ne!(s.flags & (1 << 1), 0, "read-only flag");
    assert_eq!(s.write(0, &[1u8; 512]), 1);
    s.request(4, 0, 5, 0, 4096, &[]);
    assert_eq!(s.simple_reply(0).1, 1);
    // Bad request magic: disconnected.
    c.s.write_all(&[0u8; 28]).unwrap();
    assert!(closed(&mut c.s));
    // Disconnect in the middle of a write payload.
    let mut c = Client::open(d.port, "tank/db", false);
    let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes());
    m.extend_from_slice(&1u64.to_be_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&(1u32 << 20).to_be_bytes());
    m.extend_from_slice(&[3u8; 1000]);
    c.s.write_all(&m).unwrap();
    drop(c);
    still_serving(&d);
}

#[test]
fn pipelined_structured_and_block_status() {
    let (_dir, d) = setup();
    let mut c = Client::open(d.port, "tank/db", false);
    // 64 writes in flight, then 64 reads; replies in any order.
    for i in 0..64u64 {
        c.request(1, 0, 1000 + i, i * 65536, 4096, &vec![i as u8; 4096]);
    }
    let mut seen: Vec<u64> = (0..64).map(|_| c.simple_reply(0).0).collect();
    seen.sort();
    assert_eq!(seen, (1000..1064).collect::<Vec<_>>());
    for i in 0..64u64 {
        c.request(0, 0, 2000 + i, i * 65536, 4096, &[]);
    }
    for _ in 0..64 {
        let (cookie, err, data) = c.simple_reply(4096);
        assert_eq!(err, 0);
        assert_eq!(data, vec![(cookie - 2000) as u8; 4096]);
    }
    assert_eq!(c.flush(), 0);

    // Structured replies and base:allocation.
    let mut s = connect(d.port);
    greet(&mut s);
    send_option(&mut s, 8, &[]);
    assert_eq!(read_option_reply(&mut s).1, 1);
    let mut q = go_payload("tank/db");
    q.truncate(q.len() - 2);
    q.extend_from_slice(&1u32.to_be_bytes());
    q.extend_from_slice(&15u32.to_be_bytes());
    q.extend_from_slice(b"base:allocation");
    send_option(&mut s, 10, &q);
    let (_, kind, data) = read_option_reply(&mut s);
    assert_eq!(kind, 4);
    assert_eq!(&data[4..], b"base:allocation");
    assert_eq!(read_option_reply(&mut s).1, 1);
    send_option(&mut s, 7, &go_payload("tank/db"));
    while read_option_reply(&mut s).1 != 1 {}
    let mut c = Client {
        s,
        size: 16 << 20,
        flags: 0,
        structured: true,
    };
    assert_eq!(c.read(65536, 4096).unwrap(), vec![1u8; 4096]);
    assert_eq!(c.read(u64::MAX - 1, 10), Err(22), "structured error reply");
    c.request(7, 0, 9, 0, 16 << 20, &[]);
    let (cookie, flags, kind, payload) = c.chunk();
    assert_eq!((cookie, flags & 1, kind), (9, 1, 5));
    let mut pos = 4;
    let mut extents = Vec::new();
    while pos < payload.len() {
        let len = u32::from_be_bytes(payload[pos..pos + 4].try_into().unwrap());
        let st = u32::from_be_bytes(payload[pos + 4..pos + 8].try_into().unwrap());
        extents.push((len, st));
        pos += 8;
    }
    // 64 chunks of 64K were written at stride 64K: the first 4 MiB are data.
    assert_eq!(extents[0], (4 << 20, 0), "{extents:?}");
    assert_eq!(extents[1].1, 3, "{extents:?}");
    // REQ_ONE: a single descriptor.
    c.request(7, 1 << 3, 10, 0, 16 << 20, &[]);
    let (_, _, _, payload) = c.chunk();
    assert_eq!(payload.len(), 12);
    // A zero length: an error chunk (EINVAL), not an empty status, and
    // the connection goes on.
    c.request(7, 0, 11, 0, 0, &[]);
    let (cookie, flags, kind, payload) = c.chunk();
    assert_eq!(
        (cookie, flags & 1, kind),
        (11, 1, 0x8001),
        "NBD_REPLY_TYPE_ERROR, done"
    );
    assert_eq!(u32::from_be_bytes(payload[0..4].try_into().unwrap()), 22);
    assert_eq!(c.read(65536, 4096).unwrap(), vec![1u8; 4096]);
}

#[test]
fn client_that_never_reads_replies_is_bounded() {
    let (_dir, d) = setup();
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    let mut c = Client::open(d.port, "tank/db", false);
    c.s.set_write_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    // Ask for 4 GiB of reads and never read the answers.
    let mut sent = 0;
    for i in 0..4096u64 {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&0u16.to_be_bytes());
        m.extend_from_slice(&i.to_be_bytes());
        m.extend_from_slice(&0u64.to_be_bytes());
        m.extend_from_slice(&(1u32 << 20).to_be_bytes());
        if c.s.write_all(&m).is_err() {
            break;
        }
        sent += 1;
    }
    std::thread::sleep(std::time::Duration::from_secs(1));
    let grown = rss().saturating_sub(before);
    assert!(
        grown < 400 << 10,
        "daemon grew by {grown} KiB with {sent} unread 1 MiB replies"
    );
    // Others are served meanwhile.
    still_serving(&d);
    drop(c);
    still_serving(&d);
}

#[test]
fn removed_or_resized_volume_while_connected() {
    let (_dir, d) = setup();
    d.vpool_ok(&["vol", "create", "tank/tmp", "--size", "8M"]);
    let mut c = Client::open(d.port, "tank/tmp", false);
    assert_eq!(c.write(0, &[1u8; 4096]), 0);
    // Grown: this connection keeps the size it negotiated; I/O beyond it is
    // refused until the client reconnects and sees the new size.
    d.vpool_ok(&["vol", "resize", "tank/tmp", "--size", "16M"]);
    let again = Client::open(d.port, "tank/tmp", false);
    assert_eq!(again.size, 16 << 20);
    assert_eq!(c.read(0, 4096).unwrap(), vec![1u8; 4096]);
    // Shrunk below an old offset: that I/O now fails with EINVAL.
    d.vpool_ok(&["vol", "resize", "tank/tmp", "--size", "4M", "--force"]);
    assert_eq!(c.read(6 << 20, 4096), Err(22));
    // Removed: every request gets EIO; the connection stays up until the client leaves.
    d.vpool_ok(&["vol", "remove", "tank/tmp"]);
    assert_eq!(c.read(0, 4096), Err(5));
    assert_eq!(c.write(0, &[2u8; 4096]), 5);
    drop(c);
    still_serving(&d);
}

fn daemon_threads(d: &Daemon) -> usize {
    let s = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Threads are bounded by the server's worker pool (64) and its reactor,
/// not by the number of clients: a thousand clients that each negotiated
/// an export and have a request in flight at the same time are all
/// answered, with the right data, by a daemon whose thread count grew by
/// at most the pool. (Before the reactor, each connection had its own
/// reader thread and at least one worker: 2,000 threads here.)
#[test]
fn a_thousand_served_connections_share_a_bounded_pool_of_threads() {
    const CLIENTS: usize = 1000;
    const POOL: usize = 64;
    let (_dir, d) = setup();
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = Client::open(d.port, "tank/db", false);
    assert_eq!(w.write(8192, &pattern), 0);
    let before = daemon_threads(&d);
    let mut clients: Vec<Client> = (0..CLIENTS)
        .map(|i| Client::open(d.port, "tank/db", i % 2 == 0))
        .collect();
    // Every client asks at once; then every answer is read.
    for (i, c) in clients.iter_mut().enumerate() {
        c.request(0, 0, i as u64, 8192, 4096, &[]);
    }
    let during = daemon_threads(&d);
    for (i, c) in clients.iter_mut().enumerate() {
        let data = if c.structured {
            let (cookie, _, kind, d) = c.chunk();
            assert_eq!(
                (cookie, kind),
                (i as u64, 1),
                "client {i}: an OFFSET_DATA chunk"
            );
            d[8..].to_vec()
        } else {
            let (cookie, err, d) = c.simple_reply(4096);
            assert_eq!((cookie, err), (i as u64, 0), "client {i}");
            d
        };
        assert!(data == pattern, "client {i} read other bytes");
    }
    let after = daemon_threads(&d);
    eprintln!("daemon threads: {before} before, {during} with {CLIENTS} requests sent, {after} after they were answered");
    assert!(
        during.max(after) <= before + POOL,
        "threads grew from {before} to {during}/{after} with {CLIENTS} connections: \
         they must be bounded by the worker pool ({POOL})"
    );
    // Someone new is served at once, with the thousand still connected.
    still_serving(&d);
    drop(clients);
    still_serving(&d);
}

/// A client that reads its replies late: they wait in the server's queue
/// (the socket takes only part) and the reactor sends them when the client
/// reads. Every reply must arrive whole, once, with its bytes, whether
/// simple or structured; and with more asked than the connection's budget
/// (96 MiB) holds, the rest is read only as replies free it.
#[test]
fn replies_queued_for_a_late_reader_all_arrive_intact() {
    let (_dir, d) = setup();
    let mut w = Client::open(d.port, "tank/db", false);
    let mib: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
    for m in 0..8u64 {
        assert_eq!(w.write(m << 20, &mib), 0);
    }
    for structured in [false, true] {
        let mut c = Client::open(d.port, "tank/db", structured);
        const N: u64 = 160; // 160 MiB of reads: more than the budget
        let sender = {
            let mut s = c.s.try_clone().unwrap();
            std::thread::spawn(move || {
                for i in 0..N {
                    let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
                    m.extend_from_slice(&0u16.to_be_bytes());
                    m.extend_from_slice(&0u16.to_be_bytes());
                    m.extend_from_slice(&i.to_be_bytes());
                    m.extend_from_slice(&((i % 8) << 20).to_be_bytes());
                    m.extend_from_slice(&(1u32 << 20).to_be_bytes());
                    s.write_all(&m).unwrap();
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_secs(1));
        let mut seen = vec![false; N as usize];
        for _ in 0..N {
            let (cookie, data) = if structured {
                let (cookie, flags, kind, d) = c.chunk();
                assert_eq!((flags & 1, kind), (1, 1), "one OFFSET_DATA chunk, done");
                (cookie, d[8..].to_vec())
            } else {
                let (cookie, err, d) = c.simple_reply(1 << 20);
                assert_eq!(err, 0);
                (cookie, d)
            };
            assert!(!seen[cookie as usize], "reply {cookie} came twice");
            seen[cookie as usize] = true;
            assert!(data == mib, "reply {cookie} has other bytes");
        }
        sender.join().unwrap();
        assert_eq!(c.write(0, &mib[..4096]), 0, "the connection goes on");
    }
    still_serving(&d);
}

/// Option replies are charged to no budget: a client that sends options
/// without end and reads none of the answers must be left unread, not
/// have its answers pile up in the daemon. A million LIST options (16 MiB
/// sent, about 90 MiB of answers) grow the daemon by little, and everyone
/// else is served meanwhile.
#[test]
fn options_flooded_without_reading_the_answers_are_bounded() {
    let (_dir, d) = setup();
    let rss = || {
        let s = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap()
    };
    let before = rss();
    let mut s = connect(d.port);
    greet(&mut s);
    s.set_write_timeout(Some(std::time::Duration::from_secs(3)))
        .unwrap();
    let mut list = IHAVEOPT.to_be_bytes().to_vec();
    list.extend_from_slice(&3u32.to_be_bytes()); // NBD_OPT_LIST
    list.extend_from_slice(&0u32.to_be_bytes());
    let batch: Vec<u8> = list
        .iter()
        .copied()
        .cycle()
        .take(list.len() * 4096)
        .collect();
    let mut sent = 0u64;
    for _ in 0..256 {
        if s.write_all(&batch).is_err() {
            break; // the daemon stopped reading: as it should
        }
        sent += 4096;
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let grown = rss().saturating_sub(before);
    eprintln!("{sent} LIST options sent; the daemon grew by {grown} KiB");
    assert!(
        sent < 1 << 20,
        "the daemon read all {sent} options while their answers were not read"
    );
    assert!(grown < 64 << 10, "the daemon grew by {grown} KiB");
    still_serving(&d);
    drop(s);
    still_serving(&d);
}

/// A client that announces a 32 MiB write and then goes silent holds 32
/// MiB of the server's 1 GiB budget while it is connected (about 32 such
/// clients would stall everyone): it is cut off after 30 s of silence, as
/// a silent handshake is, and others are served meanwhile.
#[test]
fn a_client_silent_mid_payload_is_cut_off() {
    let (_dir, d) = setup();
    let mut c = Client::open(d.port, "tank/db", false);
    c.s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&1u16.to_be_bytes()); // WRITE
    m.extend_from_slice(&9u64.to_be_bytes());
    m.extend_from_slice(&0u64.to_be_bytes());
    m.extend_from_slice(&(32u32 << 20).to_be_bytes());
    m.extend_from_slice(&[1u8; 4096]); // a little of the payload, then nothing
    c.s.write_all(&m).unwrap();
    let start = std::time::Instant::now();
    still_serving(&d);
    let mut b = [0u8; 1];
    let r = c.s.read(&mut b);
    let waited = start.elapsed();
    eprintln!("read after {waited:?}: {r:?}");
    let timed_out = matches!(&r, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(
        !timed_out && matches!(r, Ok(0) | Err(_)),
        "the silent client must be disconnected by the daemon: {r:?} after {waited:?}"
    );
    assert!(
        waited >= std::time::Duration::from_secs(25),
        "cut off too soon: {waited:?}"
    );
    still_serving(&d);
}
