//! vpool: a userspace volume manager. Layers, bottom to top:
//! [`device`] → [`raid`] → [`meta`] → [`thin`] → [`pool`]; the `vpool` binary's
//! CLI sits on the pool facade.

pub mod device;
pub mod raid;
pub mod error;
pub mod meta;

pub use error::{Error, Result};
pub mod thin;
pub mod pool;

pub use pool::{CreateOptions, Pool, Volume};
