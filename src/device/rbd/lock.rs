//! Who owns an RBD member: an exclusive RADOS lock named `vpool` on the
//! image's header object (`rbd_header.ID`), taken by every vpool that opens
//! the image for writing, with a cookie `vpool host=H boot=B pid=P`. Not
//! RBD's own advisory lock (`rbd lock add`): that one shares its name with
//! the exclusive-lock feature's managed lock, and holding it stalls the
//! image's writes. The lock lives in the cluster, so it outlasts a crash:
//!
//! - held by a vpool of another host: refused, naming the holder. If that
//!   host is down, `pool import --force` fences it (blocklists the holder's
//!   client address, so a host that was only cut off can write nothing
//!   more) and breaks the lock, and the managed exclusive lock that
//!   client held;
//! - held by this host in an earlier boot, or by a process of this host
//!   that is no longer a running vpool: stale, broken and taken;
//! - held by a running vpool process of this host: refused, even with
//!   `--force` (as `flock` on a file member refuses): stop that process.

use super::{check, cstr, RbdDevice};
use std::ffi::{c_char, CStr, CString};
use std::io;

/// How long a fenced client stays blocklisted: a week rather than Ceph's
/// default hour, so that a host cut off for longer than an hour, idle all
/// that time, cannot write when it returns.
/// (Not through librbd's `rbd_blocklist_expire_seconds`: set to a week,
/// librbd's own break of a dead client's lock failed with EINVAL.)
const FENCE_SECONDS: u32 = 7 * 24 * 3600;

/// The lock's name on the header object.
const NAME: &CStr = c"vpool";

/// A lock this device holds: on which object, with which cookie.
pub(super) struct Held {
    pub oid: CString,
    pub cookie: CString,
}

impl Held {
    /// Let the lock go (on close). A failed unlock leaves a lock that the
    /// next open on this host recognises as stale.
    pub(super) fn release(&self, dev: &RbdDevice) {
        // SAFETY: a live I/O context and three C strings.
        unsafe {
            (dev.api().rados_unlock)(
                dev.conn.ioctx,
                self.oid.as_ptr(),
                NAME.as_ptr(),
                self.cookie.as_ptr(),
            )
        };
    }
}

/// One holder of the image's lock, as `rbd_list_lockers` reports it.
#[derive(Debug)]
struct Locker {
    client: String,
    cookie: String,
    addr: String,
}

/// The fields of a vpool cookie.
#[derive(Debug, PartialEq, Eq)]
struct Cookie {
    host: String,
    boot: String,
    pid: u32,
}

impl Cookie {
    fn mine() -> Cookie {
        Cookie {
            host: read_trimmed("/proc/sys/kernel/hostname"),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid: std::process::id(),
        }
    }

    fn render(&self) -> String {
        format!(
            "vpool host={} boot={} pid={}",
            self.host, self.boot, self.pid
        )
    }

    fn parse(s: &str) -> Option<Cookie> {
        let rest = s.strip_prefix("vpool ")?;
        let mut c = Cookie {
            host: String::new(),
            boot: String::new(),
            pid: 0,
        };
        for kv in rest.split(' ') {
            match kv.split_once('=')? {
                ("host", v) => c.host = v.into(),
                ("boot", v) => c.boot = v.into(),
                ("pid", v) => c.pid = v.parse().ok()?,
                _ => {}
            }
        }
        Some(c)
    }

