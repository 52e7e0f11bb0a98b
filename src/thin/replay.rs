//! Replaying the flush log at open (see `log`): the records of the last
//! commit, in order, onto it, then the blocks their intents name.

use super::log_entry::{decode, Entry};
use super::ThinPool;
use crate::error::{Error, Result};
use crate::thin::csum::{crc, has_head};
use crate::thin::store::csum::{csum_key, csum_key_chunk, Group, CSUM_BLOCK, GROUP_BYTES};
use crate::units::Chunk;
use std::collections::{BTreeMap, HashMap};

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
    /// Blocks overwritten in place after the last record that settled
    /// them (writes in flight at the crash): those that no longer match
    /// their checksum keep what they hold (the write, or a tear of it), and
    /// those that cannot be read stay errors. A block whose flushed write
    /// a device lost is settled, so it reads as an error, never old bytes.
    pub writes_kept: u64,
    pub writes_damaged: u64,
    /// Blocks with a write in flight that hold neither their flushed
    /// bytes, nor a write named, nor a tear of one (they lack the sector
    /// a named write's tag names, `csum::head`): older bytes, a flushed write
    /// a device lost. They keep their flushed checksum, so they read as
    /// errors (or are repaired from a copy), never as the older bytes.
    pub writes_stale: u64,
    /// RAID5 blocks behind a missing member rebuilt from a partial parity
    /// the log held (their row's parity was stale after the crash).
    pub blocks_rebuilt: u64,
}

impl Replayed {
    /// What the replay did to data blocks, for the open warning: empty
    /// when it touched none.
    pub fn data_summary(&self) -> String {
        let parts: Vec<String> = [
            (self.data_blocks, "journaled blocks written home again"),
            (
                self.data_missing,
                "journaled blocks whose copies were cut short keep what they held",
            ),
            (self.writes_kept, "blocks with a write in flight keep what they hold"),
            (
                self.blocks_rebuilt,
                "raid5 blocks behind the missing member rebuilt from the log's partial parity",
            ),
            (
                self.writes_damaged,
                "blocks with a write in flight cannot be read: they read as errors; `vpool pool scrub` lists them",
            ),
            (
                self.writes_stale,
                "blocks with a write in flight hold bytes older than their last flushed write (a device lost it): they read as errors; `vpool pool scrub` lists them",
            ),
        ]
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, what)| format!("{n} {what}"))
        .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("; {}", parts.join(", "))
        }
    }
}

/// A write an intent names: its CRC32 and its tag (`csum::head`).
type Named = (u32, Option<u16>);

/// The blocks `Intent` entries name, with the checksums (and tags) of
/// the writes in place that may be in flight there, oldest first. A checksum entry
/// that gives a block one of them settles it and every older one (that
/// write was flushed: only it, or a later one, may be there now).
#[derive(Default)]
struct Intents {
    writes: HashMap<(Chunk, u64), Vec<Named>>,
    /// The blocks named, by checksum group.
    by_group: HashMap<u64, Vec<(Chunk, u64)>>,
}

impl Intents {
    fn add(&mut self, phys: Chunk, within: u64, crc: u32, head: Option<u16>) {
        let w = self.writes.entry((phys, within)).or_default();
        if w.is_empty() {
            self.by_group
                .entry(csum_key(phys, within))
                .or_default()
                .push((phys, within));
        }
        w.push((crc, head));
    }

    fn settle(&mut self, key: u64, group: &Group) {
        let Some(blocks) = self.by_group.get(&key) else {
            return;
        };
        for b in blocks {
            let slot = ((b.1 % GROUP_BYTES) / CSUM_BLOCK) as usize;
            if let Some(w) = self.writes.get_mut(b) {
                if let Some(at) = w.iter().rposition(|c| c.0 == group[slot]) {
                    w.drain(..=at);
                }
            }
        }
    }
}

