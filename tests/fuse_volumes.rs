//! Needs root, FUSE and loop devices (packages fuse3, e2fsprogs): volumes as
//! files through the daemon's FUSE mount, used by the kernel's loop driver
//! and ext4.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::Command;

/// A pool with a daemon that mounts volumes as files under `dir/volumes`;
/// the mount is detached at cleanup whatever happens.
fn fuse_daemon(
    dir: &Path,
    level: &str,
    members: usize,
    size: u64,
    g: &mut Cleanup,
) -> (Daemon, std::path::PathBuf) {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    let state = dir.join("state");
    let mnt = dir.join("volumes");
    make_pool(&state, level, members, size, &[]);
    let d = Daemon::start_with(&state, &["--fuse-mount", mnt.to_str().unwrap()]);
    g.unmount_later(&mnt);
    (d, mnt)
}

fn mounted(path: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .any(|l| l.split(' ').nth(4) == path.to_str())
}

fn files() -> Vec<(String, Vec<u8>)> {
    (0..30)
        .map(|i| {
            (
                format!("d{}/sub{}/f{i}", i % 3, i % 5),
                common::pattern(50_000 + i * 91_001, 100 + i as u64),
            )
        })
        .collect()
}

fn errno_of(r: std::io::Result<impl Sized>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn ext4_on_loop_on_fuse_file_across_restart() {
    require("mkfs.ext4", "e2fsprogs");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    for (level, n) in [("raid1", 2), ("raid5", 3)] {
        let dir = tempfile::tempdir().unwrap();
        let mut guard = Cleanup::default();
        let (mut d, mnt) = fuse_daemon(dir.path(), level, n, 1 << 30, &mut guard);
        d.vpool_ok(&["vol", "create", "tank/db", "--size", "256M"]);
        let file = mnt.join("tank/db");
        assert_eq!(
            std::fs::metadata(&file).unwrap().len(),
            256 << 20,
            "{level}"
        );
        let fsdir = dir.path().join("fs");
        std::fs::create_dir_all(&fsdir).unwrap();
        {
            let mut g = Cleanup::default();
            let dev = g.losetup(&file, &["--direct-io=on"]);
            common::fs::ext4_with_files(&dev, &fsdir, &files(), &mut g, level);
        }
        d.stop();
        assert!(
            !mounted(&mnt),
            "{level}: the FUSE mount is gone after shutdown"
        );
        d.restart();
        {
            let mut g = Cleanup::default();
            let dev = g.losetup(&file, &["--direct-io=on", "-r"]);
            g.mount(&dev, &fsdir, true);
            common::fs::assert_files(&fsdir, &files(), &format!("{level} after restart"));
        }
        d.stop();
    }
}

#[test]
fn fuse_files_follow_the_volumes() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut guard = Cleanup::default();
    let (mut d, mnt) = fuse_daemon(dir.path(), "raid0", 2, 512 << 20, &mut guard);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "8M"]);
    let file = mnt.join("tank/db");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    f.write_all_at(&[7u8; 8192], 4096).unwrap();
    f.sync_all().unwrap();
    d.vpool_ok(&["snap", "create", "tank/db@s"]);
    let names: Vec<String> = std::fs::read_dir(mnt.join("tank"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.contains(&"db".to_string()) && names.contains(&"db@s".to_string()),
        "{names:?}"
    );
    // Size follows a resize at once, in the kernel's inode too: an
    // asynchronous direct read past the old end on a descriptor opened before
    // the grow (as a loop device's) gets data, with no stat in between (the
    // kernel answers such a read from its cached size; 0 bytes is what a
    // loop device turns into an I/O error).
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&file)
        .unwrap();
    d.vpool_ok(&["vol", "resize", "tank/db", "--size", "16M"]);
    assert_eq!(aio_read_at(&direct, 4096, (12 << 20) + 4096), 4096);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);
    // Writes past the end, truncate, create, remove, rename: refused.
    assert_eq!(
        errno_of(f.write_all_at(&[1u8; 4096], 16 << 20)),
        libc::EFBIG
    );
    assert_eq!(errno_of(f.set_len(1 << 20)), libc::EPERM);
    assert_eq!(
        errno_of(std::fs::File::create(mnt.join("tank/new"))),
        libc::EPERM
    );
    assert_eq!(errno_of(std::fs::remove_file(&file)), libc::EPERM);
    assert_eq!(
        errno_of(std::fs::rename(&file, mnt.join("tank/other"))),
        libc::EPERM
    );
    // Snapshots are read-only files with the old contents.
    assert_eq!(
        errno_of(OpenOptions::new().write(true).open(mnt.join("tank/db@s"))),
        libc::EROFS
    );
    let mut buf = vec![0u8; 8192];
    std::fs::File::open(mnt.join("tank/db@s"))
        .unwrap()
        .read_exact_at(&mut buf, 4096)
        .unwrap();
    assert_eq!(buf, vec![7u8; 8192]);
    // Punching a hole reads back zeros.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            4096,
            8192,
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    f.read_exact_at(&mut buf, 4096).unwrap();
    assert_eq!(buf, vec![0u8; 8192]);
    let mut w = OpenOptions::new().write(true).open(&file).unwrap();
    w.write_all(b"hello").unwrap();
    w.sync_all().unwrap(); // fsync: durable from here, whatever happens to the daemon
                           // A rollback to a larger snapshot grows the open file the same way.
    d.vpool_ok(&["snap", "create", "tank/db@big"]);
    d.vpool_ok(&["vol", "resize", "tank/db", "--size", "8M"]);
    // (A stat takes the smaller size into the kernel's inode.)
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 8 << 20);
    assert_eq!(aio_read_at(&direct, 4096, (12 << 20) + 4096), 0);
    d.vpool_ok(&["vol", "rollback", "tank/db@big"]);
    assert_eq!(aio_read_at(&direct, 4096, (12 << 20) + 4096), 4096);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), 16 << 20);
    drop((f, w, direct));
    // A killed daemon leaves a stale mount; the next start cleans it.
    d.kill();
    assert!(mounted(&mnt));
    d.restart();
    assert!(d.log().contains("stale FUSE mount"), "{}", d.log());
    let mut head = [0u8; 5];
    std::fs::File::open(&file)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert_eq!(&head, b"hello");
    d.stop();
}

