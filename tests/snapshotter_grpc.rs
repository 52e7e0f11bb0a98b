//! Needs root, FUSE and loop devices (packages fuse3, e2fsprogs): the
//! containerd snapshot service spoken to the real daemon with a gRPC client,
//! every RPC and its error codes, without containerd (`containers.rs` runs
//! the real one).

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use common::plugin::undo_plugin_mounts;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;
use vpool::frontend::snapshotter::proto::api::snapshots_client::SnapshotsClient;
use vpool::frontend::snapshotter::proto::api::*;
use vpool::frontend::snapshotter::proto::Mount;

type Client = SnapshotsClient<Channel>;

/// Every call is bounded in time.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(120), f)
        .await
        .expect("a snapshotter call took over 120 s")
}

async fn connect(sock: PathBuf) -> Client {
    let ch = within(common::grpc::unix_channel(sock)).await;
    SnapshotsClient::new(ch.expect("connect to the snapshotter"))
}

fn labels(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>, tonic::Status> {
    within(c.prepare(PrepareSnapshotRequest {
        key: key.into(),
        parent: parent.into(),
        ..Default::default()
    }))
    .await
    .map(|r| r.into_inner().mounts)
}

async fn stat(c: &mut Client, key: &str) -> Result<Info, tonic::Status> {
    within(c.stat(StatSnapshotRequest {
        key: key.into(),
        ..Default::default()
    }))
    .await
    .map(|r| r.into_inner().info.expect("info"))
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<(), tonic::Status> {
    within(c.commit(CommitSnapshotRequest {
        name: name.into(),
        key: key.into(),
        labels: labels(&[("containerd.io/snapshot.ref", name)]),
        ..Default::default()
    }))
    .await
    .map(|_| ())
}

async fn remove(c: &mut Client, key: &str) -> Result<(), tonic::Status> {
    within(c.remove(RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    }))
    .await
    .map(|_| ())
}

async fn usage(c: &mut Client, key: &str) -> i64 {
    within(c.usage(UsageRequest {
        key: key.into(),
        ..Default::default()
    }))
    .await
    .expect("usage")
    .into_inner()
    .size
}

async fn list(c: &mut Client, filters: &[&str]) -> Result<Vec<String>, tonic::Status> {
    let mut stream = within(c.list(ListSnapshotsRequest {
        filters: filters.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }))
    .await?
    .into_inner();
    let mut names = Vec::new();
    while let Some(batch) = within(stream.message()).await? {
        names.extend(batch.info.into_iter().map(|i| i.name));
    }
    names.sort();
    Ok(names)
}

fn code<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> Code {
    r.expect_err("the call should fail").code()
}

/// Mount what the snapshotter returned, as containerd does, run `f` on
/// the directory, unmount.
fn with_mounted(m: &[Mount], dir: &Path, f: impl FnOnce(&Path)) {
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].r#type, "ext4");
    std::fs::create_dir_all(dir).unwrap();
    let mut g = Cleanup::default();
    ok(
        Command::new("mount")
            .args(["-t", "ext4", "-o", &m[0].options.join(",")])
            .arg(&m[0].source)
            .arg(dir),
        60,
    );
    g.unmount_later(dir);
    f(dir);
    ok(Command::new("umount").arg(dir), 60);
}

fn volumes(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.vpool_ok(&["vol", "list", "--json"])).unwrap()
}

/// A raid1 pool and a daemon serving the snapshotter on `dir/snap.sock`
/// (with `extra` arguments); its mounts are undone at cleanup.
fn snapshotter_daemon(dir: &Path, extra: &[&str], g: &mut Cleanup) -> (Daemon, PathBuf, PathBuf) {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: run as root with FUSE"
    );
    require("mkfs.ext4", "e2fsprogs");
    let state = dir.join("state");
    make_pool(&state, "raid1", 2, 1 << 30, &[]);
    undo_plugin_mounts(g, &state.join("snapshotter"), &state.join("files"));
    let sock = dir.join("snap.sock");
    let mut args = vec!["--snapshotter", sock.to_str().unwrap()];
    args.extend(extra);
    (Daemon::start_with(&state, &args), state, sock)
}

