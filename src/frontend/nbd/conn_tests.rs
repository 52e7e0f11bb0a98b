//! Replies sent from many threads at once on one connection: each arrives
//! whole, none interleaved with another, none left behind, also when the
//! socket fills and the rest waits for the reactor.

use super::conn::{Body, Conn, Hub};
use super::handshake::{Handshake, TlsState};
use super::stream::Stream;
use super::Policy;
use crate::frontend::exports::Exports;
use crate::pool::Volume;
use nix::sys::epoll::{EpollEvent, EpollFlags};
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct NoExports;

impl Exports for NoExports {
    fn list(&self) -> Vec<String> {
        Vec::new()
    }
    fn open(&self, _: &str) -> Option<Volume> {
        None
    }
}

/// A connection registered with a hub of its own, and the client's end.
pub(super) fn connection() -> (Arc<Hub>, Arc<Conn>, UnixStream) {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (hub, conn) = connection_on(Box::new(ours));
    (hub, conn, theirs)
}

/// A connection on `ours`, registered with a hub of its own.
pub(super) fn connection_on(ours: Box<dyn Stream>) -> (Arc<Hub>, Arc<Conn>) {
    let hub = Arc::new(Hub::new().unwrap());
    let policy = Policy {
        exports: Arc::new(NoExports),
        tls: None,
    };
    let handshake = Handshake::new(TlsState::Off);
    let (conn, _reader) = Conn::register(&hub, 1, ours, policy, handshake).unwrap();
    (hub, conn)
}

/// A unix socket that counts the writes made on it and its clones, and
/// the reads that found nothing (EAGAIN).
pub(super) struct Counted {
    sock: UnixStream,
    writes: Arc<AtomicUsize>,
    pub eagain: Arc<AtomicUsize>,
}

impl Counted {
    pub(super) fn new(sock: UnixStream, writes: &Arc<AtomicUsize>) -> Counted {
        Counted {
            sock,
            writes: writes.clone(),
            eagain: Arc::default(),
        }
    }
}

impl Read for Counted {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let r = self.sock.read(b);
        if matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock) {
            self.eagain.fetch_add(1, Ordering::SeqCst);
        }
        r
    }
}

impl Write for Counted {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.sock.write(b)
    }
    fn write_vectored(&mut self, b: &[IoSlice<'_>]) -> io::Result<usize> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.sock.write_vectored(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.sock.flush()
    }
}

impl Stream for Counted {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(Counted {
            sock: self.sock.try_clone()?,
            writes: self.writes.clone(),
            eagain: self.eagain.clone(),
        }))
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = self.sock.shutdown(how);
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(t)
    }
    fn peer(&self) -> String {
        "counted".into()
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        self.sock.set_nonblocking(on)
    }
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

const THREADS: u32 = 8;
const EACH: u32 = 150;

