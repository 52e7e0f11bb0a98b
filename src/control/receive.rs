//! `vpool snap receive`: a send stream into a hidden volume, which its
//! last step (one transaction) makes the target, with the sent snapshot.
//! A receive that stops part way keeps what it received up to its last
//! checkpoint, and a resume token for the sender (`snap send --resume`),
//! as `zfs receive -s` does; `--abort` drops it.

use super::send::Token;
use super::stream::{Header, Kind, Reader, Record, FLAG_RESUMED};
use super::{Engine, Response};
use crate::error::Error;
use crate::pool::names::{receiving_name, VolPath};
use crate::pool::Pool;
use crate::units::format_size;
use anyhow::bail;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How a receive goes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ReceiveOpts {
    /// `pool/volume`.
    pub target: String,
    /// The stream continues a kept partial receive (`snap send --resume`).
    #[serde(default)]
    pub resume: bool,
    /// An incremental onto a volume written since its base: drop those
    /// writes.
    #[serde(default)]
    pub force: bool,
}

/// Commit and record progress this often.
const CHECKPOINT_BYTES: u64 = 64 << 20;
const CHECKPOINT_TIME: Duration = Duration::from_secs(5);

/// A kept partial receive, by `pool/volume`, in `receive.json` of the
/// state directory (beside the hidden volume in the pool).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Partial {
    pub stream_id: [u8; 16],
    pub volume_uuid: [u8; 16],
    pub snapshot_uuid: [u8; 16],
    pub base_uuid: [u8; 16],
    pub snapshot: String,
    pub volume_size: u64,
    /// Everything before this byte is received and committed.
    pub offset: u64,
    pub data_bytes: u64,
}

impl Partial {
    pub fn token(&self) -> String {
        Token {
            stream_id: self.stream_id,
            snapshot_uuid: self.snapshot_uuid,
            base_uuid: self.base_uuid,
            offset: self.offset,
        }
        .encode()
    }
}

type Partials = BTreeMap<String, Partial>;

fn partials_file(state: &Path) -> PathBuf {
    state.join("receive.json")
}

fn load(state: &Path) -> anyhow::Result<Partials> {
    Ok(crate::state::read_json(
        &partials_file(state),
        "remove it and abort kept receives with `vpool snap receive POOL/VOL --abort`",
    )?)
}

/// Record (or with `None`, forget) the kept receive of `key`.
fn save(state: &Path, key: &str, p: Option<&Partial>) -> anyhow::Result<()> {
    // One writer at a time: several receives may run in one daemon.
    static LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());
    let _l = LOCK.lock();
    let mut all = load(state)?;
    match p {
        Some(p) => all.insert(key.to_string(), p.clone()),
        None => all.remove(key),
    };
    Ok(crate::state::write_json(&partials_file(state), &all)?)
}

/// How to go on from a kept receive.
fn advice(target: &str, p: &Partial) -> String {
    format!(
        "the part received ({} of {}) is kept: send the rest with `vpool snap send --resume {}` into `vpool snap receive {target} --resume`, or drop it with `vpool snap receive {target} --abort`",
        format_size(p.offset),
        format_size(p.volume_size),
        p.token()
    )
}

/// The resume token of a kept receive into `target`.
pub fn token(engine: &dyn Engine, target: &str) -> anyhow::Result<Response> {
    let p = VolPath::parse_volume(target)?;
    let kept = load(engine.state_dir())?;
    let Some(part) = kept.get(&p.to_string()) else {
        bail!(Error::NotFound(format!(
            "no partial receive into '{p}' is kept"
        )));
    };
    Ok(Response {
        message: Some(part.token()),
        data: serde_json::json!({"token": part.token(), "offset": part.offset, "volume_size": part.volume_size}),
        ..Default::default()
    })
}

