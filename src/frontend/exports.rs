//! What the frontends serve: every volume as `pool/volume` and every
//! snapshot as `pool/volume@snapshot`. The daemon implements it over its
//! pools; NBD exports these names and FUSE shows them as files.

use crate::Volume;

/// The names a frontend serves, and the volumes behind them.
pub trait Exports: Send + Sync + 'static {
    /// Every export name.
    fn list(&self) -> Vec<String>;
    /// Open an export by name.
    fn open(&self, name: &str) -> Option<Volume>;
    /// Pool names (for the FUSE directory level).
    fn pools(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .list()
            .iter()
            .filter_map(|n| n.split('/').next().map(String::from))
            .collect();
        p.dedup();
        p
    }
}
