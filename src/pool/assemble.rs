//! Assembling a pool from member labels: order members by index, notice
//! missing, stale and foreign members, and open degraded when the RAID level
//! allows it.

use super::create::{read_label_checked, write_label};
use super::rebuild::{mirror_for, out_of_service, rebuild_target};
use super::Pool;
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::meta::label::{Label, PoolState};
use crate::raid::{Array, Geometry};
use crate::thin::store::superblock::{
    SbTransition, MEMBER_ONLINE, MEMBER_STALE, TRANSITION_REBUILD,
};
use crate::thin::store::DEFAULT_CACHE_NODES;
use crate::thin::store::{MetaLayout, MetaStore};
use crate::thin::ThinPool;
use uuid::Uuid;

/// One pool found on devices: its first label, then each member's label and device.
pub type FoundPool = (Label, Vec<(Label, DeviceRef)>);

/// Pools found on a set of devices, by pool UUID, and notes on the rest.
pub fn group_by_pool(devices: Vec<DeviceRef>) -> (Vec<FoundPool>, Vec<String>) {
    let mut groups: Vec<FoundPool> = Vec::new();
    let mut notes = Vec::new();
    for dev in devices {
        match read_label_checked(&dev) {
            Ok((l, _)) if dev.size() < l.device_size => notes.push(format!(
                "{}: {}, smaller than the {} its label records: truncated or a different device? not used",
                dev.name(),
                crate::units::size_exact(dev.size()),
                crate::units::size_exact(l.device_size)
            )),
            Ok((l, damage)) => match groups.iter_mut().find(|g| g.0.pool_uuid == l.pool_uuid) {
                Some(g) => {
                    notes.extend(damage.iter().cloned());
                    repair_label(&dev, &l, &damage, &mut notes);
                    // The newest member table describes the pool (a
                    // spare's copy of it only when nothing else does).
                    let spare = l.state == PoolState::Spare;
                    if (l.generation > g.0.generation && !spare) || g.0.state == PoolState::Spare {
                        g.0 = l.clone();
                    }
                    g.1.push((l, dev))
                }
                None => {
                    notes.extend(damage.iter().cloned());
                    repair_label(&dev, &l, &damage, &mut notes);
                    groups.push((l.clone(), vec![(l, dev)]))
                }
            },
            Err(e) => notes.push(format!("{}: {e}", dev.name())),
        }
    }
    (groups, notes)
}

impl Pool {
    /// Open the pool whose members are among `devices`. Devices of other pools
    /// are ignored with a warning; missing members make the pool degraded.
    pub fn open(devices: Vec<DeviceRef>) -> Result<Pool> {
        Pool::open_with(devices, None, DEFAULT_CACHE_NODES)
    }

