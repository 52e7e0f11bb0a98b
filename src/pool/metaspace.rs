//! Metadata space at the pool level: growing the metadata area online (by
//! command, and on its own past a threshold, as LVM's
//! thin_pool_autoextend does), and the warnings at 80 and 90% use.

use super::Pool;
use crate::error::{Error, Result};
use crate::meta::codec::BLOCK_SIZE;
use crate::thin::ThinPool;

/// Grow on its own once this share of the metadata space is used (%).
pub const AUTOGROW_PERCENT: u64 = 80;
/// Each automatic growth adds this share of the current size (%)...
const AUTOGROW_STEP_PERCENT: u64 = 25;
/// ...and at least this much.
const AUTOGROW_MIN: u64 = 16 << 20;
/// Levels at which status and the log warn (%).
pub const WARN_PERCENTS: [u64; 2] = [80, 90];

impl Pool {
    /// Metadata blocks in use, and those ordinary use may reach (all but
    /// the reserve kept for removals): thresholds and warnings are shares
    /// of the latter, the space a user can actually fill.
    fn meta_use(thin: &ThinPool) -> (u64, u64) {
        let meta = thin.meta.read();
        let blocks = meta.msm().blocks();
        (
            meta.msm().used(),
            blocks.saturating_sub(meta.meta_reserve()).max(1),
        )
    }

    /// Grow the metadata area to at least `bytes` per copy (`pool set
    /// metadata-size`). Returns what was done.
    pub fn set_metadata_size(&self, bytes: u64) -> Result<String> {
        let name = self.name();
        let copies = self.label().meta_copies as usize;
        let (before, added) = self.metadata_op(|thin| {
            let total = thin.meta.read().msm().blocks() * BLOCK_SIZE as u64;
            if bytes <= total {
                return Err(Error::Invalid(format!(
                    "the metadata area of pool '{name}' is already {}; it grows, never shrinks",
                    crate::units::size_exact(total)
                )));
            }
            let added = thin.meta.write().grow_metadata(bytes - total, copies)?;
            Ok((total, added))
        })?;
        Ok(format!(
            "pool '{name}': metadata area grown from {} to {} ({} copies taken from the data area)",
            crate::units::format_size(before),
            crate::units::format_size(before + added * BLOCK_SIZE as u64),
            copies
        ))
    }

    /// Grow the metadata area when it is past [`AUTOGROW_PERCENT`] or an
    /// ordinary operation finds only the reserve left. Caller holds the
    /// ops lock and the gate (a metadata operation); the growth commits
    /// with it. Returns the bytes added.
    pub(crate) fn autogrow_locked(&self, thin: &ThinPool) -> Result<u64> {
        if !thin.meta.read().autogrow() {
            return Ok(0);
        }
        let (used, usable) = Self::meta_use(thin);
        let tight = thin
            .meta
            .read()
            .check_room_for_op(thin.csum_groups())
            .is_err();
        if !tight && used * 100 < usable * AUTOGROW_PERCENT {
            return Ok(0);
        }
        let blocks = thin.meta.read().msm().blocks();
        let step = (blocks * BLOCK_SIZE as u64 * AUTOGROW_STEP_PERCENT / 100).max(AUTOGROW_MIN);
        let copies = self.label().meta_copies as usize;
        let added = thin.meta.write().grow_metadata(step, copies)?;
        let msg = format!(
            "metadata area grown by {} to {} ({}% was used)",
            crate::units::format_size(added * BLOCK_SIZE as u64),
            crate::units::format_size((blocks + added) * BLOCK_SIZE as u64),
            used * 100 / usable
        );
        tracing::info!(pool = %self.name(), "{msg}");
        Ok(added * BLOCK_SIZE as u64)
    }

    /// Grow the metadata area if it is past the threshold (the daemon's
    /// background tick, and writes that ran out of metadata space).
    pub fn autogrow_metadata(&self) -> Result<u64> {
        if self.failure().is_some() || !self.thin().meta.read().autogrow() {
            return Ok(0);
        }
        let (used, blocks) = Self::meta_use(self.thin());
        let tight = {
            let thin = self.thin();
            thin.meta
                .read()
                .check_room_for_op(thin.csum_groups())
                .is_err()
        };
        if !tight && used * 100 < blocks * AUTOGROW_PERCENT {
            return Ok(0);
        }
        self.metadata_op(|thin| self.autogrow_locked(thin))
    }

    /// Let the metadata area grow on its own, or only by command.
    pub fn set_metadata_autogrow(&self, on: bool) -> Result<String> {
        self.metadata_op(|thin| {
            thin.meta.write().set_autogrow(on);
            Ok(())
        })?;
        Ok(format!(
            "pool '{}': the metadata area {}",
            self.name(),
            if on {
                "grows on its own past 80% use"
            } else {
                "grows only by `vpool pool set metadata-size`"
            }
        ))
    }

    /// Warnings about metadata use (80 and 90%), for status and the log.
    pub fn metadata_warnings(&self) -> Vec<String> {
        let (used, blocks) = Self::meta_use(self.thin());
        let pct = used * 100 / blocks.max(1);
        match WARN_PERCENTS.iter().rev().find(|&&w| pct >= w) {
            Some(w) => vec![format!(
                "metadata area {pct}% used (over {w}% of what is not kept for removals): {}; \
                 `vpool pool set {} metadata-size=SIZE` grows it now, removing snapshots frees it",
                if self.thin().meta.read().autogrow() {
                    "it grows on its own from the data area while data space is free"
                } else {
                    "it does not grow on its own (metadata-autogrow=off)"
                },
                self.name()
            )],
            None => Vec::new(),
        }
    }
}
