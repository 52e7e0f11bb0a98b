//! Mounting, unmounting, and cleaning up a mount left by a killed daemon.

use super::fs::{Inodes, VolumeFs};
use crate::frontend::exports::Exports;
use anyhow::{bail, Context};
use fuser::{BackgroundSession, Config, INodeNo, MountOption, Notifier, SessionACL};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct FuseMount {
    session: Option<BackgroundSession>,
    notifier: Notifier,
    exports: Arc<dyn Exports>,
    inodes: Arc<Mutex<Inodes>>,
    handles: Arc<Mutex<std::collections::HashMap<u64, crate::Volume>>>,
    path: PathBuf,
}

/// A vpool FUSE mount whose daemon died leaves `ENOTCONN` behind: detach it.
pub fn clear_stale_mount(path: &Path) -> anyhow::Result<()> {
    let Some((_, fstype)) = crate::control::host::mount_of(path) else {
        return Ok(());
    };
    if !fstype.starts_with("fuse") {
        bail!(
            "{} is already a mount point ({fstype}); choose another --fuse-mount directory",
            path.display()
        );
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).context("mount path")?;
    // SAFETY: detaching a mount by path; the string is NUL-terminated.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        bail!(
            "cannot detach the stale mount at {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    tracing::warn!(
        "detached a stale FUSE mount at {} (left by a daemon that did not shut down)",
        path.display()
    );
    Ok(())
}

impl FuseMount {
    pub fn mount(
        path: &Path,
        exports: Arc<dyn Exports>,
        threads: usize,
    ) -> anyhow::Result<FuseMount> {
        // First: a dead mount at `path` makes even creating the directory fail.
        clear_stale_mount(path)?;
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        let mut cfg = Config::default();
        cfg.mount_options = vec![
            MountOption::FSName("vpool".into()),
            MountOption::Subtype("vpool".into()),
            MountOption::RW,
            // Other users may look (the mount is shared with containers'
            // loop devices), but the kernel enforces the files' modes:
            // volumes are 0600 and snapshots 0400, owned by the daemon.
            MountOption::DefaultPermissions,
        ];
        cfg.acl = SessionACL::All;
        cfg.n_threads = Some(threads.max(1));
        cfg.clone_fd = true;
        let fs = VolumeFs::new(exports.clone());
        let inodes = fs.inodes();
        let handles = fs.handles();
        let session = fuser::spawn_mount(fs, path, &cfg).with_context(|| {
            format!(
                "mounting FUSE at {} (needs /dev/fuse and root)",
                path.display()
            )
        })?;
        tracing::info!("volumes mounted as files under {}", path.display());
        Ok(FuseMount {
            notifier: session.notifier(),
            exports,
            session: Some(session),
            inodes,
            handles,
            path: path.to_path_buf(),
        })
    }

    /// Volume files clients hold open (loop devices, programs).
    pub fn open_files(&self) -> usize {
        self.handles.lock().len()
    }

    /// A volume's size changed (resize, rollback): make the kernel's size of
    /// its file follow before the change is reported.
    ///
    /// Attributes are never cached (TTL 0), but the kernel keeps the size of
    /// an open file in its inode, and takes a GETATTR reply's size only if no
    /// write finished while that GETATTR was in flight. Under a busy writer
    /// the inode kept the old size after `losetup -c` had read the new one,
    /// and the loop device's reads past the old size failed (a read at or
    /// past the inode's size returns nothing, which loop turns into EIO).
    /// A store of the volume's last byte extends the inode's size the way a
    /// write there would (the kernel ignores an empty store); it leaves a
    /// partial page that is not up to date, which the invalidation drops.
    /// A shrink shows at the next `stat`; until then the daemon answers
    /// reads past the end short and refuses writes there.
    pub fn size_changed(&self, volume: &str, size: u64) {
        let Some(ino) = self.inodes.lock().volume(volume) else {
            return; // the kernel never looked the file up
        };
        let Some(end) = size.checked_sub(1) else {
            return;
        };
        let mut last = [0u8; 1];
        let read = self
            .exports
            .open(volume)
            .ok_or_else(|| std::io::Error::other("volume is gone"))
            .and_then(|v| v.read_at(&mut last, end).map_err(std::io::Error::other));
        let grown = read.and_then(|()| self.notifier.store(INodeNo(ino), end, &last));
        let inval = self.notifier.inval_inode(INodeNo(ino), 0, 0);
        if let Err(e) = grown.and(inval) {
            tracing::warn!(
                "telling the kernel that {volume} is now {}: {e}",
                crate::units::size_exact(size)
            );
        }
    }

    /// Unmount (lazily if a loop device still holds a file) and stop the threads.
    pub fn unmount(mut self) {
        if let Some(s) = self.session.take() {
            if let Err(e) = s.umount_and_join() {
                tracing::warn!("FUSE unmount of {}: {e}; detaching", self.path.display());
                let _ = clear_stale_mount(&self.path);
            }
        }
    }
}
