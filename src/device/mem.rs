//! A member held in memory: for tests and benchmarks.

use super::{check_range, BlockDevice};
use parking_lot::RwLock;
use std::io;

pub struct MemDevice {
    name: String,
    data: RwLock<Vec<u8>>,
}

impl MemDevice {
    pub fn new(name: &str, size: u64) -> MemDevice {
        MemDevice {
            name: name.to_string(),
            data: RwLock::new(vec![0u8; size as usize]),
        }
    }

    pub fn from_bytes(name: &str, data: Vec<u8>) -> MemDevice {
        MemDevice {
            name: name.to_string(),
            data: RwLock::new(data),
        }
    }

    /// A copy of the whole contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.data.read().clone()
    }

    /// Overwrite bytes directly (tests use this to corrupt a member).
    pub fn poke(&self, offset: u64, bytes: &[u8]) {
        let mut d = self.data.write();
        let o = offset as usize;
        d[o..o + bytes.len()].copy_from_slice(bytes);
    }
}

impl BlockDevice for MemDevice {
    fn size(&self) -> u64 {
        self.data.read().len() as u64
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.read();
        check_range(d.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        let mut d = self.data.write();
        check_range(d.len() as u64, offset, buf.len())?;
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
