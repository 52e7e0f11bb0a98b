//! `vpool pool ...`

use super::output::{json, table};
use super::{absolute, dispatch, report, Ctx};
use crate::control::{Importable, PoolRow, Request};
use crate::pool::PoolInfo;
use crate::raid::RaidLevel;
use crate::units::format_size;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Create a pool from block devices or image files.
    Create {
        name: String,
        /// linear, raid0, raid1 (N-way mirror) or raid5.
        #[arg(long, short = 'r')]
        raid: RaidLevel,
        /// Per-member stripe unit (power of two, e.g. 64K).
        #[arg(long, default_value = "64K", value_parser = parse_size_arg)]
        stripe_unit: u64,
        /// Overwrite devices that belong to another pool.
        #[arg(long, short = 'f')]
        force: bool,
        /// Keep a CRC32 of every 4 KiB data block, verified on every read
        /// and by `pool scrub` (on or off; cannot be changed later).
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        checksums: String,
        /// Metadata area per copy (e.g. 256M; at least 1M; the flush log
        /// takes what it holds beyond 4M, up to 2M). Default: sized for the
        /// pool's chunks, their checksums and room for snapshots, plus the
        /// largest flush log.
        #[arg(long, value_parser = parse_size_arg)]
        metadata_size: Option<u64>,
        /// Block devices, image files, or Ceph RBD images named
        /// rbd:POOL/IMAGE[:id=CLIENT][:conf=FILE] (librbd1 needed).
        #[arg(required = true)]
        devices: Vec<PathBuf>,
    },
    /// One line per pool.
    List(JsonArg),
    /// Members, space and health of a pool.
    Status {
        name: String,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Add members online: linear pools grow at once; raid1 gains a mirror
    /// (resynced), raid0/raid5 are restriped onto the new member, in the
    /// background with a running daemon.
    Add {
        name: String,
        #[arg(required = true)]
        devices: Vec<PathBuf>,
        /// Overwrite a device that carries another pool's label.
        #[arg(long, short = 'f')]
        force: bool,
        /// With a daemon: follow the data movement until it completes.
        #[arg(long, short = 'w')]
        wait: bool,
        /// Add as hot spares (raid1, raid5): used when a member fails.
        #[arg(long)]
        spare: bool,
    },
    /// Remove a member online: its data moves to the other members first
    /// (linear, raid0: like pvmove + vgreduce; raid1: drops a mirror).
    Remove {
        name: String,
        device: PathBuf,
        /// With a daemon: follow the data movement until it completes.
        #[arg(long, short = 'w')]
        wait: bool,
    },
    /// Mark a member failed (as `mdadm --fail`), e.g. before pulling its
    /// disk: the pool runs degraded without it (raid1, raid5).
    Fail {
        name: String,
        /// The member: its device path, index (as in `pool status`) or uuid.
        member: String,
    },
    /// Set pool properties: `metadata-size=SIZE` grows the metadata area
    /// online to SIZE per copy, taking space from the data area (it also
    /// grows on its own past 80% use).
    Set {
        name: String,
        /// PROPERTY=VALUE: metadata-size=SIZE (e.g. 1G), metadata-autogrow=on|off.
        #[arg(required = true)]
        properties: Vec<String>,
    },
    /// Operations, bandwidth and latency per second, per pool, member
    /// (-v) and volume (--volumes), from the daemon's counters: like
    /// `zpool iostat`.
    Iostat(super::iostat_cmd::IostatArgs),
    /// Read every block in use from every copy, check it against its
    /// checksum (and raid5 parity against the data), and rewrite bad copies
    /// from good ones. Volumes stay online.
    Scrub {
        name: String,
        /// Count what is wrong, change nothing.
        #[arg(long)]
        check_only: bool,
    },
    /// Rebuild a member onto a new device, online (raid1, raid5). A member
    /// still in service is failed first.
    Replace {
        name: String,
        /// The member: its device path, index (as in `pool status`) or uuid.
        member: String,
        /// The new device.
        device: PathBuf,
        /// Overwrite a device that carries another pool's label.
        #[arg(long, short = 'f')]
        force: bool,
        /// With a daemon: follow the rebuild until it completes.
        #[arg(long, short = 'w')]
        wait: bool,
    },
    /// Reset error counters (of one member, or all). A failed member whose
    /// device is attached is rebuilt in place, as after a transient fault.
    Clear {
        name: String,
        /// The member: its device path, index or uuid (default: all).
        member: Option<String>,
        /// With a daemon: follow a rebuild until it completes.
        #[arg(long, short = 'w')]
        wait: bool,
    },
    /// Close a pool and mark its members exported, ready to move.
    Export { name: String },
    /// Find pools on devices by their labels; with NAME (or UUID), import it.
    Import {
        /// Pool name or UUID to import; without it, list what can be imported.
        name: Option<String>,
        /// Directory whose files (or device nodes) to scan; repeatable.
        #[arg(long, short = 's')]
        scan: Vec<PathBuf>,
        /// Devices to scan (paths, or rbd:POOL/IMAGE names); repeatable.
        #[arg(long = "device", short = 'd')]
        devices: Vec<PathBuf>,
        /// Import a pool that was not exported (it may be in use elsewhere).
        /// RBD members still locked by another host are taken after that
        /// host is fenced (its client blocklisted).
        #[arg(long, short = 'f')]
        force: bool,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Destroy a pool: its labels are erased, its data is lost.
    Destroy {
        name: String,
        /// Also when it still holds volumes.
        #[arg(long, short = 'f')]
        force: bool,
    },
}

#[derive(Args, Debug, Clone, Copy)]
pub struct JsonArg {
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_size_arg(s: &str) -> Result<u64, String> {
    crate::units::parse_size(s)
}

fn abs_all(v: &[PathBuf]) -> Vec<PathBuf> {
    v.iter().map(|p| absolute(p)).collect()
}

pub fn run(ctx: &Ctx, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Create {
            name,
            raid,
            stripe_unit,
            force,
            checksums,
            metadata_size,
            devices,
        } => {
            let req = Request::PoolCreate {
                name,
                raid,
                devices: abs_all(&devices),
                stripe_unit,
                force,
                checksums: checksums == "on",
                metadata_size,
            };
            report(&dispatch(ctx, req)?);
        }
        PoolCmd::List(j) => {
            let resp = dispatch(ctx, Request::PoolList)?;
            if j.json {
                return json(&resp.data);
            }
            let rows: Vec<PoolRow> = serde_json::from_value(resp.data)?;
            let body: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.name.clone(),
                        r.level.clone().unwrap_or("-".into()),
                        format_size(r.size),
                        format_size(r.allocated),
                        format_size(r.free),
                        format_size(r.virtual_bytes),
                        r.health.to_uppercase(),
                    ]
                })
                .collect();
            table(
                &[
                    "NAME", "LEVEL", "SIZE", "ALLOC", "FREE", "VIRTUAL", "HEALTH",
                ],
                &body,
            );
            for r in rows.iter().filter(|r| r.error.is_some()) {
                eprintln!("{}: {}", r.name, r.error.clone().unwrap_or_default());
            }
        }
        PoolCmd::Status { name, json: j } => {
            let resp = dispatch(ctx, Request::PoolStatus { name })?;
            if j.json {
                return json(&resp.data);
            }
            print_status(&serde_json::from_value(resp.data)?);
        }
        PoolCmd::Add {
            name,
            devices,
            force,
            wait,
            spare,
        } => {
            let req = Request::PoolAdd {
                name: name.clone(),
                devices: abs_all(&devices),
                force,
                spare,
            };
            report(&dispatch(ctx, req)?);
            if wait {
                super::job_cmd::wait(ctx, &name)?;
            }
        }
        PoolCmd::Remove { name, device, wait } => {
            let req = Request::PoolRemove {
                name: name.clone(),
                device: crate::state::absolute(&device),
            };
            report(&dispatch(ctx, req)?);
            if wait {
                super::job_cmd::wait(ctx, &name)?;
            }
        }
        PoolCmd::Set { name, properties } => {
            let (mut metadata_size, mut metadata_autogrow) = (None, None);
            for p in &properties {
                match p.split_once('=') {
                    Some(("metadata-size", v)) => {
                        metadata_size = Some(parse_size_arg(v).map_err(anyhow::Error::msg)?)
                    }
                    Some(("metadata-autogrow", "on")) => metadata_autogrow = Some(true),
                    Some(("metadata-autogrow", "off")) => metadata_autogrow = Some(false),
                    _ => anyhow::bail!(
                        "unknown property '{p}': pool properties are metadata-size=SIZE and metadata-autogrow=on|off"
                    ),
                }
            }
            report(&dispatch(
                ctx,
                Request::PoolSet {
                    name,
                    metadata_size,
                    metadata_autogrow,
                },
            )?);
        }
        PoolCmd::Iostat(a) => return super::iostat_cmd::run(ctx, a),
        PoolCmd::Scrub { name, check_only } => {
            report(&dispatch(ctx, Request::PoolScrub { name, check_only })?);
        }
        PoolCmd::Fail { name, member } => {
            let req = Request::PoolFail {
                name,
                member: member_spec(&member),
            };
            report(&dispatch(ctx, req)?);
        }
        PoolCmd::Replace {
            name,
            member,
            device,
            force,
            wait,
        } => {
            let req = Request::PoolReplace {
                name: name.clone(),
                member: member_spec(&member),
                device: crate::state::absolute(&device),
                force,
            };
            report(&dispatch(ctx, req)?);
            if wait {
                super::job_cmd::wait(ctx, &name)?;
            }
        }
        PoolCmd::Clear { name, member, wait } => {
            let req = Request::PoolClear {
                name: name.clone(),
                member: member.as_deref().map(member_spec),
            };
            report(&dispatch(ctx, req)?);
            if wait {
                super::job_cmd::wait(ctx, &name)?;
            }
        }
        PoolCmd::Export { name } => report(&dispatch(ctx, Request::PoolExport { name })?),
        PoolCmd::Import {
            name,
            scan,
            devices,
            force,
            json: j,
        } => {
            let listing = name.is_none();
            let resp = dispatch(
                ctx,
                Request::PoolImport {
                    name,
                    scan: abs_all(&scan),
                    devices: abs_all(&devices),
                    force,
                },
            )?;
            if !listing {
                report(&resp);
                return Ok(());
            }
            if j.json {
                return json(&resp.data);
            }
            let found: Vec<Importable> = serde_json::from_value(resp.data)?;
            if found.is_empty() {
                println!("no pools found");
                return Ok(());
            }
            let rows: Vec<Vec<String>> = found
                .iter()
                .map(|f| {
                    vec![
                        f.name.clone(),
                        f.uuid.clone(),
                        f.level.clone(),
                        f.state.clone(),
                        format!("{}/{}", f.members_found, f.members_total),
                    ]
                })
                .collect();
            table(&["NAME", "UUID", "LEVEL", "STATE", "MEMBERS"], &rows);
        }
        PoolCmd::Destroy { name, force } => {
            report(&dispatch(ctx, Request::PoolDestroy { name, force })?)
        }
    }
    Ok(())
}