    pub fn open_with(
        devices: Vec<DeviceRef>,
        want: Option<[u8; 16]>,
        cache_nodes: usize,
    ) -> Result<Pool> {
        let (groups, notes) = group_by_pool(devices);
        let mut warnings: Vec<String> = notes;
        let group = match want {
            Some(u) => {
                for g in groups.iter().filter(|g| g.0.pool_uuid != u) {
                    for (_, dev) in &g.1 {
                        warnings.push(format!(
                            "{}: a member of another pool ('{}', uuid {}); ignored",
                            dev.name(),
                            g.0.pool_name,
                            Uuid::from_bytes(g.0.pool_uuid)
                        ));
                    }
                }
                groups.into_iter().find(|g| g.0.pool_uuid == u)
            }
            None => {
                if groups.len() > 1 {
                    let names: Vec<String> = groups
                        .iter()
                        .map(|g| format!("'{}'", g.0.pool_name))
                        .collect();
                    return Err(Error::Invalid(format!(
                        "the devices belong to several pools ({}); name the members of one",
                        names.join(", ")
                    )));
                }
                groups.into_iter().next()
            }
        };
        let Some((first, found)) = group else {
            return Err(Error::NotFound(format!(
                "no vpool member among the given devices ({})",
                warnings.join("; ")
            )));
        };
        let n = first.member_count();
        let mut members: Vec<Option<DeviceRef>> = vec![None; n];
        let mut labels: Vec<Option<Label>> = vec![None; n];
        let mut spares = Vec::new();
        // Devices no longer in the member table: one may be a member being
        // replaced in service, which still serves (see below).
        let mut former = Vec::new();
        for (l, dev) in found {
            if !same_shape(&first, &l) {
                warnings.push(format!(
                    "{}: label disagrees with the other members; ignored",
                    dev.name()
                ));
                continue;
            }
            if l.state == PoolState::Spare {
                spares.push(dev);
                continue;
            }
            let Some(i) = first.members.iter().position(|m| m.uuid == l.member_uuid) else {
                former.push((l, dev));
                continue;
            };
            if l.generation != first.generation || l.members != first.members {
                // A member change was interrupted before this label was rewritten.
                let mut newer = first.for_member(i, dev.size());
                newer.state = l.state;
                match write_label(&dev, &newer) {
                    Ok(()) => warnings.push(format!(
                        "{}: label brought up to the current member table",
                        dev.name()
                    )),
                    Err(e) => warnings.push(format!("{}: old label kept ({e})", dev.name())),
                }
            }
            if members[i].is_some() {
                warnings.push(format!("{}: duplicate of member {i}; ignored", dev.name()));
                continue;
            }
            members[i] = Some(dev);
            labels[i] = Some(l);
        }
        let layout = MetaLayout {
            meta_offset: first.meta_offset,
            msm_pages: first.msm_pages,
            meta_blocks: first.meta_blocks,
        };

        let geo = Geometry {
            level: first.level,
            stripe_unit: first.stripe_unit,
            data_start: first.data_start,
            member_data: first.members.iter().map(|m| m.data_size).collect(),
        };
        let data_chunks = geo.capacity() / first.chunk_size;
        // A member replaced in service keeps its metadata copy on its old
        // device until the rebuild ends (`MetaMirror::set_shadow`).
        let open_meta = |members: &Vec<Option<DeviceRef>>,
                         rebuilding: Option<usize>,
                         old: Option<&DeviceRef>| {
            let mirror = match (rebuilding, old) {
                (Some(k), Some(old)) => {
                    let mut with_old = members.clone();
                    with_old[k] = Some(old.clone());
                    let mut m = mirror_for(&first, &with_old, None);
                    m.set_shadow(k);
                    m
                }
                _ => mirror_for(&first, members, rebuilding),
            };
            MetaStore::open(mirror, layout, first.pool_uuid, n, data_chunks, cache_nodes)
        };
        // The newest superblock first: members it says missed writes must not
        // be trusted, not even for metadata (their copy is stale), and a
        // member being rebuilt holds no metadata copy yet. A device being
        // replaced in service holds a current copy too, which may be the
        // only one left (raid1 x2 without member 0): it is read beside them.
        let mut copies = mirror_for(&first, &members, None).copies().to_vec();
        copies.extend(
            former
                .iter()
                .filter_map(|(l, dev)| Some((replaced_slot(&first, l)?, Some(dev.clone()))))
                .filter(|(k, _)| *k < first.meta_copies as usize),
        );
        let (sb, _) = MetaStore::read_superblocks(
            &crate::raid::MetaMirror::new(copies),
            &layout,
            first.pool_uuid,
        );
        let missing_now = |members: &[Option<DeviceRef>]| {
            (0..n).filter(|&i| members[i].is_none()).collect::<Vec<_>>()
        };
        let missing = missing_now(&members);
        if sb.is_none() && !missing.is_empty() {
            let why = "no current metadata copy is among the devices";
            return Err(cannot_open(&first, &missing, why));
        }
        let states = sb
            .as_ref()
            .map(|s| s.member_states.clone())
            .unwrap_or_default();
        let sb_replacing = sb.as_ref().is_some_and(|s| s.replacing);
        let rebuild = sb
            .and_then(|s| s.transition)
            .filter(|t| t.kind == TRANSITION_REBUILD);
        let mut excluded = Vec::new();
        for (i, slot) in members.iter_mut().enumerate() {
            let Some(why) = out_of_service(states.get(i)) else {
                continue;
            };
            if let Some(dev) = slot.take() {
                warnings.push(format!(
                    "member {i} ({}) is {why}; it is not used: `vpool pool replace` it, or `vpool pool clear` to rebuild onto it",
                    dev.name()
                ));
                excluded.push((i, dev));
            }
        }
        let rebuilding = rebuild.map(|t| t.removed as usize);
        if let Some(t) = rebuild {
            let k = t.removed as usize;
            if k < n && first.members[k].uuid != rebuild_target(&t) {
                // Crashed between recording a replacement and labelling it.
                if let Some(dev) = members[k].take() {
                    excluded.push((k, dev));
                }
                warnings.push(format!(
                    "member {k}: its replacement was recorded but not labelled before the pool stopped; run `vpool pool replace` again"
                ));
            }
        }
        let replaced = match sb_replacing {
            true => replaced_in_service(&first, rebuild, &mut former),
            false => None,
        };
        let mut meta = open_meta(&members, rebuilding, replaced.as_ref())?;
        // Not among the devices: it misses what is written from now on,
        // so it must not serve if it comes back.
        let forget_old = meta.replacing() && replaced.is_none();
        if forget_old {
            meta.set_replacing(false);
        }
        for (_, dev) in former {
            warnings.push(format!(
                "{}: not in the pool's current member table (a former member?); ignored",
                dev.name()
            ));
        }
        let missing = missing_now(&members);
        let tolerated = first.level.tolerated_failures(n);
        if missing.len() > tolerated {
            let why = format!("{} tolerates {tolerated}", first.level);
            return Err(cannot_open(&first, &missing, &why));
        }
        for &i in &missing {
            if meta.member_states()[i] == MEMBER_ONLINE {
                warnings.push(format!(
                    "DEGRADED: member {i} (uuid {}) is missing; data is served from redundancy",
                    Uuid::from_bytes(first.members[i].uuid)
                ));
                meta.set_member_state(i, MEMBER_STALE);
            }
        }
        let chunk_size = first.chunk_size;
        if meta.committed().chunk_size != chunk_size {
            return Err(Error::corrupt(
                "superblock and label disagree on the chunk size",
            ));
        }
        let state = super::grow::resume_state(&first, geo, members, &mut meta, &mut warnings)?;
        let array = std::sync::Arc::new(Array::with_state(state));
        if let Some(dev) = replaced {
            warnings.push(format!(
                "{}: being replaced in service; it serves the rows not yet rebuilt",
                dev.name()
            ));
            array.set_replacing(Some(dev));
        } else if forget_old {
            // Recorded before the first flush completes.
            array.health().note_unrecorded();
        }
        for (i, dev) in excluded {
            array.keep_failed_device(i, dev);
        }
        // The rest of the metadata: its extents are read through the array.
        meta.blocks.mirror.attach(array.health().clone());
        meta.load(Some(array.clone()))?;
        let thin = ThinPool::new(array, meta, first.chunk());
        let pool = Pool::from_parts(first, thin, warnings);
        *pool.s.spares.lock() = spares;
        // Layout first (rows a restripe left in its backup copy are put
        // back), then the regions the crash left with writes in flight.
        // Flushes since the last commit first: they are on top of it.
        let replayed = pool.s.thin.replay_log()?;
        if replayed.records > 0 || replayed.stopped.is_some() {
            pool.s.warnings.write().push(format!(
                "the pool was not closed cleanly: replayed {} flush-log records ({} changes) made since its last commit{}{}",
                replayed.records,
                replayed.entries,
                replayed.data_summary(),
                match &replayed.stopped {
                    Some(why) => format!("; the replay stopped early: {why}"),
                    None => String::new(),
                }
            ));
        }
        pool.recover_transition()?;
        let r = pool.s.thin.resync_intents()?;
        if r.regions > 0 {
            pool.s.warnings.write().push(format!(
                "the pool was not closed cleanly: resynced {} chunks in {} regions with writes in flight ({} blocks made consistent, {} kept an unflushed write{})",
                r.chunks, r.regions, r.blocks_fixed, r.blocks_new,
                if r.blocks_damaged > 0 {
                    format!(
                        "; {} blocks match no checksum and no write in flight explains it: they read as errors; `vpool pool scrub` lists them",
                        r.blocks_damaged
                    )
                } else {
                    String::new()
                }
            ));
        }
        // Removals a crash interrupted: their trees are released now.
        let releasing = pool.s.thin.releasing();
        if releasing > 0 {
            let note = match pool.release_removed() {
                Ok(()) => format!(
                    "finished releasing the space of {releasing} removed volume(s) or snapshot(s)"
                ),
                Err(e) => format!(
                    "the space of {releasing} removed volume(s) or snapshot(s) is not released yet ({e}); the next removal goes on with it"
                ),
            };
            pool.s.warnings.write().push(note);
        }
        Ok(pool)
    }
}

