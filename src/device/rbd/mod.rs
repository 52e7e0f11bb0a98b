//! A member on a Ceph RBD image, named like qemu names one:
//! `rbd:POOL/IMAGE` or `rbd:POOL/NAMESPACE/IMAGE`, then `:key=value`
//! options: `id=` (the client id, as `rbd --id`), `conf=` (the cluster's
//! conf file, as `rbd -c`), and any other Ceph option, set on the
//! connection. Without them the environment applies as it does for the
//! `rbd` tool: `CEPH_CONF`, and `CEPH_ARGS` (whose `--id`/`--name` picks
//! the client).
//!
//! Defaults that differ from librbd's, because a member must fail rather
//! than hang and a flush must mean durable: the client-side cache is off
//! (every write is on the OSDs when it returns, so a failed writeback can
//! never hide behind an acknowledged flush), and operations time out after
//! 30 s (`rados_osd_op_timeout`), when the member fails like a disk that
//! stopped answering.
//!
//! Ownership: a member opened for writing carries an exclusive RADOS lock
//! with a cookie naming this host, its boot and the process (see
//! [`lock`]).

mod ffi;
mod lock;

use super::stats::{IoCounters, IoKind, IoStats};
use super::{check_range, BlockDevice};
use ffi::{Api, Image, Ioctx, Rados};
use std::ffi::{c_char, CString};
use std::io;

pub use ffi::PACKAGE_HINT;

/// Whether a member name is an RBD image rather than a path.
pub fn is_rbd(name: &str) -> bool {
    name.starts_with("rbd:")
}

/// How to open an image.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Access {
    /// Read-only and unlocked: label scans, `inspect`.
    ReadOnly,
    /// Read-write under this host's lock; refused while another holds it.
    Locked,
    /// Read-write, first fencing any other holder (blocklisting its client
    /// address, breaking its lock): `pool import --force`.
    Fenced,
}

/// A parsed member name.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    pub pool: String,
    pub namespace: Option<String>,
    pub image: String,
    pub id: Option<String>,
    pub conf: Option<String>,
    pub options: Vec<(String, String)>,
}

impl Spec {
    pub fn parse(name: &str) -> io::Result<Spec> {
        let bad = |why: &str| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: {why} (an RBD member is rbd:POOL/IMAGE[:id=CLIENT][:conf=FILE])"),
            )
        };
        let rest = name
            .strip_prefix("rbd:")
            .ok_or_else(|| bad("no rbd: prefix"))?;
        let mut parts = rest.split(':');
        let path = parts.next().unwrap_or_default();
        let names: Vec<&str> = path.split('/').collect();
        let (pool, namespace, image) = match names.as_slice() {
            [p, i] => (*p, None, *i),
            [p, n, i] => (*p, Some(n.to_string()), *i),
            _ => return Err(bad("expected POOL/IMAGE or POOL/NAMESPACE/IMAGE")),
        };
        if pool.is_empty() || image.is_empty() || image.contains('@') {
            return Err(bad(
                "empty pool or image name, or a snapshot (members are writable images)",
            ));
        }
        let mut spec = Spec {
            pool: pool.into(),
            namespace,
            image: image.into(),
            id: None,
            conf: None,
            options: Vec::new(),
        };
        for kv in parts {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad("options are key=value"))?;
            match k {
                "id" => spec.id = Some(v.into()),
                "conf" => spec.conf = Some(v.into()),
                _ => spec.options.push((k.into(), v.into())),
            }
        }
        Ok(spec)
    }

    /// The client id: the name's `id=`, else `--id`/`--name client.` in
    /// `CEPH_ARGS`, else librados's default (`admin`).
    fn client_id(&self) -> Option<String> {
        if self.id.is_some() {
            return self.id.clone();
        }
        let args = std::env::var("CEPH_ARGS").unwrap_or_default();
        let mut words = args.split_whitespace();
        while let Some(w) = words.next() {
            let value = |w: &str, flag: &str| w.strip_prefix(flag).map(str::to_string);
            if let Some(v) = value(w, "--id=") {
                return Some(v);
            }
            if let Some(v) = value(w, "--name=client.") {
                return Some(v);
            }
            if w == "--id" || w == "-i" {
                return words.next().map(str::to_string);
            }
            if w == "--name" || w == "-n" {
                return words.next().and_then(|n| value(n, "client."));
            }
        }
        None
    }
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL in a name"))
}

/// Turn a librados/librbd return code into a result, naming what failed.
fn check(rc: i64, what: impl FnOnce() -> String) -> io::Result<i64> {
    if rc >= 0 {
        return Ok(rc);
    }
    let e = ffi::err(rc);
    Err(io::Error::new(e.kind(), format!("{}: {e}", what())))
}

