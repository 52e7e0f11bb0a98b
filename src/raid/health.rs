//! Member health: I/O error counters, members failed while serving, and the
//! pool's failed state when redundancy runs out. Shared by the data path
//! ([`super::Array`]) and the metadata mirror, checked on every member I/O
//! (one atomic load), changed only on errors.
//!
//! A member read or write that fails is retried once. A failed **flush is
//! never retried**: on Linux the writeback error drops the dirty pages and
//! the next fsync returns 0, so a retry would turn lost writes into an
//! acknowledged flush. If the I/O still fails and the array can do without
//! the member, the member is marked failed: from then on it is treated as
//! missing (reads reconstruct, writes go to the survivors), and the next
//! commit records it in the superblock. If the array cannot do without it,
//! the I/O fails with EIO; on a redundant level, and after a failed flush on
//! any level, the pool stops accepting writes, flushes and commits
//! (`broken`) until the operator acts: never silent garbage, never a lost
//! write acknowledged as durable.

use super::RaidLevel;
use crate::device::DeviceRef;
use crate::error::{MemberIo, Op};
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Most members a pool can have (one bit each in the failed mask).
const SLOTS: usize = 64;

#[derive(Default, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErrorCounts {
    pub read: u64,
    pub write: u64,
    /// Data blocks this member returned that failed their checksum (or
    /// parity that disagreed with the data), found by reads and scrubs.
    #[serde(default)]
    pub checksum: u64,
}

pub struct Health {
    failed: AtomicU64,
    /// Level, member count and members missing from the member list: what
    /// decides whether one more member may fail.
    shape: Mutex<(Option<RaidLevel>, usize, u64)>,
    /// A failure not yet recorded in the superblock.
    unrecorded: AtomicBool,
    read_errors: Vec<AtomicU64>,
    write_errors: Vec<AtomicU64>,
    csum_errors: Vec<AtomicU64>,
    /// Why the pool refuses writes (redundancy exhausted), if it does.
    broken: Mutex<Option<String>>,
    is_broken: AtomicBool,
    /// Failures, in order, for logs and `pool status`.
    events: Mutex<Vec<String>>,
}

impl Default for Health {
    fn default() -> Self {
        let counters = || (0..SLOTS).map(|_| AtomicU64::new(0)).collect();
        Health {
            failed: AtomicU64::new(0),
            shape: Mutex::new((None, 0, 0)),
            unrecorded: AtomicBool::new(false),
            read_errors: counters(),
            write_errors: counters(),
            csum_errors: counters(),
            broken: Mutex::new(None),
            is_broken: AtomicBool::new(false),
            events: Mutex::new(Vec::new()),
        }
    }
}

/// Which way an I/O went, for the counters (a flush counts as a write).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    Read,
    Write,
    /// Never retried (see the module's documentation).
    Flush,
}

impl Dir {
    /// Member `m`'s error `e`, as an `io::Error` that names the member,
    /// its device and the offset (a [`MemberIo`]).
    pub fn failed(self, m: usize, dev: &DeviceRef, at: Option<u64>, e: io::Error) -> io::Error {
        if MemberIo::of(&e).is_some() {
            return e;
        }
        MemberIo {
            member: m,
            device: dev.name(),
            op: match self {
                Dir::Read => Op::Read,
                Dir::Write => Op::Write,
                Dir::Flush => Op::Flush,
            },
            offset: at,
            source: e,
        }
        .into_io()
    }
}

impl Health {
    pub fn is_failed(&self, member: usize) -> bool {
        member < SLOTS && self.failed.load(Ordering::Acquire) & (1 << member) != 0
    }

    /// Members failed while serving, as a bit mask.
    pub fn failed_mask(&self) -> u64 {
        self.failed.load(Ordering::Acquire)
    }

    /// Record the array's level and which members it lacks.
    pub fn set_shape(&self, level: RaidLevel, members: usize, absent: u64) {
        *self.shape.lock() = (Some(level), members, absent);
    }

    /// Does the array's level keep redundancy (raid1, raid5)?
    pub fn redundant(&self) -> bool {
        matches!(
            self.shape.lock().0,
            Some(RaidLevel::Raid1 | RaidLevel::Raid5)
        )
    }

    /// Does every byte have a second copy now (a redundant level with
    /// fewer members missing or failed than it tolerates)?
    pub fn redundant_now(&self) -> bool {
        let (level, n, absent) = *self.shape.lock();
        let gone = (absent | self.failed_mask()).count_ones() as usize;
        level.is_some_and(|l| gone < l.tolerated_failures(n))
    }

    /// Is `member` missing or failed?
    pub fn is_gone(&self, member: usize) -> bool {
        let absent = self.shape.lock().2;
        let bit = 1u64.checked_shl(member as u32).unwrap_or(0);
        (absent | self.failed_mask()) & bit != 0
    }

    /// Whether the array keeps every byte without `member` (and without
    /// the members already missing or failed).
    pub fn may_fail(&self, member: usize) -> bool {
        let (level, n, absent) = *self.shape.lock();
        let gone = absent | self.failed_mask();
        let bit = 1u64.checked_shl(member as u32).unwrap_or(0);
        if gone & bit != 0 {
            return true;
        }
        match level {
            Some(RaidLevel::Raid1) => ((gone | bit).count_ones() as usize) < n,
            Some(RaidLevel::Raid5) => gone == 0,
            _ => false,
        }
    }

