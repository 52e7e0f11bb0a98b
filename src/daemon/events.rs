//! The daemon's event log: every second it compares each pool's state with
//! the last one it saw (`control::events::changes`) and records what changed,
//! keeping the last [`KEEP`] events in memory (as `zpool events` keeps the
//! kernel's), for `GET /v1/events` and `vpool events`. With `--on-event
//! COMMAND`, a thread runs `sh -c COMMAND` for each event, in order, with
//! the event in `VPOOL_EVENT_*` variables (as zed's zedlets get `ZEVENT_*`),
//! one at a time, each stopped (by PID) after [`HOOK_LIMIT`].

use crate::control::events::{changes, Change, Event};
use crate::pool::{Pool, PoolInfo};
use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Events kept in memory.
pub const KEEP: usize = 10_000;
/// Events waiting for the hook; past this, new ones skip it (logged).
const HOOK_QUEUE: usize = 1_000;
/// How long one run of the hook may take.
pub const HOOK_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct EventLog {
    ring: Mutex<VecDeque<Event>>,
    next: Mutex<u64>,
    seen: Mutex<HashMap<String, PoolInfo>>,
    hook: Mutex<Option<mpsc::SyncSender<Event>>>,
}

impl EventLog {
    /// Run `command` for every event from now on.
    pub fn start_hook(&self, command: String) -> std::io::Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Event>(HOOK_QUEUE);
        std::thread::Builder::new()
            .name("on-event".into())
            .spawn(move || {
                for e in rx {
                    run_hook(&command, &e);
                }
            })?;
        *self.hook.lock() = Some(tx);
        Ok(())
    }

    /// Look at every pool and record what changed since the last look.
    pub fn watch(&self, pools: &[(String, Pool)]) {
        let mut seen = self.seen.lock();
        for (name, pool) in pools {
            let now = pool.info();
            for c in changes(seen.get(name), &now) {
                self.record(name, c);
            }
            seen.insert(name.clone(), now);
        }
        // Pools no longer served (exported, destroyed) are forgotten.
        seen.retain(|n, _| pools.iter().any(|(p, _)| p == n));
    }

    pub fn record(&self, pool: &str, (class, severity, message): Change) {
        let seq = {
            let mut n = self.next.lock();
            *n += 1;
            *n
        };
        let e = Event {
            seq,
            time: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            pool: pool.to_string(),
            class: class.to_string(),
            severity: severity.to_string(),
            message,
        };
        match e.severity.as_str() {
            "error" => tracing::error!(pool, class, "{}", e.message),
            "warning" => tracing::warn!(pool, class, "{}", e.message),
            _ => tracing::info!(pool, class, "{}", e.message),
        }
        if let Some(tx) = self.hook.lock().as_ref() {
            if tx.try_send(e.clone()).is_err() {
                tracing::warn!("--on-event is {HOOK_QUEUE} events behind: event {seq} skips it");
            }
        }
        let mut ring = self.ring.lock();
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(e);
    }

    /// The events after `after`, of `pool` or every pool, oldest first.
    pub fn after(&self, after: u64, pool: Option<&str>) -> Vec<Event> {
        (self.ring.lock().iter())
            .filter(|e| e.seq > after && pool.is_none_or(|p| e.pool == p))
            .cloned()
            .collect()
    }
}

/// Run the hook for `e`, stopping it (by PID) past [`HOOK_LIMIT`].
fn run_hook(command: &str, e: &Event) {
    let json = serde_json::to_string(e).unwrap_or_default();
    let child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("VPOOL_EVENT_SEQ", e.seq.to_string())
        .env("VPOOL_EVENT_TIME", e.time.to_string())
        .env("VPOOL_EVENT_POOL", &e.pool)
        .env("VPOOL_EVENT_CLASS", &e.class)
        .env("VPOOL_EVENT_SEVERITY", &e.severity)
        .env("VPOOL_EVENT_MESSAGE", &e.message)
        .env("VPOOL_EVENT_JSON", json)
        .stdin(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(err) => {
            tracing::warn!("--on-event: cannot run sh: {err}");
            return;
        }
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) if !status.success() => {
                tracing::warn!(
                    "--on-event for event {} ({}) exited with {status}",
                    e.seq,
                    e.class
                );
                return;
            }
            Ok(Some(_)) => return,
            Ok(None) if start.elapsed() > HOOK_LIMIT => {
                tracing::warn!(
                    "--on-event for event {} ran past {}s: stopped",
                    e.seq,
                    HOOK_LIMIT.as_secs()
                );
                let _ = child.kill();
                let _ = child.wait();
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(err) => {
                tracing::warn!("--on-event: {err}");
                return;
            }
        }
    }
}
