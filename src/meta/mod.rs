//! Metadata layer (may use error, units, state, device and raid): the
//! generic persistent structures, which know nothing of volumes. Member
//! labels, checksummed self-identifying blocks (codec, header), the
//! copy-on-write B-tree and its nodes, the metadata space map and the
//! metadata extents taken from the data area. The thin pool's schema and
//! its transactions (superblock, volumes and mapping trees, data space map,
//! checksums, catalog, flush log) are built on these in `thin::store`, as
//! thin-provisioning-tools keeps `persistent-data/` apart from `thin/`.

pub mod blocks;
pub mod btree;
pub mod codec;
pub mod diff;
pub mod extent;
pub mod fuzzing;
pub mod header;
pub mod label;
pub mod node;
pub mod spacemap;
