//! Locks that catch their own misuse (layer 0: uses nothing of ours).
//!
//! [`RwLock`] is parking_lot's reader-writer lock, which is fair: once a
//! writer waits, new readers wait behind it. So a thread that reads a lock
//! it already reads deadlocks as soon as a writer arrives in between, and
//! only then: a race that tests rarely hit and a loaded host eventually
//! does. In debug builds (every test run) this wrapper remembers which
//! locks each thread holds and panics on the second acquisition, whatever
//! the timing; release builds compile to the plain lock.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, Ordering};

#[cfg(debug_assertions)]
mod held {
    use std::cell::RefCell;

    thread_local! {
        /// Addresses of the checked locks this thread holds.
        static HELD: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
    }

    pub fn take(addr: usize, what: &str) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            assert!(
                !h.contains(&addr),
                "this thread already holds the lock it now {what}s: with a writer \
                 waiting in between, it would deadlock (drop the first guard before \
                 taking it again)"
            );
            h.push(addr);
        });
    }

    pub fn release(addr: usize) {
        // `try_with`: guards may drop during a thread's teardown.
        let _ = HELD.try_with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|&a| a == addr) {
                h.swap_remove(i);
            }
        });
    }
}

/// A reader-writer lock that no thread may take twice (checked in debug
/// builds; see the module's documentation).
#[derive(Default)]
pub struct RwLock<T> {
    inner: parking_lot::RwLock<T>,
    /// Times the lock was taken for writing (see [`RwLock::writes`]).
    writes: AtomicU64,
}

impl<T> RwLock<T> {
    pub fn new(value: T) -> Self {
        RwLock {
            inner: parking_lot::RwLock::new(value),
            writes: AtomicU64::new(0),
        }
    }

    fn addr(&self) -> usize {
        self as *const Self as usize
    }

    pub fn read(&self) -> ReadGuard<'_, T> {
        #[cfg(debug_assertions)]
        held::take(self.addr(), "read");
        ReadGuard {
            guard: self.inner.read(),
            addr: self.addr(),
        }
    }

    pub fn write(&self) -> WriteGuard<'_, T> {
        #[cfg(debug_assertions)]
        held::take(self.addr(), "write");
        let guard = self.inner.write();
        self.writes.fetch_add(1, Ordering::Relaxed);
        WriteGuard {
            guard,
            addr: self.addr(),
        }
    }

    /// How many times the lock has been taken for writing. Read under a
    /// read guard, it cannot move while that guard lives; the same value
    /// read under a later read guard means nothing could change the value
    /// in between (what was derived from it under the first still holds).
    /// The lock orders the count as it orders the value: relaxed suffices.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }
}

pub struct ReadGuard<'a, T> {
    guard: parking_lot::RwLockReadGuard<'a, T>,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    addr: usize,
}

pub struct WriteGuard<'a, T> {
    guard: parking_lot::RwLockWriteGuard<'a, T>,
    #[cfg_attr(not(debug_assertions), allow(dead_code))]
    addr: usize,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.guard
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.guard
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::release(self.addr);
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::release(self.addr);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_are_taken_and_released() {
        let l = RwLock::new(1);
        {
            let a = l.read();
            assert_eq!(*a, 1);
        }
        *l.write() += 1;
        assert_eq!(*l.read(), 2);
        // Two different locks may be held at once.
        let m = RwLock::new(0);
        let (_a, _b) = (l.read(), m.write());
    }

    #[test]
    fn the_write_count_moves_with_each_write_and_only_then() {
        let l = RwLock::new(0);
        let before = l.writes();
        drop(l.read());
        assert_eq!(l.writes(), before, "a read is not a write");
        drop(l.write());
        *l.write() += 1;
        assert_eq!(l.writes(), before + 2);
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "already holds the lock")]
    fn a_second_read_by_one_thread_is_refused() {
        let l = RwLock::new(0);
        let _a = l.read();
        let _b = l.read();
    }

    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "already holds the lock")]
    fn a_write_under_ones_own_read_is_refused() {
        let l = RwLock::new(0);
        let _a = l.read();
        let _b = l.write();
    }

    /// The bug this catches: a guard in a call's arguments lives through
    /// the call, which reads the lock again.
    #[cfg(debug_assertions)]
    #[test]
    #[should_panic(expected = "already holds the lock")]
    fn a_guard_living_through_a_call_that_reads_again_is_refused() {
        fn again(l: &RwLock<u32>, _v: u32) -> u32 {
            *l.read()
        }
        let l = RwLock::new(0);
        again(&l, *l.read());
    }
}
