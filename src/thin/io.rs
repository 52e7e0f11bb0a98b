//! The thin data path. Locking, from outside in:
//! - `gate` (read) for every I/O; metadata operations and commits take it for
//!   write, so they see no I/O half done;
//! - a per-(volume, chunk) lock, so a chunk's mapping changes under one writer
//!   (a request over several chunks takes all of its at once, in order: see
//!   `batch`);
//! - `meta` (RwLock) only around mapping look-ups and updates, never around
//!   data transfers. I/O to different chunks and volumes runs in parallel.

use super::csum::{crc, heads, Csums};
use super::intent::Intent;
use crate::error::{Error, Result};
use crate::meta::btree;

use crate::raid::{Array, RaidLevel};
use crate::sync::{ReadGuard, RwLock};
use crate::thin::store::space::SpaceUse;
use crate::thin::store::superblock::MEMBER_FAILED;
use crate::thin::store::VolumeRoot;
use crate::thin::store::{mapped_chunk, mapping_spec, mapping_value, MetaStore};
use crate::units::{Chunk, ChunkSize, Pieces};
use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const CHUNK_LOCKS: usize = 1024;
/// Commit on our own once this many metadata blocks are dirty (bounds memory).
pub const AUTO_COMMIT_NODES: usize = 8192;
/// Blocks mapping one chunk may copy: a path of the mapping tree, and
/// a split at every level.
pub(super) const MAP_BLOCKS: u64 = 12;

pub struct ThinPool {
    /// Shared with the metadata store (its extents live on the array).
    pub array: Arc<Array>,
    pub meta: RwLock<MetaStore>,
    pub gate: RwLock<()>,
    chunk_locks: Vec<RwLock<()>>,
    pub chunk_size: ChunkSize,
    /// Client reads and writes so far: background jobs yield when it moves.
    io_count: AtomicU64,
    /// Data checksums of the running transaction (checksummed pools).
    pub(crate) csums: Option<Csums>,
    /// Write intents (checksummed pools).
    pub(crate) intent: Option<Intent>,
    /// The flush log's state in memory (see `log`).
    pub(crate) log: super::log::FlushLog,
    /// Recent mapping look-ups (see `mapcache`).
    maps: super::mapcache::MapCache,
    /// Commits that succeeded since open (see `commit_unless_since`).
    commits: AtomicU64,
    /// Writes that ran short of metadata room and waited for a commit.
    room_waits: AtomicU64,
    /// Held by `commit` and `commit_unless_since` from before their
    /// flushes to the end: writers short of room wait here for the commit
    /// under way, then find it done.
    committing: parking_lot::Mutex<()>,
}

/// What the pieces of a write that `write_pieces` did not take are given
/// before their turns (see `prepare`).
#[derive(Default)]
pub(super) struct Prepared {
    /// The piece's intents are durable for this chunk, with these new
    /// checksums of its blocks.
    pub(super) named: Option<(Chunk, Vec<u32>)>,
    /// A chunk allocated for it, next to the other pieces' (taken when it
    /// is written afresh, else released).
    pub(super) fresh: Option<Chunk>,
}

/// A physical mapping: chunk number and whether it may be overwritten in place.
pub(super) use super::mapcache::Mapping;

impl ThinPool {
    pub fn new(array: Arc<Array>, mut meta: MetaStore, chunk_size: ChunkSize) -> ThinPool {
        meta.blocks.mirror.attach(array.health().clone());
        meta.blocks.attach_array(array.clone());
        let csums = meta.has_csums().then(Csums::new);
        let intent = meta.has_csums().then(|| {
            let recorded = match meta.read_intent() {
                Ok(r) => r,
                // Torn or damaged: every region may hold unrecorded writes,
                // but nothing says which blocks were being written, so
                // none is taken as new data (mirrors are still made equal).
                Err(e) => {
                    meta.recovery_notes.push(format!(
                        "the write-intent block is unreadable ({e}): every region is resynced"
                    ));
                    Some((0, vec![0xff; crate::thin::store::csum::INTENT_BYTES], false))
                }
            };
            Intent::new(
                meta.data.total(),
                meta.committed().chunk(),
                recorded
                    .as_ref()
                    .map(|(rc, b, current)| (*rc, b.as_slice(), *current)),
            )
        });
        // Only raid5 pools with checksums keep partial parities (a level
        // never changes; the replay judges them by the checksums).
        let raid5 = array.geometry().level == crate::raid::RaidLevel::Raid5;
        meta.set_log_ring(raid5 && meta.has_csums());
        let log = super::log::FlushLog::default();
        if meta.log_ready() {
            log.set_free(meta.log_record_room());
        }
        ThinPool {
            array,
            meta: RwLock::new(meta),
            gate: RwLock::new(()),
            chunk_locks: (0..CHUNK_LOCKS).map(|_| RwLock::new(())).collect(),
            chunk_size,
            io_count: AtomicU64::new(0),
            csums,
            intent,
            log,
            maps: Default::default(),
            commits: AtomicU64::new(0),
            room_waits: AtomicU64::new(0),
            committing: parking_lot::Mutex::new(()),
        }
    }

