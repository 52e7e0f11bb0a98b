//! Crash simulation: a device that keeps writes in a volatile cache until
//! `flush`, like a disk's write cache. [`CrashSim::crash`] cuts power: each
//! unflushed write independently survives or is lost, and the last one may be
//! torn (only a prefix of its 512-byte sectors lands). Tests reopen the pool
//! on what survived. A cut can also be armed to happen at the N-th write over
//! all members: from then on writes and flushes are silently lost, exactly as
//! if the power failed in the middle of whatever the pool was doing.

use super::{check_range, BlockDevice, MemDevice};
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Write counter and armed cut point shared by the members of one simulation.
#[derive(Default)]
struct Power {
    writes: AtomicU64,
    cut_at: AtomicU64,
}

impl Power {
    fn off(&self) -> bool {
        self.writes.load(Ordering::SeqCst) >= self.cut_at.load(Ordering::SeqCst)
    }
}

struct State {
    durable: Vec<u8>,
    /// Unflushed writes, oldest first.
    pending: Vec<(u64, Vec<u8>)>,
}

/// A member whose unflushed writes can be lost.
pub struct CrashDevice {
    name: String,
    state: Mutex<State>,
    power: Arc<Power>,
}

impl BlockDevice for CrashDevice {
    fn size(&self) -> u64 {
        self.state.lock().durable.len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let st = self.state.lock();
        check_range(st.durable.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&st.durable[o..o + buf.len()]);
        // Apply pending writes in order on top of the durable image.
        let end = offset + buf.len() as u64;
        for (woff, data) in &st.pending {
            let wend = woff + data.len() as u64;
            if *woff >= end || wend <= offset {
                continue;
            }
            let s = (*woff).max(offset);
            let e = wend.min(end);
            buf[(s - offset) as usize..(e - offset) as usize]
                .copy_from_slice(&data[(s - woff) as usize..(e - woff) as usize]);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        check_range(st.durable.len() as u64, offset, buf.len())?;
        let n = self.power.writes.fetch_add(1, Ordering::SeqCst);
        if n < self.power.cut_at.load(Ordering::SeqCst) {
            st.pending.push((offset, buf.to_vec()));
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if self.power.off() {
            return Ok(());
        }
        let mut st = self.state.lock();
        let pending = std::mem::take(&mut st.pending);
        for (off, data) in pending {
            let o = off as usize;
            st.durable[o..o + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    /// Durable at once when the power is on: those bytes alone (the other
    /// unflushed writes stay at risk), and older unflushed writes lose
    /// their bytes in that range (the page cache held the newest).
    fn write_durable_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut st = self.state.lock();
        check_range(st.durable.len() as u64, offset, buf.len())?;
        let n = self.power.writes.fetch_add(1, Ordering::SeqCst);
        if n >= self.power.cut_at.load(Ordering::SeqCst) {
            return Ok(());
        }
        super::drop_overlaps(&mut st.pending, offset, buf.len());
        st.durable[offset as usize..offset as usize + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}

/// A set of crash-simulating members and a deterministic random source.
pub struct CrashSim {
    pub devices: Vec<Arc<CrashDevice>>,
    power: Arc<Power>,
    rng: u64,
}

impl CrashSim {
    pub fn new(count: usize, size: u64, seed: u64) -> CrashSim {
        CrashSim::from_images((0..count).map(|_| vec![0; size as usize]).collect(), seed)
    }

    /// Members that start out holding `images` (what an earlier crash left).
    pub fn from_images(images: Vec<Vec<u8>>, seed: u64) -> CrashSim {
        let power = Arc::new(Power {
            writes: AtomicU64::new(0),
            cut_at: AtomicU64::new(u64::MAX),
        });
        let devices = images
            .into_iter()
            .enumerate()
            .map(|(i, durable)| {
                Arc::new(CrashDevice {
                    name: format!("crash{i}"),
                    state: Mutex::new(State {
                        durable,
                        pending: Vec::new(),
                    }),
                    power: power.clone(),
                })
            })
            .collect();
        CrashSim {
            devices,
            power,
            rng: seed | 1,
        }
    }

    /// Writes issued so far over all members.
    pub fn writes(&self) -> u64 {
        self.power.writes.load(Ordering::SeqCst)
    }

    /// Lose power once `n` more writes have been issued.
    pub fn cut_after(&self, n: u64) {
        self.power.cut_at.store(self.writes() + n, Ordering::SeqCst);
    }

    /// Has the armed cut happened?
    pub fn power_lost(&self) -> bool {
        self.power.off()
    }

    /// A random number (deterministic per seed).
    pub fn random(&mut self) -> u64 {
        self.next()
    }

    fn next(&mut self) -> u64 {
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Cut power: every unflushed write survives with probability 1/2, the
    /// last surviving one on each member may be torn at a sector boundary.
    /// Returns in-memory members holding what a reboot would find.
    pub fn crash(&mut self) -> Vec<Arc<MemDevice>> {
        let mut out = Vec::new();
        for i in 0..self.devices.len() {
            let (mut image, pending) = {
                let st = self.devices[i].state.lock();
                (st.durable.clone(), st.pending.clone())
            };
            let n = pending.len();
            for (k, (off, data)) in pending.into_iter().enumerate() {
                if self.next().is_multiple_of(2) {
                    continue;
                }
                let mut len = data.len();
                if k + 1 == n && len > 512 && self.next().is_multiple_of(2) {
                    let sectors = len / 512;
                    len = (self.next() as usize % sectors) * 512;
                }
                let o = off as usize;
                image[o..o + len].copy_from_slice(&data[..len]);
            }
            out.push(Arc::new(MemDevice::from_bytes(&format!("crash{i}"), image)));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_durable_write_survives_every_crash_and_is_never_overwritten() {
        for seed in 0..32 {
            let mut sim = CrashSim::new(1, 1 << 16, seed);
            let d = sim.devices[0].clone();
            d.write_at(&[1u8; 8192], 0).unwrap();
            d.write_durable_at(&[2u8; 4096], 4096).unwrap();
            d.write_at(&[3u8; 4096], 12288).unwrap();
            let after = sim.crash();
            let mut b = vec![0u8; 16384];
            after[0].read_at(&mut b, 0).unwrap();
            assert!(b[4096..8192].iter().all(|&x| x == 2), "seed {seed}");
            assert!(b[..4096].iter().all(|&x| x <= 1), "seed {seed}");
        }
    }
}
