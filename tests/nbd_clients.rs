//! End to end over NBD with real clients from Debian packages (qemu-utils,
//! libnbd-bin, fio): the `vpool daemon` serving thin volumes.

mod common;
use common::daemon::*;
use common::{pattern, MIB};
use std::process::Command;

fn setup(level: &str, members: usize, vol_size: &str) -> (tempfile::TempDir, Daemon) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, level, members, 1 << 30, &[]);
    let d = Daemon::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", vol_size]);
    (dir, d)
}

#[test]
fn qemu_io_patterns_across_chunk_and_stripe_boundaries() {
    require("qemu-io", "qemu-utils");
    let (_dir, d) = setup("raid5", 3, "64M");
    // Chunks are 128K (two 64K stripe units): straddle units, chunks and stripes.
    let spots: [(u64, u64, u8); 8] = [
        (0, 4096, 0x11),
        (65536 - 512, 1024, 0x22),
        (131072 - 4096, 8192, 0x33),
        (3 * 65536 + 100 * 512, 200 * 1024, 0x44),
        (MIB - 512, 3 * MIB, 0x55),
        (10 * MIB + 7 * 512, 512, 0x66),
        (20 * MIB, 4 * MIB, 0x77),
        (64 * MIB - 65536, 65536, 0x88),
    ];
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for (off, len, p) in spots {
        args.push("-c".into());
        args.push(format!("write -P {p} {off} {len}"));
    }
    for (off, len, p) in spots {
        args.push("-c".into());
        args.push(format!("read -P {p} {off} {len}"));
    }
    args.push("-c".into());
    args.push("read -P 0 40M 1M".into());
    args.push(d.unix_uri("tank/db"));
    let out = ok(Command::new("qemu-io").args(&args), 120);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    assert_eq!(out.matches("read ").count(), spots.len() + 1, "{out}");

    // qemu-img convert in and compare.
    let img = d.state.join("src.raw");
    std::fs::write(&img, pattern(64 * MIB as usize, 3)).unwrap();
    ok(
        Command::new("qemu-img").args([
            "convert",
            "-n",
            "-f",
            "raw",
            "-O",
            "raw",
            img.to_str().unwrap(),
            &d.uri("tank/db"),
        ]),
        120,
    );
    ok(
        Command::new("qemu-img").args([
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            img.to_str().unwrap(),
            &d.uri("tank/db"),
        ]),
        120,
    );
    let info = ok(
        Command::new("qemu-img").args(["info", &d.uri("tank/db")]),
        60,
    );
    assert!(info.contains("64 MiB"), "{info}");
}

fn sha(path: &std::path::Path) -> u32 {
    crc32fast::hash(&std::fs::read(path).unwrap())
}

#[test]
fn nbdcopy_in_and_out_and_map_and_list() {
    require("nbdcopy", "libnbd-bin");
    require("nbdinfo", "libnbd-bin");
    let (_dir, d) = setup("raid0", 3, "256M");
    let src = d.state.join("random.raw");
    std::fs::write(&src, pattern(256 * MIB as usize, 9)).unwrap();
    ok(
        Command::new("nbdcopy").args([src.to_str().unwrap(), &d.uri("tank/db")]),
        300,
    );
    let out = d.state.join("back.raw");
    ok(
        Command::new("nbdcopy").args([&d.uri("tank/db"), out.to_str().unwrap()]),
        300,
    );
    assert_eq!(sha(&src), sha(&out), "nbdcopy round trip");

    // A sparse map: new volume, two written regions, one trimmed back.
    // Raid0 over 3 members: 192K chunks, so 3M is 16 whole chunks.
    d.vpool_ok(&["vol", "create", "tank/sparse", "--size", "64M"]);
    ok(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 1 0 3M",
            "-c",
            "write -P 2 6M 6M",
            "-c",
            "discard 9M 3M",
            &d.unix_uri("tank/sparse"),
        ]),
        60,
    );
    let map = ok(
        Command::new("nbdinfo").args(["--map", "--json", &d.uri("tank/sparse")]),
        60,
    );
    let v: serde_json::Value = serde_json::from_str(&map).unwrap();
    let data: Vec<(u64, u64)> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"].as_u64() == Some(0))
        .map(|e| (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, vec![(0, 3 * MIB), (6 * MIB, 3 * MIB)], "map: {map}");

    d.vpool_ok(&["snap", "create", "tank/db@before"]);
    let list = ok(
        Command::new("nbdinfo").args(["--list", "--json", &d.uri("")]),
        60,
    );
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    for want in ["tank/db", "tank/db@before", "tank/sparse"] {
        assert!(names.contains(&want), "{names:?}");
    }
    let snap = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["export-name"] == "tank/db@before")
        .unwrap();
    assert_eq!(snap["is_read_only"], true, "{snap}");
}

