//! The vpool daemon (may use frontend and below): owns every pool of its state
//! directory, serves volumes over NBD (TCP and a unix socket), answers the
//! control API, commits in the background, and shuts down cleanly on
//! SIGTERM/SIGINT.

mod api;
mod engine;
mod events;
mod metrics;

pub use engine::DaemonEngine;

use crate::frontend::docker::{DriverConfig, PluginServer};
use crate::frontend::nbd::{Exports, Limited, NbdServer, Policy, Tls, TlsOptions};
use crate::frontend::snapshotter::{Config as SnapshotterConfig, Deferred, SnapshotterServer};
use anyhow::{bail, Context};
use nix::sys::signal::{SigSet, Signal};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often pools are looked at for events.
const EVENT_WATCH: Duration = Duration::from_secs(1);

pub struct DaemonConfig {
    pub state_dir: PathBuf,
    /// TCP address for NBD; `None` disables TCP.
    pub nbd_listen: Option<SocketAddr>,
    /// Unix socket for NBD; `None` disables it.
    pub nbd_socket: Option<PathBuf>,
    /// TCP address for Prometheus metrics; `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Run this shell command for every event (`--on-event`).
    pub on_event: Option<String>,
    /// Allow a non-loopback NBD address without TLS.
    pub insecure: bool,
    /// The TCP listener's exports (patterns; `None`: all).
    pub nbd_exports: Option<Vec<String>>,
    /// TLS on the TCP listener (required there when given).
    pub tls: TlsOptions,
    /// Background commit interval.
    pub commit_interval: Duration,
    /// Where to mount volumes as files (FUSE); `None`: no FUSE mount.
    pub fuse_mount: Option<PathBuf>,
    /// Bytes per second background jobs may move (0: no limit).
    pub job_rate_limit: u64,
    /// Serve Docker's volume plugin protocol; `None`: do not.
    pub docker: Option<DockerConfig>,
    /// Serve containerd's snapshot service on this socket; `None`: do not.
    pub snapshotter: Option<(PathBuf, SnapshotterConfig)>,
}

/// The Docker/Podman volume plugin's settings.
pub struct DockerConfig {
    /// `/run/docker/plugins/NAME.sock`: Docker knows the driver as NAME.
    pub socket: PathBuf,
    pub driver: DriverConfig,
}

/// Remove a socket file nobody listens on (left by a killed daemon).
fn clear_stale_socket(path: &Path) -> anyhow::Result<()> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another process", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    Ok(())
}

/// Every client connection holds descriptors: take the hard limit (as
/// systemd expects services to), not the soft 1024 a thousand clients pass.
fn raise_open_files_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit on a valid struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                tracing::warn!("could not raise the open files limit");
            }
        }
    }
}

