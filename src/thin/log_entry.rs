//! The flush log's entries: what a record holds, how it is encoded in a
//! log block (see docs/FORMAT.md, "Flush log"), and how a round's entries
//! and journaled blocks are packed into records.

use crate::meta::codec::{get_u32, get_u64, put_u32, put_u64};
use crate::thin::store::csum::{Group, CSUM_BLOCK, CSUM_GROUP};
use crate::thin::store::log::LOG_PAYLOAD;
use crate::units::Chunk;

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
    /// Block `within` (4 KiB aligned) of chunk `phys` is about to be
    /// overwritten in place with bytes whose checksum is `crc` and whose
    /// tag is `head` (`csum::head`: the first sector the client's write
    /// covers; superblock version 12, none in older entries): what tells
    /// a tear of the write from older bytes at a replay.
    Intent {
        phys: Chunk,
        within: u64,
        crc: u32,
        head: Option<u16>,
    },
    /// RAID5 (superblock version 11): block `within` (4 KiB aligned) of
    /// chunk `phys`, one stripe row, is about to be overwritten in place;
    /// the log's block `slot` (in its ring, see `thin::ppl`) holds the XOR
    /// of the row's other data units at the same offset (its partial
    /// parity), whose checksum is `crc`.
    Parity {
        phys: Chunk,
        within: u64,
        crc: u32,
        slot: u64,
    },
}

const MAP: u8 = 1;
const UNMAP: u8 = 2;
const CSUM: u8 = 3;
const DATA: u8 = 4;
const INTENT: u8 = 5;
/// A run of intents: consecutive blocks of one chunk (superblock version
/// 10), decoded as the `Intent` entries it stands for.
const RUN: u8 = 6;
/// A partial parity (superblock version 11).
const PARITY: u8 = 7;
/// An intent with its tag (superblock version 12).
const INTENT_HEAD: u8 = 8;
/// A run of intents with their tags (superblock version
/// 12): 6 bytes a block.
const RUN_HEADS: u8 = 9;
/// Length of a `Data` or `Intent` entry.
const DATA_LEN: usize = 21;
/// Length of an `Intent` entry with its tag.
const INTENT_HEAD_LEN: usize = 23;
/// Length of a `Parity` entry.
const PARITY_LEN: usize = 29;
/// Length of a run's fixed part (type, chunk, offset, count); each block
/// adds its CRC32 (and, in a type-9 run, its tag).
const RUN_HEAD: usize = 19;
/// Most blocks in one run (1 MiB; 1,555 bytes with tags).
const MAX_RUN: usize = 256;

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Map { .. } => 25,
            Entry::Unmap { .. } => 17,
            Entry::Csum { .. } => 9 + 4 * CSUM_GROUP,
            Entry::Intent { head: Some(_), .. } => INTENT_HEAD_LEN,
            Entry::Data { .. } | Entry::Intent { .. } => DATA_LEN,
            Entry::Parity { .. } => PARITY_LEN,
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
            Entry::Data { phys, within, crc }
            | Entry::Intent {
                phys,
                within,
                crc,
                head: None,
            } => {
                b[0] = if matches!(self, Entry::Data { .. }) {
                    DATA
                } else {
                    INTENT
                };
                put_u64(b, 1, phys.index());
                put_u64(b, 9, within);
                put_u32(b, 17, crc);
            }
            Entry::Intent {
                phys,
                within,
                crc,
                head: Some(head),
            } => {
                b[0] = INTENT_HEAD;
                put_u64(b, 1, phys.index());
                put_u64(b, 9, within);
                put_u32(b, 17, crc);
                b[21..23].copy_from_slice(&head.to_le_bytes());
            }
            Entry::Parity {
                phys,
                within,
                crc,
                slot,
            } => {
                b[0] = PARITY;
                put_u64(b, 1, phys.index());
                put_u64(b, 9, within);
                put_u32(b, 17, crc);
                put_u64(b, 21, slot);
            }
        }
    }
}

