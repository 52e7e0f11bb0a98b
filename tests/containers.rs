//! Needs root, FUSE, loop devices and the container packages (docker.io,
//! podman, runc, busybox-static; tools/test-all.sh installs them): vpool's
//! volume plugin used by a private dockerd and by podman. Each engine runs
//! with its own root, state and sockets in a temp dir, every client call
//! under a time limit, and everything is stopped by PID and unmounted by
//! path at the end, even when the test fails.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use common::plugin::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/vpool-busybox:latest";
/// The snapshotter's volume with a fresh ext4, which new layers clone.
const EMPTY: &str = "tank/ctrd-empty";

/// A vpool daemon serving the plugin as driver `name` (the socket's name
/// under /run/docker/plugins, where Docker looks).
struct Plugin {
    d: Daemon,
    name: String,
    sock: PathBuf,
    root: PathBuf,
}

fn plugin(dir: &Path, tag: &str, g: &mut Cleanup) -> Plugin {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: run as root with FUSE"
    );
    require("mkfs.ext4", "e2fsprogs");
    let state = dir.join("state");
    make_pool(&state, "raid1", 2, 2 << 30, &[]);
    let name = format!("vpooltest-{tag}-{}", std::process::id());
    let sock = PathBuf::from(format!("/run/docker/plugins/{name}.sock"));
    let (root, files) = (state.join("docker"), state.join("files"));
    undo_plugin_mounts(g, &root, &files);
    let s = sock.clone();
    g.push(move || {
        let _ = std::fs::remove_file(&s);
    });
    let d = Daemon::start_with(&state, &["--docker-plugin", sock.to_str().unwrap()]);
    Plugin {
        d,
        name,
        sock,
        root,
    }
}

/// A busybox root filesystem as a tarball, for `docker/podman import`.
fn busybox_tar(dir: &Path) -> PathBuf {
    require("busybox", "busybox-static");
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let bb = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: install busybox-static");
    std::fs::copy(bb, rootfs.join("bin/busybox")).unwrap();
    for app in ["sh", "cat", "echo", "ls", "sleep", "test", "[", "mkdir"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(app)).unwrap();
    }
    let tar = dir.join("rootfs.tar");
    ok(
        Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg("."),
        60,
    );
    tar
}

/// Unmount everything mounted under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mut points: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = run(Command::new("umount").arg("-l").arg(&p), 30);
    }
}

