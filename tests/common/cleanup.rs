//! Undo steps for tests that mount things: run in reverse order on drop,
//! even when the test fails.

use super::daemon::{ok, run};
use std::path::Path;
use std::process::Command;

#[derive(Default)]
pub struct Cleanup(Vec<Box<dyn FnOnce()>>);

impl Cleanup {
    pub fn push(&mut self, f: impl FnOnce() + 'static) {
        self.0.push(Box::new(f));
    }

    /// Lazily unmount `dir` at cleanup.
    pub fn unmount_later(&mut self, dir: &Path) {
        let d = dir.to_path_buf();
        self.push(move || {
            let _ = run(Command::new("umount").arg("-l").arg(&d), 30);
        });
    }

    /// Attach a loop device over `file` (extra losetup flags allowed); detached at cleanup.
    pub fn losetup(&mut self, file: &Path, flags: &[&str]) -> String {
        let dev = ok(
            Command::new("losetup")
                .args(["--find", "--show"])
                .args(flags)
                .arg(file),
            60,
        )
        .trim()
        .to_string();
        let d = dev.clone();
        self.push(move || {
            let _ = run(Command::new("losetup").args(["-d", &d]), 30);
        });
        dev
    }

    /// Mount `dev` on `dir` (read-only if `ro`); unmounted at cleanup.
    pub fn mount(&mut self, dev: &str, dir: &Path, ro: bool) {
        std::fs::create_dir_all(dir).unwrap();
        let mut cmd = Command::new("mount");
        if ro {
            cmd.args(["-o", "ro"]);
        }
        ok(cmd.arg(dev).arg(dir), 60);
        self.unmount_later(dir);
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while let Some(f) = self.0.pop() {
            f();
        }
    }
}