/// The bytes a run of `n` intents takes, with or without tags.
fn run_len(n: usize, tagged: bool) -> usize {
    RUN_HEAD + if tagged { 6 } else { 4 } * n
}

/// A run of `crcs.len()` intents from byte `within` of chunk `phys` on:
/// type 9 with their tags when every one has one, else type 6.
fn encode_run(phys: Chunk, within: u64, crcs: &[(u32, Option<u16>)], out: &mut Vec<u8>) {
    let tagged = crcs.iter().all(|c| c.1.is_some());
    let at = out.len();
    out.resize(at + run_len(crcs.len(), tagged), 0);
    let b = &mut out[at..];
    b[0] = if tagged { RUN_HEADS } else { RUN };
    put_u64(b, 1, phys.index());
    put_u64(b, 9, within);
    b[17..19].copy_from_slice(&(crcs.len() as u16).to_le_bytes());
    for (i, (c, _)) in crcs.iter().enumerate() {
        put_u32(b, RUN_HEAD + 4 * i, *c);
    }
    if tagged {
        let tags = RUN_HEAD + 4 * crcs.len();
        for (i, (_, h)) in crcs.iter().enumerate() {
            let h = h.unwrap_or_default().to_le_bytes();
            b[tags + 2 * i..tags + 2 * i + 2].copy_from_slice(&h);
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
            DATA | INTENT => DATA_LEN,
            INTENT_HEAD => INTENT_HEAD_LEN,
            PARITY => PARITY_LEN,
            RUN | RUN_HEADS if p.len() >= RUN_HEAD => run_len(
                usize::from(u16::from_le_bytes([p[17], p[18]])),
                tag == RUN_HEADS,
            ),
            RUN | RUN_HEADS => RUN_HEAD,
            t => return Err(format!("unknown entry type {t}")),
        };
        if p.len() < need {
            return Err("entry cut short".into());
        }
        if tag == RUN || tag == RUN_HEADS {
            let (phys, within) = (Chunk(get_u64(p, 1)), get_u64(p, 9));
            let n = usize::from(u16::from_le_bytes([p[17], p[18]]));
            let fits = within.checked_add(n as u64 * CSUM_BLOCK).is_some();
            if within % CSUM_BLOCK != 0 || n == 0 || !fits {
                return Err("malformed run of intents".into());
            }
            let tags = RUN_HEAD + 4 * n;
            for i in 0..n {
                out.push(Entry::Intent {
                    phys,
                    within: within + i as u64 * CSUM_BLOCK,
                    crc: get_u32(p, RUN_HEAD + 4 * i),
                    head: (tag == RUN_HEADS)
                        .then(|| u16::from_le_bytes([p[tags + 2 * i], p[tags + 2 * i + 1]])),
                });
            }
            p = &p[need..];
            continue;
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
            INTENT | INTENT_HEAD => Entry::Intent {
                phys: Chunk(get_u64(p, 1)),
                within: get_u64(p, 9),
                crc: get_u32(p, 17),
                head: (tag == INTENT_HEAD).then(|| u16::from_le_bytes([p[21], p[22]])),
            },
            PARITY => Entry::Parity {
                phys: Chunk(get_u64(p, 1)),
                within: get_u64(p, 9),
                crc: get_u32(p, 17),
                slot: get_u64(p, 21),
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
pub(crate) struct Unit<'a> {
    pub(crate) payload: Vec<u8>,
    pub(crate) data: Vec<&'a [u8]>,
}

/// Entries packed into record payloads of at most a log block each, then
/// the journaled blocks' `Data` entries, each record followed by the
/// blocks its entries name. With `runs` (this build committed the pool:
/// superblock version 12), intents for consecutive blocks of a chunk are
/// written as one run, 6 bytes a block instead of 23, and intents keep
/// their tags; without, tags are dropped (types 5 and 6 only).
pub(crate) fn pack<'a>(
    entries: &[Entry],
    blocks: &[(Entry, &'a [u8])],
    runs: bool,
) -> Vec<Unit<'a>> {
    let mut out: Vec<Unit<'a>> = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut e = entries[i];
        let run = if runs { run_at(&entries[i..]) } else { None };
        let n = match run {
            Some((phys, within, crcs)) if crcs.len() > 1 => {
                let len = run_len(crcs.len(), crcs.iter().all(|c| c.1.is_some()));
                encode_run(phys, within, &crcs, &mut room_for(&mut out, len).payload);
                crcs.len()
            }
            _ => {
                if let (Entry::Intent { head, .. }, false) = (&mut e, runs) {
                    *head = None;
                }
                e.encode(&mut room_for(&mut out, e.len()).payload);
                1
            }
        };
        i += n;
    }
    for (e, d) in blocks {
        let u = room_for(&mut out, e.len());
        e.encode(&mut u.payload);
        u.data.push(d);
    }
    out
}

/// The last record of `out`, or a new one when it has not `len` bytes
/// of room left.
fn room_for<'o, 'a>(out: &'o mut Vec<Unit<'a>>, len: usize) -> &'o mut Unit<'a> {
    if out
        .last()
        .is_none_or(|u| u.payload.len() + len > LOG_PAYLOAD)
    {
        out.push(Unit {
            payload: Vec::with_capacity(LOG_PAYLOAD),
            data: Vec::new(),
        });
    }
    let last = out.len() - 1;
    &mut out[last]
}

/// A run's chunk, first offset, and each block's CRC32 and tag.
type Run = (Chunk, u64, Vec<(u32, Option<u16>)>);

/// The intents from the first of `entries` on that name consecutive
/// blocks of one chunk (at most [`MAX_RUN`]), all with tags or all
/// without.
fn run_at(entries: &[Entry]) -> Option<Run> {
    let Some(&Entry::Intent {
        phys, within, head, ..
    }) = entries.first()
    else {
        return None;
    };
    let mut crcs = Vec::new();
    for e in entries.iter().take(MAX_RUN) {
        match *e {
            Entry::Intent {
                phys: p,
                within: w,
                crc,
                head: h,
            } if p == phys
                && w == within + crcs.len() as u64 * CSUM_BLOCK
                && h.is_some() == head.is_some() =>
            {
                crcs.push((crc, h))
            }
            _ => break,
        }
    }
    Some((phys, within, crcs))
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
            entries.push(Entry::Intent {
                phys: Chunk(i),
                within: i * CSUM_BLOCK,
                crc: !(i as u32),
                head: None,
            });
            entries.push(Entry::Csum {
                key: i << 16,
                group: [i as u32; CSUM_GROUP],
            });
            entries.push(Entry::Parity {
                phys: Chunk(i + 3),
                within: i * CSUM_BLOCK,
                crc: i as u32 ^ 0x5a5a,
                slot: 500 - i,
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
        let records = pack(&entries, &blocks, false);
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
        assert!(decode(&[RUN, 0, 0]).is_err());
        assert!(decode(&[MAP, 0, 0]).is_err());
    }

    #[test]
    fn runs_of_intents_take_4_bytes_a_block_and_decode_as_intents() {
        let intent = |phys: u64, blk: u64| Entry::Intent {
            phys: Chunk(phys),
            within: blk * CSUM_BLOCK,
            crc: (phys * 1000 + blk) as u32,
            head: None,
        };
        // Two runs (300 blocks of chunk 5 split at MAX_RUN, a gap, then
        // 3 blocks), a lone intent of another chunk, a map, a run of 2.
        let mut entries: Vec<Entry> = (0..300).map(|b| intent(5, b)).collect();
        entries.extend((301..304).map(|b| intent(5, b)));
        entries.push(intent(6, 0));
        entries.push(Entry::Unmap { vol: 1, vchunk: 2 });
        entries.extend([intent(7, 9), intent(7, 10)]);
        let plain = pack(&entries, &[], false);
        let runs = pack(&entries, &[], true);
        let bytes = |u: &[Unit]| u.iter().map(|u| u.payload.len()).sum::<usize>();
        assert_eq!(bytes(&plain), 306 * DATA_LEN + 17);
        assert_eq!(
            bytes(&runs),
            4 * RUN_HEAD + 4 * 305 + DATA_LEN + 17,
            "four runs, one lone intent, one unmap"
        );
        assert!(runs.iter().all(|r| r.payload.len() <= LOG_PAYLOAD));
        let back: Vec<Entry> = runs
            .iter()
            .flat_map(|r| decode(&r.payload).expect("decodes"))
            .collect();
        assert_eq!(back, entries);
        // A run cut short, or of no block, or not 4 KiB aligned, is refused.
        for tag in [None, Some(7)] {
            let mut one = Vec::new();
            encode_run(Chunk(1), 0, &[(1, tag), (2, tag)], &mut one);
            assert!(decode(&one).is_ok());
            assert!(decode(&one[..one.len() - 1]).is_err());
            let mut empty = Vec::new();
            encode_run(Chunk(1), 0, &[], &mut empty);
            assert!(decode(&empty).is_err());
            let mut odd = Vec::new();
            encode_run(Chunk(1), 512, &[(1, tag)], &mut odd);
            assert!(decode(&odd).is_err());
            let mut wraps = Vec::new();
            encode_run(Chunk(1), u64::MAX - 4095, &[(1, tag), (2, tag)], &mut wraps);
            assert!(decode(&wraps).is_err());
        }
    }

    #[test]
    fn tagged_intents_keep_their_tags_only_where_the_pool_allows_them() {
        let intent = |phys: u64, blk: u64, head: Option<u16>| Entry::Intent {
            phys: Chunk(phys),
            within: blk * CSUM_BLOCK,
            crc: (phys * 1000 + blk) as u32,
            head,
        };
        // A tagged run of 3, a lone tagged intent, a run of 2 split where
        // the tags stop (a tagged block, then two untagged: a run of 2).
        let mut entries: Vec<Entry> = (0..3).map(|b| intent(5, b, Some(b as u16))).collect();
        entries.push(intent(6, 0, Some(0xbeef)));
        entries.push(intent(7, 0, Some(1)));
        entries.extend([intent(7, 1, None), intent(7, 2, None)]);
        let runs = pack(&entries, &[], true);
        let bytes = |u: &[Unit]| u.iter().map(|u| u.payload.len()).sum::<usize>();
        assert_eq!(
            bytes(&runs),
            run_len(3, true) + 2 * INTENT_HEAD_LEN + run_len(2, false)
        );
        let back: Vec<Entry> = runs
            .iter()
            .flat_map(|r| decode(&r.payload).expect("decodes"))
            .collect();
        assert_eq!(back, entries, "tags round-trip");
        // A pool an older build committed: types 5 and 6 only, no tags.
        let plain = pack(&entries, &[], false);
        assert_eq!(bytes(&plain), 7 * DATA_LEN);
        let back: Vec<Entry> = plain
            .iter()
            .flat_map(|r| decode(&r.payload).expect("decodes"))
            .collect();
        let untagged: Vec<Entry> = entries
            .iter()
            .map(|e| match *e {
                Entry::Intent {
                    phys, within, crc, ..
                } => Entry::Intent {
                    phys,
                    within,
                    crc,
                    head: None,
                },
                e => e,
            })
            .collect();
        assert_eq!(back, untagged);
        let mut one = Vec::new();
        intent(1, 0, Some(3)).encode(&mut one);
        assert!(decode(&one[..INTENT_HEAD_LEN - 1]).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { failure_persistence: None, ..Default::default() })]
        /// Any payload (a record's bytes are checksummed, but a bug or a
        /// forged block must not crash the replay) decodes or is refused.
        #[test]
        fn any_payload_decodes_or_is_refused(bytes in proptest::collection::vec(0u8..10, 0..600)) {
            let _ = decode(&bytes);
        }
    }
}
