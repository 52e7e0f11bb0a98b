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
use crate::thin::store::csum::{csum_key_chunk, Group, CSUM_GROUP};
use crate::thin::store::log::LOG_PAYLOAD;
use crate::units::Chunk;
use parking_lot::{Mutex, RwLock, RwLockWriteGuard};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
}

const MAP: u8 = 1;
const UNMAP: u8 = 2;
const CSUM: u8 = 3;

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Map { .. } => 25,
            Entry::Unmap { .. } => 17,
            Entry::Csum { .. } => 9 + 4 * CSUM_GROUP,
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

/// Entries packed into record payloads of at most a log block each.
fn pack(entries: &[Entry]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for e in entries {
        match out.last_mut() {
            Some(p) if p.len() + e.len() <= LOG_PAYLOAD => e.encode(p),
            _ => {
                let mut p = Vec::with_capacity(LOG_PAYLOAD);
                e.encode(&mut p);
                out.push(p);
            }
        }
    }
    out
}

/// The log's state in memory.
#[derive(Default)]
pub(crate) struct FlushLog {
    /// Mapping changes since the last record, in the order they were made.
    maps: Mutex<Vec<Entry>>,
    /// Serializes rounds; holds the next record's sequence number (from 1).
    next_seq: Mutex<u64>,
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

/// How flushes were served since the pool was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub flushes: u64,
    /// Log rounds written (concurrent flushes share one).
    pub log_rounds: u64,
    /// Flushes that committed the pool instead (log full, or in use by
    /// a change it cannot describe, or no log).
    pub commits: u64,
}

/// What replaying the log did (at open).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    pub records: u64,
    pub entries: u64,
    /// Why the replay stopped before the last record, if it did.
    pub stopped: Option<String>,
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
        *self.log.next_seq.lock() = 1;
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
        }
    }

    /// Run (or wait for) a round of the log that started after `ticket`.
    /// False: the log cannot take it (a commit must).
    fn flush_round(&self, ticket: u64) -> Result<bool> {
        let _io = self.gate.read();
        let mut next = self.log.next_seq.lock();
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
        let records = {
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
            pack(&entries)
        };
        let seq = (*next).max(1);
        let room = self.meta.read().log_blocks().len() as u64;
        if seq - 1 + records.len() as u64 > room {
            // Taken, not written: only a commit holds them now.
            self.log.unlogged.store(true, Ordering::Release);
            return Ok(false);
        }
        let written = (|| {
            self.array
                .flush()
                .map_err(|e| Error::io("flushing data", e))?;
            let meta = self.meta.read();
            let io = |e| Error::io("writing the flush log", e);
            for (i, p) in records.iter().enumerate() {
                meta.write_log_record(seq + i as u64, p).map_err(io)?;
            }
            if !records.is_empty() {
                meta.flush_log().map_err(io)?;
            }
            Ok(())
        })();
        if let Err(e) = written {
            self.log.unlogged.store(true, Ordering::Release);
            return Err(e);
        }
        // A member that failed on the way is recorded by a commit, now.
        if self.array.health().has_unrecorded() {
            return Ok(false);
        }
        *next = seq + records.len() as u64;
        self.log.rounds.fetch_add(1, Ordering::Relaxed);
        self.log.done.fetch_max(r, Ordering::AcqRel);
        Ok(true)
    }

    /// Apply the log's records of the last commit and commit them (at
    /// open, before the write-intent resync; nothing else runs).
    pub fn replay_log(&self) -> Result<Replayed> {
        let records = self.meta.read().read_log();
        let mut out = Replayed::default();
        if records.is_empty() {
            return Ok(out);
        }
        let _gate = self.gate.write();
        'records: for (i, p) in records.iter().enumerate() {
            let entries = match decode(p) {
                Ok(e) => e,
                Err(why) => {
                    out.stopped = Some(format!("record {} is damaged: {why}", i + 1));
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
        let records = pack(&entries);
        assert!(records.len() > 1);
        assert!(records.iter().all(|r| r.len() <= LOG_PAYLOAD));
        let back: Vec<Entry> = records
            .iter()
            .flat_map(|r| decode(r).expect("decodes"))
            .collect();
        assert_eq!(back, entries);
        assert!(decode(&[9, 0, 0]).is_err());
        assert!(decode(&[MAP, 0, 0]).is_err());
    }
}
