//! vpool: a userspace volume manager. Layers, bottom to top:
//! [`device`] → [`raid`] → [`meta`] → [`thin`] → [`pool`]; the `vpool` binary's
//! CLI sits on the pool facade.

pub mod device;
pub mod error;
pub mod frontend;
pub mod meta;
pub mod raid;

pub use error::{Error, Result};
pub mod pool;
pub mod thin;

pub use pool::{CreateOptions, Pool, Volume};
pub mod cli;
pub mod control;
pub mod daemon;
pub mod state;
pub mod units;