    pub(super) fn chunk_lock(&self, vol: u64, vchunk: u64) -> &RwLock<()> {
        let h = super::mapcache::chunk_hash(vol, vchunk);
        &self.chunk_locks[(h >> 20) as usize % CHUNK_LOCKS]
    }

    pub(super) fn lookup(&self, vol: u64, vchunk: u64) -> Result<Option<Mapping>> {
        let meta = self.meta.read();
        // Unchanged while `meta` is held (see `mapcache`).
        let writes = self.meta.writes();
        if let Some(found) = self.maps.get(vol, vchunk, writes) {
            return Ok(found);
        }
        let root = meta.volume_root(vol)?.root;
        let found =
            btree::lookup(&*meta, &mapping_spec(vol), root, vchunk)?.map(|(v, path_shared)| {
                let phys = mapped_chunk(&v);
                Mapping {
                    phys,
                    exclusive: !path_shared && meta.data.exclusive(phys),
                    new: meta.data.is_new(phys),
                }
            });
        self.maps.put(vol, vchunk, writes, found);
        Ok(found)
    }

    /// Pieces of `[offset, offset+len)` as (virtual chunk, offset in chunk, length).
    fn pieces(&self, offset: u64, len: u64) -> Pieces {
        self.chunk_size.pieces(offset, len)
    }

    /// Does `[offset, offset+len)` touch more than one chunk?
    fn several_chunks(&self, offset: u64, len: usize) -> bool {
        let cs = self.chunk_size;
        cs.split(offset).0 + 1 < cs.count(offset + len as u64)
    }

    /// Client reads and writes so far.
    pub fn io_count(&self) -> u64 {
        self.io_count.load(Ordering::Relaxed)
    }

