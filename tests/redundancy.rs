//! Redundancy end to end through the real daemon and fio (package fio):
//! on raid1 and raid5 pools, `fio --ioengine=nbd --verify=crc32c` runs
//! while a member is failed by `vpool pool fail`, then while `vpool pool
//! replace` rebuilds onto a new image; fio verifies during and after; then
//! the daemon restarts with another member's image gone (degraded start)
//! and everything still verifies, read in part from the rebuilt member.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use std::process::Command;

fn fio(uri: &str, rw: &str, offset: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--name=vpool".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        format!("--rw={rw}"),
        "--bs=4k".into(),
        "--iodepth=8".into(),
        "--numjobs=2".into(),
        "--size=24M".into(),
        format!("--offset={offset}"),
        "--offset_increment=32M".into(),
        "--verify=crc32c".into(),
        "--verify_state_save=0".into(),
        "--randrepeat=1".into(),
        "--group_reporting".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(Command::new("fio").args(&args), 600)
}

/// Run fio (write, then verify) on a thread while `during` runs.
fn fio_while(uri: &str, offset: &str, during: impl FnOnce()) {
    let (uri, offset) = (uri.to_string(), offset.to_string());
    let t = std::thread::spawn(move || fio(&uri, "randwrite", &offset, &["--end_fsync=1"]));
    // Let fio get going first.
    std::thread::sleep(std::time::Duration::from_millis(300));
    during();
    let out = t.join().expect("fio thread");
    assert!(out.contains("vpool"), "{out}");
}

/// Field `key` of member `index` in `pool status --json`.
fn member_field(d: &Daemon, index: usize, key: &str) -> Option<String> {
    let out = d.vpool_ok(&["pool", "status", "tank", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["members"][index][key].as_str().map(str::to_string)
}

fn member_state(d: &Daemon, index: usize) -> (String, String) {
    let get = |key| member_field(d, index, key).unwrap_or_default();
    (get("state"), get("device"))
}

fn health(d: &Daemon) -> String {
    let out = d.vpool_ok(&["pool", "status", "tank", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["health"].as_str().unwrap_or("").to_string()
}

#[test]
fn fio_verifies_through_fail_replace_and_a_degraded_start() {
    require("fio", "fio");
    for (level, n) in [("raid1", 2), ("raid5", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        make_pool(&state, level, n, 512 << 20, &[]);
        let mut d = Daemon::start(&state);
        d.vpool_ok(&["vol", "create", "tank/db", "--size", "256M"]);
        let uri = d.uri("tank/db");
        let victim = state.join("d1.img");
        let victim_s = victim.display().to_string();
        // 1. A member fails while fio writes.
        fio_while(&uri, "0", || {
            let out = d.vpool_ok(&["pool", "fail", "tank", &victim_s]);
            assert!(out.contains("pool replace"), "{level}: {out}");
        });
        assert_eq!(member_state(&d, 1).0, "failed", "{level}");
        assert_eq!(health(&d), "degraded", "{level}");
        fio(&uri, "randwrite", "0", &["--verify_only"]);
        // A second member cannot be failed on raid5.
        if level == "raid5" {
            let out = d.vpool(&["pool", "fail", "tank", "0"]);
            assert!(!out.status.success(), "{level}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("would lose data"), "{level}: {err}");
        }
        // 2. Replace it while fio writes elsewhere; the rebuild runs in the
        // daemon, online.
        let new = state.join("new.img");
        std::fs::File::create(&new)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
        let new_s = new.display().to_string();
        fio_while(&uri, "8M", || {
            let out = d.vpool_ok(&["pool", "replace", "tank", &victim_s, &new_s, "--wait"]);
            assert!(out.contains("rebuild"), "{level}: {out}");
        });
        d.vpool_ok(&["job", "wait", "tank"]);
        assert_eq!(
            member_state(&d, 1),
            ("online".into(), new_s.clone()),
            "{level}"
        );
        assert_eq!(health(&d), "online", "{level}");
        fio(&uri, "randwrite", "0", &["--verify_only"]);
        fio(&uri, "randwrite", "8M", &["--verify_only"]);
        // 3. Degraded start: another member's image is gone.
        d.stop();
        std::fs::remove_file(state.join("d0.img")).unwrap();
        d.restart();
        assert_eq!(health(&d), "degraded", "{level}");
        assert_eq!(member_state(&d, 0).0, "missing", "{level}");
        fio(&d.uri("tank/db"), "randwrite", "0", &["--verify_only"]);
        fio(&d.uri("tank/db"), "randwrite", "8M", &["--verify_only"]);
        let status = d.vpool_ok(&["pool", "status", "tank"]);
        assert!(status.contains("DEGRADED"), "{level}: {status}");
    }
}

/// Wait up to `secs` for the spare `spare` to be member `k`, online, in a
/// pool that is online with no job left.
fn spare_in_place(d: &Daemon, k: usize, spare: &str, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let (state, dev) = member_state(d, k);
        let status = d.vpool_ok(&["pool", "status", "tank"]);
        if (state.as_str(), dev.as_str()) == ("online", spare)
            && health(d) == "online"
            && !status.contains("job:")
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the spare did not take member {k}'s place: {state} {dev}\n{status}\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_hot_spare_takes_a_failed_members_place_in_the_daemon() {
    require("fio", "fio");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid5", 3, 512 << 20, &[]);
    let d = Daemon::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "128M"]);
    let spare = state.join("spare.img");
    std::fs::File::create(&spare)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let spare_s = spare.display().to_string();
    let out = d.vpool_ok(&["pool", "add", "tank", "--spare", &spare_s]);
    assert!(out.contains("hot spare"), "{out}");
    let status = d.vpool_ok(&["pool", "status", "tank"]);
    assert!(status.contains(&format!("spare: {spare_s}")), "{status}");
    let uri = d.uri("tank/db");
    fio(&uri, "randwrite", "0", &["--end_fsync=1"]);
    d.vpool_ok(&["pool", "fail", "tank", "2"]);
    // The daemon notices within a tick and rebuilds onto the spare.
    spare_in_place(&d, 2, &spare_s, 60);
    assert!(d.log().contains("hot spare"), "{}", d.log());
    fio(&uri, "randwrite", "0", &["--verify_only"]);
}

/// A raid5 `pool add` whose new member fails the reshape's first write
/// (its image on a 256 KiB tmpfs: ENOSPC on the 384 KiB copy of the first
/// rows): the new member is failed, the daemon's tick puts the hot spare in
/// its place, the reshape starts over onto it and ends, and fio verifies.
/// Before (2026-12-07) the job stayed stuck and the spare waited for it.
#[test]
fn a_hot_spare_takes_the_place_of_a_new_member_that_fails_the_first_step() {
    require("fio", "fio");
    require("mount", "mount");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid5", 3, 512 << 20, &[]);
    let mut cleanup = Cleanup::default();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&small),
        30,
    );
    cleanup.unmount_later(&small);
    let images = [small.join("new.img"), state.join("spare.img")];
    for p in &images {
        std::fs::File::create(p)
            .unwrap()
            .set_len(512 << 20)
            .unwrap();
    }
    let [new_s, spare_s] = images.map(|p| p.display().to_string());
    let d = Daemon::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "128M"]);
    let uri = d.uri("tank/db");
    fio(&uri, "randwrite", "0", &["--end_fsync=1"]);
    d.vpool_ok(&["pool", "add", "tank", "--spare", &spare_s]);
    // The job runs in the daemon; its first step fails on the new member.
    let _ = d.vpool(&["pool", "add", "tank", &new_s]);
    spare_in_place(&d, 3, &spare_s, 120);
    assert!(d.log().contains("starts over"), "{}", d.log());
    fio(&uri, "randwrite", "0", &["--verify_only"]);
    drop(d);
    drop(cleanup);
}

