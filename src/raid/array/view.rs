//! The I/O routines of one layout over a set of members: reads (from a
//! mirror, or reconstructed from parity), writes (mirrored, full-stripe or
//! read-modify-write RAID5), rebuilds; member errors go to `Health`.
//! `Array` makes a view per layout and splits each I/O between them.

use super::super::geometry::{Geometry, RaidLevel};
use super::super::health::{Dir, Fault, FaultResult, Health};
use super::super::parity::xor_into;
use super::rcw::Vouch;
use super::{missing, PARALLEL_READ_MIN, STRIPE_LOCKS};
use crate::device::DeviceRef;
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Where extent `e`'s bytes are in the caller's buffer.
fn piece_range(e: &super::super::geometry::Extent) -> std::ops::Range<usize> {
    e.buf_offset as usize..(e.buf_offset + e.len) as usize
}

/// A striped request's pieces in runs that are one vectored I/O each:
/// pieces on one member, each starting on the member where the run's
/// last ended (a raid0 request over several rows: one run per member).
/// Returns the run of each piece and the number of runs; runs are
/// numbered in order of their first piece.
fn member_runs(pieces: &[super::super::geometry::Extent]) -> (Vec<usize>, usize) {
    // (member, where its run ends on it, the run's number), open runs.
    let mut open: Vec<(usize, u64, usize)> = Vec::new();
    let mut run_of = Vec::with_capacity(pieces.len());
    let mut runs = 0;
    for e in pieces {
        match open
            .iter_mut()
            .find(|(m, end, _)| *m == e.member && *end == e.offset)
        {
            Some((_, end, r)) => {
                *end += e.len;
                run_of.push(*r);
            }
            None => {
                open.retain(|(m, _, _)| *m != e.member);
                open.push((e.member, e.offset + e.len, runs));
                run_of.push(runs);
                runs += 1;
            }
        }
    }
    (run_of, runs)
}

/// One layout over a set of members: where the I/O routines work.
pub(super) struct View<'a> {
    pub(super) geo: &'a Geometry,
    pub(super) members: &'a [Option<DeviceRef>],
    /// A mirror not to read from (being resynced).
    pub(super) no_read: Option<usize>,
    /// A member left out entirely (not yet rebuilt at these addresses).
    pub(super) absent: Option<usize>,
    /// Member indices are the pool's (not during a shrink): members may
    /// be failed on errors.
    pub(super) tolerant: bool,
    pub(super) health: &'a Health,
    pub(super) locks: &'a [Mutex<()>],
    pub(super) next_mirror: &'a AtomicUsize,
    /// The member index a device being replaced serves in this view: its
    /// errors set `shadow_failed` (which leaves it out from then on)
    /// instead of failing the member, whose index the new device holds.
    pub(super) shadow: Option<usize>,
    pub(super) shadow_failed: &'a AtomicBool,
}

