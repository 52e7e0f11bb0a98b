//! `snap send` / `snap receive` / `vol diff` end to end: two daemons with
//! their own state directories (two hosts), streams through real pipes,
//! data written and discarded by qemu-io over NBD, every received snapshot
//! compared byte for byte with its source.

mod common;

use common::daemon::{make_pool, ok, require, run, vpool_bin, Daemon};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

/// Source: raid5 over 3 members, 64K stripe unit (128K chunks).
/// Destination: raid1 over 2, 64K (64K chunks). Both pools are `tank`.
fn two_hosts(root: &Path) -> (Daemon, Daemon) {
    let (a, b) = (root.join("a"), root.join("b"));
    make_pool(&a, "raid5", 3, 256 * MIB, &["--stripe-unit", "64K"]);
    make_pool(&b, "raid1", 2, 256 * MIB, &["--stripe-unit", "64K"]);
    let (src, dst) = (Daemon::start_unix_only(&a), Daemon::start_unix_only(&b));
    assert!(src
        .vpool_ok(&["pool", "status", "tank"])
        .contains("chunk 128K"));
    assert!(dst
        .vpool_ok(&["pool", "status", "tank"])
        .contains("chunk 64K"));
    (src, dst)
}

fn qemu_io(d: &Daemon, export: &str, cmds: &[String]) {
    let mut args: Vec<String> = vec!["-f".into(), "raw".into()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(d.unix_uri(export));
    let out = ok(Command::new("qemu-io").args(&args), 120);
    assert!(!out.contains("failed"), "{out}");
}

fn cli(d: &Daemon, args: &[&str]) -> Command {
    let mut c = Command::new(vpool_bin());
    c.arg("--state-dir").arg(&d.state).args(args);
    c
}

/// Wait for a child with a time limit (killed past it).
fn wait(mut child: Child, secs: u64) -> Output {
    let start = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("a send or receive took over {secs}s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `send_args` on `src` piped into `recv_args` on `dst`; both outputs.
fn pipe(src: &Daemon, send_args: &[&str], dst: &Daemon, recv_args: &[&str]) -> (Output, Output) {
    let mut sender = cli(src, send_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let receiver = cli(dst, recv_args)
        .stdin(Stdio::from(sender.stdout.take().unwrap()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (wait(sender, 120), wait(receiver, 120))
}

fn pipe_ok(src: &Daemon, send_args: &[&str], dst: &Daemon, recv_args: &[&str]) -> String {
    let (s, r) = pipe(src, send_args, dst, recv_args);
    let text = |o: &Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(s.status.success(), "send {send_args:?}: {}", text(&s));
    assert!(r.status.success(), "receive {recv_args:?}: {}", text(&r));
    String::from_utf8_lossy(&r.stdout).into()
}

/// The bytes of a volume or snapshot (`vol export` through the daemon).
fn bytes(d: &Daemon, path: &str) -> Vec<u8> {
    let f = d.state.join("export.raw");
    let _ = std::fs::remove_file(&f);
    d.vpool_ok(&[
        "vol",
        "export",
        path,
        "--to",
        f.to_str().unwrap(),
        "--force",
    ]);
    std::fs::read(&f).unwrap()
}

fn same(a: &[u8], b: &[u8], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: sizes differ");
    if let Some(i) = a.iter().zip(b).position(|(x, y)| x != y) {
        panic!("{what}: first difference at byte {i}");
    }
}

fn names(d: &Daemon) -> Vec<String> {
    let v: Value = serde_json::from_str(&d.vpool_ok(&["snap", "list", "--json"])).unwrap();
    let mut out: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_string())
        .collect();
    let vols: Value = serde_json::from_str(&d.vpool_ok(&["vol", "list", "--json"])).unwrap();
    out.extend(
        vols.as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_string()),
    );
    out.sort();
    out
}

/// `snap receive tank/copy --from FILE` on `d`.
fn receive_file(d: &Daemon, file: &Path) -> Output {
    d.vpool(&[
        "snap",
        "receive",
        "tank/copy",
        "--from",
        file.to_str().unwrap(),
    ])
}

/// The same, required to fail: its error.
fn refused(d: &Daemon, file: &Path) -> String {
    let o = receive_file(d, file);
    assert!(!o.status.success(), "{} was accepted", file.display());
    String::from_utf8_lossy(&o.stderr).into()
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random writes (some unaligned, some of zeros) and discards; returns
/// the ranges written with data.
fn scribble(d: &Daemon, rng: &mut Rng, size: u64, n: usize) -> Vec<(u64, u64)> {
    let mut cmds = Vec::new();
    let mut ranges = Vec::new();
    for _ in 0..n {
        let len = (1 + rng.below(300)) * 1024;
        let off = rng.below(size - len) & !511;
        match rng.below(10) {
            0 => cmds.push(format!("write -z {off} {len}")),
            1 => {
                let (off, len) = (off & !65535, 65536 * (1 + rng.below(4)));
                cmds.push(format!("discard {off} {len}"));
            }
            _ => {
                cmds.push(format!("write -P {} {off} {len}", 1 + rng.below(250)));
                ranges.push((off, len));
            }
        }
    }
    qemu_io(d, "tank/db", &cmds);
    ranges
}

#[test]
fn a_chain_of_incrementals_between_two_daemons_equals_the_source() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = two_hosts(dir.path());
    let size = 32 * MIB;
    src.vpool_ok(&["vol", "create", "tank/db", "--size", "32M"]);
    let mut rng = Rng(0x5eed);
    scribble(&src, &mut rng, size, 40);
    src.vpool_ok(&["snap", "create", "tank/db@s0"]);
    let out = pipe_ok(
        &src,
        &["snap", "send", "tank/db@s0"],
        &dst,
        &["snap", "receive", "tank/db"],
    );
    assert!(out.contains("received tank/db@s0"), "{out}");
    same(&bytes(&src, "tank/db@s0"), &bytes(&dst, "tank/db@s0"), "s0");
    same(
        &bytes(&src, "tank/db@s0"),
        &bytes(&dst, "tank/db"),
        "the volume",
    );
    for i in 1..=20 {
        let written = scribble(&src, &mut rng, size, 6);
        if i == 7 {
            // A grow on the way: the stream carries the new size.
            src.vpool_ok(&["vol", "resize", "tank/db", "--size", "40M"]);
        }
        let (old, new) = (format!("@s{}", i - 1), format!("tank/db@s{i}"));
        src.vpool_ok(&["snap", "create", &new]);
        if i == 3 {
            // `vol diff` covers every range written, and only whole chunks.
            let diff: Value = serde_json::from_str(&src.vpool_ok(&[
                "vol",
                "diff",
                "tank/db@s2",
                "tank/db@s3",
                "--json",
            ]))
            .unwrap();
            let diff: Vec<(u64, u64)> = diff
                .as_array()
                .unwrap()
                .iter()
                .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap()))
                .collect();
            // Ranges are disjoint: a write is covered when its overlaps
            // with them add up to its length.
            for (off, len) in written {
                let covered: u64 = diff
                    .iter()
                    .map(|&(o, l)| (o.max(off), (o + l).min(off + len)))
                    .filter(|(a, b)| a < b)
                    .map(|(a, b)| b - a)
                    .sum();
                assert_eq!(covered, len, "write {off}+{len} not in the diff {diff:?}");
            }
            assert!(diff
                .iter()
                .all(|&(o, l)| o % (128 << 10) == 0 && (l % (128 << 10) == 0)));
            let total: u64 = diff.iter().map(|r| r.1).sum();
            assert!(total < 8 * MIB, "a diff of 6 writes covers {total} bytes");
        }
        pipe_ok(
            &src,
            &["snap", "send", &new, "--from", &old],
            &dst,
            &["snap", "receive", "tank/db"],
        );
        same(&bytes(&src, &new), &bytes(&dst, &new), &new);
    }
    // Every snapshot received is still what it was.
    for i in [0, 5, 13] {
        let s = format!("tank/db@s{i}");
        same(&bytes(&src, &s), &bytes(&dst, &s), &s);
    }
    same(
        &bytes(&src, "tank/db"),
        &bytes(&dst, "tank/db"),
        "the volume at the end",
    );
    // An incremental carries what changed, not the volume: 4 KiB writes
    // into 128K chunks send about 4 KiB each.
    qemu_io(
        &src,
        "tank/db",
        &(0..16)
            .map(|k| format!("write -P 9 {} 4096", k * 2 * MIB + 8192))
            .collect::<Vec<_>>(),
    );
    src.vpool_ok(&["snap", "create", "tank/db@small"]);
    let f = dir.path().join("small.stream");
    src.vpool_ok(&[
        "snap",
        "send",
        "tank/db@small",
        "--from",
        "@s20",
        "--to",
        f.to_str().unwrap(),
    ]);
    let len = std::fs::metadata(&f).unwrap().len();
    assert!(
        len < 16 * 4096 + 16 * 64 + 1024,
        "16 writes of 4K made a stream of {len} bytes"
    );
    let out = dst.vpool_ok(&["snap", "receive", "tank/db", "--from", f.to_str().unwrap()]);
    assert!(out.contains("incremental from @s20"), "{out}");
    same(
        &bytes(&src, "tank/db@small"),
        &bytes(&dst, "tank/db@small"),
        "small",
    );
}

/// Record boundaries of a stream file (header: 40 bytes, payload length
/// at 32..36).
fn records(s: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut out = Vec::new();
    while at + 40 <= s.len() {
        out.push(at);
        at += 40 + u32::from_le_bytes(s[at + 32..at + 36].try_into().unwrap()) as usize;
    }
    out
}

#[test]
fn damaged_streams_and_wrong_bases_are_refused_and_change_nothing() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = two_hosts(dir.path());
    src.vpool_ok(&["vol", "create", "tank/db", "--size", "8M"]);
    let mut rng = Rng(77);
    scribble(&src, &mut rng, 8 * MIB, 20);
    src.vpool_ok(&["snap", "create", "tank/db@s1"]);
    let full = dir.path().join("full.stream");
    src.vpool_ok(&["snap", "send", "tank/db@s1", "-o", full.to_str().unwrap()]);
    let good = std::fs::read(&full).unwrap();
    let recs = records(&good);
    assert!(recs.len() > 5, "{} records", recs.len());
    let before = names(&dst);
    let bad = dir.path().join("bad.stream");
    let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [
        0,
        20,
        344,
        recs[2] + 50,
        recs[recs.len() - 1],
        good.len() - 1,
    ] {
        variants.push((format!("cut at {cut}"), good[..cut].to_vec()));
    }
    for at in [
        5,
        100,
        recs[1] + 3,
        recs[1] + 17,
        recs[2] + 60,
        good.len() - 10,
    ] {
        let mut b = good.clone();
        b[at] ^= 0x04;
        variants.push((format!("bit flipped at {at}"), b));
    }
    let mut swapped = good[..recs[1]].to_vec();
    swapped.extend_from_slice(&good[recs[2]..recs[3]]);
    swapped.extend_from_slice(&good[recs[1]..recs[2]]);
    swapped.extend_from_slice(&good[recs[3]..]);
    variants.push(("two records swapped".into(), swapped));
    let mut dropped = good[..recs[2]].to_vec();
    dropped.extend_from_slice(&good[recs[3]..]);
    variants.push(("a record left out".into(), dropped));
    for (what, b) in &variants {
        std::fs::write(&bad, b).unwrap();
        refused(&dst, &bad);
        assert_eq!(names(&dst), before, "{what}: something changed");
        // Whatever was kept for a resume is dropped.
        let _ = dst.vpool(&["snap", "receive", "tank/copy", "--abort"]);
    }
    // A kept receive whose record the state directory lost (another host's):
    // a new stream is refused until it is dropped.
    std::fs::write(&bad, &good[..recs[3]]).unwrap();
    refused(&dst, &bad);
    std::fs::remove_file(dst.state.join("receive.json")).unwrap();
    let err = refused(&dst, &full);
    assert!(err.contains("no record of how far it got"), "{err}");
    dst.vpool_ok(&["snap", "receive", "tank/copy", "--abort"]);
    assert_eq!(names(&dst), before);
    // The good stream goes in; the same stream again is refused (the
    // volume exists), and changes nothing.
    assert!(receive_file(&dst, &full).status.success());
    same(
        &bytes(&src, "tank/db@s1"),
        &bytes(&dst, "tank/copy@s1"),
        "s1",
    );
    assert!(refused(&dst, &full).contains("a full stream makes a new volume"));

    // Incrementals: s1 -> s2 -> s3 on the source.
    for s in ["s2", "s3"] {
        scribble(&src, &mut rng, 8 * MIB, 5);
        src.vpool_ok(&["snap", "create", &format!("tank/db@{s}")]);
    }
    let inc = |from: &str, to: &str| {
        let f = dir.path().join(format!("{from}-{to}.stream"));
        src.vpool_ok(&[
            "snap",
            "send",
            &format!("tank/db@{to}"),
            "-i",
            &format!("@{from}"),
            "-o",
            f.to_str().unwrap(),
        ]);
        f
    };
    let s2_s3 = inc("s2", "s3");
    let copy_before = bytes(&dst, "tank/copy");
    let names_before = names(&dst);
    // Wrong base: the target's newest is @s1, the stream starts at @s2.
    let err = refused(&dst, &s2_s3);
    assert!(err.contains("base is not the newest snapshot"), "{err}");
    // A damaged incremental.
    let s1_s2 = inc("s1", "s2");
    let mut b = std::fs::read(&s1_s2).unwrap();
    let r = records(&b);
    let n = b.len();
    b[r[r.len() / 2] + 45] ^= 1;
    std::fs::write(&bad, &b).unwrap();
    refused(&dst, &bad);
    dst.vpool_ok(&["snap", "receive", "tank/copy", "--abort"]);
    std::fs::write(&bad, &std::fs::read(&s1_s2).unwrap()[..n - 30]).unwrap();
    refused(&dst, &bad);
    dst.vpool_ok(&["snap", "receive", "tank/copy", "--abort"]);
    assert_eq!(names(&dst), names_before);
    same(
        &copy_before,
        &bytes(&dst, "tank/copy"),
        "the target after refused streams",
    );
    // A target written since its base is refused without --force.
    qemu_io(&dst, "tank/copy", &["write -P 3 0 4096".to_string()]);
    let err = refused(&dst, &s1_s2);
    assert!(err.contains("was written since"), "{err}");
    let s1_s2 = s1_s2.to_str().unwrap();
    dst.vpool_ok(&["snap", "receive", "tank/copy", "-i", s1_s2, "--force"]);
    assert!(receive_file(&dst, &s2_s3).status.success());
    same(
        &bytes(&src, "tank/db@s3"),
        &bytes(&dst, "tank/copy@s3"),
        "s3",
    );
    same(
        &bytes(&src, "tank/db@s3"),
        &bytes(&dst, "tank/copy"),
        "the volume at s3",
    );
}

/// Feed `stream[..upto]` to a receiving CLI, then kill `victim` (the CLI
/// feeding it, the receiving CLI, or the daemon).
enum Victim {
    Receiver,
    Daemon,
}

fn token(d: &Daemon) -> String {
    d.vpool_ok(&["snap", "receive", "tank/copy", "--token"])
        .trim()
        .to_string()
}

fn sigkill(pid: u32) {
    // SAFETY: killing a process this test started, by PID.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
}

#[test]
fn receives_resume_after_either_side_is_killed() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let (src, mut dst) = two_hosts(dir.path());
    src.vpool_ok(&["vol", "create", "tank/db", "--size", "96M"]);
    qemu_io(
        &src,
        "tank/db",
        &[
            "write -P 7 0 90M".to_string(),
            "write -P 8 5M 3M".to_string(),
        ],
    );
    src.vpool_ok(&["snap", "create", "tank/db@s1"]);
    let want = bytes(&src, "tank/db@s1");

    // 1. The sender dies part way: this test is the pipe between them, and
    //    stops reading (the sender blocks), passes on what it read, then
    //    kills the sender and ends the receiver's input.
    let mut sender = cli(&src, &["snap", "send", "tank/db@s1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut receiver = cli(&dst, &["snap", "receive", "tank/copy"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut part = vec![0u8; 30 << 20];
    sender
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut part)
        .unwrap();
    // While it stalls, `job list` on each side shows the transfer.
    let jobs = src.vpool_ok(&["job", "list", "--json"]);
    assert!(
        jobs.contains("\"send\"") && jobs.contains("tank/db@s1"),
        "{jobs}"
    );
    receiver.stdin.as_mut().unwrap().write_all(&part).unwrap();
    let start = Instant::now();
    loop {
        let jobs = dst.vpool_ok(&["job", "list", "--json"]);
        if jobs.contains("\"receive\"") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no receive job: {jobs}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(sender.id());
    let _ = sender.wait();
    drop(receiver.stdin.take());
    let o = wait(receiver, 60);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("--resume"), "{err}");
    assert!(
        !names(&dst).iter().any(|n| n.contains("copy")),
        "nothing shows before the end"
    );
    let t = token(&dst);
    let out = pipe_ok(
        &src,
        &["snap", "send", "--resume", &t],
        &dst,
        &["snap", "receive", "tank/copy", "--resume"],
    );
    assert!(out.contains("received tank/copy@s1"), "{out}");
    same(
        &want,
        &bytes(&dst, "tank/copy@s1"),
        "after the sender's death",
    );

    // 2. and 3.: the receiving CLI dies, then the receiving daemon.
    for victim in [Victim::Receiver, Victim::Daemon] {
        dst.vpool_ok(&["vol", "remove", "tank/copy", "-r"]);
        let stream = dir.path().join("s1.stream");
        src.vpool_ok(&["snap", "send", "tank/db@s1", "-o", stream.to_str().unwrap()]);
        let s = std::fs::read(&stream).unwrap();
        let mut receiver = cli(&dst, &["snap", "receive", "tank/copy"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // 60 MiB in, and a checkpoint made (every 16 MiB).
        receiver
            .stdin
            .as_mut()
            .unwrap()
            .write_all(&s[..60 << 20])
            .unwrap();
        let start = Instant::now();
        loop {
            let jobs: Value =
                serde_json::from_str(&dst.vpool_ok(&["job", "list", "--json"])).unwrap();
            let done = jobs
                .as_array()
                .unwrap()
                .iter()
                .find(|j| j["kind"] == "receive")
                .map(|j| j["done_bytes"].as_u64().unwrap());
            if done.is_some_and(|d| d > 40 << 20) {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "receive does not move: {jobs}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        match victim {
            Victim::Receiver => {
                sigkill(receiver.id());
                let _ = receiver.wait();
                // The daemon notices the closed connection and keeps what came.
                let start = Instant::now();
                while dst
                    .vpool(&["snap", "receive", "tank/copy", "--token"])
                    .status
                    .code()
                    != Some(0)
                    || dst.vpool_ok(&["job", "list", "--json"]).contains("receive")
                {
                    assert!(start.elapsed() < Duration::from_secs(30), "no token kept");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            Victim::Daemon => {
                dst.kill();
                sigkill(receiver.id());
                let _ = receiver.wait();
                dst.restart();
            }
        }
        let t = token(&dst);
        // A new stream onto a kept receive is refused, and says how to go on.
        let err = refused(&dst, &stream);
        assert!(err.contains("is kept"), "{err}");
        let out = pipe_ok(
            &src,
            &["snap", "send", "-t", &t],
            &dst,
            &["snap", "receive", "tank/copy", "--resume"],
        );
        assert!(out.contains("received"), "{out}");
        same(
            &want,
            &bytes(&dst, "tank/copy@s1"),
            "after a kill of the receiving side",
        );
    }
    // The metadata of the side killed twice is clean.
    dst.stop();
    let members: Vec<String> = (0..2)
        .map(|i| dst.state.join(format!("d{i}.img")).display().to_string())
        .collect();
    let o = run(Command::new(vpool_bin()).arg("check").args(&members), 120);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_volume_in_use_is_sent_as_its_snapshot_holds_it() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = two_hosts(dir.path());
    src.vpool_ok(&["vol", "create", "tank/db", "--size", "64M"]);
    qemu_io(&src, "tank/db", &["write -P 1 0 48M".to_string()]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, uri) = (stop.clone(), src.unix_uri("tank/db"));
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let cmd = format!("write -P {} {} 1M", 2 + n % 200, (n * 7 % 60) << 20);
                ok(
                    Command::new("qemu-io").args(["-f", "raw", "-c", &cmd, &uri]),
                    60,
                );
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    src.vpool_ok(&["snap", "create", "tank/db@live"]);
    std::thread::sleep(Duration::from_millis(300));
    pipe_ok(
        &src,
        &["snap", "send", "tank/db@live"],
        &dst,
        &["snap", "receive", "tank/copy"],
    );
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let writes = writer.join().unwrap();
    assert!(writes >= 2, "the client wrote {writes} times");
    same(
        &bytes(&src, "tank/db@live"),
        &bytes(&dst, "tank/copy@live"),
        "live",
    );
}

#[test]
fn without_a_daemon_send_and_receive_work_on_the_devices() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    make_pool(&a, "raid0", 2, 128 * MIB, &[]);
    make_pool(&b, "linear", 1, 128 * MIB, &[]);
    let v = |state: &PathBuf, args: &[&str]| {
        ok(
            Command::new(vpool_bin())
                .arg("--state-dir")
                .arg(state)
                .args(args),
            120,
        )
    };
    v(&a, &["vol", "create", "tank/db", "--size", "16M"]);
    let img = dir.path().join("img.raw");
    let data: Vec<u8> = (0..12 * MIB).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, &data).unwrap();
    v(
        &a,
        &["vol", "import", "tank/db", "--from", img.to_str().unwrap()],
    );
    v(&a, &["snap", "create", "tank/db@one"]);
    let f = dir.path().join("one.stream");
    v(
        &a,
        &["snap", "send", "tank/db@one", "--to", f.to_str().unwrap()],
    );
    let out = v(
        &b,
        &["snap", "receive", "tank/db", "--from", f.to_str().unwrap()],
    );
    assert!(out.contains("received tank/db@one"), "{out}");
    let back = dir.path().join("back.raw");
    v(
        &b,
        &[
            "vol",
            "export",
            "tank/db@one",
            "--to",
            back.to_str().unwrap(),
        ],
    );
    let got = std::fs::read(&back).unwrap();
    assert_eq!(&got[..data.len()], &data[..]);
    assert!(got[data.len()..].iter().all(|&x| x == 0));
    // Nothing to replay: the commands closed the pools.
    let o = run(
        Command::new(vpool_bin())
            .arg("--state-dir")
            .arg(&b)
            .args(["vol", "list"]),
        60,
    );
    assert!(!String::from_utf8_lossy(&o.stderr).contains("not closed cleanly"));
    // One state directory, no daemon: the two ends would wait for each
    // other; they say so instead.
    v(&a, &["snap", "create", "tank/db@two"]);
    let sh = format!(
        "{bin} --state-dir {a} snap send tank/db@two | {bin} --state-dir {a} snap receive tank/other",
        bin = vpool_bin(),
        a = a.display()
    );
    let o = run(Command::new("sh").args(["-c", &sh]), 60);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("start the daemon"),
        "{err}"
    );
}

#[test]
fn the_streaming_api_refuses_what_names_nothing_and_bodies_that_are_not_streams() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a");
    make_pool(&a, "raid1", 2, 128 * MIB, &[]);
    let d = Daemon::start_unix_only(&a);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "8M"]);
    let before = names(&d);
    let (status, body) = d.api(
        "POST",
        "/v1/send",
        Some(serde_json::json!({"path": "tank/db@none"})),
    );
    assert_eq!(status, 404, "{body}");
    let (status, body) = d.api(
        "POST",
        "/v1/send",
        Some(serde_json::json!({"resume": "1-00"})),
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = d.api("POST", "/v1/send", Some(serde_json::json!("not a spec")));
    assert_eq!(status, 400, "{body}");
    let (status, body) = d.api(
        "POST",
        "/v1/receive?target=tank/new",
        Some(serde_json::json!({"not": "a stream"})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("not a vpool send stream"),
        "{body}"
    );
    let (status, _) = d.api(
        "POST",
        "/v1/receive?target=..%2Fx",
        Some(serde_json::json!(1)),
    );
    assert_eq!(status, 400);
    assert_eq!(names(&d), before, "nothing was created");
    // The daemon still serves.
    d.vpool_ok(&["snap", "create", "tank/db@s"]);
    let (status, _) = d.api("GET", "/v1/diff?from=tank/db@s&to=tank/db@s", None);
    assert_eq!(status, 400, "a snapshot is not older than itself");
}
