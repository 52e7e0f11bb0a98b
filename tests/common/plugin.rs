//! A client for Docker's volume plugin protocol (HTTP POST + JSON on a unix
//! socket), and a guard that undoes what the plugin mounted if a test fails.

use super::cleanup::Cleanup;
use super::daemon::run;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// POST `/{call}` with `body`; the HTTP status and the JSON answer.
pub fn call(socket: &Path, method: &str, body: &str) -> (u16, serde_json::Value) {
    let mut s =
        UnixStream::connect(socket).unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
    s.set_read_timeout(Some(Duration::from_secs(300))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "POST /{method} HTTP/1.1\r\nHost: plugin\r\nContent-Type: application/vnd.docker.plugins.v1.2+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, payload) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {method}: {text}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    let json = serde_json::from_str(payload)
        .unwrap_or_else(|e| panic!("{method} answered non-JSON ({e}): {payload}"));
    (status, json)
}

/// A call that must succeed: HTTP 200 and an empty `Err`.
pub fn call_ok(socket: &Path, method: &str, body: &str) -> serde_json::Value {
    let (status, v) = call(socket, method, body);
    assert_eq!(status, 200, "{method} {body}: {v}");
    assert_eq!(v["Err"].as_str().unwrap_or(""), "", "{method} {body}: {v}");
    v
}

/// A call that must fail: HTTP 500 and an `Err` containing `want`.
pub fn call_err(socket: &Path, method: &str, body: &str, want: &str) {
    let (status, v) = call(socket, method, body);
    assert_eq!(status, 500, "{method} {body} should fail: {v}");
    let err = v["Err"].as_str().unwrap_or("");
    assert!(
        err.contains(want),
        "{method} {body}: error '{err}' should say '{want}'"
    );
}

/// Loop devices whose backing file lies under `dir`, or reads `/tank/VOL`:
/// what the kernel shows once the FUSE mount above the file was detached
/// (a loop device leaked by a daemon that died).
pub fn loops_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = std::fs::read_to_string(e.path().join("loop/backing_file")) {
            let b = Path::new(b.trim());
            let detached = b.starts_with("/tank") && b.components().count() == 3;
            if b.starts_with(dir) || detached {
                out.push(format!("/dev/{}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// `loops_under(dir)` once it is empty, or what is left after 10 s. The
/// kernel releases an auto-clearing loop device asynchronously after its
/// last close (a work item since Linux 5.x), and another test's devices
/// whose backing mount is gone (`/tank/NAME`) may be going away too: a
/// single look right after an unmount can still see one.
pub fn loops_left(dir: &Path) -> Vec<String> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let left = loops_under(dir);
        if left.is_empty() || std::time::Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn is_mounted(dir: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == dir.to_str())
}

/// At cleanup: unmount whatever the plugin mounted under `root` (one
/// directory per volume) and detach loop devices over volume files under
/// `files`, then unmount `files` itself.
pub fn undo_plugin_mounts(g: &mut Cleanup, root: &Path, files: &Path) {
    let (root, files): (PathBuf, PathBuf) = (root.into(), files.into());
    g.push(move || {
        for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if is_mounted(&e.path()) {
                let _ = run(Command::new("umount").arg("-l").arg(e.path()), 30);
            }
        }
        for dev in loops_under(&files) {
            let _ = run(Command::new("losetup").args(["-d", &dev]), 30);
        }
        if is_mounted(&files) {
            let _ = run(Command::new("umount").arg("-l").arg(&files), 30);
        }
    });
}
