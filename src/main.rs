//! The `vpool` binary: parse, run, and turn errors into a message, a hint
//! and a non-zero exit code.

use clap::Parser;
use vpool::cli::{hint, run, Cli};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("vpool: error: {e:#}");
        if let Some(h) = hint(&e) {
            eprintln!("hint: {h}");
        }
        std::process::exit(1);
    }
}
