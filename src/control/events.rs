//! Events, as `zpool events` and zed give them: what changed in a pool that
//! an operator should hear of. The daemon compares each pool's state
//! ([`PoolInfo`]) with the one it saw a moment before ([`changes`]) and
//! records what changed, in order, with a sequence number; clients read
//! the events after a number they know (`GET /v1/events?after=N`, `vpool
//! events --follow`), and `--on-event COMMAND` runs a command for each.
//!
//! Classes: `member.failed`, `member.missing`, `member.online`,
//! `rebuild.started`, `rebuild.finished`, `job.started`, `job.finished`,
//! `job.paused`, `job.failed` (reshape, resync, evacuate, remove: said by
//! the job's runner, [`job_change`]), `pool.degraded`, `pool.failed`,
//! `pool.online`, `space.80`, `space.90`, `space.full`, `metadata.80`,
//! `metadata.90`, `checksum.repaired`, `checksum.unrecoverable`,
//! `scrub.started`, `scrub.finished`, `scrub.failed`.

use crate::pool::PoolInfo;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Event {
    /// Increasing from 1 since the daemon started.
    pub seq: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
    pub pool: String,
    pub class: String,
    /// info, warning or error.
    pub severity: String,
    pub message: String,
}

/// What [`changes`] finds: class, severity, message.
pub type Change = (&'static str, &'static str, String);

/// The events of a layout job (said by whoever runs it, at its start and
/// end, however short): `kind` is the job's (`rebuild`, `reshape`...),
/// `outcome` `None` at the start, else finished, paused or the error.
pub fn job_change(pool: &str, kind: &str, outcome: Option<Result<bool, String>>) -> Change {
    let rebuild = kind == "rebuild";
    match outcome {
        None => (
            if rebuild { "rebuild.started" } else { "job.started" },
            "info",
            format!("pool '{pool}': {kind} started"),
        ),
        Some(Ok(true)) => (
            if rebuild { "rebuild.finished" } else { "job.finished" },
            "info",
            format!("pool '{pool}': {kind} finished"),
        ),
        Some(Ok(false)) => ("job.paused", "info", format!("pool '{pool}': {kind} paused")),
        Some(Err(e)) => (
            "job.failed",
            "error",
            format!("pool '{pool}': {kind} stopped: {e}; `vpool pool status {pool}` says more, `vpool job resume {pool}` goes on"),
        ),
    }
}

/// The level of a use ratio: 0, 80, 90 or 100 (percent).
fn level(used: u64, total: u64, levels: &[u64]) -> u64 {
    if total == 0 {
        return 0;
    }
    let pct = used.saturating_mul(100) / total;
    levels
        .iter()
        .copied()
        .filter(|&l| pct >= l)
        .max()
        .unwrap_or(0)
}

