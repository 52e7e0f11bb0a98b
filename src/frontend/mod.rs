//! Frontends: how clients reach volumes. They use only the pool facade.

pub mod docker;
pub mod fuse;
pub mod host;
pub mod nbd;
pub mod snapshotter;
