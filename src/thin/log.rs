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
//! Writes in place on pools whose data has no second copy (with
//! checksums): the crash resync cannot tell an unflushed write in place
//! from a device that lost, tore or misplaced one (the region write-intent
//! block only says "something in this region"), so such a pool changes
//! data a commit or record holds in place only once the log names the
//! write: a small write queues one `Intent` entry per 4 KiB block (place
//! and new checksum) and waits for a round that holds them (`intend`;
//! writers share rounds, and these rounds write nothing else: they
//! rewrite the record of intents before them as a pair, see
//! `write_intents`), then goes home. A later checksum entry that gives
//! the block one of those writes settles it (that write was flushed); at
//! replay a block with unsettled intents had a write in flight and keeps
//! what it holds (torn or not), while a settled block that lost its write
//! reads as an error (see `replay`). Larger writes, and any while the log
//! cannot take intents, are written afresh (as on RAID5).
//!
//! Journaled data: a copy of each such block also waits in memory for the
//! next flush's round, which writes it in the log blocks after the record
//! whose `Data` entries give its place and checksum (at most half the
//! log's free room; the rest is flushed on the members as usual). Pools
//! with a second copy (and checksums) copy small writes in place of
//! committed data the same way, after their region's mark and without
//! intents (`write_copied`). A round after writes that all left copies
//! skips step 2: the log's one write and flush make them durable (one
//! round of member flushes per client flush instead of two). The replay
//! writes each block's last copy home again, unless a later checksum
//! says a write without a copy came after it, so a lost or torn home
//! write the client flushed is repaired rather than reported.
//!
//! After a crash, the records of the last commit are replayed onto it in
//! order (`replay_log`, before the write-intent resync) and committed. Each
//! record's data was durable before the record was written, so any prefix
//! of the records is a state the pool was in. The log is used only while
//! everything the running transaction changed went through it: anything
//! else (a metadata operation that failed half way, a layout change) makes
//! the next flush a full commit, as a full log does.

use super::log_entry::{pack, Entry, Unit};
use super::store::log::LogWrite;
use super::ThinPool;
use crate::error::{Error, Result};
use crate::sync::{ReadGuard, RwLock, WriteGuard};
use crate::thin::csum::crc;
use crate::units::Chunk;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Copies of the blocks written in place since the last round, waiting
/// for it (see the module's notes): by (data chunk, byte within it), the
/// last write wins.
pub(super) type Journal = BTreeMap<(u64, u64), Box<[u8]>>;

/// Intents named ahead of their writes: by (chunk, byte within it, new
/// CRC32), how many writes named it and the latest ticket of theirs (see
/// `FlushLog::ahead`). One entry, not a list per block: no allocation per
/// write named.
pub(super) type Ahead = HashMap<(u64, u64, u32), (u32, u64)>;

/// Where the next record goes.
#[derive(Default)]
pub(super) struct Next {
    /// Its sequence number (0 means 1).
    pub(super) seq: u64,
    /// Its log block.
    pub(super) slot: u64,
    /// The record of intents alone just before it, written as a pair (see
    /// `ThinPool::write_intents`), while nothing was written after it.
    pub(super) pair: Option<Pair>,
}

/// A record of intents alone rewritten in turns into two log blocks, each
/// version holding more (see `store::log`).
pub(super) struct Pair {
    pub(super) seq: u64,
    /// The first of its two blocks.
    pub(super) first: u64,
    /// Its last version written (1, 2, ...) and what that holds.
    pub(super) version: u16,
    pub(super) payload: Vec<u8>,
}

