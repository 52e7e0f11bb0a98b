//! The `vpool` binary, driven as a user would: every command of the storage
//! engine, and the bad inputs that must fail clearly and change nothing.

use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Env {
    dir: tempfile::TempDir,
}

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn image(&self, name: &str, size: u64) -> String {
        let p = self.path(name);
        fs::File::create(&p).unwrap().set_len(size).unwrap();
        p.display().to_string()
    }

    /// Run vpool with a 120 s limit.
    fn run(&self, args: &[&str]) -> Out {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vpool"))
            .args(args)
            .env("VPOOL_STATE_DIR", self.path("state"))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn vpool");
        let start = Instant::now();
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!("vpool {args:?} timed out");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let o = child.wait_with_output().unwrap();
        Out {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into(),
            stderr: String::from_utf8_lossy(&o.stderr).into(),
        }
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(o.ok, "vpool {args:?} failed:\n{}\n{}", o.stdout, o.stderr);
        o.stdout
    }

    /// Must fail with a message containing `want`.
    fn fails(&self, args: &[&str], want: &str) -> String {
        let o = self.run(args);
        assert!(!o.ok, "vpool {args:?} should fail:\n{}", o.stdout);
        assert!(
            o.stderr.contains(want),
            "vpool {args:?}: stderr lacks {want:?}:\n{}",
            o.stderr
        );
        o.stderr
    }

    fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args)).expect("valid JSON")
    }
}

fn random_file(path: &Path, size: usize, seed: u8) {
    let data: Vec<u8> = (0..size)
        .map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(seed as u32) as u8)
        .collect();
    fs::write(path, data).unwrap();
}

const G: u64 = 1 << 30;

/// The first `n` bytes of a (possibly huge, sparse) file.
fn prefix(path: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    fs::File::open(path).unwrap().read_exact(&mut buf).unwrap();
    buf
}

#[test]
fn cli_help_and_bad_options() {
    let e = Env::new();
    assert!(e.ok(&["--help"]).contains("pool"));
    assert!(e.ok(&["vol", "--help"]).contains("import"));
    e.fails(&["pool", "frobnicate"], "unrecognized subcommand");
    e.fails(
        &["vol", "create", "tank/x", "--size", "ten"],
        "is not a size",
    );
}

