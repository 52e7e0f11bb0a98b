//! Layout changes with a member missing: which may go on degraded, the
//! end of a raid1 resync whose new mirror is gone, and a new member that
//! died before a restripe's first step replaced.

use super::super::create::write_label;
use super::super::Pool;
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::raid::{ArrayState, RaidLevel, TransitionKind};
use crate::thin::store::superblock::{
    SbTransition, MEMBER_FAILED, MEMBER_ONLINE, PHASE_BACKUP, PHASE_MAIN, PHASE_START,
    TRANSITION_REBUILD, TRANSITION_RESTRIPE, TRANSITION_RESYNC,
};
use crate::thin::ThinPool;

/// Whether a step of the layout change may run with the members it has.
pub(super) enum Degraded {
    /// None is missing, or the level's redundancy covers those that are:
    /// the step reads what a missing member held from the others (a raid5
    /// row's parity, the other mirrors) and writes the new layout without
    /// it, as any degraded write. A member that dies mid-reshape must not leave the
    /// pool stuck: the job could not finish, and `pool replace` waits for
    /// it (md goes on with a degraded reshape too).
    Go,
    /// The mirror being resynced is gone: nothing is left to copy to.
    NewMirrorLost(usize),
    /// Not without these members.
    Refuse(Vec<usize>),
}

/// `old_serves`: a device being replaced in service still serves the rows
/// a rebuild has not reached (it is their source when others are missing).
pub(super) fn degraded_step(st: &ArrayState, sbt: &SbTransition, old_serves: bool) -> Degraded {
    let missing: Vec<usize> = (0..st.members.len())
        .filter(|&i| st.members[i].is_none())
        .collect();
    if missing.is_empty() {
        return Degraded::Go;
    }
    match st.transition.as_ref().map(|t| &t.kind) {
        // The first rows are saved on the new member and, after a crash,
        // read back from it: not without it, unless their second copy is
        // on the others (`backup`).
        Some(TransitionKind::Restripe { old })
            if sbt.kind == TRANSITION_RESTRIPE
                && st.geo.level == RaidLevel::Raid5
                && missing.len() == 1
                && (sbt.phase == PHASE_MAIN
                    || missing[0] != old.members()
                    || sbt.phase == PHASE_BACKUP && sbt.backup_copy != 0) =>
        {
            Degraded::Go
        }
        Some(TransitionKind::Resync { member }) if sbt.kind == TRANSITION_RESYNC => {
            if missing.contains(member) {
                Degraded::NewMirrorLost(*member)
            } else if missing.len() + 1 >= st.members.len() {
                // Only the new mirror is left: nothing to copy from.
                Degraded::Refuse(missing)
            } else {
                Degraded::Go
            }
        }
        // A mirror rebuilt while another is missing: `pool replace` and
        // `pool clear` start it when a mirror is left to copy from. A
        // member replaced in service is copied from its old device, at any
        // level, when the others cannot rebuild it.
        Some(TransitionKind::Rebuild { member })
            if sbt.kind == TRANSITION_REBUILD
                && !missing.contains(member)
                && (old_serves
                    && missing.len() <= st.geo.level.tolerated_failures(st.members.len())
                    || st.geo.level == RaidLevel::Raid1
                        && missing.len() + 1 < st.members.len()) =>
        {
            Degraded::Go
        }
        _ => Degraded::Refuse(missing),
    }
}

/// The error of a restripe that cannot start because its new member `k`
/// is missing or failed before the first step was recorded (`what`, which
/// ends where the command that mends it follows): `pool replace` puts
/// another device in its place ([`Pool::replace_unstarted_new_member`]).
pub(super) fn unstarted(pool: &str, k: usize, what: &str) -> Error {
    Error::Unavailable(format!(
        "pool '{pool}' cannot start its reshape: the new member {k} {what} `vpool pool replace {pool} {k} NEW-DEVICE` and the reshape starts over onto that"
    ))
}

/// End the resync of a new mirror that is gone: the pool keeps the
/// mirrors it had, and the new one is recorded failed in the same commit
/// that ends the job, so it is never read as in sync if it comes back
/// (`pool replace` or `pool clear` rebuilds it).
pub(super) fn abandon_resync(thin: &ThinPool, member: usize) -> Result<()> {
    tracing::warn!(
        "member {member} failed before its resync ended; the new mirror is left out of service"
    );
    {
        let mut meta = thin.meta.write();
        meta.set_member_state(member, MEMBER_FAILED);
        meta.set_transition(None);
    }
    thin.array.set_transition(None);
    thin.commit_locked()
}

impl Pool {
    /// `pool replace` of the member a raid0 or raid5 restripe is adding,
    /// before its first step was recorded (phase START): nothing is on it
    /// yet (the first rows' copy counts only once BACKUP is committed), so
    /// the new device takes its place as it is and the restripe starts over
    /// onto it. A new member that died in the first step would otherwise
    /// hold the job for good (that step cannot run without it, and a
    /// rebuild waits for the job). None: not that case.
    pub(in crate::pool) fn replace_unstarted_new_member(
        &self,
        k: usize,
        dev: &DeviceRef,
    ) -> Result<Option<String>> {
        let _ops = self.s.ops.lock();
        let thin = &self.s.thin;
        let _gate = thin.exclusive();
        let Some(sbt) = thin.meta.read().transition() else {
            return Ok(None);
        };
        if sbt.kind != TRANSITION_RESTRIPE
            || sbt.phase != PHASE_START
            || sbt.old_members as usize != k
        {
            return Ok(None);
        }
        let mut label = self.label();
        label.members[k].uuid = *uuid::Uuid::new_v4().as_bytes();
        label.generation += 1;
        // The newest member table wins at assembly, and the others' labels
        // are brought up to it: a crash between these writes is harmless.
        write_label(dev, &label.for_member(k, dev.size()))?;
        for (i, d) in thin.array.members().iter().enumerate() {
            if let (Some(d), true) = (d, i != k) {
                write_label(d, &label.for_member(i, d.size()))?;
            }
        }
        *self.s.label.write() = label;
        let gone = thin.array.members()[k].as_ref().map(|d| d.name());
        thin.array
            .replace_member(k, dev.clone(), thin.array.state().transition);
        thin.meta.write().set_member_state(k, MEMBER_ONLINE);
        thin.commit_locked()?;
        Ok(Some(format!(
            "{} takes the place of {} as member {k} of pool '{}', which held nothing yet; the reshape starts over onto it",
            dev.name(),
            gone.unwrap_or_else(|| "the missing new member".into()),
            self.name()
        )))
    }
}
