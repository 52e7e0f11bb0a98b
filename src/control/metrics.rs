//! The Prometheus text exposition (format 0.0.4) of what the daemon knows:
//! per pool, volume and member requests, bytes, errors and latency
//! histograms; member error counts by kind and states; data and metadata
//! space; flushes; checksum and metadata repairs; the layout job; client
//! connections per frontend. Rendered from the pools' `PoolInfo` and
//! `PoolIoStats`, so it says what `pool status` and `pool iostat` say.
//! Names follow Prometheus' conventions (`_total` counters, base units:
//! seconds, bytes); `promtool check metrics` accepts the output.

use crate::device::stats::{IoCounters, KindCounters, LATENCY_BUCKETS_US};
use crate::pool::{PoolInfo, PoolIoStats};
use std::collections::BTreeMap;
use std::fmt::Write;

/// What one scrape shows.
pub struct Snapshot {
    pub pools: Vec<(PoolInfo, PoolIoStats)>,
    /// Open client connections, by frontend (`nbd`, `fuse`...).
    pub connections: Vec<(&'static str, u64)>,
}

/// Metric families in order of first use, each with its samples.
#[derive(Default)]
struct Families {
    order: Vec<&'static str>,
    help: BTreeMap<&'static str, (&'static str, &'static str)>,
    samples: BTreeMap<&'static str, Vec<String>>,
}

type Labels<'a> = &'a [(&'a str, &'a str)];

/// A label value as the format wants it: `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn label_text(labels: Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = (labels.iter())
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

impl Families {
    fn family(&mut self, name: &'static str, kind: &'static str, help: &'static str) {
        if !self.help.contains_key(name) {
            self.order.push(name);
            self.help.insert(name, (kind, help));
        }
    }

    /// One sample of family `name` (its `_bucket`, `_sum`, `_count` too).
    fn sample(&mut self, name: &'static str, suffix: &str, labels: Labels, value: f64) {
        let line = format!("{name}{suffix}{} {value}", label_text(labels));
        self.samples.entry(name).or_default().push(line);
    }

    fn gauge(&mut self, name: &'static str, help: &'static str, labels: Labels, v: f64) {
        self.family(name, "gauge", help);
        self.sample(name, "", labels, v);
    }

    fn counter(&mut self, name: &'static str, help: &'static str, labels: Labels, v: u64) {
        self.family(name, "counter", help);
        self.sample(name, "", labels, v as f64);
    }

    fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Labels,
        k: &KindCounters,
    ) {
        self.family(name, "histogram", help);
        let mut cumulative = 0;
        for (i, n) in k.buckets.iter().enumerate() {
            cumulative += n;
            let le = match LATENCY_BUCKETS_US.get(i) {
                Some(us) => format!("{}", *us as f64 / 1e6),
                None => "+Inf".into(),
            };
            let mut l = labels.to_vec();
            l.push(("le", &le));
            self.sample(name, "_bucket", &l, cumulative as f64);
        }
        self.sample(name, "_sum", labels, k.nanos as f64 / 1e9);
        self.sample(name, "_count", labels, k.ops as f64);
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for name in &self.order {
            let (kind, help) = self.help[name];
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for s in self.samples.get(name).into_iter().flatten() {
                let _ = writeln!(out, "{s}");
            }
        }
        out
    }
}

/// The names of one scope's I/O families (pool, volume or member).
struct IoFamilies {
    requests: &'static str,
    bytes: &'static str,
    errors: &'static str,
    duration: &'static str,
}

const POOL_IO: IoFamilies = IoFamilies {
    requests: "vpool_pool_requests_total",
    bytes: "vpool_pool_bytes_total",
    errors: "vpool_pool_request_errors_total",
    duration: "vpool_pool_request_duration_seconds",
};
const VOLUME_IO: IoFamilies = IoFamilies {
    requests: "vpool_volume_requests_total",
    bytes: "vpool_volume_bytes_total",
    errors: "vpool_volume_request_errors_total",
    duration: "vpool_volume_request_duration_seconds",
};
const MEMBER_IO: IoFamilies = IoFamilies {
    requests: "vpool_member_requests_total",
    bytes: "vpool_member_bytes_total",
    errors: "vpool_member_request_errors_total",
    duration: "vpool_member_request_duration_seconds",
};

