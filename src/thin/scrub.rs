//! Scrub: read every chunk in use from every copy, check each 4 KiB block
//! against its checksum, rewrite bad copies from a good one, and check
//! raid5 parity against the data. Client I/O waits for one step at a time.
//! A member that fails under the scrub is failed as in service, and the
//! scrub goes on degraded: the rebuild restores that member's copies.

use super::csum::crc;
use super::ThinPool;
use crate::error::{Error, Result};
use crate::raid::RaidLevel;
use crate::thin::store::csum::CSUM_BLOCK;
use crate::units::Chunk;
use serde::{Deserialize, Serialize};

const BLK: usize = CSUM_BLOCK as usize;

/// One copy of a stripe unit as read, and the CRC32 of each of its blocks.
type CopyRead = (Vec<u8>, Vec<u32>);

/// The block at byte `at` of a copy that was read.
fn block_at(x: &Option<CopyRead>, at: usize) -> Option<&[u8]> {
    x.as_ref().map(|(b, _)| &b[at..at + BLK])
}

/// What a scrub found and did.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ScrubReport {
    pub chunks: u64,
    pub bytes: u64,
    /// Data blocks checked (each against every copy).
    pub blocks: u64,
    /// Blocks with at least one bad copy.
    pub bad_blocks: u64,
    /// Bad copies rewritten from a good one.
    pub repaired: u64,
    /// Blocks no copy of which matched their checksum.
    pub unrecoverable: u64,
    /// RAID5 parity blocks (4 KiB) that disagreed with the data.
    pub parity_errors: u64,
    /// Parity blocks rewritten.
    pub parity_repaired: u64,
    /// Blocks without a checksum (a pool created without them): only
    /// mirrors and parity were compared.
    pub unverified: u64,
    /// Mirror blocks that differ where no checksum says which is right.
    pub mismatched: u64,
}

impl ThinPool {
    /// Scrub up to `max` chunks in use from chunk `from`; returns the chunk
    /// to go on from (`None`: done).
    pub fn scrub_step(
        &self,
        from: Chunk,
        max: usize,
        repair: bool,
        r: &mut ScrubReport,
    ) -> Result<Option<Chunk>> {
        let _gate = self.exclusive();
        if self.array.in_transition() {
            return Err(Error::InUse(
                "a layout change is running; scrub once it is done (`vpool job list`)".into(),
            ));
        }
        let chunks = self.meta.read().data.used_from(from, max);
        let Some(&last) = chunks.last() else {
            return Ok(None);
        };
        // Metadata extents hold metadata, checked by `vpool check`.
        let chunks: Vec<Chunk> = {
            let meta = self.meta.read();
            chunks
                .into_iter()
                .filter(|&c| !meta.is_extent_chunk(c))
                .collect()
        };
        for c in chunks {
            self.scrub_chunk(c, repair, r)?;
        }
        self.array
            .flush()
            .map_err(|e| Error::io("flushing scrub repairs", e))?;
        Ok(Some(last.next()))
    }

    fn scrub_chunk(&self, c: Chunk, repair: bool, r: &mut ScrubReport) -> Result<()> {
        let cs = self.chunk_size.bytes();
        let geo = self.array.geometry();
        let unit = if geo.level == RaidLevel::Raid1 {
            cs
        } else {
            geo.stripe_unit.min(cs)
        };
        let io = |e| Error::io("scrubbing", e);
        let health = self.array.health();
        let bad_before = r.bad_blocks;
        for u0 in (0..cs).step_by(unit as usize) {
            let off = self.chunk_size.at(c, u0);
            let len = unit.min(cs - u0) as usize;
            let copies = self.array.copies(off, len);
            // Each copy read once, each of its blocks checksummed once.
            let mut reads: Vec<(crate::raid::Copy, Option<CopyRead>)> =
                Vec::with_capacity(copies.len());
            for cp in &copies {
                let mut b = vec![0u8; len];
                let ok = self.array.read_copy(*cp, off, &mut b).is_ok();
                let sums: Vec<u32> = if ok {
                    b.chunks(BLK).map(crc).collect()
                } else {
                    Vec::new()
                };
                reads.push((*cp, ok.then_some((b, sums))));
            }
            for (i, within) in (u0..u0 + len as u64).step_by(BLK).enumerate() {
                let at = i * BLK;
                let sum = |x: &Option<CopyRead>| x.as_ref().map(|(_, s)| s[i]);
                r.blocks += 1;
                let Some(want) = self.block_csum(c, within)? else {
                    // No checksum: the stored copies must at least agree.
                    r.unverified += 1;
                    let mut direct = reads
                        .iter()
                        .filter(|(cp, _)| cp.direct)
                        .filter_map(|(_, x)| block_at(x, at));
                    if let Some(first) = direct.next() {
                        if direct.any(|b| b != first) {
                            r.mismatched += 1;
                        }
                    }
                    continue;
                };
                let good = reads
                    .iter()
                    .find(|(_, x)| sum(x) == Some(want))
                    .and_then(|(_, x)| block_at(x, at));
                // Only stored copies are bad: a raid5 reconstruction that
                // fails while the data unit is good means bad parity, which
                // the parity check below finds. A copy on a member that
                // failed (its read failed it, it vanished) is the rebuild's
                // to restore: the scrub goes on degraded without it.
                let bad: Vec<_> = reads
                    .iter()
                    .filter(|(cp, x)| {
                        cp.direct && sum(x) != Some(want) && !health.is_gone(cp.member)
                    })
                    .map(|(cp, _)| *cp)
                    .collect();
                if bad.is_empty() && good.is_some() {
                    continue;
                }
                r.bad_blocks += 1;
                for cp in &bad {
                    health.count_checksum(cp.member);
                }
                let Some(good) = good else {
                    r.unrecoverable += 1;
                    if bad.is_empty() {
                        health.count_checksum(self.array.member_at(off + at as u64));
                    }
                    health.event(format!(
                        "scrub: data block at pool offset {} has no good copy",
                        off + at as u64
                    ));
                    continue;
                };
                if repair {
                    for cp in &bad {
                        match self.array.rewrite_copy(*cp, off + at as u64, good) {
                            Ok(()) => r.repaired += 1,
                            // The repair write failed the member: its copies
                            // are the rebuild's now, and the scrub goes on
                            // degraded, as for a member whose read failed.
                            Err(_) if health.is_gone(cp.member) => {}
                            Err(e) => return Err(io(e)),
                        }
                    }
                }
            }
        }
        // Parity last, against data that is right: repaired, or (checking
        // only) intact; rows with bad data are judged after their repair.
        let bad = if repair || r.bad_blocks == bad_before {
            self.array
                .check_parity(self.chunk_size.at(c, 0), cs, repair)
                .map_err(io)?
        } else {
            Vec::new()
        };
        for (m, _) in &bad {
            health.count_checksum(*m);
        }
        r.parity_errors += bad.len() as u64;
        if repair {
            r.parity_repaired += bad.len() as u64;
        }
        r.chunks += 1;
        r.bytes += cs;
        Ok(())
    }
}