/// Run until SIGTERM or SIGINT.
pub fn run(cfg: DaemonConfig) -> anyhow::Result<()> {
    raise_open_files_limit();
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating {}", cfg.state_dir.display()))?;
    // One daemon per state directory.
    let lock_path = cfg.state_dir.join("daemon.lock");
    let mut lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)?;
    // SAFETY: flock on an owned descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(&lock_path).unwrap_or_default();
        bail!(
            "another vpool daemon (pid {}) runs for {}",
            pid.trim(),
            cfg.state_dir.display()
        );
    }
    lock.set_len(0)?;
    writeln!(lock, "{}", std::process::id())?;

    // Signals are taken synchronously by this thread; block them everywhere first.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block().context("blocking signals")?;

    let engine = Arc::new(DaemonEngine::start(&cfg.state_dir, cfg.job_rate_limit)?);
    let nbd = NbdServer::new(engine.clone());
    if let Some(addr) = cfg.nbd_listen {
        let tls = match cfg.tls.enabled() {
            true => Some(Arc::new(Tls::new(&cfg.tls).context("setting up TLS")?)),
            false => None,
        };
        if tls.is_none() && !addr.ip().is_loopback() && !cfg.insecure {
            bail!(
                "refusing to serve NBD on {addr} without TLS: it is not a loopback address; \
                 give --tls-certificates DIR or --tls-psk FILE, or --insecure if every host \
                 that can reach it may read and write the volumes"
            );
        }
        let exports: Arc<dyn Exports> = match &cfg.nbd_exports {
            Some(p) => Arc::new(Limited::new(engine.clone(), p.clone())),
            None => engine.clone(),
        };
        let l = TcpListener::bind(addr).with_context(|| format!("binding NBD on {addr}"))?;
        let what = match (&cfg.nbd_exports, &tls) {
            (Some(p), _) => format!("exports {}", p.join(",")),
            (None, _) => "every export".to_string(),
        };
        match tls {
            Some(_) => tracing::info!(
                "NBD listening on {} (TLS required; {what})",
                l.local_addr()?
            ),
            None => tracing::warn!(
                "NBD listening on {} without TLS ({what}): anyone who can connect can read and \
                 write them; see --tls-psk and --tls-certificates",
                l.local_addr()?
            ),
        }
        nbd.listen_with(l, Policy { exports, tls })?;
    } else if cfg.tls.enabled() || cfg.nbd_exports.is_some() {
        bail!("--tls-certificates, --tls-psk and --nbd-exports apply to the TCP listener: give --nbd-listen ADDR too");
    }
    if let Some(path) = &cfg.nbd_socket {
        clear_stale_socket(path)?;
        // Root only, whatever the umask: volumes are host disks.
        let l = crate::state::bind_private(path, |p| UnixListener::bind(p))
            .with_context(|| format!("binding NBD socket {} (owner only)", path.display()))?;
        tracing::info!("NBD listening on {} (owner only)", path.display());
        nbd.listen(l)?;
    }
    engine.set_shared();
    if let Some(dir) = &cfg.fuse_mount {
        crate::control::Engine::mount_fuse(&*engine, dir)?;
    }
    let plugin = match cfg.docker {
        Some(d) => {
            clear_stale_socket(&d.socket)?;
            let driver = crate::frontend::docker::Driver::new(engine.clone(), d.driver)?;
            let server = PluginServer::start(&d.socket, driver)?;
            tracing::info!("Docker volume plugin on {}", d.socket.display());
            Some(server)
        }
        None => None,
    };
    let snapshotter = match cfg.snapshotter {
        Some((socket, c)) => {
            clear_stale_socket(&socket)?;
            // Set up now if its pool exists, else at its first call.
            let s = Deferred::new(engine.clone(), c);
            let server = SnapshotterServer::start(&socket, s)?;
            tracing::info!("containerd snapshotter on {}", socket.display());
            Some(server)
        }
        None => None,
    };
    let metrics = match cfg.metrics_listen {
        Some(addr) => {
            let m = metrics::MetricsServer::start(addr, engine.clone(), nbd.clone())?;
            let shown = SocketAddr::new(addr.ip(), m.port().unwrap_or(addr.port()));
            match addr.ip().is_loopback() {
                true => tracing::info!("metrics on http://{shown}/metrics"),
                false => tracing::warn!(
                    "metrics on http://{shown}/metrics: any host that can connect sees pool and \
                     volume names and I/O rates (never data)"
                ),
            }
            Some(m)
        }
        None => None,
    };
    let api_path = crate::control::client::socket_path(&cfg.state_dir);
    clear_stale_socket(&api_path)?;
    let api = api::ApiServer::start(&api_path, engine.clone())?;
    tracing::info!("control API on {}", api_path.display());

    if let Some(cmd) = cfg.on_event.clone() {
        engine
            .events
            .start_hook(cmd)
            .context("starting the --on-event thread")?;
    }
    // What needs attention at start (a failed member, a full pool) is the
    // first events.
    engine.events.watch(&engine.all());
    engine.resume_jobs();

    // Background commits bound how much unflushed work a crash can lose.
    let stop_commits = Arc::new(AtomicBool::new(false));
    // A flush log out of use (full, or a change it cannot describe) sends
    // flushes to commits and small overwrites on pools without redundancy
    // to fresh chunks until the next commit: commit at once (a log that
    // closes wakes this thread), and look every 5 ms anyway.
    let log_committer = {
        let engine = engine.clone();
        let stop = stop_commits.clone();
        std::thread::spawn(move || {
            crate::thin::log::wake_on_log_closed(Some(std::thread::current()));
            let mut last_error = String::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(5));
                for (name, pool) in engine.all() {
                    match pool.commit_if_log_closed() {
                        Err(e) if e.to_string() != last_error => {
                            tracing::error!(pool = %name, "commit failed: {e}");
                            last_error = e.to_string();
                        }
                        _ => {}
                    }
                }
            }
        })
    };
    let committer = {
        let engine = engine.clone();
        let stop = stop_commits.clone();
        let every = cfg.commit_interval;
        std::thread::spawn(move || {
            let mut waited = Duration::ZERO;
            let mut since_watch = Duration::ZERO;
            let mut last_error = std::collections::HashMap::new();
            let mut meta_warned: std::collections::HashMap<String, String> =
                std::collections::HashMap::new();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                waited += Duration::from_millis(100);
                since_watch += Duration::from_millis(100);
                if since_watch >= EVENT_WATCH {
                    since_watch = Duration::ZERO;
                    engine.events.watch(&engine.all());
                }
                // Member failures are recorded at once, and a hot spare
                // takes a failed member's place.
                for (name, pool) in engine.all() {
                    match pool.use_spares() {
                        Ok(Some(msg)) => {
                            tracing::warn!(pool = %name, "{msg}");
                            engine.spawn_job(&name, &pool);
                        }
                        Ok(None) => {}
                        // Said once, not every tick.
                        Err(e) if last_error.get(&name) != Some(&e.to_string()) => {
                            tracing::error!(pool = %name, "{e}");
                            last_error.insert(name.clone(), e.to_string());
                        }
                        Err(_) => {}
                    }
                }
                if waited < every {
                    continue;
                }
                waited = Duration::ZERO;
                for (name, pool) in engine.all() {
                    if let Err(e) = pool.commit_if_dirty() {
                        tracing::error!(pool = %name, "background commit failed: {e}");
                    }
                    // Metadata space: grow past the threshold, warn once
                    // per level crossed (80, 90%).
                    if let Err(e) = pool.autogrow_metadata() {
                        if last_error.get(&name) != Some(&e.to_string()) {
                            tracing::error!(pool = %name, "the metadata area cannot grow: {e}");
                            last_error.insert(name.clone(), e.to_string());
                        }
                    }
                    let warn = pool.metadata_warnings().join("; ");
                    if !warn.is_empty() && meta_warned.get(&name) != Some(&warn) {
                        tracing::warn!(pool = %name, "{warn}");
                    }
                    meta_warned.insert(name.clone(), warn);
                }
            }
        })
    };
    tracing::info!("vpool daemon ready ({} pools)", engine.all().len());

    let sig = signals.wait().context("waiting for signals")?;
    tracing::info!("{sig:?} received: shutting down");
    api.stop();
    if let Some(m) = metrics {
        m.stop();
    }
    if let Some(p) = plugin {
        p.stop();
    }
    if let Some(s) = snapshotter {
        s.stop();
    }
    nbd.stop();
    engine.unmount_all();
    engine.stop_jobs();
    stop_commits.store(true, Ordering::Relaxed);
    let _ = committer.join();
    crate::thin::log::wake_on_log_closed(None);
    log_committer.thread().unpark();
    let _ = log_committer.join();
    let mut failed = false;
    for (name, pool) in engine.all() {
        match pool.close() {
            Ok(()) => tracing::info!(pool = %name, "committed and closed"),
            Err(e) => {
                failed = true;
                tracing::error!(pool = %name, "final commit failed: {e}");
            }
        }
    }
    let _ = std::fs::remove_file(&api_path);
    if let Some(p) = &cfg.nbd_socket {
        let _ = std::fs::remove_file(p);
    }
    if failed {
        bail!("shut down with errors: see the log above");
    }
    tracing::info!("clean shutdown");
    Ok(())
}
