//! containerd's snapshot model on thin volumes. Block mode (as containerd's
//! devmapper snapshotter): a snapshot without a parent is a new thin volume
//! with a fresh ext4; every other snapshot is an O(1) clone of its committed
//! parent; containerd mounts the volume's FUSE file itself (`ext4` with the
//! `loop` option; `ro` for views). Overlay mode (`overlay.rs`): every layer
//! is a volume of its own, mounted by vpool, and containers get overlayfs.

use super::filter::{self, Fields};
use super::overlay::{self, MountSpec};
use super::store::{now_nanos, Kind, Record, Store, TEMPLATE};
use crate::control::host;
use crate::control::Engine;
use crate::error::Error;
use anyhow::{anyhow, bail};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Clone)]
pub struct Config {
    /// The pool layers live in (default: the only pool).
    pub pool: Option<String>,
    /// The size of a layer's volume (thin: only what is written is used).
    pub size: u64,
    /// Where volume files are mounted if the daemon has no `--fuse-mount`.
    pub fuse_fallback: PathBuf,
    /// New layer chains in overlay mode (each snapshot keeps the mode it
    /// was made in).
    pub overlay: bool,
    /// Overlay mode: where layers are mounted.
    pub root: PathBuf,
}

/// What `Stat`, `Update` and `List` return.
#[derive(Debug, Clone)]
pub struct Info {
    pub name: String,
    pub parent: String,
    pub kind: Kind,
    pub created: u64,
    pub updated: u64,
    pub labels: BTreeMap<String, String>,
}

pub struct Snapshotter {
    pub(super) engine: Arc<dyn Engine>,
    pub(super) cfg: Config,
    pub(super) pool: String,
    /// One lock over the records: calls are short except a first layer's
    /// mkfs, and one lock keeps parents and children consistent.
    pub(super) store: Mutex<Store>,
}

fn not_found(key: &str) -> anyhow::Error {
    anyhow!(Error::NotFound(format!("snapshot '{key}' does not exist")))
}

fn info(name: &str, r: &Record) -> Info {
    Info {
        name: name.to_string(),
        parent: r.parent.clone(),
        kind: r.kind,
        created: r.created,
        updated: r.updated,
        labels: r.labels.clone(),
    }
}

