//! Needs root, FUSE and loop devices (packages fuse3, e2fsprogs, xfsprogs,
//! util-linux): Docker's volume plugin protocol spoken to the real daemon,
//! call by call, without Docker. `containers.rs` runs real dockerd/podman.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use common::plugin::*;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Setup {
    d: Daemon,
    sock: PathBuf,
    root: PathBuf,
    files: PathBuf,
}

/// A raid1 pool and a daemon serving the plugin on `dir/plugin.sock`;
/// mounts and loop devices are undone at cleanup whatever happens.
fn plugin_daemon(dir: &Path, g: &mut Cleanup) -> Setup {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    require("mkfs.ext4", "e2fsprogs");
    require("blkid", "util-linux");
    let state = dir.join("state");
    make_pool(&state, "raid1", 2, 2 << 30, &[]);
    let sock = dir.join("plugin.sock");
    let (root, files) = (state.join("docker"), state.join("files"));
    undo_plugin_mounts(g, &root, &files);
    let d = Daemon::start_with(
        &state,
        &[
            "--docker-plugin",
            sock.to_str().unwrap(),
            "--docker-default-size",
            "3G",
        ],
    );
    Setup {
        d,
        sock,
        root,
        files,
    }
}

fn mapped(d: &Daemon, vol: &str) -> u64 {
    let out = d.vpool_ok(&["vol", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == format!("tank/{vol}"))
        .unwrap_or_else(|| panic!("tank/{vol} not in {out}"))["mapped"]
        .as_u64()
        .unwrap()
}

#[test]
fn every_call_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let s = plugin_daemon(dir.path(), &mut g);
    let sock = &s.sock;

    let v = call_ok(sock, "Plugin.Activate", "");
    assert_eq!(v["Implements"], serde_json::json!(["VolumeDriver"]));
    let v = call_ok(sock, "VolumeDriver.Capabilities", "{}");
    assert_eq!(v["Capabilities"]["Scope"], "local");
    let (status, _) = call(sock, "VolumeDriver.Frobnicate", "{}");
    assert_eq!(status, 404);
    let (status, v) = call(sock, "VolumeDriver.Create", "{not json");
    assert_eq!(status, 400, "{v}");

    // Bad input changes nothing.
    let create = |name: &str, opts: &str| format!(r#"{{"Name":"{name}","Opts":{opts}}}"#);
    // Names are text: a long name with a multi-byte character where it is
    // shortened (it killed a worker once) is shortened before it; one with
    // the character in what is kept is refused; every worker still answers.
    let across = format!("{}é{}", "a".repeat(53), "b".repeat(20));
    call_ok(sock, "VolumeDriver.Create", &create(&across, "{}"));
    call_ok(
        sock,
        "VolumeDriver.Remove",
        &format!(r#"{{"Name":"{across}"}}"#),
    );
    let inside = format!("{}é{}", "a".repeat(50), "b".repeat(20));
    call_err(
        sock,
        "VolumeDriver.Create",
        &create(&inside, "{}"),
        "not allowed",
    );
    for _ in 0..8 {
        call_ok(sock, "VolumeDriver.Capabilities", "{}");
    }
    call_err(
        sock,
        "VolumeDriver.Create",
        &create("x", r#"{"size":"lots"}"#),
        "not a size",
    );
    call_err(
        sock,
        "VolumeDriver.Create",
        &create("x", r#"{"colour":"red"}"#),
        "unknown option 'colour'",
    );
    call_err(
        sock,
        "VolumeDriver.Create",
        &create("x", r#"{"fs":"vfat"}"#),
        "not supported",
    );
    call_err(
        sock,
        "VolumeDriver.Create",
        &create("selfie", r#"{"snapshot-of":"selfie"}"#),
        "itself",
    );
    call_err(
        sock,
        "VolumeDriver.Create",
        &create("x", r#"{"pool":"nope"}"#),
        "pool 'nope' not found",
    );
    call_err(
        sock,
        "VolumeDriver.Create",
        &create("x", r#"{"snapshot-of":"nope"}"#),
        "no vpool Docker volume 'nope'",
    );
    call_err(
        sock,
        "VolumeDriver.Create",
        &create("bad name", "{}"),
        "invalid volume name",
    );
    call_err(
        sock,
        "VolumeDriver.Create",
        r#"{"Opts":{}}"#,
        "names no volume",
    );
    let list = call_ok(sock, "VolumeDriver.List", "{}");
    assert_eq!(list["Volumes"], serde_json::json!([]), "{list}");
    assert!(!s.d.vpool_ok(&["vol", "list"]).contains("tank/x"));

    // Create: thin, default size, idempotent; Opts may be null.
    call_ok(
        sock,
        "VolumeDriver.Create",
        &create("web", r#"{"size":"10G"}"#),
    );
    call_ok(
        sock,
        "VolumeDriver.Create",
        &create("web", r#"{"size":"10G"}"#),
    );
    call_ok(
        sock,
        "VolumeDriver.Create",
        r#"{"Name":"plain","Opts":null}"#,
    );
    let anon = "a".repeat(64);
    call_ok(sock, "VolumeDriver.Create", &create(&anon, "{}"));
    let v = call_ok(sock, "VolumeDriver.Get", r#"{"Name":"web"}"#);
    assert_eq!(v["Volume"]["Name"], "web");
    assert_eq!(v["Volume"]["Mountpoint"], "");
    assert_eq!(v["Volume"]["Status"]["size"], "10G");
    assert_eq!(v["Volume"]["Status"]["volume"], "tank/web");
    assert!(v["Volume"]["CreatedAt"].as_str().unwrap().ends_with('Z'));
    let v = call_ok(sock, "VolumeDriver.Get", r#"{"Name":"plain"}"#);
    assert_eq!(v["Volume"]["Status"]["size"], "3G", "--docker-default-size");
    let names: Vec<String> = call_ok(sock, "VolumeDriver.List", "{}")["Volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["Name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec![anon.clone(), "plain".into(), "web".into()]);
    call_err(
        sock,
        "VolumeDriver.Get",
        r#"{"Name":"ghost"}"#,
        "no vpool Docker volume 'ghost'",
    );
    call_err(
        sock,
        "VolumeDriver.Mount",
        r#"{"Name":"ghost","ID":"a"}"#,
        "no vpool Docker volume",
    );

    // Mount is counted by ID: two IDs share one filesystem on one loop device.
    let m1 = call_ok(sock, "VolumeDriver.Mount", r#"{"Name":"web","ID":"one"}"#);
    let m2 = call_ok(sock, "VolumeDriver.Mount", r#"{"Name":"web","ID":"two"}"#);
    let data = PathBuf::from(m1["Mountpoint"].as_str().unwrap());
    assert_eq!(m1["Mountpoint"], m2["Mountpoint"]);
    assert_eq!(data, s.root.join("web/_data"));
    assert!(is_mounted(&s.root.join("web")));
    assert_eq!(loops_under(&s.files).len(), 1);
    let listing: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        listing.is_empty(),
        "containers see an empty directory: {listing:?}"
    );
    std::fs::write(data.join("index.html"), b"hello").unwrap();
    let v = call_ok(sock, "VolumeDriver.Path", r#"{"Name":"web"}"#);
    assert_eq!(v["Mountpoint"], data.to_str().unwrap());
    // A fresh 10 GiB filesystem stays thin.
    let used = mapped(&s.d, "web");
    assert!(used < 64 << 20, "an empty ext4 maps {used} bytes");

    call_err(
        sock,
        "VolumeDriver.Remove",
        r#"{"Name":"web"}"#,
        "is mounted for 2 container(s)",
    );
    // The CLI cannot pull the volume from under its filesystem either.
    for args in [
        &["vol", "remove", "tank/web"][..],
        &["pool", "export", "tank"],
        &["pool", "destroy", "tank", "--force"],
    ] {
        let o = s.d.vpool(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains("refused while loop devices use it"),
            "{args:?}: {err}"
        );
    }
    s.d.vpool_ok(&["snap", "create", "tank/web@s"]);
    let o = s.d.vpool(&["vol", "rollback", "tank/web@s"]);
    assert!(
        !o.status.success(),
        "a rollback under a mounted filesystem is refused"
    );
    s.d.vpool_ok(&["snap", "remove", "tank/web@s"]);
    assert!(s.d.vpool_ok(&["vol", "list"]).contains("tank/web"));
    call_ok(sock, "VolumeDriver.Unmount", r#"{"Name":"web","ID":"one"}"#);
    assert!(is_mounted(&s.root.join("web")), "one ID still holds it");
    assert!(data.join("index.html").exists());
    call_ok(sock, "VolumeDriver.Unmount", r#"{"Name":"web","ID":"two"}"#);
    assert!(!is_mounted(&s.root.join("web")), "the last ID unmounts");
    assert!(
        loops_left(&s.files).is_empty(),
        "and detaches the loop device"
    );
    let v = call_ok(sock, "VolumeDriver.Path", r#"{"Name":"web"}"#);
    assert_eq!(v["Mountpoint"], "");

    // Mounted again, the filesystem (not a new one) is there.
    call_ok(sock, "VolumeDriver.Mount", r#"{"Name":"web","ID":"three"}"#);
    assert_eq!(std::fs::read(data.join("index.html")).unwrap(), b"hello");
    call_ok(
        sock,
        "VolumeDriver.Unmount",
        r#"{"Name":"web","ID":"three"}"#,
    );

    // xfs on request; the anonymous volume's long name works end to end.
    call_ok(
        sock,
        "VolumeDriver.Create",
        &create("x1", r#"{"fs":"xfs","size":"1G"}"#),
    );
    let m = call_ok(sock, "VolumeDriver.Mount", r#"{"Name":"x1","ID":"a"}"#);
    let fstype = ok(
        Command::new("findmnt")
            .args(["-n", "-o", "FSTYPE"])
            .arg(s.root.join("x1")),
        30,
    );
    assert_eq!(fstype.trim(), "xfs");
    assert!(Path::new(m["Mountpoint"].as_str().unwrap()).is_dir());
    call_ok(sock, "VolumeDriver.Unmount", r#"{"Name":"x1","ID":"a"}"#);
    call_ok(
        sock,
        "VolumeDriver.Mount",
        &format!(r#"{{"Name":"{anon}","ID":"a"}}"#),
    );
    call_ok(
        sock,
        "VolumeDriver.Unmount",
        &format!(r#"{{"Name":"{anon}","ID":"a"}}"#),
    );

    // Remove drops the vpool volume too.
    for name in ["web", "x1", anon.as_str()] {
        call_ok(
            sock,
            "VolumeDriver.Remove",
            &format!(r#"{{"Name":"{name}"}}"#),
        );
    }
    call_err(
        sock,
        "VolumeDriver.Remove",
        r#"{"Name":"web"}"#,
        "no vpool Docker volume",
    );
    let vols = s.d.vpool_ok(&["vol", "list"]);
    assert!(
        !vols.contains("tank/web") && vols.contains("tank/plain"),
        "{vols}"
    );
}

#[test]
fn clones_and_restarts_keep_data_and_clean_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let mut s = plugin_daemon(dir.path(), &mut g);
    let sock = s.sock.clone();

    call_ok(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"db","Opts":{"size":"2G"}}"#,
    );
    let m = call_ok(&sock, "VolumeDriver.Mount", r#"{"Name":"db","ID":"c1"}"#);
    let data = PathBuf::from(m["Mountpoint"].as_str().unwrap());
    let payload = common::pattern(3 << 20, 5);
    std::fs::write(data.join("table"), &payload).unwrap();

    // A clone of the mounted volume, taken without unmounting it, is a
    // clean filesystem with the file written (not yet synced) before.
    call_ok(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"db-test","Opts":{"snapshot-of":"db"}}"#,
    );
    call_err(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"db-x","Opts":{"snapshot-of":"db","size":"5G"}}"#,
        "a clone has its source's size",
    );
    std::fs::write(data.join("after-clone"), b"only in db").unwrap();
    let c = call_ok(
        &sock,
        "VolumeDriver.Mount",
        r#"{"Name":"db-test","ID":"c2"}"#,
    );
    let cdata = PathBuf::from(c["Mountpoint"].as_str().unwrap());
    assert_eq!(std::fs::read(cdata.join("table")).unwrap(), payload);
    assert!(!cdata.join("after-clone").exists());
    std::fs::write(cdata.join("only-clone"), b"x").unwrap();
    assert!(!data.join("only-clone").exists());
    call_ok(
        &sock,
        "VolumeDriver.Unmount",
        r#"{"Name":"db-test","ID":"c2"}"#,
    );
    let dev = ok(
        Command::new("losetup")
            .args(["--find", "--show", "-r"])
            .arg(s.files.join("tank/db-test")),
        30,
    );
    let fsck = run(Command::new("fsck.ext4").args(["-fn", dev.trim()]), 120);
    let _ = run(Command::new("losetup").args(["-d", dev.trim()]), 30);
    assert!(
        fsck.status.success(),
        "the clone is a clean filesystem: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    // A clone of a vpool snapshot by its path.
    s.d.vpool_ok(&["snap", "create", "tank/db@s1"]);
    call_ok(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"from-snap","Opts":{"snapshot-of":"tank/db@s1"}}"#,
    );

    call_ok(
        &sock,
        "VolumeDriver.Create",
        r#"{"Name":"doomed","Opts":{}}"#,
    );

    // SIGKILL: the mount, its loop device and the FUSE mount are left dead.
    ok(&mut Command::new("sync"), 60);
    s.d.kill();
    // As if the kill came in the middle of removing "doomed": the record
    // says so, the volume is still there. The next start finishes it.
    let reg = s.d.state.join("docker.json");
    let mut j: serde_json::Value = serde_json::from_slice(&std::fs::read(&reg).unwrap()).unwrap();
    j["volumes"]["doomed"]["removing"] = serde_json::json!(true);
    std::fs::write(&reg, serde_json::to_vec(&j).unwrap()).unwrap();
    s.d.restart();
    call_err(
        &sock,
        "VolumeDriver.Get",
        r#"{"Name":"doomed"}"#,
        "no vpool Docker volume",
    );
    assert!(
        !s.d.vpool_ok(&["vol", "list"]).contains("tank/doomed"),
        "an interrupted removal is finished"
    );
    assert!(
        !is_mounted(&s.root.join("db")),
        "a stale mount is detached at start"
    );
    assert!(
        loops_left(&s.files).is_empty(),
        "stale loop devices are detached at start"
    );
    let v = call_ok(&sock, "VolumeDriver.Get", r#"{"Name":"db"}"#);
    assert_eq!(
        v["Volume"]["Status"]["mounts"], 1,
        "mount IDs survive a restart"
    );
    assert_eq!(v["Volume"]["Mountpoint"], "");
    // Mounted again on demand, with what was synced.
    call_ok(&sock, "VolumeDriver.Mount", r#"{"Name":"db","ID":"c3"}"#);
    assert_eq!(std::fs::read(data.join("table")).unwrap(), payload);
    assert_eq!(
        std::fs::read(data.join("after-clone")).unwrap(),
        b"only in db"
    );
    call_ok(
        &sock,
        "VolumeDriver.Mount",
        r#"{"Name":"from-snap","ID":"c4"}"#,
    );

    // A clean stop unmounts everything; the counts stay for the next start.
    s.d.stop();
    assert!(!is_mounted(&s.root.join("db")) && !is_mounted(&s.root.join("from-snap")));
    let left = loops_left(&s.files);
    assert!(
        left.is_empty(),
        "loop devices left after a clean stop: {left:?}"
    );
    assert!(!is_mounted(&s.files));
    s.d.restart();
    call_ok(&sock, "VolumeDriver.Unmount", r#"{"Name":"db","ID":"c1"}"#);
    call_ok(&sock, "VolumeDriver.Unmount", r#"{"Name":"db","ID":"c3"}"#);
    let v = call_ok(&sock, "VolumeDriver.Get", r#"{"Name":"db"}"#);
    assert_eq!(v["Volume"]["Status"]["mounts"], 0);
    call_ok(&sock, "VolumeDriver.Remove", r#"{"Name":"db-test"}"#);
    // db has a snapshot (s1): vpool says so instead of dropping it.
    call_err(&sock, "VolumeDriver.Remove", r#"{"Name":"db"}"#, "snapshot");
}
