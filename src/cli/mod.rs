//! The `vpool` command line: clap definitions and dispatch. Commands work
//! directly on the member devices; the state directory remembers which pools
//! this host knows.

mod copy;
mod output;
mod pool_cmd;
mod tools_cmd;
pub mod units;
mod vol_cmd;

use crate::device::{DeviceRef, FileDevice};
use crate::error::Error;
use crate::state::StateDir;
use crate::Pool;
use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Parser, Debug)]
#[command(
    name = "vpool",
    version,
    about = "Pools of disks or image files as RAID, carved into thin volumes with snapshots"
)]
pub struct Cli {
    /// Where this host remembers its pools.
    #[arg(
        long,
        global = true,
        env = "VPOOL_STATE_DIR",
        default_value = "/var/lib/vpool"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list, inspect, move and destroy pools.
    #[command(subcommand)]
    Pool(pool_cmd::PoolCmd),
    /// Create, copy in and out, clone, resize and remove volumes.
    #[command(subcommand, alias = "volume")]
    Vol(vol_cmd::VolCmd),
    /// Create, list and remove snapshots.
    #[command(subcommand, alias = "snapshot")]
    Snap(vol_cmd::SnapCmd),
    /// Check a pool's metadata offline: every checksum, every reference count, leaks.
    Check(tools_cmd::CheckArgs),
    /// Dump a member's labels and superblocks.
    Inspect(tools_cmd::InspectArgs),
    /// Make a demo pool from image files in a new directory.
    Quickstart(tools_cmd::QuickstartArgs),
}

pub struct Ctx {
    pub state_dir: PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::Pool(c) => pool_cmd::run(&ctx, c),
        Command::Vol(c) => vol_cmd::run(&ctx, c),
        Command::Snap(c) => vol_cmd::run_snap(&ctx, c),
        Command::Check(a) => tools_cmd::check(a),
        Command::Inspect(a) => tools_cmd::inspect(a),
        Command::Quickstart(a) => tools_cmd::quickstart(a),
    }
}

/// Open member devices read-write and locked. Missing paths are skipped
/// (the pool may open degraded); other failures are errors.
pub fn open_members(paths: &[PathBuf], allow_missing: bool) -> anyhow::Result<Vec<DeviceRef>> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        if !seen.insert(absolute(p)) {
            return Err(anyhow!("{} is listed twice", p.display()));
        }
        match FileDevice::open(p) {
            Ok(d) => out.push(Arc::new(d) as DeviceRef),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && allow_missing => {
                eprintln!("WARNING: member {} is missing", p.display());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(anyhow!(
                    "{}: no such file or device (for an image file: truncate -s 1G {})",
                    p.display(),
                    p.display()
                ));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(anyhow!(
                    "{e}; wait for it to finish (or stop the daemon that owns the pool)"
                ));
            }
            Err(e) => return Err(anyhow!("{}: {e}", p.display())),
        }
    }
    Ok(out)
}

pub fn absolute(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

/// Open a pool this host knows, by name.
pub fn open_pool(state: &StateDir, name: &str) -> anyhow::Result<Pool> {
    let st = state.load()?;
    let known = st.pools.get(name).ok_or_else(|| {
        Error::NotFound(format!(
            "pool '{name}' not found (known pools: {}; to bring in a pool from its disks: vpool pool import --scan DIR)",
            if st.pools.is_empty() { "none".to_string() } else { st.pools.keys().cloned().collect::<Vec<_>>().join(", ") }
        ))
    })?;
    let devs = open_members(&known.members, true)?;
    let uuid = uuid::Uuid::parse_str(&known.uuid).context("state file holds a bad pool uuid")?;
    let pool = Pool::open_with(
        devs,
        Some(*uuid.as_bytes()),
        crate::meta::store::DEFAULT_CACHE_NODES,
    )
    .with_context(|| format!("opening pool '{name}'"))?;
    for w in pool.warnings() {
        eprintln!("WARNING: {w}");
    }
    Ok(pool)
}

/// Advice printed under an error, by kind.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<Error>() {
            return match e {
                Error::NoSpace { .. } => Some(
                    "free space with `vpool vol remove`, `vpool snap remove` or a discard, or add members to the pool".into(),
                ),
                Error::Corrupt(_) => Some("run `vpool check MEMBERS...` to see the extent of the damage".into()),
                Error::Unavailable(_) => Some("`vpool pool status` lists the members and which are missing".into()),
                _ => None,
            };
        }
    }
    None
}
