//! Progress of a long job on the terminal: a bar on a terminal, a line per
//! 10% otherwise. Used by the CLI and by control operations run in process.
//! Uses nothing of vpool's.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;

/// Progress over a byte count: a bar on a terminal, a line per 10% otherwise.
pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    what: String,
    last_decile: u64,
}

impl Progress {
    pub fn new(what: &str, total: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            b.set_message(what.to_string());
            b
        });
        Progress {
            bar,
            total,
            what: what.to_string(),
            last_decile: 0,
        }
    }

    pub fn set(&mut self, done: u64) {
        match &self.bar {
            Some(b) => b.set_position(done),
            None => {
                let decile = (done * 10).checked_div(self.total).unwrap_or(10);
                if decile > self.last_decile {
                    self.last_decile = decile;
                    eprintln!("{}: {}%", self.what, decile * 10);
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
