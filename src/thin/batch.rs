//! Requests over several chunks (a 1 MiB request is 16 chunks of a linear
//! pool, 6 of a three-member raid0). Their chunks' locks are taken
//! together, each once, in the lock table's order: two such requests never
//! wait on each other in a cycle, and every other path holds one chunk
//! lock at a time. Pieces whose chunks lie next to each other on the array
//! then move in one array I/O rather than one per chunk: on a linear pool
//! or a mirror, one member I/O instead of sixteen (one round trip to a
//! Ceph RBD member instead of sixteen in a row).
//!
//! Writes take this path only when every piece overwrites its chunk in
//! place (the chunk is the volume's alone, and in place is allowed: see
//! `write_piece`), with one round of intents for all of them on pools
//! that need intents, or fills an unmapped chunk whole (from one run of
//! fresh chunks). Any other write goes piece by piece.

use super::csum::{crc, heads};
use super::io::{Mapping, Prepared, MAP_BLOCKS};
use super::ThinPool;
use crate::error::{Error, Result};
use crate::sync::RwLock;
use crate::thin::store::csum::CSUM_BLOCK as BLK;
use crate::thin::store::space::SpaceUse;
use crate::units::Chunk;
use std::ops::Range;
use std::sync::atomic::Ordering;

/// One piece of a request: a part of one chunk.
#[derive(Clone, Copy)]
struct Piece {
    vchunk: u64,
    /// Byte within the chunk, length.
    within: u64,
    n: u64,
    /// Byte within the request.
    at: usize,
}

impl Piece {
    fn bytes(&self) -> Range<usize> {
        self.at..self.at + self.n as usize
    }

    fn aligned(&self) -> bool {
        self.within.is_multiple_of(BLK) && self.n.is_multiple_of(BLK)
    }
}

/// How a piece of a write goes home.
#[derive(Clone, Copy, PartialEq)]
enum Home {
    /// A chunk of the running transaction, or a pool that may overwrite
    /// in place with its region intent block marked.
    Plain,
    /// Under intents of the flush log (pools without a second copy).
    Journaled,
    /// Over committed data, its region marked, on a pool with checksums
    /// and a second copy: a small piece leaves a copy for the next round
    /// (see `ThinPool::journal_written`), as a journaled one does.
    Copied,
}

impl ThinPool {
    /// Before a write over several chunks goes piece by piece: one round
    /// of intents for every piece that will overwrite committed data in
    /// place (rather than a round each), and one run of chunks for the
    /// pieces not mapped yet (rather than chunks wherever concurrent
    /// writers leave them). A piece whose mapping changes before its turn
    /// (a concurrent writer) does as it would have without: an intent
    /// whose write never comes is one in flight at a crash, which replay
    /// allows, and an unused chunk is released. Only whole 4 KiB blocks
    /// are named ahead (partial ones read their blocks under the chunk's
    /// lock). Caller holds the gate for read, so no commit comes between
    /// the round and the writes.
    pub(super) fn prepare(&self, vol: u64, offset: u64, data: &[u8]) -> Result<Vec<Prepared>> {
        let cs = self.chunk_size;
        let pieces = self.split(offset, data.len());
        let mut out: Vec<Prepared> = pieces.iter().map(|_| Prepared::default()).collect();
        let journals = self.journals() && !self.log.unlogged.load(Ordering::Acquire);
        let (mut entries, mut named, mut unmapped) = (Vec::new(), 0, Vec::new());
        for (k, p) in pieces.iter().enumerate() {
            match self.lookup(vol, p.vchunk)? {
                None => unmapped.push(k),
                Some(m)
                    if journals
                        && p.aligned()
                        && m.exclusive
                        && !m.new
                        && self.array.overwrite_in_place(p.n, cs) =>
                {
                    let crcs: Vec<u32> = data[p.bytes()].chunks(BLK as usize).map(crc).collect();
                    let heads = heads(&data[p.bytes()], 0);
                    entries.extend(super::journal::intents(m.phys, p.within, &crcs, &heads));
                    out[k].named = Some((m.phys, crcs));
                    named += 1;
                }
                Some(_) => {}
            }
        }
        // One piece alone gains nothing over `intend` under its lock.
        if named < 2 || !self.intend_all(entries)? {
            out.iter_mut().for_each(|p| p.named = None);
        }
        if unmapped.len() >= 2 {
            // Else each piece allocates (and is checked) alone, so a large
            // write near a full metadata area commits part way.
            if let Some(first) = self.alloc_run(unmapped.len() as u64) {
                for (i, &k) in unmapped.iter().enumerate() {
                    out[k].fresh = Some(Chunk(first.0 + i as u64));
                }
            }
        }
        Ok(out)
    }

    /// `n` fresh chunks in a row, only with metadata room for all their
    /// mappings (what a piece's own check asks, each counting the whole
    /// run as allocated: without it a small metadata area fills early).
    /// None: no such room or run.
    fn alloc_run(&self, n: u64) -> Option<Chunk> {
        let mut meta = self.meta.write();
        let room = meta.check_room(SpaceUse::Ordinary, (MAP_BLOCKS + 2) * n, self.csum_groups());
        room.ok().and_then(|()| meta.data_alloc_run(n))
    }

