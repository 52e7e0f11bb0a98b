//! Hot spares (`pool add --spare`, as mdadm's spares and ZFS's `spare`
//! vdevs): a device labelled as a spare of the pool (label state 4, not in
//! the member table) that takes a failed member's place on its own: the
//! daemon calls [`Pool::use_spares`] on its background tick, which records
//! new failures at once and starts the rebuild onto a spare.

use super::create::write_label;
use super::Pool;
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::meta::label::PoolState;
use crate::thin::store::superblock::{PHASE_START, TRANSITION_RESTRIPE};

impl Pool {
    /// The pool's hot spares.
    pub fn spares(&self) -> Vec<DeviceRef> {
        self.s.spares.lock().clone()
    }

    /// Label `dev` as a hot spare of this pool (raid1, raid5).
    pub fn add_spare(&self, dev: DeviceRef, force: bool) -> Result<String> {
        let _ops = self.s.ops.lock();
        let name = self.name();
        self.redundant_or_refuse("use a spare for")?;
        if self.spares().iter().any(|s| s.name() == dev.name()) {
            return Err(Error::Exists(format!(
                "{} is already a spare of pool '{name}'",
                dev.name()
            )));
        }
        let need = self
            .s
            .thin
            .array
            .geometry()
            .member_data
            .iter()
            .copied()
            .max()
            .unwrap_or(0);
        self.check_new_device(&dev, need, force)?;
        let mut l = self.label().for_member(0, dev.size());
        l.member_uuid = *uuid::Uuid::new_v4().as_bytes();
        l.state = PoolState::Spare;
        write_label(&dev, &l)?;
        let shown = dev.name();
        self.s.spares.lock().push(dev);
        Ok(format!(
            "{shown} is a hot spare of pool '{name}': it replaces the next member that fails"
        ))
    }

    /// Stop using `path` as a spare: its label is marked free. Returns
    /// false when it is not a spare of this pool.
    pub fn remove_spare(&self, path: &std::path::Path) -> Result<bool> {
        let _ops = self.s.ops.lock();
        let abs = crate::state::absolute(path);
        let mut spares = self.s.spares.lock();
        let same = |d: &DeviceRef| crate::state::absolute(std::path::Path::new(&d.name())) == abs;
        let Some(i) = spares.iter().position(same) else {
            return Ok(false);
        };
        let dev = spares.remove(i);
        let mut l = self.label().for_member(0, dev.size());
        l.state = PoolState::Destroyed;
        write_label(&dev, &l)?;
        Ok(true)
    }

    /// Record member failures at once (no waiting for the next background
    /// commit) and, when a member is out of service and no job runs, start
    /// rebuilding it onto a spare. Returns what was started.
    pub fn use_spares(&self) -> Result<Option<String>> {
        if self.s.thin.array.health().has_unrecorded() {
            self.commit()?;
        }
        if self.s.job.lock().running {
            return Ok(None);
        }
        let spare = self.s.spares.lock().first().cloned();
        let Some(dev) = spare else {
            return Ok(None);
        };
        let out = self.members_out();
        let k = match self.s.thin.meta.read().transition() {
            None => out.first().copied(),
            // A reshape's new member lost before the first step is
            // recorded: it held nothing, and the spare takes its place as
            // it is (`replace_member`); the reshape starts over onto it.
            Some(t)
                if t.kind == TRANSITION_RESTRIPE
                    && t.phase == PHASE_START
                    && out.contains(&(t.old_members as usize)) =>
            {
                Some(t.old_members as usize)
            }
            // Other members wait for the job: a rebuild follows it.
            Some(_) => None,
        };
        let Some(k) = k else {
            return Ok(None);
        };
        let shown = dev.name();
        match self.replace_member(k, dev, false) {
            Ok((msg, _)) => {
                tracing::warn!(pool = %self.name(), "member {k} is out of service: hot spare {shown} takes its place");
                Ok(Some(msg))
            }
            Err(e) => {
                // An unusable spare is dropped, loudly, not retried forever.
                self.s.spares.lock().retain(|s| s.name() != shown);
                Err(Error::Unavailable(format!(
                    "hot spare {shown} not used: {e}"
                )))
            }
        }
    }
}
