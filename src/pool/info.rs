//! What `pool status`, `pool list`, `vol list` and `snap list` show.

use super::Pool;
pub use crate::raid::health::ErrorCounts;
use crate::thin::store::superblock::{
    MEMBER_FAILED, MEMBER_REBUILDING, MEMBER_STALE, TRANSITION_REBUILD,
};
use crate::units::BLOCK_BYTES;
use serde::Serialize;

#[derive(Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct MemberInfo {
    pub index: usize,
    pub device: Option<String>,
    pub uuid: String,
    /// online, missing, stale (missed writes while missing), failed, or
    /// rebuilding.
    pub state: String,
    pub data_bytes: u64,
    /// I/O errors since the pool was opened or cleared.
    #[serde(default)]
    pub errors: ErrorCounts,
    /// Opened with `O_DIRECT` (`vpool daemon --direct-io`, block devices).
    #[serde(default)]
    pub direct_io: bool,
    /// The device this member's new one replaces in service: it serves the
    /// rows not yet rebuilt (`pool replace` of a member in service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<String>,
}

#[derive(Serialize, serde::Deserialize, Clone, Debug, Default)]
pub struct PoolInfo {
    pub name: String,
    pub uuid: String,
    pub level: String,
    /// online, degraded (a member out of service or rebuilding) or failed
    /// (redundancy exhausted: no more writes).
    pub health: String,
    /// Why a failed pool takes no writes (and what to do), if it is failed.
    #[serde(default)]
    pub failure: Option<String>,
    /// Member failures and the reason a failed pool stopped, in order.
    #[serde(default)]
    pub events: Vec<String>,
    /// Hot spares (devices).
    #[serde(default)]
    pub spares: Vec<String>,
    pub members: Vec<MemberInfo>,
    pub capacity: u64,
    pub allocated: u64,
    pub free: u64,
    /// Sum of volume sizes (thin: may exceed capacity).
    pub virtual_bytes: u64,
    pub chunk_size: u64,
    pub stripe_unit: u64,
    pub volumes: usize,
    pub snapshots: usize,
    pub metadata_used: u64,
    pub metadata_total: u64,
    /// Metadata kept for removals (ordinary use stops before it).
    #[serde(default)]
    pub metadata_reserved: u64,
    /// Metadata space taken from the data area (online growth), bytes
    /// per copy, and how many times it grew.
    #[serde(default)]
    pub metadata_grown: u64,
    #[serde(default)]
    pub metadata_extents: usize,
    /// The metadata area grows on its own past 80% use.
    #[serde(default)]
    pub metadata_autogrow: bool,
    /// Bytes per copy the flush log takes (0: none yet).
    #[serde(default)]
    pub metadata_log: u64,
    /// Client flushes since the pool was opened, the flush-log rounds that
    /// served them (concurrent flushes share one), and the flushes that
    /// committed the pool instead.
    #[serde(default)]
    pub flushes: u64,
    #[serde(default)]
    pub flush_log_rounds: u64,
    #[serde(default)]
    pub flush_commits: u64,
    /// 4 KiB blocks written through the data journal since the pool was
    /// opened (pools whose data has no second copy).
    #[serde(default)]
    pub journaled_blocks: u64,
    /// Small overwrites of committed data on such pools: rounds of write
    /// intents written, the writes they let go in place, and those written
    /// afresh because the log could not take their intents (full until
    /// the next commit).
    #[serde(default)]
    pub intent_rounds: u64,
    #[serde(default)]
    pub writes_in_place: u64,
    #[serde(default)]
    pub writes_afresh_log_full: u64,
    /// Of `writes_in_place`, those whose intents were queued while the
    /// request waited behind others of its client, and so went in an
    /// earlier writer's round.
    #[serde(default)]
    pub writes_named_ahead: u64,
    /// Commits since the pool was opened, for any reason (flushes, the
    /// daemon's timer, a full flush log, writes short of metadata room,
    /// metadata operations).
    #[serde(default)]
    pub commits: u64,
    /// Times a write found too little metadata room for the running
    /// transaction's commit and waited for a commit (writes short of room
    /// together wait for one). Often: grow the metadata area.
    #[serde(default)]
    pub room_waits: u64,
    /// Removed volumes whose space is still being released.
    #[serde(default)]
    pub releasing: usize,
    pub transaction: u64,
    pub metadata_repairs: u64,
    /// Data blocks whose bad copy reads rewrote from a good one, and
    /// blocks no copy of which matched its checksum, since the pool was
    /// opened (scrubs report their own).
    #[serde(default)]
    pub checksum_repairs: u64,
    #[serde(default)]
    pub checksum_unrecoverable: u64,
    pub warnings: Vec<String>,
    /// A layout change in progress (`pool add`).
    #[serde(default)]
    pub job: Option<super::JobInfo>,
    /// Where the data area starts on each member (bytes).
    #[serde(default)]
    pub data_start: u64,
    /// Every 4 KiB data block carries a checksum.
    #[serde(default)]
    pub checksums: bool,
    /// The running or last scrub since the pool was opened.
    #[serde(default)]
    pub scrub: Option<super::ScrubStatus>,
}

