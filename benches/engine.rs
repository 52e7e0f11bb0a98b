//! Engine benchmarks through the library (not a timed test): thin
//! allocate-on-first-write and overwrite throughput on RAM-backed (tmpfs)
//! raid0 and raid5 pools, snapshot creation time at 1 GiB and 100 GiB of
//! mapped data, and pool open time and peak RSS with 1 million mapped chunks.
//!
//! Run: `cargo bench --bench engine` (set VPOOL_BENCH_DIR for the tmpfs
//! directory, default /dev/shm; VPOOL_BENCH_BIG_DIR for the sparse files of
//! the metadata-scale runs, default /var/tmp). Prints a markdown table.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use vpool::device::{BlockDevice, DeviceRef, FileDevice};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Pool};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// A member whose data area is not stored: writes past `data_start` are
/// dropped and reads there return zeros. Lets the metadata-scale runs map
/// 100 GiB without writing 100 GiB; metadata I/O is real.
struct MetadataOnly {
    inner: FileDevice,
    data_start: u64,
}

impl BlockDevice for MetadataOnly {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset >= self.data_start && offset + (buf.len() as u64) < self.size() - 4096 {
            buf.fill(0);
            return Ok(());
        }
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if offset >= self.data_start && offset + (buf.len() as u64) < self.size() - 4096 {
            return Ok(());
        }
        self.inner.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        self.inner.flush()
    }
    fn name(&self) -> String {
        self.inner.name()
    }
}

fn images(dir: &Path, prefix: &str, n: usize, size: u64) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("{prefix}{i}.img"));
            let _ = std::fs::remove_file(&p);
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(size))
                .expect("create image");
            p
        })
        .collect()
}

fn open_files(paths: &[PathBuf]) -> Vec<DeviceRef> {
    paths
        .iter()
        .map(|p| Arc::new(FileDevice::open(p).expect("open")) as DeviceRef)
        .collect()
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// Run `threads` workers over `[0, bytes)` of the volume in `io`-sized writes.
fn parallel_write(pool: &Pool, vol: &str, bytes: u64, io: u64, threads: u64, random: bool) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let v = pool.volume(vol, None).expect("volume");
            s.spawn(move || {
                let buf = vec![0x5au8 ^ t as u8; io as usize];
                let share = bytes / threads;
                let count = share / io;
                let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ t;
                for i in 0..count {
                    let off = if random {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        t * share + (x % count) * io
                    } else {
                        t * share + i * io
                    };
                    v.write_at(&buf, off).expect("write");
                }
            });
        }
    });
    pool.commit().expect("commit");
    start.elapsed().as_secs_f64()
}

fn parallel_read(pool: &Pool, vol: &str, bytes: u64, io: u64, threads: u64) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let v = pool.volume(vol, None).expect("volume");
            s.spawn(move || {
                let mut buf = vec![0u8; io as usize];
                let share = bytes / threads;
                let count = share / io;
                let mut x = 0x2545_F491_4F6C_DD1Du64 ^ t;
                for _ in 0..count {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    v.read_at(&mut buf, t * share + (x % count) * io)
                        .expect("read");
                }
            });
        }
    });
    start.elapsed().as_secs_f64()
}

