//! Needs root, FUSE, loop devices and the container packages (docker.io,
//! podman, runc, busybox-static; tools/test-all.sh installs them): vpool's
//! volume plugin used by a private dockerd and by podman. Each engine runs
//! with its own root, state and sockets in a temp dir, every client call
//! under a time limit, and everything is stopped by PID and unmounted by
//! path at the end, even when the test fails.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use common::engines::*;
use common::plugin::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IMAGE: &str = "localhost/vpool-busybox:latest";

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
