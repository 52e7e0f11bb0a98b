//! Writes in place over committed data: on pools without a second copy,
//! the write intents a round of the flush log makes durable before a block
//! is overwritten; on every pool with checksums, the copies of small
//! writes the next flush's round journals (see the notes in `thin::log`). Rounds of intents alone
//! rewrite one record, a pair of log blocks, rather than each taking a
//! block (see `store::log`).

use super::log::{Next, Pair};
use super::log_entry::{pack, Entry};
use super::ThinPool;
use crate::error::{Error, Result};
use crate::thin::store::csum::CSUM_BLOCK;
use crate::thin::store::log::LOG_PAYLOAD;
use crate::units::Chunk;
use std::sync::atomic::Ordering;

/// Most blocks the journal holds between rounds (4 MiB), and at most half
/// the log's free blocks (the rest is for the records).
const JOURNAL_BLOCKS: usize = 1024;

/// Largest write (in whole 4 KiB blocks) that leaves a copy of itself in
/// the log, when at most half a chunk: a larger one costs less flushed
/// home by the next round.
const JOURNAL_MAX: u64 = 32 << 10;

/// The `Intent` entries of whole 4 KiB blocks with new checksums `crcs`
/// and tags `heads` (`csum::heads`) from byte `within` of
/// chunk `phys`.
pub(crate) fn intents<'a>(
    phys: Chunk,
    within: u64,
    crcs: &'a [u32],
    heads: &'a [u16],
) -> impl Iterator<Item = Entry> + 'a {
    crcs.iter().enumerate().map(move |(i, &crc)| Entry::Intent {
        phys,
        within: within + i as u64 * CSUM_BLOCK,
        crc,
        head: heads.get(i).copied(),
    })
}

