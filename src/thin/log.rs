//! The flush log: a client's flush makes its writes durable without
//! committing the pool (a redo log, like ZFS's intent log). A commit writes
//! every changed tree node, space-map page and superblock, on every copy,
//! with I/O paused; a flush needs only the data it covers and what maps it:
//!
//! 1. the mapping changes and data checksums made since the last record
//!    are taken (with no write half done: writes hold `writes` for read);
//! 2. the data members are flushed;
//! 3. one record per log block holding them is written on every metadata
//!    copy (see `thin::store::log`), and the copies are flushed.
//!
//! Concurrent flushes share rounds (group commit): a flush returns as soon
//! as a round that started after it was called has finished. Writes and
//! other volumes' I/O go on during a round; only commits wait for it.
//!
//! Journaled data (pools whose data has no second copy, with checksums):
//! a small write over data a commit or record already holds does not go
//! home at once. Its blocks ride in the next round, in the log blocks
//! after the record whose entries give their place and checksum, and go
//! home only once that round is durable (dm-integrity's journal mode).
//! So a block's home is never changed by a write nothing durable names,
//! and the replay writes every journaled block home again: a device that
//! lost, tore or misplaced a home write is corrected, and one that lied
//! about the journal is caught by its checksum on every copy. Without
//! this, a crash left the resync unable to tell an unflushed write in
//! place from a lie (see `resync`). The writer waits for its round (they
//! share rounds, as flushes do), so a client's flush after it has
//! nothing left to do: one sequential write and one flush of the
//! metadata copies per round, where a write in place needs the data
//! flush, the intent block and the record.
//!
//! After a crash, the records of the last commit are replayed onto it in
//! order (`replay_log`, before the write-intent resync) and committed. Each
//! record's data was durable before the record was written, so any prefix
//! of the records is a state the pool was in. The log is used only while
//! everything the running transaction changed went through it: anything
//! else (a metadata operation that failed half way, a layout change) makes
//! the next flush a full commit, as a full log does.

use super::ThinPool;
use crate::error::{Error, Result};
use crate::meta::codec::{get_u32, get_u64, put_u32, put_u64};
use crate::thin::csum::crc;
use crate::thin::store::csum::{csum_key_chunk, Group, CSUM_BLOCK, CSUM_GROUP};
use crate::thin::store::log::LOG_PAYLOAD;
use crate::units::Chunk;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// One change a record holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Entry {
    /// Chunk `vchunk` of volume `vol` now maps to the newly taken `phys`.
    Map {
        vol: u64,
        vchunk: u64,
        phys: Chunk,
    },
    Unmap {
        vol: u64,
        vchunk: u64,
    },
    /// The checksum group `key` now holds `group`.
    Csum {
        key: u64,
        group: Group,
    },
    /// Block `within` (4 KiB aligned) of chunk `phys` holds the next
    /// journaled data block after the record, whose checksum is `crc`.
    Data {
        phys: Chunk,
        within: u64,
        crc: u32,
    },
}

const MAP: u8 = 1;
const UNMAP: u8 = 2;
const CSUM: u8 = 3;
const DATA: u8 = 4;
const DATA_LEN: usize = 21;

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Map { .. } => 25,
            Entry::Unmap { .. } => 17,
            Entry::Csum { .. } => 9 + 4 * CSUM_GROUP,
            Entry::Data { .. } => DATA_LEN,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.resize(at + self.len(), 0);
        let b = &mut out[at..];
        match *self {
            Entry::Map { vol, vchunk, phys } => {
                b[0] = MAP;
                put_u64(b, 1, vol);
                put_u64(b, 9, vchunk);
                put_u64(b, 17, phys.index());
            }
            Entry::Unmap { vol, vchunk } => {
                b[0] = UNMAP;
                put_u64(b, 1, vol);
                put_u64(b, 9, vchunk);
            }
            Entry::Csum { key, group } => {
                b[0] = CSUM;
                put_u64(b, 1, key);
                for (i, c) in group.iter().enumerate() {
                    put_u32(b, 9 + 4 * i, *c);
                }
            }
            Entry::Data { phys, within, crc } => {
                b[0] = DATA;
                put_u64(b, 1, phys.index());
                put_u64(b, 9, within);
                put_u32(b, 17, crc);
            }
        }
    }
}

