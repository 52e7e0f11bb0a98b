//! `vpool events` and `--on-event`: a pool filling past 80 and 90%, a member
//! failed and rebuilt reach a follower (`vpool events --follow --json`) and
//! the hook, in order, with what to do.

mod common;
use common::daemon::*;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// A `vpool events --follow --json` process, stopped by PID when dropped;
/// its events arrive on `rx`.
struct Follower {
    child: Child,
    rx: mpsc::Receiver<Value>,
}

impl Follower {
    fn start(state: &std::path::Path) -> Follower {
        let mut child = Command::new(vpool_bin())
            .args([
                "--state-dir",
                state.to_str().unwrap(),
                "events",
                "--follow",
                "--json",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
            }
        });
        Follower { child, rx }
    }

    /// Events until one of `class` arrives (within 60 s); all of them.
    fn until(&self, class: &str, got: &mut Vec<Value>) {
        let start = Instant::now();
        while !got.iter().any(|e| e["class"] == class) {
            let left = Duration::from_secs(60).saturating_sub(start.elapsed());
            match self.rx.recv_timeout(left) {
                Ok(v) => got.push(v),
                Err(_) => panic!("no {class} event; got {got:?}"),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by PID.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn classes(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["class"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_filling_pool_and_a_failed_member_are_told() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 128 * MIB, &[]);
    let hook_log = dir.path().join("hook.log");
    let hook = format!(
        "echo \"$VPOOL_EVENT_SEQ $VPOOL_EVENT_CLASS $VPOOL_EVENT_POOL $VPOOL_EVENT_SEVERITY\" >> {}",
        hook_log.display()
    );
    let mut d = Daemon::start_with(&state, &["--on-event", &hook]);
    let f = Follower::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "1G"]);
    let info: Value =
        serde_json::from_str(&d.vpool_ok(&["pool", "status", "tank", "--json"])).unwrap();
    let capacity = info["capacity"].as_u64().unwrap();

    // Fill past 80%, then past 90%.
    let mut got = Vec::new();
    let fill = |from: u64, to: u64| {
        let cmd = format!("write -P 7 {from} {}", to - from);
        ok(
            Command::new("qemu-io").args([
                "-f",
                "raw",
                "-c",
                &cmd,
                "-c",
                "flush",
                &d.unix_uri("tank/db"),
            ]),
            120,
        );
    };
    let mib = |f: f64| ((capacity as f64 * f) as u64 / MIB) * MIB;
    fill(0, mib(0.85));
    f.until("space.80", &mut got);
    fill(mib(0.85), mib(0.93));
    f.until("space.90", &mut got);
    let e = got.iter().find(|e| e["class"] == "space.90").unwrap();
    assert_eq!(e["severity"], "warning", "{e}");
    assert!(
        e["message"].as_str().unwrap().contains("add a member"),
        "{e}"
    );

    // A member failed, then rebuilt in place.
    d.vpool_ok(&["pool", "fail", "tank", "1"]);
    f.until("member.failed", &mut got);
    f.until("pool.degraded", &mut got);
    let e = got.iter().find(|e| e["class"] == "member.failed").unwrap();
    assert_eq!(e["severity"], "error");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("vpool pool replace tank 1"),
        "{e}"
    );
    d.vpool_ok(&["pool", "clear", "tank", "1", "--wait"]);
    f.until("rebuild.finished", &mut got);
    f.until("pool.online", &mut got);
    let c = classes(&got);
    let at = |class: &str| {
        c.iter()
            .position(|x| x == class)
            .unwrap_or_else(|| panic!("{class} in {c:?}"))
    };
    assert!(at("space.80") < at("space.90"), "{c:?}");
    assert!(at("member.failed") < at("rebuild.started"), "{c:?}");
    assert!(at("rebuild.started") < at("rebuild.finished"), "{c:?}");
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, once each: {seqs:?}"
    );

    // The hook ran for each, in order.
    let start = Instant::now();
    let last = got.last().unwrap();
    let want = format!(
        "{} {} tank {}",
        last["seq"],
        last["class"].as_str().unwrap(),
        last["severity"].as_str().unwrap()
    );
    loop {
        let log = std::fs::read_to_string(&hook_log).unwrap_or_default();
        if log.contains(&want) {
            let lines: Vec<&str> = log.lines().collect();
            for e in &got {
                let line = format!(
                    "{} {} tank {}",
                    e["seq"],
                    e["class"].as_str().unwrap(),
                    e["severity"].as_str().unwrap()
                );
                assert!(
                    lines.contains(&line.as_str()),
                    "{line} not in the hook's log:\n{log}"
                );
            }
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "hook log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // For people: a line per event, this pool's only.
    let text = d.vpool_ok(&["events", "tank"]);
    assert!(
        text.lines()
            .any(|l| l.contains("member.failed") && l.contains("error")),
        "{text}"
    );
    // Without the daemon: refused, saying what to do.
    drop(f);
    d.stop();
    let o = d.vpool(&["events"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("start it (`vpool daemon`"),
        "{err}"
    );
}
