//! A handle for I/O on one volume or snapshot. Cheap to clone; every call
//! checks that the volume still exists and that the range is inside it.

use super::Pool;
use crate::device::stats::{IoKind, IoStats};
use crate::error::{Error, Result};
use std::sync::Arc;
use std::time::Instant;

#[derive(Clone)]
pub struct Volume {
    pool: Pool,
    id: u64,
    name: String,
    read_only: bool,
    /// What clients asked of this volume (shared by its handles).
    stats: Arc<IoStats>,
}

/// Commits a write piece may wait for when space runs out.
const SPACE_RETRIES: usize = 8;

impl Volume {
    pub(crate) fn new(pool: Pool, id: u64, name: String, read_only: bool) -> Volume {
        Volume {
            stats: pool.volume_stats(id),
            pool,
            id,
            name,
            read_only,
        }
    }

    /// Run one client request and count it (`pool iostat`).
    fn counted(&self, kind: IoKind, bytes: u64, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let started = Instant::now();
        let r = f();
        self.stats.record(kind, bytes, started, r.is_ok());
        r
    }

    /// `pool/volume` or `pool/volume@snapshot`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Current size in bytes; an error once the volume is removed.
    pub fn size(&self) -> Result<u64> {
        self.pool.size_by_id(self.id).ok_or_else(|| {
            Error::NotFound(format!("volume '{}' not found (it was removed)", self.name))
        })
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<()> {
        let size = self.size()?;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::Invalid(format!(
                "I/O of {len} bytes at byte {offset} is beyond the end of '{}' ({})",
                self.name,
                crate::units::size_exact(size)
            )));
        }
        Ok(())
    }

    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::ReadOnly(format!("snapshot '{}'", self.name)));
        }
        Ok(())
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.counted(IoKind::Read, buf.len() as u64, || {
            let thin = self.pool.thin();
            let _g = thin.io_guard();
            self.check_range(offset, buf.len() as u64)?;
            thin.read(self.id, offset, buf)
                .map_err(|e| e.in_volume(&self.name))
        })
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        self.counted(IoKind::Write, data.len() as u64, || {
            self.write_uncounted(data, offset)
        })
    }

    fn write_uncounted(&self, data: &[u8], offset: u64) -> Result<()> {
        self.check_writable()?;
        // Resumed where it stopped: a large write near a full metadata
        // area commits part way instead of failing.
        let done = std::cell::Cell::new(0);
        self.with_space_retry(
            || {
                let thin = self.pool.thin();
                let _g = thin.io_guard();
                self.check_range(offset, data.len() as u64)?;
                let mut d = done.get();
                let r = thin.write_from(self.id, offset, data, &mut d);
                done.set(d);
                r
            },
            || done.get(),
        )
        .map_err(|e| e.in_volume(&self.name))
    }

    /// Whether the volume's pool keeps data checksums.
    pub fn has_checksums(&self) -> bool {
        self.pool.thin().csums.is_some()
    }

    /// Whether `name_ahead` may do anything now: a writable volume on a
    /// pool whose overwrites go in place under intents of its flush log.
    pub fn names_ahead(&self) -> bool {
        !self.read_only && self.pool.thin().names_ahead()
    }

    /// Queue the write intents of writes a client sent that wait behind
    /// its others, as (byte offset, CRC32 of each whole 4 KiB block, the
    /// tag of each: `thin::csum::heads`), so
    /// that the round of intents the running write makes takes theirs
    /// too and each of them finds its intents durable when it runs
    /// (`ThinPool::name_ahead`). Best effort: a write it cannot name
    /// runs its own round, and any error here is the write's to meet.
    pub fn name_ahead(&self, writes: &[(u64, Vec<u32>, Vec<u16>)]) {
        if self.read_only {
            return;
        }
        let thin = self.pool.thin();
        let _g = thin.io_guard();
        for (offset, crcs, heads) in writes {
            let len = crcs.len() as u64 * crate::thin::store::csum::CSUM_BLOCK;
            if self.check_range(*offset, len).is_ok() {
                let _ = thin.name_ahead(self.id, *offset, crcs, heads);
            }
        }
    }

    /// Release a range: it reads as zeros, whole chunks return to the pool.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.counted(IoKind::Discard, len, || self.discard_uncounted(offset, len))
    }

    fn discard_uncounted(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        self.with_space_retry(
            || {
                let thin = self.pool.thin();
                let _g = thin.io_guard();
                self.check_range(offset, len)?;
                thin.discard(self.id, offset, len)
            },
            // Progress: fewer chunks left mapped in the range.
            || {
                let whole = self.pool.thin().chunk_size.inside(offset, len);
                let left = self
                    .pool
                    .thin()
                    .mapped_chunks(self.id, whole.start, whole.end)
                    .map_or(usize::MAX, |v| v.len());
                usize::MAX - left
            },
        )
        .map_err(|e| e.in_volume(&self.name))
    }

    /// Zero a range. Whole chunks are unmapped (thin: zeros cost nothing).
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.discard(offset, len)
    }

    /// Make every completed write durable (through the flush log when it
    /// can: see `thin::log`).
    pub fn flush(&self) -> Result<()> {
        self.counted(IoKind::Flush, 0, || {
            self.pool
                .thin()
                .flush()
                .map_err(|e| e.in_volume(&self.name))
        })
    }

    /// A write that ran out of space is retried after a commit, which
    /// makes chunks and metadata blocks released in the running transaction
    /// reusable, and folds what it holds (its metadata needs are then
    /// known, not estimated). A write resumes where it stopped: retries go
    /// on while each attempt gets further (`progress`), a few more
    /// otherwise.
    fn with_space_retry(
        &self,
        mut f: impl FnMut() -> Result<()>,
        progress: impl Fn() -> usize,
    ) -> Result<()> {
        let thin = self.pool.thin();
        let mut seen = thin.commit_count();
        let mut r = f();
        let mut stalled = 0;
        while let Err(Error::NoSpace { .. }) = r {
            if stalled >= SPACE_RETRIES {
                break;
            }
            let before = progress();
            // One commit for all the writers that ran short together.
            thin.commit_unless_since(seen)?;
            // Still short of metadata space: the area grows if it can.
            let _ = self.pool.autogrow_metadata();
            seen = thin.commit_count();
            // Retried even when this writer had nothing to commit: another
            // writer may just have committed (and folded what filled the
            // running transaction), which made the room this one lacked.
            r = f();
            stalled = if progress() > before { 0 } else { stalled + 1 };
        }
        if r.is_ok() {
            self.pool.thin().maybe_commit()?;
        }
        r
    }

    /// Mapped byte ranges (merged), in order: what holds data.
    pub fn mapped_ranges(&self) -> Result<Vec<(u64, u64)>> {
        let thin = self.pool.thin();
        let _g = thin.io_guard();
        let size = self.size()?;
        let cs = thin.chunk_size;
        let mut out: Vec<(u64, u64)> = Vec::new();
        for k in thin.mapped_chunks(self.id, 0, cs.count(size))? {
            let start = cs.start(k);
            let len = cs.bytes().min(size - start);
            match out.last_mut() {
                Some(last) if last.0 + last.1 == start => last.1 += len,
                _ => out.push((start, len)),
            }
        }
        Ok(out)
    }

    /// Allocation of `[offset, offset+len)` as (length, mapped) extents,
    /// adjacent ones merged, at most `max` of them (the last may then cover
    /// less than the whole range).
    pub fn allocation(&self, offset: u64, len: u64, max: usize) -> Result<Vec<(u64, bool)>> {
        let thin = self.pool.thin();
        let _g = thin.io_guard();
        self.check_range(offset, len)?;
        let cs = thin.chunk_size;
        let end = offset + len;
        let mapped = thin.mapped_chunks(self.id, cs.chunk_of(offset), cs.count(end))?;
        let mut out: Vec<(u64, bool)> = Vec::new();
        let push = |from: u64, to: u64, m: bool, out: &mut Vec<(u64, bool)>| {
            if to <= from {
                return;
            }
            match out.last_mut() {
                Some(last) if last.1 == m => last.0 += to - from,
                _ => out.push((to - from, m)),
            }
        };
        let mut pos = offset;
        for k in mapped {
            let (s, e) = (cs.start(k).max(offset), cs.start(k + 1).min(end));
            push(pos, s, false, &mut out);
            push(s, e, true, &mut out);
            pos = e;
        }
        push(pos, end, false, &mut out);
        // Descriptor lengths are u32 on the wire: split what is longer.
        let mut split = Vec::new();
        for (mut l, m) in out {
            while l > 0 {
                let n = l.min(u32::MAX as u64 - 4095);
                split.push((n, m));
                l -= n;
            }
        }
        split.truncate(max.max(1));
        Ok(split)
    }

    /// Physical chunk behind a virtual chunk (for tests and tools).
    pub fn physical_chunk(&self, vchunk: u64) -> Result<Option<u64>> {
        let thin = self.pool.thin();
        let meta = thin.meta.read();
        let root = meta.volume_root(self.id)?.root;
        Ok(crate::meta::btree::lookup(
            &*meta,
            &crate::thin::store::mapping_spec(self.id),
            root,
            vchunk,
        )?
        .map(|(v, _)| crate::thin::store::mapped_chunk(&v).index()))
    }
}
