//! Metadata extents in the store: routing block and space-map page I/O to
//! the fixed area (the metadata mirror) or to an extent (the array), and
//! growing the metadata space. See `meta::extent` for the layout.

use super::*;
use crate::error::{CopyFault, CopyWhy};
use crate::meta::extent::{self, MetaExtent, MAX_EXTENTS};
use crate::meta::spacemap::pages_for;
use crate::raid::Array;
use crate::units::ChunkSize;
use std::io;
use std::sync::atomic::Ordering;

/// What is read: a metadata block or a space-map page slot.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Place {
    Block(u64),
    Page(usize, usize),
}

impl MetaStore {
    /// Give the store the array its extents live on (before `load`).
    pub fn attach_array(&mut self, array: Arc<Array>) {
        self.array = Some(array);
    }

    pub fn extents(&self) -> &[MetaExtent] {
        &self.extents
    }

    fn in_fixed_area(&self, place: Place) -> bool {
        match place {
            Place::Block(b) => b < self.layout.meta_blocks,
            Place::Page(p, _) => p < self.layout.msm_pages as usize,
        }
    }

    /// The extent holding `place` (`None`: the fixed area, or nowhere).
    fn extent_of(&self, place: Place) -> Option<&MetaExtent> {
        match place {
            _ if self.in_fixed_area(place) => None,
            Place::Block(b) => self.extents.iter().find(|e| e.holds_block(b)),
            Place::Page(p, _) => self.extents.iter().find(|e| e.holds_page(p)),
        }
    }

    /// Does `place` exist (the fixed area, or an extent)?
    pub(crate) fn place_exists(&self, place: Place) -> bool {
        match place {
            Place::Block(0) => false,
            _ => self.in_fixed_area(place) || self.extent_of(place).is_some(),
        }
    }

