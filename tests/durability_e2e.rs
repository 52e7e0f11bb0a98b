//! Issue 15's scenario end to end, as root with a real loop device: a
//! member whose backing file sits on a small tmpfs that fills up, so its
//! writes fail at writeback (buffered writes succeed, the fsync returns
//! EIO, the next fsync returns 0 with the data gone). Driven through the
//! real daemon with qemu-io and qemu-img over NBD.
//!
//! - linear: the client's write/flush gets EIO (never an acknowledged
//!   flush), the pool says FAILED and why, refuses writes, and after the
//!   space is fixed `pool clear` brings it back; a restart then reads
//!   every byte of what was flushed after.
//! - raid1 (the loop device and an image file on disk): the flush
//!   succeeds, the loop member is FAILED, and after a restart every byte
//!   reads back from the other mirror.
//! - with `daemon --direct-io` (O_DIRECT on block-device members): the
//!   same full member fails the client's writes themselves, and the pool
//!   stays in service (buffered, the error waits for an fsync, which
//!   fails the pool);
//!   and writes at odd offsets and lengths (the partial blocks read,
//!   changed and written whole) read back, also after a restart without
//!   it.

mod common;
use common::cleanup::Cleanup;
use common::daemon::{ok, require, run, vpool_bin, Daemon};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: u64 = 1 << 20;

/// A tmpfs of `size_mib` MiB under `dir` holding a sparse `file_mib` MiB
/// file, behind a loop device; all undone at cleanup.
fn full_member(c: &mut Cleanup, dir: &Path, size_mib: u64, file_mib: u64) -> (String, PathBuf) {
    let mnt = dir.join("tmpfs");
    std::fs::create_dir_all(&mnt).unwrap();
    ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}M"), "tmpfs"])
            .arg(&mnt),
        30,
    );
    c.unmount_later(&mnt);
    let file = mnt.join("member.img");
    std::fs::File::create(&file)
        .unwrap()
        .set_len(file_mib * MIB)
        .unwrap();
    (c.losetup(&file, &[]), mnt)
}

fn grow_tmpfs(mnt: &Path, size_mib: u64) {
    ok(
        Command::new("mount")
            .args(["-o", &format!("remount,size={size_mib}M")])
            .arg(mnt),
        30,
    );
}

/// A linear pool `tank` with a 200 MiB volume `v` on `full_member`'s
/// loop device (64 MiB of tmpfs behind 400): (device, tmpfs, state dir).
fn linear_on_full_member(c: &mut Cleanup, dir: &Path) -> (String, PathBuf, PathBuf) {
    let (loopdev, mnt) = full_member(c, dir, 64, 400);
    // The metadata area's pages (its first 5 MiB hold it) are taken in
    // the tmpfs first: only data writes meet the full backing. Otherwise
    // whether a commit's new metadata blocks also fail depends on which
    // pages earlier writes happened to take.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(mnt.join("member.img"))
            .unwrap();
        f.write_all_at(&vec![0u8; 8 * MIB as usize], 0).unwrap();
        f.sync_all().unwrap();
    }
    let state = dir.join("state");
    vpool(
        &state,
        &["pool", "create", "tank", "--raid", "linear", &loopdev],
    );
    vpool(&state, &["vol", "create", "tank/v", "--size", "200M"]);
    (loopdev, mnt, state)
}

fn vpool(state: &Path, args: &[&str]) -> String {
    ok(
        Command::new(vpool_bin())
            .arg("--state-dir")
            .arg(state)
            .args(args),
        120,
    )
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.vpool_ok(&["pool", "status", "tank", "--json"])).expect("json")
}

fn write_and_flush(d: &Daemon, data: &Path) -> std::process::Output {
    run(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            &format!("write -s {} 0 150M", data.display()),
            "-c",
            "flush",
            &d.uri("tank/v"),
        ]),
        300,
    )
}

fn identical(d: &Daemon, data: &Path) {
    let o = run(
        Command::new("qemu-img")
            .args(["compare", "-f", "raw", "-F", "raw"])
            .arg(data)
            .arg(d.uri("tank/v")),
        300,
    );
    assert!(
        o.status.success(),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn random_file(path: &Path, mib: u64) {
    let mut data = vec![0u8; (mib * MIB) as usize];
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for w in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
    }
    std::fs::write(path, data).unwrap();
}

fn setup() -> (tempfile::TempDir, Cleanup) {
    require("qemu-io", "qemu-utils");
    require("losetup", "mount");
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "this test needs root (tmpfs mounts and loop devices): run it as root, as tools/test-all.sh does"
    );
    // On the disk, not in /tmp (which may itself be a tmpfs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    (dir, Cleanup::default())
}