/// The events between two states of one pool (`before`: none at the first
/// look, when only what needs attention is said).
pub fn changes(before: Option<&PoolInfo>, now: &PoolInfo) -> Vec<Change> {
    let mut out = Vec::new();
    let name = &now.name;
    let first = before.is_none();
    // Members.
    for m in &now.members {
        let was = before
            .and_then(|b| b.members.iter().find(|o| o.index == m.index))
            .map(|o| o.state.as_str());
        let dev = m.device.clone().unwrap_or_else(|| "(missing)".into());
        let why = (now.events.iter().rev())
            .find(|e| e.starts_with(&format!("member {} (", m.index)))
            .map(|e| format!(": {e}"))
            .unwrap_or_default();
        let change: Option<Change> = match (was, m.state.as_str()) {
            (w, s) if w == Some(s) => None,
            (_, "failed") => Some((
                "member.failed",
                "error",
                format!("pool '{name}': member {} ({dev}) failed{why}; replace it (`vpool pool replace {name} {} DEVICE`) or, once fixed, `vpool pool clear {name} {}`", m.index, m.index, m.index),
            )),
            (_, "missing") | (_, "stale") => Some((
                "member.missing",
                "error",
                format!("pool '{name}': member {} is {}; reattach it and restart, or `vpool pool replace`", m.index, m.state),
            )),
            (Some(_), "online") => Some((
                "member.online",
                "info",
                format!("pool '{name}': member {} ({dev}) is online", m.index),
            )),
            _ => None,
        };
        out.extend(change);
    }
    // Health.
    let was = before.map(|b| b.health.as_str());
    if was != Some(now.health.as_str()) && !(first && now.health == "online") {
        let (class, severity) = match now.health.as_str() {
            "failed" => ("pool.failed", "error"),
            "degraded" => ("pool.degraded", "warning"),
            _ => ("pool.online", "info"),
        };
        let why = now
            .failure
            .as_deref()
            .map(|f| format!(": {f}"))
            .unwrap_or_default();
        out.push((
            class,
            severity,
            format!("pool '{name}' is {}{why}", now.health.to_uppercase()),
        ));
    }
    // Space, as it rises through each level.
    let data = |i: &PoolInfo| level(i.allocated, i.capacity, &[80, 90, 100]);
    let (was, is) = (before.map_or(0, data), data(now));
    if is > was {
        let (class, severity) = match is {
            100 => ("space.full", "error"),
            90 => ("space.90", "warning"),
            _ => ("space.80", "warning"),
        };
        out.push((
            class,
            severity,
            format!(
                "pool '{name}': data space {}% used ({} of {}); free space (remove volumes or snapshots, discard) or add a member",
                now.allocated * 100 / now.capacity.max(1),
                crate::units::format_size(now.allocated),
                crate::units::format_size(now.capacity)
            ),
        ));
    }
    let meta = |i: &PoolInfo| level(i.metadata_used, i.metadata_total, &[80, 90]);
    let (was, is) = (before.map_or(0, meta), meta(now));
    if is > was {
        out.push((
            if is >= 90 {
                "metadata.90"
            } else {
                "metadata.80"
            },
            "warning",
            format!(
                "pool '{name}': metadata {}% used ({} of {}){}",
                now.metadata_used * 100 / now.metadata_total.max(1),
                crate::units::format_size(now.metadata_used),
                crate::units::format_size(now.metadata_total),
                if now.metadata_autogrow {
                    "; it grows on its own"
                } else {
                    "; grow it: `vpool pool set POOL metadata-size=SIZE`"
                }
            ),
        ));
    }
    // Checksums found bad on read.
    let (rep, unrec) = before.map_or((0, 0), |b| (b.checksum_repairs, b.checksum_unrecoverable));
    if now.checksum_repairs > rep {
        out.push((
            "checksum.repaired",
            "warning",
            format!(
                "pool '{name}': {} data blocks failed their checksum on one copy and were rewritten from another; `vpool pool status {name}` shows which member",
                now.checksum_repairs - rep
            ),
        ));
    }
    if now.checksum_unrecoverable > unrec {
        out.push((
            "checksum.unrecoverable",
            "error",
            format!(
                "pool '{name}': {} data blocks have no copy matching their checksum: reads of them fail with EIO; restore them from a backup",
                now.checksum_unrecoverable - unrec
            ),
        ));
    }
    // Scrubs.
    let scrub = |i: Option<&PoolInfo>| {
        i.and_then(|i| i.scrub.as_ref())
            .map(|s| (s.state.clone(), s.seconds))
    };
    let (was, is) = (scrub(before), scrub(Some(now)));
    if was != is && !first {
        if let Some(s) = &now.scrub {
            let r = &s.report;
            match s.state.as_str() {
                "running" if was.as_ref().is_none_or(|w| w.0 != "running") => out.push((
                    "scrub.started",
                    "info",
                    format!("pool '{name}': scrub started"),
                )),
                "finished" => out.push((
                    "scrub.finished",
                    if r.unrecoverable > 0 { "error" } else if r.bad_blocks + r.parity_errors + r.mismatched > 0 { "warning" } else { "info" },
                    format!(
                        "pool '{name}': scrub finished after {:.1}s: {} blocks checked, {} with a bad copy, {} repaired, {} unrecoverable, {} parity errors",
                        s.seconds, r.blocks, r.bad_blocks, r.repaired, r.unrecoverable, r.parity_errors
                    ),
                )),
                "failed" => out.push((
                    "scrub.failed",
                    "error",
                    format!("pool '{name}': scrub failed: {}", s.error.clone().unwrap_or_default()),
                )),
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{MemberInfo, ScrubStatus};

    fn pool() -> PoolInfo {
        PoolInfo {
            name: "tank".into(),
            health: "online".into(),
            capacity: 1000,
            metadata_total: 100,
            members: (0..2)
                .map(|index| MemberInfo {
                    index,
                    device: Some(format!("/d{index}")),
                    state: "online".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    fn classes(c: &[Change]) -> Vec<&str> {
        c.iter().map(|c| c.0).collect()
    }

    #[test]
    fn a_healthy_pool_at_first_look_says_nothing() {
        assert!(changes(None, &pool()).is_empty());
        let mut full = pool();
        full.allocated = 950;
        full.members[1].state = "failed".into();
        full.health = "degraded".into();
        let c = changes(None, &full);
        assert_eq!(classes(&c), ["member.failed", "pool.degraded", "space.90"]);
    }

    #[test]
    fn levels_are_said_once_as_they_rise() {
        let (mut a, mut b) = (pool(), pool());
        a.allocated = 700;
        b.allocated = 810;
        assert_eq!(classes(&changes(Some(&a), &b)), ["space.80"]);
        a.allocated = 820;
        assert!(changes(Some(&b), &a).is_empty(), "same level");
        b.allocated = 1000;
        b.metadata_used = 91;
        assert_eq!(
            classes(&changes(Some(&a), &b)),
            ["space.full", "metadata.90"]
        );
        assert_eq!(changes(Some(&a), &b)[0].1, "error");
        // Falling back re-arms: the next rise is said again.
        a.allocated = 500;
        b.allocated = 850;
        b.metadata_used = 0;
        assert_eq!(classes(&changes(Some(&a), &b)), ["space.80"]);
    }

    #[test]
    fn members_checksums_and_scrubs() {
        let a = pool();
        let mut b = pool();
        b.members[0].state = "failed".into();
        b.events = vec!["member 0 (/d0) FAILED: Write error: EIO; the pool runs degraded".into()];
        let c = changes(Some(&a), &b);
        assert_eq!(classes(&c), ["member.failed"]);
        assert!(c[0].2.contains("Write error: EIO"), "{}", c[0].2);
        assert!(
            c[0].2.contains("vpool pool replace tank 0 DEVICE"),
            "{}",
            c[0].2
        );
        let mut r = b.clone();
        r.members[0].state = "rebuilding".into();
        let mut o = r.clone();
        o.members[0].state = "online".into();
        assert!(changes(Some(&b), &r).is_empty(), "the job's runner says it");
        assert_eq!(classes(&changes(Some(&r), &o)), ["member.online"]);
        let mut k = pool();
        k.checksum_repairs = 3;
        k.checksum_unrecoverable = 1;
        let c = changes(Some(&a), &k);
        assert_eq!(classes(&c), ["checksum.repaired", "checksum.unrecoverable"]);
        assert!(
            c[0].2.starts_with("pool 'tank': 3 data blocks"),
            "{}",
            c[0].2
        );
        let mut s1 = pool();
        s1.scrub = Some(ScrubStatus {
            state: "running".into(),
            ..Default::default()
        });
        let mut s2 = s1.clone();
        s2.scrub = Some(ScrubStatus {
            state: "finished".into(),
            seconds: 2.0,
            ..Default::default()
        });
        assert_eq!(classes(&changes(Some(&a), &s1)), ["scrub.started"]);
        assert_eq!(classes(&changes(Some(&s1), &s2)), ["scrub.finished"]);
        assert!(changes(Some(&s2), &s2).is_empty());
    }

    #[test]
    fn jobs_are_told_by_their_runner() {
        assert_eq!(job_change("tank", "rebuild", None).0, "rebuild.started");
        assert_eq!(
            job_change("tank", "rebuild", Some(Ok(true))).0,
            "rebuild.finished"
        );
        assert_eq!(
            job_change("tank", "reshape", Some(Ok(true))).0,
            "job.finished"
        );
        let failed = job_change("tank", "resync", Some(Err("EIO".into())));
        assert_eq!((failed.0, failed.1), ("job.failed", "error"));
    }
}
