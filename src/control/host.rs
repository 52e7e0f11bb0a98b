//! The host's block and filesystem tools, as the container frontends use
//! them: loop devices over volume files, `blkid`, `mkfs`, `mount`, `umount`
//! and `fsfreeze`. Every command runs under a time limit and its stderr is
//! kept for the error message.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// Run a command for at most `limit`; its stdout on success, a message
/// naming the command and its stderr otherwise.
pub fn run(cmd: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            let prog = cmd.get_program().to_string_lossy().to_string();
            format!("cannot run {prog}: {e} (is its package installed?)")
        })?;
    // Drained on threads so a chatty command cannot block on a full pipe.
    let drain = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    // A thread waits for the child, so its exit is seen at once (polling
    // cost up to a poll interval per command: 10 ms on every losetup and
    // mount of a container layer).
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = match rx.recv_timeout(limit) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("{cmd:?}: {e}")),
        Err(_) => {
            // SAFETY: our own child, not yet reaped (the waiter thread reaps
            // it after this kill), so the PID is still its.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            return Err(format!("{cmd:?} timed out after {}s", limit.as_secs()));
        }
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    if status.success() {
        Ok(out)
    } else {
        Err(format!("{cmd:?} failed ({status}): {}", err.trim()))
    }
}

/// The directory of volume files (the daemon's FUSE mount), mounting it at
/// `fallback` if the daemon was started without `--fuse-mount`.
pub fn volume_files(
    engine: &dyn crate::control::Engine,
    fallback: &Path,
) -> anyhow::Result<PathBuf> {
    if let Some(d) = engine.fuse_dir() {
        return Ok(d);
    }
    let mounted = engine.mount_fuse(fallback);
    // Two frontends may race to mount it: the loser finds it mounted.
    match (engine.fuse_dir(), mounted) {
        (Some(d), _) => Ok(d),
        (None, Err(e)) => Err(e),
        (None, Ok(_)) => anyhow::bail!("volume files are not mounted"),
    }
}

const SHORT: Duration = Duration::from_secs(60);
/// mkfs on a large volume writes its tables: give it time.
const LONG: Duration = Duration::from_secs(600);

/// One line of `/proc/self/mountinfo`.
pub struct MountEntry {
    pub target: String,
    pub fstype: String,
    pub source: String,
}

/// The mount table, as this process sees it.
pub fn mounts() -> Vec<MountEntry> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let dash = f.iter().position(|x| *x == "-")?;
            Some(MountEntry {
                target: f.get(4)?.to_string(),
                fstype: f.get(dash + 1)?.to_string(),
                source: f.get(dash + 2)?.to_string(),
            })
        })
        .collect()
}

/// Where `dir` is mounted, as `(device, fstype)`, if it is a mount point.
pub fn mount_of(dir: &Path) -> Option<(String, String)> {
    let target = dir.to_str()?;
    mounts()
        .into_iter()
        .find(|m| m.target == target)
        .map(|m| (m.source, m.fstype))
}

/// Every bound loop device, as `(/dev/loopN, backing file)`.
pub fn loop_devices() -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            if !name.starts_with("loop") {
                return None;
            }
            Some((format!("/dev/{name}"), backing_in(&e.path())?))
        })
        .collect()
}

/// Loop devices whose backing file is `file`.
pub fn loops_of(file: &Path) -> Vec<String> {
    loop_devices()
        .into_iter()
        .filter(|(_, b)| b == file)
        .map(|(dev, _)| dev)
        .collect()
}

/// The backing file of a loop device, if it has one.
pub fn loop_backing(dev: &str) -> Option<String> {
    let name = dev.strip_prefix("/dev/")?;
    let b = backing_in(&Path::new("/sys/block").join(name))?;
    Some(b.to_string_lossy().into_owned())
}

/// The backing file named in a loop device's sysfs directory (a file
/// removed while attached is named with " (deleted)"; that is dropped).
fn backing_in(sys: &Path) -> Option<PathBuf> {
    let b = std::fs::read_to_string(sys.join("loop/backing_file")).ok()?;
    Some(PathBuf::from(b.trim().trim_end_matches(" (deleted)")))
}

/// Loop devices whose backing file lies under `dir`, with that file.
pub fn loops_under(dir: &Path) -> Vec<(String, PathBuf)> {
    loop_devices()
        .into_iter()
        .filter(|(_, b)| b.starts_with(dir))
        .collect()
}

/// Attach `file` to a free loop device with direct I/O (the volume is not
/// cached twice). Returns `/dev/loopN`.
pub fn loop_attach(file: &Path) -> Result<String, String> {
    let out = run(
        Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(file),
        SHORT,
    )?;
    Ok(out.trim().to_string())
}

/// Detach a loop device (the kernel defers it while the device is open).
pub fn loop_detach(dev: &str) -> Result<(), String> {
    run(Command::new("losetup").args(["-d", dev]), SHORT).map(|_| ())
}

