//! The `vpool` binary: parse, run, and turn errors into a message, a hint
//! and a non-zero exit code.

use clap::Parser;
use vpool::cli::{hint, run, Cli};

fn main() {
    let cli = Cli::parse();
    if !cli.serves() {
        // A command's output piped into `head` ends it quietly, as for
        // other Unix tools (Rust ignores SIGPIPE, and printing would
        // panic). Not for the daemon: a client gone must not stop it.
        // SAFETY: setting a signal's disposition, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Err(e) = run(cli) {
        eprintln!("vpool: error: {e:#}");
        if let Some(h) = hint(&e) {
            eprintln!("hint: {h}");
        }
        std::process::exit(1);
    }
}
