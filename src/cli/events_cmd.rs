//! `vpool events`, like `zpool events`: what the daemon saw change in the
//! pools (members failed or back, rebuilds, space and metadata filling,
//! checksum repairs, scrubs), oldest first; `--follow` waits for more.

use super::output::emit;
use super::{dispatch, Ctx};
use crate::control::events::Event;
use crate::control::Request;
use clap::Args;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct EventsArgs {
    /// Only this pool's events.
    pool: Option<String>,
    /// Keep printing events as they happen, until interrupted.
    #[arg(long, short = 'f')]
    follow: bool,
    /// One JSON object per event, a line each.
    #[arg(long)]
    json: bool,
}

/// How often `--follow` asks the daemon for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// `2026-12-03 06:20:01Z` for seconds since the epoch (UTC).
pub fn utc(secs: u64) -> String {
    crate::units::rfc3339(secs).replacen('T', " ", 1)
}

fn line(e: &Event, json: bool) -> anyhow::Result<String> {
    Ok(match json {
        true => serde_json::to_string(e)? + "\n",
        false => format!(
            "{}  {:<8} {:<24} {:<8} {}\n",
            utc(e.time),
            e.pool,
            e.class,
            e.severity,
            e.message
        ),
    })
}

pub fn run(ctx: &Ctx, a: EventsArgs) -> anyhow::Result<()> {
    let mut after = 0;
    loop {
        let resp = dispatch(
            ctx,
            Request::Events {
                after,
                pool: a.pool.clone(),
            },
        )?;
        let events: Vec<Event> = serde_json::from_value(resp.data)?;
        let mut out = String::new();
        for e in &events {
            out.push_str(&line(e, a.json)?);
            after = after.max(e.seq);
        }
        if !out.is_empty() && !emit(&out)? {
            return Ok(());
        }
        if !a.follow {
            return Ok(());
        }
        std::thread::sleep(FOLLOW_EVERY);
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn times_are_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00Z");
        assert_eq!(utc(1_796_274_001), "2026-12-03 05:00:01Z");
    }
}