#[test]
fn every_rpc_and_its_error_codes() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let (mut d, state, sock) =
        snapshotter_daemon(dir.path(), &["--snapshotter-size", "2G"], &mut g);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mnt = dir.path().join("mnt");
    let payload = common::pattern(1 << 20, 3);

    rt.block_on(async {
        let mut c = connect(sock.clone()).await;
        // A first layer: a new volume with a fresh ext4.
        let m = prepare(&mut c, "default/1/extract-a", "").await.unwrap();
        assert_eq!(m[0].options, vec!["loop", "rw", "noinit_itable"]);
        assert!(m[0].source.ends_with("/tank/ctrd-1"), "{:?}", m[0]);
        assert_eq!(
            code(prepare(&mut c, "default/1/extract-a", "").await),
            Code::AlreadyExists
        );
        assert_eq!(
            code(prepare(&mut c, "x", "default/1/extract-a").await),
            Code::InvalidArgument,
            "an active parent"
        );
        assert_eq!(code(prepare(&mut c, "x", "ghost").await), Code::NotFound);
        assert_eq!(code(prepare(&mut c, "", "").await), Code::InvalidArgument);
        let i = stat(&mut c, "default/1/extract-a").await.unwrap();
        assert_eq!(i.kind, Kind::Active as i32);
        with_mounted(&m, &mnt, |d| {
            std::fs::write(d.join("base-file"), &payload).unwrap()
        });

        // Commit: the key becomes a committed name.
        assert_eq!(code(commit(&mut c, "l1", "ghost").await), Code::NotFound);
        commit(&mut c, "default/2/sha256:l1", "default/1/extract-a")
            .await
            .unwrap();
        assert_eq!(
            code(stat(&mut c, "default/1/extract-a").await),
            Code::NotFound
        );
        let i = stat(&mut c, "default/2/sha256:l1").await.unwrap();
        assert_eq!((i.kind, i.parent.as_str()), (Kind::Committed as i32, ""));
        assert_eq!(
            i.labels
                .get("containerd.io/snapshot.ref")
                .map(String::as_str),
            Some("default/2/sha256:l1")
        );
        let mounts = within(c.mounts(MountsRequest {
            key: "default/2/sha256:l1".into(),
            ..Default::default()
        }))
        .await;
        assert_eq!(
            code(mounts),
            Code::FailedPrecondition,
            "committed snapshots are not mounted"
        );

        // A container's layer and a view: clones of the committed layer.
        let m = prepare(&mut c, "default/3/ctr", "default/2/sha256:l1")
            .await
            .unwrap();
        with_mounted(&m, &mnt, |d| {
            assert_eq!(std::fs::read(d.join("base-file")).unwrap(), payload);
            std::fs::write(d.join("mine"), common::pattern(2 << 20, 4)).unwrap();
        });
        prepare(&mut c, "default/3/other", "").await.unwrap();
        assert_eq!(
            code(commit(&mut c, "default/2/sha256:l1", "default/3/other").await),
            Code::AlreadyExists
        );
        let v = within(c.view(ViewSnapshotRequest {
            key: "default/4/view".into(),
            parent: "default/2/sha256:l1".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .mounts;
        assert!(v[0].options.contains(&"ro".to_string()));
        with_mounted(&v, &mnt, |d| {
            assert_eq!(std::fs::read(d.join("base-file")).unwrap(), payload)
        });
        assert_eq!(
            code(commit(&mut c, "n", "default/4/view").await),
            Code::FailedPrecondition,
            "views are not committed"
        );
        let again = within(c.mounts(MountsRequest {
            key: "default/3/ctr".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
        assert_eq!(again.into_inner().mounts[0].source, m[0].source);

        // Usage counts a layer's own chunks only.
        let (base, ctr, view) = (
            usage(&mut c, "default/2/sha256:l1").await,
            usage(&mut c, "default/3/ctr").await,
            usage(&mut c, "default/4/view").await,
        );
        assert!(
            base >= 1 << 20,
            "the base layer holds its 1 MiB file: {base}"
        );
        assert!(
            (2 << 20..base + (2 << 20)).contains(&ctr),
            "the container layer holds its 2 MiB file, not its parent's: {ctr} (base {base})"
        );
        assert!(view < 1 << 20, "a view writes (almost) nothing: {view}");

        // Remove: not with children; unknown keys are NotFound.
        assert_eq!(
            code(remove(&mut c, "default/2/sha256:l1").await),
            Code::FailedPrecondition
        );
        assert_eq!(code(remove(&mut c, "ghost").await), Code::NotFound);

        // Update: labels only.
        let upd = |lb: HashMap<String, String>, paths: &[&str]| UpdateSnapshotRequest {
            info: Some(Info {
                name: "default/2/sha256:l1".into(),
                labels: lb,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: paths.iter().map(|s| s.to_string()).collect(),
            }),
            ..Default::default()
        };
        let i = within(c.update(upd(labels(&[("a", "1"), ("b", "2")]), &[])))
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(i.labels, labels(&[("a", "1"), ("b", "2")]));
        let i = within(c.update(upd(labels(&[("c", "3")]), &["labels.a", "labels.c"])))
            .await
            .unwrap()
            .into_inner()
            .info
            .unwrap();
        assert_eq!(i.labels, labels(&[("b", "2"), ("c", "3")]));
        assert_eq!(
            code(within(c.update(upd(HashMap::new(), &["parent"]))).await),
            Code::InvalidArgument
        );
        let mut ghost = upd(HashMap::new(), &[]);
        ghost.info.as_mut().unwrap().name = "ghost".into();
        assert_eq!(code(within(c.update(ghost)).await), Code::NotFound);

        // List, with containerd's filters.
        let all = list(&mut c, &[]).await.unwrap();
        assert_eq!(
            all,
            vec![
                "default/2/sha256:l1",
                "default/3/ctr",
                "default/3/other",
                "default/4/view"
            ]
        );
        assert_eq!(
            list(&mut c, &["kind==committed"]).await.unwrap(),
            vec!["default/2/sha256:l1"]
        );
        assert_eq!(
            list(&mut c, &[r#"labels."b"==2"#, "kind==view"])
                .await
                .unwrap(),
            vec!["default/2/sha256:l1", "default/4/view"]
        );
        assert_eq!(
            list(&mut c, &["parent==default/2/sha256:l1,kind==active"])
                .await
                .unwrap(),
            vec!["default/3/ctr"]
        );
        assert_eq!(
            code(list(&mut c, &["name~=ctr"]).await),
            Code::InvalidArgument
        );
        within(c.cleanup(CleanupRequest::default())).await.unwrap();
    });

    // The layer chain is a chain of thin clones.
    let vols = volumes(&d);
    let origin = |n: &str| {
        vols.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == n)
            .unwrap()["origin"]
            .clone()
    };
    assert_eq!(origin("tank/ctrd-2"), "tank/ctrd-1");
    assert_eq!(origin("tank/ctrd-4"), "tank/ctrd-1");

    // Records survive SIGKILL; a volume without a record (a crash between
    // the two) is removed at the next start.
    d.kill();
    let o = Command::new(vpool_bin())
        .arg("--state-dir")
        .arg(&state)
        .args(["vol", "create", "tank/ctrd-99", "--size", "1G"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d.restart();
    assert!(
        !d.vpool_ok(&["vol", "list"]).contains("ctrd-99"),
        "the orphan volume is removed"
    );
    rt.block_on(async {
        let mut c = connect(sock.clone()).await;
        let i = stat(&mut c, "default/2/sha256:l1").await.unwrap();
        assert_eq!(i.labels, labels(&[("b", "2"), ("c", "3")]));
        let m = within(c.mounts(MountsRequest {
            key: "default/3/ctr".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .mounts;
        with_mounted(&m, &mnt, |d| {
            assert_eq!(
                std::fs::read(d.join("mine")).unwrap(),
                common::pattern(2 << 20, 4)
            )
        });
        for k in [
            "default/3/ctr",
            "default/4/view",
            "default/3/other",
            "default/2/sha256:l1",
        ] {
            remove(&mut c, k).await.unwrap();
        }
        assert!(list(&mut c, &[]).await.unwrap().is_empty());
    });
    let left = d.vpool_ok(&["vol", "list"]);
    assert!(
        left.lines()
            .filter(|l| l.contains("ctrd-"))
            .all(|l| l.starts_with("tank/ctrd-empty ")),
        "removing snapshots removes their volumes (the empty template stays): {left}"
    );
    d.stop();
}

/// Mount a list of mounts the way containerd does (bind or overlay).
fn mount_spec(m: &Mount, dir: &Path, g: &mut Cleanup) {
    std::fs::create_dir_all(dir).unwrap();
    let opts = m.options.join(",");
    let mut cmd = Command::new("mount");
    match m.r#type.as_str() {
        "bind" => cmd.args(["--bind", &m.source]).arg(dir),
        t => cmd.args(["-t", t, "-o", &opts, &m.source]).arg(dir),
    };
    ok(&mut cmd, 60);
    g.unmount_later(dir);
    if m.options.iter().any(|o| o == "ro") && m.r#type == "bind" {
        ok(
            Command::new("mount")
                .args(["-o", "remount,bind,ro"])
                .arg(dir),
            60,
        );
    }
}

fn mount_options(dir: &Path) -> Option<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(4) == dir.to_str())
        .and_then(|l| l.split(' ').nth(5).map(str::to_string))
}

#[test]
fn overlay_mode_layers_are_volumes_joined_by_overlayfs() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let extra = ["--snapshotter-size", "1G", "--snapshotter-mode", "overlay"];
    let (mut d, state, sock) = snapshotter_daemon(dir.path(), &extra, &mut g);
    let layers = state.join("snapshotter");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let payload = common::pattern(1 << 20, 9);

    rt.block_on(async {
        let mut c = connect(sock.clone()).await;
        // A base layer: its own directory, bound read-write.
        let m = prepare(&mut c, "base-key", "").await.unwrap();
        assert_eq!(
            (m[0].r#type.as_str(), m[0].options.clone()),
            ("bind", vec!["rbind".to_string(), "rw".into()])
        );
        assert_eq!(m[0].source, layers.join("ctrd-1/fs").display().to_string());
        {
            let mut g = Cleanup::default();
            mount_spec(&m[0], &dir.path().join("m1"), &mut g);
            std::fs::write(dir.path().join("m1/base-file"), &payload).unwrap();
            std::fs::write(dir.path().join("m1/to-delete"), b"x").unwrap();
        }
        commit(&mut c, "base", "base-key").await.unwrap();
        let opts =
            mount_options(&layers.join("ctrd-1")).expect("the committed layer stays mounted");
        assert!(
            opts.split(',').any(|o| o == "ro"),
            "committed layers are read-only: {opts}"
        );

        // A child: overlayfs, the parent as lower directory.
        let m = prepare(&mut c, "ctr", "base").await.unwrap();
        assert_eq!(m[0].r#type, "overlay");
        assert_eq!(
            m[0].options[2],
            format!("lowerdir={}", layers.join("ctrd-1/fs").display())
        );
        {
            let mut g = Cleanup::default();
            let mnt = dir.path().join("m2");
            mount_spec(&m[0], &mnt, &mut g);
            assert_eq!(std::fs::read(mnt.join("base-file")).unwrap(), payload);
            std::fs::remove_file(mnt.join("to-delete")).unwrap();
            std::fs::write(mnt.join("mine"), b"child").unwrap();
        }
        assert!(
            layers.join("ctrd-1/fs/to-delete").exists(),
            "the lower layer is untouched"
        );
        // A view of one layer is that layer, read-only.
        let v = within(c.view(ViewSnapshotRequest {
            key: "v".into(),
            parent: "base".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .mounts;
        assert_eq!(
            (v[0].r#type.as_str(), v[0].options[1].as_str()),
            ("bind", "ro")
        );
        assert_eq!(
            usage(&mut c, "v").await,
            0,
            "a view of a layer has no volume"
        );
        assert!(usage(&mut c, "base").await >= 1 << 20);
        assert_eq!(code(remove(&mut c, "base").await), Code::FailedPrecondition);
    });

    // SIGKILL: the next start detaches the dead layer mounts and mounts
    // them again.
    d.kill();
    d.restart();
    let opts = mount_options(&layers.join("ctrd-1")).expect("remounted at start");
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    assert_eq!(
        std::fs::read(layers.join("ctrd-1/fs/base-file")).unwrap(),
        payload
    );
    assert_eq!(
        std::fs::read(layers.join("ctrd-2/fs/mine")).unwrap(),
        b"child"
    );
    rt.block_on(async {
        let mut c = connect(sock.clone()).await;
        for k in ["v", "ctr", "base"] {
            remove(&mut c, k).await.unwrap();
        }
    });
    assert!(
        mount_options(&layers.join("ctrd-1")).is_none()
            && mount_options(&layers.join("ctrd-2")).is_none()
    );
    assert!(
        common::plugin::loops_left(&state.join("files")).is_empty(),
        "loop devices detached"
    );
    let left = d.vpool_ok(&["vol", "list"]);
    assert!(
        left.lines()
            .filter(|l| l.contains("ctrd-"))
            .all(|l| l.starts_with("tank/ctrd-empty ")),
        "{left}"
    );
    d.stop();
}

/// Volume names the records in `snapshotter.json` use.
fn recorded_volumes(state: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(state.join("snapshotter.json")).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut out: Vec<String> = v["snapshots"]
        .as_object()
        .map(|m| {
            m.values()
                .filter_map(|r| r["volume"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    out.retain(|n| !n.is_empty());
    out.sort();
    out
}

#[test]
fn records_and_volumes_agree_after_sigkill_mid_call() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let (mut d, state, sock) =
        snapshotter_daemon(dir.path(), &["--snapshotter-size", "256M"], &mut g);
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (round, delay_ms) in [150u64, 400, 900].into_iter().enumerate() {
        // A client prepares, commits and removes as fast as it can ...
        let client = {
            let sock = sock.clone();
            rt.spawn(async move {
                let mut c = connect(sock).await;
                for i in 0.. {
                    let (key, name) = (format!("r{round}-k{i}"), format!("r{round}-n{i}"));
                    let parent = if i > 0 {
                        format!("r{round}-n{}", i - 1)
                    } else {
                        String::new()
                    };
                    if prepare(&mut c, &key, &parent).await.is_err()
                        || commit(&mut c, &name, &key).await.is_err()
                    {
                        break;
                    }
                    if i % 3 == 2 {
                        let _ = prepare(&mut c, &format!("{key}-x"), &name).await;
                        if remove(&mut c, &format!("{key}-x")).await.is_err() {
                            break;
                        }
                    }
                }
            })
        };
        // ... until the daemon is killed under it.
        std::thread::sleep(Duration::from_millis(delay_ms));
        d.kill();
        rt.block_on(async { within(client).await.unwrap() });
        d.restart();
        // Every record has its volume, and every snapshot volume a record.
        let recorded = recorded_volumes(&state);
        let vols = volumes(&d);
        let mut in_pool: Vec<String> = vols
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|v| v["name"].as_str())
            .filter_map(|n| n.strip_prefix("tank/"))
            .filter(|n| n.starts_with("ctrd-") && *n != "ctrd-empty")
            .map(str::to_string)
            .collect();
        in_pool.sort();
        assert_eq!(
            recorded, in_pool,
            "round {round}: records and volumes differ after a SIGKILL"
        );
        assert!(
            !recorded.is_empty() || round > 0,
            "the client got some work done before the kill"
        );
        // Never a record without its volume (reconcile would drop it, and
        // containerd would lose a snapshot it was told exists).
        assert!(
            !d.log().contains("record dropped"),
            "round {round}: a record outlived its volume"
        );
        // And the survivors still work: a child of the newest committed layer.
        rt.block_on(async {
            let mut c = connect(sock.clone()).await;
            let committed = list(&mut c, &["kind==committed"]).await.unwrap();
            if let Some(top) = committed.last() {
                prepare(&mut c, &format!("after-{round}"), top)
                    .await
                    .unwrap();
                remove(&mut c, &format!("after-{round}")).await.unwrap();
            }
        });
    }
    d.stop();
}

/// As systemd starts it on a new host: the daemon with `--snapshotter`
/// comes up before any pool exists, serves everything else, answers the
/// snapshotter's calls with UNAVAILABLE saying what to do, and takes up the
/// pool once it is created, without a restart.
#[test]
fn a_daemon_started_before_any_pool_takes_it_up_when_created() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: run as root with FUSE"
    );
    require("mkfs.ext4", "e2fsprogs");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    undo_plugin_mounts(&mut g, &state.join("snapshotter"), &state.join("files"));
    let sock = dir.path().join("snap.sock");
    let args = [
        "--snapshotter",
        sock.to_str().unwrap(),
        "--snapshotter-size",
        "256M",
    ];
    let mut d = Daemon::start_with(&state, &args);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = connect(sock.clone()).await;
        let r = prepare(&mut c, "k1", "").await;
        let e = r.expect_err("no pool yet");
        assert_eq!(e.code(), Code::Unavailable, "{e:?}");
        assert!(e.message().contains("vpool pool create"), "{e:?}");
        // The rest of the daemon is up: its control API answers.
        d.vpool_ok(&["pool", "list"]);
        let img = dir.path().join("m0.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(1 << 30)
            .unwrap();
        d.vpool_ok(&[
            "pool",
            "create",
            "tank",
            "--raid",
            "linear",
            img.to_str().unwrap(),
        ]);
        let m = prepare(&mut c, "k1", "")
            .await
            .expect("prepare once the pool exists");
        assert_eq!(m.len(), 1, "{m:?}");
        assert_eq!(stat(&mut c, "k1").await.expect("stat").name, "k1");
        remove(&mut c, "k1").await.expect("remove");
    });
    d.stop();
}
