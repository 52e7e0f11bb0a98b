//! Carrying out a [`Request`] against an [`Engine`].

use super::resizefs::refuse_in_use;
use super::{copy, Engine, Request, Response};
use crate::device::{open_members, DeviceRef};
use crate::meta::label::PoolState;
use crate::pool::group_by_pool;
use crate::pool::names::{validate, VolPath};
use crate::pool::VolumeInfo;
use crate::units::{format_size, parse_size};
use crate::{CreateOptions, Pool};
use anyhow::{anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn ok(message: String) -> anyhow::Result<Response> {
    Ok(Response {
        message: Some(message),
        ..Default::default()
    })
}

fn data<T: Serialize>(v: &T) -> anyhow::Result<Response> {
    Ok(Response {
        data: serde_json::to_value(v)?,
        ..Default::default()
    })
}

/// One row of `pool list`.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct PoolRow {
    pub name: String,
    pub health: String,
    pub level: Option<String>,
    pub size: u64,
    pub allocated: u64,
    pub free: u64,
    pub virtual_bytes: u64,
    pub error: Option<String>,
}

/// A pool found by `pool import` scanning.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct Importable {
    pub name: String,
    pub uuid: String,
    pub level: String,
    pub state: String,
    pub members_found: usize,
    pub members_total: usize,
    pub devices: Vec<String>,
}

