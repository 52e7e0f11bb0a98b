//! The parts of librados and librbd's C API that an RBD member uses,
//! loaded at run time (`dlopen`), so the vpool binary runs on hosts
//! without Ceph's libraries and says which package brings them when a
//! member needs them.

use libloading::Library;
use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

pub type Rados = *mut c_void;
pub type Ioctx = *mut c_void;
pub type Image = *mut c_void;

/// What to install when the libraries are missing.
pub const PACKAGE_HINT: &str =
    "install Ceph's client libraries: apt-get install -y --no-install-recommends librbd1";

/// One function pointer per C function used, resolved once.
pub struct Api {
    pub rados_create: unsafe extern "C" fn(*mut Rados, *const c_char) -> c_int,
    pub rados_conf_read_file: unsafe extern "C" fn(Rados, *const c_char) -> c_int,
    pub rados_conf_parse_env: unsafe extern "C" fn(Rados, *const c_char) -> c_int,
    pub rados_conf_set: unsafe extern "C" fn(Rados, *const c_char, *const c_char) -> c_int,
    pub rados_connect: unsafe extern "C" fn(Rados) -> c_int,
    pub rados_shutdown: unsafe extern "C" fn(Rados),
    pub rados_ioctx_create: unsafe extern "C" fn(Rados, *const c_char, *mut Ioctx) -> c_int,
    pub rados_ioctx_destroy: unsafe extern "C" fn(Ioctx),
    pub rados_ioctx_set_namespace: unsafe extern "C" fn(Ioctx, *const c_char),
    pub rados_blocklist_add: unsafe extern "C" fn(Rados, *mut c_char, u32) -> c_int,
    pub rbd_open: unsafe extern "C" fn(Ioctx, *const c_char, *mut Image, *const c_char) -> c_int,
    pub rbd_open_read_only:
        unsafe extern "C" fn(Ioctx, *const c_char, *mut Image, *const c_char) -> c_int,
    pub rbd_close: unsafe extern "C" fn(Image) -> c_int,
    pub rbd_get_size: unsafe extern "C" fn(Image, *mut u64) -> c_int,
    pub rbd_read2: unsafe extern "C" fn(Image, u64, usize, *mut c_char, c_int) -> isize,
    pub rbd_write2: unsafe extern "C" fn(Image, u64, usize, *const c_char, c_int) -> isize,
    pub rbd_discard: unsafe extern "C" fn(Image, u64, u64) -> c_int,
    pub rbd_flush: unsafe extern "C" fn(Image) -> c_int,
    pub rbd_get_id: unsafe extern "C" fn(Image, *mut c_char, usize) -> c_int,
    pub rbd_lock_get_owners:
        unsafe extern "C" fn(Image, *mut c_int, *mut *mut c_char, *mut usize) -> c_int,
    pub rbd_lock_get_owners_cleanup: unsafe extern "C" fn(*mut *mut c_char, usize),
    pub rbd_lock_break: unsafe extern "C" fn(Image, c_int, *const c_char) -> c_int,
    #[allow(clippy::type_complexity)]
    pub rados_lock_exclusive: unsafe extern "C" fn(
        Ioctx,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
        *mut c_void,
        u8,
    ) -> c_int,
    pub rados_unlock:
        unsafe extern "C" fn(Ioctx, *const c_char, *const c_char, *const c_char) -> c_int,
    pub rados_break_lock: unsafe extern "C" fn(
        Ioctx,
        *const c_char,
        *const c_char,
        *const c_char,
        *const c_char,
    ) -> c_int,
    #[allow(clippy::type_complexity)]
    pub rados_list_lockers: unsafe extern "C" fn(
        Ioctx,
        *const c_char,
        *const c_char,
        *mut c_int,
        *mut c_char,
        *mut usize,
        *mut c_char,
        *mut usize,
        *mut c_char,
        *mut usize,
        *mut c_char,
        *mut usize,
    ) -> isize,
    // Keeps the libraries mapped for as long as the pointers above live.
    _libs: (Library, Library),
}

/// The loaded API, or why it could not be loaded (naming the package).
pub fn api() -> Result<&'static Api, String> {
    static API: OnceLock<Result<Api, String>> = OnceLock::new();
    API.get_or_init(load).as_ref().map_err(Clone::clone)
}

fn open(names: &[&str]) -> Result<Library, String> {
    let mut last = String::new();
    for n in names {
        // SAFETY: loading Ceph's client library runs its initialisers,
        // which have no preconditions.
        match unsafe { Library::new(n) } {
            Ok(l) => return Ok(l),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("cannot load {} ({last}); {PACKAGE_HINT}", names[0]))
}

fn load() -> Result<Api, String> {
    let rados = open(&["librados.so.2", "librados.so"])?;
    let rbd = open(&["librbd.so.1", "librbd.so"])?;
    macro_rules! sym {
        ($lib:expr, $name:ident) => {
            // SAFETY: the symbol's type is the one librados.h/librbd.h
            // declare for it (Ceph 15 and later).
            *unsafe { $lib.get(concat!(stringify!($name), "\0").as_bytes()) }.map_err(|e| {
                format!(
                    "{} lacks {} ({e}); Ceph 15 (Octopus) or later is needed",
                    stringify!($lib),
                    stringify!($name)
                )
            })?
        };
    }
    Ok(Api {
        rados_create: sym!(rados, rados_create),
        rados_conf_read_file: sym!(rados, rados_conf_read_file),
        rados_conf_parse_env: sym!(rados, rados_conf_parse_env),
        rados_conf_set: sym!(rados, rados_conf_set),
        rados_connect: sym!(rados, rados_connect),
        rados_shutdown: sym!(rados, rados_shutdown),
        rados_ioctx_create: sym!(rados, rados_ioctx_create),
        rados_ioctx_destroy: sym!(rados, rados_ioctx_destroy),
        rados_ioctx_set_namespace: sym!(rados, rados_ioctx_set_namespace),
        rados_blocklist_add: sym!(rados, rados_blocklist_add),
        rbd_open: sym!(rbd, rbd_open),
        rbd_open_read_only: sym!(rbd, rbd_open_read_only),
        rbd_close: sym!(rbd, rbd_close),
        rbd_get_size: sym!(rbd, rbd_get_size),
        rbd_read2: sym!(rbd, rbd_read2),
        rbd_write2: sym!(rbd, rbd_write2),
        rbd_discard: sym!(rbd, rbd_discard),
        rbd_flush: sym!(rbd, rbd_flush),
        rbd_get_id: sym!(rbd, rbd_get_id),
        rbd_lock_get_owners: sym!(rbd, rbd_lock_get_owners),
        rbd_lock_get_owners_cleanup: sym!(rbd, rbd_lock_get_owners_cleanup),
        rbd_lock_break: sym!(rbd, rbd_lock_break),
        rados_lock_exclusive: sym!(rados, rados_lock_exclusive),
        rados_unlock: sym!(rados, rados_unlock),
        rados_break_lock: sym!(rados, rados_break_lock),
        rados_list_lockers: sym!(rados, rados_list_lockers),
        _libs: (rados, rbd),
    })
}

/// A negative errno from librados/librbd as an `io::Error`.
pub fn err(rc: i64) -> std::io::Error {
    std::io::Error::from_raw_os_error((-rc).clamp(1, 4095) as i32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_library_names_the_package_to_install() {
        let e = super::open(&["libvpool-no-such-library.so.9"])
            .err()
            .unwrap_or_default();
        assert!(
            e.contains("apt-get install") && e.contains("librbd1"),
            "{e}"
        );
    }
}