/// The filesystem type on a device, or `None` when it holds no signature.
pub fn fs_type(dev: &str) -> Result<Option<String>, String> {
    let mut cmd = Command::new("blkid");
    cmd.args(["-p", "-o", "value", "-s", "TYPE", dev]);
    match run(&mut cmd, SHORT) {
        Ok(out) => Ok(Some(out.trim().to_string()).filter(|s| !s.is_empty())),
        // blkid exits 2 when it finds nothing.
        Err(e) if e.contains("exit status: 2") => Ok(None),
        Err(e) => Err(e),
    }
}

/// The filesystems vpool formats volumes with.
pub const FILESYSTEMS: &[&str] = &["ext4", "xfs"];

/// Refuse a filesystem whose mkfs is not installed, naming the package.
pub fn check_mkfs(fs: &str) -> Result<(), String> {
    let tool = format!("mkfs.{fs}");
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(&tool).is_file()))
        .unwrap_or(false);
    if found {
        return Ok(());
    }
    let package = match fs {
        "xfs" => "xfsprogs",
        _ => "e2fsprogs",
    };
    Err(format!(
        "{tool} is not installed on this host: install {package} (apt-get install {package})"
    ))
}

/// Make a filesystem on a fresh thin volume without writing what already
/// reads as zeros (no discard, lazy inode tables): an empty filesystem then
/// costs a few MiB of the pool, not a share of the volume's size.
pub fn mkfs(fs: &str, dev: &str, label: &str) -> Result<(), String> {
    let mut cmd = match fs {
        "ext4" => {
            let mut c = Command::new("mkfs.ext4");
            c.args([
                "-q",
                "-F",
                "-E",
                "nodiscard,lazy_itable_init=1,lazy_journal_init=1",
            ]);
            c.args(["-L", &label.chars().take(16).collect::<String>()]);
            c
        }
        "xfs" => {
            let mut c = Command::new("mkfs.xfs");
            c.args(["-q", "-f", "-K"]);
            c.args(["-L", &label.chars().take(12).collect::<String>()]);
            c
        }
        other => return Err(format!("vpool cannot make a '{other}' filesystem")),
    };
    run(cmd.arg(dev), LONG).map(|_| ())
}

/// Mount options that keep a thin volume thin: ext4 must not zero inode
/// tables in the background (they read as zeros already).
fn mount_options(fs: &str) -> &'static str {
    match fs {
        "ext4" => "noinit_itable",
        _ => "defaults",
    }
}

pub fn mount(dev: &str, fs: &str, dir: &Path) -> Result<(), String> {
    run(
        Command::new("mount")
            .args(["-t", fs, "-o", mount_options(fs), dev])
            .arg(dir),
        SHORT,
    )
    .map(|_| ())
}

/// Unmount `dir`; when something still uses it, detach it lazily (the
/// kernel finishes once the last user leaves). Returns whether it was busy.
pub fn unmount(dir: &Path) -> Result<bool, String> {
    match run(Command::new("umount").arg(dir), SHORT) {
        Ok(_) => Ok(false),
        Err(e) if e.contains("busy") => {
            run(Command::new("umount").arg("-l").arg(dir), SHORT)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Detach a mount whatever its state (a dead FUSE file under it, say).
pub fn detach(dir: &Path) -> Result<(), String> {
    run(Command::new("umount").arg("-l").arg(dir), SHORT).map(|_| ())
}

/// Freeze a mounted filesystem (`fsfreeze -f`) until the guard is dropped:
/// what it has written is on the volume, and nothing more is, so a clone
/// taken meanwhile is a clean filesystem.
pub struct Frozen(PathBuf);

pub fn freeze(dir: &Path) -> Result<Frozen, String> {
    run(Command::new("fsfreeze").arg("-f").arg(dir), SHORT)?;
    Ok(Frozen(dir.to_path_buf()))
}

impl Drop for Frozen {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("fsfreeze").arg("-u").arg(&self.0), SHORT) {
            tracing::error!("could not thaw {}: {e}", self.0.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_returns_output_errors_and_stops_at_the_limit() {
        let out = run(Command::new("sh").args(["-c", "echo hi"]), SHORT).unwrap();
        assert_eq!(out, "hi\n");
        let err = run(
            Command::new("sh").args(["-c", "echo bad >&2; exit 3"]),
            SHORT,
        )
        .unwrap_err();
        assert!(
            err.contains("exit status: 3") && err.contains("bad"),
            "{err}"
        );
        let err = run(&mut Command::new("no-such-program-here"), SHORT).unwrap_err();
        assert!(err.contains("is its package installed"), "{err}");
        let start = std::time::Instant::now();
        let err = run(Command::new("sleep").arg("30"), Duration::from_millis(200)).unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the child was killed at the limit"
        );
    }
}
