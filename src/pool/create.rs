//! Creating a pool: check the members, plan the layout, write labels and the
//! first transaction.

use super::layout::{member_data, plan, DEFAULT_STRIPE_UNIT};
use super::{names, Pool};
use crate::device::DeviceRef;
use crate::error::{Error, Result};
use crate::meta::label::{Label, MemberEntry, PoolState, MAX_MEMBERS};
use crate::raid::{Array, Geometry, MetaMirror, RaidLevel};
use crate::thin::store::MetaStore;
use crate::thin::store::{now, DEFAULT_CACHE_NODES};
use crate::thin::ThinPool;
use crate::units::{size_exact, ChunkSize};

#[derive(Clone, Debug)]
pub struct CreateOptions {
    pub level: RaidLevel,
    pub stripe_unit: u64,
    /// Overwrite members that carry another pool's label.
    pub force: bool,
    pub cache_nodes: usize,
    /// Keep a checksum of every 4 KiB data block (on by default).
    pub checksums: bool,
    /// Metadata area per copy, bytes (`None`: sized by [`super::layout::plan`]).
    pub metadata_size: Option<u64>,
}

impl CreateOptions {
    pub fn new(level: RaidLevel) -> CreateOptions {
        CreateOptions {
            level,
            stripe_unit: DEFAULT_STRIPE_UNIT,
            force: false,
            cache_nodes: DEFAULT_CACHE_NODES,
            checksums: true,
            metadata_size: None,
        }
    }
}

/// Read a member's label from either copy.
pub fn read_label(dev: &DeviceRef) -> std::result::Result<Label, String> {
    read_label_checked(dev).map(|(l, _)| l)
}

/// Read both label copies: the label (first valid copy) and a note for each
/// copy that is damaged or differs.
pub fn read_label_checked(dev: &DeviceRef) -> std::result::Result<(Label, Vec<String>), String> {
    let size = dev.size();
    if size < 8192 {
        return Err("device too small to hold a label".into());
    }
    let mut found = Vec::new();
    for (what, off) in [("start", 0), ("end", Label::backup_offset(size))] {
        let mut b = vec![0u8; 4096];
        let r = dev
            .read_at(&mut b, off)
            .map_err(|e| e.to_string())
            .and_then(|_| Label::decode(&b));
        found.push((what, r));
    }
    let good = found.iter().find_map(|(_, r)| r.as_ref().ok().cloned());
    match good {
        None => Err(found
            .into_iter()
            .filter_map(|(w, r)| r.err().map(|e| format!("label at {w}: {e}")))
            .collect::<Vec<_>>()
            .join("; ")),
        Some(l) => {
            let mut notes = Vec::new();
            for (w, r) in found {
                match r {
                    Err(e) => notes.push(format!(
                        "{}: label copy at the {w} is damaged ({e})",
                        dev.name()
                    )),
                    Ok(other) if other != l => {
                        notes.push(format!("{}: label copy at the {w} differs", dev.name()))
                    }
                    Ok(_) => {}
                }
            }
            Ok((l, notes))
        }
    }
}

/// Write both label copies and flush.
pub fn write_label(dev: &DeviceRef, label: &Label) -> Result<()> {
    let b = label.encode();
    let io = |e| Error::io(format!("writing label on {}", dev.name()), e);
    dev.write_at(&b, 0).map_err(io)?;
    dev.write_at(&b, Label::backup_offset(dev.size()))
        .map_err(io)?;
    dev.flush().map_err(io)
}

