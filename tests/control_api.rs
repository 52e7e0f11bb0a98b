//! The control API of a running daemon: raw HTTP/JSON on its unix socket,
//! the CLI routed through it, and concurrent commands while I/O runs.

mod common;
use common::daemon::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;

fn http(d: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    d.api(method, path, body)
}

#[test]
fn every_call_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let d = Daemon::start(&state);
    let mode = std::fs::metadata(state.join("vpool.sock"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "control socket is private");

    let imgs: Vec<String> = (0..3)
        .map(|i| {
            let p = state.join(format!("m{i}.img"));
            std::fs::File::create(&p)
                .unwrap()
                .set_len(256 << 20)
                .unwrap();
            p.display().to_string()
        })
        .collect();
    let (st, v) = http(
        &d,
        "POST",
        "/v1/pools",
        Some(
            json!({"pool_create": {"name": "tank", "raid": "raid5", "devices": imgs, "stripe_unit": 65536, "force": false}}),
        ),
    );
    assert_eq!(st, 200, "{v}");
    assert!(v["message"]
        .as_str()
        .unwrap()
        .contains("created pool 'tank'"));
    let (st, v) = http(&d, "GET", "/v1/pools", None);
    assert_eq!((st, v["data"][0]["name"].as_str()), (200, Some("tank")));
    let (st, v) = http(&d, "GET", "/v1/pools/tank", None);
    assert_eq!((st, v["data"]["level"].as_str()), (200, Some("raid5")));
    let (st, _) = http(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"vol_create": {"path": "tank/db", "size": 64 << 20}})),
    );
    assert_eq!(st, 200);
    let (st, v) = http(
        &d,
        "POST",
        "/v1/snapshots",
        Some(json!({"snap_create": {"path": "tank/db@s"}})),
    );
    assert_eq!(st, 200, "{v}");
    let (st, v) = http(&d, "GET", "/v1/volumes?pool=tank", None);
    assert_eq!((st, v["data"][0]["name"].as_str()), (200, Some("tank/db")));
    let (st, v) = http(&d, "GET", "/v1/snapshots?pool=tank&volume=db", None);
    assert_eq!(
        (st, v["data"][0]["name"].as_str()),
        (200, Some("tank/db@s"))
    );
    // The path names the call: a body asking for another call, or for
    // another object, is refused and changes nothing.
    let (st, v) = http(
        &d,
        "POST",
        "/v1/pools/tank/scrub",
        Some(json!({"pool_destroy": {"name": "tank", "force": true}})),
    );
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("pool_destroy"), "{v}");
    let (st, v) = http(
        &d,
        "POST",
        "/v1/pools/other/scrub",
        Some(json!({"pool_scrub": {"name": "tank", "check_only": true}})),
    );
    assert_eq!(st, 400, "{v}");
    let (st, v) = http(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"vol_remove": {"path": "tank/db", "recursive": true}})),
    );
    assert_eq!(st, 400, "{v}");
    let (st, _) = http(&d, "GET", "/v1/pools/tank", None);
    assert_eq!(st, 200, "the pool is still there");
    let (st, v) = http(&d, "GET", "/v1/volumes?pool=tank", None);
    assert_eq!((st, v["data"][0]["name"].as_str()), (200, Some("tank/db")));
    let (st, _) = http(
        &d,
        "POST",
        "/v1/volumes/tank/db%40s/clone",
        Some(json!({"vol_clone": {"source": "tank/db@s", "target": "tank/c"}})),
    );
    assert_eq!(st, 200);
    let (st, _) = http(
        &d,
        "POST",
        "/v1/volumes/tank/db/resize",
        Some(json!({"vol_resize": {"path": "tank/db", "size": "+64M", "force": false}})),
    );
    assert_eq!(st, 200);
    let (st, _) = http(&d, "POST", "/v1/volumes/tank/db%40s/rollback", None);
    assert_eq!(st, 200);
    let (st, v) = http(
        &d,
        "POST",
        "/v1/pools/tank/check",
        Some(json!({"pool_check": {"name": "tank", "repair": false}})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["data"]["errors"].as_array().unwrap().len(), 0);

    // Errors: status, kind and a message that says what to do.
    let (st, v) = http(&d, "GET", "/v1/pools/nope", None);
    assert_eq!((st, v["kind"].as_str()), (404, Some("not_found")));
    let (st, v) = http(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"vol_create": {"path": "tank/x", "size": 1000}})),
    );
    assert_eq!((st, v["kind"].as_str()), (400, Some("invalid")));
    assert!(v["error"].as_str().unwrap().contains("multiple of 4K"));
    let (st, v) = http(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"vol_create": {"path": "tank/db", "size": 4096}})),
    );
    assert_eq!((st, v["kind"].as_str()), (409, Some("exists")));
    let (st, v) = http(&d, "DELETE", "/v1/volumes/tank/db", None);
    assert_eq!((st, v["kind"].as_str()), (409, Some("in_use")), "{v}");
    let (st, _) = http(&d, "GET", "/v1/frobnicate", None);
    assert_eq!(st, 404);
    let (st, _) = http(&d, "POST", "/v1/volumes", Some(json!("not a request")));
    assert_eq!(st, 400);

    let (st, _) = http(&d, "DELETE", "/v1/snapshots/tank/db%40s", None);
    assert_eq!(st, 200);
    let (st, _) = http(&d, "DELETE", "/v1/volumes/tank/c", None);
    assert_eq!(st, 200);
    let (st, _) = http(&d, "DELETE", "/v1/pools/tank?force=true", None);
    assert_eq!(st, 200);
    let (_, v) = http(&d, "GET", "/v1/pools", None);
    assert_eq!(v["data"].as_array().unwrap().len(), 0);
}