    pub fn io_guard(&self) -> ReadGuard<'_, ()> {
        self.gate.read()
    }

    /// Read; unmapped ranges read as zeros. Caller holds `io_guard`.
    pub fn read(&self, vol: u64, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.io_count.fetch_add(1, Ordering::Relaxed);
        if self.several_chunks(offset, buf.len()) {
            return self.read_pieces(vol, offset, buf);
        }
        let mut done = 0usize;
        for (vchunk, within, n) in self.pieces(offset, buf.len() as u64) {
            let piece = &mut buf[done..done + n as usize];
            let _l = self.chunk_lock(vol, vchunk).read();
            match self.lookup(vol, vchunk)? {
                Some(m) => self.read_chunk(m.phys, within, piece)?,
                None => piece.fill(0),
            }
            done += n as usize;
        }
        Ok(())
    }

    /// Write. Caller holds `io_guard`.
    pub fn write(&self, vol: u64, offset: u64, data: &[u8]) -> Result<()> {
        self.write_from(vol, offset, data, &mut 0)
    }

    /// Write `data[*done..]` at `offset + *done`, advancing `done` chunk by
    /// chunk: a write that fails (out of space) can resume where it
    /// stopped after a commit. Caller holds `io_guard`.
    pub fn write_from(&self, vol: u64, offset: u64, data: &[u8], done: &mut usize) -> Result<()> {
        self.io_count.fetch_add(1, Ordering::Relaxed);
        self.array
            .check_writable()
            .map_err(|e| Error::io("writing data", e))?;
        let start = *done as u64;
        let (at, rest) = (offset + start, &data[*done..]);
        if self.several_chunks(at, rest.len()) && self.write_pieces(vol, at, rest)? {
            *done = data.len();
            return Ok(());
        }
        let pieces = self.pieces(at, rest.len() as u64);
        let mut prepared = match self.several_chunks(at, rest.len()) {
            true => self.prepare(vol, at, rest)?,
            false => Vec::new(),
        };
        let written = || -> Result<()> {
            for (i, (vchunk, within, n)) in pieces.enumerate() {
                let prep = prepared.get_mut(i);
                let piece = &data[*done..*done + n as usize];
                self.write_piece(vol, vchunk, within, piece, prep)?;
                *done += n as usize;
            }
            Ok(())
        };
        let result = written();
        self.release_unused(&prepared)?;
        result
    }

    /// Write one piece of a chunk, with what `prepare` gave it (it takes
    /// the chunk allocated for it if it uses it).
    fn write_piece(
        &self,
        vol: u64,
        vchunk: u64,
        within: u64,
        data: &[u8],
        prep: Option<&mut Prepared>,
    ) -> Result<()> {
        let (named_ahead, fresh) = match prep {
            Some(p) => (p.named.take(), &mut p.fresh),
            None => (None, &mut None),
        };
        let cs = self.chunk_size;
        let _l = self.chunk_lock(vol, vchunk).write();
        let mut _w = self.write_in_progress();
        let old = self.lookup(vol, vchunk)?;
        let mut in_place_if_full = None;
        if let Some(m) = &old {
            // RAID5 never rewrites part of a stripe that committed data
            // lives in (the write hole): such a chunk is written afresh
            // elsewhere, whole, and the old one freed at the commit.
            if m.exclusive && (m.new || self.array.overwrite_in_place(data.len() as u64, cs)) {
                if !m.new && self.journals() {
                    // Without a second copy, data a commit or record holds
                    // is changed in place only once the log names the new
                    // blocks (see `log`): small writes so, larger ones (or
                    // any while the log cannot take them) written afresh.
                    let a0 = within / BLK * BLK;
                    self.check_meta_room(&self.meta.read(), SpaceUse::Ordinary)?;
                    let buf = self.widen(m.phys, within, data)?;
                    // A round takes `writes` for write; the chunk lock
                    // keeps the mapping and the blocks meanwhile.
                    drop(_w);
                    let (crcs, named) = match named_ahead {
                        // The same blocks of the same chunk, whole: their
                        // intents are durable already.
                        Some((phys, crcs)) if phys == m.phys && matches!(buf, Cow::Borrowed(_)) => {
                            self.log.named.fetch_add(1, Ordering::Relaxed);
                            (crcs, true)
                        }
                        _ => {
                            let crcs: Vec<u32> = buf.chunks(BLK as usize).map(crc).collect();
                            let heads = heads(&buf, (within - a0) as usize);
                            let named = self.intend(m.phys, a0, &crcs, &heads)?;
                            (crcs, named)
                        }
                    };
                    _w = self.write_in_progress();
                    if named {
                        return self.write_journaled(m.phys, a0, &buf, &crcs);
                    }
                    in_place_if_full = Some(m.phys);
                } else {
                    if let (false, Some(intent)) = (m.new, &self.intent) {
                        // Its new checksums copy a checksum leaf at the commit.
                        self.check_meta_room(&self.meta.read(), SpaceUse::Ordinary)?;
                        intent.mark(&self.meta, m.phys)?;
                    }
                    if !m.new && self.csums.is_some() {
                        return self.write_copied(m.phys, within, data);
                    }
                    return self.write_in_place(m.phys, within, data);
                }
            }
            if m.exclusive && !m.new && self.may_log_parity(m.phys, within, data.len() as u64) {
                // Part of one unit of a committed row: in place once the
                // log holds the row's partial parity (`thin::ppl`).
                self.check_meta_room(&self.meta.read(), SpaceUse::Ordinary)?;
                let buf = self.widen(m.phys, within, data)?;
                drop(_w);
                if self.write_parity_logged(m.phys, within, &buf)? {
                    return Ok(());
                }
                _w = self.write_in_progress();
            }
        }
        // Allocate a fresh chunk and write it whole: a full stripe on RAID5.
        let newc = {
            let mut meta = self.meta.write();
            self.check_meta_room(&meta, SpaceUse::Ordinary)?;
            let alloc = match fresh.take() {
                Some(c) => Ok(c),
                None => meta.data_alloc(),
            };
            match (alloc, in_place_if_full) {
                (Ok(c), _) => c,
                // A full pool still takes overwrites: in place, with the
                // write-intent block.
                (Err(_), Some(phys)) => {
                    drop(meta);
                    return self.write_unjournaled(phys, within, data);
                }
                (Err(e), None) => return Err(e),
            }
        };
        let result = (|| {
            let mut full;
            let whole = data.len() as u64 == cs.bytes();
            let buf: &[u8] = if whole {
                data
            } else {
                full = vec![0u8; cs.bytes() as usize];
                if let Some(m) = &old {
                    self.read_verified(m.phys, 0, &mut full)?;
                }
                full[within as usize..within as usize + data.len()].copy_from_slice(data);
                &full
            };
            self.write_chunks(cs.at(newc, 0), buf)?;
            if whole {
                self.record(newc, 0, buf)
            } else {
                let from = old.as_ref().map(|m| m.phys);
                self.record_cow(newc, from, buf, within, data.len() as u64)
            }
        })();
        let mut meta = self.meta.write();
        if let Err(e) = result {
            meta.data_dec(newc)?;
            return Err(e);
        }
        self.set_mapping(&mut meta, vol, vchunk, Some(newc))
    }

    /// Checksum groups written in the running transaction.
    pub(crate) fn csum_groups(&self) -> u64 {
        self.csums.as_ref().map_or(0, |c| c.pending_groups())
    }

    /// Refuse a write or discard that would eat into the metadata reserve
    /// (a commit then makes room, if anything was released).
    pub(super) fn check_meta_room(&self, meta: &MetaStore, what: SpaceUse) -> Result<()> {
        meta.check_room(what, MAP_BLOCKS, self.csum_groups())
    }

    /// Point `vchunk` of `vol` at `phys` (or unmap it), releasing the old chunk.
    pub(super) fn set_mapping(
        &self,
        meta: &mut MetaStore,
        vol: u64,
        vchunk: u64,
        phys: Option<Chunk>,
    ) -> Result<()> {
        let spec = mapping_spec(vol);
        let mut vr = meta.volume_root(vol)?;
        let (root, old) = match phys {
            Some(p) => btree::insert(meta, &spec, vr.root, vchunk, &mapping_value(p))?,
            None => btree::remove(meta, &spec, vr.root, vchunk)?,
        };
        match (&old, phys) {
            (None, Some(_)) => vr.mapped += 1,
            (Some(_), None) => vr.mapped = vr.mapped.saturating_sub(1),
            _ => {}
        }
        if let Some(o) = old {
            meta.data_dec(mapped_chunk(&o))?;
        }
        vr.root = root;
        meta.set_volume_root(vol, vr)?;
        self.log_map(vol, vchunk, phys);
        Ok(())
    }

    /// Make `[offset, offset+len)` read as zeros, releasing whole chunks.
    /// Caller holds `io_guard`.
    pub fn discard(&self, vol: u64, offset: u64, len: u64) -> Result<()> {
        let cs = self.chunk_size;
        // Only the first and last pieces can be partial chunks.
        let end = offset + len;
        let mut partial = Vec::new();
        let (head, head_at) = cs.split(offset);
        let head_n = (cs.bytes() - head_at).min(len);
        if head_n != cs.bytes() && len > 0 {
            partial.push((head, head_at, head_n));
        }
        let (tail, tail_n) = cs.split(end);
        if tail_n != 0 && tail != head {
            partial.push((tail, 0, tail_n));
        }
        for (vchunk, within, n) in partial {
            if self.lookup(vol, vchunk)?.is_some() {
                self.write_piece(vol, vchunk, within, &vec![0u8; n as usize], None)?;
            }
        }
        let first = cs.count(offset);
        let last = cs.whole(end);
        if first < last {
            self.unmap_range(vol, first, last)?;
        }
        Ok(())
    }

    /// Unmap whole chunks `[first, last)`. Cost grows with what is mapped.
    pub fn unmap_range(&self, vol: u64, first: u64, last: u64) -> Result<()> {
        let keys = self.mapped_chunks(vol, first, last)?;
        for k in keys {
            let _l = self.chunk_lock(vol, k).write();
            let mut meta = self.meta.write();
            self.check_meta_room(&meta, SpaceUse::Discard)?;
            self.set_mapping(&mut meta, vol, k, None)?;
        }
        Ok(())
    }

    /// Mapped virtual chunks of `vol` in `[first, last)`.
    pub fn mapped_chunks(&self, vol: u64, first: u64, last: u64) -> Result<Vec<u64>> {
        let meta = self.meta.read();
        let root = meta.volume_root(vol)?.root;
        let mut keys = Vec::new();
        btree::walk(
            &*meta,
            &mapping_spec(vol),
            root,
            first,
            last,
            &mut |k, _, _| {
                keys.push(k);
                Ok(true)
            },
        )?;
        Ok(keys)
    }

    /// Flush data, then commit metadata: everything written before is durable.
    pub fn commit(&self) -> Result<()> {
        let _one = self.committing.lock();
        self.pre_flush()?;
        let _g = self.gate.write();
        self.commit_locked()
    }

    /// Write the members' dirty pages back before a commit takes the gate,
    /// which every write waits for: the commit's own flush under it then
    /// has only what came in since. Without it, a commit after a large
    /// buffered write held every volume for the whole write-back (0.6 s
    /// after 512 MiB on the VM's disk). Again while a flush took long
    /// (writes went on meanwhile). A failure is final as anywhere
    /// (`Array::flush`: the member fails, or the pool with the error).
    fn pre_flush(&self) -> Result<()> {
        for _ in 0..PRE_FLUSHES {
            let t = std::time::Instant::now();
            self.array
                .flush()
                .map_err(|e| Error::io("flushing data", e))?;
            if t.elapsed() < PRE_FLUSH_SHORT {
                break;
            }
        }
        Ok(())
    }

    /// Commits that succeeded since open: a stamp for `commit_unless_since`.
    pub fn commit_count(&self) -> u64 {
        self.commits.load(Ordering::Acquire)
    }

    /// Times a write ran short of metadata room and waited for a commit
    /// (`commit_unless_since`) since open.
    pub fn room_waits(&self) -> u64 {
        self.room_waits.load(Ordering::Relaxed)
    }

    /// Commit, unless one succeeded since the stamp `seen` (a
    /// `commit_count` taken before the caller ran short of room) or nothing
    /// is left to commit. Writers that run out of metadata room together
    /// then wait for one commit and go on, instead of each committing in
    /// turn while every volume waits at the gate.
    pub fn commit_unless_since(&self, seen: u64) -> Result<()> {
        self.room_waits.fetch_add(1, Ordering::Relaxed);
        let _one = self.committing.lock();
        if self.commit_count() != seen || !self.has_changes() {
            return Ok(());
        }
        self.pre_flush()?;
        let _g = self.gate.write();
        if self.commit_count() != seen || !self.has_changes() {
            return Ok(());
        }
        self.commit_locked()
    }

    /// Commit when the caller already holds the gate for write.
    pub fn commit_locked(&self) -> Result<()> {
        self.commit_inner(false)
    }

    /// Commit and clear every write intent: nothing is left to resync.
    /// The daemon's last commit before it exits.
    pub fn close(&self) -> Result<()> {
        let _g = self.gate.write();
        self.commit_inner(true)
    }

    /// Anything for a commit to record (metadata, checksums, intents)?
    pub fn has_changes(&self) -> bool {
        self.meta.read().has_changes() || self.csums.as_ref().is_some_and(|c| c.has_pending())
    }

    pub(crate) fn commit_inner(&self, close: bool) -> Result<()> {
        let round = self.log_commit_starts();
        if self.log_written() {
            self.meta.write().log_used();
        }
        self.array
            .flush()
            .map_err(|e| Error::io("flushing data", e))?;
        self.fold_csums()?;
        let mut released = Vec::new();
        {
            // Pools made (or last committed) by an older version get their
            // flush log here; without room they commit at every flush. A
            // log older versions made small is replaced by a larger one.
            // Neither is used before this commit names it (`log_ready`).
            let mut meta = self.meta.write();
            if meta.log_dir().is_none() {
                let _ = meta.create_log();
            } else {
                let _ = meta.regrow_log();
            }
        }
        // A member that fails during a commit misses it: commit again at
        // once, so the superblock says so before anything else happens.
        loop {
            let mut meta = self.meta.write();
            self.array.health().take_unrecorded();
            for m in self.array.absorb_failures() {
                meta.set_member_state(m, MEMBER_FAILED);
            }
            if meta.blocks.mirror.shadow_lost() {
                // Its metadata copy failed: its data goes with it.
                self.array.lose_replacing();
            }
            if meta.replacing() && !self.array.replacing_serves() {
                // The device replaced in service failed (or its rebuild
                // ended): it must not serve again after a restart.
                meta.set_replacing(false);
            }
            meta.commit()?;
            released.extend(meta.data.take_released());
            if !self.array.health().has_unrecorded() {
                break;
            }
        }
        self.log_committed(round);
        self.commits.fetch_add(1, Ordering::AcqRel);
        if let Some(intent) = &self.intent {
            intent.committed(&self.meta.read(), close)?;
        }
        // No committed state refers to these chunks any more: let the members
        // reclaim the space (image files get sparse again). Best effort.
        let cs = self.chunk_size;
        let mut i = 0;
        while i < released.len() {
            let mut j = i + 1;
            while j < released.len() && released[j] == released[j - 1].next() {
                j += 1;
            }
            let _ = self
                .array
                .discard(cs.at(released[i], 0), cs.span((j - i) as u64));
            i = j;
        }
        Ok(())
    }

    /// Commit if the running transaction holds a lot of dirty metadata.
    pub fn maybe_commit(&self) -> Result<()> {
        if self.meta.read().dirty_nodes() > AUTO_COMMIT_NODES {
            self.commit()?;
        }
        Ok(())
    }

    pub fn volume_root(&self, vol: u64) -> Result<VolumeRoot> {
        self.meta.read().volume_root(vol)
    }
}

