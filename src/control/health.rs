//! Member health requests: `pool fail`, `pool replace`, `pool clear`.

use super::{Engine, Response};
use crate::device::open_members;
use crate::Pool;
use anyhow::bail;
use std::path::{Path, PathBuf};

/// The member a user named: a device path, a member index or a uuid.
fn resolve(pool: &Pool, name: &str, spec: &str) -> anyhow::Result<usize> {
    let n = pool.label().member_count();
    if let Ok(i) = spec.parse::<usize>() {
        if i < n {
            return Ok(i);
        }
    }
    if let Ok(u) = uuid::Uuid::parse_str(spec) {
        if let Some(i) = pool
            .label()
            .members
            .iter()
            .position(|m| m.uuid == *u.as_bytes())
        {
            return Ok(i);
        }
    }
    if let Some(i) = pool.member_by_path(Path::new(spec)) {
        return Ok(i);
    }
    let info = pool.info();
    let list: Vec<String> = info
        .members
        .iter()
        .map(|m| {
            format!(
                "{}: {} ({})",
                m.index,
                m.device
                    .clone()
                    .unwrap_or_else(|| format!("uuid {}", m.uuid)),
                m.state
            )
        })
        .collect();
    bail!(crate::Error::NotFound(format!(
        "{spec} is not a member of pool '{name}'; name a member by its device, index or uuid (members: {})",
        list.join(", ")
    )))
}

fn status(pool: &Pool, message: String, warnings: Vec<String>) -> anyhow::Result<Response> {
    Ok(Response {
        message: Some(message),
        warnings,
        data: serde_json::to_value(pool.info())?,
    })
}

pub fn pool_add_spares(
    engine: &dyn Engine,
    name: &str,
    devices: Vec<PathBuf>,
    force: bool,
) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    if devices.is_empty() {
        bail!(crate::Error::Invalid(
            "name the device(s) to add as spares".into()
        ));
    }
    let mut known = engine.member_paths(name)?;
    let mut lines = Vec::new();
    for (dev, path) in open_members(&devices)?.into_iter().zip(&devices) {
        lines.push(pool.add_spare(dev, force)?);
        known.push(crate::state::absolute(path));
        engine.adopt(name, pool.clone(), known.clone())?;
    }
    // A pool already degraded takes the spare at once.
    if let Some(line) = pool.use_spares()? {
        lines.push(line);
        lines.push(engine.run_job(name, &pool)?);
    }
    status(&pool, lines.join("\n"), Vec::new())
}

pub fn pool_scrub(engine: &dyn Engine, name: &str, check_only: bool) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    let info = pool.info();
    let total = info.allocated / info.chunk_size.max(1);
    let mut bar = engine.progress(&format!("scrub {name}"), total);
    let r = pool.scrub(check_only, |done, _| bar.set(done))?;
    bar.finish();
    let verb = if check_only { "found" } else { "repaired" };
    let mut lines = vec![format!(
        "scrubbed {} in {} chunks: {} blocks checked, {} with a bad copy, {} {verb}, {} unrecoverable",
        crate::units::format_size(r.bytes),
        r.chunks,
        r.blocks,
        r.bad_blocks,
        if check_only { r.bad_blocks } else { r.repaired },
        r.unrecoverable
    )];
    if r.parity_errors > 0 {
        lines.push(format!(
            "{} raid5 parity blocks disagreed with the data{}",
            r.parity_errors,
            if check_only {
                ""
            } else {
                " and were rewritten"
            }
        ));
    }
    if r.unverified > 0 {
        lines.push(format!(
            "{} blocks have no checksum (the pool was created without them): only mirrors and parity were compared{}",
            r.unverified,
            if r.mismatched > 0 { format!(", {} mirror blocks differ", r.mismatched) } else { String::new() }
        ));
    }
    if r.unrecoverable > 0 {
        lines.push(
            "blocks with no good copy read as errors: restore the affected volumes from a backup (`vpool pool status` lists the events)".into(),
        );
    } else if check_only && r.bad_blocks + r.parity_errors > 0 {
        lines.push(format!("run `vpool pool scrub {name}` to repair them"));
    }
    status(&pool, lines.join("\n"), Vec::new())
}

pub fn pool_fail(engine: &dyn Engine, name: &str, member: &str) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    let k = resolve(&pool, name, member)?;
    let message = pool.fail_member(k)?;
    status(&pool, message, Vec::new())
}

pub fn pool_replace(
    engine: &dyn Engine,
    name: &str,
    member: &str,
    device: &Path,
    force: bool,
) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    let k = resolve(&pool, name, member)?;
    // Checked before opening it: a member's device is locked by the pool.
    if pool.member_by_path(device).is_some() {
        bail!(crate::Error::Exists(format!(
            "{} is already a member of pool '{name}'",
            device.display()
        )));
    }
    let dev = open_members(&[device.to_path_buf()])?.remove(0);
    let (line, warnings) = pool.replace_member(k, dev, force)?;
    // Remember the new device at once: a restart mid-rebuild finds it.
    let mut known = engine.member_paths(name)?;
    known.push(crate::state::absolute(device));
    engine.adopt(name, pool.clone(), known)?;
    let job = engine.run_job(name, &pool)?;
    status(&pool, format!("{line}\n{job}"), warnings)
}

pub fn pool_clear(
    engine: &dyn Engine,
    name: &str,
    member: Option<&str>,
) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    let targets: Vec<usize> = match member {
        Some(m) => vec![resolve(&pool, name, m)?],
        None => (0..pool.label().member_count()).collect(),
    };
    let mut lines = Vec::new();
    if pool.failure().is_some() {
        // The device was fixed: back to the last commit, then the counters.
        lines.push(pool.reload_from_last_commit()?);
    }
    for k in targets {
        match pool.clear_member(k) {
            Ok(line) => lines.push(line),
            // Clearing every member: one that is missing is only reported.
            Err(e) if member.is_none() => lines.push(format!("member {k}: {e}")),
            Err(e) => return Err(e.into()),
        }
    }
    if pool.job().is_some() {
        lines.push(engine.run_job(name, &pool)?);
    }
    status(&pool, lines.join("\n"), Vec::new())
}
