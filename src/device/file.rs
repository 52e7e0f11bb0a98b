//! A member backed by a regular file (an image) or a block device node.

use super::stats::{IoCounters, IoKind, IoStats};
use super::{check_range, BlockDevice};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);

/// A member device opened from a path. Holds an exclusive advisory lock
/// (`flock`) for as long as it is open, so two vpool processes never write
/// to the same member.
pub struct FileDevice {
    file: File,
    path: PathBuf,
    size: u64,
    is_block: bool,
    /// Opened with `O_DIRECT`: I/O in whole blocks of this many bytes
    /// (see `direct`).
    direct: Option<u64>,
    stats: IoStats,
}

impl FileDevice {
    /// Open read-write and lock exclusively. Fails with `WouldBlock` if
    /// another process holds the member.
    pub fn open(path: &Path) -> io::Result<FileDevice> {
        Self::open_with(path, true, true)
    }

    /// Open read-only without locking (for `inspect`, `check`, label scans).
    pub fn open_readonly(path: &Path) -> io::Result<FileDevice> {
        Self::open_with(path, false, false)
    }

    fn open_with(path: &Path, write: bool, lock: bool) -> io::Result<FileDevice> {
        // Direct I/O for the members a daemon started with `--direct-io`
        // serves: block devices, read-write.
        let direct = write && super::direct::direct_io() && {
            let m = std::fs::metadata(path)?;
            m.file_type().is_block_device()
        };
        let mut opts = OpenOptions::new();
        opts.read(true).write(write);
        if direct {
            opts.custom_flags(libc::O_DIRECT);
        }
        let file = opts.open(path)?;
        if lock {
            let fd = file.as_raw_fd();
            // SAFETY: flock on a valid, owned file descriptor.
            let rc = unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::WouldBlock {
                    return Err(io::Error::new(
                        io::ErrorKind::WouldBlock,
                        format!("{} is in use by another vpool process", path.display()),
                    ));
                }
                return Err(err);
            }
        }
        let meta = file.metadata()?;
        let is_block = meta.file_type().is_block_device();
        let size = if is_block {
            let mut sz: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 into `sz`.
            unsafe { blkgetsize64(file.as_raw_fd(), &mut sz) }.map_err(io::Error::from)?;
            sz
        } else if meta.is_file() {
            meta.len()
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} is neither a block device nor a regular file",
                    path.display()
                ),
            ));
        };
        let direct = match direct {
            true => Some(super::direct::block_unit(&file)?),
            false => None,
        };
        Ok(FileDevice {
            file,
            path: path.to_path_buf(),
            size,
            is_block,
            direct,
            stats: IoStats::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl BlockDevice for FileDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        let n = buf.len() as u64;
        (self.stats).timed(IoKind::Read, n, || match self.direct {
            Some(unit) => super::direct::read(&self.file, buf, offset, unit),
            None => self.file.read_exact_at(buf, offset),
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        let n = buf.len() as u64;
        (self.stats).timed(IoKind::Write, n, || match self.direct {
            Some(unit) => super::direct::write(&self.file, buf, offset, unit),
            None => self.file.write_all_at(buf, offset),
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.stats.timed(IoKind::Flush, 0, || self.file.sync_data())
    }

    fn write_vectored_at(&self, bufs: &[&[u8]], offset: u64) -> io::Result<()> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(self.size, offset, n)?;
        if self.direct.is_some() {
            // Each through the bounce buffer's alignment.
            return super::write_in_turn(self, bufs, offset);
        }
        let iovs = bufs.iter().map(|b| iovec(b.as_ptr(), b.len())).collect();
        // SAFETY: every iovec points into one of `bufs`, borrowed for the call.
        (self.stats).timed(IoKind::Write, n as u64, || unsafe {
            all_vectored(&self.file, iovs, offset, Way::Write)
        })
    }

    fn read_vectored_at(&self, bufs: &mut [&mut [u8]], offset: u64) -> io::Result<()> {
        let n: usize = bufs.iter().map(|b| b.len()).sum();
        check_range(self.size, offset, n)?;
        if self.direct.is_some() {
            return super::read_in_turn(self, bufs, offset);
        }
        let iovs = bufs
            .iter_mut()
            .map(|b| iovec(b.as_mut_ptr(), b.len()))
            .collect();
        // SAFETY: every iovec points into one of `bufs`, borrowed mutably
        // (so none overlaps another) for the call.
        (self.stats).timed(IoKind::Read, n as u64, || unsafe {
            all_vectored(&self.file, iovs, offset, Way::Read)
        })
    }

    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if self.direct.is_some() {
            // Through the bounce buffer's alignment, then a whole flush.
            self.write_at(buf, offset)?;
            return self.flush();
        }
        check_range(self.size, offset, buf.len())?;
        // Counted as the write and the flush it is, each with its whole
        // time and outcome (a failure is a failed flush, RELIABILITY.md).
        let started = std::time::Instant::now();
        let r = write_dsync(&self.file, buf, offset);
        self.stats
            .record(IoKind::Write, buf.len() as u64, started, r.is_ok());
        self.stats.record(IoKind::Flush, 0, started, r.is_ok());
        r
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if self.is_block || len == 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // Punch a hole so image files stay sparse; failure is harmless.
        let _ = nix::fcntl::fallocate(
            self.file.as_raw_fd(),
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset as i64,
            len as i64,
        );
        self.stats.record(IoKind::Discard, len, started, true);
        Ok(())
    }

    fn name(&self) -> String {
        self.path.display().to_string()
    }

    fn io_counters(&self) -> Option<IoCounters> {
        Some(self.stats.snapshot())
    }

    fn direct_io(&self) -> bool {
        self.direct.is_some()
    }
}

/// The iovec of `len` bytes at `ptr`.
fn iovec(ptr: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: ptr as *mut libc::c_void,
        iov_len: len,
    }
}

/// Which way `all_vectored` moves bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Way {
    Read,
    Write,
    /// `pwritev2(RWF_DSYNC)`: each call returns once its bytes are durable.
    WriteDsync,
}