const BLK: u64 = crate::thin::store::csum::CSUM_BLOCK;

/// A commit's flushes before it takes the gate: again while the last one
/// took `PRE_FLUSH_SHORT` or longer (writes went on meanwhile, and left
/// more to write back), at most this many.
const PRE_FLUSHES: usize = 3;
const PRE_FLUSH_SHORT: std::time::Duration = std::time::Duration::from_millis(20);

impl ThinPool {
    /// Read bytes `[within, within + len)` of chunk `phys`, verified against
    /// their checksums (whole 4 KiB blocks are read to check them).
    pub(crate) fn read_chunk(&self, phys: Chunk, within: u64, piece: &mut [u8]) -> Result<()> {
        let len = piece.len() as u64;
        let (a0, a1) = (within / BLK * BLK, (within + len).div_ceil(BLK) * BLK);
        if self.csums.is_none() || (a0 == within && a1 == within + len) {
            return self.read_verified(phys, within, piece);
        }
        let mut tmp = vec![0u8; (a1 - a0) as usize];
        self.read_verified(phys, a0, &mut tmp)?;
        let at = (within - a0) as usize;
        piece.copy_from_slice(&tmp[at..at + piece.len()]);
        Ok(())
    }

    /// Does an overwrite of part of a chunk compute parity from the old
    /// bytes (RAID5), which must then be read verified (a member's lost
    /// write leaves stale ones)? Only pools with checksums can tell.
    pub(super) fn parity_from_old(&self) -> bool {
        self.csums.is_some() && self.array.geometry().level == RaidLevel::Raid5
    }

