//! The daemon's pools: opened once at start, shared by the control API and
//! the NBD server. Also the NBD export list.

use crate::control::events::job_change;
use crate::control::{Engine, NoProgress, ProgressSink};
use crate::error::Error;
use crate::frontend::exports::Exports;
use crate::frontend::fuse::FuseMount;
use crate::pool::names::VolPath;
use crate::state::StateDir;
use crate::sync::RwLock;
use crate::{Pool, Volume};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::{OnceLock, Weak};
use std::thread::JoinHandle;

pub struct DaemonEngine {
    state_dir: PathBuf,
    pools: RwLock<BTreeMap<String, Pool>>,
    /// Pools that failed to open at start, with why.
    pub unavailable: RwLock<BTreeMap<String, String>>,
    /// The FUSE mount directory, once mounted.
    pub fuse: RwLock<Option<PathBuf>>,
    fuse_mount: Mutex<Option<FuseMount>>,
    /// This engine, for the FUSE file system to serve (set once shared).
    me: OnceLock<Weak<DaemonEngine>>,
    /// Background layout-change jobs, by pool.
    jobs: Mutex<BTreeMap<String, JoinHandle<()>>>,
    stop_jobs: Arc<AtomicBool>,
    job_rate_limit: u64,
    /// What changed in the pools, for `vpool events` and `--on-event`.
    pub events: Arc<super::events::EventLog>,
}

impl DaemonEngine {
    /// Open every pool the state directory lists. A pool that cannot open is
    /// logged loudly and reported as unavailable; the others are served.
    pub fn start(state_dir: &Path, job_rate_limit: u64) -> anyhow::Result<DaemonEngine> {
        let state = StateDir::open(state_dir)?;
        let mut pools = BTreeMap::new();
        let mut unavailable = BTreeMap::new();
        for name in state.load()?.pools.keys() {
            match crate::control::local::open_known(&state, name) {
                Ok(p) => {
                    for w in p.warnings() {
                        tracing::warn!(pool = %name, "{w}");
                    }
                    if p.info().health != "online" {
                        tracing::error!(pool = %name, "pool is DEGRADED: serving from redundancy; see `vpool pool status {name}`");
                    }
                    tracing::info!(pool = %name, "pool imported");
                    pools.insert(name.clone(), p);
                }
                Err(e) => {
                    tracing::error!(pool = %name, "pool cannot be opened: {e:#}");
                    unavailable.insert(name.clone(), format!("{e:#}"));
                }
            }
        }
        let engine = DaemonEngine {
            state_dir: state_dir.to_path_buf(),
            pools: RwLock::new(pools),
            unavailable: RwLock::new(unavailable),
            fuse: RwLock::new(None),
            fuse_mount: Mutex::new(None),
            me: OnceLock::new(),
            jobs: Mutex::new(BTreeMap::new()),
            stop_jobs: Arc::new(AtomicBool::new(false)),
            job_rate_limit,
            events: Default::default(),
        };
        Ok(engine)
    }

    /// Take up the layout changes a previous daemon left unfinished (after
    /// the event hook is set up, so that it hears of them).
    pub fn resume_jobs(&self) {
        for (name, pool) in self.all() {
            if pool.job().is_some() {
                tracing::warn!(pool = %name, "an unfinished layout change is taken up again");
                self.spawn_job(&name, &pool);
            }
        }
    }

    /// Remember the shared handle (the FUSE file system needs one).
    pub fn set_shared(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// Unmount the volumes' FUSE mount, if any (at shutdown).
    pub fn unmount_all(&self) {
        if let Some(m) = self.fuse_mount.lock().take() {
            m.unmount();
        }
        *self.fuse.write() = None;
    }

    /// Start the pool's job on a thread of its own, unless one runs.
    pub(super) fn spawn_job(&self, name: &str, pool: &Pool) {
        let mut jobs = self.jobs.lock();
        if jobs.get(name).is_some_and(|h| !h.is_finished()) {
            return;
        }
        pool.set_job_rate_limit(self.job_rate_limit);
        let key = name.to_string();
        let (name, pool, stop) = (name.to_string(), pool.clone(), self.stop_jobs.clone());
        let state_dir = self.state_dir.clone();
        let events = self.events.clone();
        let handle = std::thread::spawn(move || {
            let kind = pool.job().map(|j| j.kind).unwrap_or_else(|| "job".into());
            events.record(&name, job_change(&name, &kind, None));
            let mut next_log = 0.0;
            let result = pool.run_job(&stop, |info| {
                if info.percent >= next_log {
                    tracing::info!(pool = %name, "{}: {:.1}% ({} MB/s)", info.kind, info.percent, info.rate / 1_000_000);
                    next_log = info.percent + 10.0;
                }
            });
            match &result {
                Ok(true) => {
                    tracing::info!(pool = %name, "layout change complete");
                    let pruned = StateDir::open(&state_dir)
                        .map_err(anyhow::Error::from)
                        .and_then(|s| {
                            crate::control::local::forget_former_members(&s, &name, &pool)
                        });
                    if let Err(e) = pruned {
                        tracing::warn!(pool = %name, "state file not updated: {e:#}");
                    }
                }
                Ok(false) => tracing::info!(pool = %name, "layout change paused"),
                Err(e) => tracing::error!(pool = %name, "layout change stopped: {e}"),
            }
            let outcome = result.map_err(|e| e.to_string());
            events.record(&name, job_change(&name, &kind, Some(outcome)));
        });
        jobs.insert(key, handle);
    }

    /// Stop every job after its current step (at shutdown).
    pub fn stop_jobs(&self) {
        self.stop_jobs.store(true, Ordering::Relaxed);
        let jobs = std::mem::take(&mut *self.jobs.lock());
        for (_, h) in jobs {
            let _ = h.join();
        }
    }

    pub fn all(&self) -> Vec<(String, Pool)> {
        self.pools
            .read()
            .iter()
            .map(|(n, p)| (n.clone(), p.clone()))
            .collect()
    }

    /// Volume files open through the FUSE mount (0 without one).
    pub fn fuse_open_files(&self) -> usize {
        self.fuse_mount
            .lock()
            .as_ref()
            .map_or(0, |m| m.open_files())
    }
}

impl Engine for DaemonEngine {
    fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn pool(&self, name: &str) -> anyhow::Result<Pool> {
        if let Some(p) = self.pools.read().get(name) {
            return Ok(p.clone());
        }
        if let Some(why) = self.unavailable.read().get(name) {
            return Err(Error::Unavailable(format!(
                "pool '{name}' could not be opened when the daemon started: {why}"
            ))
            .into());
        }
        Err(Error::NotFound(format!("pool '{name}' not found (see `vpool pool list`)")).into())
    }

