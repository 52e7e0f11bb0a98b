//! Needs root, FUSE, loop devices and the container packages (containerd,
//! runc, umoci, busybox-static; tools/test-all.sh installs them): vpool as
//! the proxy snapshotter of a private containerd, in block and overlay
//! mode. containerd runs with its own root, state and socket in a temp dir,
//! every ctr call under a time limit, and everything is stopped by PID and
//! unmounted by path at the end, even when the test fails.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use common::engines::*;
use common::plugin::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The snapshotter's volume with a fresh ext4, which new layers clone.
const EMPTY: &str = "tank/ctrd-empty";

/// A two-layer busybox image in OCI layout, as a tarball for `ctr images
/// import`: layer 1 holds busybox, layer 2 adds `/hello`.
fn oci_image(dir: &Path) -> PathBuf {
    require("umoci", "umoci");
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let img = format!("{}:latest", layout.display());
    let umoci = |args: &[&str]| ok(Command::new("umoci").args(args), 120);
    umoci(&["init", "--layout", layout.to_str().unwrap()]);
    umoci(&["new", "--image", &img]);
    umoci(&["unpack", "--image", &img, bundle.to_str().unwrap()]);
    let bin = bundle.join("rootfs/bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy(busybox(), bin.join("busybox")).unwrap();
    for app in ["sh", "cat", "echo", "ls"] {
        std::os::unix::fs::symlink("busybox", bin.join(app)).unwrap();
    }
    umoci(&["repack", "--image", &img, bundle.to_str().unwrap()]);
    std::fs::remove_dir_all(&bundle).unwrap();
    umoci(&["unpack", "--image", &img, bundle.to_str().unwrap()]);
    std::fs::write(bundle.join("rootfs/hello"), "layer2\n").unwrap();
    umoci(&["repack", "--image", &img, bundle.to_str().unwrap()]);
    umoci(&["config", "--image", &img, "--config.cmd", "/bin/sh"]);
    let tar = dir.join("image.tar");
    ok(
        Command::new("tar")
            .arg("-C")
            .arg(&layout)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        60,
    );
    tar
}

/// A private containerd with vpool as proxy snapshotter `vpooltest`;
/// stopped by PID, its tasks killed first.
struct Containerd {
    child: Child,
    dir: PathBuf,
    /// Task IDs: runc keeps its state under /run for every containerd, so
    /// they are unique per test run.
    tasks: [String; 2],
}

impl Containerd {
    fn start(dir: &Path, snapshotter: &Path, tag: &str) -> Containerd {
        require("containerd", "containerd");
        require("ctr", "containerd");
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let config = format!(
            "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{d}/containerd.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{d}/opt\"\n\
             [proxy_plugins.vpooltest]\n  type = \"snapshot\"\n  address = \"{}\"\n",
            snapshotter.display()
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("containerd.log")).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let id = |n: u32| format!("vp-{tag}-{}-t{n}", std::process::id());
        let c = Containerd {
            child,
            dir: dir.to_path_buf(),
            tasks: [id(1), id(2)],
        };
        wait_started("containerd", &dir.join("containerd.log"), || {
            c.ctr(&["version"]).status.success()
        });
        c
    }

    fn ctr(&self, args: &[&str]) -> Output {
        let sock = self.dir.join("containerd.sock");
        run(Command::new("ctr").arg("-a").arg(&sock).args(args), 180)
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_ok("ctr", args, self.ctr(args))
    }

    /// containerd dials the snapshotter lazily and, after a failed dial,
    /// fails fast for a few seconds: retry a while.
    fn ok_retrying(&self, args: &[&str]) -> String {
        let start = Instant::now();
        loop {
            let o = self.ctr(args);
            if o.status.success() {
                return String::from_utf8_lossy(&o.stdout).to_string();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "ctr {args:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Snapshot keys `ctr snapshots ls` shows, sorted.
    fn snapshots(&self) -> Vec<String> {
        let out = self.ok(&["snapshots", "--snapshotter", "vpooltest", "ls"]);
        let mut keys: Vec<String> = out
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for t in self.tasks.clone().iter().map(String::as_str) {
            let _ = self.ctr(&["task", "kill", "-s", "SIGKILL", t]);
            let _ = self.ctr(&["task", "rm", "-f", t]);
            let _ = self.ctr(&["container", "rm", t]);
        }
        stop_pid(self.child.id() as i32, Duration::from_secs(20));
        let _ = self.child.wait();
        unmount_under(&self.dir);
    }
}

fn ctrd_volumes(d: &Daemon) -> Vec<serde_json::Value> {
    let out = d.vpool_ok(&["vol", "list", "--json"]);
    let v: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    v.into_iter()
        .filter(|x| {
            let n = x["name"].as_str().unwrap_or("");
            n.starts_with("tank/ctrd-") && n != "tank/ctrd-empty"
        })
        .collect()
}

#[test]
fn containerd_runs_images_on_vpool_layers() {
    containerd_case(false);
}

#[test]
fn containerd_runs_images_on_overlay_layers() {
    containerd_case(true);
}

fn containerd_case(overlay: bool) {
    require("runc", "runc");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: run as root with FUSE"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 2 << 30, &[]);
    undo_plugin_mounts(&mut g, &state.join("none"), &state.join("files"));
    let sock = dir.path().join("snap.sock");
    let mode = if overlay { "overlay" } else { "block" };
    let mut d = Daemon::start_with(
        &state,
        &[
            "--snapshotter",
            sock.to_str().unwrap(),
            "--snapshotter-mode",
            mode,
        ],
    );
    undo_plugin_mounts(&mut g, &state.join("snapshotter"), &state.join("files"));
    let image = oci_image(dir.path());
    let c = Containerd::start(&dir.path().join("containerd"), &sock, mode);

    c.ok_retrying(&[
        "images",
        "import",
        "--snapshotter",
        "vpooltest",
        "--base-name",
        "localhost/vpbb",
        image.to_str().unwrap(),
    ]);
    let out = c.ok(&[
        "run",
        "--snapshotter",
        "vpooltest",
        "--rm",
        "localhost/vpbb:latest",
        &c.tasks[0],
        "sh",
        "-c",
        "cat /hello; echo written > /w; cat /w",
    ]);
    assert_eq!(
        out.trim().lines().collect::<Vec<_>>(),
        vec!["layer2", "written"]
    );

    // Two committed layers (block mode: a chain of thin clones); the
    // container's own layer is gone with the container.
    let start = Instant::now();
    while ctrd_volumes(&d).len() != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "volumes: {:?}",
            ctrd_volumes(&d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let keys = c.snapshots();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let vols = ctrd_volumes(&d);
    if overlay {
        assert!(
            vols.iter().all(|v| v["origin"] == EMPTY),
            "overlay layers are volumes of their own (clones of the empty template)"
        );
        let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for v in &vols {
            let name = v["name"].as_str().unwrap().trim_start_matches("tank/");
            let dir = state.join("snapshotter").join(name);
            assert!(
                mounted.contains(&format!(" {} ", dir.display())),
                "layer {name} is mounted"
            );
        }
    }
    let top = vols.iter().find(|v| v["origin"] != EMPTY);
    let base = vols.iter().find(|v| v["origin"] == EMPTY);
    if !overlay {
        let top = top.expect("the top layer is a clone of the base");
        assert_eq!(top["origin"], base.expect("the base layer")["name"]);
    }
    // ctr's view agrees: one layer is the other's parent, and the top
    // layer's usage is its own chunks (the 7-byte file and some metadata),
    // not its parent's busybox.
    let infos: Vec<serde_json::Value> = keys
        .iter()
        .map(|k| {
            serde_json::from_str(&c.ok(&["snapshots", "--snapshotter", "vpooltest", "info", k]))
                .unwrap()
        })
        .collect();
    let child = infos
        .iter()
        .find(|i| i["Parent"].as_str().is_some_and(|p| !p.is_empty()))
        .expect("a child layer");
    assert!(keys.contains(&child["Parent"].as_str().unwrap().to_string()));
    let usage = c.ok(&["snapshots", "--snapshotter", "vpooltest", "usage"]);
    let size_of = |key: &str| -> String {
        usage
            .lines()
            .find(|l| l.starts_with(key))
            .unwrap_or_else(|| panic!("{key} in {usage}"))
            .split_whitespace()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let child_size = size_of(child["Name"].as_str().unwrap());
    assert!(
        child_size.ends_with("KiB"),
        "the top layer's usage: {child_size} ({usage})"
    );
    assert!(
        size_of(child["Parent"].as_str().unwrap()).ends_with("MiB"),
        "{usage}"
    );

    // `ctr snapshots prepare` and `rm` make and remove a volume.
    let top_key = child["Name"].as_str().unwrap().to_string();
    c.ok(&[
        "snapshots",
        "--snapshotter",
        "vpooltest",
        "prepare",
        "vp-extra",
        &top_key,
    ]);
    assert_eq!(ctrd_volumes(&d).len(), 3, "a prepared snapshot is a volume");
    c.ok(&["snapshots", "--snapshotter", "vpooltest", "rm", "vp-extra"]);
    let start = Instant::now();
    while ctrd_volumes(&d).len() != 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{:?}",
            ctrd_volumes(&d)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // Across a vpool restart, the image runs again.
    d.stop();
    d.restart();
    let out = c.ok_retrying(&[
        "run",
        "--snapshotter",
        "vpooltest",
        "--rm",
        "localhost/vpbb:latest",
        &c.tasks[1],
        "cat",
        "/hello",
    ]);
    assert_eq!(out.trim(), "layer2");

    // Removing the image frees its layers and their volumes.
    c.ok(&["images", "rm", "--sync", "localhost/vpbb:latest"]);
    let start = Instant::now();
    while !ctrd_volumes(&d).is_empty() || !c.snapshots().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "left: {:?} {:?}",
            ctrd_volumes(&d),
            c.snapshots()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