    /// Write `buf` home at pool byte `off`, with nothing logged: chunks
    /// just allocated, or written whole, or (on pools that do not compute
    /// parity from old bytes) a batch's plain pieces. On RAID5 with
    /// checksums these are whole chunks, and a row they fill only part of
    /// (a pool grown by `pool add`) takes its parity from the row's other
    /// units, judged by their checksums (`Array::write_vouched`), not from
    /// the old bytes under the chunks: free space has no checksum, so a
    /// member's lost write there would go unseen into the parity.
    pub(super) fn write_chunks(&self, off: u64, buf: &[u8]) -> Result<()> {
        let written = match self.parity_from_old() {
            true => self
                .array
                .write_vouched(off, buf, &|at, b| self.vouches(at, b)),
            false => self.array.write(off, buf),
        };
        written.map_err(|e| Error::io("writing data", e))
    }

    /// May a RAID5 reconstruct-write take `b` as the 4 KiB block at pool
    /// byte `at`? Yes when it matches the block's checksum, or when
    /// nothing says what the block holds (free space, no checksum, the
    /// checksum unreadable).
    fn vouches(&self, at: u64, b: &[u8]) -> bool {
        let c = self.chunk_size.chunk_at(at);
        if !self.meta.read().data.in_use(c) {
            return true;
        }
        let within = at - self.chunk_size.at(c, 0);
        !matches!(self.block_csum(c, within), Ok(Some(want)) if crc(b) != want)
    }

