//! `vpool snap send` and `vpool vol diff`: a snapshot, or what changed
//! between two snapshots of a volume, as a stream (see [`super::stream`])
//! or as byte ranges. Only chunks whose mapping differs are read (see
//! `Pool::changes`); within a chunk written since the base, 4 KiB blocks
//! that still hold the base's bytes are left out.

use super::stream::{Header, Kind, Writer, FLAG_INCREMENTAL, FLAG_RESUMED, MAX_PAYLOAD};
use super::Engine;
use crate::error::Error;
use crate::pool::names::VolPath;
use crate::pool::{ChunkChange, Pool, SnapshotId};
use crate::Volume;
use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use std::io::Write;

/// What to send.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SendSpec {
    /// `pool/volume@snapshot` (optional with `resume`).
    #[serde(default)]
    pub path: Option<String>,
    /// The base of an incremental: `@older`, `volume@older` or
    /// `pool/volume@older`.
    #[serde(default)]
    pub from: Option<String>,
    /// A receiver's resume token: send what it lacks.
    #[serde(default)]
    pub resume: Option<String>,
}

/// What a receiver kept of an interrupted stream: enough to send the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub stream_id: [u8; 16],
    pub snapshot_uuid: [u8; 16],
    pub base_uuid: [u8; 16],
    pub offset: u64,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Token {
    /// `1-` and the hex of its fields and their CRC32.
    pub fn encode(&self) -> String {
        let mut b = Vec::with_capacity(60);
        b.extend_from_slice(&self.stream_id);
        b.extend_from_slice(&self.snapshot_uuid);
        b.extend_from_slice(&self.base_uuid);
        b.extend_from_slice(&self.offset.to_le_bytes());
        let c = crc32fast::hash(&b);
        b.extend_from_slice(&c.to_le_bytes());
        format!("1-{}", hex(&b))
    }

    pub fn decode(s: &str) -> anyhow::Result<Token> {
        let bad = || {
            Error::Invalid(format!(
                "'{s}' is not a resume token (`vpool snap receive POOL/VOL --token` prints one)"
            ))
        };
        let h = s.trim().strip_prefix("1-").ok_or_else(bad)?;
        if h.len() != 120 || !h.is_ascii() {
            bail!(bad());
        }
        let b: Vec<u8> = (0..60)
            .map(|i| u8::from_str_radix(&h[2 * i..2 * i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| bad())?;
        if crc32fast::hash(&b[..56]).to_le_bytes() != b[56..60] {
            bail!(bad());
        }
        let id = |o: usize| -> [u8; 16] { b[o..o + 16].try_into().unwrap_or_default() };
        Ok(Token {
            stream_id: id(0),
            snapshot_uuid: id(16),
            base_uuid: id(32),
            offset: u64::from_le_bytes(b[48..56].try_into().unwrap_or_default()),
        })
    }
}

/// The pool, snapshot and base a spec names.
fn resolve(
    engine: &dyn Engine,
    spec: &SendSpec,
) -> anyhow::Result<(Pool, SnapshotId, Option<SnapshotId>, Option<Token>)> {
    if let Some(t) = &spec.resume {
        let token = Token::decode(t)?;
        for name in engine.pool_names()? {
            let Ok(pool) = engine.pool(&name) else {
                continue;
            };
            let Some(snap) = pool.find_snapshot(&token.snapshot_uuid) else {
                continue;
            };
            let base = if token.base_uuid == [0; 16] {
                None
            } else {
                let b = pool
                    .find_snapshot(&token.base_uuid)
                    .filter(|b| b.volume == snap.volume);
                Some(b.ok_or_else(|| {
                    Error::NotFound(format!(
                        "the resume token's base snapshot is no longer in pool '{name}': send the whole stream again (and `vpool snap receive ... --abort` the kept one)"
                    ))
                })?)
            };
            return Ok((pool, snap, base, Some(token)));
        }
        bail!(Error::NotFound(
            "the resume token names a snapshot no pool here holds (it was removed, or the token is from another host)".into()
        ));
    }
    let path = spec.path.as_deref().ok_or_else(|| {
        Error::Invalid("name the snapshot to send (POOL/VOL@SNAP), or give --resume TOKEN".into())
    })?;
    let p = VolPath::parse_snapshot(path)?;
    let pool = engine.pool(&p.pool)?;
    let snap = pool.snapshot_identity(&p.volume, p.snapshot.as_deref().unwrap_or_default())?;
    let base = match &spec.from {
        None => None,
        Some(f) => {
            let name = f.rsplit_once('@').ok_or_else(|| {
                Error::Invalid(format!("--from '{f}' names no snapshot: give @SNAP"))
            })?;
            let (pool_part, vol) = name.0.rsplit_once('/').unwrap_or(("", name.0));
            if (!vol.is_empty() && vol != p.volume)
                || (!pool_part.is_empty() && pool_part != p.pool)
            {
                bail!(Error::Invalid(format!(
                    "--from '{f}' is not a snapshot of '{}/{}': an incremental goes between two snapshots of one volume",
                    p.pool, p.volume
                )));
            }
            Some(pool.snapshot_identity(&p.volume, name.1)?)
        }
    };
    Ok((pool, snap, base, None))
}

/// Refuse a spec that names nothing to send (before a stream starts).
pub fn check(engine: &dyn Engine, spec: &SendSpec) -> anyhow::Result<()> {
    resolve(engine, spec).map(|_| ())
}

/// Write the stream `spec` names to `out`. Returns the summary line.
pub fn send(engine: &dyn Engine, spec: &SendSpec, out: &mut dyn Write) -> anyhow::Result<String> {
    let (pool, snap, base, token) = resolve(engine, spec)?;
    let what = format!("{}/{}@{}", pool.name(), snap.volume, snap.name);
    let runs = pool.changes(
        &snap.volume,
        base.as_ref().map(|b| b.name.as_str()),
        &snap.name,
    )?;
    let cs = pool.chunk_size();
    let start = token.as_ref().map_or(0, |t| t.offset);
    let end_of = |first: u64, count: u64| ((first + count) * cs).min(snap.size);
    let data_bytes: u64 = runs
        .iter()
        .filter(|r| r.change != ChunkChange::Removed)
        .map(|r| end_of(r.first, r.count).saturating_sub((r.first * cs).max(start)))
        .sum();
    let header = Header {
        flags: if base.is_some() { FLAG_INCREMENTAL } else { 0 }
            | if token.is_some() { FLAG_RESUMED } else { 0 },
        stream_id: token
            .as_ref()
            .map_or_else(|| *uuid::Uuid::new_v4().as_bytes(), |t| t.stream_id),
        volume_uuid: snap.volume_uuid,
        snapshot_uuid: snap.uuid,
        base_uuid: base.as_ref().map_or([0; 16], |b| b.uuid),
        volume_size: snap.size,
        chunk_size: cs,
        resume_offset: start,
        data_bytes,
        created: snap.created,
        snapshot: snap.name.clone(),
        base: base.as_ref().map(|b| b.name.clone()).unwrap_or_default(),
        volume: snap.volume.clone(),
    };
    let new = pool.volume(&snap.volume, Some(&snap.name))?;
    let old = base
        .as_ref()
        .map(|b| pool.volume(&snap.volume, Some(&b.name)))
        .transpose()?;
    let job = pool.transfer("send", &what, data_bytes);
    let mut bar = engine.progress(&format!("sending {what}"), data_bytes);
    let mut w = Writer::begin(out, &header).context("writing the stream")?;
    // Read ahead on threads of their own, so that the disks work while
    // records are checked, compared and written, and several reads are in
    // flight (a sequential send ran at 0.6x of dd reading the volume's
    // file with none; rewritten chunks scattered over the volume are
    // random reads). Reader `t` reads pieces t, t+K, t+2K... and the
    // writer takes them back in order.
    let mut body = || -> anyhow::Result<()> {
        std::thread::scope(|scope| {
            let (new, old, runs) = (&new, old.as_ref(), &runs);
            let size = snap.size;
            let mut rxs = Vec::new();
            for t in 0..READERS {
                let (tx, rx) = std::sync::mpsc::sync_channel::<anyhow::Result<Piece>>(READ_AHEAD);
                rxs.push(rx);
                scope.spawn(move || {
                    for job in plan(runs, cs, start, size).skip(t).step_by(READERS) {
                        let piece = read_piece(new, old, job);
                        let failed = piece.is_err();
                        if tx.send(piece).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            for i in 0..plan(runs, cs, start, size).count() {
                let piece = rxs[i % READERS]
                    .recv()
                    .map_err(|_| anyhow::anyhow!("a reader of the send stopped"))?;
                write_piece(&mut w, piece?)?;
                job.set(w.data_bytes);
                bar.set(w.data_bytes);
            }
            Ok(())
        })
    };
    match body() {
        Ok(()) => {
            let bytes = w.data_bytes;
            w.end().context("writing the stream")?;
            bar.finish();
            Ok(format!(
                "sent {what}{} ({} of data)",
                base.map(|b| format!(" from @{}", b.name))
                    .unwrap_or_default(),
                crate::units::format_size(bytes)
            ))
        }
        Err(e) => {
            let _ = w.error(&format!("{e:#}"));
            Err(e)
        }
    }
}

/// Threads reading ahead of the writer, and pieces each may hold.
const READERS: usize = 4;
const READ_AHEAD: usize = 2;

/// A piece of the stream to make: a range discarded since the base, or up
/// to 1 MiB to read (with the base's bytes, for rewritten chunks).
#[derive(Clone, Copy)]
enum Job {
    Discard(u64, u64),
    Read { at: u64, len: usize, with_old: bool },
}

/// The pieces of the stream at or after `start`, in order.
fn plan(
    runs: &[crate::pool::ChangeRun],
    cs: u64,
    start: u64,
    size: u64,
) -> impl Iterator<Item = Job> + '_ {
    runs.iter().flat_map(move |r| {
        let (from, to) = (
            (r.first * cs).max(start),
            ((r.first + r.count) * cs).min(size),
        );
        let removed = r.change == ChunkChange::Removed;
        let step = if removed {
            u64::MAX
        } else {
            MAX_PAYLOAD as u64
        };
        let with_old = r.change == ChunkChange::Changed;
        (from..to)
            .step_by(step.min(usize::MAX as u64) as usize)
            .map(move |at| {
                if removed {
                    Job::Discard(at, to - at)
                } else {
                    Job::Read {
                        at,
                        len: (to - at).min(MAX_PAYLOAD as u64) as usize,
                        with_old,
                    }
                }
            })
    })
}

/// What a reader hands the writer.
enum Piece {
    Discard(u64, u64),
    Bytes {
        at: u64,
        new: Vec<u8>,
        old: Option<Vec<u8>>,
    },
}

fn read_piece(new: &Volume, old: Option<&Volume>, job: Job) -> anyhow::Result<Piece> {
    let (at, len, with_old) = match job {
        Job::Discard(at, len) => return Ok(Piece::Discard(at, len)),
        Job::Read { at, len, with_old } => (at, len, with_old),
    };
    let read = |v: &Volume| -> anyhow::Result<Vec<u8>> {
        let mut b = vec![0u8; len];
        v.read_at(&mut b, at)?;
        Ok(b)
    };
    Ok(Piece::Bytes {
        at,
        new: read(new)?,
        old: old.filter(|_| with_old).map(read).transpose()?,
    })
}

/// Records for a piece, leaving out 4 KiB blocks that read as zeros where
/// the receiver has zeros (no base bytes), or that equal the base's.
fn write_piece(w: &mut Writer<&mut dyn Write>, p: Piece) -> anyhow::Result<()> {
    const B: usize = 4096;
    let (at, new, old) = match p {
        Piece::Discard(at, len) => return Ok(w.record(Kind::Discard, at, len, &[])?),
        Piece::Bytes { at, new, old } => (at, new, old),
    };
    let n = new.len();
    // Each block: 0 skip, 1 zeros, 2 data; runs of one kind become records.
    let class: Vec<u8> = (0..n.div_ceil(B))
        .map(|i| {
            let r = i * B..((i + 1) * B).min(n);
            match &old {
                Some(o) if new[r.clone()] == o[r.clone()] => 0,
                _ if new[r].iter().all(|&x| x == 0) => u8::from(old.is_some()),
                _ => 2,
            }
        })
        .collect();
    let mut i = 0;
    while i < class.len() {
        let c = class[i];
        let j = (i..class.len())
            .find(|&j| class[j] != c)
            .unwrap_or(class.len());
        let (a, b) = (i * B, (j * B).min(n));
        match c {
            1 => w.record(Kind::Zero, at + a as u64, (b - a) as u64, &[])?,
            2 => w.record(Kind::Data, at + a as u64, (b - a) as u64, &new[a..b])?,
            _ => {}
        }
        i = j;
    }
    Ok(())
}

/// One changed range of `vol diff`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ChangedRange {
    pub offset: u64,
    pub length: u64,
    /// `written` (holds new data) or `discarded` (reads as zeros).
    pub change: String,
}

/// The byte ranges of `volume@b` that differ from `volume@a`, at the
/// pool's chunk granularity.
pub fn diff(engine: &dyn Engine, a: &str, b: &str) -> anyhow::Result<Vec<ChangedRange>> {
    let pa = VolPath::parse_snapshot(a)?;
    let pb = VolPath::parse_snapshot(b)?;
    if (&pa.pool, &pa.volume) != (&pb.pool, &pb.volume) {
        bail!(Error::Invalid(format!(
            "'{a}' and '{b}' are not snapshots of one volume: diff compares a volume's snapshots"
        )));
    }
    let pool = engine.pool(&pa.pool)?;
    let new = pool.snapshot_identity(&pb.volume, pb.snapshot.as_deref().unwrap_or_default())?;
    let runs = pool.changes(&pa.volume, pa.snapshot.as_deref(), &new.name)?;
    let cs = pool.chunk_size();
    let mut out: Vec<ChangedRange> = Vec::new();
    for r in runs {
        let change = if r.change == ChunkChange::Removed {
            "discarded"
        } else {
            "written"
        };
        let (offset, end) = (r.first * cs, ((r.first + r.count) * cs).min(new.size));
        if offset >= end {
            continue;
        }
        match out.last_mut() {
            Some(l) if l.change == change && l.offset + l.length == offset => {
                l.length += end - offset
            }
            _ => out.push(ChangedRange {
                offset,
                length: end - offset,
                change: change.into(),
            }),
        }
    }
    Ok(out)
}
