//! `vpool pool ...`

use super::output::{json, table};
use super::units::format_size;
use super::{absolute, open_members, open_pool, Ctx};
use crate::device::{DeviceRef, FileDevice};
use crate::meta::label::PoolState;
use crate::pool::group_by_pool;
use crate::raid::RaidLevel;
use crate::state::{KnownPool, StateDir};
use crate::{CreateOptions, Pool};
use anyhow::{anyhow, bail};
use clap::{Args, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create a pool from block devices or image files.
    Create {
        name: String,
        /// linear, raid0, raid1 (N-way mirror) or raid5.
        #[arg(long, short = 'r')]
        raid: RaidLevel,
        /// Per-member stripe unit (power of two, e.g. 64K).
        #[arg(long, default_value = "64K", value_parser = parse_size_arg)]
        stripe_unit: u64,
        /// Overwrite devices that belong to another pool.
        #[arg(long, short = 'f')]
        force: bool,
        #[arg(required = true)]
        devices: Vec<PathBuf>,
    },
    /// One line per pool.
    List(JsonArg),
    /// Members, space and health of a pool.
    Status {
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Close a pool and mark its members exported, ready to move.
    Export { name: String },
    /// Find pools on devices by their labels; with NAME (or UUID), import it.
    Import {
        /// Pool name or UUID to import; without it, list what can be imported.
        name: Option<String>,
        /// Directory whose files (or device nodes) to scan; repeatable.
        #[arg(long, short = 's')]
        scan: Vec<PathBuf>,
        /// Devices to scan.
        #[arg(long = "device", short = 'd')]
        devices: Vec<PathBuf>,
        /// Import a pool that was not exported (it may be in use elsewhere).
        #[arg(long, short = 'f')]
        force: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Destroy a pool: its labels are erased, its data is lost.
    Destroy {
        name: String,
        /// Also when it still holds volumes.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(Args, Debug, Clone, Copy)]
pub struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    super::units::parse_size(s)
}

pub fn run(ctx: &Ctx, cmd: PoolCmd) -> anyhow::Result<()> {
    let state = StateDir::open(&ctx.state_dir)?;
    match cmd {
        PoolCmd::Create {
            name,
            raid,
            stripe_unit,
            force,
            devices,
        } => {
            let mut st = state.load()?;
            if st.pools.contains_key(&name) {
                bail!("pool '{name}' already exists on this host (see `vpool pool list`)");
            }
            let devs = open_members(&devices, false)?;
            let mut opts = CreateOptions::new(raid);
            opts.stripe_unit = stripe_unit;
            opts.force = force;
            let (pool, warnings) = Pool::create(&name, devs, &opts)?;
            for w in warnings {
                eprintln!("WARNING: {w}");
            }
            st.pools.insert(
                name.clone(),
                KnownPool {
                    uuid: pool.uuid().to_string(),
                    members: devices.iter().map(|p| absolute(p)).collect(),
                },
            );
            state.save(&st)?;
            let i = pool.info();
            println!(
                "created pool '{name}': {} over {} members, {} usable, chunk {}",
                i.level,
                i.members.len(),
                format_size(i.capacity),
                format_size(i.chunk_size)
            );
            Ok(())
        }
        PoolCmd::List(j) => list(&state, j.json),
        PoolCmd::Status { name, json: j } => status(&state, &name, j.json),
        PoolCmd::Export { name } => {
            let pool = open_pool(&state, &name)?;
            pool.export()?;
            drop(pool);
            let mut st = state.load()?;
            st.pools.remove(&name);
            state.save(&st)?;
            println!("exported pool '{name}'; its members can be moved and imported with `vpool pool import`");
            Ok(())
        }
        PoolCmd::Import {
            name,
            scan,
            devices,
            force,
            json: j,
        } => import(&state, name, scan, devices, force, j.json),
        PoolCmd::Destroy { name, force } => {
            let pool = open_pool(&state, &name)?;
            let vols = pool.info().volumes;
            if vols > 0 && !force {
                bail!("pool '{name}' still holds {vols} volume(s); remove them first or pass --force to destroy them with the pool");
            }
            pool.destroy()?;
            let mut st = state.load()?;
            st.pools.remove(&name);
            state.save(&st)?;
            println!("destroyed pool '{name}'");
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct ListRow {
    name: String,
    health: String,
    level: Option<String>,
    size: u64,
    allocated: u64,
    free: u64,
    virtual_bytes: u64,
    error: Option<String>,
}

fn list(state: &StateDir, as_json: bool) -> anyhow::Result<()> {
    let st = state.load()?;
    let mut rows = Vec::new();
    for name in st.pools.keys() {
        match open_pool(state, name) {
            Ok(p) => {
                let i = p.info();
                rows.push(ListRow {
                    name: name.clone(),
                    health: i.health,
                    level: Some(i.level),
                    size: i.capacity,
                    allocated: i.allocated,
                    free: i.free,
                    virtual_bytes: i.virtual_bytes,
                    error: None,
                });
            }
            Err(e) => rows.push(ListRow {
                name: name.clone(),
                health: "unavailable".into(),
                level: None,
                size: 0,
                allocated: 0,
                free: 0,
                virtual_bytes: 0,
                error: Some(format!("{e:#}")),
            }),
        }
    }
    if as_json {
        return json(&rows);
    }
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.level.clone().unwrap_or("-".into()),
                format_size(r.size),
                format_size(r.allocated),
                format_size(r.free),
                format_size(r.virtual_bytes),
                r.health.to_uppercase(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "LEVEL", "SIZE", "ALLOC", "FREE", "VIRTUAL", "HEALTH",
        ],
        &body,
    );
    Ok(())
}

fn status(state: &StateDir, name: &str, as_json: bool) -> anyhow::Result<()> {
    let pool = open_pool(state, name)?;
    let i = pool.info();
    if as_json {
        return json(&i);
    }
    println!("  pool: {}", i.name);
    println!("  uuid: {}", i.uuid);
    println!(" state: {}", i.health.to_uppercase());
    if i.health != "online" {
        println!("status: DEGRADED: one or more members are missing or stale. Data is served from redundancy;");
        println!("        a second failure would lose data. Reattach the member or replace it.");
    }
    println!(
        "  raid: {} (stripe unit {}, chunk {})",
        i.level,
        format_size(i.stripe_unit),
        format_size(i.chunk_size)
    );
    println!(
        " space: {} allocated of {} ({:.1}%), {} free; volumes total {} virtual{}",
        format_size(i.allocated),
        format_size(i.capacity),
        100.0 * i.allocated as f64 / i.capacity.max(1) as f64,
        format_size(i.free),
        format_size(i.virtual_bytes),
        if i.virtual_bytes > i.capacity {
            " (overprovisioned)"
        } else {
            ""
        }
    );
    println!(
        "  meta: {} of {} used, transaction {}, {} copies repaired",
        format_size(i.metadata_used),
        format_size(i.metadata_total),
        i.transaction,
        i.metadata_repairs
    );
    println!("  vols: {} volumes, {} snapshots", i.volumes, i.snapshots);
    println!();
    let rows: Vec<Vec<String>> = i
        .members
        .iter()
        .map(|m| {
            vec![
                m.index.to_string(),
                m.device.clone().unwrap_or("-".into()),
                m.state.to_uppercase(),
                format_size(m.data_bytes),
                m.uuid.clone(),
            ]
        })
        .collect();
    table(&["MEMBER", "DEVICE", "STATE", "DATA", "UUID"], &rows);
    Ok(())
}

#[derive(Serialize)]
struct Importable {
    name: String,
    uuid: String,
    level: String,
    state: String,
    members_found: usize,
    members_total: usize,
    devices: Vec<String>,
}

fn scan_paths(scan: &[PathBuf], devices: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = devices.to_vec();
    for dir in scan {
        let rd = std::fs::read_dir(dir).map_err(|e| anyhow!("scanning {}: {e}", dir.display()))?;
        let mut found: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        found.sort();
        paths.extend(found.into_iter().filter(|p| {
            use std::os::unix::fs::FileTypeExt;
            std::fs::metadata(p)
                .map(|m| m.is_file() || m.file_type().is_block_device())
                .unwrap_or(false)
        }));
    }
    if paths.is_empty() {
        bail!("nothing to scan: give --scan DIR (a directory of images or /dev) or --device PATH");
    }
    Ok(paths)
}

fn import(
    state: &StateDir,
    name: Option<String>,
    scan: Vec<PathBuf>,
    devices: Vec<PathBuf>,
    force: bool,
    as_json: bool,
) -> anyhow::Result<()> {
    let paths = scan_paths(&scan, &devices)?;
    let mut devs: Vec<DeviceRef> = Vec::new();
    for p in &paths {
        if let Ok(d) = FileDevice::open_readonly(p) {
            devs.push(Arc::new(d));
        }
    }
    let (groups, _) = group_by_pool(devs);
    let found: Vec<Importable> = groups
        .iter()
        .filter(|g| g.0.state != PoolState::Destroyed)
        .map(|(l, members)| Importable {
            name: l.pool_name.clone(),
            uuid: uuid::Uuid::from_bytes(l.pool_uuid).to_string(),
            level: l.level.to_string(),
            state: if members.iter().any(|m| m.0.state == PoolState::Active) {
                "active".into()
            } else {
                "exported".into()
            },
            members_found: members.len(),
            members_total: l.member_count(),
            devices: members.iter().map(|m| m.1.name()).collect(),
        })
        .collect();
    let Some(want) = name else {
        if as_json {
            return json(&found);
        }
        if found.is_empty() {
            println!("no pools found");
            return Ok(());
        }
        let rows: Vec<Vec<String>> = found
            .iter()
            .map(|f| {
                vec![
                    f.name.clone(),
                    f.uuid.clone(),
                    f.level.clone(),
                    f.state.clone(),
                    format!("{}/{}", f.members_found, f.members_total),
                ]
            })
            .collect();
        table(&["NAME", "UUID", "LEVEL", "STATE", "MEMBERS"], &rows);
        return Ok(());
    };
    let matches: Vec<&Importable> = found
        .iter()
        .filter(|f| f.name == want || f.uuid == want)
        .collect();
    let target = match matches.as_slice() {
        [] => {
            bail!("no pool named '{want}' on the scanned devices (run without a name to list them)")
        }
        [one] => *one,
        _ => bail!("several pools are named '{want}'; import by UUID"),
    };
    let mut st = state.load()?;
    if let Some(k) = st.pools.get(&target.name) {
        if k.uuid != target.uuid {
            bail!(
                "this host already has a different pool named '{}'",
                target.name
            );
        }
    }
    if target.state == "active" && !force {
        bail!(
            "pool '{}' was not exported: it may be in use on another host. If it is not, import it with --force",
            target.name
        );
    }
    let member_paths: Vec<PathBuf> = target
        .devices
        .iter()
        .map(|d| absolute(&PathBuf::from(d)))
        .collect();
    let devs = open_members(&member_paths, false)?;
    let uuid = uuid::Uuid::parse_str(&target.uuid)?;
    let pool = Pool::open_with(
        devs,
        Some(*uuid.as_bytes()),
        crate::meta::store::DEFAULT_CACHE_NODES,
    )?;
    for w in pool.warnings() {
        eprintln!("WARNING: {w}");
    }
    pool.activate()?;
    st.pools.insert(
        target.name.clone(),
        KnownPool {
            uuid: target.uuid.clone(),
            members: member_paths,
        },
    );
    state.save(&st)?;
    println!(
        "imported pool '{}' ({} of {} members){}",
        target.name,
        target.members_found,
        target.members_total,
        if pool.info().health != "online" {
            ", DEGRADED"
        } else {
            ""
        }
    );
    Ok(())
}