/// The log's state in memory.
#[derive(Default)]
pub(crate) struct FlushLog {
    /// Mapping changes since the last record, in the order they were made.
    pub(super) maps: Mutex<Vec<Entry>>,
    /// Serializes rounds; says where the next record goes. Taken only
    /// through `lock_next`/`try_lock_next`, whose guard wakes the writers
    /// waiting for a round to end when it is let go.
    next: Mutex<Next>,
    /// Times `next` was let go, and the writers waiting for that.
    ended: AtomicU64,
    waiters: Mutex<Vec<std::thread::Thread>>,
    /// Blocks written in place waiting for a round.
    pub(super) journal: Mutex<Journal>,
    /// `Intent` entries waiting for a round (see `ThinPool::intend`), and
    /// the rounds that took them: started, and the last one finished.
    pub(super) intents: Mutex<Vec<Entry>>,
    /// Intents queued ahead of their writes (`ThinPool::name_ahead`), by
    /// (chunk, byte within it, new CRC32): how many, and the ticket a round
    /// must pass to have taken them. Forgotten with the queue at a restart.
    pub(super) ahead: Mutex<Ahead>,
    /// Entries `ahead` holds (read without its lock: 0 skips it).
    pub(super) ahead_len: AtomicUsize,
    /// Writes whose intents were named ahead and so joined an earlier
    /// writer's round.
    pub(super) named_ahead: AtomicU64,
    /// The log's ring of partial parity blocks (see `thin::ppl`).
    pub(super) ring: Mutex<super::ring::Ring>,
    /// Held by the writer that flushes the members to free the ring.
    pub(super) ring_flush: Mutex<()>,
    pub(super) istarted: AtomicU64,
    pub(super) idone: AtomicU64,
    /// Log blocks not yet written in this transaction (a hint for writers:
    /// rounds update it, commits reset it).
    pub(super) free: AtomicU64,
    /// Data blocks journaled since open.
    pub(super) journaled: AtomicU64,
    /// Rounds that held only intents; small overwrites they named, and
    /// those written afresh instead because the log could not take them.
    pub(super) intent_rounds: AtomicU64,
    pub(super) named: AtomicU64,
    pub(super) unnamed: AtomicU64,
    /// Writes hold it for read while they change a chunk; a round takes it
    /// for write to take its entries with no write half done.
    pub(super) writes: RwLock<()>,
    /// Rounds (and commits) started, and the last one finished.
    pub(super) started: AtomicU64,
    pub(super) done: AtomicU64,
    /// The running transaction holds a change no record describes.
    pub(super) unlogged: AtomicBool,
    /// Bumped when the pool goes back to its last commit.
    pub(super) epoch: AtomicU64,
    /// Flushes asked for, rounds written, flushes that committed instead.
    pub(super) flushes: AtomicU64,
    pub(super) rounds: AtomicU64,
    pub(super) committed: AtomicU64,
}

/// The thread that commits pools whose log closed (the daemon's log
/// committer): woken when a log closes, so that writers meet a closed log
/// (and write small overwrites afresh) for as short a time as a commit
/// takes, not until the committer's next look.
static COMMITTER: Mutex<Option<std::thread::Thread>> = Mutex::new(None);

/// Wake `t` whenever a pool's flush log closes (None: nobody).
pub fn wake_on_log_closed(t: Option<std::thread::Thread>) {
    *COMMITTER.lock() = t;
}

impl FlushLog {
    /// Out of use until a commit (full, failed, or a change no record
    /// describes): the committer is woken to commit now.
    pub(super) fn close(&self) {
        if !self.unlogged.swap(true, Ordering::AcqRel) {
            if let Some(t) = COMMITTER.lock().as_ref() {
                t.unpark();
            }
        }
    }

    /// The log has `n` blocks unused (at open).
    pub(crate) fn set_free(&self, n: u64) {
        self.free.store(n, Ordering::Release);
    }

    pub(super) fn lock_next(&self) -> NextGuard<'_> {
        NextGuard {
            g: Some(self.next.lock()),
            log: self,
        }
    }

    pub(super) fn try_lock_next(&self) -> Option<NextGuard<'_>> {
        let g = self.next.try_lock()?;
        Some(NextGuard {
            g: Some(g),
            log: self,
        })
    }

    /// How many times `next` was let go so far (for `wait_next`).
    pub(super) fn next_released(&self) -> u64 {
        self.ended.load(Ordering::Acquire)
    }

    /// Wait until `next` is let go after `next_released` said `seen`.
    /// Each waiter parks on its own, and the guard that lets `next` go
    /// wakes them all at once: behind the mutex itself they would wake one
    /// after another, each only to see that the round took its entries.
    pub(super) fn wait_next(&self, seen: u64) {
        loop {
            self.waiters.lock().push(std::thread::current());
            if self.next_released() != seen {
                return;
            }
            // A stray wake-up (an earlier round's) only loops.
            std::thread::park();
            if self.next_released() != seen {
                return;
            }
        }
    }
}

/// `FlushLog::next`, held.
pub(super) struct NextGuard<'a> {
    g: Option<parking_lot::MutexGuard<'a, Next>>,
    log: &'a FlushLog,
}

