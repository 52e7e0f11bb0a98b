//! Needs root, FUSE and loop devices (packages libnbd-bin, fuse3, e2fsprogs):
//! a real ext4 filesystem over NBD through nbdfuse and a loop device, and a
//! snapshot taken under load that is one point in time.

mod common;
use common::cleanup::Cleanup;
use common::daemon::*;
use common::nbd_client::Client;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// nbdfuse serving `uri` as MNT/db; returns the file and the nbdfuse child.
fn nbdfuse(mnt: &Path, uri: &str, guard: &mut Cleanup) -> PathBuf {
    std::fs::create_dir_all(mnt).unwrap();
    let pidfile = mnt.with_extension("pid");
    let _ = std::fs::remove_file(&pidfile);
    let child: Child = Command::new("nbdfuse")
        .args([
            "-P",
            pidfile.to_str().unwrap(),
            &format!("{}/db", mnt.display()),
            uri,
        ])
        .stdin(Stdio::null())
        .spawn()
        .expect("nbdfuse");
    let pid = child.id() as i32;
    let m = mnt.to_path_buf();
    guard.push(move || {
        let _ = run(Command::new("fusermount3").arg("-u").arg(&m), 60);
        // SAFETY: our own child, by PID.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let mut child = child;
        let _ = child.wait();
    });
    let start = Instant::now();
    while !pidfile.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nbdfuse did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    mnt.join("db")
}

fn files() -> Vec<(String, Vec<u8>)> {
    (0..24)
        .map(|i| {
            (
                format!("dir{}/file{i}.bin", i % 4),
                common::pattern(200_000 + i * 37_000, i as u64),
            )
        })
        .collect()
}

#[test]
fn ext4_over_nbdfuse_survives_daemon_restart() {
    require("nbdfuse", "libnbd-bin");
    require("mkfs.ext4", "e2fsprogs");
    require("fusermount3", "fuse3");
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE (run as root)"
    );
    for level in ["raid1", "raid5"] {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        make_pool(
            &state,
            level,
            if level == "raid1" { 2 } else { 3 },
            1 << 30,
            &[],
        );
        let mut d = Daemon::start(&state);
        d.vpool_ok(&["vol", "create", "tank/db", "--size", "256M"]);
        let fsdir = dir.path().join("fs");
        {
            let mut g = Cleanup::default();
            let file = nbdfuse(&dir.path().join("mnt"), &d.uri("tank/db"), &mut g);
            let dev = g.losetup(&file, &[]);
            common::fs::ext4_with_files(&dev, &fsdir, &files(), &mut g, level);
        }
        d.stop();
        d.restart();
        {
            let mut g = Cleanup::default();
            let file = nbdfuse(&dir.path().join("mnt"), &d.uri("tank/db"), &mut g);
            let dev = g.losetup(&file, &[]);
            g.mount(&dev, &fsdir, true);
            common::fs::assert_files(&fsdir, &files(), &format!("{level} after restart"));
        }
    }
}

#[test]
fn snapshot_under_load_is_one_point_in_time() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    make_pool(&state, "raid5", 3, 512 << 20, &[]);
    let d = Daemon::start(&state);
    d.vpool_ok(&["vol", "create", "tank/db", "--size", "4M"]);
    const BLOCKS: u64 = 256;
    let port = d.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // Generation g writes every block in order, each write acknowledged
            // before the next: any point in time shows a prefix at g, the rest at g-1.
            let mut c = Client::open(port, "tank/db", false);
            let mut g = 1u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for b in 0..BLOCKS {
                    let mut block = vec![0u8; 16384];
                    for w in block.chunks_mut(8) {
                        w[..4].copy_from_slice(&g.to_le_bytes());
                        w[4..].copy_from_slice(&(b as u32).to_le_bytes());
                    }
                    assert_eq!(c.write(b * 16384, &block), 0);
                }
                g += 1;
            }
            g
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for i in 0..5 {
        d.vpool_ok(&["snap", "create", &format!("tank/db@s{i}")]);
        std::thread::sleep(Duration::from_millis(150));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let generations = writer.join().unwrap();
    assert!(generations > 2, "the writer made progress");
    for i in 0..5 {
        let mut c = Client::open(port, &format!("tank/db@s{i}"), false);
        let mut gens = Vec::new();
        for b in 0..BLOCKS {
            let data = c.read(b * 16384, 16384).unwrap();
            let g = u32::from_le_bytes(data[..4].try_into().unwrap());
            for w in data.chunks(8) {
                assert_eq!(
                    u32::from_le_bytes(w[..4].try_into().unwrap()),
                    g,
                    "snapshot s{i}: torn block {b}"
                );
                if g > 0 {
                    assert_eq!(u32::from_le_bytes(w[4..].try_into().unwrap()), b as u32);
                }
            }
            gens.push(g);
        }
        let top = gens[0];
        let k = gens.iter().take_while(|&&g| g == top).count();
        assert!(
            gens[k..].iter().all(|&g| g + 1 == top),
            "snapshot s{i} is not one point in time: {gens:?}"
        );
    }
}
