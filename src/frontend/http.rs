//! The HTTP/JSON servers on unix sockets (the control API, the Docker
//! plugin), over tiny_http. tiny_http hands a request over once its head is
//! read and leaves a large body to be read from the socket by whoever
//! handles it, so a client that announces a body and sends it slowly would
//! hold a worker. Here each request's body is read by a thread of its own
//! (a slow client holds only that thread, as tiny_http already gives each
//! connection one); a few workers then handle requests whose bodies are in.

use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// A request and its body; `None` when the body was larger than allowed or
/// could not be read.
pub type Handler = dyn Fn(tiny_http::Request, Option<Vec<u8>>) + Send + Sync;

/// Requests whose bodies or answers are streams (`snap send`/`receive`):
/// each is handed over with its body unread, on a thread of its own, so
/// that it holds no worker for as long as it runs.
pub struct Streams {
    /// Does this (method, url) name a streaming call?
    pub matches: fn(&str, &str) -> bool,
    pub handler: Arc<dyn Fn(tiny_http::Request) + Send + Sync>,
    /// At most this many at once; more are answered 503.
    pub max: usize,
}

pub struct HttpServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

const POLL: Duration = Duration::from_millis(200);

impl HttpServer {
    /// Listen on the unix socket `path` (made owner-only whatever the
    /// umask) and run `handler` on `workers` threads.
    pub fn start(
        path: &Path,
        what: &'static str,
        workers: usize,
        max_body: u64,
        handler: Arc<Handler>,
    ) -> anyhow::Result<HttpServer> {
        Self::serve(
            bind_unix(path, what)?,
            what,
            workers,
            max_body,
            handler,
            None,
        )
    }

    /// As [`HttpServer::start`], with streaming calls.
    pub fn start_with_streams(
        path: &Path,
        what: &'static str,
        workers: usize,
        max_body: u64,
        handler: Arc<Handler>,
        streams: Streams,
    ) -> anyhow::Result<HttpServer> {
        let server = bind_unix(path, what)?;
        Self::serve(server, what, workers, max_body, handler, Some(streams))
    }

    /// Listen on TCP at `addr` (for read-only endpoints such as metrics:
    /// no access control here) and run `handler` on `workers` threads.
    pub fn start_tcp(
        addr: std::net::SocketAddr,
        what: &'static str,
        workers: usize,
        max_body: u64,
        handler: Arc<Handler>,
    ) -> anyhow::Result<HttpServer> {
        let server = Arc::new(
            tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("{what} on {addr}: {e}"))?,
        );
        Self::serve(server, what, workers, max_body, handler, None)
    }

    /// The address a TCP server listens on (with port 0: the one chosen).
    pub fn local_port(&self) -> Option<u16> {
        self.server.server_addr().to_ip().map(|a| a.port())
    }

    fn serve(
        server: Arc<tiny_http::Server>,
        what: &'static str,
        workers: usize,
        max_body: u64,
        handler: Arc<Handler>,
        streams: Option<Streams>,
    ) -> anyhow::Result<HttpServer> {
        let stopping = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel::<(tiny_http::Request, Option<Vec<u8>>)>();
        let rx = Arc::new(parking_lot::Mutex::new(rx));
        let mut threads = Vec::new();
        for _ in 0..workers {
            let (rx, handler, stopping) = (rx.clone(), handler.clone(), stopping.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(what.into())
                    .spawn(move || {
                        while !stopping.load(Ordering::Relaxed) {
                            let next = { rx.lock().recv_timeout(POLL) };
                            match next {
                                Ok((req, body)) => super::guarded(what, || handler(req, body)),
                                Err(mpsc::RecvTimeoutError::Timeout) => {}
                                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                            }
                        }
                    })?,
            );
        }
        let (srv, stop) = (server.clone(), stopping.clone());
        threads.push(
            std::thread::Builder::new()
                .name(what.into())
                .spawn(move || {
                    let running = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                    while !stop.load(Ordering::Relaxed) {
                        match srv.recv_timeout(POLL) {
                            Ok(Some(req))
                                if streams.as_ref().is_some_and(|s| {
                                    (s.matches)(req.method().as_str(), req.url())
                                }) =>
                            {
                                if let Some(s) = &streams {
                                    start_stream(req, s, &running);
                                }
                            }
                            Ok(Some(req)) => read_body(req, max_body, tx.clone()),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                })?,
        );
        Ok(HttpServer {
            server,
            threads,
            stopping,
        })
    }

    /// Stop taking requests; requests being handled finish first.
    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.server.unblock();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// A server on the unix socket `path`, made owner-only whatever the umask.
fn bind_unix(path: &Path, what: &str) -> anyhow::Result<Arc<tiny_http::Server>> {
    let server = crate::state::bind_private(path, |p| {
        tiny_http::Server::http_unix(p).map_err(std::io::Error::other)
    })
    .map_err(|e| anyhow::anyhow!("{what} socket {}: {e}", path.display()))?;
    Ok(Arc::new(server))
}

/// Run a streaming call on a thread of its own, if fewer than `max` run.
fn start_stream(
    req: tiny_http::Request,
    s: &Streams,
    running: &Arc<std::sync::atomic::AtomicUsize>,
) {
    if running.fetch_add(1, Ordering::SeqCst) >= s.max {
        running.fetch_sub(1, Ordering::SeqCst);
        let _ = req.respond(
            tiny_http::Response::from_string(
                r#"{"error": "too many sends and receives at once; try again when one ends", "kind": "unavailable"}"#,
            )
            .with_status_code(503),
        );
        return;
    }
    let (handler, count) = (s.handler.clone(), running.clone());
    let spawned = std::thread::Builder::new()
        .name("http-stream".into())
        .spawn(move || {
            super::guarded("stream", || handler(req));
            count.fetch_sub(1, Ordering::SeqCst);
        });
    if let Err(e) = spawned {
        running.fetch_sub(1, Ordering::SeqCst);
        tracing::warn!("cannot start a thread for a stream: {e}");
    }
}

/// Read the body on a thread of its own, then queue the request.
fn read_body(
    mut req: tiny_http::Request,
    max: u64,
    tx: mpsc::Sender<(tiny_http::Request, Option<Vec<u8>>)>,
) {
    let spawned = std::thread::Builder::new()
        .name("http-body".into())
        .spawn(move || {
            let mut body = Vec::new();
            let read = req.as_reader().take(max + 1).read_to_end(&mut body);
            let body = (read.is_ok() && body.len() as u64 <= max).then_some(body);
            let _ = tx.send((req, body));
        });
    if let Err(e) = spawned {
        // The request is dropped: tiny_http answers it with a 500.
        tracing::warn!("cannot start a thread for a request: {e}");
    }
}
