//! `vpool daemon --metrics-listen`: the exposition passes `promtool check
//! metrics`, and a real Prometheus server scraping it every second while
//! fio writes over NBD sees the counters move, then agree with fio's byte
//! count.

mod common;
use common::daemon::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A GET over HTTP/1.0 (no chunking): status and body.
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of the one sample of `name{labels}` in an exposition.
fn sample(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

/// A Prometheus server under a temp directory, stopped by PID.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: u16) -> Prometheus {
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: vpool\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, port };
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() || get(port, "/-/ready").0 != 200 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "prometheus not ready"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// The value of an instant query with one result, if it has one.
    fn query(&self, q: &str) -> Option<f64> {
        let (status, body) = get(self.port, &format!("/api/v1/query?query={}", encode(q)));
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while self.child.try_wait().ok().flatten().is_none() {
            if start.elapsed() > Duration::from_secs(20) {
                let _ = self.child.kill();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn prometheus_scrapes_counters_that_agree_with_fio() {
    require("fio", "fio");
    require("prometheus", "prometheus");
    require("promtool", "prometheus");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 512 << 20, &[]);
    let mport = free_port();
    let d = Daemon::start_with(&state, &["--metrics-listen", &format!("127.0.0.1:{mport}")]);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "128M"]);

    // The exposition is valid, and anything but GET /metrics is refused.
    let (status, text) = get(mport, "/metrics");
    assert_eq!(status, 200);
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    lint.stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let o = lint.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        sample(&text, "vpool_pool_health{pool=\"tank\",state=\"online\"}"),
        Some(1.0)
    );
    assert!(sample(&text, "vpool_pool_capacity_bytes{pool=\"tank\"}").unwrap() > 0.0);
    // `vol create` committed; no write has waited for metadata room.
    assert!(sample(&text, "vpool_pool_commits_total{pool=\"tank\"}").unwrap() >= 1.0);
    assert_eq!(
        sample(&text, "vpool_pool_room_waits_total{pool=\"tank\"}"),
        Some(0.0)
    );
    assert_eq!(get(mport, "/").0, 404);

    let prom = Prometheus::start(dir.path(), mport);
    // Targets are discovered a few seconds after start: wait for a scrape.
    let start = Instant::now();
    while prom.query(r#"up{job="vpool"}"#) != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "vpool never scraped"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let q = r#"vpool_volume_bytes_total{volume="tank/db",op="write"}"#;
    // fio at a bounded rate, so that scrapes land while it runs.
    let fio = Command::new("fio")
        .args([
            "--name=metrics",
            "--ioengine=nbd",
            &format!("--uri={}", d.uri("tank/db")),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=8",
            "--size=24M",
            "--rate_iops=1500",
            "--end_fsync=1",
            "--output-format=json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = fio.id();
    let mut seen = Vec::new();
    let start = Instant::now();
    loop {
        // SAFETY: probing our own child by PID (signal 0 sends nothing).
        let running = unsafe { libc::kill(pid as i32, 0) } == 0
            && std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| !s.contains(") Z "));
        if !running || start.elapsed() > Duration::from_secs(120) {
            break;
        }
        if let Some(v) = prom.query(q) {
            if seen.last() != Some(&v) {
                seen.push(v);
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = fio.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "fio: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    // fio may print notes before its JSON.
    let out = String::from_utf8_lossy(&o.stdout);
    let report: Value = serde_json::from_str(&out[out.find('{').unwrap_or(0)..])
        .unwrap_or_else(|e| panic!("fio's JSON: {e}: {out}"));
    let written = report["jobs"][0]["write"]["io_bytes"].as_f64().unwrap();
    assert!(written >= (24 << 20) as f64, "{written}");
    let moving: Vec<&f64> = seen.iter().filter(|&&v| v > 0.0 && v < written).collect();
    assert!(
        moving.len() >= 2,
        "the counter moves while fio runs: {seen:?}"
    );
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "never goes back: {seen:?}"
    );
    // Scraped after fio ends: fio's bytes, within 1%.
    let start = Instant::now();
    let last = loop {
        let v = prom.query(q).unwrap_or(0.0);
        if (v - written).abs() <= 0.01 * written || start.elapsed() > Duration::from_secs(30) {
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        (last - written).abs() <= 0.01 * written,
        "Prometheus has {last}, fio wrote {written}"
    );
    // Both mirrors took every byte; the NBD connection is gone.
    for m in ["0", "1"] {
        let q = format!(r#"vpool_member_bytes_total{{member="{m}",op="write"}}"#);
        let v = prom.query(&q).unwrap_or(0.0);
        assert!(v >= written, "member {m}: {v} < {written}");
    }
    let start = Instant::now();
    loop {
        let (_, text) = get(mport, "/metrics");
        let n = sample(&text, "vpool_connections{frontend=\"nbd\"}");
        if n == Some(0.0) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "connections: {n:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