/// One read through Linux AIO (io_setup/io_submit/io_getevents), which the
/// kernel runs asynchronously on an O_DIRECT FUSE file: its result.
fn aio_read_at(f: &std::fs::File, len: usize, offset: u64) -> i64 {
    #[repr(C)]
    #[derive(Default)]
    struct Iocb {
        data: u64,
        key: u32,
        rw_flags: u32,
        opcode: u16,
        reqprio: i16,
        fildes: u32,
        buf: u64,
        nbytes: u64,
        offset: i64,
        reserved2: u64,
        flags: u32,
        resfd: u32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Event {
        data: u64,
        obj: u64,
        res: i64,
        res2: i64,
    }
    let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
    // SAFETY: a 4 KiB-aligned buffer of `len` bytes, freed below.
    let buf = unsafe { std::alloc::alloc_zeroed(layout) };
    let mut ctx: libc::c_ulong = 0;
    // SAFETY: the Linux AIO calls with valid pointers to locals.
    unsafe {
        assert_eq!(libc::syscall(libc::SYS_io_setup, 1, &mut ctx), 0);
        let mut cb = Iocb {
            fildes: std::os::fd::AsRawFd::as_raw_fd(f) as u32,
            buf: buf as u64,
            nbytes: len as u64,
            offset: offset as i64,
            ..Default::default()
        }; // opcode 0: IOCB_CMD_PREAD
        let mut list = [&mut cb as *mut Iocb];
        assert_eq!(
            libc::syscall(libc::SYS_io_submit, ctx, 1, list.as_mut_ptr()),
            1
        );
        let mut ev = [Event::default()];
        let timeout = libc::timespec {
            tv_sec: 30,
            tv_nsec: 0,
        };
        assert_eq!(
            libc::syscall(libc::SYS_io_getevents, ctx, 1, 1, ev.as_mut_ptr(), &timeout),
            1
        );
        libc::syscall(libc::SYS_io_destroy, ctx);
        std::alloc::dealloc(buf, layout);
        ev[0].res
    }
}

#[test]
fn online_grow_under_a_mounted_filesystem() {
    // XFS: ext4 grows online only with CAP_SYS_RESOURCE, which this machine's
    // root lacks (vpool then reports resize2fs's refusal, and the volume grows).
    require("xfs_growfs", "xfsprogs");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let (d, mnt) = fuse_daemon(dir.path(), "raid5", 3, 1 << 30, &mut g);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "320M"]);
    let file = mnt.join("tank/db");
    let dev = g.losetup(&file, &["--direct-io=on"]);
    ok(Command::new("mkfs.xfs").args(["-q", "-f", &dev]), 120);
    let fsdir = dir.path().join("fs");
    std::fs::create_dir_all(&fsdir).unwrap();
    g.mount(&dev, &fsdir, false);
    let statfs_size = |p: &Path| {
        let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s.f_blocks * s.f_frsize
    };
    let before = statfs_size(&fsdir);
    // A writer that verifies everything it writes, running through the grow.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s = stop.clone();
    g.push(move || s.store(true, std::sync::atomic::Ordering::Relaxed));
    let writer = {
        let stop = stop.clone();
        let fsdir = fsdir.clone();
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let data = common::pattern(512 * 1024, i);
                let p = fsdir.join(format!("w{}", i % 150));
                std::fs::write(&p, &data).expect("write during grow");
                assert!(
                    std::fs::read(&p).expect("read during grow") == data,
                    "verify {i}"
                );
                i += 1;
            }
            i
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(300));
    // Shrinking under the mounted filesystem is refused.
    let o = d.vpool(&["vol", "resize", "tank/db", "--size", "256M"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mounted on"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Grow, and let vpool grow the loop device and the filesystem.
    let out = d.vpool_ok(&["vol", "resize", "tank/db", "--size", "+256M", "--resize-fs"]);
    assert!(
        out.contains("losetup -c") && out.contains("xfs_growfs grew"),
        "{out}"
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.join().expect("the writer never fails");
    assert!(rounds > 5);
    let after = statfs_size(&fsdir);
    assert!(after > before + (200 << 20), "df: {before} -> {after}");
    ok(Command::new("umount").arg(&fsdir), 60);
    let check = run(Command::new("xfs_repair").args(["-n", &dev]), 120);
    assert!(
        check.status.success(),
        "xfs_repair -n: {}",
        String::from_utf8_lossy(&check.stdout)
    );
}

#[test]
fn vpool_mount_and_umount_against_a_running_daemon() {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let state = dir.path().join("state");
    let mnt = dir.path().join("files");
    make_pool(&state, "raid1", 2, 64 << 20, &[]);
    // Without a daemon, the CLI says what to run.
    let o = run(
        Command::new(vpool_bin())
            .args(["--state-dir", state.to_str().unwrap(), "mount"])
            .arg(&mnt),
        60,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("vpool daemon"), "{err}");
    let mut d = Daemon::start(&state);
    g.unmount_later(&mnt);
    d.vpool_ok(&["vol", "create", "tank/v", "--size", "8M"]);
    let out = d.vpool_ok(&["mount", mnt.to_str().unwrap()]);
    assert!(out.contains("mounted"), "{out}");
    assert!(mounted(&mnt));
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(mnt.join("tank/v"))
        .unwrap();
    assert_eq!(f.metadata().unwrap().len(), 8 << 20);
    f.write_all_at(b"mounted later", 4096).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let o = d.vpool(&["mount", dir.path().join("other").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already mounted"));
    d.vpool_ok(&["umount"]);
    assert!(!mounted(&mnt));
    // Mount again; the daemon unmounts it at shutdown.
    d.vpool_ok(&["mount", mnt.to_str().unwrap()]);
    let mut b = [0u8; 13];
    std::fs::File::open(mnt.join("tank/v"))
        .unwrap()
        .read_exact_at(&mut b, 4096)
        .unwrap();
    assert_eq!(&b, b"mounted later");
    d.stop();
    assert!(!mounted(&mnt));
}

/// fio with 32 requests in flight (libaio, direct), on the volume file and
/// on a loop device over it: the kernel sends the requests to the daemon
/// concurrently (FUSE_ASYNC_DIO), they complete out of order, and every
/// block reads back as written. Then the same data through the other path.
#[test]
fn deep_queues_through_the_file_and_a_loop_device_verify() {
    require("fio", "fio");
    let dir = tempfile::tempdir().unwrap();
    let mut g = Cleanup::default();
    let (d, mnt) = fuse_daemon(dir.path(), "raid5", 3, 256 << 20, &mut g);
    d.vpool_ok(&["vol", "create", "tank/a", "--size", "64M"]);
    d.vpool_ok(&["vol", "create", "tank/b", "--size", "64M"]);
    let fio = |target: &str, rw: &str, bs: &str, extra: &[&str]| {
        ok(
            Command::new("fio")
                .args([
                    "--name=deep",
                    &format!("--filename={target}"),
                    "--ioengine=libaio",
                    "--direct=1",
                    "--iodepth=32",
                    &format!("--rw={rw}"),
                    &format!("--bs={bs}"),
                    "--size=64M",
                    "--verify=crc32c",
                    // No local-*-verify.state files in the working tree.
                    "--verify_state_save=0",
                    "--output-format=terse",
                ])
                .args(extra),
            300,
        )
    };
    let file = mnt.join("tank/a");
    let file = file.to_str().unwrap();
    // Random 4 KiB and 64 KiB writes with mixed sizes, straight on the file.
    fio(file, "randwrite", "4k", &["--bsrange=4k-64k"]);
    // The same blocks, verified through a loop device over the file.
    let dev = g.losetup(&mnt.join("tank/a"), &["--direct-io=on"]);
    fio(
        &dev,
        "randwrite",
        "4k",
        &["--bsrange=4k-64k", "--verify_only"],
    );
    // Sequential 1 MiB writes through a loop device over the other volume.
    let dev_b = g.losetup(&mnt.join("tank/b"), &["--direct-io=on"]);
    fio(&dev_b, "write", "1M", &[]);
    fio(
        mnt.join("tank/b").to_str().unwrap(),
        "write",
        "1M",
        &["--verify_only"],
    );
}

/// Who may reach a volume through its file (issue 20): the FUSE mount is
/// shared (containers' loop devices read it), but the kernel enforces the
/// files' modes (`default_permissions`): root reads and writes a volume,
/// the unprivileged user `nobody` can neither read nor write it, even with
/// every directory on the way open to it.
#[test]
fn volume_files_refuse_other_users() {
    require("setpriv", "util-linux");
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let mut guard = Cleanup::default();
    let (d, mnt) = fuse_daemon(dir.path(), "raid1", 2, 256 << 20, &mut guard);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "8M"]);
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = mnt.join("tank/db");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&file)
        .unwrap();
    f.write_all_at(&[9u8; 4096], 0).unwrap();
    let as_nobody = |args: &[&str]| {
        run(
            Command::new("setpriv")
                .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .args(args),
            60,
        )
    };
    let read = as_nobody(&["head", "-c", "4096", file.to_str().unwrap()]);
    assert!(!read.status.success(), "nobody read a volume");
    assert!(
        String::from_utf8_lossy(&read.stderr).contains("ermission denied"),
        "{}",
        String::from_utf8_lossy(&read.stderr)
    );
    let write = as_nobody(&[
        "dd",
        "if=/dev/zero",
        &format!("of={}", file.display()),
        "bs=4096",
        "count=1",
        "conv=notrunc",
    ]);
    assert!(!write.status.success(), "nobody wrote a volume");
    let mut back = [0u8; 4096];
    f.read_exact_at(&mut back, 0).unwrap();
    assert_eq!(back, [9u8; 4096], "the volume is unchanged");
}
