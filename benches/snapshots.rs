//! Snapshot scale through the library (not a timed test): one volume, a
//! snapshot after every batch of random 4 KiB writes, up to 10,000
//! snapshots; at 10, 100, 1,000 and 10,000 snapshots it reports the
//! snapshot create time (median of the last 9), the 4 KiB write IOPS of the
//! batch before, and the metadata in use; then every snapshot is removed in
//! random order (each must succeed), and it reports the removal time, the
//! metadata left and whether `check` is clean.
//!
//! Run: `cargo bench --bench snapshots` (VPOOL_BENCH_DIR: where the member
//! files go, default /var/tmp; VPOOL_SNAPSHOTS: the last count, default
//! 10000). Prints markdown tables (issue 16's scale figures).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use vpool::device::{DeviceRef, FileDevice};
use vpool::raid::RaidLevel;
use vpool::{CreateOptions, Pool};

const MIB: u64 = 1 << 20;
/// Random 4 KiB writes before each snapshot (VPOOL_SNAPSHOT_WRITES).
fn writes() -> usize {
    std::env::var("VPOOL_SNAPSHOT_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn main() {
    let dir = PathBuf::from(std::env::var("VPOOL_BENCH_DIR").unwrap_or("/var/tmp".into()));
    let last: usize = std::env::var("VPOOL_SNAPSHOTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let vol = 1024 * MIB;
    let writes = writes();
    // Room for the volume and every chunk the writes copy.
    let size = (2 << 30) + (last * writes) as u64 * 65536;
    let paths: Vec<PathBuf> = (0..2)
        .map(|i| {
            let p = dir.join(format!("vpool-snapscale-{i}.img"));
            let _ = std::fs::remove_file(&p);
            std::fs::File::create(&p)
                .and_then(|f| f.set_len(size))
                .expect("member file");
            p
        })
        .collect();
    let devs: Vec<DeviceRef> = paths
        .iter()
        .map(|p| Arc::new(FileDevice::open(p).expect("open")) as DeviceRef)
        .collect();
    let (pool, _) =
        Pool::create("scale", devs, &CreateOptions::new(RaidLevel::Raid1)).expect("create");
    let chunk = pool.chunk_size();
    pool.create_volume("v", vol).expect("volume");
    let v = pool.volume("v", None).expect("volume");
    let buf = vec![7u8; 4 * MIB as usize];
    for off in (0..vol).step_by(buf.len()) {
        v.write_at(&buf, off).expect("fill");
    }
    pool.commit().expect("commit");
    let start_meta = pool.info().metadata_used;
    println!(
        "raid1 x2 (file members in {}), {} MiB chunks of {} KiB, one {} MiB volume written whole; {writes} random 4 KiB writes (then a flush) before each snapshot\n",
        dir.display(),
        pool.info().capacity >> 20,
        chunk >> 10,
        vol >> 20
    );
    println!(
        "metadata in use before the first snapshot: {:.1} MiB\n",
        start_meta as f64 / MIB as f64
    );
    println!("| snapshots | snapshot create (median of last 9) | 4K write IOPS (last batch) | metadata in use | metadata area | per snapshot |");
    println!("|---|---|---|---|---|---|");
    let mut rng = Rng(0x1234_5678);
    let page = vec![3u8; 4096];
    let mut times = Vec::new();
    let marks = [10, 100, 1000, 10_000];
    for i in 1..=last {
        let t = Instant::now();
        for _ in 0..writes {
            let off = (rng.next() % (vol / 4096)) * 4096;
            v.write_at(&page, off).expect("write");
        }
        v.flush().expect("flush");
        let iops = writes as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        pool.snapshot("v", &format!("s{i}")).expect("snapshot");
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if marks.contains(&i) || i == last {
            let mut recent: Vec<f64> = times[times.len().saturating_sub(9)..].to_vec();
            recent.sort_by(|a, b| a.total_cmp(b));
            let info = pool.info();
            println!(
                "| {i} | {:.2} ms | {:.0} | {:.1} MiB | {:.1} MiB | {:.1} KiB |",
                recent[recent.len() / 2],
                iops,
                info.metadata_used as f64 / MIB as f64,
                info.metadata_total as f64 / MIB as f64,
                (info.metadata_used - start_meta) as f64 / 1024.0 / i as f64
            );
        }
    }
    // Remove every snapshot in random order.
    let mut order: Vec<usize> = (1..=last).collect();
    for i in (1..order.len()).rev() {
        let j = (rng.next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    let t = Instant::now();
    let mut rm = Vec::new();
    for i in order {
        let s = Instant::now();
        pool.remove_snapshot("v", &format!("s{i}"))
            .expect("every removal succeeds");
        rm.push(s.elapsed().as_secs_f64() * 1e3);
    }
    let total = t.elapsed().as_secs_f64();
    rm.sort_by(|a, b| a.total_cmp(b));
    let info = pool.info();
    let r = pool.check(false).expect("check");
    println!(
        "\nremoved all {last} in random order in {total:.1} s (median {:.2} ms, max {:.1} ms each); metadata in use after: {:.1} MiB (before the first snapshot: {:.1} MiB); check clean: {}",
        rm[rm.len() / 2],
        rm[rm.len() - 1],
        info.metadata_used as f64 / MIB as f64,
        start_meta as f64 / MIB as f64,
        r.clean()
    );
    drop(pool);
    for p in paths {
        let _ = std::fs::remove_file(p);
    }
}
