//! `vpool pool iostat` and the control API's counters: what a real NBD
//! client (qemu-io) writes, reads and flushes moves the volume's counters by
//! exactly its bytes, reaches every raid1 member, and shows in the CLI's
//! reports; interval reports cover only their interval.

mod common;
use common::daemon::*;
use serde_json::Value;
use std::process::{Command, Stdio};

const MIB: u64 = 1 << 20;

fn counters(d: &Daemon) -> Value {
    let (status, v) = d.api("GET", "/v1/iostat?pool=tank", None);
    assert_eq!(status, 200, "{v}");
    v["data"][0].clone()
}

fn qemu_io(d: &Daemon, cmds: &[&str]) {
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.to_string());
    }
    args.push(d.unix_uri("tank/db"));
    let out = ok(Command::new("qemu-io").args(&args), 120);
    assert!(!out.contains("failed"), "{out}");
}

fn volume<'a>(c: &'a Value, name: &str) -> &'a Value {
    (c["volumes"].as_array().unwrap().iter())
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {c}"))
}

#[test]
fn counters_follow_a_real_client_and_the_cli_reports_them() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 512 * MIB, &[]);
    let mut d = Daemon::start_unix_only(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "64M"]);

    let before = counters(&d);
    qemu_io(&d, &["write -P 0xab 0 8M", "flush", "read -P 0xab 0 4M"]);
    let after = counters(&d);
    let v = volume(&after, "tank/db");
    let io = &v["io"];
    let old = (before["volumes"].as_array().unwrap().iter())
        .find(|x| x["name"] == "tank/db")
        .map(|x| x["io"].clone())
        .unwrap_or(Value::Null);
    let delta = |kind: &str, field: &str| {
        io[kind][field].as_u64().unwrap() - old[kind][field].as_u64().unwrap_or(0)
    };
    assert_eq!(delta("write", "bytes"), 8 * MIB, "{v}");
    assert_eq!(delta("read", "bytes"), 4 * MIB, "{v}");
    assert!(delta("flush", "ops") >= 1, "{v}");
    assert_eq!(delta("write", "errors") + delta("read", "errors"), 0);
    let buckets: u64 = (io["write"]["buckets"].as_array().unwrap().iter())
        .map(|b| b.as_u64().unwrap())
        .sum();
    assert_eq!(
        buckets,
        io["write"]["ops"].as_u64().unwrap(),
        "every request in a latency bucket"
    );
    assert_eq!(
        after["total"]["write"]["bytes"], io["write"]["bytes"],
        "one volume: the total is its"
    );
    // Every byte written reached both mirrors (and metadata on top).
    let members = after["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    for (m, b) in members.iter().zip(before["members"].as_array().unwrap()) {
        let w = m["io"]["write"]["bytes"].as_u64().unwrap()
            - b["io"]["write"]["bytes"].as_u64().unwrap();
        assert!(w >= 8 * MIB, "member {m} wrote {w}");
        assert!(m["io"]["flush"]["ops"].as_u64().unwrap() >= 1, "{m}");
    }

    // The CLI: a table per report, members with -v, volumes with --volumes.
    let out = d.vpool_ok(&["pool", "iostat", "tank", "-v", "--volumes", "0.2", "2"]);
    assert_eq!(out.matches("POOL").count(), 2, "two reports:\n{out}");
    for want in ["d0.img", "d1.img", "tank/db", "RBYTES/s", "WLAT"] {
        assert!(out.contains(want), "{want} missing:\n{out}");
    }
    let first = out.lines().find(|l| l.starts_with("tank")).unwrap();
    assert_eq!(first.split_whitespace().count(), 11, "{first}");

    // An interval report covers its interval only: a 4M write made during
    // it, nothing before.
    let child = Command::new(vpool_bin())
        .args([
            "--state-dir",
            state.to_str().unwrap(),
            "pool",
            "iostat",
            "tank",
            "--json",
            "3",
            "2",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    qemu_io(&d, &["write -P 0xcd 16M 4M"]);
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let reports: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let second = &reports[1];
    let secs = second["seconds"].as_f64().unwrap();
    assert!((2.5..10.0).contains(&secs), "{second}");
    let bytes = second["pools"][0]["total"]["write_bytes"].as_f64().unwrap() * secs;
    assert!(
        (bytes - (4 * MIB) as f64).abs() < 0.01 * (4 * MIB) as f64,
        "the interval's writes: {bytes} bytes ({second})"
    );
    assert_eq!(
        second["pools"][0]["total"]["read_bytes"].as_f64(),
        Some(0.0),
        "{second}"
    );

    // Without the daemon there are no live counters: refused, saying what to do.
    d.stop();
    let o = d.vpool(&["pool", "iostat", "tank"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("start it (`vpool daemon`"),
        "{err}"
    );
}