    fn pool_names(&self) -> anyhow::Result<Vec<String>> {
        let mut names: Vec<String> = self.pools.read().keys().cloned().collect();
        names.extend(self.unavailable.read().keys().cloned());
        names.sort();
        Ok(names)
    }

    fn member_paths(&self, name: &str) -> anyhow::Result<Vec<PathBuf>> {
        Ok(StateDir::open(&self.state_dir)?.load()?.members_of(name))
    }

    fn adopt(&self, name: &str, pool: Pool, members: Vec<PathBuf>) -> anyhow::Result<()> {
        StateDir::open(&self.state_dir)?.remember(name, &pool.uuid().to_string(), &members)?;
        self.pools.write().insert(name.to_string(), pool);
        tracing::info!(pool = %name, "pool added");
        Ok(())
    }

    fn release(&self, name: &str) -> anyhow::Result<Pool> {
        let pool = self.pool(name)?;
        self.pools.write().remove(name);
        StateDir::open(&self.state_dir)?.forget(name)?;
        tracing::info!(pool = %name, "pool released");
        Ok(pool)
    }

    fn counts_io(&self) -> bool {
        true
    }

    fn events(
        &self,
        after: u64,
        pool: Option<&str>,
    ) -> anyhow::Result<Vec<crate::control::events::Event>> {
        Ok(self.events.after(after, pool))
    }

    fn fuse_dir(&self) -> Option<PathBuf> {
        self.fuse.read().clone()
    }

    fn mount_fuse(&self, dir: &Path) -> anyhow::Result<String> {
        let mut slot = self.fuse_mount.lock();
        if let Some(cur) = self.fuse.read().clone() {
            anyhow::bail!(Error::InUse(format!(
                "volumes are already mounted under {}; `vpool umount` first",
                cur.display()
            )));
        }
        let me = self
            .me
            .get()
            .and_then(|w| w.upgrade())
            .ok_or_else(|| anyhow::anyhow!("daemon engine not shared yet"))?;
        *slot = Some(FuseMount::mount(dir, me, 4)?);
        *self.fuse.write() = Some(dir.to_path_buf());
        Ok(format!(
            "volumes mounted as files under {} (one directory per pool)",
            dir.display()
        ))
    }

    fn unmount_fuse(&self) -> anyhow::Result<String> {
        let Some(dir) = self.fuse.read().clone() else {
            anyhow::bail!(Error::NotFound("volumes are not mounted".into()));
        };
        let users = crate::control::host::loops_under(&dir);
        if !users.is_empty() {
            let list: Vec<String> = users
                .iter()
                .map(|(dev, f)| format!("{dev} ({})", f.display()))
                .collect();
            anyhow::bail!(Error::InUse(format!(
                "loop devices use volume files under {}: {}. Unmount their filesystems and `losetup -d` them first (Docker volumes: stop their containers)",
                dir.display(),
                list.join(", ")
            )));
        }
        self.unmount_all();
        Ok(format!("unmounted {}", dir.display()))
    }

    fn volume_resized(&self, pool: &str, volume: &str, size: u64) {
        if let Some(m) = self.fuse_mount.lock().as_ref() {
            m.size_changed(&format!("{pool}/{volume}"), size);
        }
    }

    fn progress(&self, _what: &str, _total: u64) -> Box<dyn ProgressSink> {
        Box::new(NoProgress)
    }

    fn run_job(&self, name: &str, pool: &Pool) -> anyhow::Result<String> {
        self.spawn_job(name, pool);
        Ok(format!(
            "the daemon moves the data in the background: `vpool pool status {name}` shows progress"
        ))
    }
}

impl Exports for DaemonEngine {
    fn list(&self) -> Vec<String> {
        self.all()
            .iter()
            .flat_map(|(_, p)| p.list().into_iter().map(|v| v.name))
            .collect()
    }

    fn pools(&self) -> Vec<String> {
        self.pools.read().keys().cloned().collect()
    }

    fn open(&self, name: &str) -> Option<Volume> {
        let p = VolPath::parse(name).ok()?;
        let pool = self.pools.read().get(&p.pool)?.clone();
        pool.volume(&p.volume, p.snapshot.as_deref()).ok()
    }
}
