//! The import graph of `src/` points only down the stack and has no cycles.
//! Reads every source file (up to its first `#[cfg(test)]`: tests may reach
//! anywhere), takes each `crate::` and `super::` path, and checks that
//!
//! - a module uses only modules of its own layer or below (the order is
//!   written once, in `LAYERS`);
//! - no two modules use each other, directly or around a loop, at any level
//!   (`frontend::nbd` and `frontend::fuse`, or two files of one folder).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Low to high. A module may use its own layer and those before it.
const LAYERS: &[&[&str]] = &[
    &["error", "units", "state", "sync"],
    &["device"],
    &["raid"],
    &["meta"],
    &["thin"],
    &["pool"],
    &["control"],
    &["frontend"],
    &["daemon"],
    &["cli"],
];

fn rank(top: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&top))
}

type Module = Vec<String>;

/// Every source file of `src/` and its module path (`src/a/b.rs` and
/// `src/a/b/mod.rs` are `[a, b]`; `lib.rs` and `main.rs` are `[]`).
fn modules(dir: &Path, out: &mut Vec<(PathBuf, Module)>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            modules(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            let rel = p.strip_prefix("src").unwrap();
            let mut m: Module = rel
                .iter()
                .map(|c| c.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                m.pop();
            }
            out.push((p, m));
        }
    }
}

/// The identifier paths that follow each `prefix` in `code`, with groups
/// expanded (`crate::a::{b, c::d}` is `a::b` and `a::c::d`).
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = code[from..].find(prefix) {
        let at = from + i;
        from = at + prefix.len();
        let before = code[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        expand(Vec::new(), &code[from..], &mut out);
    }
    out
}

/// Read one path (and its group, if any) at the start of `text`.
fn expand(mut path: Vec<String>, text: &str, out: &mut Vec<Vec<String>>) {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    path.extend(
        text[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(String::from),
    );
    if text[end..].starts_with('{') && (end == 0 || text[..end].ends_with("::")) {
        let inner = &text[end + 1..];
        let (mut depth, mut start) = (0usize, 0usize);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 0 => {
                    expand(path.clone(), inner[start..i].trim_start(), out);
                    return;
                }
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(path.clone(), inner[start..i].trim_start(), out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        return;
    }
    out.push(path);
}

/// The longest prefix of `path` that is a module.
fn resolve(known: &BTreeSet<Module>, base: Module, path: &[String]) -> Option<Module> {
    let mut m = base;
    let mut best = None;
    for seg in path {
        if seg == "super" {
            m.pop();
            best = Some(m.clone());
            continue;
        }
        m.push(seg.to_string());
        if known.contains(&m) {
            best = Some(m.clone());
        } else {
            break;
        }
    }
    best.filter(|b| !b.is_empty())
}

/// Every use of one module by another: (user, used, file).
fn edges() -> Vec<(Module, Module, PathBuf)> {
    let mut files = Vec::new();
    modules(Path::new("src"), &mut files);
    let known: BTreeSet<Module> = files.iter().map(|(_, m)| m.clone()).collect();
    let mut out = Vec::new();
    for (file, m) in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for path in paths_after(code, "crate::") {
            if let Some(t) = resolve(&known, Vec::new(), &path) {
                out.push((m.clone(), t, file.clone()));
            }
        }
        for path in paths_after(code, "super::") {
            // `super` is the parent module (of `a/b.rs` and `a/b/mod.rs`
            // alike: both are `a::b`); further `super`s go on up.
            let base = m[..m.len().saturating_sub(1)].to_vec();
            if let Some(t) = resolve(&known, base, &path) {
                out.push((m.clone(), t, file.clone()));
            }
        }
    }
    out
}

#[test]
fn imports_point_down_the_stack() {
    let mut wrong = BTreeSet::new();
    for (from, to, file) in edges() {
        let (Some(a), Some(b)) = (
            from.first().and_then(|t| rank(t)),
            to.first().and_then(|t| rank(t)),
        ) else {
            continue;
        };
        if b > a {
            wrong.insert(format!(
                "{}: {} uses {} (a layer above it)",
                file.display(),
                from.join("::"),
                to.join("::")
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "imports that point up the stack (move the shared piece down to the lowest layer that \
         needs it; the order is LAYERS in tests/layers.rs):\n{}",
        wrong.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn no_module_cycles() {
    // Each use becomes one between the two children of the modules'
    // closest common ancestor (a module using its own parts or its parent
    // is no cycle).
    let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut why: BTreeMap<(Module, Module), PathBuf> = BTreeMap::new();
    for (from, to, file) in edges() {
        let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
        if common == from.len() || common == to.len() {
            continue;
        }
        let (a, b) = (from[..=common].to_vec(), to[..=common].to_vec());
        graph.entry(a.clone()).or_default().insert(b.clone());
        why.entry((a, b)).or_insert(file);
    }
    // A cycle exists iff some node reaches itself.
    let mut cycles = Vec::new();
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((node, trail)) = stack.pop() {
            for next in graph.get(&node).into_iter().flatten() {
                if next == start {
                    let mut t = trail.clone();
                    t.push(start.clone());
                    let steps: Vec<String> = t
                        .windows(2)
                        .map(|w| {
                            format!(
                                "{} -> {} ({})",
                                w[0].join("::"),
                                w[1].join("::"),
                                why[&(w[0].clone(), w[1].clone())].display()
                            )
                        })
                        .collect();
                    cycles.push(steps.join(", "));
                } else if seen.insert(next.clone()) {
                    let mut t = trail.clone();
                    t.push(next.clone());
                    stack.push((next.clone(), t));
                }
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules that use each other (move what both need into one of them, or below both):\n{}",
        cycles.join("\n")
    );
}

#[test]
fn the_checker_sees_paths() {
    let code = "use crate::pool::Pool; x = super::super::meta::btree::f(); y = my_crate::a;";
    let v = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        paths_after(code, "crate::"),
        vec![v(&["pool", "Pool"])],
        "my_crate:: is not crate::"
    );
    assert_eq!(
        paths_after(code, "super::"),
        vec![v(&["super", "meta", "btree", "f"])]
    );
    let grouped = "use super::{filter::{self, F}, overlay, store::{a, b}};";
    assert_eq!(
        paths_after(grouped, "super::"),
        vec![
            v(&["filter", "self"]),
            v(&["filter", "F"]),
            v(&["overlay"]),
            v(&["store", "a"]),
            v(&["store", "b"])
        ]
    );
}
