//! `vpool snap send`, `vpool snap receive` and `vpool vol diff`. A stream
//! goes through this process in both directions: with a daemon, it is
//! relayed to and from the control API (and checked on the way, which
//! drives the progress bar); without one, the pool is worked on here.

use super::output::{json, table};
use super::{dispatch, report, Ctx};
use crate::control::client;
use crate::control::local::LocalEngine;
use crate::control::progress::Progress;
use crate::control::receive::ReceiveOpts;
use crate::control::send::{ChangedRange, SendSpec};
use crate::control::stream::Reader;
use crate::control::Request;
use crate::error::Error;
use crate::units::format_size;
use anyhow::{bail, Context};
use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SendArgs {
    /// POOL/VOLUME@SNAPSHOT (not needed with --resume).
    path: Option<String>,
    /// Send only what changed since this older snapshot of the volume
    /// (@SNAP): an incremental stream.
    #[arg(long, short = 'i')]
    from: Option<String>,
    /// Write the stream to this file instead of standard output.
    #[arg(long, short = 'o')]
    to: Option<PathBuf>,
    /// Send what an interrupted receive lacks (its token: `vpool snap
    /// receive POOL/VOL --token`).
    #[arg(long, short = 't')]
    resume: Option<String>,
    /// Print what was sent, on standard error.
    #[arg(long, short = 'v')]
    verbose: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReceiveArgs {
    /// POOL/VOLUME to receive into: a new volume for a full stream, the
    /// volume holding the base snapshot for an incremental.
    target: String,
    /// Read the stream from this file instead of standard input.
    #[arg(long, short = 'i')]
    from: Option<PathBuf>,
    /// The stream continues an interrupted receive (`snap send --resume`).
    #[arg(long)]
    resume: bool,
    /// Receive an incremental even though the target was written since
    /// its base snapshot (those writes are dropped).
    #[arg(long, short = 'F')]
    force: bool,
    /// Print the resume token of an interrupted receive, and exit.
    #[arg(long, conflicts_with_all = ["abort", "resume", "from"])]
    token: bool,
    /// Drop an interrupted receive's kept data, and exit.
    #[arg(long, conflicts_with_all = ["resume", "from"])]
    abort: bool,
}

#[derive(clap::Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot: POOL/VOLUME@SNAP.
    from: String,
    /// The newer snapshot: POOL/VOLUME@SNAP.
    to: String,
    #[arg(long)]
    json: bool,
}

/// Passes every byte read on to `out`.
struct Tee<'a> {
    input: &'a mut dyn Read,
    out: &'a mut dyn Write,
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.input.read(buf)?;
        self.out.write_all(&buf[..n])?;
        Ok(n)
    }
}

/// Copy a stream from `input` to `out`, checking every record and
/// showing progress.
fn relay(input: &mut dyn Read, out: &mut dyn Write, verb: &str) -> anyhow::Result<u64> {
    let mut r = Reader::begin(Tee { input, out })?;
    let h = r.header.clone();
    let mut bar = Progress::new(&format!("{verb} {}@{}", h.volume, h.snapshot), h.data_bytes);
    while r.next_record()?.is_some() {
        bar.set(r.data_bytes);
    }
    bar.finish();
    Ok(r.data_bytes)
}

pub fn send(ctx: &Ctx, a: SendArgs) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = match &a.to {
        Some(p) => Box::new(std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => {
            if std::io::stdout().is_terminal() {
                bail!(Error::Invalid(
                    "a stream is not written to a terminal: pipe it (`| vpool snap receive POOL/VOL`, `| ssh HOST vpool snap receive POOL/VOL`) or give --to FILE".into()
                ));
            }
            Box::new(std::io::BufWriter::with_capacity(
                1 << 20,
                std::io::stdout().lock(),
            ))
        }
    };
    let spec = SendSpec {
        path: a.path,
        from: a.from,
        resume: a.resume,
    };
    let summary = match client::call_streaming(
        &ctx.state_dir,
        "/v1/send",
        &serde_json::to_value(&spec)?,
        &mut |body| relay(body, &mut out, "sending").map(|_| ()),
    ) {
        Some(r) => r.map(|()| "sent".to_string()),
        None => {
            let engine = LocalEngine::for_stream(&ctx.state_dir)?;
            crate::control::send::send(&engine, &spec, &mut out)
        }
    }?;
    out.flush().context("writing the stream")?;
    if a.verbose {
        eprintln!("{summary}");
    }
    Ok(())
}

pub fn receive(ctx: &Ctx, a: ReceiveArgs) -> anyhow::Result<()> {
    if a.token {
        let r = dispatch(ctx, Request::ReceiveToken { target: a.target })?;
        println!("{}", r.message.unwrap_or_default());
        return Ok(());
    }
    if a.abort {
        report(&dispatch(ctx, Request::ReceiveAbort { target: a.target })?);
        return Ok(());
    }
    let mut input: Box<dyn Read> = match &a.from {
        Some(p) => Box::new(std::io::BufReader::with_capacity(
            1 << 20,
            File::open(p).with_context(|| format!("opening {}", p.display()))?,
        )),
        None => {
            if std::io::stdin().is_terminal() {
                bail!(Error::Invalid(
                    "the stream is read from standard input: pipe one in (`vpool snap send ... |`) or give --from FILE".into()
                ));
            }
            Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                std::io::stdin().lock(),
            ))
        }
    };
    let opts = ReceiveOpts {
        target: a.target,
        resume: a.resume,
        force: a.force,
    };
    // A daemon that refuses the stream closes the socket while it is
    // written: that must be an error to report, not a signal.
    // SAFETY: setting a signal's disposition; this process runs no
    // other thread that depends on it.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let path = format!(
        "/v1/receive?target={}&resume={}&force={}",
        crate::control::encode_component(&opts.target),
        opts.resume,
        opts.force
    );
    let resp = match client::call_upload(&ctx.state_dir, &path, &mut |w| {
        relay(&mut input, w, "receiving").map(|_| ())
    }) {
        Some(r) => r?,
        None => {
            let engine = LocalEngine::for_stream(&ctx.state_dir)?;
            crate::control::receive::receive(&engine, &opts, &mut input)?
        }
    };
    report(&resp);
    Ok(())
}

pub fn diff(ctx: &Ctx, a: DiffArgs) -> anyhow::Result<()> {
    let resp = dispatch(
        ctx,
        Request::VolDiff {
            from: a.from,
            to: a.to,
        },
    )?;
    if a.json {
        return json(&resp.data);
    }
    let ranges: Vec<ChangedRange> = serde_json::from_value(resp.data)?;
    let total: u64 = ranges.iter().map(|r| r.length).sum();
    let rows: Vec<Vec<String>> = ranges
        .iter()
        .map(|r| {
            vec![
                r.offset.to_string(),
                r.length.to_string(),
                format_size(r.length),
                r.change.clone(),
            ]
        })
        .collect();
    table(&["OFFSET", "LENGTH", "SIZE", "CHANGE"], &rows);
    eprintln!("{} ranges, {} changed", ranges.len(), format_size(total));
    Ok(())
}
