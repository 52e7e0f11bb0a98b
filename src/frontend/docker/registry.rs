//! The Docker volumes vpool serves, kept in `STATE_DIR/docker.json`: which
//! pool and vpool volume each name maps to, its filesystem, and the mount
//! IDs that hold it (Docker does not count mounts; the plugin must). Saved
//! atomically after every change, so names and counts survive a restart.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Record {
    pub pool: String,
    /// The vpool volume's name in `pool` (Docker names may be longer).
    pub volume: String,
    /// The filesystem made at first mount (`ext4` or `xfs`).
    pub fs: String,
    /// Unix seconds.
    pub created: u64,
    /// Mount IDs (Docker) or container IDs (Podman) using the volume.
    #[serde(default)]
    pub mounts: BTreeSet<String>,
    /// The loop device while mounted, so one left by a killed daemon is
    /// found again even after its FUSE mount was detached.
    #[serde(default)]
    pub device: Option<String>,
    /// `Remove` has begun: the volume is being removed. A start that finds
    /// this finishes the removal, so a crash in the middle neither leaves a
    /// name without its volume nor lets a removed volume come back.
    #[serde(default)]
    pub removing: bool,
}

#[derive(Deserialize, Debug, Default)]
struct File {
    volumes: BTreeMap<String, Record>,
}

/// What `save` writes (`File` as read back), without copying the records.
#[derive(Serialize)]
struct FileRef<'a> {
    version: u32,
    volumes: &'a BTreeMap<String, Record>,
}

pub struct Registry {
    path: PathBuf,
    pub volumes: BTreeMap<String, Record>,
}

impl Registry {
    pub fn load(state_dir: &Path) -> anyhow::Result<Registry> {
        let path = state_dir.join("docker.json");
        let file: File = crate::state::read_json(
            &path,
            "fix or remove it (it lists the Docker volumes; the data is in the pools)",
        )?;
        Ok(Registry {
            path,
            volumes: file.volumes,
        })
    }

    /// Write atomically.
    pub fn save(&self) -> anyhow::Result<()> {
        let file = FileRef {
            version: 1,
            volumes: &self.volumes,
        };
        Ok(crate::state::write_json(&self.path, &file)?)
    }
}

/// The vpool volume name for a Docker volume name: the same when it is a
/// valid vpool name; Docker's 64-character anonymous names are shortened
/// with a checksum of the whole name so they stay distinct.
pub fn volume_name(docker: &str) -> anyhow::Result<String> {
    if docker.is_empty() || docker.contains('/') {
        anyhow::bail!(crate::Error::Invalid(format!(
            "invalid volume name '{docker}'"
        )));
    }
    if crate::pool::names::validate("volume", docker).is_ok() {
        return Ok(docker.to_string());
    }
    let max = crate::pool::names::MAX_NAME_LEN;
    if docker.len() > max {
        // Cut on a character boundary: names are text, not bytes.
        let mut cut = max - 9;
        while !docker.is_char_boundary(cut) {
            cut -= 1;
        }
        let short = format!(
            "{}-{:08x}",
            &docker[..cut],
            crc32fast::hash(docker.as_bytes())
        );
        crate::pool::names::validate("volume", &short)?;
        return Ok(short);
    }
    crate::pool::names::validate("volume", docker)?;
    Ok(docker.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_valid_distinct_volume_names() {
        assert_eq!(volume_name("pgdata").unwrap(), "pgdata");
        let a = "a".repeat(64);
        let b = format!("{}b", "a".repeat(63));
        let (va, vb) = (volume_name(&a).unwrap(), volume_name(&b).unwrap());
        assert!(va.len() <= 63 && vb.len() <= 63);
        assert_ne!(va, vb);
        assert!(volume_name("a/b").is_err());
        assert!(volume_name("").is_err());
        assert!(volume_name("bad name").is_err());
        // Names are text: a multi-byte character across the cut is left
        // out (the name is shortened before it), one before it makes the
        // name invalid; never a panic.
        let across = format!("{}é{}", "a".repeat(53), "b".repeat(20));
        let short = volume_name(&across).unwrap();
        assert!(
            short.starts_with(&"a".repeat(53)) && short.len() <= 63,
            "{short}"
        );
        for at in 40..53 {
            let name = format!("{}é{}", "a".repeat(at), "b".repeat(70 - at));
            assert!(volume_name(&name).is_err(), "{name}");
        }
    }

    #[test]
    fn registry_round_trips_through_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Registry::load(dir.path()).unwrap();
        assert!(r.volumes.is_empty());
        let rec = Record {
            pool: "tank".into(),
            volume: "v".into(),
            fs: "ext4".into(),
            created: 7,
            mounts: ["m1".to_string()].into_iter().collect(),
            device: Some("/dev/loop7".into()),
            removing: false,
        };
        r.volumes.insert("v".into(), rec.clone());
        r.save().unwrap();
        let back = Registry::load(dir.path()).unwrap();
        assert_eq!(back.volumes.get("v"), Some(&rec));
        std::fs::write(dir.path().join("docker.json"), b"{oops").unwrap();
        let err = Registry::load(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("damaged"), "{err:#}");
    }
}