#[derive(Serialize, serde::Deserialize, Clone, Debug)]
pub struct VolumeInfo {
    /// `pool/volume` or `pool/volume@snapshot`.
    pub name: String,
    pub kind: String,
    pub size: u64,
    /// Bytes of chunks this volume maps (shared ones included).
    pub mapped: u64,
    pub created: u64,
    pub origin: Option<String>,
    pub read_only: bool,
}

impl Pool {
    /// Bytes of chunks `volume` maps that `parent` (the volume it was
    /// cloned from) does not map to the same place: what the volume alone
    /// costs the pool. Every mapped chunk without a parent.
    pub fn own_bytes(&self, volume: &str, parent: Option<&str>) -> crate::Result<u64> {
        let v = self.volume(volume, None)?;
        let p = parent.map(|p| self.volume(p, None)).transpose()?;
        let cs = self.thin().chunk_size;
        let mut own = 0;
        for (off, len) in v.mapped_ranges()? {
            for k in cs.covering(off, len) {
                let mine = v.physical_chunk(k)?;
                let shared = match &p {
                    Some(p) if cs.start(k) < p.size()? => p.physical_chunk(k)? == mine,
                    _ => false,
                };
                if !shared {
                    own += cs.bytes();
                }
            }
        }
        Ok(own)
    }