/// Bytes of a member image overwritten behind the daemon's back with `dd`:
/// `pool scrub --check-only` counts every damaged 4 KiB block exactly and
/// changes nothing, `pool scrub` repairs each one from redundancy, and fio
/// verifies everything it wrote.
#[test]
fn scrub_finds_and_repairs_dd_damage_exactly() {
    require("fio", "fio");
    for (level, n) in [("raid1", 2), ("raid5", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        make_pool(&state, level, n, 256 << 20, &[]);
        let d = Daemon::start(&state);
        d.vpool_ok(&["vol", "create", "tank/db", "--size", "128M"]);
        let uri = d.uri("tank/db");
        // Sequential whole chunks: allocated in order, so the damage below
        // lands on chunks in use (random overwrites of committed raid5
        // chunks move them, leaving holes).
        fio(&uri, "write", "0", &["--bs=1M", "--end_fsync=1"]);
        let status = |d: &Daemon| -> serde_json::Value {
            serde_json::from_str(&d.vpool_ok(&["pool", "status", "tank", "--json"])).unwrap()
        };
        let ds = status(&d)["data_start"].as_u64().unwrap();
        assert!(ds > 0, "{level}");
        // 256 blocks of member 1, 4 MiB into its data area (written by fio).
        let victim = state.join("d1.img");
        ok(
            Command::new("dd").args([
                "if=/dev/urandom",
                &format!("of={}", victim.display()),
                "bs=4096",
                &format!("seek={}", ds / 4096 + 1024),
                "count=256",
                "conv=notrunc",
                "oflag=direct",
            ]),
            60,
        );
        let out = d.vpool_ok(&["pool", "scrub", "tank", "--check-only"]);
        assert!(
            out.contains("run `vpool pool scrub tank`"),
            "{level}: {out}"
        );
        let r = status(&d)["scrub"]["report"].clone();
        let found = r["bad_blocks"].as_u64().unwrap() + r["parity_errors"].as_u64().unwrap();
        assert_eq!(found, 256, "{level}: {r}");
        assert_eq!(r["repaired"].as_u64(), Some(0), "{level}");
        let out = d.vpool_ok(&["pool", "scrub", "tank"]);
        assert!(out.contains("0 unrecoverable"), "{level}: {out}");
        let s = status(&d);
        let r = &s["scrub"]["report"];
        let fixed = r["repaired"].as_u64().unwrap() + r["parity_repaired"].as_u64().unwrap();
        assert_eq!(fixed, 256, "{level}: {r}");
        assert_eq!(
            s["members"][1]["errors"]["checksum"].as_u64(),
            Some(512),
            "{level}: {s}"
        );
        assert_eq!(
            s["members"][0]["errors"]["checksum"].as_u64(),
            Some(0),
            "{level}"
        );
        let table = d.vpool_ok(&["pool", "status", "tank"]);
        assert!(
            table.contains("CKSUM") && table.contains("scrub finished"),
            "{table}"
        );
        fio(&uri, "write", "0", &["--bs=1M", "--verify_only"]);
        d.vpool_ok(&["pool", "scrub", "tank", "--check-only"]);
        let r = status(&d)["scrub"]["report"].clone();
        assert_eq!(r["bad_blocks"].as_u64(), Some(0), "{level}: {r}");
        assert_eq!(r["parity_errors"].as_u64(), Some(0), "{level}: {r}");
    }
}

/// `pool replace` of a member in service, the daemon restarted mid-rebuild:
/// the old device serves again beside the new one (status says so), the
/// rebuild ends, fio verifies throughout; once it ended the old device is
/// gone from the status.
#[test]
fn a_replace_in_service_goes_on_with_the_old_device_across_a_restart() {
    replace_in_service_across_a_restart(false);
}

/// raid1 x2: the old device's metadata copy is the only current one left
/// when member 0's image is gone at the restart.
#[test]
fn a_replace_in_service_goes_on_from_the_old_device_alone_after_a_restart() {
    replace_in_service_across_a_restart(true);
}

fn replace_in_service_across_a_restart(without_member_0: bool) {
    require("fio", "fio");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 512 << 20, &[]);
    // Slow enough that the rebuild is still running at the restart.
    let mut d = Daemon::start_with(&state, &["--job-rate-limit", "4M"]);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "256M"]);
    let uri = d.uri("tank/db");
    fio(&uri, "randwrite", "0", &["--end_fsync=1"]);
    let old = state.join("d1.img").display().to_string();
    let new = state.join("new.img");
    std::fs::File::create(&new)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    let new_s = new.display().to_string();
    d.vpool_ok(&["pool", "replace", "tank", &old, &new_s]);
    let replacing = |d: &Daemon| member_field(d, 1, "replacing");
    assert_eq!(replacing(&d).as_deref(), Some(old.as_str()));
    d.stop();
    if without_member_0 {
        std::fs::remove_file(state.join("d0.img")).unwrap();
    }
    d.restart();
    let status = d.vpool_ok(&["pool", "status", "tank"]);
    assert!(status.contains(&format!("(replacing {old})")), "{status}");
    assert_eq!(replacing(&d).as_deref(), Some(old.as_str()), "{status}");
    assert_eq!(member_state(&d, 1), ("rebuilding".into(), new_s.clone()));
    if without_member_0 {
        // Gone, and stale from then on (written without it).
        assert_eq!(
            member_state(&d, 0),
            ("stale".into(), String::new()),
            "{status}"
        );
    }
    fio(&uri, "randwrite", "0", &["--verify_only"]);
    d.vpool_ok(&["job", "wait", "tank"]);
    assert_eq!(member_state(&d, 1), ("online".into(), new_s));
    assert_eq!(replacing(&d), None);
    let want = if without_member_0 {
        "degraded"
    } else {
        "online"
    };
    assert_eq!(health(&d), want);
    fio(&uri, "randwrite", "0", &["--verify_only"]);
    if without_member_0 {
        // The new member alone: it got every row and a metadata copy.
        d.stop();
        std::fs::remove_file(&old).unwrap();
        d.restart();
        assert_eq!(member_state(&d, 1).0, "online");
        fio(&uri, "randwrite", "0", &["--verify_only"]);
    }
}
