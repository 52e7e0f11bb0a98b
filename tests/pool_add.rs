//! Needs root and FUSE (package fuse3): `pool add` and `pool remove`
//! through the real daemon while a client writes and verifies through the
//! FUSE file, on every level they support; SIGKILL in the middle of a raid5
//! reshape and of a raid0 member removal, restart, resume, verify.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn daemon_with_fuse(
    dir: &Path,
    level: &str,
    n: usize,
    size: u64,
    extra: &[&str],
    g: &mut Cleanup,
) -> (Daemon, PathBuf) {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    let state = dir.join("state");
    let mnt = dir.join("volumes");
    make_pool(&state, level, n, size, &["--stripe-unit", "16K"]);
    let mut args = vec!["--fuse-mount", mnt.to_str().unwrap()];
    args.extend_from_slice(extra);
    let d = Daemon::start_with(&state, &args);
    g.unmount_later(&mnt);
    (d, mnt)
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.vpool_ok(&["pool", "status", "tank", "--json"])).unwrap()
}

/// Block `i` of the volume holds `pattern(MIB, seed_of_block)`.
fn block(i: u64, round: u64) -> Vec<u8> {
    common::pattern(MIB as usize, i * 1000 + round)
}

fn read_block(f: &std::fs::File, i: u64) -> Vec<u8> {
    let mut b = vec![0u8; MIB as usize];
    f.read_exact_at(&mut b, i * MIB).unwrap();
    b
}

/// Rewrite blocks and read each back until `stop` (and at least 20
/// rounds); returns the round each block was last written in.
fn verifying_writer(
    f: &std::fs::File,
    blocks: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    let f = f.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut rounds = vec![0u64; blocks as usize];
        let mut k = 0u64;
        while !stop.load(Ordering::Relaxed) || k < 20 {
            let i = (k * 37) % blocks;
            rounds[i as usize] = k + 1;
            let data = block(i, k + 1);
            f.write_all_at(&data, i * MIB)
                .expect("write during the layout change");
            assert!(read_block(&f, i) == data, "block {i} verify");
            k += 1;
        }
        rounds
    })
}

/// Write every block of `tank/v` once and sync; returns the open file.
fn fill_volume(mnt: &Path, blocks: u64) -> std::fs::File {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("tank/v"))
        .unwrap();
    for i in 0..blocks {
        f.write_all_at(&block(i, 0), i * MIB).unwrap();
    }
    f.sync_all().unwrap();
    f
}

