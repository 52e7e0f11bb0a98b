//! NBD server (fixed newstyle, per the NBD project's doc/proto.md): exports
//! every volume as `pool/volume` and every snapshot read-only as
//! `pool/volume@snapshot`, over TCP and a unix socket.

mod conn;
#[cfg(test)]
mod conn_tests;
mod handshake;
#[cfg(test)]
mod held_tests;
mod input;
#[cfg(test)]
mod input_tests;
mod limit;
pub mod proto;
mod reactor;
mod stream;
mod tls;
mod transmission;
mod workers;
#[cfg(test)]
mod workers_tests;

pub use super::exports::Exports;
pub use handshake::transmission_flags;
pub use limit::{matches as export_matches, valid_pattern as valid_export_pattern, Limited};
pub use stream::Stream;
pub use tls::{read_psk_file, Tls, TlsOptions};

use parking_lot::Mutex;
use std::io;
use std::net::TcpListener;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

/// A socket that NBD clients connect to.
pub trait Listener: Send + 'static {
    fn nonblocking(&self) -> io::Result<()>;
    /// The descriptor to wait on for the next client.
    fn fd(&self) -> i32;
    /// Accept one client, as a blocking stream.
    fn accept_stream(&self) -> io::Result<Box<dyn Stream>>;
}

impl Listener for TcpListener {
    fn nonblocking(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
    fn accept_stream(&self) -> io::Result<Box<dyn Stream>> {
        let (s, _) = self.accept()?;
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        Ok(Box::new(s))
    }
}

impl Listener for UnixListener {
    fn nonblocking(&self) -> io::Result<()> {
        self.set_nonblocking(true)
    }
    fn fd(&self) -> i32 {
        self.as_raw_fd()
    }
    fn accept_stream(&self) -> io::Result<Box<dyn Stream>> {
        let (s, _) = self.accept()?;
        s.set_nonblocking(false)?;
        Ok(Box::new(s))
    }
}

/// What one listener offers: its exports (all, or a `Limited` view) and
/// whether it requires TLS.
#[derive(Clone)]
pub struct Policy {
    pub exports: Arc<dyn Exports>,
    pub tls: Option<Arc<Tls>>,
}

/// A server: one reactor thread (accepting, reading and framing for every
/// connection) and a bounded pool of workers that run requests, both
/// started with the first listener.
pub struct NbdServer {
    exports: Arc<dyn Exports>,
    running: Mutex<Option<Running>>,
}

struct Running {
    shared: Arc<reactor::Shared>,
    thread: JoinHandle<()>,
}

impl NbdServer {
    pub fn new(exports: Arc<dyn Exports>) -> Arc<NbdServer> {
        Arc::new(NbdServer {
            exports,
            running: Mutex::new(None),
        })
    }

    /// Accept clients on `listener` (TCP or unix) until `stop`, serving
    /// every export without TLS.
    pub fn listen<L: Listener>(self: &Arc<Self>, listener: L) -> io::Result<()> {
        let policy = Policy {
            exports: self.exports.clone(),
            tls: None,
        };
        self.listen_with(listener, policy)
    }

    /// Accept clients on `listener` under `policy`.
    pub fn listen_with<L: Listener>(
        self: &Arc<Self>,
        listener: L,
        policy: Policy,
    ) -> io::Result<()> {
        listener.nonblocking()?;
        let mut running = self.running.lock();
        if running.is_none() {
            let shared = reactor::Shared::new()?;
            let r = reactor::Reactor::new(shared.clone())?;
            let thread = std::thread::Builder::new()
                .name("nbd-reactor".into())
                .spawn(move || r.run())?;
            *running = Some(Running { shared, thread });
        }
        if let Some(r) = running.as_ref() {
            r.shared.listeners.lock().push((Box::new(listener), policy));
            r.shared.wake();
        }
        Ok(())
    }

    /// Number of open client connections.
    pub fn connections(&self) -> usize {
        self.running
            .lock()
            .as_ref()
            .map_or(0, |r| r.shared.connections.load(Ordering::Relaxed))
    }

    /// Stop accepting, stop reading new requests, let in-flight requests
    /// finish and be answered, then close every connection.
    pub fn stop(&self) {
        let Some(r) = self.running.lock().take() else {
            return;
        };
        r.shared.hub.stopping.store(true, Ordering::SeqCst);
        r.shared.wake();
        let _ = r.thread.join();
    }
}

/// For fuzzing and robustness tests: arbitrary bytes as a request header
/// and as the option payloads a client controls. Must never panic; a
/// header that decodes encodes back to itself.
pub fn fuzz_request(data: &[u8]) {
    use proto::{parse_info_request, parse_meta_request, Request};
    if data.len() >= Request::SIZE {
        let mut h = [0u8; Request::SIZE];
        h.copy_from_slice(&data[..Request::SIZE]);
        if let Ok(r) = Request::decode(&h) {
            assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
    }
    let _ = parse_info_request(data);
    let _ = parse_meta_request(data);
}
