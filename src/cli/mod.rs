//! The `vpool` command line (the top layer: may use every layer below it):
//! clap definitions, dispatch and printing. Each
//! command becomes a [`Request`]: sent to the running daemon when there is
//! one, carried out directly on the devices otherwise.

pub mod daemon_cmd;
mod events_cmd;
mod iostat_cmd;
mod job_cmd;
pub mod output;
mod pool_cmd;
mod send_cmd;
mod tools_cmd;
mod vol_cmd;

use crate::control::{self, client, local::LocalEngine, Request, Response};
use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "vpool",
    version,
    about = "Pools of disks or image files as RAID, carved into thin volumes with snapshots"
)]
pub struct Cli {
    /// Where this host remembers its pools (and where the daemon's sockets live).
    #[arg(
        long,
        global = true,
        env = "VPOOL_STATE_DIR",
        default_value = "/var/lib/vpool"
    )]
    pub state_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create, list, inspect, move and destroy pools.
    #[command(subcommand)]
    Pool(pool_cmd::PoolCmd),
    /// Create, copy in and out, clone, resize and remove volumes.
    #[command(subcommand, alias = "volume")]
    Vol(vol_cmd::VolCmd),
    /// Create, list and remove snapshots.
    #[command(subcommand, alias = "snapshot")]
    Snap(vol_cmd::SnapCmd),
    /// Follow, pause and resume background jobs (reshape, resync).
    #[command(subcommand)]
    Job(job_cmd::JobCmd),
    /// Mount every volume as a file under DIR (needs the running daemon).
    Mount { dir: PathBuf },
    /// What the running daemon saw happen to the pools: members failed or
    /// back, rebuilds, space and metadata filling, checksum repairs,
    /// scrubs (as `zpool events`). `--follow` keeps printing.
    Events(events_cmd::EventsArgs),
    /// Undo `vpool mount`.
    #[command(alias = "unmount")]
    Umount,
    /// Check a pool's metadata offline: every checksum, every reference count, leaks.
    Check(tools_cmd::CheckArgs),
    /// Dump a member's labels and superblocks.
    Inspect(tools_cmd::InspectArgs),
    /// Run the daemon: owns the pools, serves volumes over NBD, answers the control API.
    Daemon(Box<daemon_cmd::DaemonArgs>),
    /// Make a demo pool from image files in a new directory and serve it.
    Quickstart(tools_cmd::QuickstartArgs),
    /// Print a shell completion script (bash, zsh, fish) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Write man pages for vpool and every subcommand into DIR.
    Manpages { dir: PathBuf },
}

impl Cli {
    /// Does this command serve clients (the daemon, the demo)?
    pub fn serves(&self) -> bool {
        matches!(self.command, Command::Daemon(_) | Command::Quickstart(_))
    }
}

pub struct Ctx {
    pub state_dir: PathBuf,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let ctx = Ctx {
        state_dir: cli.state_dir,
    };
    match cli.command {
        Command::Pool(c) => pool_cmd::run(&ctx, c),
        Command::Vol(c) => vol_cmd::run(&ctx, c),
        Command::Snap(c) => vol_cmd::run_snap(&ctx, c),
        Command::Job(c) => job_cmd::run(&ctx, c),
        Command::Mount { dir } => {
            let dir = absolute(&dir);
            report(&dispatch(&ctx, Request::Mount { dir })?);
            Ok(())
        }
        Command::Events(a) => events_cmd::run(&ctx, a),
        Command::Umount => {
            report(&dispatch(&ctx, Request::Unmount)?);
            Ok(())
        }
        Command::Check(a) => tools_cmd::check(&ctx, a),
        Command::Inspect(a) => tools_cmd::inspect(a),
        Command::Daemon(a) => daemon_cmd::run(&ctx, *a),
        Command::Quickstart(a) => tools_cmd::quickstart(a),
        Command::Completions { shell } => {
            // Into memory first: the generator panics on a write error
            // (a closed pipe), which is the reader's business.
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "vpool", &mut script);
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            Ok(())
        }
        Command::Manpages { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            Ok(())
        }
    }
}

/// Carry out a request: through the daemon if one runs for this state
/// directory, else directly on the devices.
pub fn dispatch(ctx: &Ctx, req: Request) -> anyhow::Result<Response> {
    if let Some(answer) = client::call(&ctx.state_dir, &req) {
        return answer;
    }
    let engine = LocalEngine::new(&ctx.state_dir)?;
    control::execute(&engine, req)
}

/// Print a mutating command's outcome.
pub fn report(resp: &Response) {
    for w in &resp.warnings {
        eprintln!("WARNING: {w}");
    }
    if let Some(m) = &resp.message {
        println!("{m}");
    }
}

pub use crate::state::absolute;

/// Advice printed under an error, by kind.
pub fn hint(err: &anyhow::Error) -> Option<String> {
    if err
        .chain()
        .any(|c| c.downcast_ref::<client::DaemonError>().is_some())
    {
        return None; // the daemon's message carries its own hint
    }
    err.chain()
        .any(|c| c.downcast_ref::<crate::Error>().is_some())
        .then(|| control::hint_for(control::error_kind(err)))
        .flatten()
}
