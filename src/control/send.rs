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
            let vol = name.0.rsplit('/').next().unwrap_or_default();
            if !vol.is_empty() && vol != p.volume {
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
    let mut body = || -> anyhow::Result<()> {
        for r in &runs {
            let (from, to) = ((r.first * cs).max(start), end_of(r.first, r.count));
            if from >= to {
                continue;
            }
            if r.change == ChunkChange::Removed {
                w.record(Kind::Discard, from, to - from, &[])?;
                continue;
            }
            let old = (r.change == ChunkChange::Changed)
                .then_some(old.as_ref())
                .flatten();
            send_range(&mut w, &new, old, from, to)?;
            job.set(w.data_bytes);
            bar.set(w.data_bytes);
        }
        Ok(())
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

/// Records for bytes `[from, to)` of `new`, leaving out 4 KiB blocks that
/// read as zeros where the receiver has zeros (no `old`), or that equal
/// `old`'s.
fn send_range(
    w: &mut Writer<&mut dyn Write>,
    new: &Volume,
    old: Option<&Volume>,
    from: u64,
    to: u64,
) -> anyhow::Result<()> {
    const B: usize = 4096;
    let mut buf = vec![0u8; MAX_PAYLOAD];
    let mut obuf = vec![0u8; if old.is_some() { MAX_PAYLOAD } else { 0 }];
    let mut pos = from;
    while pos < to {
        let n = ((to - pos) as usize).min(MAX_PAYLOAD);
        new.read_at(&mut buf[..n], pos)?;
        if let Some(o) = old {
            o.read_at(&mut obuf[..n], pos)?;
        }
        // Classify each block: 0 skip, 1 zeros, 2 data; runs become records.
        let class = |i: usize| -> u8 {
            let blk = &buf[i * B..((i + 1) * B).min(n)];
            if old.is_some() && blk == &obuf[i * B..((i + 1) * B).min(n)] {
                0
            } else if blk.iter().all(|&x| x == 0) {
                if old.is_some() {
                    1
                } else {
                    0
                }
            } else {
                2
            }
        };
        let blocks = n.div_ceil(B);
        let mut i = 0;
        while i < blocks {
            let c = class(i);
            let mut j = i + 1;
            while j < blocks && class(j) == c {
                j += 1;
            }
            let (a, b) = (i * B, (j * B).min(n));
            let at = pos + a as u64;
            match c {
                1 => w.record(Kind::Zero, at, (b - a) as u64, &[])?,
                2 => w.record(Kind::Data, at, (b - a) as u64, &buf[a..b])?,
                _ => {}
            }
            i = j;
        }
        pos += n as u64;
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
