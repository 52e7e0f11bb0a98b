//! Member and job requests: `pool add`, `pool remove`, `job list/pause/resume`.

use super::{Engine, Response};
use crate::device::open_members;
use crate::raid::RaidLevel;
use anyhow::bail;
use std::path::PathBuf;

pub fn pool_add(
    engine: &dyn Engine,
    name: &str,
    devices: Vec<PathBuf>,
    force: bool,
) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    if devices.is_empty() {
        bail!(crate::Error::Invalid("name the device(s) to add".into()));
    }
    if devices.len() > 1 && pool.label().level != RaidLevel::Linear {
        bail!(crate::Error::Invalid(format!(
            "{} pools take one new member at a time: add the next when the reshape or resync finishes",
            pool.label().level
        )));
    }
    let mut known = engine.member_paths(name)?;
    for d in &devices {
        let abs = crate::state::absolute(d);
        if known.iter().any(|k| crate::state::absolute(k) == abs) {
            bail!(crate::Error::Exists(format!(
                "{} is already a member of pool '{name}'",
                d.display()
            )));
        }
    }
    let devs = open_members(&devices)?;
    let mut warnings = Vec::new();
    let mut lines = Vec::new();
    for (dev, path) in devs.into_iter().zip(&devices) {
        let (line, w) = pool.add_member(dev, force)?;
        lines.push(line);
        warnings.extend(w);
        known.push(path.clone());
        // Remember the member right away: a crash after this point still
        // finds every member at the next start.
        engine.adopt(name, pool.clone(), known.clone())?;
    }
    if pool.job().is_some() {
        lines.push(engine.run_job(name, &pool)?);
    }
    let message = lines.join("\n");
    Ok(Response {
        message: Some(message),
        warnings,
        data: serde_json::to_value(pool.info())?,
    })
}

pub fn pool_remove(
    engine: &dyn Engine,
    name: &str,
    device: &std::path::Path,
) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    if pool.remove_spare(device)? {
        return Ok(Response {
            message: Some(format!(
                "{} is no longer a spare of pool '{name}' (its label is marked free)",
                device.display()
            )),
            data: serde_json::to_value(pool.info())?,
            ..Default::default()
        });
    }
    let Some(k) = pool.member_by_path(device) else {
        let list: Vec<String> = pool
            .member_devices()
            .iter()
            .flatten()
            .map(|d| d.name())
            .collect();
        bail!(crate::Error::NotFound(format!(
            "{} is not a member of pool '{name}' (members: {})",
            device.display(),
            list.join(", ")
        )));
    };
    let mut lines = vec![pool.remove_member(k)?];
    lines.push(engine.run_job(name, &pool)?);
    Ok(Response {
        message: Some(lines.join("\n")),
        data: serde_json::to_value(pool.info())?,
        ..Default::default()
    })
}

pub fn job_list(engine: &dyn Engine) -> anyhow::Result<Response> {
    let mut jobs = Vec::new();
    for name in engine.pool_names()? {
        if let Ok(pool) = engine.pool(&name) {
            jobs.extend(pool.job());
            jobs.extend(pool.transfers());
        }
    }
    Ok(Response {
        data: serde_json::to_value(jobs)?,
        ..Default::default()
    })
}

pub fn job_pause(engine: &dyn Engine, name: &str) -> anyhow::Result<Response> {
    engine.pool(name)?.set_job_paused(true)?;
    Ok(Response {
        message: Some(format!(
            "job on pool '{name}' paused after its current step; `vpool job resume {name}` continues it (so does the next daemon start)"
        )),
        ..Default::default()
    })
}

pub fn job_resume(engine: &dyn Engine, name: &str) -> anyhow::Result<Response> {
    let pool = engine.pool(name)?;
    pool.set_job_paused(false)?;
    Ok(Response {
        message: Some(engine.run_job(name, &pool)?),
        ..Default::default()
    })
}
