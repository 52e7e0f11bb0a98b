//! Names of pools, volumes and snapshots, and the `pool/volume@snapshot`
//! paths users type.

use crate::error::{Error, Result};

pub const MAX_NAME_LEN: usize = 63;

/// Letters, digits and `_ - . : +`; not starting with `-` or `.`; 1..=63 bytes.
pub fn validate(kind: &str, name: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::Invalid(format!(
            "invalid {kind} name '{}': {why}",
            name.escape_debug()
        )))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > MAX_NAME_LEN {
        return bad(&format!("longer than {MAX_NAME_LEN} characters"));
    }
    if name.starts_with('-') || name.starts_with('.') {
        return bad("it must not start with '-' or '.'");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_-.:+".contains(*c)))
    {
        return bad(&format!(
            "character '{}' is not allowed (use letters, digits and _ - . : +)",
            c.escape_debug()
        ));
    }
    Ok(())
}

/// The hidden volume a receive into `target` fills before it takes the
/// target's name (`%` cannot start a name users give, and `Pool::list`
/// leaves such volumes out, as ZFS does with `%recv`).
pub fn receiving_name(target: &str) -> String {
    const PREFIX: &str = "%recv-";
    if PREFIX.len() + target.len() <= MAX_NAME_LEN {
        return format!("{PREFIX}{target}");
    }
    // Too long with the prefix: a shortened name and a hash of the whole.
    let hash = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!(
        "{PREFIX}{}-{hash:016x}",
        &target[..MAX_NAME_LEN - PREFIX.len() - 17]
    )
}

/// Is this a hidden volume (a receive in progress)?
pub fn is_hidden(name: &str) -> bool {
    name.starts_with('%')
}

/// A parsed `pool/volume[@snapshot]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolPath {
    pub pool: String,
    pub volume: String,
    pub snapshot: Option<String>,
}

impl VolPath {
    pub fn parse(s: &str) -> Result<VolPath> {
        let Some((pool, rest)) = s.split_once('/') else {
            return Err(Error::Invalid(format!(
                "'{s}' is not of the form POOL/VOLUME"
            )));
        };
        let (volume, snapshot) = match rest.split_once('@') {
            Some((v, snap)) => (v, Some(snap.to_string())),
            None => (rest, None),
        };
        validate("pool", pool)?;
        validate("volume", volume)?;
        if let Some(snap) = &snapshot {
            validate("snapshot", snap)?;
        }
        Ok(VolPath {
            pool: pool.into(),
            volume: volume.into(),
            snapshot,
        })
    }

    /// Parse and require a snapshot part.
    pub fn parse_snapshot(s: &str) -> Result<VolPath> {
        let p = VolPath::parse(s)?;
        if p.snapshot.is_none() {
            return Err(Error::Invalid(format!(
                "'{s}' names no snapshot (use POOL/VOLUME@SNAPSHOT)"
            )));
        }
        Ok(p)
    }

    /// Parse and refuse a snapshot part.
    pub fn parse_volume(s: &str) -> Result<VolPath> {
        let p = VolPath::parse(s)?;
        if p.snapshot.is_some() {
            return Err(Error::Invalid(format!(
                "'{s}' is a snapshot; a volume is needed here"
            )));
        }
        Ok(p)
    }
}

impl std::fmt::Display for VolPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.pool, self.volume)?;
        if let Some(s) = &self.snapshot {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(validate("pool", "tank").is_ok());
        assert!(validate("pool", "a-b_c.d:e+f").is_ok());
        for bad in ["", "a/b", "a@b", "-x", ".x", "a\nb", "a b", &"x".repeat(64)] {
            assert!(validate("pool", bad).is_err(), "{bad:?}");
        }
        let p = VolPath::parse("tank/db@before").unwrap();
        assert_eq!(p.to_string(), "tank/db@before");
        assert!(VolPath::parse("tank").is_err());
        assert!(VolPath::parse_volume("tank/db@x").is_err());
        assert!(VolPath::parse_snapshot("tank/db").is_err());
    }
}
