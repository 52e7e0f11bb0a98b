//! The second copy of a raid5 restripe's first rows.
//!
//! The first step saves the first rows on the new member, records phase
//! BACKUP, then rewrites them in the new layout, over old rows not yet
//! moved: until that step's checkpoint, the saved rows may be their only
//! whole copy. Lost with the new member (a crash in that step, and the new
//! member gone at the restart), they would leave a raid5 pool that one
//! member's loss made unopenable. So the step also writes them through the
//! old layout, with its parity, into data chunks allocated to the copy
//! alone, at or past the first rows' end (old rows the step does not
//! write), before BACKUP is committed. The superblock records where
//! ([`SbTransition::backup_copy`]); the commit that records phase MAIN frees
//! the chunks. At a restart in that phase the new member's copy is
//! checked block by block against the data checksums, and the second copy
//! serves where it fails them or is gone. Only where it can be recorded
//! (a pool with a flush log: the superblock word after the log directory)
//! and where a run of free chunks is found; otherwise the pool keeps the
//! one copy, as before.

use super::io;
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::raid::{Geometry, RaidLevel};
use crate::thin::csum::crc;
use crate::thin::store::csum::CSUM_BLOCK;
use crate::thin::store::superblock::SbTransition;
use crate::thin::ThinPool;
use crate::units::Chunk;

/// Write the second copy of the first rows `buf` through the old layout
/// `old` (within its capacity) and flush it: the array offset to record,
/// or 0 when the pool keeps one copy.
pub(super) fn save_copy(thin: &ThinPool, old: &Geometry, buf: &[u8]) -> Result<u64> {
    let cs = thin.chunk_size;
    let n = (buf.len() as u64).div_ceil(cs.bytes());
    let first = {
        let mut meta = thin.meta.write();
        if old.level != RaidLevel::Raid5 || meta.log_dir().is_none() {
            return Ok(0);
        }
        // Past the first rows: old rows the first step does not write.
        match meta.data.alloc_run_from(n, n) {
            Some(c) => c,
            None => return Ok(0),
        }
    };
    let at = cs.at(first, 0);
    if at + cs.span(n) > old.capacity() {
        release(thin, at, n)?;
        return Ok(0);
    }
    let written = thin
        .array
        .write(at, buf)
        .and_then(|()| thin.array.flush())
        .map_err(io("writing the second copy of the first rows"));
    if let Err(e) = written {
        release(thin, at, n)?;
        return Err(e);
    }
    Ok(at)
}

/// The saved first rows, at a restart in phase BACKUP: the new member's
/// copy; the second copy where the new member is gone or cannot read its
/// copy, and block by block where its block does not match the block's
/// data checksum and the second copy's does (a write the new member lost
/// or tore).
pub(super) fn read_saved(
    thin: &ThinPool,
    dev: Option<&DeviceRef>,
    sbt: &SbTransition,
    buf: &mut [u8],
) -> Result<()> {
    let on_new = match dev {
        Some(d) => d
            .read_at(buf, sbt.backup_offset)
            .map_err(io("reading the saved first rows")),
        None => Err(Error::Unavailable("new member missing".into())),
    };
    if sbt.backup_copy == 0 {
        return on_new;
    }
    let mut second = vec![0u8; buf.len()];
    let on_array = thin
        .array
        .read(sbt.backup_copy, &mut second)
        .map_err(io("reading the second copy of the first rows"));
    match (on_new, on_array) {
        (Err(e), Err(_)) => Err(e),
        (Ok(()), Err(_)) => Ok(()),
        (Err(_), Ok(())) => {
            buf.copy_from_slice(&second);
            Ok(())
        }
        (Ok(()), Ok(())) => {
            let cs = thin.chunk_size;
            let blocks = buf
                .chunks_mut(CSUM_BLOCK as usize)
                .zip(second.chunks(CSUM_BLOCK as usize));
            for (i, (a, b)) in blocks.enumerate() {
                let at = i as u64 * CSUM_BLOCK;
                let c = Chunk(cs.chunk_of(at));
                if a == b || !thin.meta.read().data.in_use(c) {
                    continue;
                }
                let want = thin.block_csum(c, at - cs.start(c.index()))?;
                if want.is_some_and(|w| crc(a) != w && crc(b) == w) {
                    a.copy_from_slice(b);
                }
            }
            Ok(())
        }
    }
}

/// The first rows are in the new layout: free the second copy's chunks
/// with the checkpoint's commit.
pub(super) fn drop_copy(thin: &ThinPool, sbt: &mut SbTransition) -> Result<()> {
    let at = std::mem::take(&mut sbt.backup_copy);
    if at == 0 {
        return Ok(());
    }
    release(thin, at, sbt.backup_len.div_ceil(thin.chunk_size.bytes()))
}

fn release(thin: &ThinPool, at: u64, n: u64) -> Result<()> {
    let first = thin.chunk_size.chunk_of(at);
    let mut meta = thin.meta.write();
    for c in first..first + n {
        meta.data_dec(Chunk(c))?;
    }
    Ok(())
}