/// A member named by index or uuid goes as is; a path is made absolute.
fn member_spec(s: &str) -> String {
    if s.parse::<usize>().is_ok() || uuid::Uuid::parse_str(s).is_ok() {
        s.to_string()
    } else {
        crate::state::absolute(std::path::Path::new(s))
            .display()
            .to_string()
    }
}

fn print_status(i: &PoolInfo) {
    println!("  pool: {}", i.name);
    println!("  uuid: {}", i.uuid);
    println!(" state: {}", i.health.to_uppercase());
    match i.health.as_str() {
        "failed" => {
            println!(
                "status: FAILED: {}",
                i.failure
                    .as_deref()
                    .unwrap_or("a member failed with no redundancy left")
            );
            println!("        Writes, flushes and commits are refused; reads are served where they can be.");
            println!(
                "action: fix or replace the device, then `vpool pool clear {}` (it reloads the pool",
                i.name
            );
            println!(
                "        from its last commit; what was not committed is dropped), or restart."
            );
        }
        "degraded" => {
            println!(
                "status: DEGRADED: one or more members are missing, failed or rebuilding. Data is"
            );
            println!("        served from redundancy; a second failure would lose data.");
            println!(
                "action: reattach the member, or `vpool pool replace {} MEMBER NEW-DEVICE`.",
                i.name
            );
        }
        _ => {}
    }
    for e in &i.events {
        println!(" event: {e}");
    }
    for s in &i.spares {
        println!(" spare: {s} (available)");
    }
    println!(
        "  raid: {} (stripe unit {}, chunk {})",
        i.level,
        format_size(i.stripe_unit),
        format_size(i.chunk_size)
    );
    println!(
        " space: {} allocated of {} ({:.1}%), {} free; volumes total {} virtual{}",
        format_size(i.allocated),
        format_size(i.capacity),
        100.0 * i.allocated as f64 / i.capacity.max(1) as f64,
        format_size(i.free),
        format_size(i.virtual_bytes),
        if i.virtual_bytes > i.capacity {
            " (overprovisioned)"
        } else {
            ""
        }
    );
    if i.flushes > 0 || i.metadata_log > 0 {
        println!(
            "  flush: {} flushes since open, {} through the {} flush log ({} rounds), {} by a commit{}",
            i.flushes,
            i.flushes - i.flush_commits.min(i.flushes),
            format_size(i.metadata_log),
            i.flush_log_rounds,
            i.flush_commits,
            if i.journaled_blocks > 0 {
                format!("; {} journaled", format_size(i.journaled_blocks * 4096))
            } else {
                String::new()
            }
        );
    }
    if i.writes_in_place + i.writes_afresh_log_full > 0 {
        println!(
            "  overwrites: {} in place after {} intent rounds ({} named ahead), {} afresh while the log was full",
            i.writes_in_place, i.intent_rounds, i.writes_named_ahead, i.writes_afresh_log_full
        );
    }
    if i.room_waits > 0 {
        println!(
            "  commits: {} since open; writes waited {} times for one to make metadata room (a larger area waits less: `vpool pool set {} metadata-size={}`)",
            i.commits,
            i.room_waits,
            i.name,
            format_size((i.metadata_total * 2).div_ceil(1 << 20) << 20)
        );
    }
    println!(
        "  meta: {} of {} used ({}%), {} kept for removals{}; transaction {}, {} copies repaired{}",
        format_size(i.metadata_used),
        format_size(i.metadata_total),
        i.metadata_used * 100 / i.metadata_total.max(1),
        format_size(i.metadata_reserved),
        if i.metadata_extents > 0 {
            format!(
                ", {} grown online in {} steps",
                format_size(i.metadata_grown),
                i.metadata_extents
            )
        } else {
            String::new()
        },
        i.transaction,
        i.metadata_repairs,
        if i.releasing > 0 {
            format!("; releasing {} removed volumes", i.releasing)
        } else {
            String::new()
        }
    );
    println!("  vols: {} volumes, {} snapshots", i.volumes, i.snapshots);
    if let Some(j) = &i.job {
        println!("   job: {}", super::job_cmd::describe(j));
    }
    println!(
        " check: {}",
        if i.checksums {
            "data checksums on (CRC32 per 4 KiB block)"
        } else {
            "no data checksums (pool created with --checksums off or by an older vpool)"
        }
    );
    if let Some(s) = &i.scrub {
        let r = &s.report;
        let what = if s.check_only {
            "check-only scrub"
        } else {
            "scrub"
        };
        match s.state.as_str() {
            "running" => println!(
                " scrub: {what} running, {:.1}% ({} of {} chunks), {}/s",
                s.percent,
                s.done_chunks,
                s.total_chunks,
                format_size(s.rate)
            ),
            state => println!(
                " scrub: {what} {state} after {:.1}s: {} checked, {} blocks with a bad copy, {} repaired, {} unrecoverable, {} parity errors{}",
                s.seconds,
                format_size(r.bytes),
                r.bad_blocks,
                r.repaired,
                r.unrecoverable,
                r.parity_errors,
                s.error.as_deref().map(|e| format!(": {e}")).unwrap_or_default()
            ),
        }
    }
    for w in &i.warnings {
        println!("  note: {w}");
    }
    let direct: Vec<&str> = (i.members.iter())
        .filter(|m| m.direct_io)
        .filter_map(|m| m.device.as_deref())
        .collect();
    if !direct.is_empty() {
        println!(" direct I/O (O_DIRECT): {}", direct.join(", "));
    }
    println!();
    let rows: Vec<Vec<String>> = i
        .members
        .iter()
        .map(|m| {
            vec![
                m.index.to_string(),
                match (&m.device, &m.replacing) {
                    (Some(d), Some(old)) => format!("{d} (replacing {old})"),
                    (d, _) => d.clone().unwrap_or("-".into()),
                },
                m.state.to_uppercase(),
                m.errors.read.to_string(),
                m.errors.write.to_string(),
                m.errors.checksum.to_string(),
                format_size(m.data_bytes),
                m.uuid.clone(),
            ]
        })
        .collect();
    table(
        &[
            "MEMBER", "DEVICE", "STATE", "READ", "WRITE", "CKSUM", "DATA", "UUID",
        ],
        &rows,
    );
}
