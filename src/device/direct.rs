//! Direct I/O (`O_DIRECT`) for block-device members, as md and LVM do
//! their I/O: no copy of the member's data in the host's page cache (the
//! volume's users cache it already), and a write that the device fails
//! fails at that `pwrite`, not at a later `fsync` that may report it once
//! and then drop the pages (see RELIABILITY.md). Off unless the daemon is
//! started with `--direct-io`.
//!
//! The kernel takes such I/O only in whole logical blocks of the device,
//! from memory aligned as strictly. Requests that are not (a 4 KiB NBD
//! payload lands anywhere in memory; some writes start mid-sector) go
//! through a bounce buffer of whole aligned blocks: the partial first and
//! last blocks of a write are read first and written back whole. Callers
//! already never write the same block from two threads at once (chunk and
//! stripe locks above, metadata blocks whole), so that read-modify-write
//! changes only the bytes asked for.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Memory alignment of every direct transfer: a page, which satisfies
/// any device's DMA alignment.
const MEM_ALIGN: usize = 4096;

/// Bounce buffers up to this size are kept by each thread for its next
/// request; larger ones are freed after use.
const KEEP: usize = 4 << 20;

static DIRECT_IO: AtomicBool = AtomicBool::new(false);

/// Open block-device members with `O_DIRECT` from now on (`vpool daemon
/// --direct-io`). Members already open keep the mode they were opened in.
pub fn set_direct_io(on: bool) {
    DIRECT_IO.store(on, Ordering::Release);
}

/// Whether block-device members are opened with `O_DIRECT`.
pub fn direct_io() -> bool {
    DIRECT_IO.load(Ordering::Acquire)
}

nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);

/// The unit of direct I/O on the block device `file`: its logical block
/// size, at least 512 bytes.
pub(super) fn block_unit(file: &File) -> io::Result<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `n`.
    unsafe { blksszget(file.as_raw_fd(), &mut n) }.map_err(io::Error::from)?;
    Ok((n.max(512)) as u64)
}

thread_local! {
    static BOUNCE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Run `f` on `len` bytes of page-aligned scratch memory.
fn with_bounce<T>(len: usize, f: impl FnOnce(&mut [u8]) -> io::Result<T>) -> io::Result<T> {
    BOUNCE.with(|cell| {
        let mut v = cell.borrow_mut();
        if v.len() < len + MEM_ALIGN {
            *v = vec![0u8; len + MEM_ALIGN];
        }
        let at = v.as_ptr().align_offset(MEM_ALIGN);
        let r = f(&mut v[at..at + len]);
        if v.len() > KEEP + MEM_ALIGN {
            *v = Vec::new();
        }
        r
    })
}

fn fits(ptr: *const u8, offset: u64, len: usize, unit: u64) -> bool {
    (ptr as usize).is_multiple_of(MEM_ALIGN)
        && offset.is_multiple_of(unit)
        && (len as u64).is_multiple_of(unit)
}

/// Read `buf.len()` bytes at `offset` from `file`, opened with `O_DIRECT`
/// on a device whose logical blocks are `unit` bytes.
pub(super) fn read(file: &File, buf: &mut [u8], offset: u64, unit: u64) -> io::Result<()> {
    if fits(buf.as_ptr(), offset, buf.len(), unit) {
        return file.read_exact_at(buf, offset);
    }
    let start = offset / unit * unit;
    let end = (offset + buf.len() as u64).div_ceil(unit) * unit;
    with_bounce((end - start) as usize, |b| {
        file.read_exact_at(b, start)?;
        let head = (offset - start) as usize;
        buf.copy_from_slice(&b[head..head + buf.len()]);
        Ok(())
    })
}

/// Write `buf` at `offset` to `file` (as `read`): whole blocks from
/// aligned memory, the partial first and last blocks read first.
pub(super) fn write(file: &File, buf: &[u8], offset: u64, unit: u64) -> io::Result<()> {
    if fits(buf.as_ptr(), offset, buf.len(), unit) {
        return file.write_all_at(buf, offset);
    }
    let start = offset / unit * unit;
    let stop = offset + buf.len() as u64;
    let end = stop.div_ceil(unit) * unit;
    let u = unit as usize;
    with_bounce((end - start) as usize, |b| {
        let head = (offset - start) as usize;
        if head != 0 {
            file.read_exact_at(&mut b[..u], start)?;
        }
        // The last block, unless it is the first one, read just above.
        if !stop.is_multiple_of(unit) && (end - unit != start || head == 0) {
            let last = b.len() - u;
            file.read_exact_at(&mut b[last..], end - unit)?;
        }
        b[head..head + buf.len()].copy_from_slice(buf);
        file.write_all_at(b, start)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::OpenOptionsExt;

    /// A file in the build directory (on a disk: tmpfs may refuse
    /// `O_DIRECT`), opened plainly and with `O_DIRECT`.
    fn direct_file(len: u64) -> Option<(tempfile::TempDir, File, File)> {
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/target")).ok()?;
        let p = dir.path().join("direct.img");
        let plain = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .ok()?;
        plain.set_len(len).ok()?;
        let direct = File::options()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&p)
            .ok()?;
        Some((dir, plain, direct))
    }

    #[test]
    fn unaligned_requests_change_only_their_bytes() {
        let Some((_dir, plain, direct)) = direct_file(64 << 10) else {
            panic!("O_DIRECT is refused in the build directory (target/): build on a disk file system, not tmpfs");
        };
        // The model: what the file must hold after each write.
        let mut model: Vec<u8> = (0..64 << 10).map(|i| (i * 7 % 251) as u8).collect();
        write(&direct, &model, 0, 4096).expect("aligned write");
        let cases: [(u64, usize); 7] = [
            (0, 4096),       // aligned offset, memory maybe not
            (100, 10),       // inside one block
            (4000, 200),     // across two blocks
            (8192, 100),     // starts on a block
            (12_000, 4196),  // ends on a block
            (5, 20_000),     // many blocks, both ends partial
            (65_536 - 1, 1), // the last byte
        ];
        for (k, &(off, len)) in cases.iter().enumerate() {
            let data: Vec<u8> = (0..len).map(|i| (i as u8) ^ (k as u8 * 31 + 1)).collect();
            // Unaligned memory too: a slice one byte in.
            let mut holder = vec![0u8; len + 1];
            holder[1..].copy_from_slice(&data);
            write(&direct, &holder[1..], off, 4096).expect("write");
            model[off as usize..off as usize + len].copy_from_slice(&data);
            let mut back = vec![0u8; len + 3];
            read(&direct, &mut back[3..], off, 4096).expect("read");
            assert_eq!(&back[3..], &data[..], "read back at {off}+{len}");
        }
        let mut all = vec![0u8; 64 << 10];
        plain.read_exact_at(&mut all, 0).expect("read whole");
        assert!(all == model, "bytes outside the writes changed");
    }
}
