//! The volume driver behind Docker's plugin calls: a Docker volume is a thin
//! vpool volume holding one filesystem. It is attached on demand (the
//! volume's FUSE file on a loop device, mounted under the plugin's root) and
//! detached when the last mount ID lets go.

use super::registry::{volume_name, Record, Registry};
use crate::control::host;
use crate::control::Engine;
use crate::error::Error;
use crate::units::{format_size, parse_size};
use anyhow::{anyhow, bail, Context};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

pub struct DriverConfig {
    /// Mount points live under `root/NAME`.
    pub root: PathBuf,
    /// The pool for volumes created without `-o pool=`.
    pub default_pool: Option<String>,
    /// The size of volumes created without `-o size=`.
    pub default_size: u64,
    /// Where the daemon mounts volume files if it was not told (`--fuse-mount`).
    pub fuse_fallback: PathBuf,
}

/// What Docker learns about one volume.
pub struct VolumeView {
    pub name: String,
    pub mountpoint: Option<PathBuf>,
    pub created: u64,
    pub status: serde_json::Value,
}

pub struct Driver {
    engine: Arc<dyn Engine>,
    cfg: DriverConfig,
    /// The records: held only to read or change them, never across an
    /// external command (losetup, mkfs, mount), so one volume's first
    /// mount does not stall calls about the others.
    reg: Mutex<Registry>,
    /// One lock per volume name, held for a whole mount, unmount or
    /// removal: calls about the same volume happen one at a time.
    busy: Mutex<BTreeMap<String, Arc<Mutex<()>>>>,
}

const OPTIONS: &str = "size, pool, fs (ext4 or xfs), snapshot-of";

impl Driver {
    pub fn new(engine: Arc<dyn Engine>, cfg: DriverConfig) -> anyhow::Result<Driver> {
        let reg = Registry::load(engine.state_dir())?;
        std::fs::create_dir_all(&cfg.root)
            .with_context(|| format!("creating {}", cfg.root.display()))?;
        let d = Driver {
            engine,
            cfg,
            reg: Mutex::new(reg),
            busy: Mutex::new(BTreeMap::new()),
        };
        d.clear_stale();
        Ok(d)
    }