#[test]
fn root_linear_member_full_at_writeback_fails_the_flush_not_the_data() {
    let (dir, mut c) = setup();
    let (loopdev, mnt, state) = linear_on_full_member(&mut c, dir.path());
    let data = dir.path().join("data.raw");
    random_file(&data, 150);
    let mut d = Daemon::start(&state);
    // 150 MiB into a member whose backing holds 64: the write or the
    // flush fails; never both acknowledged.
    let o = write_and_flush(&d, &data);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "qemu-io must see the failure: {err}");
    assert!(err.contains("Input/output error"), "{err}");
    let s = status(&d);
    assert_eq!(s["health"], "failed", "{s}");
    let why = s["failure"].as_str().unwrap_or_default();
    assert!(
        why.contains("/dev/loop") && why.contains("pool clear"),
        "{why}"
    );
    let human = d.vpool_ok(&["pool", "status", "tank"]);
    assert!(
        human.contains("FAILED") && human.contains("vpool pool clear tank"),
        "{human}"
    );
    // No more writes, even small ones that would fit.
    let o = run(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 7 0 4k",
            "-c",
            "flush",
            &d.uri("tank/v"),
        ]),
        120,
    );
    assert!(!o.status.success(), "a failed pool takes no writes");
    // Fixed: more room behind the loop device, then `pool clear`.
    grow_tmpfs(&mnt, 512);
    let out = d.vpool_ok(&["pool", "clear", "tank"]);
    assert!(out.contains("reloaded from its last commit"), "{out}");
    assert_eq!(status(&d)["health"], "online");
    let o = write_and_flush(&d, &data);
    assert!(
        o.status.success(),
        "after pool clear: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    d.stop();
    d.restart();
    identical(&d, &data);
    d.stop();
    let report = vpool(&state, &["check", &loopdev]);
    assert!(
        report.contains("clean") || report.contains("no error"),
        "{report}"
    );
}

#[test]
fn root_raid1_member_full_at_writeback_is_failed_and_nothing_is_lost() {
    let (dir, mut c) = setup();
    let (loopdev, _mnt) = full_member(&mut c, dir.path(), 64, 400);
    let disk = dir.path().join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(400 * MIB)
        .unwrap();
    let state = dir.path().join("state");
    let disk_s = disk.display().to_string();
    vpool(
        &state,
        &[
            "pool", "create", "tank", "--raid", "raid1", &loopdev, &disk_s,
        ],
    );
    vpool(&state, &["vol", "create", "tank/v", "--size", "200M"]);
    let data = dir.path().join("data.raw");
    random_file(&data, 150);
    let mut d = Daemon::start(&state);
    let o = write_and_flush(&d, &data);
    assert!(
        o.status.success(),
        "the other mirror holds the data: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = status(&d);
    assert_eq!(s["health"], "degraded", "{s}");
    assert_eq!(s["members"][0]["state"], "failed", "{s}");
    assert_eq!(s["members"][1]["state"], "online", "{s}");
    assert!(
        s["members"][0]["errors"]["write"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    identical(&d, &data);
    d.stop();
    d.restart();
    let s = status(&d);
    assert_eq!(s["members"][0]["state"], "failed", "recorded: {s}");
    identical(&d, &data);
    d.stop();
}

/// Flags of the daemon's open descriptors on `dev` (octal, from fdinfo).
fn open_flags(pid: u32, dev: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).expect("the daemon's fds") {
        let e = e.expect("fd entry");
        let target = std::fs::read_link(e.path()).unwrap_or_default();
        if target != Path::new(dev) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok());
        out.extend(flags);
    }
    out
}

fn qemu_io(d: &Daemon, cmds: &[&str]) -> std::process::Output {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    run(c.arg(d.uri("tank/v")), 120)
}

fn qemu_io_ok(d: &Daemon, cmds: &[&str]) {
    let o = qemu_io(d, cmds);
    let out = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success()
            && !out.contains("Pattern verification failed")
            && !out.contains("error"),
        "qemu-io {cmds:?}: {out}"
    );
}

