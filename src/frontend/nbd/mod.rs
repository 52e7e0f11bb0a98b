//! NBD server (fixed newstyle, per the NBD project's doc/proto.md): exports
//! every volume as `pool/volume` and every snapshot read-only as
//! `pool/volume@snapshot`, over TCP and a unix socket.

mod handshake;
pub mod proto;
mod stream;
mod transmission;

pub use handshake::transmission_flags;
pub use stream::Stream;

use crate::Volume;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, TcpListener};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What the server can export. The daemon implements it over its pools.
pub trait Exports: Send + Sync + 'static {
    /// Every export name.
    fn list(&self) -> Vec<String>;
    /// Open an export by name.
    fn open(&self, name: &str) -> Option<Volume>;
    /// Pool names (for the FUSE directory level).
    fn pools(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .list()
            .iter()
            .filter_map(|n| n.split('/').next().map(String::from))
            .collect();
        p.dedup();
        p
    }
}

/// A socket that NBD clients connect to.
pub trait Listener: Send + 'static {
    fn nonblocking(&self) -> io::Result<()>;
    /// Accept one client, as a blocking stream.
    fn accept_stream(&self) -> io::Result<Box<dyn Stream>>;
}

impl Listener for TcpListener {
    fn nonblocking(&self) -> io::Result<()> {
        self.set_nonblocking(true)
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
    fn accept_stream(&self) -> io::Result<Box<dyn Stream>> {
        let (s, _) = self.accept()?;
        s.set_nonblocking(false)?;
        Ok(Box::new(s))
    }
}

/// How long a client may take over the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

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

    /// Accept clients on `listener` (TCP or unix) until `stop`.
    pub fn listen<L: Listener>(self: &Arc<Self>, listener: L) -> io::Result<()> {
        listener.nonblocking()?;
        let me = self.clone();
        let t = std::thread::Builder::new()
            .name("nbd-accept".into())
            .spawn(move || {
                me.accept_loop(|| match listener.accept_stream() {
                    Ok(s) => Ok(Some(s)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                    Err(e) => Err(e),
                })
            })?;
        self.threads.lock().push(t);
        Ok(())
    }

    fn accept_loop(
        self: &Arc<Self>,
        mut accept: impl FnMut() -> io::Result<Option<Box<dyn Stream>>>,
    ) {
        while !self.stopping.load(Ordering::Relaxed) {
            match accept() {
                Ok(Some(stream)) => self.spawn_connection(stream),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => {
                    tracing::warn!("nbd: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn spawn_connection(self: &Arc<Self>, stream: Box<dyn Stream>) {
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
                if let Err(e) = me.connection(stream) {
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

    fn connection(&self, mut stream: Box<dyn Stream>) -> io::Result<()> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
        let Some(neg) = handshake::negotiate(&mut *stream, &*self.exports)? else {
            return Ok(());
        };
        tracing::debug!("nbd: serving {}", neg.volume.name());
        transmission::serve(stream, neg, &self.stopping)
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