    pub fn info(&self) -> PoolInfo {
        let job = self.job();
        let thin = self.thin();
        let flush = thin.flush_stats();
        let meta = thin.meta.read();
        let cat = meta.catalog();
        let cs = thin.chunk_size;
        let label = self.label();
        let health = thin.array.health();
        let replacing = meta
            .transition()
            .filter(|t| t.kind == TRANSITION_REBUILD && thin.array.replacing_serves())
            .and_then(|t| Some((t.removed as usize, thin.array.replacing()?)));
        let members: Vec<MemberInfo> = thin
            .array
            .members()
            .iter()
            .enumerate()
            .map(|(i, dev)| {
                let failed = health.is_failed(i);
                let state = meta.member_states().get(i).copied();
                MemberInfo {
                    index: i,
                    device: dev
                        .clone()
                        .or_else(|| thin.array.failed_device(i))
                        .map(|d| d.name()),
                    uuid: uuid::Uuid::from_bytes(label.members[i].uuid).to_string(),
                    state: match (dev, state) {
                        _ if failed || state == Some(MEMBER_FAILED) => "failed".into(),
                        (Some(_), Some(MEMBER_REBUILDING)) => "rebuilding".into(),
                        (Some(_), _) => "online".into(),
                        (None, Some(MEMBER_STALE))
                            if meta.committed().member_states.get(i) == Some(&MEMBER_STALE) =>
                        {
                            "stale".into()
                        }
                        (None, _) => "missing".into(),
                    },
                    data_bytes: label.members[i].data_size,
                    errors: health.errors(i),
                    direct_io: dev.as_ref().is_some_and(|d| d.direct_io()),
                    replacing: replacing
                        .as_ref()
                        .filter(|(k, _)| *k == i)
                        .map(|(_, d)| d.name()),
                }
            })
            .collect();
        let degraded = members.iter().any(|m| m.state != "online");
        let capacity = cs.span(meta.data.total());
        let allocated = cs.span(meta.data.used());
        PoolInfo {
            job,
            checksums: meta.has_csums(),
            data_start: label.data_start,
            scrub: self.scrub_status(),
            name: self.name().to_string(),
            uuid: self.uuid().to_string(),
            level: label.level.to_string(),
            health: if health.is_broken() {
                "failed".into()
            } else if degraded {
                "degraded".into()
            } else {
                "online".into()
            },
            failure: health.broken(),
            events: health.events(),
            spares: self.spares().iter().map(|d| d.name()).collect(),
            members,
            capacity,
            allocated,
            free: capacity.saturating_sub(allocated),
            virtual_bytes: cat
                .volumes
                .iter()
                .filter(|r| r.snapshot_of.is_none())
                .map(|r| r.size)
                .sum(),
            chunk_size: cs.bytes(),
            stripe_unit: label.stripe_unit,
            volumes: cat
                .volumes
                .iter()
                .filter(|r| r.snapshot_of.is_none())
                .count(),
            snapshots: cat
                .volumes
                .iter()
                .filter(|r| r.snapshot_of.is_some())
                .count(),
            metadata_used: meta.msm().used() * 4096,
            metadata_total: meta.msm().blocks() * 4096,
            metadata_reserved: meta.meta_reserve() * 4096,
            metadata_grown: (meta.blocks.extents().iter())
                .map(|e| e.blocks * BLOCK_BYTES)
                .sum(),
            metadata_extents: meta.blocks.extents().len(),
            metadata_autogrow: meta.autogrow(),
            metadata_log: match meta.log_dir().is_none() {
                true => 0,
                false => (meta.log_blocks().len() as u64 + 1) * BLOCK_BYTES,
            },
            flushes: flush.flushes,
            flush_log_rounds: flush.log_rounds,
            flush_commits: flush.commits,
            journaled_blocks: flush.journaled_blocks,
            intent_rounds: flush.intent_rounds,
            writes_in_place: flush.named_writes,
            writes_afresh_log_full: flush.unnamed_writes,
            writes_named_ahead: flush.named_ahead,
            commits: thin.commit_count(),
            room_waits: thin.room_waits(),
            releasing: meta.releasing(),
            transaction: meta.committed().txid,
            metadata_repairs: meta.blocks.mirror.repaired(),
            checksum_repairs: (thin.csums.as_ref())
                .map_or(0, |c| c.repaired.load(std::sync::atomic::Ordering::Relaxed)),
            checksum_unrecoverable: (thin.csums.as_ref()).map_or(0, |c| {
                c.unrecoverable.load(std::sync::atomic::Ordering::Relaxed)
            }),
            warnings: {
                drop(meta);
                let mut w = self.warnings();
                w.extend(self.metadata_warnings());
                w
            },
        }
    }

    /// Volumes and snapshots, volumes first by name, each followed by its snapshots.
    pub fn list(&self) -> Vec<VolumeInfo> {
        let thin = self.thin();
        let meta = thin.meta.read();
        let cat = meta.catalog();
        let cs = thin.chunk_size;
        let mut vols: Vec<_> = cat
            .volumes
            .iter()
            .filter(|r| r.snapshot_of.is_none() && !super::names::is_hidden(&r.name))
            .collect();
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        let mapped = |id| meta.volume_root(id).map(|v| cs.span(v.mapped)).unwrap_or(0);
        let mut out = Vec::new();
        for v in vols {
            out.push(VolumeInfo {
                name: format!("{}/{}", self.name(), v.name),
                kind: "volume".into(),
                size: v.size,
                mapped: mapped(v.id),
                created: v.created,
                origin: v
                    .cloned_from
                    .as_ref()
                    .map(|c| format!("{}/{c}", self.name())),
                read_only: false,
            });
            let mut snaps: Vec<_> = cat
                .volumes
                .iter()
                .filter(|r| r.snapshot_of == Some(v.id))
                .collect();
            snaps.sort_by_key(|s| (s.created, s.id));
            for s in snaps {
                out.push(VolumeInfo {
                    name: format!("{}/{}@{}", self.name(), v.name, s.name),
                    kind: "snapshot".into(),
                    size: s.size,
                    mapped: mapped(s.id),
                    created: s.created,
                    origin: Some(format!("{}/{}", self.name(), v.name)),
                    read_only: true,
                });
            }
        }
        out
    }
}