    /// Mark `member` failed. Returns false if it already was.
    pub fn fail(&self, member: usize, dev: &str, why: &str) -> bool {
        if member >= SLOTS {
            return false;
        }
        let bit = 1u64 << member;
        if self.failed.fetch_or(bit, Ordering::AcqRel) & bit != 0 {
            return false;
        }
        self.unrecorded.store(true, Ordering::Release);
        let msg = format!("member {member} ({dev}) FAILED: {why}; the pool runs degraded");
        eprintln!("vpool: {msg}");
        self.events.lock().push(msg);
        true
    }

    /// Forget a failure (the member was replaced or brought back).
    pub fn unfail(&self, member: usize) {
        if member < SLOTS {
            self.failed.fetch_and(!(1u64 << member), Ordering::AcqRel);
        }
    }

    /// Failures not yet in the superblock (clears the flag).
    pub fn take_unrecorded(&self) -> bool {
        self.unrecorded.swap(false, Ordering::AcqRel)
    }

    /// Something the superblock must record before the next flush is
    /// acknowledged (the device being replaced in service failed): the
    /// flush log's round then leaves the flush to a commit.
    pub fn note_unrecorded(&self) {
        self.unrecorded.store(true, Ordering::Release);
    }

    pub fn has_unrecorded(&self) -> bool {
        self.unrecorded.load(Ordering::Acquire)
    }

    pub fn count(&self, member: usize, dir: Dir) {
        let v = match dir {
            Dir::Read => &self.read_errors,
            Dir::Write | Dir::Flush => &self.write_errors,
        };
        if let Some(c) = v.get(member) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A block of `member` failed its checksum (or its parity was wrong).
    pub fn count_checksum(&self, member: usize) {
        if let Some(c) = self.csum_errors.get(member) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Log a data-integrity event (a repair or an unrecoverable block).
    pub fn event(&self, what: String) {
        eprintln!("vpool: {what}");
        let mut ev = self.events.lock();
        if ev.len() < 1000 {
            ev.push(what);
        }
    }

    pub fn errors(&self, member: usize) -> ErrorCounts {
        let get = |v: &Vec<AtomicU64>| v.get(member).map_or(0, |c| c.load(Ordering::Relaxed));
        ErrorCounts {
            read: get(&self.read_errors),
            write: get(&self.write_errors),
            checksum: get(&self.csum_errors),
        }
    }

    /// Reset a member's error counters (`pool clear`).
    pub fn clear_errors(&self, member: usize) {
        for v in [&self.read_errors, &self.write_errors, &self.csum_errors] {
            if let Some(c) = v.get(member) {
                c.store(0, Ordering::Relaxed);
            }
        }
    }

    /// Stop accepting writes: a member the array cannot do without failed.
    pub fn set_broken(&self, why: String) {
        let mut b = self.broken.lock();
        if b.is_none() {
            eprintln!("vpool: POOL FAILED: {why}");
            self.events.lock().push(format!("pool failed: {why}"));
            *b = Some(why);
            self.is_broken.store(true, Ordering::Release);
        }
    }

    pub fn is_broken(&self) -> bool {
        self.is_broken.load(Ordering::Acquire)
    }

    pub fn broken(&self) -> Option<String> {
        self.broken.lock().clone()
    }

    /// The operator fixed what broke the pool and reloaded it from its last
    /// commit (`pool clear`): take writes again.
    pub fn clear_broken(&self) {
        let mut b = self.broken.lock();
        if let Some(why) = b.take() {
            self.event(format!("pool failure cleared (was: {why})"));
        }
        self.is_broken.store(false, Ordering::Release);
    }

    /// The error every write, flush and commit of a broken pool gets.
    pub fn broken_error(&self) -> Option<io::Error> {
        self.is_broken().then(|| {
            io::Error::other(format!(
                "the pool is failed: {}",
                self.broken().unwrap_or_default()
            ))
        })
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().clone()
    }

    /// Run a member I/O, retrying a read or write once. Every error is
    /// counted; the second is returned. A flush is run once: its error is
    /// final.
    pub fn attempt(
        &self,
        member: usize,
        dir: Dir,
        mut f: impl FnMut() -> io::Result<()>,
    ) -> io::Result<()> {
        match f() {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => Err(e),
            Err(e) if dir == Dir::Flush => {
                self.count(member, dir);
                Err(e)
            }
            Err(_) => {
                self.count(member, dir);
                f().inspect_err(|_| self.count(member, dir))
            }
        }
    }
}

/// The error a member I/O ended with, and whether the member was failed
/// because of it (the caller then redoes its work without the member).
pub enum Fault {
    /// The member is now failed; redo the operation degraded.
    MemberFailed,
    Io(io::Error),
}

impl From<io::Error> for Fault {
    fn from(e: io::Error) -> Fault {
        Fault::Io(e)
    }
}

pub type FaultResult<T> = Result<T, Fault>;
