//! Volumes as files through FUSE: one directory per pool, one regular file
//! per volume (its size is the volume's size), snapshots as read-only files
//! `volume@snapshot`. Opened with direct I/O (no second page cache);
//! `fsync` means durable exactly like an NBD flush; `fallocate` punch-hole is
//! a discard and zero-range a write-zeroes. Volumes are managed with the CLI:
//! creating, removing or renaming files here fails with EPERM.

mod fs;
mod mount;

pub use mount::{clear_stale_mount, FuseMount};