#[test]
fn cli_goes_through_the_daemon_and_runs_beside_io() {
    require("fio", "fio");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid0", 3, 512 << 20, &[]);
    let d = Daemon::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "256M"]);
    // The daemon holds the members: direct access is refused, clearly.
    let o = d.vpool(&["check", state.join("d0.img").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("daemon is running"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // fio writes and verifies while CLI commands run in parallel.
    let uri = d.uri("tank/db");
    let fio = std::thread::spawn(move || {
        ok(
            Command::new("fio").args([
                "--name=bg",
                "--ioengine=nbd",
                &format!("--uri={uri}"),
                "--rw=randwrite",
                "--bs=4k",
                "--iodepth=16",
                "--numjobs=2",
                "--size=64M",
                "--offset_increment=128M",
                "--verify=crc32c",
                "--verify_state_save=0",
                "--end_fsync=1",
                "--time_based=0",
            ]),
            600,
        )
    });
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let state = state.clone();
            std::thread::spawn(move || {
                let v = |args: &[&str]| {
                    ok(
                        Command::new(vpool_bin())
                            .arg("--state-dir")
                            .arg(&state)
                            .args(args),
                        120,
                    )
                };
                v(&["vol", "create", &format!("tank/v{i}"), "--size", "1G"]);
                v(&["snap", "create", &format!("tank/db@s{i}")]);
                v(&["vol", "list", "--json"]);
                v(&["pool", "status", "tank", "--json"]);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("CLI command failed");
    }
    fio.join().expect("fio failed");
    let snaps: Value =
        serde_json::from_str(&d.vpool_ok(&["snap", "list", "tank", "--json"])).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 6);
    // Import and export through the daemon.
    let src = state.join("in.raw");
    std::fs::write(&src, common::pattern(3 << 20, 1)).unwrap();
    let out = d.vpool_ok(&["vol", "import", "tank/v0", "--from", src.to_str().unwrap()]);
    assert!(out.contains("3M copied"), "{out}");
    let back = state.join("out.raw");
    d.vpool_ok(&["vol", "export", "tank/v0", "--to", back.to_str().unwrap()]);
    let mut got = vec![0u8; 3 << 20];
    std::fs::File::open(&back)
        .unwrap()
        .read_exact(&mut got)
        .unwrap();
    assert!(got == std::fs::read(&src).unwrap());
    assert!(
        d.log().contains("POST /v1/volumes"),
        "CLI requests reached the daemon"
    );
}

#[test]
fn one_daemon_per_state_dir_and_degraded_start_is_loud() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 256 << 20, &[]);
    let mut d = Daemon::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "16M"]);
    // A second daemon on the same state directory refuses to start.
    let second = run(
        Command::new(vpool_bin()).args([
            "--state-dir",
            state.to_str().unwrap(),
            "daemon",
            "--nbd-listen",
            &format!("127.0.0.1:{}", free_port()),
        ]),
        60,
    );
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another vpool daemon"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    d.stop();
    // A member goes missing: the pool starts degraded, loudly, and serves.
    std::fs::remove_file(state.join("d1.img")).unwrap();
    d.restart();
    assert!(d.log().contains("DEGRADED"), "{}", d.log());
    let status: Value =
        serde_json::from_str(&d.vpool_ok(&["pool", "status", "tank", "--json"])).unwrap();
    assert_eq!(status["health"], "degraded");
    let mut c = common::nbd_client::Client::open(d.port, "tank/db", false);
    assert_eq!(c.write(0, &[3u8; 4096]), 0);
    assert_eq!(c.read(0, 4096).unwrap(), vec![3u8; 4096]);
}

