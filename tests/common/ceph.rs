//! A single-node Ceph cluster for the RBD member tests, started with
//! `tools/ceph-test-cluster` under the target directory (bluestore needs a
//! disk, not tmpfs) and stopped by the PIDs it recorded when dropped, even
//! when the test fails.

use super::daemon::{ok, require, run};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/ceph-test-cluster");

pub struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start() -> Cluster {
        for (tool, package) in [
            ("ceph-mon", "ceph-mon"),
            ("ceph-osd", "ceph-osd"),
            ("rbd", "ceph-common"),
        ] {
            require(tool, package);
        }
        let dir = tempfile::Builder::new()
            .prefix("ceph-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .expect("temp dir");
        // The guard exists before the start, so a start that fails half
        // way still stops what it started.
        let c = Cluster { dir };
        let o = run(Command::new(SCRIPT).arg("start").arg(c.path()), 240);
        assert!(
            o.status.success(),
            "ceph-test-cluster start failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn conf(&self) -> PathBuf {
        self.path().join("ceph.conf")
    }

    /// The `rbd` tool against this cluster.
    pub fn rbd(&self, args: &[&str]) -> Output {
        run(
            Command::new("rbd").arg("-c").arg(self.conf()).args(args),
            120,
        )
    }

    /// A new image of `size` (`1G`), as a vpool member name with this
    /// cluster's conf and `options` (`:key=value...`) appended.
    pub fn image(&self, name: &str, size: &str, options: &str) -> String {
        let o = self.rbd(&["create", &format!("rbd/{name}"), "--size", size]);
        assert!(
            o.status.success(),
            "rbd create: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        format!("rbd:rbd/{name}:conf={}{options}", self.conf().display())
    }

    /// Stop the OSD: an outage of the whole cluster's data.
    pub fn osd_stop(&self) {
        ok(Command::new(SCRIPT).arg("osd-stop").arg(self.path()), 60);
    }

    pub fn osd_start(&self) {
        ok(Command::new(SCRIPT).arg("osd-start").arg(self.path()), 120);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run(Command::new(SCRIPT).arg("stop").arg(self.path()), 90);
    }
}

/// Run `f` on a thread in a UTS namespace of its own whose hostname is
/// `host`: processes it starts (a CLI, a daemon) are "another host" to
/// vpool's member locks.
pub fn as_host<T: Send>(host: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare and sethostname affect only this thread (and
            // what it starts); the buffer is valid for its length.
            unsafe {
                assert_eq!(libc::unshare(libc::CLONE_NEWUTS), 0, "unshare: needs root");
                assert_eq!(libc::sethostname(host.as_ptr().cast(), host.len()), 0);
            }
            f()
        })
        .join()
        .expect("thread as another host")
    })
}
