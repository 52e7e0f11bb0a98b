//! The background job of a layout change: resync of a new raid1 mirror, or
//! restripe of a raid0/raid5 array onto one more member (md's "reshape").
//!
//! Array addresses never change: byte `x` of the array is in the new layout
//! when `x < pos`, in the old one otherwise. A step moves whole rows of the
//! new layout with client I/O paused (the gate is held for write, a few
//! milliseconds), flushes, and commits `pos` with the metadata. Crash safety
//! of a restripe rests on one rule: a step writing new rows `r1..r2` may only
//! overwrite old rows whose data is already below the committed `pos`, i.e.
//! `r2 * old_width <= pos`. Then the step's source (old rows at or past
//! `r2`) is intact, and redoing it after a crash gives the same result.
//! The first rows cannot satisfy the rule (`pos` is 0), so their data is
//! first saved to the new member (which holds nothing yet), the checkpoint
//! says so, and after a crash they are rewritten from that copy (on raid5
//! also saved through the old layout, so a crash then does not need the
//! new member: `backup`).
//!
//! A member lost during the job does not stop it where the level's
//! redundancy covers the loss (`degraded_step`): the job ends degraded, and
//! `pool replace` then restores the redundancy.

use super::Pool;
use crate::error::{Error, Result};
use crate::raid::{ArrayState, Geometry, Transition, TransitionKind};
use crate::thin::store::superblock::{
    SbTransition, PHASE_BACKUP, PHASE_DONE, PHASE_MAIN, PHASE_START, TRANSITION_REBUILD,
    TRANSITION_RESTRIPE, TRANSITION_RESYNC, TRANSITION_SHRINK,
};
use crate::thin::ThinPool;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

mod backup;
mod degraded;
use degraded::{abandon_resync, degraded_step, unstarted, Degraded};

/// Bytes moved per step (client I/O waits for one step at most).
pub const STEP_BYTES: u64 = 8 << 20;

#[derive(Default)]
pub(crate) struct JobControl {
    pub paused: bool,
    pub running: bool,
    /// Array bytes per second at most (0: no limit).
    pub rate_limit: u64,
    /// When this process started working on the job, and the bytes it has
    /// moved since.
    started: Option<Instant>,
    pub(crate) moved: u64,
}

/// A running layout change, as `pool status` and `job list` show it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct JobInfo {
    pub pool: String,
    /// `resync` (new mirror), `reshape` (restripe onto a new member),
    /// `evacuate` or `remove` (the two phases of `pool remove`), `rebuild`
    /// (a replaced or cleared member).
    pub kind: String,
    /// running, paused or waiting (no process is working on it).
    pub state: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub percent: f64,
    /// Bytes per second moved since this process started the job.
    pub rate: u64,
    pub eta_seconds: Option<u64>,
    /// What a send or receive moves (`pool/volume@snapshot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<String>,
}

impl Pool {
    /// The layout change in progress, if any.
    pub fn job(&self) -> Option<JobInfo> {
        let sbt = self.s.thin.meta.read().transition()?;
        let (kind, done, total) = self.job_progress(&sbt);
        let ctl = self.s.job.lock();
        let rate = match ctl.started {
            Some(at) if at.elapsed().as_secs_f64() > 0.5 => {
                (ctl.moved as f64 / at.elapsed().as_secs_f64()) as u64
            }
            _ => 0,
        };
        Some(JobInfo {
            pool: self.name(),
            kind: kind.into(),
            state: if ctl.paused {
                "paused".into()
            } else if ctl.running {
                "running".into()
            } else {
                "waiting".into()
            },
            done_bytes: done,
            total_bytes: total,
            percent: (done as f64 * 100.0 / total.max(1) as f64 * 10.0).floor() / 10.0,
            rate,
            eta_seconds: (rate > 0).then(|| total.saturating_sub(done) / rate),
            volume: None,
        })
    }

    /// (kind, bytes done, bytes in all) of the recorded transition.
    fn job_progress(&self, sbt: &SbTransition) -> (&'static str, u64, u64) {
        match sbt.kind {
            TRANSITION_SHRINK => self.shrink_progress(sbt),
            TRANSITION_RESYNC => ("resync", sbt.pos, self.s.thin.array.capacity()),
            TRANSITION_REBUILD => {
                let (done, total) = self.rebuild_progress(sbt);
                ("rebuild", done, total)
            }
            _ => ("reshape", sbt.pos, self.s.thin.array.capacity()),
        }
    }