/// `preadv` or `pwritev(2)` until every byte `iovs` name is moved at
/// `offset`: a short transfer goes on where it stopped, at most `IOV_MAX`
/// iovecs a call. End of file before the last byte is `UnexpectedEof`.
///
/// # Safety
/// Each iovec must point to memory valid for its length for the whole
/// call (writable, and overlapping no other, for `Way::Read`).
unsafe fn all_vectored(
    file: &File,
    mut iovs: Vec<libc::iovec>,
    mut offset: u64,
    way: Way,
) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut first = 0;
    while first < iovs.len() && iovs[first].iov_len == 0 {
        first += 1;
    }
    while first < iovs.len() {
        let at = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset past off_t"))?;
        let count = (iovs.len() - first).min(IOV_MAX) as libc::c_int;
        let iov = iovs[first..].as_ptr();
        // SAFETY: the caller's promise for the iovecs; a valid fd.
        let n = unsafe {
            match way {
                Way::Read => libc::preadv(file.as_raw_fd(), iov, count, at),
                Way::Write => libc::pwritev(file.as_raw_fd(), iov, count, at),
                Way::WriteDsync => {
                    libc::pwritev2(file.as_raw_fd(), iov, count, at, libc::RWF_DSYNC)
                }
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(match way {
                Way::Read => io::Error::new(io::ErrorKind::UnexpectedEof, "end of file"),
                Way::Write | Way::WriteDsync => {
                    io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing")
                }
            });
        }
        offset += n as u64;
        let mut left = n as usize;
        while left > 0 && first < iovs.len() {
            let v = &mut iovs[first];
            if v.iov_len <= left {
                left -= v.iov_len;
                first += 1;
            } else {
                // SAFETY: still inside the same buffer (`left < iov_len`).
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(left) }.cast();
                v.iov_len -= left;
                left = 0;
            }
        }
        while first < iovs.len() && iovs[first].iov_len == 0 {
            first += 1;
        }
    }
    Ok(())
}

/// `pwritev2(RWF_DSYNC)` until all of `buf` is written at `offset`: each
/// call returns once its bytes are on stable storage (the kernel writes
/// back and flushes that range only, reporting any write-back error of the
/// file as `fdatasync` would).
fn write_dsync(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    // SAFETY: one iovec over `buf`, borrowed for the call.
    unsafe {
        all_vectored(
            file,
            vec![iovec(buf.as_ptr(), buf.len())],
            offset,
            Way::WriteDsync,
        )
    }
}

/// Open member devices read-write and locked, with errors that say what to
/// do: a path listed twice, a missing file, one another process holds.
/// Names starting `rbd:` are RBD images ([`super::rbd`]).
pub fn open_members(paths: &[PathBuf]) -> crate::Result<Vec<super::DeviceRef>> {
    open_all(paths, super::rbd::Access::Locked)
}

