//! NBD over TCP with TLS, as the protocol's STARTTLS specifies it, against
//! the real clients: qemu-io/qemu-img (GnuTLS, `--object tls-creds-*`) and
//! libnbd's nbdinfo/nbdcopy (`nbds://`, `tls-psk-file`, `tls-certificates`).
//! Who holds no key or certificate gets nothing; `nobody` gets nothing on
//! any path where root is served; a listener sees only its exports.

mod common;
use common::daemon::*;
use common::nbd_client::*;
use std::io::Read;
use std::path::Path;
use std::process::Command;

const STARTTLS: u32 = 5;
const ERR_POLICY: u32 = (1 << 31) + 2;
const ERR_INVALID: u32 = (1 << 31) + 3;
const ERR_TLS_REQD: u32 = (1 << 31) + 5;

fn tools() {
    require("nbdinfo", "libnbd-bin");
    require("nbdcopy", "libnbd-bin");
    require("qemu-io", "qemu-utils");
    require("openssl", "openssl");
    require("setpriv", "util-linux");
}

fn pool(dir: &Path) -> std::path::PathBuf {
    let state = dir.join("state");
    make_pool(&state, "raid1", 2, 256 << 20, &[]);
    state
}

fn write_psk(path: &Path, identity: &str, seed: u8) {
    use std::os::unix::fs::PermissionsExt;
    let key: String = (0..32).map(|i| format!("{:02x}", i as u8 ^ seed)).collect();
    std::fs::write(path, format!("{identity}:{key}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn psk_uri(d: &Daemon, export: &str, identity: &str, file: &Path) -> String {
    format!(
        "nbds://{identity}@127.0.0.1:{}/{export}?tls-psk-file={}",
        d.port,
        file.display()
    )
}

fn failed_with(o: &std::process::Output, what: &str) -> String {
    assert!(!o.status.success(), "{what} must be refused");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn nobody(args: &[&str]) -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args);
    c
}

/// Every directory from `/` to `path` searchable by others, so that only
/// the file's own mode refuses `nobody`.
fn open_the_way(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for p in path.ancestors().skip(1) {
        if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
            let mode = std::fs::metadata(p).unwrap().permissions().mode();
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode | 0o055)).unwrap();
        }
    }
}

/// qemu-io over TLS with the credentials object `creds` (id tls0): write a
/// pattern, flush, read it back.
fn qemu_io_pattern(d: &Daemon, creds: &str, export: &str, byte: u8, len: &str) {
    let opts = format!(
        "driver=nbd,host=127.0.0.1,port={},export={export},tls-creds=tls0",
        d.port
    );
    let out = ok(
        Command::new("qemu-io").args([
            "--object",
            creds,
            "--image-opts",
            &opts,
            "-c",
            &format!("write -P {byte:#x} 0 {len}"),
            "-c",
            "flush",
            "-c",
            &format!("read -P {byte:#x} 0 {len}"),
        ]),
        120,
    );
    assert!(!out.contains("fail"), "{out}");
}