/// The entries of one record's payload.
pub(crate) fn decode(mut p: &[u8]) -> std::result::Result<Vec<Entry>, String> {
    let mut out = Vec::new();
    while let Some(&tag) = p.first() {
        let need = match tag {
            MAP => 25,
            UNMAP => 17,
            CSUM => 9 + 4 * CSUM_GROUP,
            DATA => DATA_LEN,
            t => return Err(format!("unknown entry type {t}")),
        };
        if p.len() < need {
            return Err("entry cut short".into());
        }
        out.push(match tag {
            MAP => Entry::Map {
                vol: get_u64(p, 1),
                vchunk: get_u64(p, 9),
                phys: Chunk(get_u64(p, 17)),
            },
            UNMAP => Entry::Unmap {
                vol: get_u64(p, 1),
                vchunk: get_u64(p, 9),
            },
            DATA => Entry::Data {
                phys: Chunk(get_u64(p, 1)),
                within: get_u64(p, 9),
                crc: get_u32(p, 17),
            },
            _ => {
                let mut group = [0u32; CSUM_GROUP];
                for (i, c) in group.iter_mut().enumerate() {
                    *c = get_u32(p, 9 + 4 * i);
                }
                Entry::Csum {
                    key: get_u64(p, 1),
                    group,
                }
            }
        });
        p = &p[need..];
    }
    Ok(out)
}

/// One record as written: its payload and the journaled data blocks that
/// follow it (one per `Data` entry, in order).
struct Unit<'a> {
    payload: Vec<u8>,
    data: Vec<&'a [u8]>,
}

/// Entries packed into record payloads of at most a log block each, then
/// the journaled blocks' `Data` entries, each record followed by the
/// blocks its entries name.
fn pack<'a>(entries: &[Entry], blocks: &[(Entry, &'a [u8])]) -> Vec<Unit<'a>> {
    let mut out: Vec<Unit<'a>> = Vec::new();
    let all = entries
        .iter()
        .map(|e| (*e, None))
        .chain(blocks.iter().map(|(e, d)| (*e, Some(*d))));
    for (e, d) in all {
        let fits = out
            .last()
            .is_some_and(|u| u.payload.len() + e.len() <= LOG_PAYLOAD);
        if !fits {
            out.push(Unit {
                payload: Vec::with_capacity(LOG_PAYLOAD),
                data: Vec::new(),
            });
        }
        if let Some(u) = out.last_mut() {
            e.encode(&mut u.payload);
            u.data.extend(d);
        }
    }
    out
}

/// A journaled write waiting for its round (see `ThinPool::write_journaled`).
pub(crate) struct Journaled {
    phys: Chunk,
    /// 4 KiB aligned, as is the data's length.
    within: u64,
    data: Vec<u8>,
    /// WAITING, then JOURNALED (durable in the log: may go home) or
    /// DROPPED (taken by a round that could not write it).
    state: AtomicU8,
}

/// Log blocks a writer leaves for the records of a round.
const JOURNAL_SLACK: u64 = 16;

const WAITING: u8 = 0;
const JOURNALED: u8 = 1;
const DROPPED: u8 = 2;

/// Where the next record goes.
#[derive(Default)]
struct Next {
    /// Its sequence number (0 means 1).
    seq: u64,
    /// Its log block.
    slot: u64,
}

/// The log's state in memory.
#[derive(Default)]
pub(crate) struct FlushLog {
    /// Mapping changes since the last record, in the order they were made.
    maps: Mutex<Vec<Entry>>,
    /// Serializes rounds; says where the next record goes.
    next: Mutex<Next>,
    /// Journaled writes waiting for a round.
    journal: Mutex<Vec<Arc<Journaled>>>,
    /// Log blocks not yet written in this transaction (a hint for writers:
    /// rounds update it, commits reset it).
    free: AtomicU64,
    /// Data blocks journaled since open.
    journaled: AtomicU64,
    /// Writes hold it for read while they change a chunk; a round takes it
    /// for write to take its entries with no write half done.
    writes: RwLock<()>,
    /// Rounds (and commits) started, and the last one finished.
    started: AtomicU64,
    done: AtomicU64,
    /// The running transaction holds a change no record describes.
    unlogged: AtomicBool,
    /// Bumped when the pool goes back to its last commit.
    epoch: AtomicU64,
    /// Flushes asked for, rounds written, flushes that committed instead.
    flushes: AtomicU64,
    rounds: AtomicU64,
    committed: AtomicU64,
}