#[test]
fn cli_full_workflow() {
    let e = Env::new();
    let d: Vec<String> = (1..=3).map(|i| e.image(&format!("d{i}.img"), G)).collect();
    e.ok(&[
        "pool", "create", "tank", "--raid", "raid5", &d[0], &d[1], &d[2],
    ]);
    let o = e.run(&["vol", "create", "tank/db", "--size", "10G"]);
    assert!(o.ok && o.stderr.contains("overprovisioned"));
    // Sizes as people write them, not raw bytes.
    assert!(
        o.stderr.contains("volumes total 10G on ") && !o.stderr.contains(" bytes"),
        "{}",
        o.stderr
    );
    let info = e.json(&["pool", "status", "tank", "--json"]);
    assert_eq!(info["allocated"], 0, "thin: no space used yet");
    assert_eq!(info["virtual_bytes"], 10 * G);

    // Import: 3 MiB of data in a 20 MiB sparse image.
    let disk = e.path("disk.raw");
    random_file(&disk, 3 << 20, 1);
    fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let out = e.ok(&["vol", "import", "tank/db", "--from", disk.to_str().unwrap()]);
    assert!(
        out.contains("3M copied") && out.contains("17M skipped as zero"),
        "{out}"
    );
    let info = e.json(&["pool", "status", "tank", "--json"]);
    assert_eq!(
        info["allocated"].as_u64().unwrap(),
        3 << 20,
        "zero blocks stay unallocated"
    );

    e.ok(&["snap", "create", "tank/db@before"]);
    let patch = e.path("patch.raw");
    random_file(&patch, 100 << 10, 2);
    e.ok(&[
        "vol",
        "import",
        "tank/db",
        "--from",
        patch.to_str().unwrap(),
        "--offset",
        "1M",
    ]);
    e.ok(&["vol", "clone", "tank/db@before", "tank/db2"]);

    // Exports: the snapshot holds the original, the volume the patched data.
    let original = fs::read(&disk).unwrap();
    let out_snap = e.path("snap.raw");
    e.ok(&[
        "vol",
        "export",
        "tank/db@before",
        "--to",
        out_snap.to_str().unwrap(),
    ]);
    assert_eq!(fs::metadata(&out_snap).unwrap().len(), 10 * G);
    let got = prefix(&out_snap, 64 << 20);
    assert!(got[..original.len()] == original[..] && got[original.len()..].iter().all(|&b| b == 0));
    let out_vol = e.path("vol.raw");
    e.ok(&[
        "vol",
        "export",
        "tank/db",
        "--to",
        out_vol.to_str().unwrap(),
    ]);
    let got = prefix(&out_vol, 64 << 20);
    let p = fs::read(&patch).unwrap();
    assert!(got[1 << 20..(1 << 20) + p.len()] == p[..]);
    assert!(got[..1 << 20] == original[..1 << 20]);
    // Exported images are sparse.
    use std::os::unix::fs::MetadataExt;
    assert!(fs::metadata(&out_vol).unwrap().blocks() * 512 < 64 << 20);
    e.fails(
        &[
            "vol",
            "export",
            "tank/db",
            "--to",
            out_vol.to_str().unwrap(),
        ],
        "--force",
    );

    e.ok(&["vol", "rollback", "tank/db@before"]);
    let out2 = e.path("rolled.raw");
    e.ok(&["vol", "export", "tank/db", "--to", out2.to_str().unwrap()]);
    assert!(prefix(&out2, original.len()) == original);

    e.ok(&["vol", "resize", "tank/db", "--size", "20G"]);
    e.ok(&["vol", "resize", "tank/db", "--size", "+1G"]);
    let vols = e.json(&["vol", "list", "--json"]);
    let db = vols
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "tank/db")
        .unwrap();
    assert_eq!(db["size"].as_u64().unwrap(), 21 * G);
    assert!(e.ok(&["vol", "list"]).contains("tank/db2"));
    let snaps = e.json(&["snap", "list", "tank/db", "--json"]);
    assert_eq!(snaps.as_array().unwrap().len(), 1);
    assert_eq!(snaps[0]["name"], "tank/db@before");
    assert!(e.ok(&["snap", "list"]).contains("tank/db@before"));
    let pools = e.json(&["pool", "list", "--json"]);
    assert_eq!(pools[0]["name"], "tank");
    assert!(e.ok(&["pool", "list"]).contains("ONLINE"));
    assert!(e.ok(&["pool", "status", "tank"]).contains("MEMBER"));

    // Export, move, import from labels alone.
    e.ok(&["pool", "export", "tank"]);
    e.fails(&["pool", "status", "tank"], "not found");
    let moved = e.path("moved");
    fs::create_dir(&moved).unwrap();
    for i in 1..=3 {
        fs::rename(
            e.path(&format!("d{i}.img")),
            moved.join(format!("d{i}.img")),
        )
        .unwrap();
    }
    let found = e.json(&[
        "pool",
        "import",
        "--scan",
        moved.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(found[0]["name"], "tank");
    assert_eq!(found[0]["state"], "exported");
    e.ok(&["pool", "import", "--scan", moved.to_str().unwrap(), "tank"]);
    let m: Vec<String> = (1..=3)
        .map(|i| moved.join(format!("d{i}.img")).display().to_string())
        .collect();
    let out3 = e.path("after-move.raw");
    e.ok(&[
        "vol",
        "export",
        "tank/db@before",
        "--to",
        out3.to_str().unwrap(),
    ]);
    assert!(prefix(&out3, original.len()) == original);

    // Offline check and inspect need the pool closed: the CLI holds no lock now.
    assert!(e.ok(&["check", &m[0], &m[1], &m[2]]).contains("clean"));
    let report = e.json(&["check", "--json", &m[0], &m[1], &m[2]]);
    assert_eq!(report["errors"].as_array().unwrap().len(), 0);
    let ins = e.json(&["inspect", "--json", &m[1]]);
    assert_eq!(ins["labels"][0]["pool_name"], "tank");
    assert_eq!(ins["labels"][1]["valid"], true);
    assert_eq!(ins["superblocks"].as_array().unwrap().len(), 2);
    assert!(e.ok(&["inspect", &m[0]]).contains("raid5"));

    // Removal returns space.
    e.fails(&["vol", "remove", "tank/db"], "snapshot");
    e.ok(&["snap", "remove", "tank/db@before"]);
    e.ok(&["vol", "remove", "tank/db"]);
    e.ok(&["vol", "remove", "tank/db2"]);
    let info = e.json(&["pool", "status", "tank", "--json"]);
    assert_eq!(info["allocated"], 0);
    e.ok(&["pool", "destroy", "tank"]);
    assert!(e.ok(&["inspect", &m[0]]).contains("INVALID"));
    // Destroyed members can be reused without --force.
    e.ok(&["pool", "create", "again", "--raid", "raid1", &m[0], &m[1]]);
}

#[test]
fn cli_bad_inputs_change_nothing() {
    let e = Env::new();
    let d: Vec<String> = (1..=4).map(|i| e.image(&format!("d{i}.img"), G)).collect();
    e.fails(
        &["pool", "create", "tank", "--raid", "raid5", &d[0], &d[1]],
        "at least 3 members",
    );
    e.fails(
        &["pool", "create", "tank", "--raid", "raid9", &d[0]],
        "unknown RAID level",
    );
    e.fails(
        &[
            "pool", "create", "bad/name", "--raid", "raid1", &d[0], &d[1],
        ],
        "invalid pool name",
    );
    e.fails(
        &[
            "pool",
            "create",
            "tank",
            "--raid",
            "raid1",
            &d[0],
            &e.path("nope.img").display().to_string(),
        ],
        "truncate -s",
    );
    e.fails(
        &["pool", "create", "tank", "--raid", "raid1", &d[0], &d[0]],
        "listed twice",
    );
    assert!(
        e.json(&["pool", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing was created"
    );
    assert!(
        e.ok(&["inspect", &d[0]]).contains("INVALID"),
        "no label was written"
    );

    e.ok(&["pool", "create", "tank", "--raid", "raid1", &d[0], &d[1]]);
    let before = e.ok(&["inspect", &d[1]]);
    let msg = e.fails(
        &["pool", "create", "other", "--raid", "raid1", &d[1], &d[2]],
        "belongs to pool 'tank'",
    );
    assert!(msg.contains("--force"));
    assert_eq!(e.ok(&["inspect", &d[1]]), before, "the member is untouched");
    e.fails(
        &["pool", "create", "tank", "--raid", "raid1", &d[2], &d[3]],
        "already exists",
    );

    e.ok(&["vol", "create", "tank/db", "--size", "100M"]);
    e.fails(
        &["vol", "create", "tank/db", "--size", "1G"],
        "already exists",
    );
    e.fails(
        &["vol", "create", "tank/x", "--size", "1000"],
        "multiple of 4K",
    );
    e.fails(
        &["vol", "create", "tank/a\u{7}b", "--size", "1G"],
        "not allowed",
    );
    e.fails(
        &[
            "vol",
            "create",
            &format!("tank/{}", "x".repeat(64)),
            "--size",
            "1G",
        ],
        "longer than 63",
    );
    e.fails(
        &["vol", "create", "nopool/x", "--size", "1G"],
        "pool 'nopool' not found",
    );
    e.fails(&["vol", "create", "tank", "--size", "1G"], "POOL/VOLUME");
    e.fails(
        &["snap", "create", "tank/nope@s"],
        "volume 'tank/nope' not found",
    );
    e.fails(&["snap", "create", "tank/db"], "names no snapshot");
    e.fails(
        &["vol", "rollback", "tank/db@nope"],
        "snapshot 'tank/db@nope' not found",
    );
    e.fails(&["vol", "clone", "tank/db@nope", "tank/c"], "not found");

    // Import bigger than the volume: refused before writing anything.
    let big = e.path("big.raw");
    random_file(&big, 2 << 20, 3);
    fs::OpenOptions::new()
        .write(true)
        .open(&big)
        .unwrap()
        .set_len(200 << 20)
        .unwrap();
    let err = e.fails(
        &["vol", "import", "tank/db", "--from", big.to_str().unwrap()],
        "vol resize",
    );
    // Sizes as people write them, in errors too.
    assert!(
        err.contains("is 200M; it does not fit") && err.contains("(100M)"),
        "{err}"
    );
    let info = e.json(&["pool", "status", "tank", "--json"]);
    assert_eq!(info["allocated"], 0);

    // Shrinking below written data needs --force.
    let small = e.path("small.raw");
    random_file(&small, 1 << 20, 4);
    e.ok(&[
        "vol",
        "import",
        "tank/db",
        "--from",
        small.to_str().unwrap(),
        "--offset",
        "50M",
    ]);
    e.fails(
        &["vol", "resize", "tank/db", "--size", "10M"],
        "from 100M to 10M discards data",
    );
    let vols = e.json(&["vol", "list", "tank", "--json"]);
    assert_eq!(
        vols[0]["size"].as_u64().unwrap(),
        100 << 20,
        "size unchanged"
    );
    e.fails(
        &["vol", "resize", "tank/db", "--size", "-200M"],
        "zero or negative",
    );
    e.ok(&["vol", "resize", "tank/db", "--size", "10M", "--force"]);
    e.fails(
        &["vol", "resize", "tank/nope", "--size", "1G"],
        "volume 'tank/nope' not found",
    );
    e.fails(
        &["vol", "resize", "tank/db", "--size", "0"],
        "zero or negative",
    );
    // Beyond what the pool can back: allowed (thin), with a warning.
    let o = e.run(&["vol", "resize", "tank/db", "--size", "100G"]);
    assert!(o.ok && o.stderr.contains("overprovisioned"), "{}", o.stderr);

    // Members of very different sizes: a warning, the smallest size is used.
    let small_img = e.image("small.img", 200 << 20);
    let o = e.run(&[
        "pool", "create", "mixed", "--raid", "raid1", &d[2], &small_img,
    ]);
    assert!(
        o.ok && o
            .stderr
            .contains("members differ in size (200M to 1G); raid1 uses 200M of each"),
        "{}",
        o.stderr
    );
}

#[test]
fn cli_degraded_pool_reads_from_redundancy() {
    for level in ["raid1", "raid5"] {
        let e = Env::new();
        let d: Vec<String> = (1..=3).map(|i| e.image(&format!("d{i}.img"), G)).collect();
        e.ok(&[
            "pool", "create", "tank", "--raid", level, &d[0], &d[1], &d[2],
        ]);
        e.ok(&["vol", "create", "tank/db", "--size", "64M"]);
        let data = e.path("data.raw");
        random_file(&data, 40 << 20, 5);
        e.ok(&["vol", "import", "tank/db", "--from", data.to_str().unwrap()]);
        fs::remove_file(&d[1]).unwrap();
        let o = e.run(&["pool", "status", "tank"]);
        assert!(o.ok, "{}", o.stderr);
        assert!(
            o.stdout.contains("DEGRADED") && o.stderr.contains("missing"),
            "{}{}",
            o.stdout,
            o.stderr
        );
        let out = e.path("out.raw");
        e.ok(&["vol", "export", "tank/db", "--to", out.to_str().unwrap()]);
        assert!(
            prefix(&out, 40 << 20) == fs::read(&data).unwrap(),
            "{level}"
        );
    }
}

#[test]
fn cli_full_pool_says_by_how_much() {
    let e = Env::new();
    let d: Vec<String> = (1..=2)
        .map(|i| e.image(&format!("d{i}.img"), 48 << 20))
        .collect();
    e.ok(&["pool", "create", "small", "--raid", "raid0", &d[0], &d[1]]);
    e.ok(&["vol", "create", "small/keep", "--size", "8M"]);
    let keep = e.path("keep.raw");
    random_file(&keep, 8 << 20, 6);
    e.ok(&[
        "vol",
        "import",
        "small/keep",
        "--from",
        keep.to_str().unwrap(),
    ]);
    e.ok(&["vol", "create", "small/big", "--size", "1G"]);
    let big = e.path("big.raw");
    random_file(&big, 200 << 20, 7);
    let msg = e.fails(
        &[
            "vol",
            "import",
            "small/big",
            "--from",
            big.to_str().unwrap(),
        ],
        "is full",
    );
    assert!(msg.contains("did not fit") && msg.contains("hint"), "{msg}");
    let out = e.path("out.raw");
    e.ok(&["vol", "export", "small/keep", "--to", out.to_str().unwrap()]);
    assert!(
        fs::read(&out).unwrap() == fs::read(&keep).unwrap(),
        "earlier data intact"
    );
    e.ok(&["vol", "remove", "small/big"]);
    e.ok(&["vol", "create", "small/again", "--size", "16M"]);
    let again = e.path("again.raw");
    random_file(&again, 16 << 20, 8);
    e.ok(&[
        "vol",
        "import",
        "small/again",
        "--from",
        again.to_str().unwrap(),
    ]);
    let d2: Vec<&str> = d.iter().map(|s| s.as_str()).collect();
    assert!(e.ok(&["check", d2[0], d2[1]]).contains("clean"));
}

#[test]
fn cli_quickstart_builds_a_demo_pool() {
    let e = Env::new();
    let dir = e.path("demo");
    let out = e.ok(&["quickstart", "--no-serve", "--dir", dir.to_str().unwrap()]);
    assert!(out.contains("demo/vol1"), "{out}");
    assert!(
        out.contains("apt-get install qemu-utils libnbd-bin"),
        "the client commands it prints come with their packages: {out}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_vpool"))
        .args(["vol", "list", "--json"])
        .env("VPOOL_STATE_DIR", dir.join("state"))
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["name"], "demo/vol1");
    // Running it again is harmless.
    assert!(e
        .ok(&["quickstart", "--no-serve", "--dir", dir.to_str().unwrap()])
        .contains("using the demo pool"));
}

/// Metadata space through the binary (issue 16): `--metadata-size`, a full
/// metadata area that says what to do, snapshots removed to free it,
/// `pool set` to grow it, the status in text and JSON.
#[test]
fn cli_metadata_area_fills_frees_and_grows() {
    let e = Env::new();
    let d: Vec<String> = (1..=2)
        .map(|i| e.image(&format!("d{i}.img"), 96 << 20))
        .collect();
    e.ok(&[
        "pool",
        "create",
        "m",
        "--raid",
        "raid1",
        "--stripe-unit",
        "4K",
        "--metadata-size",
        "1M",
        &d[0],
        &d[1],
    ]);
    e.ok(&["pool", "set", "m", "metadata-autogrow=off"]);
    let s = e.json(&["pool", "status", "m", "--json"]);
    assert_eq!(s["metadata_total"], 1 << 20, "{s}");
    assert_eq!(s["metadata_autogrow"], false, "{s}");
    assert!(s["metadata_reserved"].as_u64().unwrap() > 0, "{s}");
    e.ok(&["vol", "create", "m/a", "--size", "8M"]);
    let piece = e.path("piece.raw");
    let mut snaps = Vec::new();
    let mut full = None;
    for i in 0..400u32 {
        random_file(&piece, 256 << 10, i as u8);
        let off = format!("{}K", (i * 1237) % (8 * 1024 - 256) / 4 * 4);
        let o = e.run(&[
            "vol",
            "import",
            "m/a",
            "--from",
            piece.to_str().unwrap(),
            "--offset",
            &off,
        ]);
        if !o.ok {
            full = Some(o.stderr);
            break;
        }
        let name = format!("m/a@s{i}");
        let o = e.run(&["snap", "create", &name]);
        if !o.ok {
            full = Some(o.stderr);
            break;
        }
        snaps.push(name);
    }
    let msg = full.expect("the 1 MiB metadata area fills");
    assert!(
        msg.contains("metadata area is full") && msg.contains("remove snapshots"),
        "{msg}"
    );
    let text = e.ok(&["pool", "status", "m"]);
    assert!(text.contains("kept for removals"), "{text}");
    assert!(
        text.contains("metadata area") && text.contains("% used"),
        "warning at 80/90%: {text}"
    );
    for s in &snaps {
        e.ok(&["snap", "remove", s]);
    }
    e.ok(&["snap", "create", "m/a@again"]);
    let out = e.ok(&["pool", "set", "m", "metadata-size=4M"]);
    assert!(out.contains("grown"), "{out}");
    let s = e.json(&["pool", "status", "m", "--json"]);
    assert!(
        s["metadata_total"].as_u64().unwrap() >= (4 << 20) - (64 << 10),
        "{s}"
    );
    assert_eq!(s["metadata_extents"], 1, "{s}");
    assert!(e.ok(&["pool", "status", "m"]).contains("grown online"));
    e.fails(&["pool", "set", "m", "metadata-size=1M"], "never shrinks");
    e.fails(&["pool", "set", "m", "colour=blue"], "unknown property");
    let d2: Vec<&str> = d.iter().map(|s| s.as_str()).collect();
    assert!(e.ok(&["check", d2[0], d2[1]]).contains("clean"));
}
