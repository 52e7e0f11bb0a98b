//! Thin layer (may use meta and below): volumes as sparse maps from
//! virtual chunks to physical chunks of the array. Chunks are allocated on
//! first write, copied on write when shared with a snapshot or clone, and
//! released on discard. Knows volumes by id only; names live in the pool
//! facade. `store` is the on-disk schema and its transactions; the rest is
//! the data path over it (I/O, checksums, intent, flush log, scrub, resync,
//! relocation, the cache of recent mapping look-ups).

mod batch;
pub mod csum;
pub mod intent;
mod io;
mod journal;
pub mod known;
pub mod log;
mod log_entry;
mod mapcache;
mod ops;
mod ppl;
mod relocate;
pub mod replay;
pub mod resync;
mod ring;
pub mod scrub;
pub mod store;

pub use io::ThinPool;

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;