/// [`open_members`] for `pool import --force`: an RBD member's lock held
/// by another host is broken after fencing that host.
pub fn open_members_fenced(paths: &[PathBuf]) -> crate::Result<Vec<super::DeviceRef>> {
    open_all(paths, super::rbd::Access::Fenced)
}

/// Open one member read-only and unlocked (label scans, `inspect`).
pub fn open_member_readonly(path: &Path) -> io::Result<super::DeviceRef> {
    match path.to_str().filter(|n| super::rbd::is_rbd(n)) {
        Some(name) => Ok(std::sync::Arc::new(super::rbd::RbdDevice::open(
            name,
            super::rbd::Access::ReadOnly,
        )?)),
        None => Ok(std::sync::Arc::new(FileDevice::open_readonly(path)?)),
    }
}

fn open_all(paths: &[PathBuf], access: super::rbd::Access) -> crate::Result<Vec<super::DeviceRef>> {
    use crate::Error;
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for p in paths {
        if !seen.insert(crate::state::absolute(p)) {
            return Err(Error::Invalid(format!("{} is listed twice", p.display())));
        }
        let rbd = p.to_str().filter(|n| super::rbd::is_rbd(n));
        let opened = match rbd {
            Some(name) => super::rbd::RbdDevice::open(name, access)
                .map(|d| std::sync::Arc::new(d) as super::DeviceRef),
            None => FileDevice::open(p).map(|d| std::sync::Arc::new(d) as super::DeviceRef),
        };
        match opened {
            Ok(d) => out.push(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound && rbd.is_some() => {
                return Err(Error::NotFound(e.to_string()));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound(format!(
                    "{}: no such file or device (for an image file: truncate -s 1G {})",
                    p.display(),
                    p.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && rbd.is_some() => {
                return Err(Error::InUse(e.to_string()));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(Error::InUse(format!(
                    "{e}; wait for it to finish (or stop the daemon that owns the pool)"
                )));
            }
            Err(e) if rbd.is_some() => return Err(Error::io("RBD member", e)),
            Err(e) => return Err(Error::io(p.display().to_string(), e)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_write_lands_and_counts_as_a_write_and_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.img");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let d = FileDevice::open(&path).unwrap();
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        d.write_durable_at(&data, 777).unwrap();
        let mut back = vec![0u8; data.len()];
        d.read_at(&mut back, 777).unwrap();
        assert_eq!(back, data);
        let c = d.io_counters().unwrap();
        assert_eq!((c.write.ops, c.write.bytes, c.flush.ops), (1, 5000, 1));
        // Past the end: refused before any I/O.
        let e = d.write_durable_at(&data, (1 << 16) - 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn vectored_io_moves_every_buffer_in_order_in_one_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.img");
        std::fs::write(&path, vec![0u8; 1 << 16]).unwrap();
        let d = FileDevice::open(&path).unwrap();
        let data: Vec<u8> = (0..20000u32).map(|i| (i % 251) as u8).collect();
        let (a, rest) = data.split_at(5000);
        let (b, c) = rest.split_at(3000);
        d.write_vectored_at(&[a, &[], b, c], 777).unwrap();
        let mut back = vec![0u8; data.len()];
        d.read_at(&mut back, 777).unwrap();
        assert_eq!(back, data);
        let mut x = [0u8; 100];
        let mut z = vec![0u8; data.len() - 100];
        d.read_vectored_at(&mut [&mut x[..], &mut [], &mut z[..]], 777)
            .unwrap();
        assert_eq!([&x[..], &z[..]].concat(), data);
        let c = d.io_counters().unwrap();
        assert_eq!((c.write.ops, c.write.bytes), (1, 20000), "one write");
        assert_eq!(c.read.ops, 2, "one read_at and one vectored read");
        // More buffers than one call takes (IOV_MAX): all of them, in order.
        let many: Vec<Vec<u8>> = (0..1500u32).map(|i| vec![(i % 253) as u8; 8]).collect();
        let refs: Vec<&[u8]> = many.iter().map(|v| &v[..]).collect();
        d.write_vectored_at(&refs, 4096).unwrap();
        let mut back = vec![0u8; 1500 * 8];
        d.read_at(&mut back, 4096).unwrap();
        assert_eq!(back, many.concat());
        // Past the end: refused before any I/O.
        let e = d.write_vectored_at(&[a, b], (1 << 16) - 6000).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let mut y = [0u8; 4];
        let e = d
            .read_vectored_at(&mut [&mut y[..], &mut z[..]], (1 << 16) - 100)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
