//! Mounting, unmounting, and cleaning up a mount left by a killed daemon.

use super::fs::VolumeFs;
use crate::frontend::nbd::Exports;
use anyhow::{bail, Context};
use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct FuseMount {
    session: Option<BackgroundSession>,
    path: PathBuf,
}

fn is_mountpoint(path: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = path.to_str()?;
    mounts.lines().find_map(|l| {
        let fields: Vec<&str> = l.split(' ').collect();
        let dash = fields.iter().position(|f| *f == "-")?;
        (fields.get(4) == Some(&target)).then(|| {
            fields
                .get(dash + 1)
                .map(|s| s.to_string())
                .unwrap_or_default()
        })
    })
}

/// A vpool FUSE mount whose daemon died leaves `ENOTCONN` behind: detach it.
pub fn clear_stale_mount(path: &Path) -> anyhow::Result<()> {
    let Some(fstype) = is_mountpoint(path) else {
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
        ];
        cfg.acl = SessionACL::All;
        cfg.n_threads = Some(threads.max(1));
        cfg.clone_fd = true;
        let session =
            fuser::spawn_mount(VolumeFs::new(exports), path, &cfg).with_context(|| {
                format!(
                    "mounting FUSE at {} (needs /dev/fuse and root)",
                    path.display()
                )
            })?;
        tracing::info!("volumes mounted as files under {}", path.display());
        Ok(FuseMount {
            session: Some(session),
            path: path.to_path_buf(),
        })
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
