//! The flush log's entries: what a record holds, how it is encoded in a
//! log block (see docs/FORMAT.md, "Flush log"), and how a round's entries
//! and journaled blocks are packed into records.

use crate::meta::codec::{get_u32, get_u64, put_u32, put_u64};
use crate::thin::store::csum::{Group, CSUM_GROUP};
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
    /// overwritten in place with bytes whose checksum is `crc`.
    Intent {
        phys: Chunk,
        within: u64,
        crc: u32,
    },
}

const MAP: u8 = 1;
const UNMAP: u8 = 2;
const CSUM: u8 = 3;
const DATA: u8 = 4;
const INTENT: u8 = 5;
/// Length of a `Data` or `Intent` entry.
const DATA_LEN: usize = 21;

impl Entry {
    fn len(&self) -> usize {
        match self {
            Entry::Map { .. } => 25,
            Entry::Unmap { .. } => 17,
            Entry::Csum { .. } => 9 + 4 * CSUM_GROUP,
            Entry::Data { .. } | Entry::Intent { .. } => DATA_LEN,
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
            Entry::Data { phys, within, crc } | Entry::Intent { phys, within, crc } => {
                b[0] = if matches!(self, Entry::Data { .. }) {
                    DATA
                } else {
                    INTENT
                };
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
            DATA | INTENT => DATA_LEN,
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
            INTENT => Entry::Intent {
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
pub(crate) struct Unit<'a> {
    pub(crate) payload: Vec<u8>,
    pub(crate) data: Vec<&'a [u8]>,
}

/// Entries packed into record payloads of at most a log block each, then
/// the journaled blocks' `Data` entries, each record followed by the
/// blocks its entries name.
pub(crate) fn pack<'a>(entries: &[Entry], blocks: &[(Entry, &'a [u8])]) -> Vec<Unit<'a>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::thin::store::csum::CSUM_BLOCK;

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
            });
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