    /// The lock of volume `name` (see `busy`).
    fn volume_lock(&self, name: &str) -> Arc<Mutex<()>> {
        self.busy
            .lock()
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    fn mountpoint(&self, name: &str) -> PathBuf {
        self.cfg.root.join(name)
    }

    /// What containers see: a directory inside the filesystem, so the
    /// filesystem's own `lost+found` stays out of their way (an empty
    /// directory is what database images expect).
    fn data_dir(&self, name: &str) -> PathBuf {
        self.mountpoint(name).join("_data")
    }

    fn mounted(&self, name: &str) -> bool {
        host::mount_of(&self.mountpoint(name)).is_some()
    }

    /// Mounts left by a daemon that did not shut down: their loop devices
    /// read a FUSE file that is gone. Detach them; mount IDs are kept, and a
    /// volume is mounted again at its next `Mount`.
    fn clear_stale(&self) {
        let mut reg = self.reg.lock();
        // Removals a crash interrupted are finished.
        let pending: Vec<(String, Record)> = reg
            .volumes
            .iter()
            .filter(|(_, r)| r.removing)
            .map(|(n, r)| (n.clone(), r.clone()))
            .collect();
        for (name, rec) in pending {
            let removed = self
                .engine
                .pool(&rec.pool)
                .map(|p| p.remove_volume(&rec.volume, false));
            match removed {
                Ok(Ok(()) | Err(Error::NotFound(_))) => {
                    tracing::warn!("Docker volume {name}: finished its interrupted removal");
                    reg.volumes.remove(&name);
                }
                Ok(Err(e)) => {
                    tracing::error!("Docker volume {name}: removal not finished: {e}");
                    if let Some(r) = reg.volumes.get_mut(&name) {
                        r.removing = false;
                    }
                }
                Err(e) => tracing::error!("Docker volume {name}: removal not finished: {e:#}"),
            }
        }
        for (name, rec) in reg.volumes.iter_mut() {
            let mp = self.mountpoint(name);
            if let Some((dev, _)) = host::mount_of(&mp) {
                tracing::warn!(
                    "Docker volume {name}: detaching {} (on {dev}) left by an earlier daemon",
                    mp.display()
                );
                if let Err(e) = host::detach(&mp) {
                    tracing::error!("{e}");
                }
            }
            // Its backing file reads `/POOL/VOLUME` once the dead FUSE
            // mount above it was detached (the daemon's own mount does that).
            let file = format!("/{}/{}", rec.pool, rec.volume);
            if let Some(dev) = rec.device.take() {
                if host::loop_backing(&dev).is_some_and(|b| b.ends_with(&file)) {
                    tracing::warn!("detaching {dev} (over {file}) left by an earlier daemon");
                    if let Err(e) = host::loop_detach(&dev) {
                        tracing::error!("{e}");
                    }
                }
            }
        }
        if let Err(e) = reg.save() {
            tracing::error!("{e:#}");
        }
        for (dev, file) in host::loops_under(&self.cfg.fuse_fallback) {
            tracing::warn!(
                "detaching {dev} (over {}) left by an earlier daemon",
                file.display()
            );
            if let Err(e) = host::loop_detach(&dev) {
                tracing::error!("{e}");
            }
        }
        if let Err(e) = crate::frontend::fuse::clear_stale_mount(&self.cfg.fuse_fallback) {
            tracing::error!("{e:#}");
        }
    }

    fn files_dir(&self) -> anyhow::Result<PathBuf> {
        host::volume_files(&*self.engine, &self.cfg.fuse_fallback)
    }

    fn pick_pool(&self, asked: Option<&String>) -> anyhow::Result<String> {
        if let Some(p) = asked.or(self.cfg.default_pool.as_ref()) {
            self.engine.pool(p)?;
            return Ok(p.clone());
        }
        let names = self.engine.pool_names()?;
        match names.as_slice() {
            [one] => Ok(one.clone()),
            [] => bail!(Error::NotFound(
                "no pool exists: create one with `vpool pool create`".into()
            )),
            many => bail!(Error::Invalid(format!(
                "several pools exist ({}): choose one with -o pool=NAME",
                many.join(", ")
            ))),
        }
    }

    pub fn create(&self, name: &str, opts: &BTreeMap<String, String>) -> anyhow::Result<()> {
        if let Some(k) = opts
            .keys()
            .find(|k| !["size", "pool", "fs", "snapshot-of"].contains(&k.as_str()))
        {
            bail!(Error::Invalid(format!(
                "unknown option '{k}': vpool volumes take {OPTIONS}"
            )));
        }
        // The volume's own lock keeps concurrent calls for this name out;
        // the registry is locked only to look and to record, never across
        // the pool's work or a source's freeze.
        let vlock = self.volume_lock(name);
        let _busy = vlock.lock();
        if self.reg.lock().volumes.contains_key(name) {
            return Ok(());
        }
        let volume = volume_name(name)?;
        let fs = opts.get("fs").map(String::as_str).unwrap_or("ext4");
        if !host::FILESYSTEMS.contains(&fs) {
            bail!(Error::Invalid(format!(
                "fs '{fs}' is not supported: choose one of {}",
                host::FILESYSTEMS.join(", ")
            )));
        }
        host::check_mkfs(fs).map_err(|e| anyhow!(Error::Unavailable(e)))?;
        let size = opts
            .get("size")
            .map(|s| parse_size(s).map_err(|e| anyhow!(Error::Invalid(format!("size: {e}")))))
            .transpose()?;
        let (pool_name, fs) = match opts.get("snapshot-of") {
            Some(src) => {
                if size.is_some() {
                    bail!(Error::Invalid(
                        "a clone has its source's size: leave out size, and grow it later with `vpool vol resize`".into()
                    ));
                }
                self.clone_from(name, src, opts.get("pool"), &volume)?
            }
            None => {
                let pool_name = self.pick_pool(opts.get("pool"))?;
                let pool = self.engine.pool(&pool_name)?;
                if pool.volume(&volume, None).is_ok() {
                    // A volume made with the CLI: Docker may use it as it is.
                    let have = pool.volume(&volume, None)?.size()?;
                    if size.is_some_and(|s| s != have) {
                        bail!(Error::Exists(format!(
                            "vpool volume '{pool_name}/{volume}' exists with size {}: leave out size to use it, or choose another name",
                            crate::units::size_exact(have)
                        )));
                    }
                    tracing::info!("Docker volume {name}: uses the existing {pool_name}/{volume}");
                } else {
                    let size = size.unwrap_or(self.cfg.default_size);
                    for w in pool.create_volume(&volume, size)? {
                        tracing::warn!("Docker volume {name}: {w}");
                    }
                }
                (pool_name, fs.to_string())
            }
        };
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut reg = self.reg.lock();
        reg.volumes.insert(
            name.to_string(),
            Record {
                pool: pool_name,
                volume,
                fs,
                created,
                mounts: Default::default(),
                device: None,
                removing: false,
            },
        );
        reg.save()?;
        tracing::info!("Docker volume {name} created");
        Ok(())
    }

    /// A writable clone of a Docker volume's latest state, or of a vpool
    /// volume or snapshot named `POOL/VOLUME[@SNAP]`. A mounted source is
    /// frozen for the instant of the clone, so the clone is a clean
    /// filesystem. Returns the pool and the clone's filesystem.
    fn clone_from(
        &self,
        name: &str,
        src: &str,
        pool_opt: Option<&String>,
        volume: &str,
    ) -> anyhow::Result<(String, String)> {
        if src == name {
            bail!(Error::Invalid(format!(
                "snapshot-of: '{name}' cannot be a clone of itself"
            )));
        }
        // A Docker volume's lock keeps it mounted (or not) while it is
        // frozen and cloned. Taken after this name's, and only for a source
        // already recorded: its create has finished, so no create holding
        // it waits for this name (no lock cycle).
        let src_lock = self
            .reg
            .lock()
            .volumes
            .contains_key(src)
            .then(|| self.volume_lock(src));
        let _src_busy = src_lock.as_ref().map(|l| l.lock());
        let record = self.reg.lock().volumes.get(src).cloned();
        let (pool_name, src_vol, snap, fs, frozen_dir) = if let Some(r) = record {
            let dir = Some(self.mountpoint(src)).filter(|_| self.mounted(src));
            (r.pool, r.volume, None, r.fs, dir)
        } else if src.contains('/') {
            let p = crate::pool::names::VolPath::parse(src)?;
            (p.pool, p.volume, p.snapshot, "ext4".to_string(), None)
        } else {
            bail!(Error::NotFound(format!(
                "snapshot-of: no vpool Docker volume '{src}' (name a Docker volume, or a vpool POOL/VOLUME[@SNAPSHOT])"
            )));
        };
        if pool_opt.is_some_and(|p| *p != pool_name) {
            bail!(Error::Invalid(format!(
                "a clone lives in its source's pool '{pool_name}': leave out pool"
            )));
        }
        let pool = self.engine.pool(&pool_name)?;
        let _frozen = frozen_dir
            .map(|d| host::freeze(&d))
            .transpose()
            .map_err(|e| anyhow!("freezing the source filesystem for a clean clone: {e}"))?;
        pool.clone_volume(&src_vol, snap.as_deref(), volume)?;
        Ok((pool_name, fs))
    }

    pub fn remove(&self, name: &str) -> anyhow::Result<()> {
        let vlock = self.volume_lock(name);
        let _busy = vlock.lock();
        let rec = {
            let mut reg = self.reg.lock();
            let rec = lookup(&reg, name)?.clone();
            if self.mounted(name) {
                bail!(Error::InUse(format!(
                    "volume '{name}' is mounted for {} container(s): stop them first",
                    rec.mounts.len().max(1)
                )));
            }
            set_removing(&mut reg, name, true)?;
            rec
        };
        let removed = self
            .engine
            .pool(&rec.pool)
            .with_context(|| format!("removing volume '{name}'"))
            .and_then(|pool| match pool.remove_volume(&rec.volume, false) {
                // Removed already with the CLI: only the name is left.
                Ok(()) | Err(Error::NotFound(_)) => Ok(()),
                Err(e) => Err(e.into()),
            });
        let mut reg = self.reg.lock();
        if let Err(e) = removed {
            set_removing(&mut reg, name, false)?;
            return Err(e);
        }
        reg.volumes.remove(name);
        reg.save()?;
        let _ = std::fs::remove_dir_all(self.mountpoint(name));
        tracing::info!("Docker volume {name} removed");
        Ok(())
    }

    /// Attach and mount (the first time: make the filesystem), count `id`,
    /// return the directory containers use.
    pub fn mount(&self, name: &str, id: &str) -> anyhow::Result<PathBuf> {
        let vlock = self.volume_lock(name);
        let _busy = vlock.lock();
        let rec = lookup(&self.reg.lock(), name)?.clone();
        // losetup, mkfs (minutes on a large volume) and mount run without
        // the registry lock: other volumes' calls go on meanwhile.
        let dev = match self.mounted(name) {
            true => None,
            false => Some(self.attach(name, &rec)?),
        };
        let data = self.data_dir(name);
        if !data.is_dir() {
            std::fs::create_dir(&data).with_context(|| format!("creating {}", data.display()))?;
        }
        let mut reg = self.reg.lock();
        if let Some(r) = reg.volumes.get_mut(name) {
            if dev.is_some() {
                r.device = dev;
            }
            r.mounts.insert(id.to_string());
        }
        reg.save()?;
        Ok(data)
    }

    /// Returns the loop device.
    fn attach(&self, name: &str, rec: &Record) -> anyhow::Result<String> {
        let file = self.files_dir()?.join(&rec.pool).join(&rec.volume);
        if !file.exists() {
            bail!(Error::NotFound(format!(
                "the vpool volume '{}/{}' behind Docker volume '{name}' is gone (removed with the CLI?)",
                rec.pool, rec.volume
            )));
        }
        let dev = match host::loops_of(&file).into_iter().next() {
            Some(d) => d,
            None => host::loop_attach(&file).map_err(|e| anyhow!(e))?,
        };
        let mounted = (|| -> Result<(), String> {
            let fs = match host::fs_type(&dev)? {
                Some(t) => t,
                None => {
                    tracing::info!("Docker volume {name}: making {} on {dev}", rec.fs);
                    host::mkfs(&rec.fs, &dev, name)?;
                    rec.fs.clone()
                }
            };
            let mp = self.mountpoint(name);
            std::fs::create_dir_all(&mp).map_err(|e| format!("{}: {e}", mp.display()))?;
            host::mount(&dev, &fs, &mp)
        })();
        if let Err(e) = mounted {
            let _ = host::loop_detach(&dev);
            bail!("attaching Docker volume '{name}': {e}");
        }
        tracing::info!("Docker volume {name} mounted ({dev})");
        Ok(dev)
    }

    /// Let go of `id`; the last one unmounts and detaches.
    pub fn unmount(&self, name: &str, id: &str) -> anyhow::Result<()> {
        let vlock = self.volume_lock(name);
        let _busy = vlock.lock();
        let rec = lookup(&self.reg.lock(), name)?.clone();
        let mut left = rec.mounts.clone();
        left.remove(id);
        if left.is_empty() && self.mounted(name) {
            self.detach(name, &rec)?;
        }
        let mut reg = self.reg.lock();
        if let Some(r) = reg.volumes.get_mut(name) {
            r.mounts = left;
            if !self.mounted(name) {
                r.device = None;
            }
        }
        reg.save()?;
        Ok(())
    }

    fn detach(&self, name: &str, rec: &Record) -> anyhow::Result<()> {
        let mp = self.mountpoint(name);
        match host::unmount(&mp) {
            Ok(true) => tracing::warn!(
                "Docker volume {name}: {} was busy, detached lazily",
                mp.display()
            ),
            Ok(false) => {}
            Err(e) => bail!("unmounting Docker volume '{name}': {e}"),
        }
        if let Some(dir) = self.engine.fuse_dir() {
            for dev in host::loops_of(&dir.join(&rec.pool).join(&rec.volume)) {
                host::loop_detach(&dev).map_err(|e| anyhow!(e))?;
            }
        }
        tracing::info!("Docker volume {name} unmounted");
        Ok(())
    }

    /// The directory containers use, if mounted.
    pub fn path(&self, name: &str) -> anyhow::Result<Option<PathBuf>> {
        let reg = self.reg.lock();
        lookup(&reg, name)?;
        Ok(Some(self.data_dir(name)).filter(|_| self.mounted(name)))
    }

    pub fn get(&self, name: &str) -> anyhow::Result<VolumeView> {
        let reg = self.reg.lock();
        let rec = lookup(&reg, name)?;
        Ok(self.view(name, rec))
    }

    /// Every Docker volume whose vpool volume still exists.
    pub fn list(&self) -> Vec<VolumeView> {
        let reg = self.reg.lock();
        reg.volumes.iter().map(|(n, r)| self.view(n, r)).collect()
    }

    fn view(&self, name: &str, rec: &Record) -> VolumeView {
        let info = self.engine.pool(&rec.pool).ok().and_then(|p| {
            let full = format!("{}/{}", rec.pool, rec.volume);
            p.list().into_iter().find(|v| v.name == full)
        });
        let mounted = self.mounted(name);
        VolumeView {
            name: name.to_string(),
            mountpoint: Some(self.data_dir(name)).filter(|_| mounted),
            created: rec.created,
            status: serde_json::json!({
                "volume": format!("{}/{}", rec.pool, rec.volume),
                "size": info.as_ref().map(|v| format_size(v.size)),
                "allocated": info.as_ref().map(|v| format_size(v.mapped)),
                "fs": rec.fs,
                "mounted": mounted,
                "mounts": rec.mounts.len(),
                "state": if info.is_some() { "ok" } else { "the vpool volume is missing" },
            }),
        }
    }

    /// At daemon shutdown: unmount every volume (the FUSE files go away
    /// with the daemon). Mount IDs are kept for the next start.
    pub fn shutdown(&self) {
        let mut reg = self.reg.lock();
        for (name, rec) in reg.volumes.iter_mut() {
            if self.mounted(name) {
                if !rec.mounts.is_empty() {
                    tracing::warn!(
                        "Docker volume {name} is unmounted under {} container(s): their I/O fails until they restart",
                        rec.mounts.len()
                    );
                }
                match self.detach(name, rec) {
                    Ok(()) => rec.device = None,
                    Err(e) => tracing::error!("{e:#}"),
                }
            }
        }
        if let Err(e) = reg.save() {
            tracing::error!("{e:#}");
        }
    }
}

fn set_removing(reg: &mut Registry, name: &str, on: bool) -> anyhow::Result<()> {
    if let Some(r) = reg.volumes.get_mut(name) {
        r.removing = on;
    }
    reg.save()
}

fn lookup<'a>(reg: &'a Registry, name: &str) -> anyhow::Result<&'a Record> {
    reg.volumes.get(name).ok_or_else(|| {
        anyhow!(Error::NotFound(format!(
            "no vpool Docker volume '{name}' (`docker volume ls` lists them)"
        )))
    })
}