fn throughput(dir: &Path, level: RaidLevel, threads: u64) {
    let paths = images(dir, &format!("tp-{level}-"), 3, 1200 * MIB);
    let (pool, _) =
        Pool::create("bench", open_files(&paths), &CreateOptions::new(level)).expect("create");
    let size = GIB;
    pool.create_volume("seq", size).expect("vol");
    let t = parallel_write(&pool, "seq", size, MIB, threads, false);
    let first = size as f64 / MIB as f64 / t;
    let t = parallel_write(&pool, "seq", size, MIB, threads, false);
    let over = size as f64 / MIB as f64 / t;
    let small = 256 * MIB;
    let t = parallel_write(&pool, "seq", small, 4096, threads, true);
    let w4k = (small / 4096) as f64 / t;
    let t = parallel_read(&pool, "seq", small, 4096, threads);
    let r4k = (small / 4096) as f64 / t;
    pool.create_volume("fresh", size).expect("vol");
    let t = parallel_write(&pool, "fresh", 64 * MIB, 4096, threads, true);
    let a4k = (64 * MIB / 4096) as f64 / t;
    println!(
        "| {level} x3 | {threads} | {first:.0} | {over:.0} | {a4k:.0} | {w4k:.0} | {r4k:.0} |"
    );
    drop(pool);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

/// A pool whose data writes are dropped, with `mapped` bytes mapped in one volume.
fn metadata_scale_pool(
    dir: &Path,
    prefix: &str,
    level: RaidLevel,
    member: u64,
    mapped: u64,
) -> (Pool, Vec<PathBuf>) {
    let paths = images(dir, prefix, 2, member);
    let (pool, _) =
        Pool::create("scale", open_files(&paths), &CreateOptions::new(level)).expect("create");
    let data_start = pool.label().data_start;
    drop(pool);
    let devs: Vec<DeviceRef> = paths
        .iter()
        .map(|p| {
            Arc::new(MetadataOnly {
                inner: FileDevice::open(p).expect("open"),
                data_start,
            }) as DeviceRef
        })
        .collect();
    let pool = Pool::open(devs).expect("open");
    pool.create_volume("v", mapped).expect("vol");
    let v = pool.volume("v", None).expect("vol");
    let buf = vec![1u8; 4 * MIB as usize];
    for off in (0..mapped).step_by(buf.len()) {
        v.write_at(&buf, off).expect("write");
    }
    pool.commit().expect("commit");
    (pool, paths)
}

fn snapshot_time(dir: &Path, mapped: u64) {
    let (pool, paths) =
        metadata_scale_pool(dir, "snap-", RaidLevel::Raid0, mapped / 2 + 8 * GIB, mapped);
    let chunks = pool.list()[0].mapped / pool.chunk_size();
    let mut times = Vec::new();
    for i in 0..5 {
        let start = Instant::now();
        pool.snapshot("v", &format!("s{i}")).expect("snapshot");
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("| {} GiB | {chunks} | {:.2} ms |", mapped / GIB, times[2]);
    drop(pool);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

fn open_scale(dir: &Path) {
    let chunk = 128 * 1024u64;
    let chunks = 1u64 << 20;
    let (pool, paths) = metadata_scale_pool(
        dir,
        "open-",
        RaidLevel::Raid0,
        chunks * chunk / 2 + 8 * GIB,
        chunks * chunk,
    );
    let mapped = pool.list()[0].mapped / pool.chunk_size();
    drop(pool);
    let exe = std::env::current_exe().expect("exe");
    let mut times = Vec::new();
    let mut rss = 0;
    for _ in 0..5 {
        let out = std::process::Command::new(&exe)
            .arg("--open-only")
            .args(&paths)
            .output()
            .expect("spawn");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut parts = text.split_whitespace();
        times.push(
            parts
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN),
        );
        rss = parts
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("| {mapped} | {:.0} ms | {} MiB |", times[2], rss / 1024);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(|a| a.as_str()) == Some("--open-only") {
        let paths: Vec<PathBuf> = args[1..].iter().map(PathBuf::from).collect();
        let before = rss_kib("VmRSS:");
        let start = Instant::now();
        let pool = Pool::open(open_files(&paths)).expect("open");
        let t = start.elapsed().as_secs_f64() * 1e3;
        let _ = pool.info();
        println!("{t} {}", rss_kib("VmHWM:").saturating_sub(before));
        return;
    }
    let dir = PathBuf::from(std::env::var("VPOOL_BENCH_DIR").unwrap_or("/dev/shm".into()));
    let big = PathBuf::from(std::env::var("VPOOL_BENCH_BIG_DIR").unwrap_or("/var/tmp".into()));
    println!("## Thin throughput through the library (tmpfs members, 64K stripe unit)\n");
    println!("| pool | threads | 1M first write MB/s | 1M overwrite MB/s | 4K first write IOPS | 4K overwrite IOPS | 4K read IOPS |");
    println!("|---|---|---|---|---|---|---|");
    for level in [RaidLevel::Raid0, RaidLevel::Raid5] {
        for threads in [1, 2] {
            throughput(&dir, level, threads);
        }
    }
    println!("\n## Snapshot creation time (median of 5)\n");
    println!("| mapped | chunks | time |");
    println!("|---|---|---|");
    snapshot_time(&big, GIB);
    snapshot_time(&big, 100 * GIB);
    println!("\n## Pool open with 1 million mapped chunks (median of 5, fresh process)\n");
    println!("| chunks | open time | peak RSS added by open |");
    println!("|---|---|---|");
    open_scale(&big);
}
