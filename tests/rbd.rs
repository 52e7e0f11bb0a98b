//! Pool members on Ceph RBD images, against a real single-node cluster
//! (`tools/ceph-test-cluster`; packages ceph-mon, ceph-osd, ceph-common,
//! librbd1) through the real daemon, fio, nbdcopy and qemu-io: a raid1 pool
//! over two images serves fio verify and moves to another host (another
//! state directory and hostname) with every byte equal; the member lock
//! refuses a second owner and `import --force` fences the first; a mirror
//! of a local file and an image keeps serving through an OSD outage and
//! resyncs after it; a linear pool on an image never acknowledges a flush
//! the cluster did not take.

mod common;

use common::ceph::{as_host, Cluster};
use common::daemon::{ok, require, run, vpool_bin, Daemon};
use std::path::Path;
use std::process::{Command, Output};

fn vpool(state: &Path, args: &[&str]) -> Output {
    run(
        Command::new(vpool_bin())
            .arg("--state-dir")
            .arg(state)
            .args(args),
        180,
    )
}

fn vpool_ok(state: &Path, args: &[&str]) -> String {
    let o = vpool(state, args);
    assert!(o.status.success(), "vpool {args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into()
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr)
}

/// fio over NBD with crc32c verification: write then verify (or, with
/// `--verify_only`, verify what an earlier run wrote).
fn fio(uri: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "--name=v".to_string(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=64k".into(),
        "--iodepth=8".into(),
        "--size=32M".into(),
        "--verify=crc32c".into(),
        "--randseed=7".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    ok(Command::new("fio").args(&args), 600)
}

/// The volume's bytes, read over NBD.
fn contents(d: &Daemon, dir: &Path, what: &str) -> Vec<u8> {
    let out = dir.join(format!("{what}.raw"));
    ok(
        Command::new("nbdcopy").arg(d.unix_uri("tank/v")).arg(&out),
        300,
    );
    std::fs::read(&out).expect("copy")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn requires() {
    require("fio", "fio");
    require("nbdcopy", "libnbd-bin");
    require("qemu-io", "qemu-utils");
    assert!(
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() } == 0,
        "this test needs root (a UTS namespace stands in for a second host)"
    );
}

#[test]
fn raid1_on_two_images_serves_fio_refuses_a_second_owner_and_moves_to_another_host() {
    requires();
    let cluster = Cluster::start();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (a, b) = (cluster.image("m0", "1G", ""), cluster.image("m1", "1G", ""));
    let (sa, sb, sc) = (
        work.path().join("a"),
        work.path().join("b"),
        work.path().join("c"),
    );
    vpool_ok(&sa, &["pool", "create", "tank", "--raid", "raid1", &a, &b]);
    vpool_ok(&sa, &["vol", "create", "tank/v", "--size", "64M"]);
    let mut da = Daemon::start_unix_only(&sa);
    fio(&da.unix_uri("tank/v"), &[]);
    let before = contents(&da, work.path(), "before");

    // The lock names its holder: a second vpool of this host is refused
    // even with --force (stop that one instead) ...
    let o = vpool(
        &sb,
        &[
            "pool", "import", "tank", "--force", "--device", &a, "--device", &b,
        ],
    );
    assert!(
        !o.status.success(),
        "a second owner was let in: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("in use by another vpool process on this host"),
        "{}",
        text(&o)
    );
    // ... and so is another host taking a member for a pool of its own.
    let o = as_host("host-b", || {
        vpool(
            &sb,
            &["pool", "create", "x", "--raid", "linear", "--force", &a],
        )
    });
    assert!(
        !o.status.success(),
        "another host took a member in use: {}",
        text(&o)
    );
    let why = text(&o);
    assert!(
        why.contains(&format!("locked by vpool on host '{}'", hostname())),
        "{why}"
    );
    assert!(why.contains("import --force"), "{why}");
    assert!(cluster.rbd(&["info", "rbd/m0"]).status.success());

    // Exported here, imported on host-b: every byte is there.
    da.vpool_ok(&["pool", "export", "tank"]);
    da.stop();
    as_host("host-b", || {
        vpool_ok(
            &sb,
            &["pool", "import", "tank", "--device", &a, "--device", &b],
        )
    });
    let db = as_host("host-b", || Daemon::start_unix_only(&sb));
    assert!(
        contents(&db, work.path(), "on-b") == before,
        "the imported volume differs"
    );
    fio(&db.unix_uri("tank/v"), &["--verify_only"]);

    // host-b stops answering (as if cut off): this host may take the pool
    // only with --force, which fences host-b.
    let o = vpool(
        &sc,
        &["pool", "import", "tank", "--device", &a, "--device", &b],
    );
    assert!(
        !o.status.success() && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    vpool_ok(
        &sc,
        &[
            "pool", "import", "tank", "--force", "--device", &a, "--device", &b,
        ],
    );
    // Fenced: host-b's daemon can write nothing more (never an ack).
    let o = run(
        Command::new("qemu-io").args([
            "-f",
            "raw",
            "-c",
            "write -P 0x5a 0 64k",
            "-c",
            "flush",
            &db.unix_uri("tank/v"),
        ]),
        120,
    );
    assert!(
        text(&o).contains("failed"),
        "a fenced host's write was acknowledged: {}",
        text(&o)
    );
    // The fence lasts a week (Ceph's default is an hour).
    let week = ok(
        Command::new("date").args(["-u", "-d", "+7 days", "+%F"]),
        10,
    );
    let o = run(
        Command::new("ceph")
            .arg("-c")
            .arg(cluster.conf())
            .args(["osd", "blocklist", "ls"]),
        60,
    );
    assert!(
        text(&o).contains(week.trim()),
        "no fence until {week}: {}",
        text(&o)
    );
    drop(db);
    let dc = Daemon::start_unix_only(&sc);
    assert!(
        contents(&dc, work.path(), "on-c") == before,
        "fencing lost or changed data"
    );
    fio(&dc.unix_uri("tank/v"), &["--verify_only"]);
}

#[test]
fn a_mirror_of_a_file_and_an_image_serves_through_an_osd_outage_and_resyncs() {
    requires();
    let cluster = Cluster::start();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = work.path().join("s");
    std::fs::create_dir_all(&state).unwrap();
    let local = state.join("local.img");
    std::fs::File::create(&local)
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    // Operations on the image give up after 5 s instead of 30.
    let image = cluster.image("mirror", "1G", ":rados_osd_op_timeout=5");
    vpool_ok(
        &state,
        &[
            "pool",
            "create",
            "tank",
            "--raid",
            "raid1",
            local.to_str().unwrap(),
            &image,
        ],
    );
    vpool_ok(&state, &["vol", "create", "tank/v", "--size", "64M"]);
    let d = Daemon::start_unix_only(&state);
    let uri = d.unix_uri("tank/v");
    fio(&uri, &[]);

    cluster.osd_stop();
    // Writes go on: the image fails out of the mirror.
    fio(&uri, &["--randseed=8"]);
    let status = d.vpool_ok(&["pool", "status", "tank"]);
    let row = status
        .lines()
        .find(|l| l.contains("rbd:rbd/mirror") && !l.contains("event"));
    assert!(row.unwrap_or_default().contains("FAILED"), "{status}");

    cluster.osd_start();
    d.vpool_ok(&["pool", "clear", "tank", "--wait"]);
    let status = d.vpool_ok(&["pool", "status", "tank"]);
    let row = status
        .lines()
        .find(|l| l.contains("rbd:rbd/mirror") && !l.contains("event"));
    assert!(row.unwrap_or_default().contains("ONLINE"), "{status}");
    // The image alone holds everything written during the outage.
    d.vpool_ok(&["pool", "fail", "tank", "0"]);
    fio(&uri, &["--randseed=8", "--verify_only"]);
}

#[test]
fn a_linear_pool_on_an_image_never_acknowledges_a_flush_during_an_outage() {
    requires();
    let cluster = Cluster::start();
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = work.path().join("s");
    let image = cluster.image("lin", "1G", ":rados_osd_op_timeout=5");
    // An image that does not exist: the error says how to make one.
    let missing = image.replace("rbd/lin", "rbd/nothere");
    let o = vpool(
        &state,
        &["pool", "create", "tank", "--raid", "linear", &missing],
    );
    assert!(
        !o.status.success() && text(&o).contains("rbd create rbd/nothere"),
        "{}",
        text(&o)
    );
    vpool_ok(
        &state,
        &["pool", "create", "tank", "--raid", "linear", &image],
    );
    vpool_ok(&state, &["vol", "create", "tank/v", "--size", "16M"]);
    let mut d = Daemon::start_unix_only(&state);
    let io = |d: &Daemon, cmds: &[&str]| {
        let mut c = Command::new("qemu-io");
        c.args(["-f", "raw"]);
        for cmd in cmds {
            c.args(["-c", cmd]);
        }
        run(c.arg(d.unix_uri("tank/v")), 120)
    };
    let o = io(&d, &["write -P 0x11 0 1M", "flush"]);
    assert!(
        o.status.success() && !text(&o).contains("failed"),
        "{}",
        text(&o)
    );

    cluster.osd_stop();
    let o = io(&d, &["write -P 0x22 0 64k", "flush"]);
    let out = text(&o);
    assert!(
        out.contains("Input/output error"),
        "a write or flush was acknowledged during the outage: {out}"
    );
    let status = d.vpool_ok(&["pool", "status", "tank"]);
    let row = status
        .lines()
        .find(|l| l.starts_with("0 "))
        .unwrap_or_default();
    let write_errors: u64 = row
        .split_whitespace()
        .nth(4)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        write_errors > 0,
        "the member's write errors are counted: {status}"
    );

    // After the outage and a restart, what was flushed is there.
    cluster.osd_start();
    d.kill();
    d.restart();
    let o = io(&d, &["read -P 0x11 64k 960k"]);
    assert!(
        o.status.success() && !text(&o).contains("failed"),
        "{}",
        text(&o)
    );
    // And the restarted daemon writes: the killed one's locks (vpool's and
    // the image's managed exclusive lock) were taken over. Once, with a
    // week's blocklist set through librbd, its own lock break failed here.
    let o = io(
        &d,
        &["write -P 0x33 1M 64k", "flush", "read -P 0x33 1M 64k"],
    );
    assert!(
        o.status.success() && !text(&o).contains("failed"),
        "{}",
        text(&o)
    );
}
