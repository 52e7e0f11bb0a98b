//! The snapshotter's records, in `STATE_DIR/snapshotter.json`: containerd's
//! keys and names (one namespace), kinds, parents, labels and times, and the
//! thin volume behind each. Saved atomically after every change. The volume
//! is made before its record is saved and removed after its record is
//! dropped, so after a crash a volume may lack a record (it is removed at the
//! next start) but a record never lacks its volume.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::View => "view",
            Kind::Active => "active",
            Kind::Committed => "committed",
        }
    }
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: Kind,
    /// The parent's name ("" for none).
    pub parent: String,
    /// The thin volume in the snapshotter's pool.
    pub volume: String,
    /// Unix nanoseconds.
    pub created: u64,
    pub updated: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overlay mode: the volume holds this layer only and vpool mounts it.
    #[serde(default)]
    pub overlay: bool,
    /// Overlay mode: the loop device while mounted (found again after a
    /// killed daemon, as the Docker plugin does).
    #[serde(default)]
    pub device: Option<String>,
}

#[derive(Deserialize, Default)]
struct File {
    #[serde(default)]
    next_id: u64,
    #[serde(default)]
    snapshots: BTreeMap<String, Record>,
}

/// What `save` writes (`File` as read back), without copying the records.
#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    next_id: u64,
    snapshots: &'a BTreeMap<String, Record>,
}

pub struct Store {
    path: PathBuf,
    pub next_id: u64,
    pub snapshots: BTreeMap<String, Record>,
}

/// Prefix of the volumes the snapshotter owns.
pub const VOLUME_PREFIX: &str = "ctrd-";
/// A volume holding a fresh, empty ext4 of the configured size: new layers
/// are O(1) clones of it instead of a mkfs each.
pub const TEMPLATE: &str = "ctrd-empty";

impl Store {
    pub fn load(state_dir: &Path) -> anyhow::Result<Store> {
        let path = state_dir.join("snapshotter.json");
        let file: File = crate::state::read_json(
            &path,
            "fix or remove it (it maps containerd's snapshots to volumes)",
        )?;
        Ok(Store {
            path,
            next_id: file.next_id.max(1),
            snapshots: file.snapshots,
        })
    }

    /// Write atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let file = FileRef {
            version: 1,
            next_id: self.next_id,
            snapshots: &self.snapshots,
        };
        Ok(crate::state::write_json(&self.path, &file)?)
    }

    /// A fresh volume name.
    pub fn new_volume(&mut self) -> String {
        let id = self.next_id;
        self.next_id += 1;
        format!("{VOLUME_PREFIX}{id}")
    }

    pub fn has_children(&self, name: &str) -> bool {
        self.snapshots.values().any(|r| r.parent == name)
    }
}

pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
