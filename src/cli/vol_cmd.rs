//! `vpool vol ...` and `vpool snap ...`

use super::copy;
use super::output::{json, table};
use super::pool_cmd::{parse_size_arg, JsonArg};
use super::units::{format_size, parse_size};
use super::{open_pool, Ctx};
use crate::pool::names::{validate, VolPath};
use crate::pool::VolumeInfo;
use crate::state::StateDir;
use anyhow::bail;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum VolCmd {
    /// Create a thin volume: no space is used until written.
    Create {
        /// POOL/VOLUME
        path: String,
        /// Virtual size, e.g. 10G (binary units).
        #[arg(long, short = 's', value_parser = parse_size_arg)]
        size: u64,
    },
    /// List volumes (all pools, or one).
    List {
        pool: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Copy a raw image into a volume; zero blocks stay unallocated.
    Import {
        /// POOL/VOLUME
        path: String,
        #[arg(long)]
        from: PathBuf,
        /// Where in the volume to start writing.
        #[arg(long, default_value = "0", value_parser = parse_size_arg)]
        offset: u64,
    },
    /// Copy a volume or snapshot out to a sparse raw image.
    Export {
        /// POOL/VOLUME[@SNAPSHOT]
        path: String,
        #[arg(long)]
        to: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Writable volume sharing every chunk of a snapshot (instant).
    Clone {
        /// POOL/VOLUME@SNAPSHOT
        source: String,
        /// POOL/NEWVOLUME
        target: String,
    },
    /// Return a volume to a snapshot's contents and size (other snapshots stay).
    Rollback {
        /// POOL/VOLUME@SNAPSHOT
        path: String,
    },
    /// Grow or shrink a volume: SIZE, +SIZE or -SIZE.
    Resize {
        /// POOL/VOLUME
        path: String,
        #[arg(long, short = 's', allow_hyphen_values = true)]
        size: String,
        /// Allow a shrink that discards written data.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Remove a volume; its space returns to the pool.
    #[command(alias = "rm")]
    Remove {
        /// POOL/VOLUME
        path: String,
        /// Also remove its snapshots.
        #[arg(long, short = 'r')]
        recursive: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SnapCmd {
    /// Take a read-only, point-in-time snapshot (instant, shares all chunks).
    Create {
        /// POOL/VOLUME@SNAPSHOT
        path: String,
    },
    /// List snapshots (all, of a pool, or of POOL/VOLUME).
    List {
        filter: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove a snapshot; chunks no one else uses are freed.
    #[command(alias = "rm")]
    Remove {
        /// POOL/VOLUME@SNAPSHOT
        path: String,
    },
}

pub fn run(ctx: &Ctx, cmd: VolCmd) -> anyhow::Result<()> {
    let state = StateDir::open(&ctx.state_dir)?;
    match cmd {
        VolCmd::Create { path, size } => {
            let p = VolPath::parse_volume(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            for w in pool.create_volume(&p.volume, size)? {
                eprintln!("WARNING: {w}");
            }
            println!("created volume '{p}' ({})", format_size(size));
        }
        VolCmd::List { pool, json: j } => {
            let rows = collect(&state, pool.as_deref(), |v| v.kind == "volume")?;
            print_list(&rows, j.json)?;
        }
        VolCmd::Import { path, from, offset } => {
            let p = VolPath::parse_volume(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            let vol = pool.volume(&p.volume, None)?;
            copy::import(&vol, &from, offset)?;
        }
        VolCmd::Export { path, to, force } => {
            let p = VolPath::parse(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            let vol = pool.volume(&p.volume, p.snapshot.as_deref())?;
            copy::export(&vol, &to, force)?;
        }
        VolCmd::Clone { source, target } => {
            let s = VolPath::parse_snapshot(&source)?;
            let t = VolPath::parse_volume(&target)?;
            if s.pool != t.pool {
                bail!(
                    "a clone lives in the pool of its snapshot: '{}' is not in pool '{}'",
                    target,
                    s.pool
                );
            }
            let pool = open_pool(&state, &s.pool)?;
            pool.clone_volume(&s.volume, s.snapshot.as_deref(), &t.volume)?;
            println!("cloned '{s}' as '{t}'");
        }
        VolCmd::Rollback { path } => {
            let p = VolPath::parse_snapshot(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            pool.rollback(&p.volume, p.snapshot.as_deref().unwrap_or_default())?;
            println!("rolled '{}/{}' back to '{p}'", p.pool, p.volume);
        }
        VolCmd::Resize { path, size, force } => {
            let p = VolPath::parse_volume(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            let current = pool.volume(&p.volume, None)?.size()?;
            let new = if let Some(rest) = size.strip_prefix('+') {
                current.checked_add(parse_size(rest).map_err(anyhow::Error::msg)?)
            } else if let Some(rest) = size.strip_prefix('-') {
                current.checked_sub(parse_size(rest).map_err(anyhow::Error::msg)?)
            } else {
                Some(parse_size(&size).map_err(anyhow::Error::msg)?)
            };
            let Some(new) = new.filter(|&n| n > 0) else {
                bail!("'{size}' would make the volume size zero or negative");
            };
            pool.resize(&p.volume, new, force)?;
            println!(
                "resized '{p}' from {} to {}",
                format_size(current),
                format_size(new)
            );
        }
        VolCmd::Remove { path, recursive } => {
            let p = VolPath::parse_volume(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            pool.remove_volume(&p.volume, recursive)?;
            println!("removed volume '{p}'");
        }
    }
    Ok(())
}

pub fn run_snap(ctx: &Ctx, cmd: SnapCmd) -> anyhow::Result<()> {
    let state = StateDir::open(&ctx.state_dir)?;
    match cmd {
        SnapCmd::Create { path } => {
            let p = VolPath::parse_snapshot(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            pool.snapshot(&p.volume, p.snapshot.as_deref().unwrap_or_default())?;
            println!("created snapshot '{p}'");
        }
        SnapCmd::List { filter, json: j } => {
            let (pool, vol) = match filter.as_deref() {
                Some(f) if f.contains('/') => {
                    let p = VolPath::parse_volume(f)?;
                    (Some(p.pool), Some(p.volume))
                }
                Some(f) => (Some(f.to_string()), None),
                None => (None, None),
            };
            let prefix = vol.map(|v| format!("{}/{v}@", pool.clone().unwrap_or_default()));
            let rows = collect(&state, pool.as_deref(), |v| {
                v.kind == "snapshot" && prefix.as_ref().is_none_or(|p| v.name.starts_with(p))
            })?;
            print_list(&rows, j.json)?;
        }
        SnapCmd::Remove { path } => {
            let p = VolPath::parse_snapshot(&path)?;
            let pool = open_pool(&state, &p.pool)?;
            pool.remove_snapshot(&p.volume, p.snapshot.as_deref().unwrap_or_default())?;
            println!("removed snapshot '{p}'");
        }
    }
    Ok(())
}

fn collect(
    state: &StateDir,
    pool: Option<&str>,
    keep: impl Fn(&VolumeInfo) -> bool,
) -> anyhow::Result<Vec<VolumeInfo>> {
    let names: Vec<String> = match pool {
        Some(p) => {
            validate("pool", p)?;
            vec![p.to_string()]
        }
        None => state.load()?.pools.keys().cloned().collect(),
    };
    let mut rows = Vec::new();
    for n in names {
        let pool = open_pool(state, &n)?;
        rows.extend(pool.list().into_iter().filter(|v| keep(v)));
    }
    Ok(rows)
}

fn print_list(rows: &[VolumeInfo], as_json: bool) -> anyhow::Result<()> {
    if as_json {
        return json(&rows);
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                format_size(v.size),
                format_size(v.mapped),
                v.origin.clone().unwrap_or("-".into()),
            ]
        })
        .collect();
    table(&["NAME", "SIZE", "MAPPED", "ORIGIN"], &body);
    Ok(())
}