pub fn execute(engine: &dyn Engine, req: Request) -> anyhow::Result<Response> {
    match req {
        Request::PoolCreate {
            name,
            raid,
            devices,
            stripe_unit,
            force,
            checksums,
            metadata_size,
        } => {
            if engine.pool_names()?.contains(&name) {
                bail!(crate::Error::Exists(format!(
                    "pool '{name}' (see `vpool pool list`)"
                )));
            }
            let devs = open_members(&devices)?;
            let mut opts = CreateOptions::new(raid);
            opts.stripe_unit = stripe_unit;
            opts.force = force;
            opts.checksums = checksums;
            opts.metadata_size = metadata_size;
            let (pool, warnings) = Pool::create(&name, devs, &opts)?;
            let i = pool.info();
            engine.adopt(&name, pool, devices)?;
            Ok(Response {
                message: Some(format!(
                    "created pool '{name}': {} over {} members, {} usable, chunk {}",
                    i.level,
                    i.members.len(),
                    format_size(i.capacity),
                    format_size(i.chunk_size)
                )),
                warnings,
                ..Default::default()
            })
        }
        Request::PoolList => {
            let mut rows = Vec::new();
            for name in engine.pool_names()? {
                rows.push(match engine.pool(&name) {
                    Ok(p) => {
                        let i = p.info();
                        PoolRow {
                            name,
                            health: i.health,
                            level: Some(i.level),
                            size: i.capacity,
                            allocated: i.allocated,
                            free: i.free,
                            virtual_bytes: i.virtual_bytes,
                            error: None,
                        }
                    }
                    Err(e) => PoolRow {
                        name,
                        health: "unavailable".into(),
                        level: None,
                        size: 0,
                        allocated: 0,
                        free: 0,
                        virtual_bytes: 0,
                        error: Some(format!("{e:#}")),
                    },
                });
            }
            data(&rows)
        }
        Request::PoolStatus { name } => data(&engine.pool(&name)?.info()),
        Request::Events { after, pool } => data(&engine.events(after, pool.as_deref())?),
        Request::PoolIostat { pool } => {
            if !engine.counts_io() {
                // Not `Unavailable`: its hint is about missing members.
                bail!(crate::Error::Invalid(
                    "I/O counters live in the daemon, which serves the volumes: start it (`vpool daemon`, or `systemctl start vpool`) and run this again".into()
                ));
            }
            let rows: Vec<crate::pool::PoolIoStats> = match pool {
                Some(name) => vec![engine.pool(&name)?.iostat()],
                // Every pool that is open; one that is not has no I/O.
                None => (engine.pool_names()?.iter())
                    .filter_map(|n| engine.pool(n).ok())
                    .map(|p| p.iostat())
                    .collect(),
            };
            data(&rows)
        }
        Request::PoolExport { name } => {
            refuse_in_use(engine, &name, None, &format!("exporting pool '{name}'"))?;
            engine.pool(&name)?.export()?;
            engine.release(&name)?;
            ok(format!("exported pool '{name}'; its members can be moved and imported with `vpool pool import`"))
        }
        Request::PoolImport {
            name,
            scan,
            devices,
            force,
        } => import(engine, name, scan, devices, force),
        Request::PoolDestroy { name, force } => {
            let vols = engine.pool(&name)?.info().volumes;
            if vols > 0 && !force {
                bail!(crate::Error::InUse(format!(
                    "pool '{name}' still holds {vols} volume(s); remove them first or pass --force to destroy them with the pool"
                )));
            }
            refuse_in_use(engine, &name, None, &format!("destroying pool '{name}'"))?;
            engine.pool(&name)?.destroy()?;
            engine.release(&name)?;
            ok(format!("destroyed pool '{name}'"))
        }
        Request::PoolCheck { name, repair } => data(&engine.pool(&name)?.check(repair)?),
        Request::PoolAdd {
            name,
            devices,
            force,
            spare: false,
        } => super::members::pool_add(engine, &name, devices, force),
        Request::PoolAdd {
            name,
            devices,
            force,
            spare: true,
        } => super::health::pool_add_spares(engine, &name, devices, force),
        Request::PoolRemove { name, device } => super::members::pool_remove(engine, &name, &device),
        Request::PoolFail { name, member } => super::health::pool_fail(engine, &name, &member),
        Request::PoolReplace {
            name,
            member,
            device,
            force,
        } => super::health::pool_replace(engine, &name, &member, &device, force),
        Request::PoolClear { name, member } => {
            super::health::pool_clear(engine, &name, member.as_deref())
        }
        Request::PoolScrub { name, check_only } => {
            super::health::pool_scrub(engine, &name, check_only)
        }
        Request::PoolSet {
            name,
            metadata_size,
            metadata_autogrow,
        } => {
            let pool = engine.pool(&name)?;
            let mut done = Vec::new();
            if let Some(on) = metadata_autogrow {
                done.push(pool.set_metadata_autogrow(on)?);
            }
            if let Some(size) = metadata_size {
                done.push(pool.set_metadata_size(size)?);
            }
            if done.is_empty() {
                bail!(crate::Error::Invalid(
                    "nothing to set: `vpool pool set POOL metadata-size=SIZE` or `metadata-autogrow=on|off`".into()
                ));
            }
            Ok(Response {
                message: Some(done.join("; ")),
                ..Default::default()
            })
        }
        Request::JobList => super::members::job_list(engine),
        Request::Mount { dir } => ok(engine.mount_fuse(&dir)?),
        Request::Unmount => ok(engine.unmount_fuse()?),
        Request::JobPause { pool } => super::members::job_pause(engine, &pool),
        Request::JobResume { pool } => super::members::job_resume(engine, &pool),
        Request::VolCreate { path, size } => {
            let p = VolPath::parse_volume(&path)?;
            let warnings = engine.pool(&p.pool)?.create_volume(&p.volume, size)?;
            Ok(Response {
                message: Some(format!("created volume '{p}' ({})", format_size(size))),
                warnings,
                ..Default::default()
            })
        }
        Request::VolList { pool } => {
            data(&collect(engine, pool.as_deref(), |v| v.kind == "volume")?)
        }
        Request::SnapList { pool, volume } => {
            let prefix = volume.map(|v| format!("{}/{v}@", pool.clone().unwrap_or_default()));
            data(&collect(engine, pool.as_deref(), |v| {
                v.kind == "snapshot" && prefix.as_ref().is_none_or(|p| v.name.starts_with(p))
            })?)
        }
        Request::VolImport { path, from, offset } => {
            let p = VolPath::parse_volume(&path)?;
            let vol = engine.pool(&p.pool)?.volume(&p.volume, None)?;
            ok(copy::import(engine, &vol, &from, offset)?)
        }
        Request::VolExport { path, to, force } => {
            let p = VolPath::parse(&path)?;
            let vol = engine
                .pool(&p.pool)?
                .volume(&p.volume, p.snapshot.as_deref())?;
            ok(copy::export(engine, &vol, &to, force)?)
        }
        Request::VolClone { source, target } => {
            let s = VolPath::parse_snapshot(&source)?;
            let t = VolPath::parse_volume(&target)?;
            if s.pool != t.pool {
                bail!(crate::Error::Invalid(format!(
                    "a clone lives in the pool of its snapshot: '{target}' is not in pool '{}'",
                    s.pool
                )));
            }
            engine
                .pool(&s.pool)?
                .clone_volume(&s.volume, s.snapshot.as_deref(), &t.volume)?;
            ok(format!("cloned '{s}' as '{t}'"))
        }
        Request::VolRollback { path } => {
            let p = VolPath::parse_snapshot(&path)?;
            let what = format!("rolling back '{}/{}'", p.pool, p.volume);
            refuse_in_use(engine, &p.pool, Some((&p.volume, false)), &what)?;
            let pool = engine.pool(&p.pool)?;
            pool.rollback(&p.volume, p.snapshot.as_deref().unwrap_or_default())?;
            // A snapshot keeps its own size: the volume may have changed size.
            if let Ok(size) = pool.volume(&p.volume, None).and_then(|v| v.size()) {
                engine.volume_resized(&p.pool, &p.volume, size);
            }
            ok(format!("rolled '{}/{}' back to '{p}'", p.pool, p.volume))
        }
        Request::VolResize {
            path,
            size,
            force,
            resize_fs,
        } => {
            let p = VolPath::parse_volume(&path)?;
            let pool = engine.pool(&p.pool)?;
            let current = pool.volume(&p.volume, None)?.size()?;
            let invalid = |e: String| anyhow!(crate::Error::Invalid(e));
            let new = if let Some(rest) = size.strip_prefix('+') {
                current.checked_add(parse_size(rest).map_err(invalid)?)
            } else if let Some(rest) = size.strip_prefix('-') {
                current.checked_sub(parse_size(rest).map_err(invalid)?)
            } else {
                Some(parse_size(&size).map_err(invalid)?)
            };
            let Some(new) = new.filter(|&n| n > 0) else {
                bail!(crate::Error::Invalid(format!(
                    "'{size}' would make the volume size zero or negative"
                )));
            };
            let file = engine.fuse_dir().map(|d| d.join(&p.pool).join(&p.volume));
            if new < current && !force {
                if let Some(u) = file
                    .iter()
                    .flat_map(|f| super::resizefs::loop_users(f))
                    .find(|u| u.mountpoint.is_some())
                {
                    bail!(crate::Error::InUse(format!(
                        "'{p}' backs {} mounted on {} ({}): shrinking under a mounted filesystem destroys it. \
                         Shrink the filesystem first and unmount it, or pass --force",
                        u.device,
                        u.mountpoint.unwrap_or_default(),
                        u.fstype.unwrap_or_default()
                    )));
                }
            }
            let warnings = pool.resize(&p.volume, new, force)?;
            engine.volume_resized(&p.pool, &p.volume, new);
            let mut msg = format!(
                "resized '{p}' from {} to {}",
                format_size(current),
                format_size(new)
            );
            if resize_fs && new > current {
                match &file {
                    Some(f) => {
                        for line in super::resizefs::grow(f) {
                            msg.push_str(&format!("\n  {line}"));
                        }
                    }
                    None => msg.push_str("\n  --resize-fs: volumes are not mounted as files (start the daemon with --fuse-mount)"),
                }
            }
            Ok(Response {
                message: Some(msg),
                warnings,
                ..Default::default()
            })
        }
        Request::VolRemove { path, recursive } => {
            let p = VolPath::parse_volume(&path)?;
            refuse_in_use(
                engine,
                &p.pool,
                Some((&p.volume, true)),
                &format!("removing '{p}'"),
            )?;
            engine.pool(&p.pool)?.remove_volume(&p.volume, recursive)?;
            ok(format!("removed volume '{p}'"))
        }
        Request::SnapCreate { path } => {
            let p = VolPath::parse_snapshot(&path)?;
            engine
                .pool(&p.pool)?
                .snapshot(&p.volume, p.snapshot.as_deref().unwrap_or_default())?;
            ok(format!("created snapshot '{p}'"))
        }
        Request::SnapRemove { path } => {
            let p = VolPath::parse_snapshot(&path)?;
            let file = format!("{}@{}", p.volume, p.snapshot.as_deref().unwrap_or_default());
            refuse_in_use(
                engine,
                &p.pool,
                Some((&file, false)),
                &format!("removing '{p}'"),
            )?;
            engine
                .pool(&p.pool)?
                .remove_snapshot(&p.volume, p.snapshot.as_deref().unwrap_or_default())?;
            ok(format!("removed snapshot '{p}'"))
        }
        Request::VolDiff { from, to } => data(&super::send::diff(engine, &from, &to)?),
        Request::ReceiveToken { target } => super::receive::token(engine, &target),
        Request::ReceiveAbort { target } => super::receive::abort(engine, &target),
    }
}