fn fio(d: &Daemon, export: &str, rw: &str, bs: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--name=vpool".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={}", d.uri(export)),
        format!("--rw={rw}"),
        format!("--bs={bs}"),
        "--iodepth=16".into(),
        "--numjobs=2".into(),
        "--size=48M".into(),
        "--offset_increment=64M".into(),
        "--verify=crc32c".into(),
        "--verify_state_save=0".into(),
        "--randrepeat=1".into(),
        "--group_reporting".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(Command::new("fio").args(&args), 600)
}

#[test]
fn fio_verify_multi_conn_survives_sigkill() {
    require("fio", "fio");
    for (level, n) in [("raid0", 3), ("raid1", 2), ("raid5", 3)] {
        let (_dir, mut d) = setup(level, n, "256M");
        // Write, flush at the end (end_fsync), verify.
        fio(&d, "tank/db", "randwrite", "4k", &["--end_fsync=1"]);
        fio(
            &d,
            "tank/db",
            "write",
            "1M",
            &["--offset=128M", "--end_fsync=1"],
        );
        d.kill();
        d.restart();
        // Everything flushed before the kill verifies.
        fio(&d, "tank/db", "randwrite", "4k", &["--verify_only"]);
        fio(
            &d,
            "tank/db",
            "write",
            "1M",
            &["--offset=128M", "--verify_only"],
        );
        assert!(d.log().contains("pool imported"), "{level}");
    }
}

#[test]
fn quickstart_serves_the_demo_pool() {
    require("nbdinfo", "libnbd-bin");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = Command::new(vpool_bin())
        .args([
            "quickstart",
            "--dir",
            dir.path().join("demo").to_str().unwrap(),
            "--nbd-listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed().as_secs() < 60,
            "quickstart did not start serving"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let list = run(
        Command::new("nbdinfo").args(["--list", &format!("nbd://127.0.0.1:{port}")]),
        60,
    );
    let read = run(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-r",
            "-c",
            "read -v 0 17",
            &format!("nbd://127.0.0.1:{port}/demo/vol1"),
        ]),
        60,
    );
    // SAFETY: our own child, by PID.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(String::from_utf8_lossy(&list.stdout).contains("demo/vol1@first"));
    assert!(
        String::from_utf8_lossy(&read.stdout).contains("hello.from.vpool"),
        "{}",
        String::from_utf8_lossy(&read.stdout)
    );
    assert!(status.success(), "clean shutdown on SIGTERM");
}

/// Who may reach a volume (issue 20): by default the daemon serves NBD on
/// its unix socket only, and only to its owner (mode 0600 whatever the
/// umask). Root lists and reads the volumes with nbdinfo; the unprivileged
/// user `nobody` is refused, even with every directory on the way open to
/// it; and no TCP listener exists.
#[test]
fn nbd_is_owner_only_by_default() {
    require("nbdinfo", "libnbd-bin");
    require("setpriv", "util-linux");
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 256 << 20, &[]);
    let d = Daemon::start_unix_only(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "16M"]);
    let sock = state.join("nbd.sock");
    let start = std::time::Instant::now();
    while !sock.exists() && start.elapsed().as_secs() < 30 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the NBD socket is owner-only");
    // Open the way to the socket, so that only its own mode refuses.
    for p in [dir.path(), state.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let uri = format!("nbd+unix:///tank/db?socket={}", sock.display());
    let root = run(Command::new("nbdinfo").args(["--size", &uri]), 60);
    assert!(
        root.status.success(),
        "root is served: {}",
        String::from_utf8_lossy(&root.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&root.stdout).trim(),
        (16 << 20).to_string()
    );
    let nobody = run(
        Command::new("setpriv").args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "nbdinfo",
            "--size",
            &uri,
        ]),
        60,
    );
    let err = String::from_utf8_lossy(&nobody.stderr);
    assert!(!nobody.status.success(), "nobody must be refused");
    assert!(
        err.contains("ermission denied"),
        "refused by the socket's mode: {err}"
    );
    let log = d.log();
    assert!(
        log.contains("NBD listening on")
            && !log.contains("NBD listening on 127.")
            && !log.contains("NBD listening on 0."),
        "no TCP listener without --nbd-listen: {log}"
    );
}