#[test]
fn psk_with_real_clients_and_nobody_refused() {
    tools();
    let dir = tempfile::tempdir().unwrap();
    let state = pool(dir.path());
    let keys = dir.path().join("psk").join("keys.psk");
    std::fs::create_dir_all(keys.parent().unwrap()).unwrap();
    write_psk(&keys, "alice", 0x11);
    let d = Daemon::start_with(&state, &["--tls-psk", keys.to_str().unwrap()]);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "32M"]);
    assert!(d.log().contains("TLS required"), "{}", d.log());

    // Without TLS: refused before any export is named.
    let plain = run(
        Command::new("nbdinfo").args(["--size", &d.uri("tank/db")]),
        60,
    );
    assert!(
        failed_with(&plain, "a client without TLS").contains("requires TLS"),
        "the client is told TLS is required"
    );
    // With the key: served, by libnbd (GnuTLS) and qemu.
    let uri = psk_uri(&d, "tank/db", "alice", &keys);
    let size = ok(Command::new("nbdinfo").args(["--size", &uri]), 60);
    assert_eq!(size.trim(), (32 << 20).to_string());
    let creds = format!(
        "tls-creds-psk,id=tls0,endpoint=client,dir={},username=alice",
        keys.parent().unwrap().display()
    );
    // Large enough that replies outrun the TLS pump's buffers.
    qemu_io_pattern(&d, &creds, "tank/db", 0x5a, "24M");
    // A byte-exact round trip through nbdcopy.
    let src = dir.path().join("src.raw");
    let back = dir.path().join("back.raw");
    std::fs::write(&src, common::pattern(32 << 20, 7)).unwrap();
    ok(Command::new("nbdcopy").arg(&src).arg(&uri), 120);
    ok(Command::new("nbdcopy").arg(&uri).arg(&back), 120);
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&src).unwrap());

    // A wrong key and an unknown identity: refused in the TLS handshake.
    let wrong = dir.path().join("wrong.psk");
    write_psk(&wrong, "alice", 0x22);
    let o = run(
        Command::new("nbdinfo").args(["--size", &psk_uri(&d, "tank/db", "alice", &wrong)]),
        60,
    );
    failed_with(&o, "a wrong key");
    let mallory = dir.path().join("mallory.psk");
    write_psk(&mallory, "mallory", 0x11);
    let o = run(
        Command::new("nbdinfo").args(["--size", &psk_uri(&d, "tank/db", "mallory", &mallory)]),
        60,
    );
    failed_with(&o, "an unknown identity");

    // nobody: not over TCP (the key file is root's), nor the unix socket.
    open_the_way(&keys);
    open_the_way(&state.join("nbd.sock"));
    let o = run(&mut nobody(&["nbdinfo", "--size", &uri]), 60);
    failed_with(&o, "nobody with root's key file path");
    let o = run(&mut nobody(&["nbdinfo", "--size", &d.uri("tank/db")]), 60);
    failed_with(&o, "nobody without TLS");
    let o = run(
        &mut nobody(&["nbdinfo", "--size", &d.unix_uri("tank/db")]),
        60,
    );
    assert!(failed_with(&o, "nobody on the unix socket").contains("ermission denied"));
    // Root, with the same commands, is served on both.
    ok(Command::new("nbdinfo").args(["--size", &uri]), 60);
    ok(
        Command::new("nbdinfo").args(["--size", &d.unix_uri("tank/db")]),
        60,
    );
    let log = d.log();
    assert!(log.contains("PSK identity 'alice'"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A CA, a server certificate for 127.0.0.1, and a client certificate, with
/// the file names qemu and libnbd look for.
fn make_certificates(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (srv, cli) = (dir.join("server"), dir.join("client"));
    std::fs::create_dir_all(&srv).unwrap();
    std::fs::create_dir_all(&cli).unwrap();
    let ssl = |args: &[&str]| {
        ok(Command::new("openssl").current_dir(dir).args(args), 60);
    };
    ssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca-key.pem",
        "-out",
        "ca-cert.pem",
        "-days",
        "2",
        "-subj",
        "/CN=vpool test CA",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (who, out, cn) in [
        ("server", &srv, "localhost"),
        ("client", &cli, "backup-host"),
    ] {
        let key = out.join(format!("{who}-key.pem"));
        let cert = out.join(format!("{who}-cert.pem"));
        let csr = dir.join(format!("{who}.csr"));
        let subj = format!("/CN={cn}");
        ssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            csr.to_str().unwrap(),
            "-subj",
            &subj,
        ]);
        ssl(&[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            "ca-cert.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            cert.to_str().unwrap(),
            "-days",
            "2",
            "-extfile",
            &format!("{who}.ext"),
        ]);
        std::fs::copy(dir.join("ca-cert.pem"), out.join("ca-cert.pem")).unwrap();
    }
    (srv, cli)
}

#[test]
fn x509_client_certificates_and_limited_exports() {
    tools();
    let dir = tempfile::tempdir().unwrap();
    let state = pool(dir.path());
    let (srv, cli) = make_certificates(dir.path());
    let d = Daemon::start_with(
        &state,
        &[
            "--tls-certificates",
            srv.to_str().unwrap(),
            "--nbd-exports",
            "tank/db*,tank/web",
        ],
    );
    for v in ["tank/db", "tank/web", "tank/secret"] {
        d.vpool_ok(&["vol", "create", v, "--size", "16M"]);
    }
    d.vpool_ok(&["snap", "create", "tank/db@s1"]);
    let uri = |export: &str, certs: &Path| {
        format!(
            "nbds://127.0.0.1:{}/{export}?tls-certificates={}",
            d.port,
            certs.display()
        )
    };
    // A client certificate signed by the CA: served, by libnbd and qemu.
    let size = ok(
        Command::new("nbdinfo").args(["--size", &uri("tank/db", &cli)]),
        60,
    );
    assert_eq!(size.trim(), (16 << 20).to_string());
    let creds = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={}",
        cli.display()
    );
    qemu_io_pattern(&d, &creds, "tank/web", 0x3c, "4M");
    // No client certificate (the CA only): refused in the handshake.
    let nocert = dir.path().join("nocert");
    std::fs::create_dir_all(&nocert).unwrap();
    std::fs::copy(cli.join("ca-cert.pem"), nocert.join("ca-cert.pem")).unwrap();
    let o = run(
        Command::new("nbdinfo").args(["--size", &uri("tank/db", &nocert)]),
        60,
    );
    failed_with(&o, "a client without a certificate");
    // The listener's exports: listed and opened; the others unknown.
    let list = ok(
        Command::new("nbdinfo").args(["--list", "--json", &uri("", &cli)]),
        60,
    );
    let v: serde_json::Value = serde_json::from_str(&list).unwrap();
    let mut names: Vec<&str> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["tank/db", "tank/db@s1", "tank/web"]);
    let o = run(
        Command::new("nbdinfo").args(["--size", &uri("tank/secret", &cli)]),
        60,
    );
    assert!(failed_with(&o, "an export outside the listener's").contains("tank/secret"));
    // The unix socket (root only) serves every export.
    ok(
        Command::new("nbdinfo").args(["--size", &d.unix_uri("tank/secret")]),
        60,
    );
    assert!(d.log().contains("certificate 'backup-host'"), "{}", d.log());
}