/// Drop a kept receive into `target`.
pub fn abort(engine: &dyn Engine, target: &str) -> anyhow::Result<Response> {
    let p = VolPath::parse_volume(target)?;
    let pool = engine.pool(&p.pool)?;
    let had_volume = pool.receive_abort(&receiving_name(&p.volume))?;
    let had_state = load(engine.state_dir())?.contains_key(&p.to_string());
    save(engine.state_dir(), &p.to_string(), None)?;
    if !had_volume && !had_state {
        bail!(Error::NotFound(format!(
            "no partial receive into '{p}' is kept"
        )));
    }
    Ok(Response {
        message: Some(format!("dropped the partial receive into '{p}'")),
        ..Default::default()
    })
}

/// Receive the stream on `input` into `opts.target`.
pub fn receive(
    engine: &dyn Engine,
    opts: &ReceiveOpts,
    input: &mut dyn Read,
) -> anyhow::Result<Response> {
    let p = VolPath::parse_volume(&opts.target)?;
    let key = p.to_string();
    let state = engine.state_dir().to_path_buf();
    let pool = engine.pool(&p.pool)?;
    let hidden = receiving_name(&p.volume);
    let mut reader = Reader::begin(input)?;
    let h = reader.header.clone();
    let kept = load(&state)?.remove(&key);
    let resumed = h.flags & FLAG_RESUMED != 0;
    let mut part = match (kept, resumed) {
        (Some(k), true) => {
            if !opts.resume {
                bail!(Error::Invalid(format!(
                    "this stream continues a partial receive: repeat with `vpool snap receive {key} --resume`"
                )));
            }
            if (k.stream_id, k.snapshot_uuid, k.base_uuid) != (h.stream_id, h.snapshot_uuid, h.base_uuid) {
                bail!(Error::Invalid(format!(
                    "this stream does not continue the receive kept for '{key}' (another snapshot or stream); {}",
                    advice(&key, &k)
                )));
            }
            if h.resume_offset != k.offset {
                bail!(Error::Invalid(format!(
                    "this stream resumes at byte {} but the receive kept for '{key}' stopped at byte {}: send with the token it gives now; {}",
                    h.resume_offset,
                    k.offset,
                    advice(&key, &k)
                )));
            }
            if !pool.has_volume(&hidden) {
                bail!(Error::NotFound(format!(
                    "the partly received volume of '{key}' is gone from the pool: drop the record with `vpool snap receive {key} --abort` and send the whole stream again"
                )));
            }
            k
        }
        (None, true) => bail!(Error::Invalid(format!(
            "this stream continues a partial receive, but none is kept for '{key}': send the whole stream again"
        ))),
        (Some(k), false) => bail!(Error::InUse(format!(
            "a partial receive into '{key}' is kept; {}",
            advice(&key, &k)
        ))),
        (None, false) => {
            if opts.resume {
                bail!(Error::Invalid(
                    "--resume takes a stream sent with `vpool snap send --resume TOKEN`; this one is a new stream".into()
                ));
            }
            if pool.has_volume(&hidden) {
                bail!(Error::InUse(format!(
                    "a partial receive into '{key}' is in the pool, but this state directory has no record of how far it got (it was made on another host, or the directory was replaced): drop it with `vpool snap receive {key} --abort`, then send again"
                )));
            }
            begin(&pool, &p.volume, &hidden, &h, opts.force)?;
            let part = Partial {
                stream_id: h.stream_id,
                volume_uuid: h.volume_uuid,
                snapshot_uuid: h.snapshot_uuid,
                base_uuid: h.base_uuid,
                snapshot: h.snapshot.clone(),
                volume_size: h.volume_size,
                offset: 0,
                data_bytes: h.data_bytes,
            };
            save(&state, &key, Some(&part))?;
            part
        }
    };
    let vol = pool.volume(&hidden, None)?;
    let what = format!("{key}@{}", h.snapshot);
    let job = pool.transfer("receive", &what, h.data_bytes);
    let mut bar = engine.progress(&format!("receiving {what}"), h.data_bytes);
    // The stream is read and checked here while a thread of its own writes
    // what came before (a receive is then bound by the slower of the two,
    // not by their sum). Records go to it in order.
    let (applied, done_to) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Record>(APPLY_AHEAD);
        let (vol, pool, state, key, part) = (&vol, &pool, &state, &key, &mut part);
        let start = reader.next_offset;
        let writer = scope.spawn(move || {
            apply(vol, rx, start, |done_to| {
                checkpoint(pool, state, key, part, done_to)
            })
        });
        let read = loop {
            match reader.next_record() {
                Ok(Some(r)) => {
                    if tx.send(r).is_err() {
                        break Ok(());
                    }
                    job.set(reader.data_bytes);
                    bar.set(reader.data_bytes);
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        drop(tx);
        let (written, done_to) = writer
            .join()
            .unwrap_or_else(|_| (Err(anyhow::anyhow!("the receive's writer panicked")), start));
        (written.and(read), done_to)
    });
    if let Err(e) = applied {
        // What came before the bad record is good: keep it for a resume.
        let _ = checkpoint(&pool, &state, &key, &mut part, done_to);
        return Err(e.context(advice(&key, &part)));
    }
    bar.finish();
    let base = (h.base_uuid != [0; 16]).then_some(h.base_uuid);
    pool.receive_finish(
        &hidden,
        &p.volume,
        &h.snapshot,
        h.snapshot_uuid,
        base,
        opts.force,
    )?;
    save(&state, &key, None)?;
    Ok(Response {
        message: Some(format!(
            "received {what}{} ({} of data)",
            if h.incremental() {
                format!(" (incremental from @{})", h.base)
            } else {
                String::new()
            },
            format_size(reader.data_bytes)
        )),
        ..Default::default()
    })
}

/// Checks before anything is written, and the hidden volume.
fn begin(pool: &Pool, volume: &str, hidden: &str, h: &Header, force: bool) -> anyhow::Result<()> {
    if !h.incremental() {
        if pool.has_volume(volume) {
            bail!(Error::Exists(format!(
                "volume '{}/{volume}': a full stream makes a new volume (send an incremental with --from, or receive under another name)",
                pool.name()
            )));
        }
        pool.receive_begin(hidden, h.volume_size, None)?;
        return Ok(());
    }
    let latest = pool.latest_snapshot(volume)?;
    pool.check_receive_base(volume, &h.base_uuid, force)?;
    let base = latest.map(|l| l.name).unwrap_or_default();
    pool.receive_begin(hidden, h.volume_size, Some((volume, &base)))?;
    Ok(())
}

/// Records read ahead of the writer.
const APPLY_AHEAD: usize = 4;

/// Write records from `rx` in order into `vol`, with a checkpoint every
/// [`CHECKPOINT_BYTES`] or [`CHECKPOINT_TIME`]. Returns how it ended and
/// the end of the last record written (where a resume starts).
fn apply(
    vol: &crate::Volume,
    rx: std::sync::mpsc::Receiver<Record>,
    start: u64,
    mut checkpoint: impl FnMut(u64) -> anyhow::Result<()>,
) -> (anyhow::Result<()>, u64) {
    let (mut since, mut at, mut done_to) = (0u64, Instant::now(), start);
    for rec in rx {
        let r = match rec.kind {
            Kind::Data => vol.write_at(&rec.payload, rec.offset),
            _ => vol.discard(rec.offset, rec.len),
        };
        if let Err(e) = r {
            return (Err(e.into()), done_to);
        }
        done_to = rec.offset + rec.len;
        since += rec.len.min(1 << 20) + rec.payload.len() as u64;
        if since >= CHECKPOINT_BYTES || at.elapsed() >= CHECKPOINT_TIME {
            if let Err(e) = checkpoint(done_to) {
                return (Err(e), done_to);
            }
            (since, at) = (0, Instant::now());
        }
    }
    (Ok(()), done_to)
}

/// Make what was received durable, then record how far it goes.
fn checkpoint(
    pool: &Pool,
    state: &Path,
    key: &str,
    part: &mut Partial,
    offset: u64,
) -> anyhow::Result<()> {
    pool.commit()?;
    part.offset = offset;
    save(state, key, Some(part))
}