/// Wait up to a minute for a daemon to answer; fail with its log.
fn wait_started(what: &str, log: &Path, ready: impl Fn() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not start: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A client's stdout, or a failure naming the call and its stderr.
fn stdout_ok(tool: &str, args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stop_pid(pid: i32, grace: Duration) {
    // SAFETY: signalling a process this test started, by PID.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let start = Instant::now();
    // SAFETY: probing with signal 0.
    while start.elapsed() < grace && unsafe { libc::kill(pid, 0) } == 0 {
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// A private dockerd; stopped by PID (with the containerd it started).
struct Dockerd {
    child: Child,
    dir: PathBuf,
}

impl Dockerd {
    fn start(dir: &Path) -> Dockerd {
        require("dockerd", "docker.io");
        std::fs::create_dir_all(dir).unwrap();
        let log = std::fs::File::create(dir.join("dockerd.log")).unwrap();
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("dockerd.pid"))
            .arg("-H")
            .arg(format!("unix://{}", dir.join("docker.sock").display()))
            .args(["--iptables=false", "--ip6tables=false", "--bridge=none"])
            .args(["--ip-forward=false", "--ip-masq=false"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dockerd");
        let d = Dockerd {
            child,
            dir: dir.to_path_buf(),
        };
        wait_started("dockerd", &dir.join("dockerd.log"), || {
            d.docker(&["info"]).status.success()
        });
        d
    }

    /// The Debian client (another `docker` in /usr/local/bin may shadow it).
    fn docker(&self, args: &[&str]) -> Output {
        let sock = format!("unix://{}", self.dir.join("docker.sock").display());
        run(
            Command::new("/usr/bin/docker")
                .args(["-H", &sock])
                .args(args),
            180,
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        stdout_ok("docker", args, self.docker(args))
            .trim()
            .to_string()
    }

    fn err(&self, args: &[&str], want: &str) {
        let o = self.docker(args);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && e.contains(want),
            "docker {args:?} should fail with '{want}': {e}"
        );
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        let _ = self.docker(&["rm", "-f", "vp-a", "vp-b"]);
        let containerd = std::fs::read_to_string(self.dir.join("exec/containerd/containerd.pid"));
        stop_pid(self.child.id() as i32, Duration::from_secs(20));
        let _ = self.child.wait();
        if let Some(pid) = containerd.ok().and_then(|p| p.trim().parse::<i32>().ok()) {
            stop_pid(pid, Duration::from_secs(5));
        }
        unmount_under(&self.dir);
    }
}

fn wait_for(path: &Path, secs: u64) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Each container writes its file, waits for the other's, and records it.
fn meet(me: &str, other: &str) -> String {
    format!(
        "echo {me} > /data/from-{me}; i=0; while [ ! -f /data/from-{other} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; cat /data/from-{other} > /data/{me}-saw; sleep 600"
    )
}

#[test]
fn docker_volumes_on_vpool() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let mut p = plugin(dir.path(), "docker", &mut g);
    let dk = Dockerd::start(&dir.path().join("docker"));
    dk.ok(&["import", busybox_tar(dir.path()).to_str().unwrap(), IMAGE]);
    let drv = p.name.clone();
    fn run_args(vol: &str) -> Vec<&str> {
        vec!["run", "--rm", "--network", "none", "-v", vol, IMAGE]
    }

    // Errors come from vpool, in words.
    dk.err(
        &["volume", "create", "-d", &drv, "-o", "size=lots", "bad"],
        "is not a size",
    );
    dk.err(
        &["volume", "create", "-d", &drv, "-o", "pool=nope", "bad"],
        "pool 'nope' not found",
    );
    dk.ok(&["volume", "create", "-d", &drv, "-o", "size=1G", "shared"]);

    // Two containers share one mount and see each other's files.
    for (me, other) in [("a", "b"), ("b", "a")] {
        let name = format!("vp-{me}");
        dk.ok(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            "none",
            "-v",
            "shared:/data",
            IMAGE,
            "sh",
            "-c",
            &meet(me, other),
        ]);
    }
    let data = p.root.join("shared/_data");
    wait_for(&data.join("a-saw"), 90);
    wait_for(&data.join("b-saw"), 90);
    assert_eq!(std::fs::read_to_string(data.join("a-saw")).unwrap(), "b\n");
    assert_eq!(std::fs::read_to_string(data.join("b-saw")).unwrap(), "a\n");
    let v = call_ok(&p.sock, "VolumeDriver.Get", r#"{"Name":"shared"}"#);
    assert_eq!(v["Volume"]["Status"]["mounts"], 2, "{v}");
    dk.err(&["volume", "rm", "shared"], "in use");
    dk.ok(&["rm", "-f", "vp-a"]);
    assert!(
        is_mounted(&p.root.join("shared")),
        "the other container still uses it"
    );
    dk.ok(&["rm", "-f", "vp-b"]);
    assert!(
        !is_mounted(&p.root.join("shared")),
        "unmounted after the last container"
    );

    // The data outlives the containers, and a vpool daemon restart.
    let mut args = run_args("shared:/data");
    args.extend(["cat", "/data/a-saw"]);
    assert_eq!(dk.ok(&args), "b");
    p.d.stop();
    p.d.restart();
    assert_eq!(dk.ok(&args), "b");

    // An instant writable clone.
    dk.ok(&[
        "volume",
        "create",
        "-d",
        &drv,
        "-o",
        "snapshot-of=shared",
        "shared-copy",
    ]);
    let mut args = run_args("shared-copy:/data");
    args.extend(["sh", "-c", "cat /data/from-a; echo changed > /data/from-a"]);
    assert_eq!(dk.ok(&args), "a");
    let mut args = run_args("shared:/data");
    args.extend(["cat", "/data/from-a"]);
    assert_eq!(dk.ok(&args), "a", "the clone's writes stay in the clone");

    let ls = dk.ok(&["volume", "ls", "--format", "{{.Driver}} {{.Name}}"]);
    assert!(
        ls.contains(&format!("{drv} shared\n")) && ls.contains(&format!("{drv} shared-copy")),
        "{ls}"
    );
    let inspect = dk.ok(&[
        "volume",
        "inspect",
        "--format",
        "{{.Status.volume}} {{.Status.size}}",
        "shared",
    ]);
    assert_eq!(inspect, "tank/shared 1G");
    dk.ok(&["volume", "rm", "shared-copy", "shared"]);
    let vols = p.d.vpool_ok(&["vol", "list"]);
    assert!(!vols.contains("tank/shared"), "{vols}");
}

#[test]
fn podman_volumes_on_vpool() {
    require("podman", "podman");
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let p = plugin(dir.path(), "podman", &mut g);
    // Podman finds plugins in its containers.conf; the VM lacks
    // CAP_SYS_RESOURCE, hence explicit ulimits.
    let conf = dir.path().join("containers.conf");
    std::fs::write(
        &conf,
        format!(
            "[containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=4096:4096\"]\n\
             [engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n\
             [engine.volume_plugins]\n{} = \"{}\"\n",
            p.name,
            p.sock.display()
        ),
    )
    .unwrap();
    let pd = dir.path().join("podman");
    let podman = |args: &[&str]| -> Output {
        run(
            Command::new("podman")
                .env("CONTAINERS_CONF", &conf)
                .arg("--root")
                .arg(pd.join("root"))
                .arg("--runroot")
                .arg(pd.join("run"))
                .arg("--tmpdir")
                .arg(pd.join("tmp"))
                .args(["--storage-driver", "vfs"])
                .args(args),
            180,
        )
    };
    let pok =
        |args: &[&str]| -> String { stdout_ok("podman", args, podman(args)).trim().to_string() };
    {
        let pd = pd.clone();
        g.push(move || unmount_under(&pd));
    }
    pok(&["import", busybox_tar(dir.path()).to_str().unwrap(), IMAGE]);
    let drv = p.name.as_str();
    let o = podman(&["volume", "create", "--driver", drv, "-o", "size=zz", "bad"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.contains("is not a size"), "{e}");

    pok(&["volume", "create", "--driver", drv, "-o", "size=1G", "pvol"]);
    pok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "pvol:/data",
        IMAGE,
        "sh",
        "-c",
        "echo from-podman > /data/p",
    ]);
    assert_eq!(
        pok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "pvol:/data",
            IMAGE,
            "cat",
            "/data/p"
        ]),
        "from-podman"
    );
    assert!(
        !is_mounted(&p.root.join("pvol")),
        "unmounted when the container exits"
    );
    // A volume made through the plugin elsewhere (here: the protocol) is
    // adopted by name.
    call_ok(
        &p.sock,
        "VolumeDriver.Create",
        r#"{"Name":"made-elsewhere","Opts":{"size":"1G"}}"#,
    );
    let m = call_ok(
        &p.sock,
        "VolumeDriver.Mount",
        r#"{"Name":"made-elsewhere","ID":"t"}"#,
    );
    std::fs::write(
        Path::new(m["Mountpoint"].as_str().unwrap()).join("hello"),
        "hi\n",
    )
    .unwrap();
    call_ok(
        &p.sock,
        "VolumeDriver.Unmount",
        r#"{"Name":"made-elsewhere","ID":"t"}"#,
    );
    pok(&["volume", "create", "--driver", drv, "made-elsewhere"]);
    assert_eq!(
        pok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            "made-elsewhere:/data",
            IMAGE,
            "cat",
            "/data/hello"
        ]),
        "hi"
    );
    pok(&["volume", "rm", "pvol"]);
    let vols = p.d.vpool_ok(&["vol", "list"]);
    assert!(
        !vols.contains("tank/pvol") && vols.contains("tank/made-elsewhere"),
        "{vols}"
    );
}

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
    std::fs::copy(busybox_tar_source(), bin.join("busybox")).unwrap();
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

fn busybox_tar_source() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: install busybox-static")
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