#[test]
fn pool_add_on_every_level_under_a_verifying_writer() {
    for (level, n) in [("linear", 2), ("raid0", 2), ("raid1", 2), ("raid5", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let mut g = Cleanup::default();
        let (d, mnt) = daemon_with_fuse(dir.path(), level, n, 160 * MIB, &[], &mut g);
        let before = status(&d)["capacity"].as_u64().unwrap();
        d.vpool_ok(&["vol", "create", "tank/v", "--size", "96M"]);
        let file = mnt.join("tank/v");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let blocks = 96u64;
        for i in 0..blocks {
            f.write_all_at(&block(i, 0), i * MIB).unwrap();
        }
        f.sync_all().unwrap();
        // A writer rewrites blocks and reads each back, through the whole add.
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        g.push(move || s.store(true, Ordering::Relaxed));
        let writer = verifying_writer(&f, blocks, stop.clone());
        let extra = dir.path().join("state/new.img");
        std::fs::File::create(&extra)
            .unwrap()
            .set_len(160 * MIB)
            .unwrap();
        let out = d.vpool_ok(&["pool", "add", "tank", extra.to_str().unwrap(), "--wait"]);
        assert!(out.contains("no job running"), "{level}: {out}");
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().expect("the writer never fails");
        for i in 0..blocks {
            assert!(
                read_block(&f, i) == block(i, rounds[i as usize]),
                "{level}: block {i} after the add"
            );
        }
        let st = status(&d);
        assert_eq!(st["members"].as_array().unwrap().len(), n + 1, "{level}");
        let after = st["capacity"].as_u64().unwrap();
        if level == "raid1" {
            assert_eq!(after, before);
        } else {
            assert!(after > before + 100 * MIB, "{level}: {before} -> {after}");
        }
        let jobs = d.vpool_ok(&["job", "list"]);
        assert!(jobs.contains("no jobs"), "{jobs}");
        drop(f);
        let mut d = d;
        d.stop();
        // The state file lists the new member: the pool opens with it.
        let out = ok(
            std::process::Command::new(vpool_bin())
                .args(["--state-dir", dir.path().join("state").to_str().unwrap()])
                .args(["pool", "status", "tank"]),
            60,
        );
        assert!(out.contains("new.img") && out.contains("ONLINE"), "{out}");
    }
}

/// SIGKILL the daemon once the job of `kind` passes each target percent,
/// restart it, check the job resumed and every `stride`-th block reads back;
/// then wait for the job and check every block. Returns the percents seen
/// at each kill.
fn kill_during_job(
    d: &mut Daemon,
    mnt: &Path,
    kind: &str,
    targets: &[f64],
    blocks: u64,
    stride: usize,
) -> Vec<f64> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .open(mnt.join("tank/v"))
            .unwrap()
    };
    let mut seen = Vec::new();
    for &target in targets {
        let start = Instant::now();
        loop {
            let st = status(d);
            let job = &st["job"];
            let pct = job["percent"].as_f64().unwrap_or(100.0);
            if job.is_null() || job["kind"] == kind && pct >= target {
                seen.push(pct);
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{kind} stuck: {st}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        d.kill();
        // A killed daemon leaves its FUSE mount behind; the restart cleans it.
        d.restart();
        let st = status(d);
        assert!(
            st["job"].is_object(),
            "the {kind} resumes after SIGKILL at {target}%: {st}"
        );
        // Every block reads back while the job goes on.
        let f = open();
        for i in (0..blocks).step_by(stride) {
            assert!(
                read_block(&f, i) == block(i, 0),
                "block {i} after kill at {target}%"
            );
        }
    }
    let out = d.vpool_ok(&["job", "wait", "tank"]);
    assert!(out.contains("no job running"), "{out}");
    let f = open();
    for i in 0..blocks {
        assert!(
            read_block(&f, i) == block(i, 0),
            "block {i} after the {kind}"
        );
    }
    seen
}

/// `vpool check` without a daemon on exactly these member files is clean.
fn offline_check_clean(members: &[PathBuf]) {
    let mut cmd = std::process::Command::new(vpool_bin());
    cmd.arg("check").args(members);
    let out = ok(&mut cmd, 120);
    assert!(out.contains("no errors") || out.contains("clean"), "{out}");
}

#[test]
fn sigkill_during_raid5_reshape_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    // 60 MB/s: the reshape of ~1.1 GB takes long enough to kill it at chosen points.
    let (mut d, mnt) = daemon_with_fuse(
        dir.path(),
        "raid5",
        3,
        384 * MIB,
        &["--job-rate-limit", "60M"],
        &mut g,
    );
    d.vpool_ok(&["vol", "create", "tank/v", "--size", "600M"]);
    let blocks = 400u64;
    drop(fill_volume(&mnt, blocks));
    let extra = dir.path().join("state/new.img");
    std::fs::File::create(&extra)
        .unwrap()
        .set_len(384 * MIB)
        .unwrap();
    d.vpool_ok(&["pool", "add", "tank", extra.to_str().unwrap()]);
    let seen = kill_during_job(&mut d, &mnt, "reshape", &[15.0, 45.0, 75.0], blocks, 7);
    assert!(seen.iter().all(|p| *p < 100.0), "{seen:?}");
    d.stop();
    let state = dir.path().join("state");
    let mut members: Vec<PathBuf> = (0..3).map(|i| state.join(format!("d{i}.img"))).collect();
    members.push(extra);
    offline_check_clean(&members);
}