#[test]
fn starttls_negotiation_rules() {
    let dir = tempfile::tempdir().unwrap();
    let state = pool(dir.path());
    let keys = dir.path().join("keys.psk");
    write_psk(&keys, "alice", 1);
    let d = Daemon::start_with(&state, &["--tls-psk", keys.to_str().unwrap()]);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "16M"]);
    // Before STARTTLS every option but STARTTLS and ABORT is refused with
    // TLS_REQD, and the session goes on; nothing is negotiated in clear.
    let mut s = connect(d.port);
    greet(&mut s);
    for (opt, data) in [
        (3u32, Vec::new()),
        (8, Vec::new()),
        (6, go_payload("tank/db")),
        (7, go_payload("tank/db")),
    ] {
        send_option(&mut s, opt, &data);
        assert_eq!(read_option_reply(&mut s).1, ERR_TLS_REQD, "option {opt}");
    }
    send_option(&mut s, STARTTLS, b"x");
    assert_eq!(read_option_reply(&mut s).1, ERR_INVALID);
    // EXPORT_NAME has no error reply: the server hangs up.
    send_option(&mut s, 1, b"tank/db");
    let mut b = [0u8; 1];
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    // STARTTLS is acknowledged in clear; a client that then speaks no TLS
    // is dropped and the daemon serves others.
    let mut s = connect(d.port);
    greet(&mut s);
    send_option(&mut s, STARTTLS, &[]);
    assert_eq!(read_option_reply(&mut s).1, 1);
    std::io::Write::write_all(&mut s, &[0u8; 64]).unwrap();
    assert!(matches!(s.read(&mut b), Ok(0) | Err(_)));
    drop(s);
    // A plain listener (here: a second daemon without TLS) refuses STARTTLS
    // by policy and goes on.
    let dir2 = tempfile::tempdir().unwrap();
    let state2 = pool(dir2.path());
    let plain = Daemon::start(&state2);
    plain.vpool_ok(&["vol", "create", "tank/db", "--size", "16M"]);
    let mut s = connect(plain.port);
    greet(&mut s);
    send_option(&mut s, STARTTLS, &[]);
    assert_eq!(read_option_reply(&mut s).1, ERR_POLICY);
    let mut c = Client::open(plain.port, "tank/db", false);
    assert_eq!(c.write(0, &[1u8; 4096]), 0);
    assert!(!d.log().contains("panicked"));
}

#[test]
fn listener_settings_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = pool(dir.path());
    let keys = dir.path().join("keys.psk");
    write_psk(&keys, "alice", 1);
    let daemon = |args: &[&str]| {
        run(
            Command::new(vpool_bin())
                .arg("--state-dir")
                .arg(&state)
                .arg("daemon")
                .args(args),
            60,
        )
    };
    let port = format!("0.0.0.0:{}", free_port());
    let o = daemon(&["--nbd-listen", &port]);
    assert!(failed_with(&o, "a non-loopback listener without TLS").contains("--insecure"));
    let o = daemon(&["--tls-psk", keys.to_str().unwrap()]);
    assert!(failed_with(&o, "TLS without a TCP listener").contains("--nbd-listen"));
    let o = daemon(&["--nbd-listen", "127.0.0.1:1", "--nbd-exports", "tank"]);
    assert!(failed_with(&o, "a pattern without a pool").contains("POOL/VOLUME"));
    let bad = dir.path().join("bad.psk");
    std::fs::write(&bad, "alice:nothex\n").unwrap();
    let o = daemon(&[
        "--nbd-listen",
        "127.0.0.1:1",
        "--tls-psk",
        bad.to_str().unwrap(),
    ]);
    assert!(failed_with(&o, "a malformed key file").contains("hexadecimal"));
    let o = daemon(&[
        "--nbd-listen",
        "127.0.0.1:1",
        "--tls-certificates",
        dir.path().to_str().unwrap(),
    ]);
    assert!(
        failed_with(&o, "a certificate directory without certificates").contains("server-cert.pem")
    );
}
