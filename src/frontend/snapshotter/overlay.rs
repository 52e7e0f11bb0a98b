//! Overlay mode: every layer is an ext4 volume of its own that vpool keeps
//! mounted under `ROOT/VOLUME` (with `fs/` and `work/` inside), and
//! containerd gets an `overlay` mount over those directories, as from its
//! overlayfs snapshotter. Committed layers are remounted read-only: they are
//! lower directories from then on.

use crate::control::host;
use anyhow::{anyhow, Context};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A mount for containerd to perform (a block-mode container's ext4, or
/// the overlay and bind mounts of overlay mode).
#[derive(Debug, Clone, PartialEq)]
pub struct MountSpec {
    pub fstype: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Where a layer's filesystem is mounted.
pub fn layer_dir(root: &Path, volume: &str) -> PathBuf {
    root.join(volume)
}

/// Attach a layer's volume file (holding an ext4) and mount it at its
/// directory. Returns the loop device.
pub fn attach(file: &Path, dir: &Path, read_only: bool) -> anyhow::Result<String> {
    let dev = host::loop_attach(file).map_err(|e| anyhow!(e))?;
    let done = (|| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        host::mount(&dev, "ext4", dir).map_err(|e| anyhow!(e))?;
        for sub in ["fs", "work"] {
            let p = dir.join(sub);
            if !p.exists() {
                std::fs::create_dir(&p).with_context(|| format!("creating {}", p.display()))?;
            }
        }
        if read_only {
            remount_ro(dir)?;
        }
        Ok(())
    })();
    if let Err(e) = done {
        let _ = host::unmount(dir);
        let _ = host::loop_detach(&dev);
        return Err(e);
    }
    Ok(dev)
}

/// Flush a committed layer and make it read-only.
pub fn remount_ro(dir: &Path) -> anyhow::Result<()> {
    host::run(
        Command::new("mount").args(["-o", "remount,ro"]).arg(dir),
        Duration::from_secs(60),
    )
    .map_err(|e| anyhow!(e))?;
    Ok(())
}

/// Unmount a layer and detach its loop device.
pub fn detach(dir: &Path, dev: Option<&str>) {
    if host::mount_of(dir).is_some() {
        if let Err(e) = host::unmount(dir) {
            tracing::error!("unmounting layer {}: {e}", dir.display());
        }
    }
    if let Some(dev) = dev {
        if let Err(e) = host::loop_detach(dev) {
            tracing::error!("detaching {dev}: {e}");
        }
    }
}

/// The mounts containerd performs: `own` is the snapshot's directory (none
/// for a view with parents), `lowers` its ancestors' directories, nearest
/// first.
pub fn mounts(own: Option<&Path>, lowers: &[PathBuf], read_only: bool) -> Vec<MountSpec> {
    let fs = |d: &Path| d.join("fs").display().to_string();
    let bind = |src: String, ro: bool| MountSpec {
        fstype: "bind".into(),
        source: src,
        options: vec!["rbind".into(), if ro { "ro" } else { "rw" }.into()],
    };
    let lowerdir = format!(
        "lowerdir={}",
        lowers.iter().map(|d| fs(d)).collect::<Vec<_>>().join(":")
    );
    match (own, lowers.len()) {
        (Some(d), 0) => vec![bind(fs(d), read_only)],
        (Some(d), _) => vec![MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("workdir={}", d.join("work").display()),
                format!("upperdir={}", fs(d)),
                lowerdir,
            ],
        }],
        // A view of one layer: that layer's directory, read-only.
        (None, 1) => vec![bind(fs(&lowers[0]), true)],
        (None, _) => vec![MountSpec {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![lowerdir],
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_follow_containerds_overlay_snapshotter() {
        let (a, b, c) = (
            PathBuf::from("/r/a"),
            PathBuf::from("/r/b"),
            PathBuf::from("/r/c"),
        );
        let m = mounts(Some(&a), &[], false);
        assert_eq!(
            (m[0].fstype.as_str(), m[0].source.as_str()),
            ("bind", "/r/a/fs")
        );
        assert_eq!(m[0].options, vec!["rbind", "rw"]);
        let m = mounts(Some(&a), &[b.clone(), c.clone()], false);
        assert_eq!(m[0].fstype, "overlay");
        assert_eq!(
            m[0].options,
            vec![
                "workdir=/r/a/work",
                "upperdir=/r/a/fs",
                "lowerdir=/r/b/fs:/r/c/fs"
            ]
        );
        let m = mounts(None, std::slice::from_ref(&b), true);
        assert_eq!(
            (m[0].fstype.as_str(), m[0].options[1].as_str()),
            ("bind", "ro")
        );
        let m = mounts(None, &[b, c], true);
        assert_eq!(m[0].options, vec!["lowerdir=/r/b/fs:/r/c/fs"]);
    }
}