    /// Whether a lock with this cookie was left by this host and nothing
    /// holds it any more: an earlier boot, or a process that is gone (or
    /// is no longer vpool: pids are reused).
    fn stale_here(&self, me: &Cookie) -> bool {
        if self.host != me.host {
            return false;
        }
        if self.boot != me.boot {
            return true;
        }
        // /proc/PID/stat: "PID (COMM) STATE ...". A zombie (state Z) is
        // dead: killed and not yet reaped by its parent.
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let live_vpool = stat
            .split_once(" (")
            .and_then(|(_, rest)| rest.rsplit_once(") "))
            .is_some_and(|(comm, rest)| {
                comm.starts_with("vpool") && !rest.starts_with('Z') && !rest.starts_with('X')
            });
        !live_vpool
    }
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The image's header object, where the lock lives.
fn header_oid(dev: &RbdDevice) -> io::Result<CString> {
    let mut id = vec![0u8; 64];
    // SAFETY: an open image and a buffer of the length given.
    let rc = unsafe { (dev.api().rbd_get_id)(dev.image, id.as_mut_ptr().cast(), id.len()) };
    check(rc.into(), || {
        format!(
            "{}: reading the image's id (format 1 images are not supported)",
            dev.name
        )
    })?;
    let id = CStr::from_bytes_until_nul(&id)
        .map_err(|_| io::Error::other(format!("{}: an image id without an end", dev.name)))?;
    cstr(&format!("rbd_header.{}", id.to_string_lossy()))
}

/// Take the image's lock for this process.
pub(super) fn acquire(dev: &RbdDevice, fence: bool) -> io::Result<Held> {
    let me = Cookie::mine();
    let held = Held {
        oid: header_oid(dev)?,
        cookie: cstr(&me.render())?,
    };
    let desc = c"vpool pool member";
    for _attempt in 0..3 {
        // SAFETY: a live I/O context, C strings, and no duration (held
        // until unlocked or broken).
        let rc = unsafe {
            (dev.api().rados_lock_exclusive)(
                dev.conn.ioctx,
                held.oid.as_ptr(),
                NAME.as_ptr(),
                held.cookie.as_ptr(),
                desc.as_ptr(),
                std::ptr::null_mut(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(held);
        }
        if rc != -libc::EBUSY && rc != -libc::EEXIST {
            check(rc.into(), || format!("{}: taking its lock", dev.name))?;
        }
        let holders = lockers(dev, &held.oid)?;
        for h in &holders {
            let theirs = Cookie::parse(&h.cookie);
            let stale = theirs.as_ref().is_some_and(|c| c.stale_here(&me));
            // A running vpool of this host is never fenced: stop it instead.
            let live_here = !stale && theirs.as_ref().is_some_and(|c| c.host == me.host);
            if !stale && (!fence || live_here) {
                return Err(refusal(dev, h, theirs.as_ref(), &me));
            }
            let (client, ck) = (cstr(&h.client)?, cstr(&h.cookie)?);
            // SAFETY: a live I/O context and C strings.
            let rc = unsafe {
                (dev.api().rados_break_lock)(
                    dev.conn.ioctx,
                    held.oid.as_ptr(),
                    NAME.as_ptr(),
                    client.as_ptr(),
                    ck.as_ptr(),
                )
            };
            if rc < 0 && rc != -libc::ENOENT {
                check(rc.into(), || {
                    format!("{}: breaking the lock of {}", dev.name, h.client)
                })?;
            }
            break_managed(dev, &h.addr)?;
            // Last: breaking the managed lock blocklisted the holder for
            // Ceph's default hour, and this sets the fence's own length.
            if !stale {
                blocklist(dev, h)?;
            }
            tracing::warn!(member = %dev.name, holder = %h.client, cookie = %h.cookie,
                "broke the member's lock ({})", if stale { "left by this host" } else { "fenced" });
        }
    }
    Err(io::Error::new(
        io::ErrorKind::WouldBlock,
        format!(
            "{}: its lock changed hands while it was being taken; try again",
            dev.name
        ),
    ))
}

/// Break the image's managed exclusive lock (the exclusive-lock feature),
/// whoever holds it, once the vpool lock of a dead or fenced holder was
/// broken: its owner is that holder (librbd names owners by address, and
/// after an OSD restart the address it reports is not always the one the
/// vpool lock recorded), or a client writing a member it does not own.
/// Otherwise our first write waits for a dead owner's watch to time out
/// (30 s) before librbd breaks the lock itself. librbd blocklists the
/// owner as it breaks.
fn break_managed(dev: &RbdDevice, holder: &str) -> io::Result<()> {
    let mut mode = 0;
    let mut owners = [std::ptr::null_mut::<c_char>(); 8];
    let mut n = owners.len();
    // SAFETY: an open image, an array of `n` pointers, `n` in and out.
    let rc = unsafe {
        (dev.api().rbd_lock_get_owners)(dev.image, &mut mode, owners.as_mut_ptr(), &mut n)
    };
    if rc < 0 {
        tracing::debug!(member = %dev.name, rc, "no managed lock owner");
        return Ok(()); // no owner (-ENOENT) or no exclusive-lock feature
    }
    let names: Vec<String> = owners[..n.min(owners.len())]
        .iter()
        .filter(|p| !p.is_null())
        // SAFETY: librbd filled these with C strings, freed below.
        .map(|p| unsafe { CStr::from_ptr(*p) }.to_string_lossy().into_owned())
        .collect();
    // SAFETY: the array and count librbd filled.
    unsafe { (dev.api().rbd_lock_get_owners_cleanup)(owners.as_mut_ptr(), n) };
    tracing::debug!(member = %dev.name, ?names, holder, "breaking the managed lock");
    for owner in &names {
        let o = cstr(owner)?;
        // SAFETY: an open image and a C string; 0 is RBD_LOCK_MODE_EXCLUSIVE.
        let rc = unsafe { (dev.api().rbd_lock_break)(dev.image, 0, o.as_ptr()) };
        if rc < 0 && rc != -libc::ENOENT {
            check(rc.into(), || {
                format!("{}: breaking the exclusive lock of {owner}", dev.name)
            })?;
        }
    }
    Ok(())
}

fn refusal(dev: &RbdDevice, h: &Locker, theirs: Option<&Cookie>, me: &Cookie) -> io::Error {
    let msg = match theirs {
        Some(c) if c.host == me.host => format!(
            "{} is in use by another vpool process on this host (pid {})",
            dev.name, c.pid
        ),
        Some(c) => format!(
            "{} is locked by vpool on host '{}' (pid {}, {} at {}). If that host is down, \
             `vpool pool import --force` fences it and takes the pool",
            dev.name, c.host, c.pid, h.client, h.addr
        ),
        None => format!(
            "{} is locked by {} at {} (cookie '{}'), not by vpool; release it there (rbd lock rm)",
            dev.name, h.client, h.addr, h.cookie
        ),
    };
    io::Error::new(io::ErrorKind::WouldBlock, msg)
}

/// Fence a holder: no OSD takes its client's writes any more (for
/// [`FENCE_SECONDS`]), so a host that was only cut off cannot write
/// behind our back when it returns.
fn blocklist(dev: &RbdDevice, h: &Locker) -> io::Result<()> {
    let addr = cstr(&h.addr)?;
    let mut bytes = addr.into_bytes_with_nul();
    // SAFETY: a connected cluster handle and a writable C string (the API
    // takes `char *` but does not keep it).
    let rc = unsafe {
        (dev.api().rados_blocklist_add)(
            dev.conn.cluster,
            bytes.as_mut_ptr().cast::<c_char>(),
            FENCE_SECONDS,
        )
    };
    check(rc.into(), || {
        format!(
            "{}: fencing {} (blocklisting {})",
            dev.name, h.client, h.addr
        )
    })
    .map(drop)
}

/// Who holds the lock on `oid`.
fn lockers(dev: &RbdDevice, oid: &CStr) -> io::Result<Vec<Locker>> {
    let mut sizes = [0usize; 4];
    let mut bufs: [Vec<u8>; 4] = Default::default();
    for _ in 0..4 {
        let mut exclusive = 0;
        let [tag, clients, cookies, addrs] = &mut bufs;
        let [tl, cl, kl, al] = &mut sizes;
        // SAFETY: a live I/O context, C strings, and every buffer's length
        // passed beside it.
        let rc = unsafe {
            (dev.api().rados_list_lockers)(
                dev.conn.ioctx,
                oid.as_ptr(),
                NAME.as_ptr(),
                &mut exclusive,
                tag.as_mut_ptr().cast(),
                tl,
                clients.as_mut_ptr().cast(),
                cl,
                cookies.as_mut_ptr().cast(),
                kl,
                addrs.as_mut_ptr().cast(),
                al,
            )
        };
        if rc == -(libc::ERANGE as isize) {
            for (b, n) in bufs.iter_mut().zip(sizes) {
                b.resize(n, 0);
            }
            continue;
        }
        let n = check(rc as i64, || {
            format!("{}: listing its lock holders", dev.name)
        })? as usize;
        let split = |b: &[u8], len: usize| -> Vec<String> {
            b[..len.min(b.len())]
                .split(|&c| c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        };
        let (c, k, a) = (
            split(&bufs[1], sizes[1]),
            split(&bufs[2], sizes[2]),
            split(&bufs[3], sizes[3]),
        );
        return Ok((0..n)
            .map(|i| Locker {
                client: c.get(i).cloned().unwrap_or_default(),
                cookie: k.get(i).cloned().unwrap_or_default(),
                addr: a.get(i).cloned().unwrap_or_default(),
            })
            .collect());
    }
    Err(io::Error::other(format!(
        "{}: its lock holders kept changing while being listed",
        dev.name
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_round_trip_and_tell_stale_from_live() {
        let me = Cookie::mine();
        assert_eq!(Cookie::parse(&me.render()), Some(Cookie::mine()));
        assert_eq!(Cookie::parse("someone else's"), None);
        // This very process is a live holder (the test binary's name is
        // vpool-...), a pid that cannot exist is not.
        assert!(!me.stale_here(&me));
        let gone = Cookie {
            pid: u32::MAX,
            ..Cookie::mine()
        };
        assert!(gone.stale_here(&me));
        let old_boot = Cookie {
            boot: "earlier".into(),
            ..Cookie::mine()
        };
        assert!(old_boot.stale_here(&me));
        let elsewhere = Cookie {
            host: "other-host".into(),
            pid: u32::MAX,
            ..Cookie::mine()
        };
        assert!(!elsewhere.stale_here(&me));
    }
}