#[test]
fn root_direct_io_members_take_unaligned_writes_and_keep_them() {
    let (dir, mut c) = setup();
    let mut devs = Vec::new();
    for i in 0..2 {
        let f = dir.path().join(format!("m{i}.img"));
        std::fs::File::create(&f)
            .unwrap()
            .set_len(256 * MIB)
            .unwrap();
        devs.push(c.losetup(&f, &[]));
    }
    let state = dir.path().join("state");
    // Checksums off: writes in place reach the members byte for byte, so
    // the partial blocks at both ends go through the read-modify-write.
    vpool(
        &state,
        &[
            "pool",
            "create",
            "tank",
            "--raid",
            "raid1",
            "--checksums",
            "off",
            &devs[0],
            &devs[1],
        ],
    );
    vpool(&state, &["vol", "create", "tank/v", "--size", "64M"]);
    let mut d = Daemon::start_with(&state, &["--direct-io"]);
    for dev in &devs {
        let flags = open_flags(d.pid(), dev);
        assert!(!flags.is_empty(), "the daemon holds {dev} open");
        for f in flags {
            assert_ne!(
                f & libc::O_DIRECT as u32,
                0,
                "{dev} opened without O_DIRECT"
            );
        }
    }
    let s = status(&d);
    for m in s["members"].as_array().expect("members") {
        assert_eq!(m["direct_io"], true, "{s}");
    }
    let human = d.vpool_ok(&["pool", "status", "tank"]);
    assert!(human.contains("direct I/O (O_DIRECT)"), "{human}");
    // Written once whole, then overwritten in place at odd places (the
    // chunks are mapped now): within a sector, across sectors and pages,
    // the volume's last byte.
    let writes = [
        "write -P 0x5a 0 1M",
        "flush",
        "write -P 0x11 1000 3000",
        "write -P 0x22 4095 2",
        "write -P 0x33 70000 200000",
        "write -P 0x44 67108863 1",
        "flush",
    ];
    qemu_io_ok(&d, &writes);
    let reads = [
        "read -P 0x5a 0 1000",
        "read -P 0x11 1000 3000",
        "read -P 0x5a 4000 95",
        "read -P 0x22 4095 2",
        "read -P 0x5a 4097 65903",
        "read -P 0x33 70000 200000",
        "read -P 0x5a 270000 778576",
        "read -P 0x44 67108863 1",
    ];
    qemu_io_ok(&d, &reads);
    d.stop();
    drop(d);
    // Buffered again: the same bytes, on both mirrors (a scrub compares
    // them).
    let mut d = Daemon::start(&state);
    assert_eq!(status(&d)["members"][0]["direct_io"], false);
    qemu_io_ok(&d, &reads);
    d.vpool_ok(&["pool", "scrub", "tank", "--check-only"]);
    let r = status(&d)["scrub"]["report"].clone();
    assert!(r["bytes"].as_u64().unwrap_or(0) > 0, "{r}");
    assert_eq!(r["bad_blocks"].as_u64(), Some(0), "{r}");
    d.stop();
}

#[test]
fn root_direct_io_write_to_full_backing_fails_at_the_write() {
    let (dir, mut c) = setup();
    let (_loopdev, mnt, state) = linear_on_full_member(&mut c, dir.path());
    let mut d = Daemon::start_with(&state, &["--direct-io"]);
    // 150 MiB into a member whose backing holds 64, without a flush.
    // Buffered, the lost writeback surfaces at the next fsync (a round of
    // the flush log's, or the client's flush), which fails the pool; with
    // O_DIRECT the writes that hit it fail, and only they.
    let o = qemu_io(&d, &["write -P 9 0 150M"]);
    let err = String::from_utf8_lossy(&o.stderr).to_string() + &String::from_utf8_lossy(&o.stdout);
    assert!(
        err.contains("write failed") && err.contains("Input/output error"),
        "the write must fail: {err}"
    );
    // The error went to the writes it belongs to: the member counts it,
    // and nothing is left for a flush to find (buffered, this flush fails:
    // checked by undoing O_DIRECT).
    let s = status(&d);
    assert!(
        s["members"][0]["errors"]["write"].as_u64().unwrap_or(0) >= 1,
        "{s}"
    );
    qemu_io_ok(&d, &["flush"]);
    assert_eq!(status(&d)["health"], "online");
    // Room again behind the loop device: writes go on, and stay.
    grow_tmpfs(&mnt, 512);
    qemu_io_ok(&d, &["write -P 7 0 150M", "flush"]);
    d.stop();
    d.restart();
    qemu_io_ok(&d, &["read -P 7 0 150M"]);
    d.stop();
}