/// The former device of the member a rebuild replaces in service (the
/// superblock says so), taken out of `former`: its label is of this pool,
/// names it that member, and carries the member table just before the
/// current one (a replacement adds one to the generation). A device
/// replaced earlier has an older table; one whose replacement was recorded
/// but not labelled is still in the current table.
fn replaced_in_service(
    first: &Label,
    rebuild: Option<SbTransition>,
    former: &mut Vec<(Label, DeviceRef)>,
) -> Option<DeviceRef> {
    let t = rebuild?;
    let k = t.removed as usize;
    if first.members.get(k).map(|m| m.uuid) != Some(rebuild_target(&t)) {
        return None;
    }
    let i = former
        .iter()
        .position(|(l, _)| replaced_slot(first, l) == Some(k))?;
    Some(former.remove(i).1)
}

/// The member a former device was, if the last change of the member table
/// (`first`'s) may have been its replacement: its label carries the table
/// just before, with the same member count, and names it member k.
fn replaced_slot(first: &Label, l: &Label) -> Option<usize> {
    if l.generation + 1 != first.generation || l.members.len() != first.members.len() {
        return None;
    }
    let k = l.members.iter().position(|m| m.uuid == l.member_uuid)?;
    (first.members[k].uuid != l.member_uuid).then_some(k)
}

