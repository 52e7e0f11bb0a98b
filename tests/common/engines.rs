//! Container engines for the end-to-end tests: helpers shared by the
//! Docker/Podman and containerd tests (an image to run, stopping daemons by
//! PID, unmounting what they left).
#![allow(dead_code)]

use super::daemon::{ok, run};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The busybox binary (package busybox-static) for test images.
pub fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox is missing: install busybox-static")
}

/// A busybox root filesystem as a tarball, for `docker/podman import`.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
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
pub fn unmount_under(dir: &Path) {
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
pub fn wait_started(what: &str, log: &Path, ready: impl Fn() -> bool) {
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
pub fn stdout_ok(tool: &str, args: &[&str], o: Output) -> String {
    assert!(
        o.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stop_pid(pid: i32, grace: Duration) {
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