impl View<'_> {
    pub(super) fn dev(&self, m: usize) -> Option<&DeviceRef> {
        if Some(m) == self.shadow && self.shadow_failed.load(Ordering::Acquire) {
            return None;
        }
        if Some(m) == self.absent || (self.tolerant && self.health.is_failed(m)) {
            return None;
        }
        self.members[m].as_ref()
    }

    /// Whether the array can go on without member `m` (which just failed).
    pub(super) fn can_fail(&self, m: usize) -> bool {
        if !self.tolerant {
            return false;
        }
        let others = (0..self.members.len()).filter(|&i| i != m);
        match self.geo.level {
            RaidLevel::Raid1 => others
                .filter(|&i| Some(i) != self.no_read)
                .any(|i| self.dev(i).is_some()),
            RaidLevel::Raid5 => others.clone().all(|i| self.dev(i).is_some()),
            RaidLevel::Linear | RaidLevel::Raid0 => false,
        }
    }

    /// One member I/O, retried once. A member that fails twice is failed
    /// when the array can do without it ([`Fault::MemberFailed`]: redo the
    /// work degraded); otherwise the error stands, and a redundant pool
    /// stops taking writes.
    pub(super) fn io(
        &self,
        m: usize,
        dev: &DeviceRef,
        dir: Dir,
        at: Option<u64>,
        f: impl FnMut() -> io::Result<()>,
    ) -> FaultResult<()> {
        let Err(e) = self.health.attempt(m, dir, f) else {
            return Ok(());
        };
        if Some(m) == self.shadow && e.kind() != io::ErrorKind::InvalidInput {
            // Redo without the replaced device (see `View::shadow`).
            if !self.shadow_failed.swap(true, Ordering::AcqRel) {
                // Recorded before the next flush completes: after a
                // restart it must not serve again (`Pool::open`).
                self.health.note_unrecorded();
            }
            return Err(Fault::MemberFailed);
        }
        if e.kind() == io::ErrorKind::InvalidInput {
            return Err(Fault::Io(e));
        }
        if self.can_fail(m) {
            self.health
                .fail(m, &dev.name(), &format!("{dir:?} error: {e}"));
            return Err(Fault::MemberFailed);
        }
        if dir == Dir::Flush {
            // The member's writes since its last good flush may be gone,
            // and nothing else holds them: nothing written since the last
            // commit can be trusted, so nothing more is acknowledged.
            self.health.set_broken(format!(
                "member {m} ({}) failed to flush ({e}): writes since the last commit may be lost and no redundancy holds them; the pool takes no more writes or flushes: fix or replace the device, then `vpool pool clear` (it reloads the pool from its last commit)",
                dev.name()
            ));
        } else if self.tolerant && self.geo.level.tolerated_failures(self.members.len()) > 0 {
            self.health.set_broken(format!(
                "member {m} ({}) failed ({e}) and no redundancy is left; the pool takes no more writes: reattach or replace the failed members, then `vpool pool clear` or restart the daemon",
                dev.name()
            ));
        }
        Err(Fault::Io(dir.failed(m, dev, at, e)))
    }

    /// Run `f` until no member fails under it (each retry has one member
    /// fewer, so this ends).
    pub(super) fn degrading(&self, mut f: impl FnMut() -> FaultResult<()>) -> io::Result<()> {
        loop {
            match f() {
                Ok(()) => return Ok(()),
                Err(Fault::MemberFailed) => continue,
                Err(Fault::Io(e)) => return Err(e),
            }
        }
    }

    pub(super) fn read(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.degrading(|| self.try_read(offset, buf))
    }

    /// A striped request's pieces as jobs for `device::{read,write}_each`,
    /// when members are `slow` and the pieces lie on more than one.
    fn spread_jobs(
        &self,
        pieces: &[super::super::geometry::Extent],
        slow: bool,
        what: &str,
    ) -> io::Result<Option<Vec<crate::device::PieceJob>>> {
        if !slow || pieces.iter().all(|e| e.member == pieces[0].member) {
            return Ok(None);
        }
        let mut jobs = Vec::with_capacity(pieces.len());
        for e in pieces {
            let dev = self.dev(e.member).ok_or_else(|| missing(what))?;
            jobs.push((dev.clone(), e.offset, piece_range(e)));
        }
        Ok(Some(jobs))
    }

    pub(super) fn try_read(&self, offset: u64, buf: &mut [u8]) -> FaultResult<()> {
        match self.geo.level {
            RaidLevel::Raid1 => self.read_mirror(offset, buf),
            RaidLevel::Linear | RaidLevel::Raid0 => {
                let pieces = self.geo.map(offset, buf.len() as u64);
                // Slow members: each member's pieces read at once with the
                // others' (`read_each`), each result accounted as that
                // piece's first attempt (a retry reads again).
                let mut first = Vec::new();
                if let Some(jobs) =
                    self.spread_jobs(&pieces, crate::device::reads_slow(), "read")?
                {
                    first = crate::device::read_each(&jobs, buf)
                        .into_iter()
                        .map(Some)
                        .collect();
                }
                if first.is_empty() && pieces.len() > 1 {
                    return self.read_runs(&pieces, buf);
                }
                for (k, e) in pieces.iter().enumerate() {
                    let dev = self.dev(e.member).ok_or_else(|| missing("read"))?;
                    let piece = &mut buf[piece_range(e)];
                    let mut pre = first.get_mut(k).and_then(Option::take);
                    self.io(e.member, dev, Dir::Read, Some(e.offset), || {
                        pre.take()
                            .unwrap_or_else(|| crate::device::read_timed(dev, piece, e.offset))
                    })?;
                }
                Ok(())
            }
            RaidLevel::Raid5 => {
                for e in self.geo.map(offset, buf.len() as u64) {
                    let piece = &mut buf[e.buf_offset as usize..(e.buf_offset + e.len) as usize];
                    match self.dev(e.member) {
                        Some(dev) => self.io(e.member, dev, Dir::Read, Some(e.offset), || {
                            dev.read_at(piece, e.offset)
                        })?,
                        None => self.reconstruct(e.member, e.offset, piece)?,
                    }
                }
                Ok(())
            }
        }
    }

    pub(super) fn read_mirror(&self, offset: u64, buf: &mut [u8]) -> FaultResult<()> {
        let n = self.members.len();
        let start = self.next_mirror.fetch_add(1, Ordering::Relaxed) % n;
        let moff = self.geo.data_start + offset;
        // Local mirrors take turns; remote ones (RBD images) serve only
        // when no local one can, like md's write-mostly members.
        let remote = |m: usize| self.members[m].as_ref().is_some_and(|d| d.remote());
        let order = (0..n)
            .map(|i| (start + i) % n)
            .filter(|&m| !remote(m))
            .chain((0..n).filter(|&m| remote(m)));
        for m in order {
            if Some(m) == self.no_read {
                continue;
            }
            if let Some(dev) = self.dev(m) {
                match self.io(m, dev, Dir::Read, Some(moff), || dev.read_at(buf, moff)) {
                    Ok(()) => return Ok(()),
                    // Failed and marked: the next mirror serves the read.
                    Err(Fault::MemberFailed) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Err(missing("read").into())
    }

    pub(super) fn lock(&self, stripe: u64) -> parking_lot::MutexGuard<'_, ()> {
        self.locks[(stripe as usize) % STRIPE_LOCKS].lock()
    }

    /// Rebuild the bytes of a missing member at `moff` from all the others
    /// (data units and parity of the same stripe row).
    pub(super) fn reconstruct(
        &self,
        missing_member: usize,
        moff: u64,
        out: &mut [u8],
    ) -> FaultResult<()> {
        let stripe = (moff - self.geo.data_start) / self.geo.stripe_unit;
        let _guard = self.lock(stripe);
        self.xor_others(missing_member, moff, out)
    }

    /// `out` = XOR of every member but `skip` at member offset `moff`: the
    /// content `skip` must have there. Caller holds the stripe lock.
    pub(super) fn xor_others(&self, skip: usize, moff: u64, out: &mut [u8]) -> FaultResult<()> {
        let mut others = (0..self.members.len()).filter(|&m| m != skip);
        let read = |m: usize, buf: &mut [u8]| -> FaultResult<()> {
            let dev = self.dev(m).ok_or_else(|| missing("degraded read"))?;
            self.io(m, dev, Dir::Read, Some(moff), || dev.read_at(buf, moff))
        };
        let first = others.next().ok_or_else(|| missing("degraded read"))?;
        if out.len() < PARALLEL_READ_MIN {
            read(first, out)?;
            let mut tmp = vec![0u8; out.len()];
            for m in others {
                read(m, &mut tmp)?;
                xor_into(out, &tmp);
            }
            return Ok(());
        }
        // Large (rebuilds): read the members at once, one thread each.
        let rest: Vec<usize> = others.collect();
        let len = out.len();
        let (mine, theirs) = std::thread::scope(|s| {
            let handles: Vec<_> = rest
                .iter()
                .map(|&m| {
                    s.spawn(move || {
                        let mut b = vec![0u8; len];
                        read(m, &mut b).map(|()| b)
                    })
                })
                .collect();
            let mine = read(first, out);
            let theirs: Vec<FaultResult<Vec<u8>>> = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a member read panicked").into()))
                })
                .collect();
            (mine, theirs)
        });
        mine?;
        for b in theirs {
            xor_into(out, &b?);
        }
        Ok(())
    }

    pub(super) fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        match self.geo.level {
            RaidLevel::Raid1 => self.degrading(|| self.write_mirrors(offset, buf)),
            RaidLevel::Linear | RaidLevel::Raid0 => self.degrading(|| {
                let pieces = self.geo.map(offset, buf.len() as u64);
                // Slow members: each member's pieces written at once with
                // the others' (`write_each`), each result accounted as
                // that piece's first attempt.
                let mut first = Vec::new();
                if let Some(jobs) =
                    self.spread_jobs(&pieces, crate::device::writes_slow(), "write")?
                {
                    first = crate::device::write_each(&jobs, buf)
                        .into_iter()
                        .map(Some)
                        .collect();
                }
                if first.is_empty() && pieces.len() > 1 {
                    return self.write_runs(&pieces, buf);
                }
                for (k, e) in pieces.iter().enumerate() {
                    let dev = self.dev(e.member).ok_or_else(|| missing("write"))?;
                    let piece = &buf[piece_range(e)];
                    let mut pre = first.get_mut(k).and_then(Option::take);
                    self.io(e.member, dev, Dir::Write, Some(e.offset), || {
                        pre.take()
                            .unwrap_or_else(|| crate::device::write_timed(dev, piece, e.offset))
                    })?;
                }
                Ok(())
            }),
            RaidLevel::Raid5 => self.write_raid5(offset, buf, None, None),
        }
    }

    /// [`View::write`] of `buf` over bytes the caller read and verified
    /// as `old` (as long as `buf`): RAID5 read-modify-writes take the old
    /// data from `old`, not from the data member.
    pub(super) fn write_over(&self, offset: u64, buf: &[u8], old: &[u8]) -> io::Result<()> {
        match self.geo.level {
            RaidLevel::Raid5 => self.write_raid5(offset, buf, Some(old), None),
            _ => self.write(offset, buf),
        }
    }

    /// [`View::write`] of bytes whose stripe rows' other units `vouch`
    /// judges: RAID5 partial-stripe writes are reconstruct-writes
    /// (`rcw`), which never take the written unit's old bytes or the old
    /// parity from the members.
    pub(super) fn write_vouched(&self, offset: u64, buf: &[u8], vouch: Vouch) -> io::Result<()> {
        match self.geo.level {
            RaidLevel::Raid5 => self.write_raid5(offset, buf, None, Some(vouch)),
            _ => self.write(offset, buf),
        }
    }

    /// A striped write's pieces, one vectored write per run of them on a
    /// member (`member_runs`): a 1 MiB write over three members is three
    /// `pwritev`s, not sixteen `pwrite`s.
    fn write_runs(&self, pieces: &[super::super::geometry::Extent], buf: &[u8]) -> FaultResult<()> {
        let (run_of, runs) = member_runs(pieces);
        let mut bufs: Vec<Vec<&[u8]>> = (0..runs).map(|_| Vec::new()).collect();
        let mut heads: Vec<Option<&super::super::geometry::Extent>> = vec![None; runs];
        for (e, &r) in pieces.iter().zip(&run_of) {
            bufs[r].push(&buf[piece_range(e)]);
            heads[r].get_or_insert(e);
        }
        for (e, bufs) in heads.into_iter().flatten().zip(&bufs) {
            let dev = self.dev(e.member).ok_or_else(|| missing("write"))?;
            self.io(e.member, dev, Dir::Write, Some(e.offset), || {
                crate::device::write_vectored_timed(dev, bufs, e.offset)
            })?;
        }
        Ok(())
    }

    /// A striped read's pieces, one vectored read per run of them on a
    /// member, as `write_runs`.
    fn read_runs(
        &self,
        pieces: &[super::super::geometry::Extent],
        buf: &mut [u8],
    ) -> FaultResult<()> {
        let (run_of, runs) = member_runs(pieces);
        let mut bufs: Vec<Vec<&mut [u8]>> = (0..runs).map(|_| Vec::new()).collect();
        let mut heads: Vec<Option<&super::super::geometry::Extent>> = vec![None; runs];
        // The pieces lie in order in `buf`, none overlapping: split it.
        let (mut rest, mut at) = (buf, 0usize);
        for (e, &r) in pieces.iter().zip(&run_of) {
            let range = piece_range(e);
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(range.start - at);
            let (piece, tail) = tail.split_at_mut(range.len());
            (rest, at) = (tail, range.end);
            bufs[r].push(piece);
            heads[r].get_or_insert(e);
        }
        for (e, bufs) in heads.into_iter().flatten().zip(bufs.iter_mut()) {
            let dev = self.dev(e.member).ok_or_else(|| missing("read"))?;
            self.io(e.member, dev, Dir::Read, Some(e.offset), || {
                crate::device::read_vectored_timed(dev, bufs, e.offset)
            })?;
        }
        Ok(())
    }

    pub(super) fn write_mirrors(&self, offset: u64, buf: &[u8]) -> FaultResult<()> {
        let moff = self.geo.data_start + offset;
        let mut wrote = false;
        // Slow members: the copies are written at once (`write_all`), and
        // each result accounted as that member's first attempt.
        // (Members and devices taken in one pass: a device being replaced
        // can drop out at any time, and a result must stay with its member.)
        let mut first: Vec<(usize, Option<io::Result<()>>)> = Vec::new();
        if crate::device::writes_slow() {
            let (members, devs): (Vec<usize>, Vec<DeviceRef>) = (0..self.members.len())
                .filter_map(|m| Some((m, self.dev(m)?.clone())))
                .unzip();
            let results = crate::device::write_all(&devs, buf, moff);
            first = members
                .into_iter()
                .zip(results.into_iter().map(Some))
                .collect();
        }
        for m in 0..self.members.len() {
            if let Some(dev) = self.dev(m) {
                let mut pre = first
                    .iter_mut()
                    .find(|(p, _)| *p == m)
                    .and_then(|(_, r)| r.take());
                let write = || {
                    pre.take()
                        .unwrap_or_else(|| crate::device::write_timed(dev, buf, moff))
                };
                match self.io(m, dev, Dir::Write, Some(moff), write) {
                    Ok(()) => wrote = true,
                    Err(Fault::MemberFailed) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if wrote {
            Ok(())
        } else {
            Err(missing("write").into())
        }
    }

    /// RAID5 write, stripe by stripe; `old`: the bytes `buf` replaces, as
    /// the caller verified them (see `write_partial_stripe`).
    pub(super) fn write_raid5(
        &self,
        offset: u64,
        buf: &[u8],
        old: Option<&[u8]>,
        vouch: Option<Vouch>,
    ) -> io::Result<()> {
        let width = self.geo.stripe_width();
        let mut pos = offset;
        let end = offset + buf.len() as u64;
        while pos < end {
            let stripe = pos / width;
            let stripe_end = ((stripe + 1) * width).min(end);
            let range = (pos - offset) as usize..(stripe_end - offset) as usize;
            let piece = &buf[range.clone()];
            let mut first_old = old.map(|o| &o[range]);
            let _guard = self.lock(stripe);
            // Redone whole when a member fails under it: see write_partial_stripe.
            self.degrading(|| {
                // The caller's old bytes serve the first attempt only: a
                // redo reads back what the first one wrote.
                let old = first_old.take();
                if pos.is_multiple_of(width) && piece.len() as u64 == width {
                    return self.write_full_stripe(stripe, piece);
                }
                if let Some(v) = vouch {
                    if self.write_reconstruct(pos, piece, v)? {
                        return Ok(());
                    }
                }
                self.write_partial_stripe(pos, piece, old)
            })?;
            pos = stripe_end;
        }
        Ok(())
    }

    /// Full-stripe write: parity from the new data alone, no reads.
    pub(super) fn write_full_stripe(&self, stripe: u64, data: &[u8]) -> FaultResult<()> {
        let su = self.geo.stripe_unit as usize;
        let moff = self.geo.data_start + stripe * self.geo.stripe_unit;
        let mut parity = data[..su].to_vec();
        for unit in data.chunks(su).skip(1) {
            xor_into(&mut parity, unit);
        }
        for (d, unit) in data.chunks(su).enumerate() {
            let m = self.geo.data_member(stripe, d as u64);
            if let Some(dev) = self.dev(m) {
                self.io(m, dev, Dir::Write, Some(moff), || dev.write_at(unit, moff))?;
            }
        }
        let pm = self.geo.parity_member(stripe);
        if let Some(dev) = self.dev(pm) {
            self.io(pm, dev, Dir::Write, Some(moff), || {
                dev.write_at(&parity, moff)
            })?;
        }
        Ok(())
    }

    /// Partial-stripe write, one data unit piece at a time. Caller holds the
    /// stripe lock. Healthy: new parity = old parity ^ old data ^ new data.
    /// Data member missing: parity = new data ^ the other data units.
    /// Parity member missing: write the data only.
    /// Redoing it after a member failed halfway is safe: a piece whose data
    /// and parity were both written reads back as new data, and the
    /// healthy formula then leaves its parity unchanged (so a redo reads
    /// the old data from the member, never from `old`).
    /// `old`: the bytes `buf` replaces, read by the caller and verified
    /// against their checksums. The healthy formula takes them instead of
    /// the data member's: a write that member lost or misplaced (reported
    /// done, never stored) leaves stale bytes there, and parity computed
    /// from them would rebuild the unit wrong once the member is gone.
    pub(super) fn write_partial_stripe(
        &self,
        offset: u64,
        buf: &[u8],
        old_bytes: Option<&[u8]>,
    ) -> FaultResult<()> {
        for e in self.geo.map(offset, buf.len() as u64) {
            let stripe = (e.offset - self.geo.data_start) / self.geo.stripe_unit;
            let pm = self.geo.parity_member(stripe);
            let b = e.buf_offset as usize;
            let new = &buf[b..b + e.len as usize];
            let (dm, at) = (e.member, e.offset);
            match (self.dev(dm), self.dev(pm)) {
                (Some(dd), Some(pd)) => {
                    let mut parity = vec![0u8; new.len()];
                    let mut old = vec![0u8; new.len()];
                    self.io(pm, pd, Dir::Read, Some(at), || pd.read_at(&mut parity, at))?;
                    match old_bytes {
                        Some(o) => old.copy_from_slice(&o[b..b + new.len()]),
                        None => {
                            self.io(dm, dd, Dir::Read, Some(at), || dd.read_at(&mut old, at))?
                        }
                    }
                    xor_into(&mut parity, &old);
                    xor_into(&mut parity, new);
                    self.io(dm, dd, Dir::Write, Some(at), || dd.write_at(new, at))?;
                    self.io(pm, pd, Dir::Write, Some(at), || pd.write_at(&parity, at))?;
                }
                (Some(dd), None) => {
                    self.io(dm, dd, Dir::Write, Some(at), || dd.write_at(new, at))?
                }
                (None, Some(pd)) => {
                    let mut parity = new.to_vec();
                    let mut tmp = vec![0u8; new.len()];
                    for m in 0..self.members.len() {
                        if m == dm || m == pm {
                            continue;
                        }
                        let dev = self.dev(m).ok_or_else(|| missing("degraded write"))?;
                        self.io(m, dev, Dir::Read, Some(at), || dev.read_at(&mut tmp, at))?;
                        xor_into(&mut parity, &tmp);
                    }
                    self.io(pm, pd, Dir::Write, Some(at), || pd.write_at(&parity, at))?;
                }
                (None, None) => return Err(missing("degraded write").into()),
            }
        }
        Ok(())
    }

    /// RAID5: write `buf`, which lies within one data unit, with the XOR
    /// of its row's other data units at the same offsets known (`others`,
    /// read by a caller that keeps them from changing): the parity is
    /// `others ^ buf`, so nothing is read (a reconstruct-write whose reads
    /// the caller already made). A missing data member: the parity alone;
    /// a missing parity member: the data alone. False: `buf` spans more
    /// than one data unit, nothing written.
    pub(super) fn write_unit_with_others(
        &self,
        offset: u64,
        buf: &[u8],
        others: &[u8],
    ) -> io::Result<bool> {
        let [e] = &self.geo.map(offset, buf.len() as u64)[..] else {
            return Ok(false);
        };
        let mut parity = others.to_vec();
        xor_into(&mut parity, buf);
        let row = (e.offset - self.geo.data_start) / self.geo.stripe_unit;
        let (dm, pm, at) = (e.member, self.geo.parity_member(row), e.offset);
        let _guard = self.lock(offset / self.geo.stripe_width());
        self.degrading(|| match (self.dev(dm), self.dev(pm)) {
            (None, None) => Err(missing("degraded write").into()),
            (dd, pd) => {
                if let Some(dd) = dd {
                    self.io(dm, dd, Dir::Write, Some(at), || dd.write_at(buf, at))?;
                }
                if let Some(pd) = pd {
                    self.io(pm, pd, Dir::Write, Some(at), || pd.write_at(&parity, at))?;
                }
                Ok(())
            }
        })?;
        Ok(true)
    }

    /// Rewrite member `target`'s rows `[moff, moff + len)` from the others:
    /// a copy of a mirror (raid1) or the XOR of the rest of each stripe
    /// row (raid5); from `old`, the device being replaced in service, when
    /// another member is missing (it holds these rows, and the others
    /// cannot rebuild them). Caller pauses client I/O.
    pub(super) fn rebuild(
        &self,
        target: usize,
        moff: u64,
        len: usize,
        old: Option<&DeviceRef>,
    ) -> FaultResult<()> {
        let dev = self.members[target]
            .as_ref()
            .ok_or_else(|| missing("rebuild target"))?;
        let mut buf = vec![0u8; len];
        let short = (0..self.members.len()).any(|m| m != target && self.dev(m).is_none());
        match (self.geo.level, old.filter(|_| short)) {
            (_, Some(old)) => {
                if let Err(e) = old.read_at(&mut buf, moff) {
                    // Left out from then on, as on any error of its.
                    if !self.shadow_failed.swap(true, Ordering::AcqRel) {
                        self.health.note_unrecorded();
                    }
                    return Err(Fault::Io(Dir::Read.failed(target, old, Some(moff), e)));
                }
            }
            (RaidLevel::Raid1, None) => {
                let src = (0..self.members.len())
                    .filter(|&m| m != target && Some(m) != self.no_read)
                    .find(|&m| self.dev(m).is_some())
                    .ok_or_else(|| missing("rebuild source"))?;
                let Some(s) = self.dev(src) else {
                    return Err(missing("rebuild source").into());
                };
                self.io(src, s, Dir::Read, Some(moff), || s.read_at(&mut buf, moff))?;
            }
            (RaidLevel::Raid5, None) => self.xor_others(target, moff, &mut buf)?,
            (RaidLevel::Linear | RaidLevel::Raid0, None) => {
                return Err(Fault::Io(io::Error::other(
                    "linear and raid0 arrays have no redundancy to rebuild from",
                )))
            }
        }
        self.io(target, dev, Dir::Write, Some(moff), || {
            dev.write_at(&buf, moff)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::member_runs;
    use crate::raid::geometry::small as geo;
    use crate::raid::RaidLevel;

    #[test]
    fn a_striped_request_is_one_run_per_member() {
        let g = geo(RaidLevel::Raid0, 3);
        // Sixteen units from a row's start: members 0, 1, 2, 0, ...
        let pieces = g.map(0, 16 * 4096);
        let (run_of, runs) = member_runs(&pieces);
        assert_eq!(runs, 3);
        for (k, e) in pieces.iter().enumerate() {
            assert_eq!(run_of[k], e.member, "piece {k}");
        }
        // From part way into a unit: member 2 first, then 0 and 1.
        let (run_of, runs) = member_runs(&g.map(2 * 4096 + 100, 4 * 4096));
        assert_eq!((run_of, runs), (vec![0, 1, 2, 0, 1], 3));
        // Linear across two members: a run on each.
        let (run_of, runs) = member_runs(&geo(RaidLevel::Linear, 2).map((1 << 20) - 4096, 8192));
        assert_eq!((run_of, runs), (vec![0, 1], 2));
        // One member: one run, however many units.
        let (run_of, runs) = member_runs(&geo(RaidLevel::Raid0, 1).map(0, 5 * 4096));
        assert_eq!((run_of, runs), (vec![0; 5], 1));
    }
}
