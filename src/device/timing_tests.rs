//! How member I/O is timed: what counts as waiting on a device.

use super::{flush_all, per_unit, waited_per_unit, BlockDevice, DeviceRef, MemDevice, HANDOFF_NS};
use std::io;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A device whose flushes wait 1 ms off the CPU (a disk's cache flush),
/// counting how many of them run at once.
struct Sleepy {
    mem: MemDevice,
    now: Arc<AtomicUsize>,
    most: Arc<AtomicUsize>,
}

impl BlockDevice for Sleepy {
    fn size(&self) -> u64 {
        self.mem.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.mem.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.mem.write_at(buf, offset)
    }
    fn flush(&self) -> io::Result<()> {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(n, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(1));
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
    fn name(&self) -> String {
        self.mem.name()
    }
}

#[test]
fn flushes_that_wait_on_devices_run_at_once() {
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let devs: Vec<DeviceRef> = (0..3)
        .map(|i| {
            Arc::new(Sleepy {
                mem: MemDevice::new(&format!("s{i}"), 1 << 20),
                now: now.clone(),
                most: most.clone(),
            }) as DeviceRef
        })
        .collect();
    // While flushes are quick one in 16 is timed: within a few dozen,
    // these are known slow, and the three flush together. (Other tests'
    // quick flushes in this process pull the average down meanwhile.)
    for _ in 0..200 {
        assert!(flush_all(&devs).iter().all(|r| matches!(r, Some(Ok(())))));
        if most.load(Ordering::SeqCst) >= 2 {
            return;
        }
    }
    panic!("flushes that each wait 1 ms never ran at once");
}

#[test]
fn time_spent_copying_is_not_waiting_on_a_device() {
    // 200 us of work on the CPU (a copy into memory) for a 4 KiB I/O:
    // quick. The least of twenty tries, as a test run on a busy
    // machine may be preempted in any one.
    let busy = || {
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_micros(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        Ok(())
    };
    let least = (0..20).map(|_| waited_per_unit(4096, busy).1).min();
    assert!(
        least < Some(HANDOFF_NS),
        "copying counted as waiting: {least:?} ns"
    );
    // 200 us asleep (a disk's reply): slow, every time.
    for _ in 0..3 {
        let (r, ns) = waited_per_unit(4096, || {
            std::thread::sleep(Duration::from_micros(200));
            Ok(())
        });
        assert!(r.is_ok());
        assert!(ns >= HANDOFF_NS, "a wait of 200 us counted as {ns} ns");
    }
}

/// Pin the calling thread to the CPUs of `set`; returns the set it had.
fn pin(set: &libc::cpu_set_t) -> libc::cpu_set_t {
    let size = std::mem::size_of::<libc::cpu_set_t>();
    // SAFETY: both calls read or write one cpu_set_t of `size` bytes.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(libc::sched_getaffinity(0, size, &mut old), 0);
        assert_eq!(libc::sched_setaffinity(0, size, set), 0);
        old
    }
}

#[test]
fn time_preempted_is_not_waiting_on_a_device() {
    // This thread and a spinner share one CPU: 20 ms of copying is
    // preempted (the scheduler's slices are a few ms) but never waits
    // of its own accord, so it is quick, however long it took.
    // SAFETY: sched_getcpu has no arguments; CPU_SET writes into `one`.
    let one = unsafe {
        let cpu = libc::sched_getcpu().max(0) as usize;
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        one
    };
    let old = pin(&one);
    let stop = Arc::new(AtomicBool::new(false));
    let spinning = Arc::new(AtomicBool::new(false));
    let spinner = {
        let (stop, spinning) = (stop.clone(), spinning.clone());
        std::thread::spawn(move || {
            pin(&one);
            spinning.store(true, Ordering::SeqCst);
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        })
    };
    while !spinning.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    let (t, before) = (Instant::now(), super::thread_usage());
    let (r, ns) = waited_per_unit(4096, || {
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        Ok(())
    });
    let wall = t.elapsed().as_nanos();
    let cpu = super::thread_usage()
        .zip(before)
        .map(|(b, a)| b.cpu_ns - a.cpu_ns);
    stop.store(true, Ordering::Relaxed);
    spinner.join().expect("the spinner ends");
    pin(&old);
    assert!(r.is_ok());
    let preempted =
        wall.saturating_sub(cpu.expect("the thread's CPU clock and getrusage can be read"));
    assert!(
        preempted >= 2_000_000,
        "the copy was not preempted ({preempted} ns off the CPU): the test proves nothing"
    );
    assert!(
        ns < HANDOFF_NS,
        "{preempted} ns preempted counted as {ns} ns waiting on a device"
    );
}

#[test]
fn large_copies_into_memory_are_not_slow_devices() {
    // 1 MiB into tmpfs (about 100 us): quick, no helpers.
    assert!(per_unit(100_000, 1 << 20) < HANDOFF_NS);
    // The same request to a disk (2 ms), and one 4 KiB write waiting
    // 100 us on it: slow.
    assert!(per_unit(2_000_000, 1 << 20) >= HANDOFF_NS);
    assert!(per_unit(100_000, 4096) >= HANDOFF_NS);
    assert_eq!(per_unit(30_000, 0), 30_000);
}
