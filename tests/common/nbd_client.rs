//! A minimal NBD client over a raw socket, for protocol tests: it can send
//! anything, including what a real client never would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;

pub struct Client {
    pub s: TcpStream,
    pub size: u64,
    pub flags: u16,
    pub structured: bool,
}

pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// Read the server greeting and send client flags (fixed newstyle, no zeroes).
pub fn greet(s: &mut TcpStream) {
    let mut hello = [0u8; 18];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello[0..8], b"NBDMAGIC");
    assert_eq!(
        u64::from_be_bytes(hello[8..16].try_into().unwrap()),
        IHAVEOPT
    );
    s.write_all(&3u32.to_be_bytes()).unwrap();
}

pub fn send_option(s: &mut TcpStream, opt: u32, data: &[u8]) {
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&opt.to_be_bytes());
    m.extend_from_slice(&(data.len() as u32).to_be_bytes());
    m.extend_from_slice(data);
    s.write_all(&m).unwrap();
}

/// (option, reply type, data)
pub fn read_option_reply(s: &mut TcpStream) -> (u32, u32, Vec<u8>) {
    let mut h = [0u8; 20];
    s.read_exact(&mut h).unwrap();
    assert_eq!(
        u64::from_be_bytes(h[0..8].try_into().unwrap()),
        0x0003_e889_0455_65a9
    );
    let opt = u32::from_be_bytes(h[8..12].try_into().unwrap());
    let kind = u32::from_be_bytes(h[12..16].try_into().unwrap());
    let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
    let mut d = vec![0u8; len as usize];
    s.read_exact(&mut d).unwrap();
    (opt, kind, d)
}

pub fn go_payload(name: &str) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&0u16.to_be_bytes());
    d
}

impl Client {
    /// Connect and GO to `export`, optionally with structured replies.
    pub fn open(port: u16, export: &str, structured: bool) -> Client {
        let mut s = connect(port);
        greet(&mut s);
        if structured {
            send_option(&mut s, 8, &[]);
            assert_eq!(read_option_reply(&mut s).1, 1);
        }
        send_option(&mut s, 7, &go_payload(export));
        let (mut size, mut flags) = (0, 0);
        loop {
            let (_, kind, d) = read_option_reply(&mut s);
            match kind {
                3 if u16::from_be_bytes([d[0], d[1]]) == 0 => {
                    size = u64::from_be_bytes(d[2..10].try_into().unwrap());
                    flags = u16::from_be_bytes([d[10], d[11]]);
                }
                3 => {}
                1 => break,
                k => panic!(
                    "GO {export} failed: reply {k:#x} {}",
                    String::from_utf8_lossy(&d)
                ),
            }
        }
        Client {
            s,
            size,
            flags,
            structured,
        }
    }

    pub fn request(
        &mut self,
        kind: u16,
        flags: u16,
        cookie: u64,
        offset: u64,
        length: u32,
        data: &[u8],
    ) {
        let mut m = REQUEST_MAGIC.to_be_bytes().to_vec();
        m.extend_from_slice(&flags.to_be_bytes());
        m.extend_from_slice(&kind.to_be_bytes());
        m.extend_from_slice(&cookie.to_be_bytes());
        m.extend_from_slice(&offset.to_be_bytes());
        m.extend_from_slice(&length.to_be_bytes());
        m.extend_from_slice(data);
        self.s.write_all(&m).unwrap();
    }

    /// A simple reply: (cookie, error). Reads `data_len` bytes of data if no error.
    pub fn simple_reply(&mut self, data_len: usize) -> (u64, u32, Vec<u8>) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u32::from_be_bytes(h[0..4].try_into().unwrap()),
            0x6744_6698,
            "simple reply magic"
        );
        let err = u32::from_be_bytes(h[4..8].try_into().unwrap());
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let mut d = vec![0u8; if err == 0 { data_len } else { 0 }];
        self.s.read_exact(&mut d).unwrap();
        (cookie, err, d)
    }

    /// A structured reply chunk: (cookie, flags, type, payload).
    pub fn chunk(&mut self) -> (u64, u16, u16, Vec<u8>) {
        let mut h = [0u8; 20];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(
            u32::from_be_bytes(h[0..4].try_into().unwrap()),
            0x668e_33ef,
            "structured reply magic"
        );
        let flags = u16::from_be_bytes([h[4], h[5]]);
        let kind = u16::from_be_bytes([h[6], h[7]]);
        let cookie = u64::from_be_bytes(h[8..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut d = vec![0u8; len as usize];
        self.s.read_exact(&mut d).unwrap();
        (cookie, flags, kind, d)
    }

    pub fn write(&mut self, offset: u64, data: &[u8]) -> u32 {
        self.request(1, 0, 1, offset, data.len() as u32, data);
        self.simple_reply(0).1
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, u32> {
        self.request(0, 0, 2, offset, len, &[]);
        if self.structured {
            let (_, _, kind, d) = self.chunk();
            if kind == 1 {
                return Ok(d[8..].to_vec());
            }
            return Err(u32::from_be_bytes(d[0..4].try_into().unwrap()));
        }
        let (_, err, d) = self.simple_reply(len as usize);
        if err == 0 {
            Ok(d)
        } else {
            Err(err)
        }
    }

    pub fn flush(&mut self) -> u32 {
        self.request(3, 0, 3, 0, 0, &[]);
        self.simple_reply(0).1
    }
}
