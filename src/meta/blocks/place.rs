//! Where a metadata block or space-map page lives, and its I/O: the fixed
//! area on every metadata copy (the mirror), or a metadata extent taken
//! from the data area (through the array, one run per copy). Reads take
//! the first copy a validator accepts and rewrite the others from it.

use super::BlockStore;
use crate::error::{CopyFault, CopyWhy};
use crate::meta::codec::BLOCK_SIZE;
use crate::meta::extent::MetaExtent;
use crate::raid::Array;
use crate::units::Block;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What is read: a metadata block or a space-map page slot.
#[derive(Clone, Copy, Debug)]
pub enum Place {
    Block(Block),
    Page(usize, usize),
}

impl BlockStore {
    /// Give the store the array its extents live on (before `load`).
    pub fn attach_array(&mut self, array: Arc<Array>) {
        self.array = Some(array);
    }

    pub fn extents(&self) -> &[MetaExtent] {
        &self.extents
    }

    fn in_fixed_area(&self, place: Place) -> bool {
        match place {
            Place::Block(b) => b.index() < self.layout.meta_blocks,
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
            Place::Block(Block::NONE) => false,
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

    /// `write_place`, made durable on every copy before it returns: in the
    /// fixed area a durable write of each copy (those bytes alone), in an
    /// extent a write and a flush of the array.
    pub(crate) fn write_place_durable(&self, place: Place, bytes: &[u8]) -> io::Result<()> {
        if !self.place_exists(place) {
            return Err(Self::nowhere(place));
        }
        let Some(e) = self.extent_of(place) else {
            return self.mirror.write_durable(self.fixed_offset(place), bytes);
        };
        let array = self.ext_array()?;
        for c in 0..e.copies.len() {
            array.write(Self::ext_offset(e, c, place), bytes)?;
        }
        array.flush()
    }

    /// [`BlockStore::write_place_durable`] on the copies of members `on`
    /// alone when `place` is in the fixed area (see
    /// `MetaMirror::write_durable_on`); on every copy elsewhere.
    pub(crate) fn write_place_durable_on(
        &self,
        place: Place,
        bytes: &[u8],
        on: &[usize],
    ) -> io::Result<()> {
        if !self.place_exists(place) || self.extent_of(place).is_some() {
            return self.write_place_durable(place, bytes);
        }
        self.mirror
            .write_durable_on(self.fixed_offset(place), bytes, on)
    }

    /// Write `bytes` (whole blocks) into blocks `first`, `first + 1`, ...
    /// on every copy and make them durable: one durable write per copy when
    /// they are all in the fixed area, else each written and the copies
    /// (and array) flushed.
    pub(crate) fn write_run_durable(&self, first: Block, bytes: &[u8]) -> io::Result<()> {
        let n = bytes.len().div_ceil(BLOCK_SIZE) as u64;
        if n > 0 && self.in_fixed_area(Place::Block(first.plus(n - 1))) {
            if !self.place_exists(Place::Block(first)) {
                return Err(Self::nowhere(Place::Block(first)));
            }
            return self
                .mirror
                .write_durable(self.fixed_offset(Place::Block(first)), bytes);
        }
        for (i, b) in bytes.chunks(BLOCK_SIZE).enumerate() {
            self.write_place(Place::Block(first.plus(i as u64)), b)?;
        }
        self.flush_meta()
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
}