    /// Stop (or allow) the background job between steps. A paused job is
    /// taken up again when the pool is next opened.
    pub fn set_job_paused(&self, paused: bool) -> Result<()> {
        if self.s.thin.meta.read().transition().is_none() {
            return Err(Error::NotFound(format!(
                "pool '{}' has no job running",
                self.name()
            )));
        }
        self.s.job.lock().paused = paused;
        Ok(())
    }

    /// Limit the job to `bytes_per_sec` (0: as fast as the members allow).
    pub fn set_job_rate_limit(&self, bytes_per_sec: u64) {
        self.s.job.lock().rate_limit = bytes_per_sec;
    }

    /// Run the job until it completes, `stop` is set or it is paused.
    /// `progress` is called after every step. Returns true when complete.
    pub fn run_job(&self, stop: &AtomicBool, mut progress: impl FnMut(&JobInfo)) -> Result<bool> {
        {
            let mut ctl = self.s.job.lock();
            if ctl.running {
                return Ok(false);
            }
            ctl.running = true;
            ctl.started = Some(Instant::now());
            ctl.moved = 0;
        }
        let thin = &self.s.thin;
        let mut seen = thin.io_count();
        let steps = || loop {
            if stop.load(Ordering::Relaxed) || self.s.job.lock().paused {
                return Ok(false);
            }
            // Clients were active since the last step: after this one, give
            // them twice the time the step held their I/O.
            let busy = thin.io_count() != seen;
            let t0 = Instant::now();
            if self.job_step(STEP_BYTES)? {
                return Ok(true);
            }
            let took = t0.elapsed();
            seen = thin.io_count();
            if let Some(info) = self.job() {
                progress(&info);
                if busy {
                    std::thread::sleep(took * 2);
                }
                self.throttle();
            }
        };
        // A bug in a step ends the job with an error rather than leaving
        // it marked running forever (`job wait` would never return).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(steps))
            .unwrap_or_else(|_| {
                Err(Error::Unavailable(format!(
                    "pool '{}': the job stopped on an internal error (see the daemon's log); `vpool job resume {}` retries it",
                    self.name(),
                    self.name()
                )))
            });
        let mut ctl = self.s.job.lock();
        ctl.running = false;
        ctl.started = None;
        result
    }

    /// Sleep as long as the job is ahead of its rate limit.
    fn throttle(&self) {
        let ctl = self.s.job.lock();
        let (limit, started, moved) = (ctl.rate_limit, ctl.started, ctl.moved);
        drop(ctl);
        if let (true, Some(at)) = (limit > 0, started) {
            let due = moved as f64 / limit as f64;
            let ahead = due - at.elapsed().as_secs_f64();
            if ahead > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(ahead.min(5.0)));
            }
        }
    }

    /// One step of the job. Returns true when there is nothing left to do.
    pub fn job_step(&self, max_bytes: u64) -> Result<bool> {
        let thin = &self.s.thin;
        let _gate = thin.exclusive();
        let Some(sbt) = thin.meta.read().transition() else {
            return Ok(true);
        };
        let st = thin.array.state();
        match degraded_step(&st, &sbt, thin.array.replacing_serves()) {
            Degraded::Go => {}
            Degraded::NewMirrorLost(member) => {
                abandon_resync(thin, member)?;
                return Ok(true);
            }
            Degraded::Refuse(missing)
                if sbt.kind == TRANSITION_RESTRIPE
                    && sbt.phase == PHASE_START
                    && missing == [sbt.old_members as usize] =>
            {
                let what = "is missing; attach it, or";
                return Err(unstarted(&self.name(), missing[0], what));
            }
            Degraded::Refuse(missing) => {
                let names: Vec<String> = missing.iter().map(|i| format!("member {i}")).collect();
                return Err(Error::Unavailable(format!(
                    "pool '{}' cannot finish its layout change with {} missing; attach it and reopen the pool",
                    self.name(),
                    names.join(", ")
                )));
            }
        }
        let moved = if sbt.kind == TRANSITION_SHRINK {
            self.shrink_step(&st, sbt, max_bytes)?
        } else if sbt.kind == TRANSITION_REBUILD {
            self.rebuild_step(&st, sbt, max_bytes)?
        } else {
            let t = st.transition.clone().ok_or_else(|| {
                Error::corrupt("array and metadata disagree on the layout change")
            })?;
            match &t.kind {
                TransitionKind::Resync { member } => {
                    resync_step(thin, &st, *member, sbt, max_bytes)?
                }
                TransitionKind::Restripe { old } => restripe_step(thin, &st, old, sbt, max_bytes)?,
                TransitionKind::Shrink { .. } | TransitionKind::Rebuild { .. } => {
                    return Err(Error::corrupt(
                        "array and metadata disagree on the layout change",
                    ))
                }
            }
        };
        self.s.job.lock().moved += moved;
        // A statement of its own: a guard in the tail expression would
        // outlive the pause above, whose end reads `meta` again.
        let done = thin.meta.read().transition().is_none();
        Ok(done)
    }

    /// At open: a restripe that crashed while rewriting its first (or, when
    /// shrinking, last) rows left them only in the backup copy; put them back
    /// before any I/O. A shrink whose data had all moved finishes its member
    /// table change.
    pub(crate) fn recover_transition(&self) -> Result<()> {
        let thin = &self.s.thin;
        loop {
            let t = thin.meta.read().transition();
            match t {
                Some(t) if t.phase == PHASE_BACKUP => self.job_step(STEP_BYTES)?,
                Some(t) if t.kind == TRANSITION_SHRINK && t.phase == PHASE_DONE => {
                    self.job_step(STEP_BYTES)?
                }
                _ => return Ok(()),
            };
        }
    }
}

