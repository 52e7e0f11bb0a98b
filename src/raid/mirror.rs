//! The metadata mirror: the metadata area (superblocks, space-map pages,
//! B-tree and catalog blocks) lives at the same offsets on up to three
//! members, whatever the data RAID level. Writes go to every present copy;
//! a read tries the copies in turn until the caller's validator accepts one,
//! then rewrites the copies that failed validation (repair on read).

use crate::device::DeviceRef;
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct MetaMirror {
    /// (member index in the pool, device); `None` when missing.
    copies: Vec<(usize, Option<DeviceRef>)>,
    repaired: AtomicU64,
    /// Every copy found damaged, and whether it was rewritten: never silent.
    events: Mutex<Vec<String>>,
}

/// Outcome of validating one copy of a metadata block.
pub type Validator<'a> = &'a mut dyn FnMut(&[u8]) -> Result<(), String>;

impl MetaMirror {
    pub fn new(copies: Vec<(usize, Option<DeviceRef>)>) -> MetaMirror {
        MetaMirror {
            copies,
            repaired: AtomicU64::new(0),
            events: Mutex::new(Vec::new()),
        }
    }

    pub fn copies(&self) -> &[(usize, Option<DeviceRef>)] {
        &self.copies
    }

    pub fn present(&self) -> usize {
        self.copies.iter().filter(|c| c.1.is_some()).count()
    }

    /// Copies rewritten because they failed validation.
    pub fn repaired(&self) -> u64 {
        self.repaired.load(Ordering::Relaxed)
    }

    /// Damaged copies met so far (and what was done about them).
    pub fn events(&self) -> Vec<String> {
        self.events.lock().clone()
    }

    pub fn write(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut wrote = 0;
        for dev in self.copies.iter().filter_map(|c| c.1.as_ref()) {
            dev.write_at(buf, offset)?;
            wrote += 1;
        }
        if wrote == 0 {
            return Err(io::Error::other("no copy of the metadata area is present"));
        }
        Ok(())
    }

    pub fn flush(&self) -> io::Result<()> {
        for dev in self.copies.iter().filter_map(|c| c.1.as_ref()) {
            dev.flush()?;
        }
        Ok(())
    }

    /// Read `buf.len()` bytes at `offset` from the first copy the validator
    /// accepts; repair copies that were rejected. Errors list every copy's
    /// failure.
    pub fn read_valid(
        &self,
        what: &str,
        offset: u64,
        buf: &mut [u8],
        valid: Validator,
    ) -> Result<(), String> {
        let mut failures = Vec::new();
        let mut bad = Vec::new();
        for (member, dev) in &self.copies {
            let Some(dev) = dev else { continue };
            match dev.read_at(buf, offset) {
                Ok(()) => match valid(buf) {
                    Ok(()) => {
                        let mut events = self.events.lock();
                        for (d, why) in bad {
                            let d: &DeviceRef = d;
                            let outcome = match d.write_at(buf, offset) {
                                Ok(()) => {
                                    self.repaired.fetch_add(1, Ordering::Relaxed);
                                    "rewritten from a good copy".to_string()
                                }
                                Err(e) => format!("not rewritten: {e}"),
                            };
                            events.push(format!("{what}: copy on {why}; {outcome}"));
                        }
                        return Ok(());
                    }
                    Err(why) => {
                        let msg = format!("member {member} ({}): {why}", dev.name());
                        failures.push(msg.clone());
                        bad.push((dev, msg));
                    }
                },
                Err(e) => failures.push(format!("member {member} ({}): {e}", dev.name())),
            }
        }
        if failures.is_empty() {
            failures.push("no copy of the metadata area is present".into());
        }
        Err(failures.join("; "))
    }

    /// Read one copy as-is (for inspection tools).
    pub fn read_copy(&self, idx: usize, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match &self.copies[idx].1 {
            Some(dev) => dev.read_at(buf, offset),
            None => Err(io::Error::other("copy missing")),
        }
    }
}
