//! `vpool job ...`: the background data movement of `pool add`.

use super::output::{json, table, Progress};
use super::{dispatch, report, Ctx};
use crate::control::Request;
use crate::pool::{JobInfo, PoolInfo};
use crate::units::format_size;
use clap::Subcommand;
use std::time::Duration;

#[derive(Subcommand, Debug)]
pub enum JobCmd {
    /// Jobs in progress on every pool: kind, progress, rate.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop a pool's job after its current step (data stays consistent).
    Pause { pool: String },
    /// Continue a paused job (without a daemon: run it here, to the end).
    Resume {
        pool: String,
        /// With a daemon: follow it until it completes.
        #[arg(long, short = 'w')]
        wait: bool,
    },
    /// Follow a pool's job until it completes.
    Wait { pool: String },
}

/// One line: `reshape 42.3% (1.2G of 2.8G) at 120 MB/s, ETA 13s, running`.
pub fn describe(j: &JobInfo) -> String {
    let mut s = format!(
        "{} {:.1}% ({} of {})",
        j.kind,
        j.percent,
        format_size(j.done_bytes),
        format_size(j.total_bytes)
    );
    if j.rate > 0 {
        s.push_str(&format!(" at {:.1} MB/s", j.rate as f64 / 1e6));
    }
    if let Some(eta) = j.eta_seconds {
        s.push_str(&format!(", ETA {eta}s"));
    }
    s.push_str(&format!(", {}", j.state));
    s
}

pub fn run(ctx: &Ctx, cmd: JobCmd) -> anyhow::Result<()> {
    match cmd {
        JobCmd::List { json: j } => {
            let resp = dispatch(ctx, Request::JobList)?;
            if j {
                return json(&resp.data);
            }
            let jobs: Vec<JobInfo> = serde_json::from_value(resp.data)?;
            if jobs.is_empty() {
                println!("no jobs");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = jobs
                .iter()
                .map(|j| {
                    vec![
                        j.pool.clone(),
                        match &j.volume {
                            Some(v) => format!("{} {v}", j.kind),
                            None => j.kind.clone(),
                        },
                        format!("{:.1}%", j.percent),
                        format_size(j.done_bytes),
                        format_size(j.total_bytes),
                        format!("{:.1} MB/s", j.rate as f64 / 1e6),
                        j.state.clone(),
                    ]
                })
                .collect();
            table(
                &["POOL", "JOB", "DONE", "MOVED", "TOTAL", "RATE", "STATE"],
                &rows,
            );
        }
        JobCmd::Pause { pool } => report(&dispatch(ctx, Request::JobPause { pool })?),
        JobCmd::Resume { pool, wait: w } => {
            report(&dispatch(ctx, Request::JobResume { pool: pool.clone() })?);
            if w {
                wait(ctx, &pool)?;
            }
        }
        JobCmd::Wait { pool } => wait(ctx, &pool)?,
    }
    Ok(())
}

/// Poll the pool's status with a progress bar until its job is gone.
pub fn wait(ctx: &Ctx, pool: &str) -> anyhow::Result<()> {
    let mut bar: Option<Progress> = None;
    let mut idle = 0;
    loop {
        let resp = dispatch(
            ctx,
            Request::PoolStatus {
                name: pool.to_string(),
            },
        )?;
        let info: PoolInfo = serde_json::from_value(resp.data)?;
        let Some(j) = info.job else {
            if let Some(b) = &bar {
                b.finish();
            }
            println!(
                "pool '{pool}': no job running; capacity {}",
                format_size(info.capacity)
            );
            return Ok(());
        };
        idle = if j.state == "waiting" { idle + 1 } else { 0 };
        if idle > 4 {
            anyhow::bail!(
                "nothing is running the job on pool '{pool}' (no daemon?); `vpool job resume {pool}` runs it"
            );
        }
        if j.state == "paused" {
            anyhow::bail!(
                "the job on pool '{pool}' is paused; `vpool job resume {pool}` continues it"
            );
        }
        bar.get_or_insert_with(|| Progress::new(&format!("{} {pool}", j.kind), j.total_bytes))
            .set(j.done_bytes);
        std::thread::sleep(Duration::from_millis(500));
    }
}
