//! Copying raw images into and out of volumes, sparse both ways.

use super::Engine;
use crate::error::Error;
use crate::units::{format_size, size_exact};
use crate::Volume;
use anyhow::{anyhow, bail, Context};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

const BLOCK: u64 = 1 << 20;

/// Data segments of a file (SEEK_DATA/SEEK_HOLE); the whole file if the
/// filesystem cannot tell.
fn data_segments(f: &File, size: u64) -> Vec<(u64, u64)> {
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    while (pos as u64) < size {
        // SAFETY: lseek on an owned descriptor.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return vec![(0, size)];
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let end = if hole < 0 { size as i64 } else { hole };
        out.push((data as u64, (end - data) as u64));
        pos = end;
    }
    out
}

/// Copy a raw image into a volume. Returns the summary line.
pub fn import(
    engine: &dyn Engine,
    vol: &Volume,
    from: &Path,
    offset: u64,
) -> anyhow::Result<String> {
    let f = File::open(from).with_context(|| format!("opening {}", from.display()))?;
    let size = f.metadata()?.len();
    let vsize = vol.size()?;
    if offset.checked_add(size).is_none_or(|e| e > vsize) {
        bail!(Error::Invalid(format!(
            "{} is {}; {}it does not fit in '{}' ({}). Grow it first: vpool vol resize {} --size {}",
            from.display(),
            size_exact(size),
            match offset {
                0 => String::new(),
                o => format!("at offset {} ", size_exact(o)),
            },
            vol.name(),
            size_exact(vsize),
            vol.name(),
            format_size((offset + size).div_ceil(1 << 20) << 20)
        )));
    }
    if !offset.is_multiple_of(512) {
        bail!(Error::Invalid(
            "--offset must be a multiple of 512 bytes".into()
        ));
    }
    let mut progress = engine.progress(&format!("importing into {}", vol.name()), size);
    let mut buf = vec![0u8; BLOCK as usize];
    let (mut copied, mut skipped, mut done) = (0u64, 0u64, 0u64);
    let segments = data_segments(&f, size);
    let mut pos = 0u64;
    let zero_range = |start: u64, len: u64| -> anyhow::Result<()> {
        if len > 0 {
            vol.write_zeroes(offset + start, len)?;
        }
        Ok(())
    };
    let result: anyhow::Result<()> = (|| {
        for (seg, seg_len) in segments.iter().copied().chain(std::iter::once((size, 0))) {
            // Hole before this segment: make the volume read zeros there too.
            zero_range(pos, seg - pos)?;
            skipped += seg - pos;
            done += seg - pos;
            let mut p = seg;
            while p < seg + seg_len {
                let n = BLOCK.min(seg + seg_len - p) as usize;
                f.read_exact_at(&mut buf[..n], p)
                    .with_context(|| format!("reading {}", from.display()))?;
                if buf[..n].iter().all(|&b| b == 0) {
                    vol.write_zeroes(offset + p, n as u64)?;
                    skipped += n as u64;
                } else {
                    vol.write_at(&buf[..n], offset + p)?;
                    copied += n as u64;
                }
                p += n as u64;
                done += n as u64;
                progress.set(done);
            }
            pos = seg + seg_len;
        }
        vol.flush()?;
        Ok(())
    })();
    progress.finish();
    if let Err(e) = result {
        if let Some(Error::NoSpace { .. }) = e.downcast_ref::<Error>() {
            let msg = format!(
                "import stopped: {} of {} were written, {} of the image did not fit ({} were zeros and needed no space); what was written is intact",
                format_size(copied),
                format_size(size),
                format_size(size - done),
                format_size(skipped)
            );
            return Err(e.context(msg));
        }
        return Err(e);
    }
    Ok(format!(
        "imported {} into '{}': {} copied, {} skipped as zero",
        format_size(size),
        vol.name(),
        format_size(copied),
        format_size(skipped)
    ))
}

/// Copy a volume or snapshot out to a sparse raw image. Returns the summary line.
pub fn export(engine: &dyn Engine, vol: &Volume, to: &Path, force: bool) -> anyhow::Result<String> {
    let size = vol.size()?;
    let mut opts = OpenOptions::new();
    opts.write(true);
    if force {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    let f = opts.open(to).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(Error::Exists(format!(
                "{}; pass --force to overwrite it",
                to.display()
            )))
        } else {
            anyhow!("creating {}: {e}", to.display())
        }
    })?;
    f.set_len(size)?;
    let ranges = vol.mapped_ranges()?;
    let mapped: u64 = ranges.iter().map(|r| r.1).sum();
    let mut progress = engine.progress(&format!("exporting {}", vol.name()), mapped);
    let mut buf = vec![0u8; BLOCK as usize];
    let (mut copied, mut done) = (0u64, 0u64);
    for (start, len) in ranges {
        let mut p = start;
        while p < start + len {
            let n = BLOCK.min(start + len - p) as usize;
            vol.read_at(&mut buf[..n], p)?;
            if !buf[..n].iter().all(|&b| b == 0) {
                f.write_all_at(&buf[..n], p)?;
                copied += n as u64;
            }
            p += n as u64;
            done += n as u64;
            progress.set(done);
        }
    }
    f.sync_all()?;
    progress.finish();
    Ok(format!(
        "exported '{}' to {}: {} copied, {} skipped as zero",
        vol.name(),
        to.display(),
        format_size(copied),
        format_size(size - copied)
    ))
}
