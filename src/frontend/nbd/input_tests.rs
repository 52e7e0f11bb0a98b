//! How a connection's input reaches its requests: large write payloads go
//! straight into their own buffers, not through the read buffer and a copy.

use super::conn::Work;
use super::conn_tests::connection;
use super::input::{Entry, Phase, MIN_BUF};
use super::proto::{Request, CMD_WRITE};
use std::io::Write;
use std::os::unix::net::UnixStream;
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

#[test]
fn large_write_payloads_skip_the_read_buffer() {
    let (_hub, conn, _client) = connection();
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut entry = Entry {
        conn,
        reader: Box::new(ours),
        buf: vec![0; MIN_BUF],
        start: 0,
        end: 0,
        phase: Phase::Header,
        last_input: Instant::now(),
        batch: Vec::new(),
        after_large: false,
    };
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