pub(super) fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::io(what, e)
}

/// Record the new position (array and metadata) and commit it durably.
fn checkpoint(thin: &ThinPool, st: &ArrayState, mut sbt: SbTransition, pos: u64) -> Result<()> {
    let total = st.geo.capacity();
    let cs = thin.chunk_size;
    let finished = pos >= total;
    {
        let mut meta = thin.meta.write();
        sbt.pos = pos;
        // Space becomes usable as the data moving out of it is done.
        meta.grow_data(cs.whole(if finished { total } else { pos }));
        meta.set_transition((!finished).then_some(sbt));
    }
    let kind = st.transition.as_ref().map(|t| t.kind.clone());
    thin.array.set_transition(
        kind.filter(|_| !finished)
            .map(|kind| Transition { kind, pos }),
    );
    thin.commit_locked()
}

/// Copy the chunks in use in `[from, to)` from the in-sync mirrors to the
/// new one, read through the checksums (`read_used`): a block one mirror's
/// lost or misplaced write left stale is repaired from the other before
/// it is copied, not copied to the new mirror as a second stale copy.
fn resync_step(
    thin: &ThinPool,
    st: &ArrayState,
    member: usize,
    sbt: SbTransition,
    max_bytes: u64,
) -> Result<u64> {
    let cs = thin.chunk_size;
    let total = st.geo.capacity();
    let from = sbt.pos;
    let to = (from + max_bytes.max(cs.bytes())).min(total);
    let dev = st.members[member]
        .clone()
        .ok_or_else(|| Error::Unavailable("new mirror missing".into()))?;
    let mut buf = vec![0u8; cs.bytes() as usize];
    for c in cs.chunk_of(from)..cs.count(to) {
        if !thin.meta.read().data.in_use(crate::units::Chunk(c)) {
            continue;
        }
        let off = cs.start(c);
        let len = cs.bytes().min(total - off) as usize;
        read_used(thin, off, off + len as u64, &mut buf[..len])?;
        if let Err(e) = dev.write_at(&buf[..len], st.geo.data_start + off) {
            // The new mirror fails: the others still hold everything.
            thin.array
                .fail_member(member, &format!("writing the new mirror: {e}"));
            abandon_resync(thin, member)?;
            return Ok(off - from);
        }
    }
    checkpoint(thin, st, sbt, to)?;
    Ok(to - from)
}

