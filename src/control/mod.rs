//! The control layer (may use pool and below): one implementation of every
//! operation, used by the CLI when no daemon runs (on the devices directly) and
//! by the daemon's control API. Requests are data ([`Request`]); an [`Engine`]
//! says where pools come from.

pub mod client;
pub mod copy;
pub mod events;
mod exec;
mod health;
pub mod host;
pub mod local;
mod members;
pub mod metrics;
pub mod progress;
pub mod receive;
mod request;
pub mod resizefs;
pub mod send;
pub mod stream;

pub use crate::device::open_members;
pub use exec::{execute, Importable, PoolRow};
pub use request::{decode_component, encode_component, fuzz_http, Request, Route};

use crate::error::Error;
use crate::Pool;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What an operation returns: a line for people, warnings, and data for scripts.
#[derive(Serialize, Deserialize, Debug, Default, Clone)]
pub struct Response {
    pub message: Option<String>,
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

/// Where pools come from.
pub trait Engine: Send + Sync {
    fn state_dir(&self) -> &Path;
    /// An open pool by name.
    fn pool(&self, name: &str) -> anyhow::Result<Pool>;
    /// Names of the pools this host knows.
    fn pool_names(&self) -> anyhow::Result<Vec<String>>;
    /// The member paths this host remembers for a pool.
    fn member_paths(&self, name: &str) -> anyhow::Result<Vec<PathBuf>>;
    /// A pool was created or imported: remember it.
    fn adopt(&self, name: &str, pool: Pool, members: Vec<PathBuf>) -> anyhow::Result<()>;
    /// A pool is being exported or destroyed: forget it and hand it over.
    fn release(&self, name: &str) -> anyhow::Result<Pool>;
    /// Where volumes are mounted as files (FUSE), if they are.
    fn fuse_dir(&self) -> Option<PathBuf> {
        None
    }
    /// Mount every volume as a file under `dir` (FUSE), for as long as the
    /// daemon runs.
    fn mount_fuse(&self, _dir: &Path) -> anyhow::Result<String> {
        anyhow::bail!(crate::Error::Unavailable(
            "volumes are mounted as files by the daemon: run `vpool daemon --fuse-mount DIR`, or `vpool mount DIR` while it runs".into()
        ))
    }
    fn unmount_fuse(&self) -> anyhow::Result<String> {
        anyhow::bail!(crate::Error::Unavailable(
            "no daemon runs, so nothing is mounted".into()
        ))
    }
    /// Does this engine serve the volumes, so that its pools' I/O
    /// counters mean something (the daemon)? The CLI's own engine opens
    /// pools for one command: its counters are always zero.
    fn counts_io(&self) -> bool {
        false
    }
    /// The events after sequence number `after` (of one pool, or all).
    fn events(&self, _after: u64, _pool: Option<&str>) -> anyhow::Result<Vec<events::Event>> {
        // Not `Unavailable`: its hint is about missing members.
        anyhow::bail!(crate::Error::Invalid(
            "events are recorded by the daemon as they happen: start it (`vpool daemon`, or `systemctl start vpool`) and run this again".into()
        ))
    }
    /// A volume's size changed: files that show it (FUSE) must follow.
    fn volume_resized(&self, _pool: &str, _volume: &str, _size: u64) {}
    /// Report progress of a long copy (a bar on a terminal for the CLI).
    fn progress(&self, what: &str, total: u64) -> Box<dyn ProgressSink>;
    /// Run a pool's layout-change job: in the background in the daemon
    /// (returns at once), to completion here in the CLI. Returns a note.
    fn run_job(&self, name: &str, pool: &Pool) -> anyhow::Result<String>;
}

pub trait ProgressSink {
    fn set(&mut self, done: u64);
    fn finish(&mut self);
}

/// Progress nobody watches (the daemon).
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn set(&mut self, _: u64) {}
    fn finish(&mut self) {}
}

/// Classify an error for HTTP status codes and hints.
pub fn error_kind(e: &anyhow::Error) -> &'static str {
    for cause in e.chain() {
        if let Some(err) = cause.downcast_ref::<Error>() {
            return match err {
                Error::NotFound(_) => "not_found",
                Error::Exists(_) => "exists",
                Error::Invalid(_) => "invalid",
                Error::NoSpace { .. } => "no_space",
                Error::Corrupt(_) => "corrupt",
                Error::ReadOnly(_) => "read_only",
                Error::InUse(_) => "in_use",
                Error::Unavailable(_) => "unavailable",
                Error::Io { .. } => "io",
            };
        }
    }
    "invalid"
}

/// Advice printed under an error, by kind.
pub fn hint_for(kind: &str) -> Option<String> {
    match kind {
        "no_space" => Some(
            "free space with `vpool vol remove`, `vpool snap remove` or a discard, or add members to the pool".into(),
        ),
        "corrupt" => Some("run `vpool check MEMBERS...` to see the extent of the damage".into()),
        "unavailable" => Some("`vpool pool status` lists the members and which are missing".into()),
        _ => None,
    }
}
