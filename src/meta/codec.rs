//! Explicit little-endian field access for fixed on-disk layouts, and the
//! per-kind checksum (CRC32 XOR a kind salt, so a block of one kind is never
//! accepted as another).

use crate::units::Block;

pub const BLOCK_SIZE: usize = crate::units::BLOCK_BYTES as usize;

pub fn get_u16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

pub fn get_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

pub fn get_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

pub fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

pub fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// A metadata block number stored as a u64 (no generation tag).
pub fn get_block(b: &[u8], off: usize) -> Block {
    Block(get_u64(b, off))
}

pub fn put_block(b: &mut [u8], off: usize, v: Block) {
    put_u64(b, off, v.index());
}

/// Salts XORed into the CRC of each kind of structure.
pub mod salt {
    pub const LABEL: u32 = 0x4c41_4245; // "LABE"
    pub const SUPERBLOCK: u32 = 0x5355_5052; // "SUPR"
    pub const NODE: u32 = 0x4e4f_4445; // "NODE"
    pub const CATALOG: u32 = 0x4341_544c; // "CATL"
    pub const SPACE_MAP: u32 = 0x534d_4150; // "SMAP"
    pub const INTENT: u32 = 0x494e_544e; // "INTN"
    pub const LOG_DIR: u32 = 0x4c44_4952; // "LDIR"
    pub const LOG: u32 = 0x4c4f_4752; // "LOGR"
}

/// Checksum of a 4 KiB structure whose first 4 bytes hold the checksum.
pub fn checksum(block: &[u8], salt: u32) -> u32 {
    crc32fast::hash(&block[4..]) ^ salt
}

pub fn seal(block: &mut [u8], salt: u32) {
    let c = checksum(block, salt);
    put_u32(block, 0, c);
}

pub fn verify(block: &[u8], salt: u32) -> bool {
    block.len() >= 8 && get_u32(block, 0) == checksum(block, salt)
}