#[test]
fn pool_add_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid5", 3, 64 * MIB, &[]);
    let d = Daemon::start(&state);
    let member = state.join("d0.img");
    let o = d.vpool(&["pool", "add", "tank", member.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("already a member"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let small = state.join("small.img");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(40 * MIB)
        .unwrap();
    let o = d.vpool(&["pool", "add", "tank", small.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("at least"), "{err}");
    let o = d.vpool(&["pool", "add", "tank", "/nonexistent/x.img"]);
    assert!(!o.status.success());
    let o = d.vpool(&["job", "pause", "tank"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("no job"), "{err}");
    let st = status(&d);
    assert_eq!(st["members"].as_array().unwrap().len(), 3);
}

fn members_in_state_file(state: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(state.join("pools.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v["pools"]["tank"]["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn pool_remove_under_a_verifying_writer() {
    // linear: the first member holds all the data, so all of it moves;
    // raid0: every stripe is rewritten onto two members.
    for (level, leaving) in [("linear", 0), ("raid0", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let mut g = Cleanup::default();
        let (d, mnt) = daemon_with_fuse(dir.path(), level, 3, 160 * MIB, &[], &mut g);
        let before = status(&d)["capacity"].as_u64().unwrap();
        d.vpool_ok(&["vol", "create", "tank/v", "--size", "96M"]);
        let blocks = 96u64;
        let f = fill_volume(&mnt, blocks);
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        g.push(move || s.store(true, Ordering::Relaxed));
        let writer = verifying_writer(&f, blocks, stop.clone());
        let gone = state.join(format!("d{leaving}.img"));
        let out = d.vpool_ok(&["pool", "remove", "tank", gone.to_str().unwrap(), "--wait"]);
        assert!(
            out.contains("removing") && out.contains("no job running"),
            "{level}: {out}"
        );
        stop.store(true, Ordering::Relaxed);
        let rounds = writer.join().expect("the writer never fails");
        for i in 0..blocks {
            assert!(
                read_block(&f, i) == block(i, rounds[i as usize]),
                "{level}: block {i} after the removal"
            );
        }
        let st = status(&d);
        let members = st["members"].as_array().unwrap();
        assert_eq!(members.len(), 2, "{level}: {st}");
        assert!(!st.to_string().contains(&format!("d{leaving}.img")), "{st}");
        let after = st["capacity"].as_u64().unwrap();
        assert!(after < before * 3 / 4, "{level}: {before} -> {after}");
        // The state file forgets the device once the job is done.
        let known = members_in_state_file(&state);
        assert_eq!(known.len(), 2, "{level}: {known:?}");
        assert!(!known
            .iter()
            .any(|m| m.ends_with(&format!("d{leaving}.img"))));
        drop(f);
        let mut d = d;
        d.stop();
        d.restart();
        let f = OpenOptions::new()
            .read(true)
            .open(mnt.join("tank/v"))
            .unwrap();
        for i in 0..blocks {
            assert!(
                read_block(&f, i) == block(i, rounds[i as usize]),
                "{level}: block {i} after restart"
            );
        }
        drop(f);
        // The former member can join again without --force.
        d.vpool_ok(&["pool", "add", "tank", gone.to_str().unwrap(), "--wait"]);
        assert_eq!(status(&d)["members"].as_array().unwrap().len(), 3);
    }
}

#[test]
fn sigkill_during_raid0_member_removal_resumes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut g = Cleanup::default();
    let (mut d, mnt) = daemon_with_fuse(
        dir.path(),
        "raid0",
        3,
        256 * MIB,
        &["--job-rate-limit", "60M"],
        &mut g,
    );
    d.vpool_ok(&["vol", "create", "tank/v", "--size", "400M"]);
    let blocks = 300u64;
    drop(fill_volume(&mnt, blocks));
    let gone = state.join("d2.img");
    d.vpool_ok(&["pool", "remove", "tank", gone.to_str().unwrap()]);
    let seen = kill_during_job(&mut d, &mnt, "remove", &[20.0, 60.0], blocks, 5);
    assert!(seen.iter().all(|p| *p < 100.0), "{seen:?}");
    d.stop();
    // Offline check from the two remaining members alone.
    let members: Vec<PathBuf> = (0..2).map(|i| state.join(format!("d{i}.img"))).collect();
    offline_check_clean(&members);
}

#[test]
fn pool_remove_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid5", 3, 64 * MIB, &[]);
    let d = Daemon::start(&state);
    let expect_err = |args: &[&str], want: &str| {
        let o = d.vpool(args);
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    };
    let member = state.join("d1.img");
    expect_err(
        &["pool", "remove", "tank", member.to_str().unwrap()],
        "raid5",
    );
    expect_err(
        &["pool", "remove", "tank", "/nonexistent/x.img"],
        "not a member",
    );
    expect_err(
        &["pool", "remove", "nopool", member.to_str().unwrap()],
        "not found",
    );
    assert_eq!(status(&d)["members"].as_array().unwrap().len(), 3);
}