    fn nowhere(place: Place) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{place:?} is in no metadata area or extent"),
        )
    }

    fn ext_offset(e: &MetaExtent, c: usize, place: Place) -> u64 {
        match place {
            Place::Block(b) => e.block_offset(c, b),
            Place::Page(p, slot) => e.page_offset(c, p, slot),
        }
    }

    fn fixed_offset(&self, place: Place) -> u64 {
        match place {
            Place::Block(b) => self.layout.block_offset(b),
            Place::Page(p, slot) => self.layout.msm_slot_offset(p, slot),
        }
    }

    fn ext_array(&self) -> io::Result<&Arc<Array>> {
        self.array.as_ref().ok_or_else(|| {
            io::Error::other(
                "metadata extents are reached through the array, which is not attached",
            )
        })
    }

    /// Write `bytes` at `place` on every metadata copy.
    pub(crate) fn write_place(&self, place: Place, bytes: &[u8]) -> io::Result<()> {
        if !self.place_exists(place) {
            return Err(Self::nowhere(place));
        }
        let Some(e) = self.extent_of(place) else {
            return self.mirror.write(self.fixed_offset(place), bytes);
        };
        let array = self.ext_array()?;
        self.ext_unflushed.store(true, Ordering::Release);
        for c in 0..e.copies.len() {
            array.write(Self::ext_offset(e, c, place), bytes)?;
        }
        Ok(())
    }

    /// Flush the metadata copies, and the array if extents were written.
    pub(crate) fn flush_meta(&self) -> io::Result<()> {
        self.mirror.flush()?;
        if self.ext_unflushed.swap(false, Ordering::AcqRel) {
            if let Some(a) = &self.array {
                a.flush()?;
            }
        }
        Ok(())
    }

    /// Read `place` from the first copy `valid` accepts; copies it rejects
    /// are rewritten from that one. Errors say why each copy failed.
    pub(crate) fn read_place_valid(
        &self,
        what: &str,
        place: Place,
        buf: &mut [u8],
        valid: crate::raid::Validator,
    ) -> std::result::Result<(), Vec<CopyFault>> {
        let unread = |copy: &str, e: io::Error| CopyFault {
            copy: copy.to_string(),
            why: CopyWhy::Io(e.to_string()),
        };
        if !self.place_exists(place) {
            return Err(vec![unread("the metadata area", Self::nowhere(place))]);
        }
        let Some(e) = self.extent_of(place) else {
            return self
                .mirror
                .read_valid(what, self.fixed_offset(place), buf, valid);
        };
        let array = self
            .ext_array()
            .map_err(|e| vec![unread("the metadata extents", e)])?;
        let mut failures = Vec::new();
        let mut bad = Vec::new();
        for c in 0..e.copies.len() {
            let off = Self::ext_offset(e, c, place);
            let copy = format!("extent copy {c}");
            let r = match array.read(off, buf) {
                Ok(()) => valid(buf).map_err(CopyWhy::Invalid),
                Err(x) => Err(CopyWhy::Io(x.to_string())),
            };
            match r {
                Ok(()) => {
                    for f in bad {
                        let (f, off): (CopyFault, u64) = f;
                        let (outcome, done) = match array.write(off, buf) {
                            Ok(()) => {
                                self.ext_unflushed.store(true, Ordering::Release);
                                ("rewritten from a good copy".to_string(), true)
                            }
                            Err(e) => (format!("not rewritten: {e}"), false),
                        };
                        self.mirror
                            .note_event(format!("{what}: {f}; {outcome}"), done);
                    }
                    return Ok(());
                }
                Err(why) => {
                    let f = CopyFault { copy, why };
                    bad.push((f.clone(), off));
                    failures.push(f);
                }
            }
        }
        Err(failures)
    }

    /// Every copy of `place` as stored (for the checker): copy index,
    /// description, bytes.
    pub(crate) fn read_place_copies(
        &self,
        place: Place,
    ) -> Vec<(usize, String, io::Result<Vec<u8>>)> {
        let mut out = Vec::new();
        match self.extent_of(place) {
            None => {
                let off = self.fixed_offset(place);
                for (idx, (member, dev)) in self.mirror.copies().iter().enumerate() {
                    let Some(dev) = dev else { continue };
                    let mut b = vec![0u8; BLOCK_SIZE];
                    let r = self.mirror.read_copy(idx, off, &mut b).map(|()| b);
                    out.push((idx, format!("copy on member {member} ({})", dev.name()), r));
                }
            }
            Some(e) => {
                for c in 0..e.copies.len() {
                    let mut b = vec![0u8; BLOCK_SIZE];
                    let r = self
                        .ext_array()
                        .and_then(|a| a.read(Self::ext_offset(e, c, place), &mut b))
                        .map(|()| b);
                    out.push((c, format!("metadata extent copy {c}"), r));
                }
            }
        }
        out
    }

    /// Rewrite one stored copy of `place` (checker repairs).
    pub(crate) fn rewrite_place_copy(
        &self,
        place: Place,
        copy: usize,
        bytes: &[u8],
    ) -> io::Result<()> {
        match self.extent_of(place) {
            None => self
                .mirror
                .write_copy(copy, self.fixed_offset(place), bytes),
            Some(e) => {
                self.ext_unflushed.store(true, Ordering::Release);
                self.ext_array()?
                    .write(Self::ext_offset(e, copy, place), bytes)
            }
        }
    }

    /// Metadata blocks an extent of `chunks` data chunks of `chunk_size`
    /// bytes holds (its space-map page slots come first).
    pub fn extent_blocks_for(chunks: u64, chunk_size: ChunkSize) -> u64 {
        let bytes = chunk_size.span(chunks);
        let mut blocks = bytes / BLOCK_SIZE as u64;
        while blocks > 0 && MetaExtent::bytes_for(blocks) > bytes {
            blocks -= (MetaExtent::bytes_for(blocks) - bytes)
                .div_ceil(BLOCK_SIZE as u64)
                .max(1);
        }
        blocks
    }

    /// Grow the metadata space by about `bytes` (whole data chunks, one run
    /// per metadata copy) taken from the data area. Takes effect with the
    /// next commit; until then nothing on disk refers to the new space, so
    /// a crash leaves the pool as it was. Returns the blocks added.
    pub fn grow_metadata(&mut self, bytes: u64, copies: usize) -> Result<u64> {
        if self.array.is_none() {
            return Err(Error::Invalid(
                "the metadata area grows only on an assembled pool".into(),
            ));
        }
        if self.extents.len() >= MAX_EXTENTS {
            return Err(Error::NoSpace {
                pool: self.pool_name.clone(),
                detail: format!(
                    "the metadata area has grown {MAX_EXTENTS} times, the most it records; remove snapshots or volumes"
                ),
            });
        }
        let cs = self.committed.chunk();
        let chunks = cs.count(bytes).max(1);
        let blocks = Self::extent_blocks_for(chunks, cs);
        let first = extent::next_first_block(self.msm.span());
        let pages_after = pages_for(first + blocks) as usize;
        if blocks == 0 || pages_after > crate::thin::store::superblock::MAX_MSM_PAGES {
            return Err(Error::Invalid(format!(
                "the metadata area cannot grow by {bytes} bytes (at most {} MiB in all)",
                (crate::thin::store::superblock::MAX_MSM_PAGES as u64
                    * ENTRIES_PER_PAGE as u64
                    * BLOCK_SIZE as u64)
                    >> 20
            )));
        }
        let mut runs = Vec::new();
        for _ in 0..copies.clamp(1, extent::MAX_COPIES) {
            match self.data.alloc_run(chunks) {
                Some(c) => runs.push(c),
                None => {
                    for &c in &runs {
                        for x in c..c + chunks {
                            self.data_dec(x)?;
                        }
                    }
                    return Err(Error::NoSpace {
                        pool: self.pool_name.clone(),
                        detail: format!(
                            "growing the metadata area needs {copies} runs of {chunks} free data chunks ({} MiB each); free data space or add a member",
                            cs.span(chunks) >> 20
                        ),
                    });
                }
            }
        }
        let e = MetaExtent {
            first_block: first,
            blocks,
            copies: runs.iter().map(|&c| cs.start(c)).collect(),
        };
        self.msm.extend(first, e.end_block());
        self.extents.push(e);
        self.extents_dirty = true;
        Ok(blocks)
    }

    /// Is data chunk `c` part of a metadata extent?
    pub fn is_extent_chunk(&self, c: u64) -> bool {
        let cs = self.committed.chunk();
        self.extents.iter().any(|e| {
            e.copies
                .iter()
                .any(|&off| cs.covering(off, e.run_bytes()).contains(&c))
        })
    }

    /// Data chunks of every extent copy run.
    pub fn extent_chunks(&self) -> Vec<u64> {
        let cs = self.committed.chunk();
        let mut out = Vec::new();
        for e in &self.extents {
            for &off in &e.copies {
                out.extend(cs.covering(off, e.run_bytes()));
            }
        }
        out
    }

    /// Point copy `copy` of extent `i` at another run (the caller copied
    /// its contents there); the old run's chunks are released.
    pub fn move_extent_copy(&mut self, i: usize, copy: usize, to: u64) -> Result<()> {
        let cs = self.committed.chunk();
        let (old, len) = {
            let e = &self.extents[i];
            (e.copies[copy], e.run_bytes())
        };
        for c in cs.covering(old, len) {
            self.data_dec(c)?;
        }
        self.extents[i].copies[copy] = to;
        self.extents_dirty = true;
        Ok(())
    }
}