impl ThinPool {
    /// Make the intents queued before `ticket` durable: a round of the
    /// log holding only them (or a flush's round that took them). False:
    /// the log cannot take them now.
    pub(super) fn intent_round(&self, ticket: u64) -> Result<bool> {
        let mut next = loop {
            if self.log.idone.load(Ordering::Acquire) > ticket {
                return Ok(true);
            }
            // A round running may have taken these intents: wait for its
            // end rather than queue behind it for `next`.
            let seen = self.log.next_released();
            match self.log.try_lock_next() {
                Some(next) => break next,
                None => self.log.wait_next(seen),
            }
        };
        if self.log.idone.load(Ordering::Acquire) > ticket {
            return Ok(true);
        }
        if !self.log_usable()? {
            return Ok(false);
        }
        let ir = self.log.istarted.fetch_add(1, Ordering::AcqRel) + 1;
        let entries = {
            // The next round's queue starts with room for as many: not
            // grown again from nothing, one reallocation at a time.
            let mut queued = self.log.intents.lock();
            let room = Vec::with_capacity(queued.len());
            std::mem::replace(&mut *queued, room)
        };
        if !self.write_intents(&mut next, &entries)? {
            return Ok(false);
        }
        self.log.idone.fetch_max(ir, Ordering::AcqRel);
        self.log.intent_rounds.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Write `entries` (intents alone) after the last record, on every
    /// metadata copy, and flush the copies: as the next version of the
    /// pair just written when they fit beside what it holds (the log does
    /// not grow), else as a new pair (two blocks), else as plain records.
    /// False: no room.
    fn write_intents(&self, next: &mut Next, entries: &[Entry]) -> Result<bool> {
        let units = pack(entries, &[], self.meta.read().log_runs());
        let [unit] = &units[..] else {
            return self.write_units(next, &units);
        };
        let add = &unit.payload;
        let room = self.meta.read().log_record_room();
        let (seq, first, version, mut payload) = match next.pair.take() {
            Some(p) if p.payload.len() + add.len() <= LOG_PAYLOAD => {
                (p.seq, p.first, p.version + 1, p.payload)
            }
            _ if next.slot + 2 > room => {
                self.log.close();
                return Ok(false);
            }
            _ => (next.seq.max(1), next.slot, 1, Vec::new()),
        };
        payload.extend_from_slice(add);
        // Durable as written: the round needs nothing else flushed.
        let written = self
            .meta
            .read()
            .write_log_pair(seq, first, version, &payload);
        if let Err(e) = written {
            self.log.close();
            return Err(Error::io("writing the flush log", e));
        }
        if version == 1 {
            next.seq = seq + 1;
            next.slot = first + 2;
            self.log.free.store(room - next.slot, Ordering::Release);
        }
        next.pair = Some(Pair {
            seq,
            first,
            version,
            payload,
        });
        Ok(true)
    }

    /// Make durable, before whole 4 KiB blocks whose new checksums are
    /// `crcs` (tags `heads`, `csum::heads`) overwrite byte `within` of
    /// chunk `phys` in place, that they may: one `Intent` entry per
    /// block, in a round of the log (writers share rounds). False: the log cannot take them now (the caller
    /// writes elsewhere). Caller holds the gate for read and the chunk's
    /// lock, not `write_in_progress` (a round takes it).
    pub(crate) fn intend(
        &self,
        phys: Chunk,
        within: u64,
        crcs: &[u32],
        heads: &[u16],
    ) -> Result<bool> {
        if self.log.unlogged.load(Ordering::Acquire) {
            self.log.unnamed.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        let named = match self.take_ahead(phys, within, crcs) {
            Some(ticket) => {
                let named = self.intent_round(ticket)?;
                if named {
                    self.log.named_ahead.fetch_add(1, Ordering::Relaxed);
                }
                named
            }
            None => self.intend_all(intents(phys, within, crcs, heads).collect())?,
        };
        let counter = match named {
            true => &self.log.named,
            false => &self.log.unnamed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(named)
    }

    /// Queue the intents of a write a client sent that has not run yet
    /// (behind others of its connection), so that the round an earlier
    /// writer runs takes them too and the write, when it runs, finds
    /// them taken (`intend`): writers that each ran a round of their own
    /// share one. Only a write inside one chunk, of whole 4 KiB blocks
    /// (`crcs`, their new CRC32s, from byte `offset` of volume `vol`),
    /// that `write_piece` would overwrite in place under intents now
    /// (`heads`, their tags: `csum::heads`). One
    /// that then goes otherwise (its mapping changed, or it fails) leaves
    /// intents whose write never comes, which replay allows as it allows
    /// one in flight at a crash. Caller holds the gate for read: a commit,
    /// which forgets the queue and `ahead` together, comes before or
    /// after, never between.
    pub(crate) fn name_ahead(
        &self,
        vol: u64,
        offset: u64,
        crcs: &[u32],
        heads: &[u16],
    ) -> Result<()> {
        let cs = self.chunk_size;
        let len = crcs.len() as u64 * CSUM_BLOCK;
        if crcs.is_empty() || !offset.is_multiple_of(CSUM_BLOCK) || !self.names_ahead() {
            return Ok(());
        }
        let mut pieces = cs.pieces(offset, len);
        let (Some((vchunk, within, n)), None) = (pieces.next(), pieces.next()) else {
            return Ok(());
        };
        match self.lookup(vol, vchunk)? {
            Some(m) if m.exclusive && !m.new && self.array.overwrite_in_place(n, cs) => {
                self.log
                    .intents
                    .lock()
                    .extend(intents(m.phys, within, crcs, heads));
                // Taken after the queueing: a round that started later
                // took them.
                let ticket = self.log.istarted.load(Ordering::Acquire);
                let mut ahead = self.log.ahead.lock();
                for (i, &crc) in crcs.iter().enumerate() {
                    let key = (m.phys.index(), within + i as u64 * CSUM_BLOCK, crc);
                    // Two writes of the same bytes: the later ticket, as a
                    // round past it took both.
                    let named = ahead.entry(key).or_insert((0, 0));
                    *named = (named.0 + 1, named.1.max(ticket));
                }
                self.log.ahead_len.store(ahead.len(), Ordering::Release);
            }
            _ => {}
        }
        Ok(())
    }

    /// The ticket of intents `name_ahead` queued for exactly these blocks
    /// and CRCs (taken out), if it queued all of them. Caller holds the
    /// gate for read.
    fn take_ahead(&self, phys: Chunk, within: u64, crcs: &[u32]) -> Option<u64> {
        if self.log.ahead_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut ahead = self.log.ahead.lock();
        let key = |i: usize| (phys.index(), within + i as u64 * CSUM_BLOCK, crcs[i]);
        let mut ticket = 0;
        for i in 0..crcs.len() {
            ticket = ticket.max(ahead.get(&key(i))?.1);
        }
        for i in 0..crcs.len() {
            if let Some(named) = ahead.get_mut(&key(i)) {
                named.0 -= 1;
                if named.0 == 0 {
                    ahead.remove(&key(i));
                }
            }
        }
        self.log.ahead_len.store(ahead.len(), Ordering::Release);
        Some(ticket)
    }

    /// Whether `name_ahead` may queue anything now (a cheap look first).
    pub(crate) fn names_ahead(&self) -> bool {
        self.journals() && !self.log.unlogged.load(Ordering::Acquire)
    }

    /// Queue `entries` (intents) and wait for a round that holds them.
    /// False: the log cannot take them now.
    pub(crate) fn intend_all(&self, entries: Vec<Entry>) -> Result<bool> {
        self.log.intents.lock().extend(entries);
        let ticket = self.log.istarted.load(Ordering::Acquire);
        self.intent_round(ticket)
    }

    /// Write `data` (whole 4 KiB blocks) at byte `within` of chunk `phys`
    /// in place, once `intend` made that durable: the blocks home, their
    /// checksums recorded, and a copy queued for the next round. Caller
    /// holds the gate for read, the chunk's lock and `write_in_progress`.
    pub(crate) fn write_journaled(
        &self,
        phys: Chunk,
        within: u64,
        data: &[u8],
        crcs: &[u32],
    ) -> Result<()> {
        self.write_journaled_with(phys, within, data, crcs, None)
    }

    /// [`ThinPool::write_journaled`], on RAID5 with the XOR of the row's
    /// other data units at the written offsets known (`others`, kept
    /// unchanged by the chunk's lock): the parity is written from them
    /// (`Array::write_journaled_with_others`).
    pub(crate) fn write_journaled_with(
        &self,
        phys: Chunk,
        within: u64,
        data: &[u8],
        crcs: &[u32],
        others: Option<&[u8]>,
    ) -> Result<()> {
        // Not a data flush's business when queued: the round's log write
        // makes it durable.
        let at = self.chunk_size.at(phys, within);
        let written = match others {
            Some(others) => self.array.write_journaled_with_others(at, data, others),
            None => self.array.write_journaled(at, data),
        };
        written.map_err(|e| Error::io("writing data", e))?;
        self.journal_written(phys, within, data, crcs)
    }

    /// After `data` went home at byte `within` of chunk `phys` under
    /// intents: record its checksums, and queue a copy for the next round
    /// (small writes; larger ones cost less flushed home by the round).
    pub(crate) fn journal_written(
        &self,
        phys: Chunk,
        within: u64,
        data: &[u8],
        crcs: &[u32],
    ) -> Result<()> {
        self.record_crcs(phys, within, crcs)?;
        let copy = data.len() as u64 <= JOURNAL_MAX.min(self.chunk_size.bytes() / 2);
        let n = data.len() / CSUM_BLOCK as usize;
        let room = (self.log.free.load(Ordering::Acquire) / 2) as usize;
        let mut j = self.log.journal.lock();
        let keys = (0..n).map(|i| (phys.index(), within + (i as u64) * CSUM_BLOCK));
        if copy && j.len() + n <= JOURNAL_BLOCKS.min(room) {
            for (k, b) in keys.zip(data.chunks(CSUM_BLOCK as usize)) {
                j.insert(k, b.into());
            }
        } else {
            // No copy: the next round flushes the members for it, and an
            // older copy must not go home over it at a replay.
            for k in keys {
                j.remove(&k);
            }
            self.array.mark_written();
        }
        Ok(())
    }

    /// A write in place of `[within, within + len)` of chunk `phys` that
    /// did not go through `intend`: older copies of its blocks in the
    /// journal must not go home over it at a replay. Caller holds
    /// `write_in_progress`.
    pub(crate) fn journal_forget(&self, phys: Chunk, within: u64, len: u64) {
        let (a0, a1) = (
            within / CSUM_BLOCK * CSUM_BLOCK,
            (within + len).div_ceil(CSUM_BLOCK) * CSUM_BLOCK,
        );
        let mut j = self.log.journal.lock();
        for w in (a0..a1).step_by(CSUM_BLOCK as usize) {
            j.remove(&(phys.index(), w));
        }
    }
}