impl std::ops::Deref for NextGuard<'_> {
    type Target = Next;
    fn deref(&self) -> &Next {
        self.g.as_ref().expect("held until dropped")
    }
}

impl std::ops::DerefMut for NextGuard<'_> {
    fn deref_mut(&mut self) -> &mut Next {
        self.g.as_mut().expect("held until dropped")
    }
}

impl Drop for NextGuard<'_> {
    fn drop(&mut self) {
        drop(self.g.take());
        self.log.ended.fetch_add(1, Ordering::AcqRel);
        let waiters = std::mem::take(&mut *self.log.waiters.lock());
        for t in waiters {
            t.unpark();
        }
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
    /// Rounds of write intents only (see `ThinPool::intend`), the small
    /// overwrites of committed data they let go in place, and those
    /// written afresh instead because the log could not take their intents.
    pub intent_rounds: u64,
    pub named_writes: u64,
    pub unnamed_writes: u64,
    /// Of `named_writes`, those whose intents were queued ahead of them
    /// (while queued behind other requests) and taken by another's round.
    pub named_ahead: u64,
}

/// The gate held for write by something other than the data path: what it
/// changes without a commit is in no record, so the next flush commits.
pub struct Exclusive<'a> {
    pool: &'a ThinPool,
    _gate: WriteGuard<'a, ()>,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        if self.pool.meta.read().has_changes() {
            self.pool.log.close();
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
    pub(crate) fn write_in_progress(&self) -> ReadGuard<'_, ()> {
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

    /// Has a record been written since the last commit? (Caller holds
    /// the gate for write: no round runs.)
    pub(crate) fn log_written(&self) -> bool {
        self.log.lock_next().slot > 0
    }

    /// Nothing is queued for a record any more, and the next record is
    /// the first of the transaction (the memory now matches the commit).
    fn log_restart(&self) {
        self.log.maps.lock().clear();
        self.log.journal.lock().clear();
        self.log.intents.lock().clear();
        self.log.ahead.lock().clear();
        self.log.ahead_len.store(0, Ordering::Release);
        self.log.ring.lock().reset();
        if let Some(c) = &self.csums {
            c.forget_unlogged();
        }
        *self.log.lock_next() = Next::default();
        let room = self.meta.read().log_record_room();
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
            intent_rounds: self.log.intent_rounds.load(Ordering::Relaxed),
            named_writes: self.log.named.load(Ordering::Relaxed),
            named_ahead: self.log.named_ahead.load(Ordering::Relaxed),
            unnamed_writes: self.log.unnamed.load(Ordering::Relaxed),
        }
    }

    /// Run (or wait for) a round of the log that started after `ticket`.
    /// False: the log cannot take it (a commit must).
    fn flush_round(&self, ticket: u64) -> Result<bool> {
        let _io = self.gate.read();
        self.round(ticket)
    }

    /// Can records be written now? (Caller holds `next`.)
    pub(super) fn log_usable(&self) -> Result<bool> {
        if let Some(e) = self.array.health().broken_error() {
            return Err(Error::io("flushing", e));
        }
        Ok(!self.log.unlogged.load(Ordering::Acquire)
            && self.meta.read().log_ready()
            && self.array.state().transition.is_none())
    }

    /// `flush_round` for a caller that holds the gate for read.
    fn round(&self, ticket: u64) -> Result<bool> {
        let mut next = self.log.lock_next();
        if self.log.done.load(Ordering::Acquire) > ticket {
            return Ok(true);
        }
        if !self.log_usable()? {
            return Ok(false);
        }
        let r = self.log.started.fetch_add(1, Ordering::AcqRel) + 1;
        let ir = self.log.istarted.fetch_add(1, Ordering::AcqRel) + 1;
        let (entries, journal) = {
            let _w = self.log.writes.write();
            let journal = std::mem::take(&mut *self.log.journal.lock());
            let mut entries = std::mem::take(&mut *self.log.intents.lock());
            let maps = std::mem::take(&mut *self.log.maps.lock());
            {
                let mut meta = self.meta.write();
                for e in &maps {
                    if let Entry::Map { phys, .. } = e {
                        meta.data.set_logged(*phys);
                    }
                }
            }
            entries.extend(maps);
            if let Some(c) = &self.csums {
                entries.extend(
                    c.take_unlogged()
                        .into_iter()
                        .map(|(key, group)| Entry::Csum { key, group }),
                );
            }
            (entries, journal)
        };
        let blocks: Vec<(Entry, &[u8])> = journal
            .iter()
            .map(|(&(phys, within), b)| {
                let e = Entry::Data {
                    phys: Chunk(phys),
                    within,
                    crc: crc(b),
                };
                (e, &b[..])
            })
            .collect();
        // Data written home since the last flush (journaled blocks are
        // made durable by the log instead).
        let flushed = self
            .array
            .flush_if_written()
            .map_err(|e| Error::io("flushing data", e));
        if let Err(e) = flushed {
            self.log.close();
            return Err(e);
        }
        // Its own statement: a guard in the call's arguments would live
        // through `write_units`, which reads `meta` again (a second read
        // with a writer queued between them deadlocks).
        let runs = self.meta.read().log_runs();
        if !self.write_units(&mut next, &pack(&entries, &blocks, runs))? {
            return Ok(false);
        }
        self.log
            .journaled
            .fetch_add(blocks.len() as u64, Ordering::Relaxed);
        self.log.rounds.fetch_add(1, Ordering::Relaxed);
        self.log.idone.fetch_max(ir, Ordering::AcqRel);
        self.log.done.fetch_max(r, Ordering::AcqRel);
        // A member that failed on the way is recorded by a commit, now:
        // the records written stay (the next round follows them).
        if self.array.health().has_unrecorded() {
            self.log.close();
            return Ok(false);
        }
        Ok(true)
    }

    /// Write records (each followed by its journaled blocks) after the
    /// last one, on every metadata copy, and flush the copies. False: no
    /// room (what they held is now only a commit's). An error leaves the
    /// log out of use until a commit.
    pub(super) fn write_units(&self, next: &mut Next, units: &[Unit<'_>]) -> Result<bool> {
        let seq = next.seq.max(1);
        let room = self.meta.read().log_record_room();
        let need: u64 = units.iter().map(|u| 1 + u.data.len() as u64).sum();
        if next.slot + need > room {
            self.log.close();
            return Ok(false);
        }
        let records: Vec<LogWrite<'_>> = units
            .iter()
            .enumerate()
            .map(|(i, u)| (seq + i as u64, &u.payload[..], &u.data[..]))
            .collect();
        let written = match records.is_empty() {
            true => Ok(()),
            false => (self.meta.read())
                .write_log_durable(next.slot, &records)
                .map_err(|e| Error::io("writing the flush log", e)),
        };
        if let Err(e) = written {
            self.log.close();
            return Err(e);
        }
        next.seq = seq + units.len() as u64;
        next.slot += need;
        next.pair = None;
        self.log.free.store(room - next.slot, Ordering::Release);
        Ok(true)
    }

    /// Should writes over committed data go through the journal? Pools
    /// with checksums whose data has no second copy now.
    pub(crate) fn journals(&self) -> bool {
        self.csums.is_some() && !self.array.health().redundant_now()
    }

    /// The log is out of use until a commit (full, or a change it cannot
    /// describe): the daemon's log committer, woken by `FlushLog::close`,
    /// commits it.
    pub fn log_wants_commit(&self) -> bool {
        self.log.unlogged.load(Ordering::Acquire) && self.meta.read().log_ready()
    }
}

#[cfg(test)]
mod tests {
    use super::{wake_on_log_closed, FlushLog};
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};

    #[test]
    fn a_log_that_closes_wakes_the_committer() {
        let log = std::sync::Arc::new(FlushLog::default());
        wake_on_log_closed(Some(std::thread::current()));
        let (t0, limit) = (Instant::now(), Duration::from_secs(30));
        // Not a scoped thread: one of those wakes the scope's thread as
        // it ends.
        let closer = {
            let log = log.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                log.close();
            })
        };
        // As the committer: parked until woken (a stray wake-up loops).
        while !log.unlogged.load(Ordering::Acquire) && t0.elapsed() < limit {
            std::thread::park_timeout(limit - t0.elapsed());
        }
        // Not woken, the loop above parks until the limit.
        let took = t0.elapsed();
        wake_on_log_closed(None);
        let _ = closer.join();
        assert!(log.unlogged.load(Ordering::Acquire));
        assert!(took < Duration::from_secs(10), "woken after {took:?}");
    }
}
