//! Frontends: how clients reach volumes. They use only the pool facade.

pub mod fuse;
pub mod nbd;
