//! Helper threads for member calls that block and should overlap (the
//! members' flushes): started on demand and kept while idle, so a flush of
//! N members costs N-1 hand-offs instead of N-1 thread starts (about
//! 30 us each here, more than a flush of a file on tmpfs).

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::time::Duration;

type Job = Box<dyn FnOnce() + Send>;

/// At most this many helpers (the calls in flight beyond them queue).
const MAX_HELPERS: usize = 64;
/// A helper idle this long exits.
const IDLE: Duration = Duration::from_secs(30);

struct State {
    jobs: VecDeque<Job>,
    idle: usize,
    helpers: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    jobs: VecDeque::new(),
    idle: 0,
    helpers: 0,
});
static READY: Condvar = Condvar::new();

/// Run `job` on a helper thread. It runs on the caller's thread instead
/// when no helper is running and none can be started.
pub(crate) fn run(job: Job) {
    let mut st = STATE.lock();
    if st.idle > st.jobs.len() {
        st.jobs.push_back(job);
        READY.notify_one();
        return;
    }
    if st.helpers < MAX_HELPERS {
        let started = std::thread::Builder::new()
            .name("vpool-helper".into())
            .spawn(helper);
        if started.is_ok() {
            st.helpers += 1;
        }
    }
    if st.helpers == 0 {
        drop(st);
        job();
        return;
    }
    st.jobs.push_back(job);
    READY.notify_one();
}

fn helper() {
    let mut st = STATE.lock();
    loop {
        if let Some(job) = st.jobs.pop_front() {
            drop(st);
            // A job that panics is the caller's to notice (its reply
            // never comes); the helper goes on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
            st = STATE.lock();
            continue;
        }
        st.idle += 1;
        let timed_out = READY.wait_for(&mut st, IDLE).timed_out();
        st.idle -= 1;
        if timed_out && st.jobs.is_empty() {
            st.helpers -= 1;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn jobs_run_in_parallel_and_every_one_reports() {
        // Four jobs that each wait for all four to have started: they
        // finish only if they run at the same time.
        let n = 4;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(n));
        let (tx, rx) = mpsc::channel();
        for i in 0..n {
            let (b, tx) = (barrier.clone(), tx.clone());
            run(Box::new(move || {
                b.wait();
                let _ = tx.send(i);
            }));
        }
        drop(tx);
        let mut got: Vec<usize> = rx.iter().collect();
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3]);
    }

    #[test]
    fn a_job_that_panics_leaves_the_helpers_working() {
        run(Box::new(|| panic!("a member's flush panicked")));
        let (tx, rx) = mpsc::channel();
        run(Box::new(move || {
            let _ = tx.send(7);
        }));
        assert_eq!(rx.recv_timeout(Duration::from_secs(10)), Ok(7));
    }
}