impl Snapshotter {
    /// Load the records and make them agree with the pool: records whose
    /// volume is gone are dropped, volumes without a record (a crash between
    /// the two) are removed.
    pub fn new(engine: Arc<dyn Engine>, cfg: Config) -> anyhow::Result<Snapshotter> {
        let pools = engine.pool_names()?;
        let pool = match &cfg.pool {
            Some(p) if pools.contains(p) => p.clone(),
            Some(p) => {
                return Err(anyhow!(Error::Unavailable(format!(
                    "the snapshotter's pool '{p}' (--snapshotter-pool) does not exist yet: create or import it (`vpool pool create {p} ...`); the snapshotter takes it up without a restart"
                ))))
            }
            None => match pools.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(anyhow!(Error::Unavailable(
                        "the snapshotter has no pool yet: create one (`vpool pool create`); the snapshotter takes it up without a restart".into()
                    )))
                }
                many => bail!(
                    "several pools exist ({}): choose the snapshotter's with --snapshotter-pool",
                    many.join(", ")
                ),
            },
        };
        let s = Snapshotter {
            store: Mutex::new(Store::load(engine.state_dir())?),
            engine,
            cfg,
            pool,
        };
        s.reconcile()?;
        s.mount_layers();
        Ok(s)
    }

    pub(super) fn layer_dir(&self, r: &Record) -> PathBuf {
        overlay::layer_dir(&self.cfg.root, &r.volume)
    }

    pub(super) fn file(&self, volume: &str) -> anyhow::Result<PathBuf> {
        Ok(host::volume_files(&*self.engine, &self.cfg.fuse_fallback)?
            .join(&self.pool)
            .join(volume))
    }

    fn mounts_of(&self, st: &Store, r: &Record) -> anyhow::Result<Vec<MountSpec>> {
        if r.overlay {
            let mut lowers = Vec::new();
            let mut p = st.snapshots.get(&r.parent);
            while let Some(x) = p {
                lowers.push(self.layer_dir(x));
                p = st.snapshots.get(&x.parent);
            }
            let own = (!r.volume.is_empty()).then(|| self.layer_dir(r));
            return Ok(overlay::mounts(
                own.as_deref(),
                &lowers,
                r.kind == Kind::View,
            ));
        }
        let mut options = vec!["loop".to_string()];
        options.push(if r.kind == Kind::View { "ro" } else { "rw" }.into());
        // Keep a thin volume thin: ext4 must not zero inode tables (they
        // read as zeros already).
        options.push("noinit_itable".into());
        Ok(vec![MountSpec {
            fstype: "ext4".into(),
            source: self.file(&r.volume)?.display().to_string(),
            options,
        }])
    }

    /// `Prepare` (an active snapshot) or `View` (read-only).
    pub fn create(
        &self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> anyhow::Result<Vec<MountSpec>> {
        if key.is_empty() {
            bail!(Error::Invalid("a snapshot needs a key".into()));
        }
        let mut st = self.store.lock();
        if st.snapshots.contains_key(key) {
            bail!(Error::Exists(format!("snapshot '{key}' already exists")));
        }
        let parent_rec = if parent.is_empty() {
            None
        } else {
            let p = st.snapshots.get(parent).ok_or_else(|| {
                anyhow!(Error::NotFound(format!(
                    "parent snapshot '{parent}' does not exist"
                )))
            })?;
            if p.kind != Kind::Committed {
                bail!(Error::Invalid(format!(
                    "parent '{parent}' is {}, not committed",
                    p.kind.as_str()
                )));
            }
            Some(p.clone())
        };
        let use_overlay = parent_rec.as_ref().map_or(self.cfg.overlay, |p| p.overlay);
        if use_overlay {
            return self.create_overlay(&mut st, key, parent, parent_rec.is_some(), labels, kind);
        }
        let volume = st.new_volume();
        let pool = self.engine.pool(&self.pool)?;
        match &parent_rec {
            Some(p) => pool.clone_volume(&p.volume, None, &volume)?,
            None => self.fresh_volume(key, &volume)?,
        }
        let now = now_nanos();
        let rec = Record {
            kind,
            parent: parent.to_string(),
            volume,
            created: now,
            updated: now,
            labels,
            overlay: false,
            device: None,
        };
        let mounts = self.mounts_of(&st, &rec)?;
        st.snapshots.insert(key.to_string(), rec);
        st.save()?;
        Ok(mounts)
    }

    /// Overlay mode: a fresh volume for the layer, mounted by vpool (a view
    /// of existing layers needs none).
    fn create_overlay(
        &self,
        st: &mut Store,
        key: &str,
        parent: &str,
        has_parent: bool,
        labels: BTreeMap<String, String>,
        kind: Kind,
    ) -> anyhow::Result<Vec<MountSpec>> {
        let now = now_nanos();
        let mut rec = Record {
            kind,
            parent: parent.to_string(),
            volume: String::new(),
            created: now,
            updated: now,
            labels,
            overlay: true,
            device: None,
        };
        if !(kind == Kind::View && has_parent) {
            rec.volume = st.new_volume();
            let pool = self.engine.pool(&self.pool)?;
            self.fresh_volume(key, &rec.volume)?;
            let file = self.file(&rec.volume)?;
            match overlay::attach(&file, &self.layer_dir(&rec), false) {
                Ok(dev) => rec.device = Some(dev),
                Err(e) => {
                    let _ = pool.remove_volume(&rec.volume, true);
                    return Err(e.context(format!("making the layer of snapshot '{key}'")));
                }
            }
        }
        let mounts = self.mounts_of(st, &rec)?;
        st.snapshots.insert(key.to_string(), rec);
        st.save()?;
        Ok(mounts)
    }

    pub fn mounts(&self, key: &str) -> anyhow::Result<Vec<MountSpec>> {
        let st = self.store.lock();
        let r = st.snapshots.get(key).ok_or_else(|| not_found(key))?;
        if r.kind == Kind::Committed {
            bail!(Error::InUse(format!(
                "snapshot '{key}' is committed: committed snapshots are not mounted (prepare a child)"
            )));
        }
        self.mounts_of(&st, r)
    }

    pub fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let mut st = self.store.lock();
        let r = st.snapshots.get(key).ok_or_else(|| not_found(key))?;
        if r.kind != Kind::Active {
            bail!(Error::InUse(format!(
                "snapshot '{key}' is {}: only active snapshots are committed",
                r.kind.as_str()
            )));
        }
        if name.is_empty() {
            bail!(Error::Invalid("a commit needs a name".into()));
        }
        if st.snapshots.contains_key(name) {
            bail!(Error::Exists(format!("snapshot '{name}' already exists")));
        }
        // Overlay: the layer is a lower directory from now on.
        if r.overlay && !r.volume.is_empty() {
            overlay::remount_ro(&self.layer_dir(r))?;
        }
        // The layer is durable before containerd learns it is committed.
        self.engine.pool(&self.pool)?.commit()?;
        let mut r = st.snapshots.remove(key).ok_or_else(|| not_found(key))?;
        r.kind = Kind::Committed;
        r.labels = labels;
        r.updated = now_nanos();
        st.snapshots.insert(name.to_string(), r);
        st.save()?;
        Ok(())
    }

    pub fn remove(&self, key: &str) -> anyhow::Result<()> {
        let mut st = self.store.lock();
        if !st.snapshots.contains_key(key) {
            return Err(not_found(key));
        }
        if st.has_children(key) {
            bail!(Error::InUse(format!(
                "snapshot '{key}' has children: remove them first"
            )));
        }
        let r = st.snapshots.remove(key).ok_or_else(|| not_found(key))?;
        st.save()?;
        if r.volume.is_empty() {
            return Ok(());
        }
        if r.overlay {
            overlay::detach(&self.layer_dir(&r), r.device.as_deref());
        }
        match self.engine.pool(&self.pool)?.remove_volume(&r.volume, true) {
            Ok(()) | Err(Error::NotFound(_)) => Ok(()),
            // The record is gone: the next start removes the volume.
            Err(e) => {
                tracing::error!(
                    "snapshot '{key}' removed, its volume {} not yet: {e}",
                    r.volume
                );
                Ok(())
            }
        }
    }

    pub fn stat(&self, key: &str) -> anyhow::Result<Info> {
        let st = self.store.lock();
        let r = st.snapshots.get(key).ok_or_else(|| not_found(key))?;
        Ok(info(key, r))
    }

    /// Only labels change: with no paths, all of them are replaced; with
    /// `labels` likewise; with `labels.KEY` that one is set or removed.
    pub fn update(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        paths: &[String],
    ) -> anyhow::Result<Info> {
        let mut st = self.store.lock();
        let r = st.snapshots.get_mut(name).ok_or_else(|| not_found(name))?;
        let mut next = r.labels.clone();
        if paths.is_empty() || paths.iter().any(|p| p == "labels") {
            next = labels.clone();
        }
        for p in paths {
            if p == "labels" {
                continue;
            }
            let Some(k) = p.strip_prefix("labels.") else {
                bail!(Error::Invalid(format!(
                    "cannot update '{p}': only labels change (name, parent, kind and times are fixed)"
                )));
            };
            match labels.get(k) {
                Some(v) => next.insert(k.to_string(), v.clone()),
                None => next.remove(k),
            };
        }
        r.labels = next;
        r.updated = now_nanos();
        let out = info(name, r);
        st.save()?;
        Ok(out)
    }

    pub fn list(&self, filters: &[String]) -> anyhow::Result<Vec<Info>> {
        let parsed = filters
            .iter()
            .map(|f| filter::parse(f).map_err(|e| anyhow!(Error::Invalid(e))))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let st = self.store.lock();
        Ok(st
            .snapshots
            .iter()
            .filter(|(k, r)| {
                filter::any_matches(
                    &parsed,
                    &Fields {
                        name: k,
                        parent: &r.parent,
                        kind: r.kind.as_str(),
                        labels: &r.labels,
                    },
                )
            })
            .map(|(k, r)| info(k, r))
            .collect())
    }

    /// Bytes of the pool the snapshot's own chunks take (chunks shared with
    /// its parent are the parent's).
    pub fn usage(&self, key: &str) -> anyhow::Result<u64> {
        let st = self.store.lock();
        let r = st.snapshots.get(key).ok_or_else(|| not_found(key))?;
        if r.volume.is_empty() {
            return Ok(0);
        }
        // A block-mode layer is a clone of its parent; an overlay layer, or
        // a first layer, a clone of the empty template.
        let parent = st
            .snapshots
            .get(&r.parent)
            .filter(|_| !r.overlay)
            .map_or(TEMPLATE, |p| p.volume.as_str());
        let pool = self.engine.pool(&self.pool)?;
        // A layer made before the template existed (or with another size).
        let parent = Some(parent).filter(|p| pool.volume(p, None).is_ok());
        Ok(pool.own_bytes(&r.volume, parent)?)
    }
}