    /// Give back the chunks `prepare` allocated that no piece took.
    pub(super) fn release_unused(&self, prepared: &[Prepared]) -> Result<()> {
        let mut unused = prepared.iter().filter_map(|p| p.fresh).peekable();
        if unused.peek().is_some() {
            let mut meta = self.meta.write();
            for c in unused {
                meta.data_dec(c)?;
            }
        }
        Ok(())
    }

    fn split(&self, offset: u64, len: usize) -> Vec<Piece> {
        let mut at = 0;
        self.chunk_size
            .pieces(offset, len as u64)
            .map(|(vchunk, within, n)| {
                let p = Piece {
                    vchunk,
                    within,
                    n,
                    at,
                };
                at += n as usize;
                p
            })
            .collect()
    }

    /// The locks of `pieces`' chunks, each once, in the table's order.
    fn lock_set(&self, vol: u64, pieces: &[Piece]) -> Vec<&RwLock<()>> {
        let mut locks: Vec<&RwLock<()>> = pieces
            .iter()
            .map(|p| self.chunk_lock(vol, p.vchunk))
            .collect();
        locks.sort_by_key(|l| *l as *const RwLock<()> as usize);
        locks.dedup_by_key(|l| *l as *const RwLock<()> as usize);
        locks
    }

    /// Pieces `[start, end)` in runs that one array I/O can move: each
    /// next piece mapped to the next chunk on the array, and (with
    /// checksums) whole 4 KiB blocks. Unmapped pieces come alone.
    fn runs(&self, pieces: &[Piece], phys: &[Option<Chunk>]) -> Vec<Range<usize>> {
        let mergeable = |k: usize| self.csums.is_none() || pieces[k].aligned();
        let mut out = Vec::new();
        let mut start = 0;
        for k in 1..=pieces.len() {
            let joins = k < pieces.len()
                && mergeable(k - 1)
                && mergeable(k)
                && matches!((phys[k - 1], phys[k]), (Some(a), Some(b)) if b == a.next());
            if !joins {
                out.push(start..k);
                start = k;
            }
        }
        out
    }

