//! Replies held back by a worker (`Held`): while items are quick, a
//! worker that goes on with a connection's next requests sends their
//! replies several to a `writev`; none is left behind, none waits on a
//! flush or a FUA write, and while items wait on devices none is held.

use super::conn::{Body, Conn, Held, Work};
use super::conn_tests::{connection_on, Counted};
use super::input_tests::{frame_all, serving};
use super::proto::{Request, CMD_FLAG_FUA, CMD_FLUSH, CMD_WRITE};
use super::workers_tests::{spin, Ticker};
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the items of a test saw: how many ran with replies held back.
static HELD_ON: AtomicUsize = AtomicUsize::new(0);
static HELD_OFF: AtomicUsize = AtomicUsize::new(0);

/// An item numbered `option`: 20 us of CPU (a 4 KiB write to tmpfs) or,
/// from `SLOW` on, 3 ms asleep (a disk), then its reply, its number. One
/// in 7 first sends what is held, as a flush does.
fn replying(conn: &Conn, w: Work, held: &mut Held) {
    const SLOW: u32 = 1 << 20;
    if let Work::Option { option, .. } = w {
        if option % 7 == 0 {
            conn.send_held(held);
        }
        match option >= SLOW {
            true => std::thread::sleep(Duration::from_millis(3)),
            false => spin(Duration::from_micros(20)),
        }
        let seen = if held.on { &HELD_ON } else { &HELD_OFF };
        seen.fetch_add(1, Ordering::SeqCst);
        conn.reply(
            held,
            &u64::from(option).to_be_bytes(),
            Body::Borrowed(&[]),
            0,
        );
    }
}

fn numbered(from: u32, n: u32) -> Vec<Work> {
    (from..from + n)
        .map(|option| Work::Option {
            option,
            data: Vec::new(),
        })
        .collect()
}

/// Read `n` replies (8-byte numbers) and check each of `from..from + n`
/// came once.
fn read_replies(theirs: &mut UnixStream, from: u32, n: u32) {
    let mut seen = vec![false; n as usize];
    for k in 0..n {
        let mut r = [0u8; 8];
        theirs
            .read_exact(&mut r)
            .unwrap_or_else(|e| panic!("{k} of {n} replies came, then none ({e})"));
        let i = u64::from_be_bytes(r)
            .checked_sub(u64::from(from))
            .filter(|i| *i < u64::from(n))
            .unwrap_or_else(|| panic!("a reply nobody asked for: {r:?}"));
        assert!(!seen[i as usize], "reply {} twice", i + u64::from(from));
        seen[i as usize] = true;
    }
}

#[test]
fn quick_replies_go_out_several_to_a_writev_and_slow_ones_at_once() {
    const N: u32 = 256;
    let (ours, mut theirs) = UnixStream::pair().unwrap();
    theirs
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let writes = Arc::new(AtomicUsize::new(0));
    let (_hub, conn) = connection_on(Box::new(Counted::new(ours, &writes)));
    // Replies that race are not held up to meet: writes count as in use.
    conn.widen.store(false, Ordering::SeqCst);
    let (w, _tick) = Ticker::start(replying, 1);
    // A client with its queue deep: every reply comes, once, and several
    // share a `writev` (one each: 256). The queue's count of held replies
    // stays true when a flush sends them (`send_held` checks it).
    w.submit(&conn, &mut numbered(0, N));
    read_replies(&mut theirs, 0, N);
    let n = writes.load(Ordering::SeqCst);
    assert!(n <= N as usize / 3, "{N} quick replies took {n} writes");
    assert!(HELD_ON.load(Ordering::SeqCst) >= N as usize / 2);
    // The count of held replies comes down just after they are sent.
    let until = Instant::now() + Duration::from_secs(5);
    while !conn.queue.lock().idle() {
        assert!(Instant::now() < until, "replies still counted as held");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(conn.queue.lock().held, 0);
    // Items that wait on a device: once the pool has seen them wait, each
    // reply goes out as its item ends, not after the next one.
    let slow = 1 << 20;
    for round in 0..4 {
        w.submit(&conn, &mut numbered(slow + round * 16, 16));
        read_replies(&mut theirs, slow + round * 16, 16);
    }
    HELD_ON.store(0, Ordering::SeqCst);
    w.submit(&conn, &mut numbered(slow + 64, 16));
    read_replies(&mut theirs, slow + 64, 16);
    assert_eq!(HELD_ON.load(Ordering::SeqCst), 0, "slow replies were held");
    assert!(HELD_OFF.load(Ordering::SeqCst) >= 16);
}

fn request(cookie: u64, kind: u16, flags: u16, offset: u64, len: usize) -> Vec<u8> {
    let req = Request {
        flags,
        kind,
        cookie,
        offset,
        length: len as u32,
    };
    let mut out = req.encode().to_vec();
    if kind == CMD_WRITE {
        out.extend((0..len).map(|i| (i as u64 + cookie) as u8));
    }
    out
}

/// The cookie of the next reply on `client`, if one is there now.
fn reply_now(client: &mut UnixStream) -> Option<u64> {
    client.set_nonblocking(true).unwrap();
    let mut r = [0u8; 16];
    let got = client.read(&mut r);
    client.set_nonblocking(false).unwrap();
    match got {
        Ok(16) => Some(u64::from_be_bytes(r[8..16].try_into().unwrap())),
        Ok(n) => panic!("a reply of {n} bytes"),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
        Err(e) => panic!("reading a reply: {e}"),
    }
}

#[test]
fn held_replies_go_out_before_a_flush_or_a_fua_write_runs() {
    let (mut entry, theirs, mut client) = serving(true);
    let sent: Vec<u8> = [
        request(0, CMD_WRITE, 0, 0, 4096),
        request(1, CMD_FLUSH, 0, 0, 0),
        request(2, CMD_WRITE, 0, 4096, 4096),
        request(3, CMD_WRITE, CMD_FLAG_FUA, 8192, 4096),
    ]
    .concat();
    frame_all(&mut entry, theirs, sent, 4);
    let conn = entry.conn.clone();
    let mut jobs = std::mem::take(&mut entry.batch).into_iter();
    let mut held = Held::default();
    held.on = true;
    let mut run = |held: &mut Held| {
        let job = jobs.next().expect("four requests were framed");
        super::transmission::run(&conn, job, held);
    };
    // A plain write's reply is held.
    run(&mut held);
    assert_eq!((held.len(), reply_now(&mut client)), (1, None));
    // The flush sends it first (its own reply is held in turn).
    run(&mut held);
    assert_eq!(reply_now(&mut client), Some(0));
    assert_eq!((held.len(), reply_now(&mut client)), (1, None));
    // So does a FUA write, for the flush's and the plain write's.
    run(&mut held);
    assert_eq!(held.len(), 2);
    run(&mut held);
    let mut out = [reply_now(&mut client), reply_now(&mut client)];
    out.sort();
    assert_eq!(out, [Some(1), Some(2)]);
    assert_eq!(reply_now(&mut client), None);
    conn.send_held(&mut held);
    assert_eq!((held.len(), reply_now(&mut client)), (0, Some(3)));
}
