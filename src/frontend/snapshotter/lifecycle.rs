//! The snapshotter's volumes over the daemon's life: the records made to
//! agree with the pool at start, overlay layers mounted at start and
//! unmounted at shutdown, the template volume new layers are cloned from,
//! and the set-up deferred until the pool exists.

use super::overlay;
use super::snapshots::{Config, Snapshotter};
use super::store::{Kind, TEMPLATE, VOLUME_PREFIX};
use crate::control::host;
use crate::control::Engine;
use anyhow::anyhow;
use parking_lot::Mutex;
use std::sync::Arc;

impl Snapshotter {
    /// Overlay mode: mount every layer (mounts left by a killed daemon are
    /// detached first). A layer that cannot be mounted is logged; its
    /// snapshot's calls then fail.
    pub(super) fn mount_layers(&self) {
        let mut st = self.store.lock();
        for (key, r) in st.snapshots.iter_mut() {
            if !r.overlay || r.volume.is_empty() {
                continue;
            }
            let dir = overlay::layer_dir(&self.cfg.root, &r.volume);
            if host::mount_of(&dir).is_some() {
                let _ = host::detach(&dir);
            }
            let file = format!("/{}/{}", self.pool, r.volume);
            if let Some(dev) = r.device.take() {
                if host::loop_backing(&dev).is_some_and(|b| b.ends_with(&file)) {
                    let _ = host::loop_detach(&dev);
                }
            }
            let ro = r.kind == Kind::Committed;
            let attached = host::volume_files(&*self.engine, &self.cfg.fuse_fallback)
                .and_then(|d| overlay::attach(&d.join(&self.pool).join(&r.volume), &dir, ro));
            match attached {
                Ok(dev) => r.device = Some(dev),
                Err(e) => tracing::error!("snapshot '{key}': cannot mount its layer: {e:#}"),
            }
        }
        if let Err(e) = st.save() {
            tracing::error!("{e:#}");
        }
    }

    /// At daemon shutdown: unmount the overlay layers (their files go away
    /// with the daemon).
    pub fn shutdown(&self) {
        let mut st = self.store.lock();
        for r in st.snapshots.values_mut() {
            if r.overlay && !r.volume.is_empty() {
                overlay::detach(
                    &overlay::layer_dir(&self.cfg.root, &r.volume),
                    r.device.take().as_deref(),
                );
            }
        }
        if let Err(e) = st.save() {
            tracing::error!("{e:#}");
        }
    }

    pub(super) fn reconcile(&self) -> anyhow::Result<()> {
        let pool = self.engine.pool(&self.pool)?;
        let mut st = self.store.lock();
        let have: Vec<String> = pool
            .list()
            .into_iter()
            .filter_map(|v| v.name.split_once('/').map(|(_, n)| n.to_string()))
            .collect();
        let before = st.snapshots.len();
        st.snapshots.retain(|k, r| {
            let keep = r.volume.is_empty() || have.contains(&r.volume);
            if !keep {
                tracing::error!(
                    "snapshot '{k}': its volume {} is gone; record dropped",
                    r.volume
                );
            }
            keep
        });
        if st.snapshots.len() != before {
            st.save()?;
        }
        let owned: Vec<&String> = st.snapshots.values().map(|r| &r.volume).collect();
        let mut orphans: Vec<String> = have
            .iter()
            .filter(|v| v.starts_with(VOLUME_PREFIX) && *v != TEMPLATE && !owned.contains(v))
            .cloned()
            .collect();
        // Leaves first: retry until nothing more goes.
        while !orphans.is_empty() {
            let n = orphans.len();
            orphans.retain(|v| match pool.remove_volume(v, true) {
                Ok(()) => {
                    tracing::warn!(
                        "removed volume {}/{v}: no snapshot record (a crash before it was saved)",
                        self.pool
                    );
                    false
                }
                Err(_) => true,
            });
            if orphans.len() == n {
                break;
            }
        }
        Ok(())
    }

    /// A volume with a fresh, empty ext4: a clone of the template volume,
    /// made (one mkfs) the first time or when the layer size changed.
    pub(super) fn fresh_volume(&self, key: &str, volume: &str) -> anyhow::Result<()> {
        let pool = self.engine.pool(&self.pool)?;
        let current = pool.volume(TEMPLATE, None).and_then(|v| v.size());
        if current.as_ref().ok() != Some(&self.cfg.size) {
            if current.is_ok() {
                pool.remove_volume(TEMPLATE, true)?;
            }
            for w in pool.create_volume(TEMPLATE, self.cfg.size)? {
                tracing::warn!("snapshot '{key}': {w}");
            }
            let made = self.file(TEMPLATE).and_then(|f| {
                host::mkfs("ext4", &f.display().to_string(), "layer").map_err(|e| anyhow!(e))
            });
            if let Err(e) = made {
                let _ = pool.remove_volume(TEMPLATE, true);
                return Err(e.context(format!("making the filesystem of snapshot '{key}'")));
            }
            // Durable before any clone of it is.
            pool.commit()?;
        }
        pool.clone_volume(TEMPLATE, None, volume)?;
        Ok(())
    }
}

/// The snapshotter of a daemon that may start before its pool exists (as
/// systemd starts it on a new host): every other frontend is served, and
/// each snapshotter call first sets the snapshotter up, failing with the
/// reason (UNAVAILABLE: no pool yet) until it can.
pub struct Deferred {
    engine: Arc<dyn Engine>,
    cfg: Config,
    ready: Mutex<Option<Arc<Snapshotter>>>,
}

impl Deferred {
    pub fn new(engine: Arc<dyn Engine>, cfg: Config) -> Deferred {
        let d = Deferred {
            engine,
            cfg,
            ready: Mutex::new(None),
        };
        if let Err(e) = d.get() {
            tracing::warn!("snapshotter: {e:#} (its calls fail until then)");
        }
        d
    }

    /// The snapshotter, set up now if it was not yet.
    pub fn get(&self) -> anyhow::Result<Arc<Snapshotter>> {
        let mut ready = self.ready.lock();
        if let Some(s) = &*ready {
            return Ok(s.clone());
        }
        let s = Arc::new(Snapshotter::new(self.engine.clone(), self.cfg.clone())?);
        tracing::info!("snapshotter: layers in pool '{}'", s.pool);
        *ready = Some(s.clone());
        Ok(s)
    }

    pub fn shutdown(&self) {
        if let Some(s) = self.ready.lock().take() {
            s.shutdown();
        }
    }
}