fn collect(
    engine: &dyn Engine,
    pool: Option<&str>,
    keep: impl Fn(&VolumeInfo) -> bool,
) -> anyhow::Result<Vec<VolumeInfo>> {
    let names = match pool {
        Some(p) => {
            validate("pool", p)?;
            vec![p.to_string()]
        }
        None => engine.pool_names()?,
    };
    let mut rows = Vec::new();
    for n in names {
        rows.extend(engine.pool(&n)?.list().into_iter().filter(|v| keep(v)));
    }
    Ok(rows)
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
        bail!(crate::Error::Invalid(
            "nothing to scan: give --scan DIR (a directory of images or /dev) or --device PATH"
                .into()
        ));
    }
    Ok(paths)
}

fn import(
    engine: &dyn Engine,
    name: Option<String>,
    scan: Vec<PathBuf>,
    devices: Vec<PathBuf>,
    force: bool,
) -> anyhow::Result<Response> {
    let paths = scan_paths(&scan, &devices)?;
    let mut devs: Vec<DeviceRef> = Vec::new();
    for p in &paths {
        match crate::device::open_member_readonly(p) {
            Ok(d) => devs.push(d),
            // A named device that cannot be read is worth saying why (an
            // RBD image's cluster unreachable, a library missing).
            Err(e) if devices.contains(p) => {
                eprintln!("WARNING: skipping {}: {e}", p.display());
            }
            Err(_) => {}
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
        return data(&found);
    };
    let matches: Vec<&Importable> = found
        .iter()
        .filter(|f| f.name == want || f.uuid == want)
        .collect();
    let target = match matches.as_slice() {
        [] => bail!(crate::Error::NotFound(format!(
            "no pool named '{want}' on the scanned devices (run without a name to list them)"
        ))),
        [one] => *one,
        _ => bail!(crate::Error::Invalid(format!(
            "several pools are named '{want}'; import by UUID"
        ))),
    };
    if engine.pool_names()?.contains(&target.name) {
        bail!(crate::Error::Exists(format!(
            "a pool named '{}' on this host",
            target.name
        )));
    }
    if target.state == "active" && !force {
        bail!(crate::Error::InUse(format!(
            "pool '{}' was not exported: it may be in use on another host. If it is not, import it with --force",
            target.name
        )));
    }
    let member_paths: Vec<PathBuf> = target
        .devices
        .iter()
        .map(|d| crate::state::absolute(&PathBuf::from(d)))
        .collect();
    // --force also fences a host that still holds an RBD member's lock.
    let devs = if force {
        crate::device::open_members_fenced(&member_paths)?
    } else {
        open_members(&member_paths)?
    };
    let uuid = uuid::Uuid::parse_str(&target.uuid)?;
    let pool = Pool::open_with(
        devs,
        Some(*uuid.as_bytes()),
        crate::thin::store::DEFAULT_CACHE_NODES,
    )?;
    let warnings = pool.warnings().to_vec();
    pool.activate()?;
    let degraded = pool.info().health != "online";
    engine.adopt(&target.name, pool, member_paths)?;
    Ok(Response {
        message: Some(format!(
            "imported pool '{}' ({} of {} members){}",
            target.name,
            target.members_found,
            target.members_total,
            if degraded { ", DEGRADED" } else { "" }
        )),
        warnings,
        ..Default::default()
    })
}