impl FlushLog {
    /// The log has `n` blocks unused (at open).
    pub(crate) fn set_free(&self, n: u64) {
        self.free.store(n, Ordering::Release);
    }
}

/// How flushes were served since the pool was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub flushes: u64,
    /// Log rounds written (concurrent flushes share one).
    pub log_rounds: u64,
    /// Flushes that committed the pool instead (log full, or in use by
    /// a change it cannot describe, or no log).
    pub commits: u64,
    /// 4 KiB blocks of writes journaled through the log.
    pub journaled_blocks: u64,
}

/// What replaying the log did (at open).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    pub entries: u64,
    /// Why the replay stopped before the last record, if it did.
    pub stopped: Option<String>,
    /// Journaled blocks written home again.
    pub data_blocks: u64,
    /// Journaled blocks no copy of which matched its checksum (a round a
    /// crash cut short, or every copy lost): their blocks keep what they
    /// held before the record.
    pub data_missing: u64,
}

/// The gate held for write by something other than the data path: what it
/// changes without a commit is in no record, so the next flush commits.
pub struct Exclusive<'a> {
    pool: &'a ThinPool,
    _gate: RwLockWriteGuard<'a, ()>,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        if self.pool.meta.read().has_changes() {
            self.pool.log.unlogged.store(true, Ordering::Release);
        }
    }
}

