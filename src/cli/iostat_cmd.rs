//! `vpool pool iostat`, like `zpool iostat`: operations, bandwidth and mean
//! latency per second, per pool (what clients asked of its volumes), per
//! member with `-v` (what reached each device, metadata included) and per
//! volume with `--volumes`. The first report covers the time since the
//! daemon opened the pool; each later one the interval before it.

use super::output::{emit, table_text};
use super::{dispatch, Ctx};
use crate::control::Request;
use crate::device::stats::{IoCounters, KindCounters};
use crate::pool::PoolIoStats;
use crate::units::format_size;
use clap::Args;
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct IostatArgs {
    /// `[POOL] [INTERVAL [COUNT]]`: a pool (default: every pool), seconds
    /// between reports (default: one report) and how many (default: until
    /// interrupted). Trailing numbers are the interval and count, as for
    /// `zpool iostat`.
    #[arg(num_args = 0..=3)]
    args: Vec<String>,
    /// Also show each member.
    #[arg(long, short = 'v')]
    verbose: bool,
    /// Also show each volume and snapshot with I/O.
    #[arg(long)]
    volumes: bool,
    /// One JSON object per report (rates per second), a line each.
    #[arg(long)]
    json: bool,
}

/// Rates of one row over one report's span.
#[derive(Serialize, Debug, Clone, PartialEq)]
pub struct Rates {
    pub name: String,
    pub read_ops: f64,
    pub write_ops: f64,
    pub flush_ops: f64,
    pub discard_ops: f64,
    pub read_bytes: f64,
    pub write_bytes: f64,
    /// Mean time per request in microseconds (`None`: no request).
    pub read_latency_us: Option<f64>,
    pub write_latency_us: Option<f64>,
    pub flush_latency_us: Option<f64>,
    /// Failed requests in the span.
    pub errors: u64,
}

#[derive(Serialize, Debug)]
struct PoolReport {
    pool: String,
    allocated: u64,
    free: u64,
    total: Rates,
    members: Vec<Rates>,
    volumes: Vec<Rates>,
}

#[derive(Serialize, Debug)]
struct Report {
    /// Seconds the rates are averaged over.
    seconds: f64,
    pools: Vec<PoolReport>,
}

/// Split `[POOL] [INTERVAL [COUNT]]`.
fn split(args: &[String]) -> anyhow::Result<(Option<String>, Option<f64>, Option<u64>)> {
    let numeric = |s: &String| s.parse::<f64>().is_ok();
    let n = args.iter().rev().take_while(|s| numeric(s)).count().min(2);
    let (names, nums) = args.split_at(args.len() - n);
    if names.len() > 1 {
        anyhow::bail!(crate::Error::Invalid(format!(
            "one pool at most, then INTERVAL and COUNT: got {}",
            args.join(" ")
        )));
    }
    let interval = match nums.first().map(|s| s.parse::<f64>()) {
        Some(Ok(v)) if v > 0.0 && v.is_finite() => Some(v),
        Some(_) => anyhow::bail!(crate::Error::Invalid(
            "the interval is a positive number of seconds".into()
        )),
        None => None,
    };
    let count = match nums.get(1).map(|s| s.parse::<u64>()) {
        Some(Ok(c)) if c > 0 => Some(c),
        Some(_) => anyhow::bail!(crate::Error::Invalid(
            "the count is a positive whole number".into()
        )),
        None => None,
    };
    Ok((names.first().cloned(), interval, count))
}

fn kind_latency(k: &KindCounters) -> Option<f64> {
    (k.ops > 0).then(|| k.mean_nanos() as f64 / 1_000.0)
}

pub fn rates(name: &str, d: &IoCounters, secs: f64) -> Rates {
    let per = |n: u64| n as f64 / secs;
    Rates {
        name: name.to_string(),
        read_ops: per(d.read.ops),
        write_ops: per(d.write.ops),
        flush_ops: per(d.flush.ops),
        discard_ops: per(d.discard.ops),
        read_bytes: per(d.read.bytes),
        write_bytes: per(d.write.bytes),
        read_latency_us: kind_latency(&d.read),
        write_latency_us: kind_latency(&d.write),
        flush_latency_us: kind_latency(&d.flush),
        errors: d.read.errors + d.write.errors + d.flush.errors + d.discard.errors,
    }
}

/// The report between `before` (none: since the pool was opened) and `now`.
fn report(now: &[PoolIoStats], before: Option<(&[PoolIoStats], f64)>) -> Report {
    let mut pools = Vec::new();
    let mut seconds = 0.0;
    for p in now {
        let prev = before.and_then(|(b, _)| b.iter().find(|q| q.pool == p.pool));
        let secs = match (before, prev) {
            (Some((_, s)), Some(_)) => s,
            _ => p.uptime_ns as f64 / 1e9,
        }
        .max(1e-3);
        seconds = secs;
        let zero = IoCounters::default();
        let delta = |c: &IoCounters, old: Option<&IoCounters>| c.since(old.unwrap_or(&zero));
        let members = (p.members.iter())
            .map(|m| {
                let old = prev
                    .and_then(|q| q.members.iter().find(|o| o.index == m.index))
                    .filter(|o| o.device == m.device)
                    .and_then(|o| o.io.as_ref());
                let name = m.device.clone().unwrap_or_else(|| "(missing)".into());
                let io = m.io.unwrap_or_default();
                rates(&name, &delta(&io, old), secs)
            })
            .collect();
        let volumes = (p.volumes.iter())
            .map(|v| {
                let old = prev
                    .and_then(|q| q.volumes.iter().find(|o| o.name == v.name))
                    .map(|o| &o.io);
                rates(&v.name, &delta(&v.io, old), secs)
            })
            .collect();
        let total = delta(&p.total, prev.map(|q| &q.total));
        pools.push(PoolReport {
            pool: p.pool.clone(),
            allocated: p.allocated,
            free: p.free,
            total: rates(&p.pool, &total, secs),
            members,
            volumes,
        });
    }
    Report { seconds, pools }
}