    /// `read` of a request over more than one chunk.
    pub(super) fn read_pieces(&self, vol: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        let pieces = self.split(offset, buf.len());
        let locks = self.lock_set(vol, &pieces);
        let _held: Vec<_> = locks.iter().map(|l| l.read()).collect();
        let mut phys = Vec::with_capacity(pieces.len());
        for p in &pieces {
            phys.push(self.lookup(vol, p.vchunk)?.map(|m| m.phys));
        }
        for r in self.runs(&pieces, &phys) {
            let (first, last) = (pieces[r.start], pieces[r.end - 1]);
            let span = &mut buf[first.at..last.at + last.n as usize];
            match phys[r.start] {
                None => span.fill(0),
                Some(p) if r.len() == 1 => self.read_chunk(p, first.within, span)?,
                Some(p) => {
                    self.array
                        .read(self.chunk_size.at(p, first.within), span)
                        .map_err(|e| Error::io("reading data", e))?;
                    for (i, piece) in pieces[r].iter().enumerate() {
                        let at = piece.at - first.at;
                        let bytes = &mut span[at..at + piece.n as usize];
                        self.verify(Chunk(p.0 + i as u64), piece.within, bytes)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// `write_from` of a request over more than one chunk whose pieces all
    /// overwrite their chunks in place or fill unmapped chunks whole (a
    /// run of fresh chunks, mapped once written). False: not so, or no
    /// such run or metadata room, or the log cannot name the overwrites
    /// now (nothing was written; write piece by piece).
    pub(super) fn write_pieces(&self, vol: u64, offset: u64, data: &[u8]) -> Result<bool> {
        let cs = self.chunk_size;
        let pieces = self.split(offset, data.len());
        let locks = self.lock_set(vol, &pieces);
        let held: Vec<_> = locks.iter().map(|l| l.write()).collect();
        let mut maps: Vec<Mapping> = Vec::with_capacity(pieces.len());
        let mut fresh = Vec::new();
        for (k, p) in pieces.iter().enumerate() {
            match self.lookup(vol, p.vchunk)? {
                // RAID5 with checksums: part of a chunk goes piece by
                // piece, which reads its old blocks verified for the
                // parity (`write_in_place`).
                Some(m)
                    if m.exclusive
                        && (m.new || self.array.overwrite_in_place(p.n, cs))
                        && (self.csums.is_none() || p.aligned())
                        && (p.n == cs.bytes() || !self.parity_from_old()) =>
                {
                    maps.push(m)
                }
                // Not mapped, and written whole: a chunk of a run below.
                None if p.within == 0 && p.n == cs.bytes() => {
                    fresh.push(k);
                    maps.push(Mapping {
                        phys: Chunk(0),
                        exclusive: true,
                        new: true,
                    });
                }
                _ => return Ok(false),
            }
        }
        if !fresh.is_empty() {
            // Else piece by piece (which commits part way when it must).
            let Some(first) = self.alloc_run(fresh.len() as u64) else {
                return Ok(false);
            };
            for (i, &k) in fresh.iter().enumerate() {
                maps[k].phys = Chunk(first.0 + i as u64);
            }
        }
        let homes: Vec<Home> = maps
            .iter()
            .map(|m| match (m.new, self.journals(), self.csums.is_some()) {
                (false, true, _) => Home::Journaled,
                (false, false, true) => Home::Copied,
                _ => Home::Plain,
            })
            .collect();
        let crcs: Vec<Vec<u32>> = pieces
            .iter()
            .zip(&homes)
            .map(|(p, h)| match h {
                Home::Plain => Vec::new(),
                _ => data[p.bytes()].chunks(BLK as usize).map(crc).collect(),
            })
            .collect();
        let named = self.name_overwrites(&pieces, &maps, &homes, &crcs, data);
        let result = match named {
            Ok(true) => {
                // Data, checksums and mappings with no round between them.
                let _w = self.write_in_progress();
                let written = self.write_runs(&pieces, &maps, &homes, data, &crcs);
                let mut meta = self.meta.write();
                let mut mapped = 0;
                let result = written.and_then(|()| {
                    for &k in &fresh {
                        let to = Some(maps[k].phys);
                        self.set_mapping(&mut meta, vol, pieces[k].vchunk, to)?;
                        mapped += 1;
                    }
                    Ok(true)
                });
                for &k in &fresh[mapped.min(fresh.len())..] {
                    if result.is_err() {
                        meta.data_dec(maps[k].phys)?;
                    }
                }
                return result;
            }
            other => other,
        };
        // Nothing written: give the run back.
        let mut meta = self.meta.write();
        for &k in &fresh {
            meta.data_dec(maps[k].phys)?;
        }
        drop(held);
        result
    }

    /// Before pieces overwrite committed data in place: their intents in
    /// one round (pools without a second copy; `crcs` are their new
    /// checksums), or their regions marked in the intent block (with one).
    /// False: the log cannot name them now.
    fn name_overwrites(
        &self,
        pieces: &[Piece],
        maps: &[Mapping],
        homes: &[Home],
        crcs: &[Vec<u32>],
        data: &[u8],
    ) -> Result<bool> {
        let old = |k: usize| !maps[k].new;
        if !(0..maps.len()).any(old) {
            return Ok(true);
        }
        if homes.contains(&Home::Journaled) || self.intent.is_some() {
            self.check_meta_room(&self.meta.read(), SpaceUse::Ordinary)?;
        }
        if homes.contains(&Home::Journaled) {
            let mut entries = Vec::new();
            for (k, p) in pieces.iter().enumerate() {
                if homes[k] == Home::Journaled {
                    let heads = heads(&data[p.bytes()], 0);
                    let named = super::journal::intents(maps[k].phys, p.within, &crcs[k], &heads);
                    entries.extend(named);
                }
            }
            if !self.intend_all(entries)? {
                return Ok(false);
            }
            let named = homes.iter().filter(|&&h| h == Home::Journaled).count();
            self.log.named.fetch_add(named as u64, Ordering::Relaxed);
        } else if let Some(intent) = &self.intent {
            for k in (0..maps.len()).filter(|&k| old(k)) {
                intent.mark(&self.meta, maps[k].phys)?;
            }
        }
        Ok(true)
    }

    /// The pieces' data home, runs of chunks next to each other in one
    /// array I/O each, and their checksums recorded. Caller holds
    /// `write_in_progress`.
    fn write_runs(
        &self,
        pieces: &[Piece],
        maps: &[Mapping],
        homes: &[Home],
        data: &[u8],
        crcs: &[Vec<u32>],
    ) -> Result<()> {
        let cs = self.chunk_size;
        let phys: Vec<Option<Chunk>> = maps.iter().map(|m| Some(m.phys)).collect();
        for r in self.runs(pieces, &phys) {
            let (first, last) = (pieces[r.start], pieces[r.end - 1]);
            let span = &data[first.at..last.at + last.n as usize];
            let off = cs.at(maps[r.start].phys, first.within);
            // Not a data flush's business when every piece leaves a copy
            // or is marked written by `journal_written`.
            let written = match homes[r.clone()].iter().all(|&h| h != Home::Plain) {
                true => self
                    .array
                    .write_journaled(off, span)
                    .map_err(|e| Error::io("writing data", e)),
                false => self.write_chunks(off, span),
            };
            written?;
            for k in r {
                let (p, phys) = (pieces[k], maps[k].phys);
                match homes[k] {
                    Home::Plain => self.record(phys, p.within, &data[p.bytes()])?,
                    Home::Journaled | Home::Copied => {
                        self.journal_written(phys, p.within, &data[p.bytes()], &crcs[k])?
                    }
                }
            }
        }
        Ok(())
    }
}