    /// Overwrite part of a chunk where it is, keeping its checksums: a
    /// write that does not cover whole 4 KiB blocks is widened with the
    /// blocks' current (verified) contents.
    fn write_in_place(&self, phys: Chunk, within: u64, data: &[u8]) -> Result<()> {
        let cs = self.chunk_size;
        let write = |at: u64, buf: &[u8]| {
            self.array
                .write(cs.at(phys, at), buf)
                .map_err(|e| Error::io("writing data", e))
        };
        if self.csums.is_none() {
            return write(within, data);
        }
        let a0 = within / BLK * BLK;
        if !self.parity_from_old() {
            let buf = self.widen(phys, within, data)?;
            write(a0, &buf)?;
            return self.record(phys, a0, &buf);
        }
        // RAID5: the new parity comes from the blocks' old bytes, so they
        // are read verified (a stale copy on the data member, left by a
        // write it lost, is rebuilt from the parity) and handed down.
        let a1 = (within + data.len() as u64).div_ceil(BLK) * BLK;
        let mut old = vec![0u8; (a1 - a0) as usize];
        let whole = a0 == within && a1 == within + data.len() as u64;
        match self.read_verified(phys, a0, &mut old) {
            Ok(()) => {}
            // Whole blocks none of whose copies is good: written as before
            // (the parity knows their bytes no better than the member).
            Err(_) if whole => {
                write(a0, data)?;
                return self.record(phys, a0, data);
            }
            Err(e) => return Err(e),
        }
        // Whole blocks are the new bytes as they are; else widened.
        let buf: Cow<[u8]> = match whole {
            true => Cow::Borrowed(data),
            false => {
                let mut b = old.clone();
                let at = (within - a0) as usize;
                b[at..at + data.len()].copy_from_slice(data);
                Cow::Owned(b)
            }
        };
        self.array
            .write_over(cs.at(phys, a0), &buf, &old)
            .map_err(|e| Error::io("writing data", e))?;
        self.record(phys, a0, &buf)
    }