/// `12`, `950`, `1.2K`, `3.4M`: operations per second.
fn ops(v: f64) -> String {
    match v {
        v if v < 1_000.0 => format!("{v:.0}"),
        v if v < 1_000_000.0 => format!("{:.1}K", v / 1_000.0),
        v => format!("{:.1}M", v / 1_000_000.0),
    }
}

/// `-`, `850us`, `1.2ms`, `2.10s`: a mean latency.
fn latency(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(u) if u < 1_000.0 => format!("{u:.0}us"),
        Some(u) if u < 1_000_000.0 => format!("{:.1}ms", u / 1_000.0),
        Some(u) => format!("{:.2}s", u / 1_000_000.0),
    }
}

fn row(name: String, space: Option<(u64, u64)>, r: &Rates) -> Vec<String> {
    let (alloc, free) = match space {
        Some((a, f)) => (format_size(a), format_size(f)),
        None => ("-".into(), "-".into()),
    };
    vec![
        name,
        alloc,
        free,
        ops(r.read_ops),
        ops(r.write_ops),
        ops(r.flush_ops),
        format_size(r.read_bytes as u64),
        format_size(r.write_bytes as u64),
        latency(r.read_latency_us),
        latency(r.write_latency_us),
        latency(r.flush_latency_us),
    ]
}

fn text(r: &Report, verbose: bool, volumes: bool) -> String {
    let mut rows = Vec::new();
    for p in &r.pools {
        rows.push(row(p.pool.clone(), Some((p.allocated, p.free)), &p.total));
        if verbose {
            for m in &p.members {
                rows.push(row(format!("  {}", m.name), None, m));
            }
        }
        if volumes {
            for v in &p.volumes {
                rows.push(row(format!("  {}", v.name), None, v));
            }
        }
    }
    table_text(
        &[
            "POOL", "ALLOC", "FREE", "READ/s", "WRITE/s", "FLUSH/s", "RBYTES/s", "WBYTES/s",
            "RLAT", "WLAT", "FLAT",
        ],
        &rows,
    )
}

pub fn run(ctx: &Ctx, a: IostatArgs) -> anyhow::Result<()> {
    let (pool, interval, count) = split(&a.args)?;
    let fetch = || -> anyhow::Result<Vec<PoolIoStats>> {
        let resp = dispatch(ctx, Request::PoolIostat { pool: pool.clone() })?;
        Ok(serde_json::from_value(resp.data)?)
    };
    let mut before: Option<(Vec<PoolIoStats>, Instant)> = None;
    let mut printed = 0u64;
    loop {
        let now = fetch()?;
        let at = Instant::now();
        let prev = before
            .as_ref()
            .map(|(b, t)| (b.as_slice(), at.duration_since(*t).as_secs_f64()));
        let r = report(&now, prev);
        let out = match a.json {
            true => serde_json::to_string(&r)? + "\n",
            false if printed > 0 => format!("\n{}", text(&r, a.verbose, a.volumes)),
            false => text(&r, a.verbose, a.volumes),
        };
        if !emit(&out)? {
            return Ok(());
        }
        printed += 1;
        let Some(secs) = interval else { break };
        if count.is_some_and(|c| printed >= c) {
            break;
        }
        before = Some((now, at));
        std::thread::sleep(Duration::from_secs_f64(secs));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn arguments_split_like_zpool_iostat() {
        assert_eq!(split(&s(&[])).unwrap(), (None, None, None));
        assert_eq!(
            split(&s(&["tank"])).unwrap(),
            (Some("tank".into()), None, None)
        );
        assert_eq!(split(&s(&["2"])).unwrap(), (None, Some(2.0), None));
        assert_eq!(split(&s(&["1", "5"])).unwrap(), (None, Some(1.0), Some(5)));
        assert_eq!(
            split(&s(&["tank", "0.5", "3"])).unwrap(),
            (Some("tank".into()), Some(0.5), Some(3))
        );
        assert!(split(&s(&["a", "b"])).is_err());
        assert!(split(&s(&["0"])).is_err());
        assert!(split(&s(&["1", "0"])).is_err());
        assert!(split(&s(&["1", "1.5"])).is_err());
    }

    #[test]
    fn rates_are_per_second_with_mean_latency() {
        let c = IoCounters {
            write: KindCounters {
                ops: 100,
                bytes: 100 * 4096,
                nanos: 100 * 250_000,
                ..Default::default()
            },
            ..Default::default()
        };
        let r = rates("tank", &c, 2.0);
        assert_eq!((r.write_ops, r.write_bytes), (50.0, 50.0 * 4096.0));
        assert_eq!(r.write_latency_us, Some(250.0));
        assert_eq!(r.read_latency_us, None);
        assert_eq!(ops(1234.0), "1.2K");
        assert_eq!(latency(Some(1500.0)), "1.5ms");
        assert_eq!(latency(None), "-");
    }
}