/// One scope's I/O samples, carrying `labels` and the operation.
fn io(f: &mut Families, names: &IoFamilies, labels: Labels, c: &IoCounters) {
    let kinds = [
        ("read", &c.read),
        ("write", &c.write),
        ("flush", &c.flush),
        ("discard", &c.discard),
    ];
    for (op, k) in kinds {
        let mut l = labels.to_vec();
        l.push(("op", op));
        f.counter(names.requests, "Requests served, by operation.", &l, k.ops);
        if op != "flush" {
            f.counter(
                names.bytes,
                "Bytes read, written or discarded.",
                &l,
                k.bytes,
            );
        }
        f.counter(
            names.errors,
            "Requests that failed, by operation.",
            &l,
            k.errors,
        );
        f.histogram(names.duration, "Time requests took, by operation.", &l, k);
    }
}

/// The exposition text of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut f = Families::default();
    for (info, stats) in &s.pools {
        let pool = info.name.as_str();
        let p: Labels = &[("pool", pool)];
        f.gauge(
            "vpool_pool_info",
            "A pool this daemon serves (always 1), with its RAID level and uuid.",
            &[("pool", pool), ("level", &info.level), ("uuid", &info.uuid)],
            1.0,
        );
        for state in ["online", "degraded", "failed"] {
            f.gauge(
                "vpool_pool_health",
                "1 for the pool's health state, 0 for the others.",
                &[("pool", pool), ("state", state)],
                (info.health == state) as u8 as f64,
            );
        }
        let space: [(&'static str, &'static str, u64); 8] = [
            (
                "vpool_pool_capacity_bytes",
                "Data space of the pool.",
                info.capacity,
            ),
            (
                "vpool_pool_allocated_bytes",
                "Data space in use.",
                info.allocated,
            ),
            ("vpool_pool_free_bytes", "Data space free.", info.free),
            (
                "vpool_pool_virtual_bytes",
                "Sum of the volumes' sizes (thin: may exceed capacity).",
                info.virtual_bytes,
            ),
            (
                "vpool_pool_metadata_bytes",
                "Metadata space per copy.",
                info.metadata_total,
            ),
            (
                "vpool_pool_metadata_used_bytes",
                "Metadata space in use per copy.",
                info.metadata_used,
            ),
            (
                "vpool_pool_metadata_reserved_bytes",
                "Metadata space kept for removals.",
                info.metadata_reserved,
            ),
            (
                "vpool_pool_volumes",
                "Volumes (snapshots apart).",
                info.volumes as u64,
            ),
        ];
        for (name, help, v) in space {
            f.gauge(name, help, p, v as f64);
        }
        f.gauge(
            "vpool_pool_snapshots",
            "Snapshots.",
            p,
            info.snapshots as f64,
        );
        let counters: [(&'static str, &'static str, u64); 13] = [
            (
                "vpool_pool_flushes_total",
                "Client flushes since the pool was opened.",
                info.flushes,
            ),
            (
                "vpool_pool_flush_log_rounds_total",
                "Flush-log rounds that served them.",
                info.flush_log_rounds,
            ),
            (
                "vpool_pool_flush_commits_total",
                "Client flushes served by a whole commit.",
                info.flush_commits,
            ),
            (
                "vpool_pool_journaled_blocks_total",
                "4 KiB blocks written through the data journal (pools without a second copy).",
                info.journaled_blocks,
            ),
            (
                "vpool_pool_intent_rounds_total",
                "Flush-log rounds of write intents only (pools without a second copy, raid5 partial parities).",
                info.intent_rounds,
            ),
            (
                "vpool_pool_writes_in_place_total",
                "Small overwrites of committed data written in place after their intents.",
                info.writes_in_place,
            ),
            (
                "vpool_pool_writes_afresh_log_full_total",
                "Small overwrites written to fresh chunks because the flush log was full.",
                info.writes_afresh_log_full,
            ),
            (
                "vpool_pool_writes_named_ahead_total",
                "Small overwrites in place whose intents were named while they waited behind other requests.",
                info.writes_named_ahead,
            ),
            (
                "vpool_pool_commits_total",
                "Commits of the pool, for any reason.",
                info.commits,
            ),
            (
                "vpool_pool_room_waits_total",
                "Writes that found too little metadata room and waited for a commit.",
                info.room_waits,
            ),
            (
                "vpool_pool_metadata_repairs_total",
                "Metadata block copies rewritten from a good copy.",
                info.metadata_repairs,
            ),
            (
                "vpool_pool_checksum_repairs_total",
                "Data blocks rewritten from a good copy after a checksum mismatch on read.",
                info.checksum_repairs,
            ),
            (
                "vpool_pool_checksum_unrecoverable_total",
                "Data blocks read with no copy matching their checksum.",
                info.checksum_unrecoverable,
            ),
        ];
        for (name, help, v) in counters {
            f.counter(name, help, p, v);
        }
        io(&mut f, &POOL_IO, p, &stats.total);
        for v in &stats.volumes {
            io(
                &mut f,
                &VOLUME_IO,
                &[("pool", pool), ("volume", &v.name)],
                &v.io,
            );
        }
        for m in &info.members {
            let index = m.index.to_string();
            let device = m.device.clone().unwrap_or_default();
            let l: Labels = &[("pool", pool), ("member", &index), ("device", &device)];
            for state in ["online", "missing", "stale", "failed", "rebuilding"] {
                let mut sl = l.to_vec();
                sl.push(("state", state));
                f.gauge(
                    "vpool_member_state",
                    "1 for the member's state, 0 for the others.",
                    &sl,
                    (m.state == state) as u8 as f64,
                );
            }
            for (kind, n) in [
                ("read", m.errors.read),
                ("write", m.errors.write),
                ("checksum", m.errors.checksum),
            ] {
                let mut el = l.to_vec();
                el.push(("kind", kind));
                f.counter(
                    "vpool_member_errors_total",
                    "Member errors since the pool was opened or cleared, by kind (retried I/O counts each try).",
                    &el,
                    n,
                );
            }
            let counters = stats.members.iter().find(|s| s.index == m.index);
            if let Some(c) = counters.and_then(|s| s.io.as_ref()) {
                io(&mut f, &MEMBER_IO, l, c);
            }
        }
        if let Some(j) = &info.job {
            let l: Labels = &[("pool", pool), ("kind", &j.kind), ("state", &j.state)];
            f.gauge(
                "vpool_job_done_bytes",
                "Bytes the layout job has moved.",
                l,
                j.done_bytes as f64,
            );
            f.gauge(
                "vpool_job_total_bytes",
                "Bytes the layout job moves in all.",
                l,
                j.total_bytes as f64,
            );
            f.gauge(
                "vpool_job_rate_bytes_per_second",
                "Bytes per second the layout job moves.",
                l,
                j.rate as f64,
            );
        }
    }
    for (frontend, n) in &s.connections {
        f.gauge(
            "vpool_connections",
            "Open client connections, by frontend.",
            &[("frontend", frontend)],
            *n as f64,
        );
    }
    f.text()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_histograms_cumulative() {
        let mut f = Families::default();
        let mut k = KindCounters {
            ops: 3,
            nanos: 3_000_000,
            ..Default::default()
        };
        k.buckets[0] = 1;
        k.buckets[4] = 2;
        f.histogram("x_seconds", "h", &[("v", "a\"b\\c\nd")], &k);
        let t = f.text();
        assert!(t.contains("# TYPE x_seconds histogram"), "{t}");
        assert!(
            t.contains(r#"x_seconds_bucket{v="a\"b\\c\nd",le="0.00005"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"x_seconds_bucket{v="a\"b\\c\nd",le="0.001"} 3"#),
            "{t}"
        );
        assert!(
            t.contains(r#"x_seconds_bucket{v="a\"b\\c\nd",le="+Inf"} 3"#),
            "{t}"
        );
        assert!(t.contains(r#"x_seconds_sum{v="a\"b\\c\nd"} 0.003"#), "{t}");
        assert!(t.contains(r#"x_seconds_count{v="a\"b\\c\nd"} 3"#), "{t}");
    }
}
