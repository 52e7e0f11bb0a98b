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
    // Days to a civil date (Howard Hinnant's algorithm).
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
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
