//! What `pool iostat` shows: the I/O clients asked of each volume (counted
//! by its [`Volume`](super::Volume) handles) and what reached each member
//! (counted by the member device), since the pool was opened. Consumers
//! take differences between two readings for rates.

use super::Pool;
use crate::device::stats::{IoCounters, IoStats};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One member's counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MemberIoStats {
    pub index: usize,
    /// The device, or `None` while the member is missing.
    pub device: Option<String>,
    /// `None` for a device that keeps no counters (or a missing member).
    pub io: Option<IoCounters>,
}

/// One volume's or snapshot's counters.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct VolumeIoStats {
    /// `pool/volume` or `pool/volume@snapshot`.
    pub name: String,
    pub io: IoCounters,
}

/// A pool's counters at one moment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PoolIoStats {
    pub pool: String,
    /// Nanoseconds the counters cover (since the pool was opened).
    pub uptime_ns: u64,
    /// Data space, for the capacity columns.
    pub allocated: u64,
    pub free: u64,
    /// Every volume's counters added up: the pool as clients see it.
    pub total: IoCounters,
    pub members: Vec<MemberIoStats>,
    /// Volumes with I/O since the pool was opened, by name.
    pub volumes: Vec<VolumeIoStats>,
}

impl Pool {
    /// The counters of volume `id` (made on first use).
    pub(crate) fn volume_stats(&self, id: u64) -> Arc<IoStats> {
        self.s.io.lock().entry(id).or_default().clone()
    }

    /// Every counter of the pool now.
    pub fn iostat(&self) -> PoolIoStats {
        let name = self.name();
        let thin = self.thin();
        let members = (thin.array.members().iter().enumerate())
            .map(|(index, dev)| MemberIoStats {
                index,
                device: dev.as_ref().map(|d| d.name()),
                io: dev.as_ref().and_then(|d| d.io_counters()),
            })
            .collect();
        let stats: Vec<(u64, IoCounters)> = (self.s.io.lock().iter())
            .map(|(id, s)| (*id, s.snapshot()))
            .collect();
        let meta = thin.meta.read();
        let cat = meta.catalog();
        let (capacity, allocated) = (
            thin.chunk_size.span(meta.data.total()),
            thin.chunk_size.span(meta.data.used()),
        );
        let mut total = IoCounters::default();
        let mut volumes = Vec::new();
        for (id, io) in stats {
            total.add(&io);
            // A removed volume's I/O stays in the total, not in the list.
            if cat.by_id(id).is_none() {
                continue;
            }
            let name = cat.display_name(id);
            volumes.push(VolumeIoStats { name, io });
        }
        volumes.sort_by(|a, b| a.name.cmp(&b.name));
        PoolIoStats {
            pool: name,
            uptime_ns: self.s.opened.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            allocated,
            free: capacity.saturating_sub(allocated),
            total,
            members,
            volumes,
        }
    }
}
