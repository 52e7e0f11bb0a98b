//! `vpool vol ...` and `vpool snap ...`

use super::output::{json, table};
use super::pool_cmd::{parse_size_arg, JsonArg};
use super::{absolute, dispatch, report, Ctx};
use crate::control::Request;
use crate::pool::names::VolPath;
use crate::pool::VolumeInfo;
use crate::units::format_size;
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum VolCmd {
    /// Create a thin volume: no space is used until written.
    Create {
        /// POOL/VOLUME
        path: String,
        /// Virtual size, e.g. 10G (binary units).
        #[arg(long, short = 's', value_parser = parse_size_arg)]
        size: u64,
    },
    /// List volumes (all pools, or one).
    List {
        pool: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Copy a raw image into a volume; zero blocks stay unallocated.
    Import {
        /// POOL/VOLUME
        path: String,
        #[arg(long)]
        from: PathBuf,
        /// Where in the volume to start writing.
        #[arg(long, default_value = "0", value_parser = parse_size_arg)]
        offset: u64,
    },
    /// Copy a volume or snapshot out to a sparse raw image.
    Export {
        /// POOL/VOLUME[@SNAPSHOT]
        path: String,
        #[arg(long)]
        to: PathBuf,
        /// Overwrite the file if it exists.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Writable volume sharing every chunk of a snapshot (instant).
    Clone {
        /// POOL/VOLUME@SNAPSHOT
        source: String,
        /// POOL/NEWVOLUME
        target: String,
    },
    /// Return a volume to a snapshot's contents and size (other snapshots stay).
    Rollback {
        /// POOL/VOLUME@SNAPSHOT
        path: String,
    },
    /// Grow or shrink a volume: SIZE, +SIZE or -SIZE.
    Resize {
        /// POOL/VOLUME
        path: String,
        /// New size: SIZE, +SIZE or -SIZE (binary units: 20G, +10G).
        #[arg(long, short = 's', allow_hyphen_values = true)]
        size: String,
        /// Allow a shrink that discards written data or is under a mounted filesystem.
        #[arg(long, short = 'f')]
        force: bool,
        /// After a grow, also grow the filesystem on a loop device over the
        /// volume's FUSE file (losetup -c, then resize2fs or xfs_growfs).
        #[arg(long)]
        resize_fs: bool,
    },
    /// Remove a volume; its space returns to the pool.
    #[command(alias = "rm")]
    Remove {
        /// POOL/VOLUME
        path: String,
        /// Also remove its snapshots.
        #[arg(long, short = 'r')]
        recursive: bool,
    },
    /// The byte ranges that differ between two snapshots of a volume (for
    /// backup tools); reads only what changed.
    Diff(super::send_cmd::DiffArgs),
}

#[derive(Subcommand, Debug)]
pub enum SnapCmd {
    /// Take a read-only, point-in-time snapshot (instant, shares all chunks).
    Create {
        /// POOL/VOLUME@SNAPSHOT
        path: String,
    },
    /// List snapshots (all, of a pool, or of POOL/VOLUME).
    List {
        filter: Option<String>,
        #[command(flatten)]
        json: JsonArg,
    },
    /// Remove a snapshot; chunks no one else uses are freed.
    #[command(alias = "rm")]
    Remove {
        /// POOL/VOLUME@SNAPSHOT
        path: String,
    },
    /// Write a snapshot (or, with --from, what changed since an older
    /// one) as a stream, for `snap receive` here or on another host.
    Send(super::send_cmd::SendArgs),
    /// Read a stream from `snap send` into a volume, ending with the same
    /// snapshot.
    Receive(super::send_cmd::ReceiveArgs),
}

pub fn run(ctx: &Ctx, cmd: VolCmd) -> anyhow::Result<()> {
    let req = match cmd {
        VolCmd::Create { path, size } => Request::VolCreate { path, size },
        VolCmd::List { pool, json: j } => return list(ctx, Request::VolList { pool }, j.json),
        VolCmd::Import { path, from, offset } => Request::VolImport {
            path,
            from: absolute(&from),
            offset,
        },
        VolCmd::Export { path, to, force } => Request::VolExport {
            path,
            to: absolute(&to),
            force,
        },
        VolCmd::Clone { source, target } => Request::VolClone { source, target },
        VolCmd::Rollback { path } => Request::VolRollback { path },
        VolCmd::Resize {
            path,
            size,
            force,
            resize_fs,
        } => Request::VolResize {
            path,
            size,
            force,
            resize_fs,
        },
        VolCmd::Remove { path, recursive } => Request::VolRemove { path, recursive },
        VolCmd::Diff(a) => return super::send_cmd::diff(ctx, a),
    };
    report(&dispatch(ctx, req)?);
    Ok(())
}

pub fn run_snap(ctx: &Ctx, cmd: SnapCmd) -> anyhow::Result<()> {
    let req = match cmd {
        SnapCmd::Create { path } => Request::SnapCreate { path },
        SnapCmd::Remove { path } => Request::SnapRemove { path },
        SnapCmd::Send(a) => return super::send_cmd::send(ctx, a),
        SnapCmd::Receive(a) => return super::send_cmd::receive(ctx, a),
        SnapCmd::List { filter, json: j } => {
            let (pool, volume) = match filter.as_deref() {
                Some(f) if f.contains('/') => {
                    let p = VolPath::parse_volume(f)?;
                    (Some(p.pool), Some(p.volume))
                }
                Some(f) => (Some(f.to_string()), None),
                None => (None, None),
            };
            return list(ctx, Request::SnapList { pool, volume }, j.json);
        }
    };
    report(&dispatch(ctx, req)?);
    Ok(())
}

fn list(ctx: &Ctx, req: Request, as_json: bool) -> anyhow::Result<()> {
    let resp = dispatch(ctx, req)?;
    if as_json {
        return json(&resp.data);
    }
    let rows: Vec<VolumeInfo> = serde_json::from_value(resp.data)?;
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|v| {
            vec![
                v.name.clone(),
                format_size(v.size),
                format_size(v.mapped),
                v.origin.clone().unwrap_or("-".into()),
            ]
        })
        .collect();
    table(&["NAME", "SIZE", "MAPPED", "ORIGIN"], &body);
    Ok(())
}
