//! vpool: a userspace volume manager. Layers, bottom to top:
//! [`error`], [`units`], [`state`], [`sync`] → [`device`] → [`raid`] → [`meta`] →
//! [`thin`] → [`pool`] → [`control`] → [`frontend`] → [`daemon`] → [`cli`].
//! A module may use its own layer and those below it, never one above
//! (`tests/layers.rs` holds the order and fails the build's tests on an
//! upward import or a cycle); each layer's first lines say what it may use.

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
pub mod sync;
pub mod units;