/// A connected cluster handle and an I/O context on one pool, closed on drop.
struct Conn {
    api: &'static Api,
    cluster: Rados,
    ioctx: Ioctx,
}

impl Conn {
    fn connect(api: &'static Api, spec: &Spec, name: &str) -> io::Result<Conn> {
        let mut cluster: Rados = std::ptr::null_mut();
        let id = spec.client_id().map(|s| cstr(&s)).transpose()?;
        let id_ptr = id.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: `cluster` is a valid out-pointer; `id_ptr` is NULL or a
        // NUL-terminated string that outlives the call.
        check(
            unsafe { (api.rados_create)(&mut cluster, id_ptr) }.into(),
            || format!("{name}: creating a cluster handle"),
        )?;
        // From here on, dropping `conn` shuts the handle down.
        let mut conn = Conn {
            api,
            cluster,
            ioctx: std::ptr::null_mut(),
        };
        let conf = spec.conf.as_deref().map(cstr).transpose()?;
        let conf_ptr = conf.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
        // SAFETY: a live handle, not yet connected; NULL or a C string.
        check(
            unsafe { (api.rados_conf_read_file)(cluster, conf_ptr) }.into(),
            || {
                format!(
                    "{name}: reading the Ceph configuration ({})",
                    spec.conf
                        .as_deref()
                        .unwrap_or("$CEPH_CONF or /etc/ceph/ceph.conf")
                )
            },
        )?;
        // SAFETY: as above; NULL means CEPH_ARGS.
        check(
            unsafe { (api.rados_conf_parse_env)(cluster, std::ptr::null()) }.into(),
            || format!("{name}: parsing CEPH_ARGS"),
        )?;
        let defaults = [
            ("rbd_cache", "false"),
            ("rados_osd_op_timeout", "30"),
            ("rados_mon_op_timeout", "30"),
            ("client_mount_timeout", "30"),
            // Several members in one process would race for one socket path.
            ("admin_socket", ""),
        ];
        let given = |k: &str| spec.options.iter().any(|(o, _)| o == k);
        let opts = defaults
            .iter()
            .filter(|(k, _)| !given(k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain(spec.options.iter().cloned());
        for (k, v) in opts {
            let (ck, cv) = (cstr(&k)?, cstr(&v)?);
            // SAFETY: a live, unconnected handle and two C strings.
            check(
                unsafe { (api.rados_conf_set)(cluster, ck.as_ptr(), cv.as_ptr()) }.into(),
                || format!("{name}: setting Ceph option {k}={v}"),
            )?;
        }
        // SAFETY: a configured handle.
        check(unsafe { (api.rados_connect)(cluster) }.into(), || {
            format!("{name}: connecting to the cluster")
        })?;
        let pool = cstr(&spec.pool)?;
        // SAFETY: a connected handle, a C string, a valid out-pointer.
        check(
            unsafe { (api.rados_ioctx_create)(cluster, pool.as_ptr(), &mut conn.ioctx) }.into(),
            || format!("{name}: opening Ceph pool '{}'", spec.pool),
        )?;
        if let Some(ns) = &spec.namespace {
            let ns = cstr(ns)?;
            // SAFETY: a live I/O context; librados copies the string.
            unsafe { (api.rados_ioctx_set_namespace)(conn.ioctx, ns.as_ptr()) };
        }
        Ok(conn)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        // SAFETY: each handle is live and dropped exactly once, images first
        // (`RbdDevice` closes its image before its `Conn` drops).
        unsafe {
            if !self.ioctx.is_null() {
                (self.api.rados_ioctx_destroy)(self.ioctx);
            }
            (self.api.rados_shutdown)(self.cluster);
        }
    }
}

/// One RBD image as a pool member.
pub struct RbdDevice {
    image: Image,
    name: String,
    size: u64,
    /// The lock this device holds (None when read-only).
    lock: Option<lock::Held>,
    stats: IoStats,
    // Last field: dropped after `Drop::drop` closed the image.
    conn: Conn,
}

// SAFETY: librbd image handles and librados handles may be used from many
// threads at once (librbd serialises internally); the raw pointers are
// owned by this value and freed once, in `Drop`.
unsafe impl Send for RbdDevice {}
// SAFETY: as above; no method needs exclusive access.
unsafe impl Sync for RbdDevice {}

impl RbdDevice {
    pub fn open(name: &str, access: Access) -> io::Result<RbdDevice> {
        let spec = Spec::parse(name)?;
        let api = ffi::api().map_err(|e| io::Error::new(io::ErrorKind::Unsupported, e))?;
        let started = std::time::Instant::now();
        let conn = Conn::connect(api, &spec, name)?;
        tracing::debug!(
            member = name,
            ms = started.elapsed().as_millis() as u64,
            "connected"
        );
        let img = cstr(&spec.image)?;
        let mut image: Image = std::ptr::null_mut();
        let open = if access == Access::ReadOnly {
            api.rbd_open_read_only
        } else {
            api.rbd_open
        };
        // SAFETY: a live I/O context, a C string, a valid out-pointer, and
        // NULL for "no snapshot".
        let rc = unsafe { open(conn.ioctx, img.as_ptr(), &mut image, std::ptr::null()) };
        if rc == -libc::ENOENT {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{name}: no such RBD image (create it: rbd create {}/{} --size 10G)",
                    spec.pool, spec.image
                ),
            ));
        }
        check(rc.into(), || format!("{name}: opening the image"))?;
        let mut dev = RbdDevice {
            image,
            name: name.to_string(),
            size: 0,
            lock: None,
            stats: IoStats::default(),
            conn,
        };
        // SAFETY: an open image and a valid out-pointer.
        check(
            unsafe { (api.rbd_get_size)(image, &mut dev.size) }.into(),
            || format!("{name}: reading the image's size"),
        )?;
        if access != Access::ReadOnly {
            dev.lock = Some(lock::acquire(&dev, access == Access::Fenced)?);
        }
        tracing::debug!(
            member = name,
            ms = started.elapsed().as_millis() as u64,
            "opened"
        );
        Ok(dev)
    }

    fn api(&self) -> &'static Api {
        self.conn.api
    }

    /// The result of a read or write of `n` bytes that returned `rc`: an
    /// error, or all `n` bytes moved (fewer is `short`).
    fn whole(&self, rc: isize, n: usize, what: &str, short: io::ErrorKind) -> io::Result<()> {
        match check(rc as i64, || format!("{}: {what}", self.name))? {
            got if got as usize == n => Ok(()),
            got => Err(io::Error::new(
                short,
                format!("{}: short {what} ({got} of {n} bytes)", self.name),
            )),
        }
    }
}

