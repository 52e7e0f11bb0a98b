//! `pool scrub`: the whole pool read and checked, step by step, with its
//! progress and last result kept for `pool status`.

use super::Pool;
use crate::error::{Error, Result};
pub use crate::thin::scrub::ScrubReport;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Chunks per step (client I/O waits for one step at most).
const STEP_CHUNKS: usize = 64;

/// The running or last scrub of a pool (since it was opened).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct ScrubStatus {
    /// running, finished, or failed (with `error`).
    pub state: String,
    pub check_only: bool,
    /// Chunks in use at the start, and scrubbed so far.
    pub total_chunks: u64,
    pub done_chunks: u64,
    pub percent: f64,
    pub seconds: f64,
    /// Bytes read per second (every copy counted once).
    pub rate: u64,
    pub report: ScrubReport,
    #[serde(default)]
    pub error: Option<String>,
}

impl Pool {
    /// Scrub every chunk in use. With `check_only`, count what is wrong
    /// and change nothing. `progress(done, total)` after each step.
    pub fn scrub(
        &self,
        check_only: bool,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<ScrubReport> {
        let thin = &self.s.thin;
        let total = thin.meta.read().data.used();
        {
            let mut st = self.s.scrub.lock();
            if st.as_ref().is_some_and(|s| s.state == "running") {
                return Err(Error::InUse(format!(
                    "pool '{}' is being scrubbed already (`vpool pool status {}`)",
                    self.name(),
                    self.name()
                )));
            }
            *st = Some(ScrubStatus {
                state: "running".into(),
                check_only,
                total_chunks: total,
                ..ScrubStatus::default()
            });
        }
        let t0 = Instant::now();
        let mut report = ScrubReport::default();
        let mut next = Some(crate::units::Chunk(0));
        let result: Result<()> = (|| {
            while let Some(from) = next {
                next = thin.scrub_step(from, STEP_CHUNKS, !check_only, &mut report)?;
                let secs = t0.elapsed().as_secs_f64();
                if let Some(s) = self.s.scrub.lock().as_mut() {
                    s.done_chunks = report.chunks;
                    s.percent =
                        (report.chunks as f64 * 1000.0 / total.max(1) as f64).floor() / 10.0;
                    s.seconds = secs;
                    s.rate = (report.bytes as f64 / secs.max(1e-3)) as u64;
                    s.report = report.clone();
                }
                progress(report.chunks, total);
                // Let clients in between steps.
                std::thread::yield_now();
            }
            Ok(())
        })();
        let mut st = self.s.scrub.lock();
        if let Some(s) = st.as_mut() {
            s.seconds = t0.elapsed().as_secs_f64();
            s.percent = 100.0;
            match &result {
                Ok(()) => s.state = "finished".into(),
                Err(e) => {
                    s.state = "failed".into();
                    s.error = Some(e.to_string());
                }
            }
        }
        result.map(|()| report)
    }

    /// The running or last scrub.
    pub fn scrub_status(&self) -> Option<ScrubStatus> {
        self.s.scrub.lock().clone()
    }
}