impl ThinPool {
    /// Apply the log's records of the last commit and commit them (at
    /// open, before the write-intent resync; nothing else runs). Each
    /// block's last journaled copy that matches its entry's checksum is
    /// written home again, unless a later record's checksum says a write
    /// without a copy came after it (`journaled_home`); a block no copy of
    /// which matches keeps what it held before the record (its round never
    /// finished, or every copy was lost) and is counted. Then each block an `Intent` names that
    /// no later checksum entry settled is checked: one that holds a write
    /// the log names keeps it (an unflushed write, see `Intents`).
    pub fn replay_log(&self) -> Result<Replayed> {
        let records = self.meta.read().read_log();
        let mut out = Replayed::default();
        if records.is_empty() {
            return Ok(out);
        }
        let _gate = self.gate.write();
        // The commit below moves past them, whatever they held.
        self.meta.write().log_used();
        let mut intents = Intents::default();
        // Each block's last journaled copy, written home once every record
        // is applied (`journaled_home`).
        let mut latest = BTreeMap::new();
        // RAID5 partial parities, in the order written (see `thin::ppl`).
        let mut parities = Vec::new();
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
            match self.partial_parities(&entries) {
                Ok(found) => parities.extend(found),
                Err(why) => {
                    out.stopped = Some(format!("record {} does not fit ({why})", i + 1));
                    break;
                }
            }
            let (home, keep) = match self.journaled_blocks(rec.slot, &data) {
                Ok(x) => x,
                Err(why) => {
                    out.stopped = Some(format!("record {} does not fit ({why})", i + 1));
                    break;
                }
            };
            for e in entries {
                match e {
                    Entry::Intent {
                        phys,
                        within,
                        crc,
                        head,
                    } => intents.add(phys, within, crc, head),
                    Entry::Csum { key, group } => intents.settle(key, &group),
                    _ => {}
                }
                if let Err(why) = self.apply(e) {
                    out.stopped = Some(format!(
                        "record {} does not fit the last commit ({why})",
                        i + 1
                    ));
                    break 'records;
                }
                out.entries += 1;
            }
            for (phys, within, bytes) in home {
                latest.insert((phys, within), bytes);
            }
            for (phys, within, before) in &keep {
                self.set_block_csum(*phys, *within, *before)?;
            }
            out.data_missing += keep.len() as u64;
            out.records += 1;
        }
        // Before anything reads a row through a missing member.
        let (rebuilt, rows) = self.repair_rows(parities)?;
        out.blocks_rebuilt = rebuilt;
        out.data_blocks = self.journaled_home(latest)?;
        (out.writes_kept, out.writes_damaged, out.writes_stale) = self.check_intents(intents)?;
        // Their blocks' checksums settled: the rows' parity from data that
        // matches them.
        self.resync_rows(rows)?;
        // Checksums of chunks no replayed mapping took.
        if let Some(c) = &self.csums {
            let meta = self.meta.read();
            c.retain(|k| meta.data.in_use(csum_key_chunk(k)));
        }
        self.commit_inner(false)?;
        Ok(out)
    }

    /// Write home each block's last journaled copy that its checksum, as
    /// the records left it, names. A copy a later record's checksum
    /// contradicts was overwritten by a write the log kept no copy of (a
    /// large one, flushed home by its round): that write stays, the copy
    /// must not go over it. Returns the blocks written.
    fn journaled_home(&self, latest: BTreeMap<(Chunk, u64), Vec<u8>>) -> Result<u64> {
        let mut written = 0;
        for ((phys, within), bytes) in latest {
            if self.csums.is_some() && self.block_csum(phys, within)? != Some(crc(&bytes)) {
                continue;
            }
            self.array
                .write(self.chunk_size.at(phys, within), &bytes)
                .map_err(|e| Error::io("replaying the flush log", e))?;
            written += 1;
        }
        Ok(written)
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
            // Written home (or checked) by the caller.
            Entry::Data { .. } | Entry::Intent { .. } | Entry::Parity { .. } => Ok(()),
        }
    }

    /// The blocks `intents` leaves unsettled: (kept, damaged, stale) as
    /// in `Replayed`.
    fn check_intents(&self, intents: Intents) -> Result<(u64, u64, u64)> {
        let (mut kept, mut damaged, mut stale) = (0, 0, 0);
        let mut blocks: Vec<_> = intents
            .writes
            .into_iter()
            .filter(|(_, w)| !w.is_empty())
            .collect();
        blocks.sort_by_key(|((p, w), _)| (p.index(), *w));
        for ((phys, within), writes) in blocks {
            if !self.meta.read().data.in_use(phys) {
                continue;
            }
            let mut now = vec![0u8; CSUM_BLOCK as usize];
            if self
                .array
                .read(self.chunk_size.at(phys, within), &mut now)
                .is_err()
            {
                damaged += 1;
                continue;
            }
            let c = crc(&now);
            let flushed = self.block_csum(phys, within)?;
            if flushed == Some(c) {
                continue;
            }
            // One of the writes named, or one torn by the crash (never
            // flushed: any state may remain, as on a disk): kept. A tear
            // that changed the block has the first sector the write covers
            // (disks land a write's sectors in order; see `csum::head`);
            // bytes that have not are older than the flushed write, which
            // a device lost: they keep its checksum.
            // Intents of older builds carry no tag, and a block with no
            // checksum has nothing to judge by: kept, as before.
            let written = flushed.is_none()
                || writes
                    .iter()
                    .any(|&(w, h)| w == c || h.is_none_or(|h| has_head(&now, h)));
            if !written {
                stale += 1;
                continue;
            }
            self.set_block_csum(phys, within, c)?;
            kept += 1;
        }
        Ok((kept, damaged, stale))
    }
}

#[cfg(test)]
mod tests {
    use super::Replayed;

    #[test]
    fn the_open_warning_names_only_what_the_replay_did_to_data() {
        assert_eq!(Replayed::default().data_summary(), "");
        let r = Replayed {
            writes_kept: 3,
            writes_damaged: 1,
            writes_stale: 2,
            ..Replayed::default()
        };
        let s = r.data_summary();
        assert!(
            s.starts_with("; 3 blocks with a write in flight keep"),
            "{s}"
        );
        assert!(
            s.contains("1 blocks with a write in flight cannot be read"),
            "{s}"
        );
        assert!(
            s.contains("2 blocks with a write in flight hold bytes older"),
            "{s}"
        );
        assert!(!s.contains("journaled"), "{s}");
    }
}