/// Hostile or broken clients of the control socket change nothing and do
/// not stall the others (issue 20): clients that send a head and never
/// their body, an oversized body, malformed JSON, bytes that are not
/// UTF-8, NUL and `../` in names, names past the length limit; after each,
/// a normal client is answered within a second.
#[test]
fn hostile_control_clients_do_not_stall_others() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid1", 2, 256 << 20, &[]);
    let d = Daemon::start(&state);
    let served_quickly = |what: &str| {
        let start = std::time::Instant::now();
        let (st, v) = http(&d, "GET", "/v1/pools/tank", None);
        assert_eq!(st, 200, "{what}: {v}");
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "{what}: a normal client waited {:?}",
            start.elapsed()
        );
    };
    // More silent clients than workers: each sends a head announcing a
    // body it never sends.
    let mut silent = Vec::new();
    for _ in 0..12 {
        let mut s = UnixStream::connect(d.state.join("vpool.sock")).unwrap();
        write!(
            s,
            "POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{"
        )
        .unwrap();
        silent.push(s);
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    served_quickly("with silent clients");
    // An oversized body.
    let big = json!({"vol_create": {"path": "tank/x", "size": 1, "pad": "x".repeat(2 << 20)}});
    let (st, _) = http(&d, "POST", "/v1/volumes", Some(big));
    assert_eq!(st, 413);
    served_quickly("after an oversized body");
    // Malformed requests and names.
    for (method, path, body) in [
        ("POST", "/v1/volumes", "{not json".to_string()),
        (
            "POST",
            "/v1/volumes",
            r#"{"vol_create": {"path": "tank/../x", "size": 4096}}"#.to_string(),
        ),
        (
            "POST",
            "/v1/volumes",
            r#"{"vol_create": {"path": "tank/a\u0000b", "size": 4096}}"#.to_string(),
        ),
        (
            "POST",
            "/v1/volumes",
            format!(
                r#"{{"vol_create": {{"path": "tank/{}", "size": 4096}}}}"#,
                "v".repeat(64)
            ),
        ),
        ("GET", "/v1/pools/%ff%fe", String::new()),
        ("GET", "/v1/pools/a%00b", String::new()),
        ("DELETE", "/v1/volumes/tank/..", String::new()),
    ] {
        let mut s = UnixStream::connect(d.state.join("vpool.sock")).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let (st, _) = vpool::control::client::parse_response(&raw).unwrap();
        assert!(
            (400..500).contains(&st),
            "{method} {path} {body}: status {st}"
        );
        served_quickly(&format!("after {method} {path}"));
    }
    // A name at the limit is fine; nothing else was created.
    let (st, v) = http(
        &d,
        "POST",
        "/v1/volumes",
        Some(json!({"vol_create": {"path": format!("tank/{}", "v".repeat(63)), "size": 4096}})),
    );
    assert_eq!(st, 200, "{v}");
    let (_, v) = http(&d, "GET", "/v1/volumes?pool=tank", None);
    assert_eq!(v["data"].as_array().unwrap().len(), 1, "{v}");
    drop(silent);
}