    /// A write in place of committed data on a pool with checksums and a
    /// second copy, once its region is marked: home, and (a small one) a
    /// copy for the next round, so that round need not flush the data
    /// members (see `thin::log`). No intents: the mark and the other copy
    /// cover a write torn by a crash.
    fn write_copied(&self, phys: Chunk, within: u64, data: &[u8]) -> Result<()> {
        let a0 = within / BLK * BLK;
        let buf = self.widen(phys, within, data)?;
        let crcs: Vec<u32> = buf.chunks(BLK as usize).map(crc).collect();
        self.write_journaled(phys, a0, &buf, &crcs)
    }

    /// A write in place on a journaling pool that the log does not name
    /// (the pool is full): the intent block first, as on other pools.
    fn write_unjournaled(&self, phys: Chunk, within: u64, data: &[u8]) -> Result<()> {
        self.journal_forget(phys, within, data.len() as u64);
        if let Some(intent) = &self.intent {
            intent.mark(&self.meta, phys)?;
        }
        self.write_in_place(phys, within, data)
    }

    /// `data` for byte `within` of chunk `phys`, widened to whole 4 KiB
    /// blocks with their current (verified) contents.
    fn widen<'a>(&self, phys: Chunk, within: u64, data: &'a [u8]) -> Result<Cow<'a, [u8]>> {
        let len = data.len() as u64;
        let (a0, a1) = (within / BLK * BLK, (within + len).div_ceil(BLK) * BLK);
        if a0 == within && a1 == within + len {
            return Ok(Cow::Borrowed(data));
        }
        let mut tmp = vec![0u8; (a1 - a0) as usize];
        self.read_verified(phys, a0, &mut tmp)?;
        let at = (within - a0) as usize;
        tmp[at..at + data.len()].copy_from_slice(data);
        Ok(Cow::Owned(tmp))
    }
}