/// Read array bytes `[from, to)` in the old layout into `buf`, reading only
/// chunks in use (the rest is left zero: its content does not matter, and
/// zeros keep RAID5 parity right). Read through the checksums: a block a
/// member's lost or misplaced write left stale is repaired from its other
/// copy (a raid5 row's parity) before it is moved, not carried into the
/// new layout, whose parity would then vouch for it. A block no copy of
/// which is good is moved as it stands (its checksum still tells).
pub(super) fn read_used(thin: &ThinPool, from: u64, to: u64, buf: &mut [u8]) -> Result<()> {
    let cs = thin.chunk_size;
    let mut pos = from;
    while pos < to {
        let c = cs.chunk_of(pos);
        let end = cs.start(c + 1).min(to);
        let chunk = crate::units::Chunk(c);
        if thin.meta.read().data.in_use(chunk) {
            let piece = &mut buf[(pos - from) as usize..(end - from) as usize];
            if thin.read_chunk(chunk, pos - cs.start(c), piece).is_err() {
                thin.array
                    .read(pos, piece)
                    .map_err(io("reading the data to move"))?;
            }
        }
        pos = end;
    }
    Ok(())
}

fn restripe_step(
    thin: &ThinPool,
    st: &ArrayState,
    old: &Geometry,
    mut sbt: SbTransition,
    max_bytes: u64,
) -> Result<u64> {
    let new = &st.geo;
    let su = new.stripe_unit;
    let (ow, nw) = (old.stripe_width(), new.stripe_width());
    let old_end = old.capacity();
    let total = new.capacity();
    let new_member = old.members();
    match sbt.phase {
        PHASE_START | PHASE_BACKUP => {
            let dev = st.members[new_member].clone();
            // The first rows: through a copy on the new member.
            let d = old.data_members();
            let len = d * nw;
            let backup_at = new.data_start + d * su;
            // The copy takes new-member rows d..d+len/su, below the rows the
            // first steps write; `add_member` checked they exist (`backup_rows`).
            let mut buf = vec![0u8; len as usize];
            if sbt.phase == PHASE_START {
                // `job_step` refuses the step without it.
                let dev = dev.ok_or_else(|| Error::Unavailable("new member missing".into()))?;
                read_used(thin, 0, len.min(old_end), &mut buf)?;
                // It holds nothing before this step is recorded. Failed for
                // good (a failed flush is never retried into success): a
                // hot spare or `pool replace` takes its place as it is.
                let failed = |e: std::io::Error| {
                    thin.array.fail_member(new_member, &e.to_string());
                    let pool = thin.meta.read().blocks.pool_name.clone();
                    unstarted(&pool, new_member, &format!("failed ({e});"))
                };
                dev.write_at(&buf, backup_at).map_err(failed)?;
                dev.flush().map_err(failed)?;
                sbt.backup_copy = backup::save_copy(thin, old, &buf)?;
                sbt.phase = PHASE_BACKUP;
                sbt.backup_offset = backup_at;
                sbt.backup_len = len;
                thin.meta.write().set_transition(Some(sbt));
                thin.commit_locked()?;
            } else {
                backup::read_saved(thin, dev.as_ref(), &sbt, &mut buf)?;
            }
            thin.array.set_transition(Some(Transition {
                kind: TransitionKind::Restripe { old: old.clone() },
                pos: len,
            }));
            thin.array
                .write(0, &buf)
                .map_err(io("writing the first rows"))?;
            backup::drop_copy(thin, &mut sbt)?;
            sbt.phase = PHASE_MAIN;
            checkpoint(thin, st, sbt, len)?;
            Ok(len)
        }
        _ => {
            let pos = sbt.pos;
            let r1 = pos / nw;
            let rows = total / nw;
            // The rule: new rows below r2 overwrite only old rows already moved.
            let r2 = (pos / ow).min(r1 + (max_bytes / nw).max(1)).min(rows);
            if r2 <= r1 {
                return Err(Error::corrupt(format!(
                    "reshape checkpoint {pos} does not allow progress"
                )));
            }
            let (from, to) = (r1 * nw, r2 * nw);
            let mut buf = vec![0u8; (to - from) as usize];
            if from < old_end {
                read_used(thin, from, to.min(old_end), &mut buf)?;
            }
            thin.array.set_transition(Some(Transition {
                kind: TransitionKind::Restripe { old: old.clone() },
                pos: to,
            }));
            thin.array
                .write(from, &buf)
                .map_err(io("writing reshaped rows"))?;
            checkpoint(thin, st, sbt, to)?;
            Ok(to - from)
        }
    }
}