/// Reply `seq` of thread `t`: a 12-byte header (thread, number, body
/// length) and a body of that many copies of one byte.
fn reply(t: u32, seq: u32) -> (Vec<u8>, Vec<u8>) {
    let len = [0u32, 7, 4096, 65536, 300 << 10][(seq % 5) as usize];
    let mut h = t.to_be_bytes().to_vec();
    h.extend_from_slice(&seq.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    (h, vec![(t * 31 + seq) as u8; len as usize])
}

#[test]
fn replies_from_many_threads_arrive_whole_and_none_is_left_behind() {
    let (hub, conn, mut theirs) = connection();
    let done = Arc::new(AtomicBool::new(false));
    // The reactor's part, as it does it: send what waits when epoll says
    // the socket has room (asked for only while replies wait in the
    // queue). A reply left in `incoming` with nobody to send it would
    // never come.
    let reactor = {
        let (conn, done, hub) = (conn.clone(), done.clone(), hub.clone());
        std::thread::spawn(move || {
            let mut events = [EpollEvent::empty(); 8];
            while !done.load(Ordering::SeqCst) {
                let n = hub.epoll.wait(&mut events, 10u8).unwrap_or(0);
                if events[..n]
                    .iter()
                    .any(|e| e.events().contains(EpollFlags::EPOLLOUT))
                {
                    conn.flush_replies();
                }
            }
        })
    };
    let senders: Vec<_> = (0..THREADS)
        .map(|t| {
            let conn = conn.clone();
            std::thread::spawn(move || {
                for seq in 0..EACH {
                    let (h, b) = reply(t, seq);
                    match seq % 2 {
                        0 => conn.send(&h, &b, 0),
                        _ => conn.send_body(&h, Body::Owned(b), 0),
                    }
                }
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let started = Instant::now();
    theirs
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    for _ in 0..THREADS * EACH {
        let mut h = [0u8; 12];
        theirs.read_exact(&mut h).expect("a reply never came");
        let word = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let (t, seq, len) = (word(0), word(4), word(8));
        assert!(t < THREADS, "a header inside another reply's bytes");
        let (_, want) = reply(t, seq);
        assert_eq!(len as usize, want.len());
        let mut body = vec![0u8; len as usize];
        theirs.read_exact(&mut body).unwrap();
        assert!(body == want, "reply {t}/{seq} interleaved with another");
        // Replies of different requests may pass each other (NBD allows it).
        assert!(seen.insert((t, seq)), "reply {t}/{seq} twice");
    }
    for s in senders {
        s.join().unwrap();
    }
    done.store(true, Ordering::SeqCst);
    reactor.join().unwrap();
    assert!(!conn.replies_waiting());
    assert!(started.elapsed() < Duration::from_secs(20));
}

/// Bursts of replies that end together, again and again: the last reply
/// of a burst that finds the sending side held has no later reply to take
/// it along, so only `let_go`'s look after letting go sends it.
#[test]
fn the_last_reply_of_a_burst_is_never_left_behind() {
    const SENDERS: usize = 4;
    const BURSTS: u32 = 3000;
    let (_hub, conn, mut theirs) = connection();
    let go = Arc::new(std::sync::Barrier::new(SENDERS + 1));
    let senders: Vec<_> = (0..SENDERS as u32)
        .map(|t| {
            let (conn, go) = (conn.clone(), go.clone());
            std::thread::spawn(move || {
                for burst in 0..BURSTS {
                    go.wait();
                    conn.send(&[t as u8; 8], &burst.to_be_bytes(), 0);
                }
            })
        })
        .collect();
    theirs
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    for burst in 0..BURSTS {
        go.wait();
        let mut got = [false; SENDERS];
        for _ in 0..SENDERS {
            let mut r = [0u8; 12];
            theirs
                .read_exact(&mut r)
                .unwrap_or_else(|e| panic!("burst {burst}: a reply was left behind ({e})"));
            assert_eq!(u32::from_be_bytes([r[8], r[9], r[10], r[11]]), burst);
            got[r[0] as usize] = true;
        }
        assert!(got.iter().all(|&g| g));
    }
    for s in senders {
        s.join().unwrap();
    }
}

/// The buffer pool keeps a reply's buffer for the next request as long as
/// the connection's budget of bytes allows, not a fixed count: 40 buffers
/// of 1 MiB (an iodepth-32 client whose replies come back late) all stay,
/// and never more than the budget does.
#[test]
fn idle_buffers_are_bounded_by_bytes_not_count() {
    let (_hub, conn, _theirs) = connection();
    let mib = 1 << 20;
    let bufs: Vec<Vec<u8>> = (0..40).map(|_| conn.take_buffer(mib)).collect();
    let ptrs: Vec<*const u8> = bufs.iter().map(|b| b.as_ptr()).collect();
    for b in bufs {
        conn.give_buffer(b);
    }
    let again: Vec<Vec<u8>> = (0..40).map(|_| conn.take_buffer(mib)).collect();
    for b in &again {
        assert!(ptrs.contains(&b.as_ptr()), "a pooled buffer was dropped");
        assert_eq!(b.len(), mib);
    }
    let budget = super::conn::BUDGET as usize;
    let many: Vec<Vec<u8>> = (0..budget / mib + 10)
        .map(|_| conn.take_buffer(mib))
        .collect();
    for b in again.into_iter().chain(many) {
        conn.give_buffer(b);
    }
    let kept = conn.buffers.lock().bytes();
    assert!(
        kept <= budget,
        "{kept} bytes idle, over the budget {budget}"
    );
    assert!(
        kept >= budget - mib,
        "{kept} bytes idle: the pool dropped buffers it had room for"
    );
}

/// A 1 MiB read reply goes into the socket whole from the thread that
/// sends it, before the client reads a byte: none of it waits for the
/// reactor, whose copy from a buffer another core filled cost twice
/// the sender's (`stream::SEND_BUFFER`). The client then gets it intact.
#[test]
fn a_large_reply_goes_into_the_socket_whole_from_its_sender() {
    let (_hub, conn, mut theirs) = connection();
    let room = super::stream::send_buffer(conn.fd());
    assert!(
        room >= 2 * super::stream::SEND_BUFFER,
        "the connection's send buffer is {room} bytes: widening it needs root \
         (SO_SNDBUFFORCE) or net.core.wmem_max of at least {} (run the tests as root)",
        super::stream::SEND_BUFFER
    );
    let body: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    conn.send(&[7u8; 16], &body, 0);
    assert!(
        !conn.replies_waiting(),
        "part of a 1 MiB reply was left for the reactor"
    );
    theirs
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut got = vec![0u8; 16 + body.len()];
    theirs.read_exact(&mut got).unwrap();
    assert_eq!(&got[..16], &[7u8; 16]);
    assert!(got[16..] == body[..], "the reply's bytes changed");
}
