//! Layout changes with a member missing: which may go on degraded, and
//! the end of a raid1 resync whose new mirror is gone.

use crate::error::Result;
use crate::raid::{ArrayState, RaidLevel, TransitionKind};
use crate::thin::store::superblock::{
    SbTransition, MEMBER_FAILED, PHASE_MAIN, TRANSITION_REBUILD, TRANSITION_RESTRIPE,
    TRANSITION_RESYNC,
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
        // read back from it: not without it.
        Some(TransitionKind::Restripe { old })
            if sbt.kind == TRANSITION_RESTRIPE
                && st.geo.level == RaidLevel::Raid5
                && missing.len() == 1
                && (sbt.phase == PHASE_MAIN || missing[0] != old.members()) =>
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
