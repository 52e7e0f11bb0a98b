//! A failed pool (see `raid::health`): a flush or a commit failed where no
//! redundancy holds the data, so writes since the last commit may be lost.
//! The pool refuses writes, flushes and commits until the operator fixes
//! the device and runs `pool clear`, which reloads the pool from its last
//! commit: what was not committed (never acknowledged as durable) is
//! dropped, and the regions written in place are resynced as after a crash.

use super::Pool;
use crate::error::{Error, Result};

impl Pool {
    /// Why the pool takes no writes, if it does not.
    pub fn failure(&self) -> Option<String> {
        self.s.thin.array.health().broken()
    }

    /// Go back to the last commit and take writes again (`pool clear` on a
    /// failed pool). Returns what was done.
    pub fn reload_from_last_commit(&self) -> Result<String> {
        let name = self.name();
        {
            let _ops = self.s.ops.lock();
            let thin = &self.s.thin;
            let _gate = thin.exclusive();
            let health = thin.array.health();
            let Some(why) = health.broken() else {
                return Ok(format!("pool '{name}' is not failed"));
            };
            if thin.array.state().transition.is_some() {
                return Err(Error::InUse(format!(
                    "pool '{name}' failed while changing its layout; restart the daemon (or reopen the pool) to resume from the last commit"
                )));
            }
            let fresh = thin.meta.read().reopen().map_err(|e| {
                Error::Unavailable(format!(
                    "pool '{name}' cannot be reloaded from its last commit ({e}); it stays failed: fix the devices and try again"
                ))
            })?;
            let txid = fresh.committed().txid;
            *thin.meta.write() = fresh;
            if let Some(c) = &thin.csums {
                c.drop_pending();
            }
            thin.log_reset();
            if let Some(i) = &thin.intent {
                i.vouch();
            }
            health.clear_broken();
            health.event(format!(
                "pool '{name}' reloaded from transaction {txid} after: {why}"
            ));
        }
        // Flushes since that commit are in the log; writes in place may
        // have reached some copies only: the same recovery as after a crash.
        let replayed = self.s.thin.replay_log()?;
        let r = self.s.thin.resync_intents()?;
        Ok(format!(
            "pool '{name}' reloaded from its last commit{}; writes not flushed before the failure are dropped{}",
            if replayed.records > 0 {
                format!(" and {} flush-log records", replayed.records)
            } else {
                String::new()
            },
            if r.regions > 0 {
                format!(" ({} chunks resynced)", r.chunks)
            } else {
                String::new()
            }
        ))
    }
}
