//! Metadata layer: labels, superblocks, checksummed self-identifying blocks,
//! the copy-on-write B-tree, space maps, the catalog and transactions.
//! Generic structures (codec, header, node, btree, spacemap) know nothing of
//! volumes; `store` ties them into one transactional metadata area.

pub mod btree;
pub mod catalog;
pub mod codec;
pub mod dataspace;
pub mod extent;
pub mod fuzzing;
pub mod header;
pub mod label;
pub mod node;
pub mod spacemap;
pub mod store;
pub mod superblock;

pub use store::{MetaLayout, MetaStore, VolumeRoot};
