//! Needs root and FUSE (the plugin and the snapshotter run): hostile and
//! careless clients on every socket of one daemon — NBD over TCP and its
//! unix socket, the control API, the Docker plugin, the containerd
//! snapshotter. A thousand idle or half-spoken connections, slow bodies,
//! malformed JSON and protobuf, odd names: after each, a normal client on
//! every socket is answered within a second, nothing was created, and the
//! daemon's memory stays bounded.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use common::nbd_client::{connect as nbd_connect, greet, Client};
use common::plugin::{call, undo_plugin_mounts};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use vpool::frontend::snapshotter::proto::api::snapshots_client::SnapshotsClient;
use vpool::frontend::snapshotter::proto::api::*;

struct Setup {
    d: Daemon,
    /// The metrics listener's TCP port.
    metrics: u16,
    plugin: PathBuf,
    snap: PathBuf,
    rt: tokio::runtime::Runtime,
}

fn setup(dir: &Path, g: &mut Cleanup) -> Setup {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: run as root with FUSE"
    );
    require("mkfs.ext4", "e2fsprogs");
    require("nbdinfo", "libnbd-bin");
    let state = dir.join("state");
    make_pool(&state, "raid1", 2, 1 << 30, &[]);
    undo_plugin_mounts(g, &state.join("docker"), &state.join("files"));
    undo_plugin_mounts(g, &state.join("snapshotter"), &state.join("files"));
    let (plugin, snap) = (dir.join("plugin.sock"), dir.join("snap.sock"));
    let metrics = free_port();
    let d = Daemon::start_with(
        &state,
        &[
            "--docker-plugin",
            plugin.to_str().unwrap(),
            "--snapshotter",
            snap.to_str().unwrap(),
            "--metrics-listen",
            &format!("127.0.0.1:{metrics}"),
        ],
    );
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "16M"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    Setup {
        d,
        metrics,
        plugin,
        snap,
        rt,
    }
}

fn snapshotter(rt: &tokio::runtime::Runtime, sock: &Path) -> SnapshotsClient<Channel> {
    SnapshotsClient::new(channel(rt, sock))
}

fn channel(rt: &tokio::runtime::Runtime, sock: &Path) -> Channel {
    let connect = common::grpc::unix_channel(sock.to_path_buf());
    rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), connect).await })
        .expect("connecting to the snapshotter timed out")
        .expect("connect to the snapshotter")
}

/// Run `f` on the test's runtime, failing past `secs` seconds.
fn bounded<F: std::future::Future>(s: &Setup, secs: u64, what: &str, f: F) -> F::Output {
    // The timer is made inside the runtime, which it needs.
    s.rt.block_on(async { tokio::time::timeout(Duration::from_secs(secs), f).await })
        .unwrap_or_else(|_| panic!("{what} timed out"))
}

/// One normal call on every socket, each answered within a second.
fn everyone_served(s: &Setup, what: &str) {
    let timed = |socket: &str, f: &mut dyn FnMut()| {
        let start = Instant::now();
        f();
        eprintln!("{what}: {socket} answered in {:?}", start.elapsed());
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{what}: a normal {socket} client waited {:?}",
            start.elapsed()
        );
    };
    timed("NBD (TCP)", &mut || {
        let mut c = Client::open(s.d.port, "tank/db", false);
        assert_eq!(c.write(0, &[9u8; 4096]), 0);
        assert_eq!(c.read(0, 4096).unwrap(), vec![9u8; 4096]);
    });
    timed("NBD (unix)", &mut || {
        let out = ok(
            Command::new("nbdinfo").args(["--size", &s.d.unix_uri("tank/db")]),
            10,
        );
        assert_eq!(out.trim(), (16 << 20).to_string());
    });
    timed("control API", &mut || {
        let mut c = UnixStream::connect(s.d.state.join("vpool.sock")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            c,
            "GET /v1/pools/tank HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut raw = Vec::new();
        c.read_to_end(&mut raw).unwrap();
        let (st, _) = vpool::control::client::parse_response(&raw).unwrap();
        assert_eq!(st, 200);
    });
    timed("metrics", &mut || {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.metrics)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(c, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut raw = String::new();
        c.read_to_string(&mut raw).unwrap();
        assert!(
            raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"),
            "{raw}"
        );
        assert!(raw.contains("vpool_pool_health"), "{raw}");
    });
    timed("Docker plugin", &mut || {
        let (st, v) = call(&s.plugin, "VolumeDriver.List", "{}");
        assert_eq!(st, 200, "{v}");
    });
    timed("snapshotter", &mut || {
        let mut c = snapshotter(&s.rt, &s.snap);
        let r = bounded(
            s,
            5,
            "Stat",
            c.stat(StatSnapshotRequest {
                snapshotter: "vpool".into(),
                key: "no-such-key".into(),
            }),
        );
        assert_eq!(r.unwrap_err().code(), tonic::Code::NotFound);
    });
}

fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

fn volume_names(d: &Daemon) -> Vec<String> {
    let v: serde_json::Value =
        serde_json::from_str(&d.vpool_ok(&["vol", "list", "--json"])).unwrap();
    let mut names: Vec<String> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|x| x["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

/// A connection that holds a socket open: idle, or part way into a request.
#[allow(dead_code)] // held only to be dropped
enum Held {
    Tcp(TcpStream),
    Unix(UnixStream),
}

const EACH: usize = 1000;

#[test]
fn a_thousand_idle_and_half_spoken_connections_per_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let s = setup(dir.path(), &mut g);
    everyone_served(&s, "at start");
    let before = rss_mib(s.d.pid());
    let mut held: Vec<Held> = Vec::new();
    // NBD over TCP: silent, or greeted with half an option header.
    for i in 0..EACH {
        let mut c = nbd_connect(s.d.port);
        if i % 2 == 1 {
            greet(&mut c);
            c.write_all(&0x4948_4156_454F_5054u64.to_be_bytes())
                .unwrap();
        }
        held.push(Held::Tcp(c));
    }
    everyone_served(&s, "with 1000 NBD TCP clients");
    // NBD on the unix socket.
    for _ in 0..EACH {
        held.push(Held::Unix(
            UnixStream::connect(s.d.state.join("nbd.sock")).unwrap(),
        ));
    }
    everyone_served(&s, "with 1000 NBD unix clients");
    // The metrics port: silent, or a partial request head.
    for i in 0..EACH {
        let mut c = std::net::TcpStream::connect(("127.0.0.1", s.metrics)).unwrap();
        if i % 2 == 1 {
            c.write_all(b"GET /metrics HTTP/1.1\r\nHo").unwrap();
        }
        held.push(Held::Tcp(c));
    }
    everyone_served(&s, "with 1000 metrics clients");
    // The HTTP sockets: silent, a partial head, or a head announcing a
    // body that never comes (small and large).
    for sock in [s.d.state.join("vpool.sock"), s.plugin.clone()] {
        for i in 0..EACH {
            let mut c = UnixStream::connect(&sock).unwrap();
            match i % 4 {
                0 => {}
                1 => c.write_all(b"POST /VolumeDriver.Create HTTP/1.1\r\nHost").unwrap(),
                2 => c
                    .write_all(b"POST /v1/volumes HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
                    .unwrap(),
                _ => c
                    .write_all(b"POST /VolumeDriver.Get HTTP/1.1\r\nHost: x\r\nContent-Length: 500000\r\n\r\n{\"Name\":")
                    .unwrap(),
            }
            held.push(Held::Unix(c));
        }
        everyone_served(&s, &format!("with 1000 clients on {}", sock.display()));
    }
    // The snapshotter: silent, or half the HTTP/2 preface.
    for i in 0..EACH {
        let mut c = UnixStream::connect(&s.snap).unwrap();
        if i % 2 == 1 {
            c.write_all(b"PRI * HTTP/2.0\r\n").unwrap();
        }
        held.push(Held::Unix(c));
    }
    std::thread::sleep(Duration::from_millis(500));
    everyone_served(&s, "with 6000 held connections");
    let during = rss_mib(s.d.pid());
    eprintln!(
        "daemon RSS: {before} MiB at start, {during} MiB with {} connections",
        held.len()
    );
    assert!(
        during < before + 512,
        "memory must stay bounded: {before} MiB -> {during} MiB with {} connections",
        held.len()
    );
    drop(held);
    std::thread::sleep(Duration::from_millis(500));
    everyone_served(&s, "after the connections closed");
    assert_eq!(volume_names(&s.d), vec!["tank/db"]);
    assert!(!s.d.log().contains("panicked"), "{}", s.d.log());
}

/// Send a raw HTTP request and read the status, with a time limit.
fn raw_http(sock: &Path, request: &[u8]) -> u16 {
    let mut c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(request).unwrap();
    let mut raw = Vec::new();
    let _ = c.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

fn plugin_request(method: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

#[test]
fn malformed_and_slow_requests_on_the_plugin_and_snapshotter() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let s = setup(dir.path(), &mut g);
    let names_before = volume_names(&s.d);
    // Slow bodies: more clients than workers, each sending a large body a
    // byte at a time in the background.
    let mut slow = Vec::new();
    for _ in 0..12 {
        let mut c = UnixStream::connect(&s.plugin).unwrap();
        c.write_all(
            b"POST /VolumeDriver.Get HTTP/1.1\r\nHost: x\r\nContent-Length: 300000\r\n\r\n",
        )
        .unwrap();
        slow.push(c);
    }
    for c in slow.iter_mut() {
        c.write_all(b"{").unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    everyone_served(&s, "with slow plugin bodies");
    // Malformed plugin calls: 4xx/5xx answers, nothing created.
    let long = |n: usize| format!(r#"{{"Name": "{}"}}"#, "v".repeat(n));
    let mut bodies: Vec<(&str, Vec<u8>)> = vec![
        ("VolumeDriver.Create", b"{not json".to_vec()),
        ("VolumeDriver.Create", vec![0xff, 0xfe, b'{', 0x00]),
        ("VolumeDriver.Create", br#"{"Name": "a\u0000b"}"#.to_vec()),
        ("VolumeDriver.Create", br#"{"Name": "../../etc"}"#.to_vec()),
        ("VolumeDriver.Create", br#"{"Name": "a/b"}"#.to_vec()),
        ("VolumeDriver.Create", br#"{"Name": ""}"#.to_vec()),
        ("VolumeDriver.Create", br#"{"Name": 7}"#.to_vec()),
        (
            "VolumeDriver.Create",
            br#"{"Name": "ok", "Opts": {"size": "-1"}}"#.to_vec(),
        ),
        (
            "VolumeDriver.Create",
            br#"{"Name": "ok", "Opts": {"pool": "../x"}}"#.to_vec(),
        ),
        (
            "VolumeDriver.Mount",
            br#"{"Name": "missing", "ID": "x"}"#.to_vec(),
        ),
        ("VolumeDriver.Get", long(4096).into_bytes()),
        ("VolumeDriver.Remove", long(300).into_bytes()),
        ("VolumeDriver.Nope", b"{}".to_vec()),
        (
            "VolumeDriver.Create",
            format!(r#"{{"Name": "{}"}}"#, "x".repeat(2 << 20)).into_bytes(),
        ),
    ];
    bodies.push(("VolumeDriver.Path", b"[]".to_vec()));
    for (method, body) in &bodies {
        let st = raw_http(&s.plugin, &plugin_request(method, body));
        assert!(
            (400..600).contains(&st),
            "{method} {:?}: status {st}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        everyone_served(&s, &format!("after {method}"));
    }
    drop(slow);
    // Malformed snapshotter calls: keys and labels no one should send, and
    // bytes that are not the message they claim to be.
    let mut c = snapshotter(&s.rt, &s.snap);
    let odd_keys = [
        String::new(),
        "a\0b".to_string(),
        "../../etc".to_string(),
        "/abs".to_string(),
        "k".repeat(64 << 10),
    ];
    for key in &odd_keys {
        let r = bounded(
            &s,
            10,
            "Stat",
            c.stat(StatSnapshotRequest {
                snapshotter: "vpool".into(),
                key: key.clone(),
            }),
        );
        assert!(r.is_err(), "Stat of {:?}", &key[..key.len().min(20)]);
        let r = bounded(
            &s,
            60,
            "Remove",
            c.remove(RemoveSnapshotRequest {
                snapshotter: "vpool".into(),
                key: key.clone(),
            }),
        );
        assert!(r.is_err());
    }
    let huge_labels = (0..2000)
        .map(|i| (format!("l{i}"), "v".repeat(2048)))
        .collect();
    let r = bounded(
        &s,
        60,
        "Update",
        c.update(UpdateSnapshotRequest {
            snapshotter: "vpool".into(),
            info: Some(Info {
                name: "missing".into(),
                labels: huge_labels,
                ..Default::default()
            }),
            update_mask: None,
        }),
    );
    assert!(r.is_err(), "an oversized message is refused");
    // Raw HTTP/2 garbage and a gRPC frame that is not protobuf.
    for junk in [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff".to_vec(),
        vec![0u8; 4096],
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
    ] {
        let mut raw = UnixStream::connect(&s.snap).unwrap();
        raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        raw.write_all(&junk).unwrap();
        let mut sink = Vec::new();
        let _ = raw.read_to_end(&mut sink);
    }
    let ch = channel(&s.rt, &s.snap);
    let r = s.rt.block_on(async {
        let mut grpc = tonic::client::Grpc::new(ch);
        grpc.ready().await.unwrap();
        tokio::time::timeout(
            Duration::from_secs(10),
            grpc.unary(
                tonic::Request::new(vec![0xffu8, 0xff, 0xff, 0x0f, 0x12, 0x80]),
                "/containerd.services.snapshots.v1.Snapshots/Stat"
                    .parse()
                    .unwrap(),
                RawCodec,
            ),
        )
        .await
        .expect("raw call timed out")
    });
    assert!(r.is_err(), "a body that is not protobuf is refused");
    everyone_served(&s, "after malformed snapshotter calls");
    assert_eq!(volume_names(&s.d), names_before, "nothing was created");
    assert!(!s.d.log().contains("panicked"), "{}", s.d.log());
}

/// A gRPC codec that sends bytes as they are and reads replies as bytes.
#[derive(Default, Clone)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut v = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}
