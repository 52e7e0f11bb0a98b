//! A filesystem on a test block device: make it, fill it with known files,
//! check it.

use super::cleanup::Cleanup;
use super::daemon::{ok, run};
use std::path::Path;
use std::process::Command;

/// mkfs.ext4 on `dev`, mount on `dir`, write `files`, sync, unmount, and
/// require `fsck.ext4 -fn` to find nothing wrong.
pub fn ext4_with_files(
    dev: &str,
    dir: &Path,
    files: &[(String, Vec<u8>)],
    g: &mut Cleanup,
    what: &str,
) {
    ok(Command::new("mkfs.ext4").args(["-q", "-F", dev]), 120);
    g.mount(dev, dir, false);
    for (name, data) in files {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
    }
    ok(&mut Command::new("sync"), 60);
    ok(Command::new("umount").arg(dir), 60);
    let fsck = run(Command::new("fsck.ext4").args(["-fn", dev]), 120);
    assert!(
        fsck.status.success(),
        "{what}: fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// Every file reads back as written.
pub fn assert_files(dir: &Path, files: &[(String, Vec<u8>)], what: &str) {
    for (name, data) in files {
        assert!(
            std::fs::read(dir.join(name)).unwrap() == *data,
            "{what}: {name} differs"
        );
    }
}
