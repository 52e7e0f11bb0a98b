//! `vpool check`, `vpool inspect` and `vpool quickstart`.

use super::output::{json, table};
use super::{absolute, Ctx};
use crate::control::open_members;
use crate::device::{DeviceRef, FileDevice};
use crate::meta::label::Label;
use crate::raid::RaidLevel;
use crate::state::{KnownPool, StateDir};
use crate::thin::store::superblock::Superblock;
use crate::units::format_size;
use crate::{CreateOptions, Pool};
use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Members of the pool (missing ones may be left out for raid1/raid5).
    #[arg(required = true)]
    devices: Vec<PathBuf>,
    /// Rewrite damaged metadata copies and reclaim leaked space.
    #[arg(long)]
    repair: bool,
    #[arg(long)]
    json: bool,
}

pub fn check(ctx: &Ctx, a: CheckArgs) -> anyhow::Result<()> {
    let devs = open_members(&a.devices).map_err(|e| {
        let e = anyhow::Error::new(e);
        if crate::control::client::connect(&ctx.state_dir).is_some() {
            e.context("a vpool daemon is running: stop it to check its pools offline")
        } else {
            e
        }
    })?;
    let pool = Pool::open(devs)?;
    if !a.json {
        for w in pool.warnings() {
            eprintln!("WARNING: {w}");
        }
    }
    let r = pool.check(a.repair)?;
    if a.json {
        json(&r)?;
    } else {
        println!(
            "pool '{}' at transaction {}: {} metadata blocks, {} data chunks, {} volumes checked",
            r.pool, r.transaction, r.blocks_checked, r.chunks_checked, r.volumes_checked
        );
        for e in &r.errors {
            println!("ERROR: {e}");
        }
        for d in &r.damaged_copies {
            println!("DAMAGED: {d}");
        }
        if r.leaked_blocks + r.leaked_chunks > 0 {
            println!(
                "leaks: {} metadata blocks, {} data chunks{}",
                r.leaked_blocks,
                r.leaked_chunks,
                if r.repaired {
                    " (reclaimed)"
                } else {
                    " (reclaim with --repair)"
                }
            );
        }
        if r.clean() {
            println!("clean");
        }
    }
    if !r.errors.is_empty() {
        bail!(
            "{} error(s) found; the data these structures describe is at risk",
            r.errors.len()
        );
    }
    if !r.damaged_copies.is_empty() && !a.repair {
        bail!("{} damaged metadata copies found; rerun with --repair to rewrite them from good copies", r.damaged_copies.len());
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    device: PathBuf,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct LabelView {
    copy: String,
    offset: u64,
    valid: bool,
    error: Option<String>,
    pool_name: Option<String>,
    pool_uuid: Option<String>,
    member_uuid: Option<String>,
    member_index: Option<u32>,
    members: Option<usize>,
    level: Option<String>,
    state: Option<String>,
    stripe_unit: Option<u64>,
    chunk_size: Option<u64>,
    meta_offset: Option<u64>,
    meta_blocks: Option<u64>,
    meta_copies: Option<u32>,
    data_start: Option<u64>,
    data_size: Option<u64>,
}

#[derive(Serialize)]
struct SuperblockView {
    slot: u64,
    offset: u64,
    valid: bool,
    error: Option<String>,
    transaction: Option<u64>,
    volumes_root: Option<u64>,
    data_refcount_root: Option<u64>,
    catalog_head: Option<u64>,
    data_chunks: Option<u64>,
    used_chunks: Option<u64>,
    used_meta_blocks: Option<u64>,
    member_states: Option<Vec<u8>>,
    time: Option<u64>,
}

#[derive(Serialize)]
struct InspectView {
    device: String,
    size: u64,
    labels: Vec<LabelView>,
    superblocks: Vec<SuperblockView>,
}

pub fn inspect(a: InspectArgs) -> anyhow::Result<()> {
    let dev = crate::device::open_member_readonly(&a.device)
        .with_context(|| format!("opening {}", a.device.display()))?;
    let size = dev.size();
    let mut labels = Vec::new();
    let mut good: Option<Label> = None;
    for (copy, off) in [("start", 0), ("end", Label::backup_offset(size))] {
        let mut b = vec![0u8; 4096];
        let r = dev
            .read_at(&mut b, off)
            .map_err(|e| e.to_string())
            .and_then(|_| Label::decode(&b));
        labels.push(match r {
            Ok(l) => {
                let v = LabelView {
                    copy: copy.into(),
                    offset: off,
                    valid: true,
                    error: None,
                    pool_name: Some(l.pool_name.clone()),
                    pool_uuid: Some(uuid::Uuid::from_bytes(l.pool_uuid).to_string()),
                    member_uuid: Some(uuid::Uuid::from_bytes(l.member_uuid).to_string()),
                    member_index: Some(l.member_index),
                    members: Some(l.member_count()),
                    level: Some(l.level.to_string()),
                    state: Some(format!("{:?}", l.state).to_lowercase()),
                    stripe_unit: Some(l.stripe_unit),
                    chunk_size: Some(l.chunk_size),
                    meta_offset: Some(l.meta_offset),
                    meta_blocks: Some(l.meta_blocks),
                    meta_copies: Some(l.meta_copies),
                    data_start: Some(l.data_start),
                    data_size: Some(l.data_size()),
                };
                good.get_or_insert(l);
                v
            }
            Err(e) => LabelView {
                copy: copy.into(),
                offset: off,
                valid: false,
                error: Some(e),
                pool_name: None,
                pool_uuid: None,
                member_uuid: None,
                member_index: None,
                members: None,
                level: None,
                state: None,
                stripe_unit: None,
                chunk_size: None,
                meta_offset: None,
                meta_blocks: None,
                meta_copies: None,
                data_start: None,
                data_size: None,
            },
        });
    }
    let mut sbs = Vec::new();
    if let Some(l) = good.as_ref().filter(|l| l.member_index < l.meta_copies) {
        for slot in 0..2u64 {
            let off = Superblock::slot_offset(l.meta_offset, slot);
            let mut b = vec![0u8; 4096];
            let r = dev
                .read_at(&mut b, off)
                .map_err(|e| e.to_string())
                .and_then(|_| Superblock::decode(&b).map_err(|e| e.to_string()));
            sbs.push(match r {
                Ok(s) => SuperblockView {
                    slot,
                    offset: off,
                    valid: true,
                    error: None,
                    transaction: Some(s.txid),
                    volumes_root: Some(s.volumes_root.index()),
                    data_refcount_root: Some(s.dsm_root.index()),
                    catalog_head: Some(s.catalog_head.index()),
                    data_chunks: Some(s.data_chunks),
                    used_chunks: Some(s.used_chunks),
                    used_meta_blocks: Some(s.used_meta_blocks),
                    member_states: Some(s.member_states.clone()),
                    time: Some(s.time),
                },
                Err(e) => SuperblockView {
                    slot,
                    offset: off,
                    valid: false,
                    error: Some(e),
                    transaction: None,
                    volumes_root: None,
                    data_refcount_root: None,
                    catalog_head: None,
                    data_chunks: None,
                    used_chunks: None,
                    used_meta_blocks: None,
                    member_states: None,
                    time: None,
                },
            });
        }
    }
    let view = InspectView {
        device: a.device.display().to_string(),
        size,
        labels,
        superblocks: sbs,
    };
    if a.json {
        return json(&view);
    }
    println!(
        "device {} ({} bytes, {})",
        view.device,
        size,
        format_size(size)
    );
    for l in &view.labels {
        match &l.error {
            Some(e) => println!("label at {} (offset {}): INVALID: {e}", l.copy, l.offset),
            None => {
                println!("label at {} (offset {}): valid", l.copy, l.offset);
                println!(
                    "  pool          {} ({})",
                    l.pool_name.clone().unwrap_or_default(),
                    l.pool_uuid.clone().unwrap_or_default()
                );
                println!(
                    "  member        {} of {} ({})",
                    l.member_index.unwrap_or(0),
                    l.members.unwrap_or(0),
                    l.member_uuid.clone().unwrap_or_default()
                );
                println!(
                    "  level         {} (stripe unit {}, chunk {})",
                    l.level.clone().unwrap_or_default(),
                    l.stripe_unit.unwrap_or(0),
                    l.chunk_size.unwrap_or(0)
                );
                println!("  state         {}", l.state.clone().unwrap_or_default());
                println!(
                    "  metadata      offset {}, {} blocks, {} copies",
                    l.meta_offset.unwrap_or(0),
                    l.meta_blocks.unwrap_or(0),
                    l.meta_copies.unwrap_or(0)
                );
                println!(
                    "  data          offset {}, {} bytes",
                    l.data_start.unwrap_or(0),
                    l.data_size.unwrap_or(0)
                );
            }
        }
    }
    if view.superblocks.is_empty() {
        println!("no metadata copy on this member");
    }
    let rows: Vec<Vec<String>> = view
        .superblocks
        .iter()
        .map(|s| match &s.error {
            Some(e) => vec![
                s.slot.to_string(),
                s.offset.to_string(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("INVALID: {e}"),
            ],
            None => vec![
                s.slot.to_string(),
                s.offset.to_string(),
                s.transaction.unwrap_or(0).to_string(),
                format!(
                    "{}/{}",
                    s.used_chunks.unwrap_or(0),
                    s.data_chunks.unwrap_or(0)
                ),
                s.used_meta_blocks.unwrap_or(0).to_string(),
                "valid".into(),
            ],
        })
        .collect();
    if !rows.is_empty() {
        table(
            &["SLOT", "OFFSET", "TXID", "CHUNKS", "METABLOCKS", "STATE"],
            &rows,
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct QuickstartArgs {
    /// Directory for the demo's image files and state.
    #[arg(long, default_value = "vpool-demo")]
    dir: PathBuf,
    /// TCP address the demo daemon serves NBD on.
    #[arg(long, default_value = "127.0.0.1:10809")]
    nbd_listen: String,
    /// Only create the demo pool; do not start the daemon.
    #[arg(long)]
    no_serve: bool,
}

pub fn quickstart(a: QuickstartArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let dir = absolute(&a.dir);
    let state_dir = dir.join("state");
    {
        let state = StateDir::open(&state_dir)?;
        let mut st = state.load()?;
        if !st.pools.contains_key("demo") {
            let mut paths = Vec::new();
            for i in 1..=3 {
                let p = dir.join(format!("d{i}.img"));
                let f = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&p)?;
                if f.metadata()?.len() == 0 {
                    f.set_len(1 << 30)?;
                }
                paths.push(p);
            }
            let devs: Vec<DeviceRef> = paths
                .iter()
                .map(|p| FileDevice::open(p).map(|d| Arc::new(d) as DeviceRef))
                .collect::<Result<_, _>>()?;
            let mut opts = CreateOptions::new(RaidLevel::Raid5);
            opts.force = true;
            let (pool, _) = Pool::create("demo", devs, &opts)?;
            pool.create_volume("vol1", 4 << 30)?;
            let v = pool.volume("vol1", None)?;
            v.write_at(b"hello from vpool\n", 0)?;
            pool.snapshot("vol1", "first")?;
            st.pools.insert(
                "demo".into(),
                KnownPool {
                    uuid: pool.uuid().to_string(),
                    members: paths,
                },
            );
            state.save(&st)?;
            println!(
                "created a demo pool 'demo' (raid5 over three 1G sparse image files in {})",
                dir.display()
            );
            println!("with a 4G thin volume demo/vol1 and a snapshot demo/vol1@first.\n");
        } else {
            println!("using the demo pool in {}\n", dir.display());
        }
    }
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or("vpool".into());
    let addr = &a.nbd_listen;
    let sock = state_dir.join("nbd.sock");
    println!("In another terminal (the clients: apt-get install qemu-utils libnbd-bin):");
    println!("  export VPOOL_STATE_DIR={}", state_dir.display());
    println!("  {exe} pool status demo");
    println!("  {exe} vol create demo/db --size 10G");
    println!("  qemu-img info nbd://{addr}/demo/vol1");
    println!("  qemu-io -f raw -c 'write -P 0xab 0 4M' -c 'read -P 0xab 0 4M' 'nbd+unix:///demo/db?socket={}'", sock.display());
    println!("  nbdinfo --list nbd://{addr}");
    println!("  nbdinfo --map nbd://{addr}/demo/db");
    println!("  mkdir -p /tmp/vpool-mnt && nbdfuse /tmp/vpool-mnt/db nbd://{addr}/demo/db &   # then: losetup -f --show /tmp/vpool-mnt/db");
    println!("  {exe} snap create demo/db@before");
    if a.no_serve {
        println!(
            "\nStart serving with: {exe} --state-dir {} daemon --nbd-listen {addr}",
            state_dir.display()
        );
        return Ok(());
    }
    println!("\nServing now (Ctrl-C stops the daemon cleanly)...\n");
    crate::cli::daemon_cmd::init_logging("info");
    let nbd_listen = addr
        .parse()
        .with_context(|| format!("--nbd-listen '{addr}' is not an address"))?;
    crate::daemon::run(crate::daemon::DaemonConfig {
        state_dir,
        nbd_listen: Some(nbd_listen),
        nbd_socket: Some(sock),
        metrics_listen: None,
        on_event: None,
        insecure: false,
        nbd_exports: None,
        tls: Default::default(),
        commit_interval: std::time::Duration::from_secs(5),
        fuse_mount: None,
        job_rate_limit: 0,
        docker: None,
        snapshotter: None,
    })
}
