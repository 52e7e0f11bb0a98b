//! A listener's view of the exports: only the names its patterns allow
//! (`--nbd-exports tank/db,tank/web*`). A name outside them is unknown to
//! the client: not listed, not opened.

use super::Exports;
use crate::Volume;
use std::sync::Arc;

pub struct Limited {
    inner: Arc<dyn Exports>,
    patterns: Vec<String>,
}

impl Limited {
    /// Patterns are export names in which `*` stands for any run of
    /// characters but `/`: `tank/*` is every volume and snapshot of `tank`,
    /// `tank/db*` is `tank/db`, its snapshots and any volume starting so.
    pub fn new(inner: Arc<dyn Exports>, patterns: Vec<String>) -> Limited {
        Limited { inner, patterns }
    }

    pub fn allows(&self, name: &str) -> bool {
        self.patterns.iter().any(|p| matches(p, name))
    }
}

/// Check a pattern as `--nbd-exports` takes it.
pub fn valid_pattern(p: &str) -> Result<(), String> {
    let parts: Vec<&str> = p.split('/').collect();
    if parts.len() != 2 || parts.iter().any(|s| s.is_empty()) {
        return Err(format!(
            "'{p}' is not an export pattern like POOL/VOLUME, POOL/VOLUME@SNAPSHOT or tank/*"
        ));
    }
    Ok(())
}

/// Glob match where `*` does not cross `/`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer glob with backtracking to the last star.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if i < p.len() && p[i] == n[j] {
            i += 1;
            j += 1;
        } else if let Some((si, sj)) = star {
            if n[sj] == '/' {
                return false;
            }
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

impl Exports for Limited {
    fn list(&self) -> Vec<String> {
        let mut names = self.inner.list();
        names.retain(|n| self.allows(n));
        names
    }

    fn open(&self, name: &str) -> Option<Volume> {
        if self.allows(name) {
            self.inner.open(name)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stars_stay_within_a_path_part() {
        assert!(matches("tank/*", "tank/db"));
        assert!(matches("tank/*", "tank/db@s1"));
        assert!(!matches("tank/*", "tanker/db"));
        assert!(!matches("*", "tank/db"));
        assert!(matches("*/*", "tank/db"));
        assert!(matches("tank/db", "tank/db"));
        assert!(!matches("tank/db", "tank/db@s1"));
        assert!(matches("tank/db*", "tank/db@s1"));
        assert!(matches("tank/*@*", "tank/db@s1"));
        assert!(!matches("tank/*@*", "tank/db"));
        assert!(matches("t*k/d*b", "tank/dab"));
        assert!(!matches("tank/d*", "tank/x/d"));
        assert!(valid_pattern("tank/*").is_ok());
        for bad in ["tank", "/db", "tank/", "a/b/c", ""] {
            assert!(valid_pattern(bad).is_err(), "{bad}");
        }
    }
}
