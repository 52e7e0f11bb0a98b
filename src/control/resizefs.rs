//! Filesystems over a volume's FUSE file: which loop devices use it, whether
//! they are mounted, and growing them after the volume grows (`losetup -c`,
//! then `resize2fs` or `xfs_growfs`).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A loop device backed by a volume file, and where it is mounted.
#[derive(Debug, Clone)]
pub struct LoopUse {
    pub device: String,
    pub mountpoint: Option<String>,
    pub fstype: Option<String>,
}

/// Loop devices whose backing file is `file`, and where each is mounted.
pub fn loop_users(file: &Path) -> Vec<LoopUse> {
    let mounts = crate::control::host::mounts();
    crate::control::host::loops_of(file)
        .into_iter()
        .map(|device| {
            let m = mounts.iter().find(|m| m.source == device);
            LoopUse {
                mountpoint: m.map(|m| m.target.clone()),
                fstype: m.map(|m| m.fstype.clone()),
                device,
            }
        })
        .collect()
}

/// Refuse `what` while loop devices use the pool's volume files: all of them
/// (`vol` None), or one volume's (with its snapshots' when the flag is
/// set). A filesystem on such a device would lose it; the daemon's Docker
/// volumes and container layers are such filesystems.
pub fn refuse_in_use(
    engine: &dyn super::Engine,
    pool: &str,
    vol: Option<(&str, bool)>,
    what: &str,
) -> anyhow::Result<()> {
    let Some(dir) = engine.fuse_dir() else {
        return Ok(());
    };
    let users: Vec<(String, std::path::PathBuf)> =
        crate::control::host::loops_under(&dir.join(pool))
            .into_iter()
            .filter(|(_, f)| {
                let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
                match vol {
                    None => true,
                    Some((v, snaps)) => name == v || (snaps && name.starts_with(&format!("{v}@"))),
                }
            })
            .collect();
    if users.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = users
        .iter()
        .map(|(dev, f)| {
            let at = crate::control::resizefs::loop_users(f)
                .into_iter()
                .find(|u| &u.device == dev)
                .and_then(|u| u.mountpoint)
                .map(|m| format!("mounted on {m}"))
                .unwrap_or_else(|| "not mounted".into());
            format!("{dev} over {} ({at})", f.display())
        })
        .collect();
    anyhow::bail!(crate::Error::InUse(format!(
        "{what} is refused while loop devices use it: {}. Unmount the filesystem and `losetup -d` the device first (Docker volumes and container layers: stop their containers)",
        list.join(", ")
    )))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    crate::control::host::run(cmd, Duration::from_secs(600)).map(|_| ())
}

/// After a grow: refresh each loop device's size and grow the filesystem on
/// it where vpool knows how. Returns what was done, one line each.
pub fn grow(file: &Path) -> Vec<String> {
    let users = loop_users(file);
    if users.is_empty() {
        return vec![format!(
            "no loop device uses {}: nothing else to grow",
            file.display()
        )];
    }
    // The kernel caches the FUSE file's size; a stat makes it ask again (our
    // attributes have no TTL), so the loop device and the I/O past the old
    // end see the new size.
    let _ = std::fs::metadata(file);
    let mut done = Vec::new();
    for u in users {
        match run(Command::new("losetup").args(["-c", &u.device])) {
            Ok(()) => done.push(format!(
                "losetup -c {}: the loop device has the new size",
                u.device
            )),
            Err(e) => {
                done.push(format!("could not refresh {}: {e}", u.device));
                continue;
            }
        }
        let r = match (u.fstype.as_deref(), u.mountpoint.as_deref()) {
            (Some("ext2" | "ext3" | "ext4"), _) => {
                Some(("resize2fs", run(Command::new("resize2fs").arg(&u.device))))
            }
            (Some("xfs"), Some(m)) => Some(("xfs_growfs", run(Command::new("xfs_growfs").arg(m)))),
            (Some(t), _) => {
                done.push(format!(
                    "{} holds a {t} filesystem: grow it with its own tool",
                    u.device
                ));
                None
            }
            (None, _) => {
                done.push(format!(
                    "{} is not mounted: grow its filesystem when you use it",
                    u.device
                ));
                None
            }
        };
        match r {
            Some((tool, Ok(()))) => done.push(format!(
                "{tool} grew the filesystem on {} (mounted on {})",
                u.device,
                u.mountpoint.unwrap_or_default()
            )),
            Some((tool, Err(e))) => done.push(format!("{tool} on {} failed: {e}", u.device)),
            None => {}
        }
    }
    done
}