fn cannot_open(first: &Label, missing: &[usize], why: &str) -> Error {
    let n = first.member_count();
    Error::Unavailable(format!(
        "pool '{}' cannot be opened: {} of {n} members missing or stale ({}) and {why}; attach the missing devices",
        first.pool_name,
        missing.len(),
        missing
            .iter()
            .map(|i| format!("member {i}, uuid {}", Uuid::from_bytes(first.members[*i].uuid)))
            .collect::<Vec<_>>()
            .join(", "),
    ))
}

/// Rewrite both label copies when one was damaged (best effort; read-only
/// devices just keep the note).
fn repair_label(dev: &DeviceRef, l: &Label, damage: &[String], notes: &mut Vec<String>) {
    if damage.is_empty() {
        return;
    }
    match write_label(dev, l) {
        Ok(()) => notes.push(format!(
            "{}: label rewritten from the good copy",
            dev.name()
        )),
        Err(e) => notes.push(format!("{}: label not rewritten ({e})", dev.name())),
    }
}

fn same_shape(a: &Label, b: &Label) -> bool {
    a.pool_uuid == b.pool_uuid
        && a.level == b.level
        && a.stripe_unit == b.stripe_unit
        && a.chunk_size == b.chunk_size
        && a.meta_offset == b.meta_offset
        && a.meta_blocks == b.meta_blocks
        && a.data_start == b.data_start
}