impl BlockDevice for RbdDevice {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        let n = buf.len();
        self.stats.timed(IoKind::Read, n as u64, || {
            let p = buf.as_mut_ptr().cast::<c_char>();
            // SAFETY: an open image; `p` points at `n` writable bytes.
            let rc = unsafe { (self.api().rbd_read2)(self.image, offset, n, p, 0) };
            self.whole(rc, n, "read", io::ErrorKind::UnexpectedEof)
        })
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        check_range(self.size, offset, buf.len())?;
        let n = buf.len();
        self.stats.timed(IoKind::Write, n as u64, || {
            let p = buf.as_ptr().cast::<c_char>();
            // SAFETY: an open image; `p` points at `n` readable bytes.
            let rc = unsafe { (self.api().rbd_write2)(self.image, offset, n, p, 0) };
            self.whole(rc, n, "write", io::ErrorKind::WriteZero)
        })
    }

    fn flush(&self) -> io::Result<()> {
        self.stats.timed(IoKind::Flush, 0, || {
            // SAFETY: an open image.
            let rc = unsafe { (self.api().rbd_flush)(self.image) };
            check(rc.into(), || format!("{}: flush", self.name)).map(drop)
        })
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // SAFETY: an open image. A failed discard is harmless (contents of a
        // discarded range are unspecified either way).
        let rc = unsafe { (self.api().rbd_discard)(self.image, offset, len) };
        self.stats.record(IoKind::Discard, len, started, rc >= 0);
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn remote(&self) -> bool {
        true
    }

    fn io_counters(&self) -> Option<IoCounters> {
        Some(self.stats.snapshot())
    }
}

impl Drop for RbdDevice {
    fn drop(&mut self) {
        if let Some(held) = &self.lock {
            held.release(self);
        }
        // SAFETY: the image is open and closed only here.
        unsafe { (self.api().rbd_close)(self.image) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_like_qemus() {
        let s = Spec::parse("rbd:vms/disk1:id=vpool:conf=/etc/ceph/c.conf:rbd_cache=true").unwrap();
        assert_eq!(
            (s.pool.as_str(), s.image.as_str(), s.namespace),
            ("vms", "disk1", None)
        );
        assert_eq!(s.id.as_deref(), Some("vpool"));
        assert_eq!(s.conf.as_deref(), Some("/etc/ceph/c.conf"));
        assert_eq!(
            s.options,
            vec![("rbd_cache".to_string(), "true".to_string())]
        );
        let s = Spec::parse("rbd:vms/tenant/disk1").unwrap();
        assert_eq!(s.namespace.as_deref(), Some("tenant"));
        for bad in [
            "rbd:",
            "rbd:vms",
            "rbd:/x",
            "rbd:vms/",
            "rbd:a/b/c/d",
            "rbd:p/i@snap",
            "rbd:p/i:noeq",
        ] {
            assert!(Spec::parse(bad).is_err(), "{bad} parsed");
        }
    }
}
