//! The engine the CLI uses when no daemon runs: pools are opened from the
//! state directory's member lists, directly on the devices (locked), for the
//! length of one command.

use super::{Engine, ProgressSink};
use crate::control::progress::Progress;
use crate::error::Error;
use crate::state::StateDir;
use crate::Pool;
use anyhow::Context;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct LocalEngine {
    state: StateDir,
    open: Mutex<HashMap<String, Pool>>,
}

impl LocalEngine {
    pub fn new(state_dir: &Path) -> anyhow::Result<LocalEngine> {
        Ok(LocalEngine {
            state: StateDir::open(state_dir)?,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// For a command that may be one end of a pipe whose other end is a
    /// vpool command on the same state directory (`snap send | snap
    /// receive`): waiting for the directory would wait for ever.
    pub fn for_stream(state_dir: &Path) -> anyhow::Result<LocalEngine> {
        let state = StateDir::open_waiting(state_dir, Some(std::time::Duration::from_secs(10)))
            .map_err(|e| anyhow::anyhow!(Error::InUse(format!(
                "{e}: without a daemon, a `snap send` and a `snap receive` on one state directory wait for each other; start the daemon (`vpool daemon`, or `systemctl start vpool`), which serves both at once"
            ))))?;
        Ok(LocalEngine {
            state,
            open: Mutex::new(HashMap::new()),
        })
    }
}

/// Pools opened for one command are closed when it ends: the next open
/// then has nothing to replay or resync.
impl Drop for LocalEngine {
    fn drop(&mut self) {
        for (name, pool) in self.open.lock().drain() {
            if pool.failure().is_none() {
                if let Err(e) = pool.close() {
                    eprintln!("WARNING: closing pool '{name}': {e}");
                }
            }
        }
    }
}

/// Open a pool the state file lists; warnings go to stderr.
pub fn open_known(state: &StateDir, name: &str) -> anyhow::Result<Pool> {
    let st = state.load()?;
    let known = st.pools.get(name).ok_or_else(|| {
        Error::NotFound(format!(
            "pool '{name}' not found (known pools: {}; to bring in a pool from its disks: vpool pool import --scan DIR)",
            if st.pools.is_empty() { "none".to_string() } else { st.pools.keys().cloned().collect::<Vec<_>>().join(", ") }
        ))
    })?;
    let mut devs = Vec::new();
    for p in &known.members {
        let rbd = p.to_str().is_some_and(crate::device::rbd::is_rbd);
        if !rbd && !p.exists() {
            eprintln!(
                "WARNING: member {} of pool '{name}' is missing",
                p.display()
            );
            continue;
        }
        devs.extend(crate::device::open_members(std::slice::from_ref(p))?);
    }
    let uuid = uuid::Uuid::parse_str(&known.uuid).context("state file holds a bad pool uuid")?;
    let pool = Pool::open_with(
        devs,
        Some(*uuid.as_bytes()),
        crate::thin::store::DEFAULT_CACHE_NODES,
    )
    .with_context(|| format!("opening pool '{name}'"))?;
    for w in pool.warnings() {
        eprintln!("WARNING: {w}");
    }
    forget_former_members(state, name, &pool)?;
    Ok(pool)
}

impl Engine for LocalEngine {
    fn state_dir(&self) -> &Path {
        self.state.path()
    }

    fn pool(&self, name: &str) -> anyhow::Result<Pool> {
        if let Some(p) = self.open.lock().get(name) {
            return Ok(p.clone());
        }
        let pool = open_known(&self.state, name)?;
        self.open.lock().insert(name.to_string(), pool.clone());
        Ok(pool)
    }

    fn pool_names(&self) -> anyhow::Result<Vec<String>> {
        Ok(self.state.load()?.pools.keys().cloned().collect())
    }

    fn member_paths(&self, name: &str) -> anyhow::Result<Vec<PathBuf>> {
        Ok(self.state.load()?.members_of(name))
    }

    fn adopt(&self, name: &str, pool: Pool, members: Vec<PathBuf>) -> anyhow::Result<()> {
        self.state
            .remember(name, &pool.uuid().to_string(), &members)?;
        self.open.lock().insert(name.to_string(), pool);
        Ok(())
    }

    fn release(&self, name: &str) -> anyhow::Result<Pool> {
        let pool = self.pool(name)?;
        self.open.lock().remove(name);
        self.state.forget(name)?;
        Ok(pool)
    }

    fn progress(&self, what: &str, total: u64) -> Box<dyn ProgressSink> {
        Box::new(Progress::new(what, total))
    }

    /// No daemon: move the data now, with a progress bar. Interrupting is
    /// safe: the job resumes where its last checkpoint left it.
    fn run_job(&self, name: &str, pool: &Pool) -> anyhow::Result<String> {
        let Some(info) = pool.job() else {
            return Ok(format!("pool '{name}' has no job to run"));
        };
        let mut kind = info.kind.clone();
        let mut bar = Progress::new(&format!("{kind} {name}"), info.total_bytes);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let done = pool.run_job(&stop, |i| {
            // A removal has two phases, each with its own bar.
            if i.kind != kind {
                bar.finish();
                kind = i.kind.clone();
                bar = Progress::new(&format!("{kind} {name}"), i.total_bytes);
            }
            bar.set(i.done_bytes)
        })?;
        bar.finish();
        if done {
            forget_former_members(&self.state, name, pool)?;
        }
        Ok(if done {
            format!("{} of pool '{name}' complete", kind)
        } else {
            format!("{} of pool '{name}' paused", kind)
        })
    }
}

/// Drop from the state file the paths of devices that left the pool (after
/// `pool remove`). Only when every member is present: a missing member's
/// path must stay so that it is found when it comes back.
pub fn forget_former_members(state: &StateDir, name: &str, pool: &Pool) -> anyhow::Result<()> {
    let devices = pool.member_devices();
    if pool.job().is_some() || devices.iter().any(|d| d.is_none()) {
        return Ok(());
    }
    let current: Vec<PathBuf> = devices
        .iter()
        .flatten()
        .chain(pool.spares().iter())
        .map(|d| crate::state::absolute(Path::new(&d.name())))
        .collect();
    let mut st = state.load()?;
    let Some(known) = st.pools.get_mut(name) else {
        return Ok(());
    };
    let before = known.members.len();
    known
        .members
        .retain(|p| current.contains(&crate::state::absolute(p)));
    if known.members.len() != before {
        state.save(&st)?;
    }
    Ok(())
}

impl ProgressSink for Progress {
    fn set(&mut self, done: u64) {
        Progress::set(self, done)
    }
    fn finish(&mut self) {
        Progress::finish(self)
    }
}
