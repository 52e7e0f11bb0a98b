//! NBD server (fixed newstyle, per the NBD project's doc/proto.md): exports
//! every volume as `pool/volume` and every snapshot read-only as
//! `pool/volume@snapshot`, over TCP and a unix socket.

mod handshake;
mod limit;
pub mod proto;
mod stream;
mod tls;
mod transmission;

pub use super::exports::Exports;
pub use handshake::transmission_flags;
pub use limit::{matches as export_matches, valid_pattern as valid_export_pattern, Limited};
pub use stream::Stream;
pub use tls::{read_psk_file, Tls, TlsOptions};

use handshake::{Outcome, TlsState};

use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, TcpListener};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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

/// How long a client may take over the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the accept loop looks at `stop` while no client connects (a
/// client that connects wakes it at once).
const ACCEPT_TICK: Duration = Duration::from_millis(50);

pub struct NbdServer {
    exports: Arc<dyn Exports>,
    stopping: Arc<AtomicBool>,
    conns: Arc<Mutex<HashMap<u64, Box<dyn Stream>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    next_id: AtomicU64,
}

impl NbdServer {
    pub fn new(exports: Arc<dyn Exports>) -> Arc<NbdServer> {
        Arc::new(NbdServer {
            exports,
            stopping: Arc::new(AtomicBool::new(false)),
            conns: Arc::new(Mutex::new(HashMap::new())),
            threads: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
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
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || {
                let fd = listener.fd();
                me.accept_loop(&policy, || match listener.accept_stream() {
                    Ok(s) => Ok(Some(s)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        // Sleep until a client connects (or the tick).
                        stream::wait(&[(fd, libc::POLLIN)], ACCEPT_TICK)?;
                        Ok(None)
                    }
                    Err(e) => Err(e),
                })
            })?;
        self.threads.lock().push(t);
        Ok(())
    }

    fn accept_loop(
        self: &Arc<Self>,
        policy: &Policy,
        mut accept: impl FnMut() -> io::Result<Option<Box<dyn Stream>>>,
    ) {
        while !self.stopping.load(Ordering::Relaxed) {
            match accept() {
                Ok(Some(stream)) => self.spawn_connection(stream, policy.clone()),
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!("nbd: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn spawn_connection(self: &Arc<Self>, stream: Box<dyn Stream>, policy: Policy) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let Ok(handle) = stream.try_clone_stream() else {
            return;
        };
        self.conns.lock().insert(id, handle);
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("nbd-conn-{id}"))
            .spawn(move || {
                let peer = stream.peer();
                let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    me.connection(stream, &policy, &peer)
                }))
                .unwrap_or_else(|_| Err(io::Error::other("the connection's thread panicked")));
                if let Err(e) = served {
                    tracing::info!("nbd: connection {id} from {peer} ended: {e}");
                } else {
                    tracing::debug!("nbd: connection {id} from {peer} closed");
                }
                me.conns.lock().remove(&id);
            });
        match spawned {
            Ok(t) => {
                let mut threads = self.threads.lock();
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) => {
                tracing::warn!("nbd: cannot start a connection thread: {e}");
                self.conns.lock().remove(&id);
            }
        }
    }

    fn connection(
        &self,
        mut stream: Box<dyn Stream>,
        policy: &Policy,
        peer: &str,
    ) -> io::Result<()> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let mut state = match policy.tls {
            Some(_) => TlsState::Required,
            None => TlsState::Off,
        };
        loop {
            match handshake::negotiate(&mut *stream, &*policy.exports, state)? {
                Outcome::Closed => return Ok(()),
                Outcome::Serve(neg) => {
                    tracing::debug!("nbd: serving {} to {peer}", neg.volume.name());
                    return transmission::serve(stream, neg, &self.stopping);
                }
                Outcome::StartTls { no_zeroes } => {
                    let Some(tls) = &policy.tls else {
                        return Err(io::Error::other("STARTTLS accepted without TLS"));
                    };
                    let (plain, who) = tls.upgrade(stream)?;
                    tracing::info!("nbd: {peer}: TLS ({who})");
                    stream = plain;
                    stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
                    stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
                    state = TlsState::Active { no_zeroes };
                }
            }
        }
    }

    /// Number of open client connections.
    pub fn connections(&self) -> usize {
        self.conns.lock().len()
    }

    /// Stop accepting, stop reading new requests, let in-flight requests
    /// finish and be answered, then close every connection.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        for s in self.conns.lock().values() {
            s.shutdown(Shutdown::Read);
        }
        let threads: Vec<_> = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
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
