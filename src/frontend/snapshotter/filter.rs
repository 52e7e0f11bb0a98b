//! containerd's filter expressions for `List`, the part snapshot lists use:
//! `FIELD`, `FIELD==VALUE` and `FIELD!=VALUE` joined by commas (all must
//! hold), where FIELD is `name`, `parent`, `kind` or `labels.KEY` (KEY and
//! VALUE may be double-quoted). A snapshot is listed when any one filter
//! matches it, or when there are no filters. Regular expressions (`~=`) are
//! refused rather than guessed at.

use std::collections::BTreeMap;

#[derive(Debug, PartialEq)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
}

#[derive(Debug, PartialEq)]
struct Cond {
    field: Vec<String>,
    op: Op,
}

/// One filter: conditions that must all hold.
#[derive(Debug)]
pub struct Filter(Vec<Cond>);

/// The fields of a snapshot a filter can look at.
pub struct Fields<'a> {
    pub name: &'a str,
    pub parent: &'a str,
    pub kind: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Split on `sep` outside double quotes.
fn split_unquoted(s: &str, sep: char) -> Vec<String> {
    let (mut out, mut cur, mut quoted, mut escaped) = (Vec::new(), String::new(), false, false);
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            c if c == sep && !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    match s.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => s.to_string(),
    }
}

fn find_op(s: &str) -> Option<(usize, &'static str)> {
    let mut quoted = false;
    let b = s.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'"' => quoted = !quoted,
            b'=' | b'!' | b'~' if !quoted && b.get(i + 1) == Some(&b'=') => {
                return Some((
                    i,
                    match b[i] {
                        b'=' => "==",
                        b'!' => "!=",
                        _ => "~=",
                    },
                ))
            }
            _ => {}
        }
    }
    None
}

pub fn parse(expr: &str) -> Result<Filter, String> {
    let mut conds = Vec::new();
    for part in split_unquoted(expr, ',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let (sel, op) = match find_op(part) {
            None => (part, Op::Present),
            Some((i, "==")) => (&part[..i], Op::Eq(unquote(&part[i + 2..]))),
            Some((i, "!=")) => (&part[..i], Op::Ne(unquote(&part[i + 2..]))),
            Some(_) => {
                return Err(format!(
                    "filter '{expr}': regular expressions (~=) are not supported; use == or !="
                ))
            }
        };
        let field: Vec<String> = split_unquoted(sel.trim(), '.')
            .iter()
            .map(|f| unquote(f))
            .collect();
        let known = match field.first().map(String::as_str) {
            Some("name" | "parent" | "kind") => field.len() == 1,
            Some("labels") => field.len() >= 2,
            _ => false,
        };
        if !known {
            return Err(format!(
                "filter '{expr}': unknown field '{}' (name, parent, kind, labels.KEY)",
                sel.trim()
            ));
        }
        conds.push(Cond { field, op });
    }
    Ok(Filter(conds))
}

impl Filter {
    pub fn matches(&self, f: &Fields) -> bool {
        self.0.iter().all(|c| {
            let value = match c.field[0].as_str() {
                "name" => Some(f.name.to_string()),
                "parent" => Some(f.parent.to_string()).filter(|p| !p.is_empty()),
                "kind" => Some(f.kind.to_string()),
                _ => f.labels.get(&c.field[1..].join(".")).cloned(),
            };
            match (&c.op, value) {
                (Op::Present, v) => v.is_some(),
                (Op::Eq(want), v) => v.as_deref() == Some(want.as_str()),
                (Op::Ne(want), v) => v.as_deref() != Some(want.as_str()),
            }
        })
    }
}

/// Whether any filter matches (all do when there are none).
pub fn any_matches(filters: &[Filter], f: &Fields) -> bool {
    filters.is_empty() || filters.iter().any(|x| x.matches(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(labels: &'a BTreeMap<String, String>) -> Fields<'a> {
        Fields {
            name: "default/3/sha256:abc",
            parent: "default/2/sha256:def",
            kind: "committed",
            labels,
        }
    }

    #[test]
    fn conditions_and_quoting() {
        let mut labels = BTreeMap::new();
        labels.insert("containerd.io/gc.root".to_string(), "yes".to_string());
        let f = fields(&labels);
        let ok = |e: &str| parse(e).unwrap().matches(&f);
        assert!(ok("kind==committed"));
        assert!(!ok("kind==active"));
        assert!(ok("kind!=active"));
        assert!(ok(r#"labels."containerd.io/gc.root""#));
        assert!(ok(r#"labels."containerd.io/gc.root"==yes"#));
        assert!(ok(
            r#"labels."containerd.io/gc.root"=="yes",kind==committed"#
        ));
        assert!(!ok(r#"labels."containerd.io/gc.root"==yes,kind==view"#));
        assert!(!ok("labels.other"));
        assert!(ok(r#"name=="default/3/sha256:abc""#));
        assert!(ok("parent==default/2/sha256:def"));
        assert!(parse("name~=abc").is_err());
        assert!(parse("colour==red").is_err());
        let none = BTreeMap::new();
        let g = Fields {
            parent: "",
            ..fields(&none)
        };
        assert!(!parse("parent").unwrap().matches(&g));
        assert!(any_matches(&[], &g));
        let fs = [
            parse("kind==view").unwrap(),
            parse("kind==committed").unwrap(),
        ];
        assert!(any_matches(&fs, &g));
    }
}
