//! The host's state directory (layer 0: may use error): which pools this host
//! knows and where their members are. Only a cache: `pool import --scan`
//! rebuilds it from labels.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// `p` as an absolute path: canonical if it exists, else joined to the
/// working directory. How members and devices are remembered and compared.
/// An RBD member's name (`rbd:POOL/IMAGE...`) is not a path: kept as given.
pub fn absolute(p: &Path) -> PathBuf {
    if p.to_str().is_some_and(|s| s.starts_with("rbd:")) {
        return p.to_path_buf(); // an RBD image's name, not a path
    }
    std::fs::canonicalize(p).unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

/// Read a JSON file this host keeps; a missing file is `T::default()`. A
/// damaged one is an error that says so and what to do (`advice`).
pub fn read_json<T: serde::de::DeserializeOwned + Default>(path: &Path, advice: &str) -> Result<T> {
    match fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| Error::Invalid(format!("{} is damaged ({e}); {advice}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
    }
}

/// Write a JSON file atomically (see `write_atomic`).
pub fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomic(path, &body)
}

/// Serializes `bind_private`'s umask changes.
static BINDING: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

/// Bind a unix socket at `path` with `bind` so that it is owner-only from
/// the moment it exists: bound under a umask that leaves only the owner's
/// read and write (then made 0600 explicitly too). A chmod after binding
/// left a window in which the socket had the umask's mode, and with a
/// permissive umask any local user could connect in it. The umask is the
/// process's: binds are serialized, and a file another thread creates in
/// that moment is only more private than asked.
pub fn bind_private<T>(
    path: &Path,
    bind: impl FnOnce(&Path) -> std::io::Result<T>,
) -> std::io::Result<T> {
    use std::os::unix::fs::PermissionsExt;
    let bound = {
        let _one = BINDING.lock();
        // SAFETY: umask only swaps the process's file mode mask.
        let old = unsafe { libc::umask(0o177) };
        let bound = bind(path);
        // SAFETY: as above, restoring the mask.
        unsafe { libc::umask(old) };
        bound?
    };
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
    Ok(bound)
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KnownPool {
    pub uuid: String,
    pub members: Vec<PathBuf>,
}

#[derive(Serialize, Deserialize, Default, Debug)]
pub struct StateFile {
    pub pools: BTreeMap<String, KnownPool>,
}

/// Replace `path` with `body` atomically: a temp file beside it, fsync,
/// rename, fsync the directory. A crash leaves the old file or the new one.
pub fn write_atomic(path: &Path, body: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let io = |e| Error::io(format!("writing {}", tmp.display()), e);
    let f = File::create(&tmp).map_err(io)?;
    std::io::Write::write_all(&mut &f, body).map_err(io)?;
    f.sync_all().map_err(io)?;
    fs::rename(&tmp, path).map_err(|e| Error::io(format!("saving {}", path.display()), e))?;
    if let Some(dir) = path.parent() {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("syncing {}", dir.display()), e))?;
    }
    Ok(())
}

impl StateFile {
    /// The member paths remembered for pool `name` (none if unknown).
    pub fn members_of(&self, name: &str) -> Vec<PathBuf> {
        self.pools
            .get(name)
            .map(|k| k.members.clone())
            .unwrap_or_default()
    }
}

pub struct StateDir {
    dir: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Open (creating if needed) and lock the state directory for the
    /// lifetime of the returned value.
    pub fn open(dir: &Path) -> Result<StateDir> {
        Self::open_waiting(dir, None)
    }

    /// As [`StateDir::open`], but give up after `wait` (when given) if
    /// another command holds the directory.
    pub fn open_waiting(dir: &Path, wait: Option<std::time::Duration>) -> Result<StateDir> {
        fs::create_dir_all(dir).map_err(|e| {
            Error::io(format!("creating state directory {} (set --state-dir or VPOOL_STATE_DIR to a writable place)", dir.display()), e)
        })?;
        let lock_path = dir.join("state.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(format!("opening {}", lock_path.display()), e))?;
        let started = std::time::Instant::now();
        let how = if wait.is_some() {
            libc::LOCK_EX | libc::LOCK_NB
        } else {
            libc::LOCK_EX
        };
        // SAFETY: flock on an owned descriptor; without a wait, blocks
        // until other vpool commands finish.
        while unsafe { libc::flock(lock.as_raw_fd(), how) } != 0 {
            let e = std::io::Error::last_os_error();
            match wait {
                Some(w) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
                    if started.elapsed() >= w {
                        return Err(Error::InUse(format!(
                            "another vpool command holds the state directory {}",
                            dir.display()
                        )));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                _ => return Err(Error::io("locking the state directory", e)),
            }
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self) -> PathBuf {
        self.dir.join("pools.json")
    }

    pub fn load(&self) -> Result<StateFile> {
        read_json(
            &self.file(),
            "rebuild it with `vpool pool import --scan DIR`",
        )
    }

    /// Write atomically.
    pub fn save(&self, st: &StateFile) -> Result<()> {
        write_json(&self.file(), st)
    }

    /// Remember a pool this host now owns, its members by absolute path.
    pub fn remember(&self, name: &str, uuid: &str, members: &[PathBuf]) -> Result<()> {
        let mut st = self.load()?;
        st.pools.insert(
            name.to_string(),
            KnownPool {
                uuid: uuid.to_string(),
                members: members.iter().map(|p| absolute(p)).collect(),
            },
        );
        self.save(&st)
    }

    /// Forget a pool (exported, destroyed).
    pub fn forget(&self, name: &str) -> Result<()> {
        let mut st = self.load()?;
        st.pools.remove(name);
        self.save(&st)
    }
}

#[cfg(test)]
mod socket_tests {
    use super::bind_private;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_socket_is_owner_only_from_the_moment_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let mut at_bind = 0;
        let l = bind_private(&path, |p| {
            let l = std::os::unix::net::UnixListener::bind(p)?;
            // What a client racing the daemon would meet.
            at_bind = std::fs::metadata(p)?.permissions().mode() & 0o777;
            Ok(l)
        })
        .unwrap();
        assert_eq!(at_bind, 0o600, "the socket's mode as it was bound");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        drop(l);
        // The process's umask is back to what it was.
        let mask = || {
            let _one = super::BINDING.lock();
            // SAFETY: read the mask by swapping it, then put it back.
            unsafe {
                let m = libc::umask(0o022);
                libc::umask(m);
                m
            }
        };
        let before = mask();
        bind_private(&dir.path().join("t.sock"), |p| {
            std::os::unix::net::UnixListener::bind(p)
        })
        .unwrap();
        assert_eq!(mask(), before, "the umask was not restored");
        // A bind that fails leaves the umask restored and reports why.
        let e = bind_private(&dir.path().join("no/such/dir/s"), |p| {
            std::os::unix::net::UnixListener::bind(p)
        })
        .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    }
}