impl ThinPool {
    /// Pause client I/O (metadata operations, layout steps, scrub).
    pub fn exclusive(&self) -> Exclusive<'_> {
        Exclusive {
            _gate: self.gate.write(),
            pool: self,
        }
    }

    /// Held by a write while it changes a chunk (see `FlushLog::writes`).
    pub(crate) fn write_in_progress(&self) -> parking_lot::RwLockReadGuard<'_, ()> {
        self.log.writes.read()
    }

    /// Note a mapping change for the next record (caller holds `meta`
    /// for write, so the order is the order of the changes).
    pub(crate) fn log_map(&self, vol: u64, vchunk: u64, phys: Option<Chunk>) {
        self.log.maps.lock().push(match phys {
            Some(phys) => Entry::Map { vol, vchunk, phys },
            None => Entry::Unmap { vol, vchunk },
        });
    }

    /// A commit starts; returns its round number for `log_committed`.
    pub(crate) fn log_commit_starts(&self) -> u64 {
        // Until the commit succeeds the memory holds what no record has.
        self.log.unlogged.store(true, Ordering::Release);
        self.log.started.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The commit of round `r` succeeded (caller holds the gate for
    /// write): the log starts again, and flushes called before it are done.
    pub(crate) fn log_committed(&self, r: u64) {
        self.log_restart();
        self.log.done.fetch_max(r, Ordering::AcqRel);
    }

    /// Nothing is queued for a record any more, and the next record is
    /// the first of the transaction (the memory now matches the commit).
    fn log_restart(&self) {
        self.log.maps.lock().clear();
        if let Some(c) = &self.csums {
            c.forget_unlogged();
        }
        *self.log.next.lock() = Next::default();
        let room = self.meta.read().log_blocks().len() as u64;
        self.log.free.store(room, Ordering::Release);
        self.log.unlogged.store(false, Ordering::Release);
    }

    /// The pool went back to its last commit (`pool clear`): what the log
    /// queued is gone with the rest of the running transaction, and a
    /// flush in progress must not succeed (its writes may be gone too).
    pub(crate) fn log_reset(&self) {
        self.log.epoch.fetch_add(1, Ordering::AcqRel);
        self.log_restart();
    }

    /// Make every write completed before this call durable: through the
    /// flush log when it can, else by a commit.
    pub fn flush(&self) -> Result<()> {
        self.log.flushes.fetch_add(1, Ordering::Relaxed);
        let epoch = self.log.epoch.load(Ordering::Acquire);
        let ticket = self.log.started.load(Ordering::Acquire);
        if !self.flush_round(ticket)? {
            self.log.committed.fetch_add(1, Ordering::Relaxed);
            self.commit()?;
        }
        if self.log.epoch.load(Ordering::Acquire) != epoch {
            return Err(Error::io(
                "flushing",
                std::io::Error::other(
                    "the pool went back to its last commit (`pool clear`) during this flush: writes before it may be lost",
                ),
            ));
        }
        Ok(())
    }

    pub fn flush_stats(&self) -> FlushStats {
        FlushStats {
            flushes: self.log.flushes.load(Ordering::Relaxed),
            log_rounds: self.log.rounds.load(Ordering::Relaxed),
            commits: self.log.committed.load(Ordering::Relaxed),
            journaled_blocks: self.log.journaled.load(Ordering::Relaxed),
        }
    }

    /// Run (or wait for) a round of the log that started after `ticket`.
    /// False: the log cannot take it (a commit must).
    fn flush_round(&self, ticket: u64) -> Result<bool> {
        let _io = self.gate.read();
        self.round(ticket)
    }

    /// `flush_round` for a caller that holds the gate for read.
    fn round(&self, ticket: u64) -> Result<bool> {
        let mut next = self.log.next.lock();
        if self.log.done.load(Ordering::Acquire) > ticket {
            return Ok(true);
        }
        if let Some(e) = self.array.health().broken_error() {
            return Err(Error::io("flushing", e));
        }
        if self.log.unlogged.load(Ordering::Acquire)
            || !self.meta.read().log_ready()
            || self.array.state().transition.is_some()
        {
            return Ok(false);
        }
        let r = self.log.started.fetch_add(1, Ordering::AcqRel) + 1;
        let (entries, journal) = {
            let _w = self.log.writes.write();
            let mut entries = std::mem::take(&mut *self.log.maps.lock());
            {
                let mut meta = self.meta.write();
                for e in &entries {
                    if let Entry::Map { phys, .. } = e {
                        meta.data.set_logged(*phys);
                    }
                }
            }
            if let Some(c) = &self.csums {
                entries.extend(
                    c.take_unlogged()
                        .into_iter()
                        .map(|(key, group)| Entry::Csum { key, group }),
                );
            }
            (entries, std::mem::take(&mut *self.log.journal.lock()))
        };
        let settle = |state: u8| {
            for j in &journal {
                j.state.store(state, Ordering::Release);
            }
        };
        let blocks: Vec<(Entry, &[u8])> = journal
            .iter()
            .flat_map(|j| {
                j.data
                    .chunks(CSUM_BLOCK as usize)
                    .enumerate()
                    .map(|(i, b)| {
                        let e = Entry::Data {
                            phys: j.phys,
                            within: j.within + i as u64 * CSUM_BLOCK,
                            crc: crc(b),
                        };
                        (e, b)
                    })
            })
            .collect();
        let units = pack(&entries, &blocks);
        let seq = next.seq.max(1);
        let room = self.meta.read().log_blocks().len() as u64;
        let need: u64 = units.iter().map(|u| 1 + u.data.len() as u64).sum();
        if next.slot + need > room {
            // Taken, not written: only a commit holds them now.
            self.log.unlogged.store(true, Ordering::Release);
            settle(DROPPED);
            return Ok(false);
        }
        let written = (|| {
            // Data written home since the last flush (journaled data is
            // durable in the log instead).
            self.array
                .flush_if_written()
                .map_err(|e| Error::io("flushing data", e))?;
            let meta = self.meta.read();
            let io = |e| Error::io("writing the flush log", e);
            let mut slot = next.slot;
            for (i, u) in units.iter().enumerate() {
                for (j, d) in u.data.iter().enumerate() {
                    meta.write_log_data(slot + 1 + j as u64, d).map_err(io)?;
                }
                let d = u.data.len() as u64;
                meta.write_log_record(seq + i as u64, slot, &u.payload, d)
                    .map_err(io)?;
                slot += 1 + d;
            }
            if !units.is_empty() {
                meta.flush_log().map_err(io)?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            self.log.unlogged.store(true, Ordering::Release);
            settle(DROPPED);
            return Err(e);
        }
        next.seq = seq + units.len() as u64;
        next.slot += need;
        self.log.free.store(room - next.slot, Ordering::Release);
        self.log
            .journaled
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        settle(JOURNALED);
        self.log.rounds.fetch_add(1, Ordering::Relaxed);
        self.log.done.fetch_max(r, Ordering::AcqRel);
        // A member that failed on the way is recorded by a commit, now:
        // the records written stay (the next round follows them).
        if self.array.health().has_unrecorded() {
            self.log.unlogged.store(true, Ordering::Release);
            return Ok(false);
        }
        Ok(true)
    }

    /// Should writes over committed data go through the journal? Pools
    /// with checksums whose data has no second copy now.
    pub(crate) fn journals(&self) -> bool {
        self.csums.is_some() && !self.array.health().redundant_now()
    }

    /// Can the log take `blocks` more journaled blocks (a hint: the round
    /// drops them if others took the room first)?
    pub(crate) fn journal_open(&self, blocks: u64) -> bool {
        !self.log.unlogged.load(Ordering::Acquire)
            && self.log.free.load(Ordering::Acquire) >= blocks + JOURNAL_SLACK
            && self.array.state().transition.is_none()
    }

    /// The log is out of use until a commit (full, or a change it cannot
    /// describe): the daemon's committer commits at its next tick.
    pub fn log_wants_commit(&self) -> bool {
        self.log.unlogged.load(Ordering::Acquire) && self.meta.read().log_ready()
    }

    /// Write `data` (whole 4 KiB blocks) at byte `within` of chunk `phys`
    /// through the journal: its checksums are recorded and the blocks
    /// queued under `w` (the caller's `write_in_progress`, released here),
    /// a round makes them durable in the log, and only then do they go
    /// home. A write the log could not take goes home as a write in place
    /// does (intent first), and the next flush commits. Caller holds the
    /// gate for read and the chunk's lock for write.
    pub(crate) fn write_journaled(
        &self,
        w: RwLockReadGuard<'_, ()>,
        phys: Chunk,
        within: u64,
        data: Vec<u8>,
    ) -> Result<()> {
        self.record(phys, within, &data)?;
        let job = Arc::new(Journaled {
            phys,
            within,
            data,
            state: AtomicU8::new(WAITING),
        });
        self.log.journal.lock().push(job.clone());
        drop(w);
        let ticket = self.log.started.load(Ordering::Acquire);
        let round = self.round(ticket);
        let at = self.chunk_size.at(phys, within);
        let home = |journaled: bool| {
            let r = match journaled {
                true => self.array.write_journaled(at, &job.data),
                false => self.array.write(at, &job.data),
            };
            r.map_err(|e| Error::io("writing data", e))
        };
        if job.state.load(Ordering::Acquire) == JOURNALED {
            return home(true);
        }
        self.log.journal.lock().retain(|j| !Arc::ptr_eq(j, &job));
        if let Some(intent) = &self.intent {
            intent.mark(&self.meta, phys)?;
        }
        home(false)?;
        round.map(|_| ())
    }

    /// Apply the log's records of the last commit and commit them (at
    /// open, before the write-intent resync; nothing else runs). Each
    /// record's journaled blocks are written home again from a copy that
    /// matches its checksum; a block no copy of which matches keeps what
    /// it held before the record (its round never finished, or every copy
    /// was lost) and is counted.
    pub fn replay_log(&self) -> Result<Replayed> {
        let records = self.meta.read().read_log();
        let mut out = Replayed::default();
        if records.is_empty() {
            return Ok(out);
        }
        let _gate = self.gate.write();
        'records: for (i, rec) in records.iter().enumerate() {
            let entries = match decode(&rec.payload) {
                Ok(e) => e,
                Err(why) => {
                    out.stopped = Some(format!("record {} is damaged: {why}", i + 1));
                    break;
                }
            };
            let data: Vec<(Chunk, u64, u32)> = entries
                .iter()
                .filter_map(|e| match *e {
                    Entry::Data { phys, within, crc } => Some((phys, within, crc)),
                    _ => None,
                })
                .collect();
            if data.len() as u64 != rec.data {
                out.stopped = Some(format!(
                    "record {} names {} journaled blocks where its header says {}",
                    i + 1,
                    data.len(),
                    rec.data
                ));
                break;
            }
            let (home, keep) = match self.journaled_blocks(rec.slot, &data) {
                Ok(x) => x,
                Err(why) => {
                    out.stopped = Some(format!("record {} does not fit ({why})", i + 1));
                    break;
                }
            };
            for e in entries {
                if let Err(why) = self.apply(e) {
                    out.stopped = Some(format!(
                        "record {} does not fit the last commit ({why})",
                        i + 1
                    ));
                    break 'records;
                }
                out.entries += 1;
            }
            let io = |e| Error::io("replaying the flush log", e);
            for (phys, within, bytes) in &home {
                self.array
                    .write(self.chunk_size.at(*phys, *within), bytes)
                    .map_err(io)?;
            }
            for (phys, within, before) in &keep {
                self.set_block_csum(*phys, *within, *before)?;
            }
            out.data_blocks += home.len() as u64;
            out.data_missing += keep.len() as u64;
            out.records += 1;
        }
        // Checksums of chunks no replayed mapping took.
        if let Some(c) = &self.csums {
            let meta = self.meta.read();
            c.retain(|k| meta.data.in_use(csum_key_chunk(k)));
        }
        self.commit_inner(false)?;
        Ok(out)
    }

    /// The journaled blocks of the record at `slot`: those to write home
    /// (a copy matches), and those whose home keeps what it held, with the
    /// checksum it had before the record (no copy matches, nor the home).
    #[allow(clippy::type_complexity)]
    fn journaled_blocks(
        &self,
        slot: u64,
        data: &[(Chunk, u64, u32)],
    ) -> std::result::Result<(Vec<(Chunk, u64, Vec<u8>)>, Vec<(Chunk, u64, u32)>), String> {
        let (mut home, mut keep) = (Vec::new(), Vec::new());
        let total = self.meta.read().data.total();
        for (j, &(phys, within, want)) in data.iter().enumerate() {
            if phys.index() >= total
                || within % CSUM_BLOCK != 0
                || within >= self.chunk_size.bytes()
            {
                return Err(format!(
                    "journaled block at {phys}+{within} is outside the pool"
                ));
            }
            let copies = self.meta.read().read_log_data(slot + 1 + j as u64);
            if let Some(good) = copies.into_iter().find(|b| crc(b) == want) {
                home.push((phys, within, good));
                continue;
            }
            let mut now = vec![0u8; CSUM_BLOCK as usize];
            let there = self
                .array
                .read(self.chunk_size.at(phys, within), &mut now)
                .is_ok_and(|()| crc(&now) == want);
            if !there {
                let before = self.block_csum(phys, within).map_err(|e| e.to_string())?;
                keep.push((phys, within, before.unwrap_or_else(|| crc(&now))));
            }
        }
        Ok((home, keep))
    }

    fn apply(&self, e: Entry) -> std::result::Result<(), String> {
        match e {
            Entry::Map { vol, vchunk, phys } => {
                let mut meta = self.meta.write();
                meta.volume_root(vol).map_err(|e| e.to_string())?;
                if !meta.data.claim(phys) {
                    return Err(format!("data chunk {phys} is not free"));
                }
                self.set_mapping(&mut meta, vol, vchunk, Some(phys))
                    .map_err(|e| e.to_string())
            }
            Entry::Unmap { vol, vchunk } => {
                let mut meta = self.meta.write();
                meta.volume_root(vol).map_err(|e| e.to_string())?;
                self.set_mapping(&mut meta, vol, vchunk, None)
                    .map_err(|e| e.to_string())
            }
            Entry::Csum { key, group } => match &self.csums {
                Some(c) => {
                    c.put(key, group);
                    Ok(())
                }
                None => Err("a checksum on a pool without checksums".into()),
            },
            // Written home by the caller, which checked them.
            Entry::Data { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_pack_into_blocks() {
        let mut entries = Vec::new();
        for i in 0..200u64 {
            entries.push(Entry::Map {
                vol: i,
                vchunk: i * 3,
                phys: Chunk(i * 7),
            });
            entries.push(Entry::Unmap { vol: i, vchunk: 9 });
            entries.push(Entry::Csum {
                key: i << 16,
                group: [i as u32; CSUM_GROUP],
            });
        }
        let block = vec![7u8; CSUM_BLOCK as usize];
        let blocks: Vec<(Entry, &[u8])> = (0..300u64)
            .map(|i| {
                let e = Entry::Data {
                    phys: Chunk(i),
                    within: i * CSUM_BLOCK,
                    crc: i as u32,
                };
                (e, block.as_slice())
            })
            .collect();
        let records = pack(&entries, &blocks);
        assert!(records.len() > 1);
        assert!(records.iter().all(|r| r.payload.len() <= LOG_PAYLOAD));
        let mut back = Vec::new();
        for r in &records {
            let got = decode(&r.payload).expect("decodes");
            let data = got
                .iter()
                .filter(|e| matches!(e, Entry::Data { .. }))
                .count();
            assert_eq!(data, r.data.len(), "each record is followed by its blocks");
            back.extend(got);
        }
        let mut want = entries.clone();
        want.extend(blocks.iter().map(|(e, _)| *e));
        assert_eq!(back, want);
        assert!(decode(&[9, 0, 0]).is_err());
        assert!(decode(&[MAP, 0, 0]).is_err());
    }
}