impl Pool {
    /// Create a pool on `devices`. Returns the pool and warnings for the user.
    pub fn create(
        name: &str,
        devices: Vec<DeviceRef>,
        opts: &CreateOptions,
    ) -> Result<(Pool, Vec<String>)> {
        names::validate("pool", name)?;
        let level = opts.level;
        let n = devices.len();
        if n < level.min_members() {
            return Err(Error::Invalid(format!(
                "{level} needs at least {} members, {n} given",
                level.min_members()
            )));
        }
        if n > MAX_MEMBERS {
            return Err(Error::Invalid(format!(
                "at most {MAX_MEMBERS} members per pool"
            )));
        }
        let su = opts.stripe_unit;
        if su < 4096 || !su.is_power_of_two() {
            return Err(Error::Invalid(
                "stripe unit must be a power of two of at least 4K".into(),
            ));
        }
        let mut names_seen = std::collections::HashSet::new();
        for dev in &devices {
            if !names_seen.insert(dev.name()) {
                return Err(Error::Invalid(format!("{} is listed twice", dev.name())));
            }
            if let Ok(l) = read_label(dev) {
                if l.state != PoolState::Destroyed && !opts.force {
                    return Err(Error::InUse(format!(
                        "{} belongs to pool '{}' ({}, {}); destroy that pool first or pass --force to overwrite it",
                        dev.name(),
                        l.pool_name,
                        uuid::Uuid::from_bytes(l.pool_uuid),
                        if l.state == PoolState::Exported { "exported" } else { "active" }
                    )));
                }
            }
        }
        let mut warnings = Vec::new();
        let sizes: Vec<u64> = devices.iter().map(|d| d.size()).collect();
        let min = sizes.iter().copied().min().unwrap_or(0);
        let max = sizes.iter().copied().max().unwrap_or(0);
        let basis: u64 = if level == RaidLevel::Linear {
            sizes.iter().sum()
        } else {
            min
        };
        let data_members = match level {
            RaidLevel::Linear | RaidLevel::Raid1 => 1,
            RaidLevel::Raid0 => n as u64,
            RaidLevel::Raid5 => n as u64 - 1,
        };
        let chunk = su
            * if level == RaidLevel::Linear {
                1
            } else {
                data_members
            };
        let lay = plan(
            min,
            basis / su,
            basis * data_members,
            opts.checksums.then_some(chunk),
            opts.metadata_size,
        )?;
        if level != RaidLevel::Linear && max > min + min / 10 {
            warnings.push(format!(
                "members differ in size ({} to {}); {level} uses {} of each",
                size_exact(min),
                size_exact(max),
                size_exact(min)
            ));
        }
        let member_data_sizes: Vec<u64> = sizes
            .iter()
            .map(|&s| {
                member_data(
                    if level == RaidLevel::Linear { s } else { min },
                    lay.data_start,
                    su,
                )
            })
            .collect();
        let geo = Geometry {
            level,
            stripe_unit: su,
            data_start: lay.data_start,
            member_data: member_data_sizes.clone(),
        };
        let chunk_size = geo.stripe_width();
        let data_chunks = ChunkSize::new(chunk_size).whole(geo.capacity());
        if data_chunks == 0 {
            return Err(Error::Invalid(
                "members are too small to hold any data".into(),
            ));
        }
        let pool_uuid = *uuid::Uuid::new_v4().as_bytes();
        let entries: Vec<MemberEntry> = member_data_sizes
            .iter()
            .map(|&d| MemberEntry {
                uuid: *uuid::Uuid::new_v4().as_bytes(),
                data_size: d,
            })
            .collect();
        let meta_copies = n.min(3) as u32;
        let created = now();
        let labels: Vec<Label> = (0..n)
            .map(|i| Label {
                pool_uuid,
                member_uuid: entries[i].uuid,
                member_index: i as u32,
                level,
                state: PoolState::Active,
                stripe_unit: su,
                chunk_size,
                device_size: sizes[i],
                meta_offset: lay.meta.meta_offset,
                meta_blocks: lay.meta.meta_blocks,
                msm_pages: lay.meta.msm_pages,
                meta_copies,
                data_start: lay.data_start,
                created,
                pool_name: name.to_string(),
                members: entries.clone(),
                generation: 0,
            })
            .collect();
        // Metadata first, labels last: a member without a label is not a pool member.
        let mirror = MetaMirror::new(
            (0..meta_copies as usize)
                .map(|i| (i, Some(devices[i].clone())))
                .collect(),
        );
        let meta = MetaStore::create(
            mirror,
            lay.meta,
            pool_uuid,
            name,
            data_chunks,
            chunk_size,
            n,
            opts.cache_nodes,
            opts.checksums,
        )?;
        for (dev, label) in devices.iter().zip(&labels) {
            write_label(dev, label)?;
        }
        let array = Array::new(geo, devices.into_iter().map(Some).collect());
        let thin = ThinPool::new(std::sync::Arc::new(array), meta, ChunkSize::new(chunk_size));
        Ok((
            Pool::from_parts(labels[0].clone(), thin, warnings.clone()),
            warnings,
        ))
    }
}
