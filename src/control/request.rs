//! Every operation the CLI can ask for, as data: executed locally on the
//! devices, or sent to the daemon as HTTP/JSON. `route` and `from_http` map
//! requests to the versioned REST API and back, in one place.

use crate::raid::RaidLevel;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

fn yes() -> bool {
    true
}

/// Why an HTTP call stands for no request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No call has this method and path (HTTP 404).
    NoSuchCall(String),
    /// The call exists, but its path or body is not valid (HTTP 400).
    Invalid(String),
}

impl RouteError {
    pub fn status(&self) -> u16 {
        match self {
            RouteError::NoSuchCall(_) => 404,
            RouteError::Invalid(_) => 400,
        }
    }
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::NoSuchCall(m) | RouteError::Invalid(m) => f.write_str(m),
        }
    }
}

impl From<String> for RouteError {
    fn from(m: String) -> RouteError {
        RouteError::Invalid(m)
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    PoolCreate {
        name: String,
        raid: RaidLevel,
        devices: Vec<PathBuf>,
        stripe_unit: u64,
        force: bool,
        /// Data checksums (default on).
        #[serde(default = "yes")]
        checksums: bool,
        /// Bytes of metadata area per copy (`None`: sized for the pool).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        metadata_size: Option<u64>,
    },
    PoolList,
    PoolStatus {
        name: String,
    },
    PoolExport {
        name: String,
    },
    PoolImport {
        name: Option<String>,
        scan: Vec<PathBuf>,
        devices: Vec<PathBuf>,
        force: bool,
    },
    PoolDestroy {
        name: String,
        force: bool,
    },
    PoolCheck {
        name: String,
        repair: bool,
    },
    /// Add members (online): several for linear, one at a time otherwise.
    PoolAdd {
        name: String,
        devices: Vec<PathBuf>,
        force: bool,
        /// Add the devices as hot spares instead (raid1, raid5).
        #[serde(default)]
        spare: bool,
    },
    /// Remove a member online: its data is moved to the others first.
    PoolRemove {
        name: String,
        device: PathBuf,
    },
    /// Mark a member failed (as `mdadm --fail`). `member`: its device
    /// path, index or uuid.
    PoolFail {
        name: String,
        member: String,
    },
    /// Rebuild a member onto a new device, online.
    PoolReplace {
        name: String,
        member: String,
        device: PathBuf,
        force: bool,
    },
    /// Reset error counters (of one member, or all); a member out of
    /// service whose device is attached is rebuilt in place.
    PoolClear {
        name: String,
        member: Option<String>,
    },
    /// Read every block in use from every copy and check it against its
    /// checksum (and raid5 parity); repair from redundancy unless
    /// `check_only`. Returns when done.
    PoolScrub {
        name: String,
        check_only: bool,
    },
    /// Change a pool property (`pool set`): `metadata_size` grows the
    /// metadata area to at least that many bytes per copy.
    PoolSet {
        name: String,
        #[serde(default)]
        metadata_size: Option<u64>,
        /// Let the metadata area grow on its own (default on).
        #[serde(default)]
        metadata_autogrow: Option<bool>,
    },
    /// Layout changes in progress, on every pool.
    JobList,
    /// I/O counters of one pool (or every pool), its members and volumes,
    /// since the daemon opened it.
    PoolIostat {
        #[serde(default)]
        pool: Option<String>,
    },
    /// Events the daemon recorded after sequence number `after`.
    Events {
        #[serde(default)]
        after: u64,
        #[serde(default)]
        pool: Option<String>,
    },
    JobPause {
        pool: String,
    },
    /// Continue a paused or waiting job (without a daemon: run it here).
    JobResume {
        pool: String,
    },
    /// Mount every volume as a file under `dir` (daemon only).
    Mount {
        dir: PathBuf,
    },
    Unmount,
    VolCreate {
        path: String,
        size: u64,
    },
    VolList {
        pool: Option<String>,
    },
    VolImport {
        path: String,
        from: PathBuf,
        offset: u64,
    },
    VolExport {
        path: String,
        to: PathBuf,
        force: bool,
    },
    VolClone {
        source: String,
        target: String,
    },
    VolRollback {
        path: String,
    },
    /// `size` is `SIZE`, `+SIZE` or `-SIZE`.
    VolResize {
        path: String,
        size: String,
        force: bool,
        /// Also grow the filesystem on a loop device over the FUSE file.
        #[serde(default)]
        resize_fs: bool,
    },
    VolRemove {
        path: String,
        recursive: bool,
    },
    SnapCreate {
        path: String,
    },
    SnapList {
        pool: Option<String>,
        volume: Option<String>,
    },
    SnapRemove {
        path: String,
    },
    /// The byte ranges that differ between two snapshots of a volume.
    VolDiff {
        from: String,
        to: String,
    },
    /// The resume token of a partial receive into `target`.
    ReceiveToken {
        target: String,
    },
    /// Drop a partial receive into `target`.
    ReceiveAbort {
        target: String,
    },
}

/// An HTTP request for the control API.
pub struct Route {
    pub method: &'static str,
    pub path: String,
    pub body: Option<serde_json::Value>,
}

/// Percent-encode a path segment or query value.
pub fn encode_component(s: &str) -> String {
    enc(s)
}

fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:+".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn decode_component(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `pool/vol[@snap]` as path segments `pool/vol[@snap]`, each encoded.
fn vol_path(p: &str) -> String {
    p.split('/').map(enc).collect::<Vec<_>>().join("/")
}

fn query(pairs: &[(&str, Option<&String>)]) -> String {
    let q: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

impl Request {
    /// Does this request change anything?
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            Request::PoolList
                | Request::PoolStatus { .. }
                | Request::JobList
                | Request::PoolIostat { .. }
                | Request::Events { .. }
                | Request::VolList { .. }
                | Request::SnapList { .. }
                | Request::VolDiff { .. }
                | Request::ReceiveToken { .. }
        ) && !matches!(self, Request::PoolImport { name: None, .. })
    }

    pub fn route(&self) -> Route {
        let body = serde_json::to_value(self).ok();
        let r = |method, path: String, body| Route { method, path, body };
        match self {
            Request::PoolList => r("GET", "/v1/pools".into(), None),
            Request::PoolCreate { .. } => r("POST", "/v1/pools".into(), body),
            Request::PoolStatus { name } => r("GET", format!("/v1/pools/{}", enc(name)), None),
            Request::PoolExport { name } => {
                r("POST", format!("/v1/pools/{}/export", enc(name)), None)
            }
            Request::PoolImport { .. } => r("POST", "/v1/import".into(), body),
            Request::PoolDestroy { name, force } => r(
                "DELETE",
                format!(
                    "/v1/pools/{}{}",
                    enc(name),
                    if *force { "?force=true" } else { "" }
                ),
                None,
            ),
            Request::PoolCheck { name, .. } => {
                r("POST", format!("/v1/pools/{}/check", enc(name)), body)
            }
            Request::PoolAdd { name, .. } => {
                r("POST", format!("/v1/pools/{}/members", enc(name)), body)
            }
            Request::PoolRemove { name, .. } => r(
                "POST",
                format!("/v1/pools/{}/members/remove", enc(name)),
                body,
            ),
            Request::PoolFail { name, .. } => r(
                "POST",
                format!("/v1/pools/{}/members/fail", enc(name)),
                body,
            ),
            Request::PoolReplace { name, .. } => r(
                "POST",
                format!("/v1/pools/{}/members/replace", enc(name)),
                body,
            ),
            Request::PoolClear { name, .. } => r(
                "POST",
                format!("/v1/pools/{}/members/clear", enc(name)),
                body,
            ),
            Request::PoolScrub { name, .. } => {
                r("POST", format!("/v1/pools/{}/scrub", enc(name)), body)
            }
            Request::PoolSet { name, .. } => {
                r("POST", format!("/v1/pools/{}/set", enc(name)), body)
            }
            Request::JobList => r("GET", "/v1/jobs".into(), None),
            Request::Events { after, pool } => {
                let after = after.to_string();
                r(
                    "GET",
                    format!(
                        "/v1/events{}",
                        query(&[("after", Some(&after)), ("pool", pool.as_ref())])
                    ),
                    None,
                )
            }
            Request::PoolIostat { pool } => r(
                "GET",
                format!("/v1/iostat{}", query(&[("pool", pool.as_ref())])),
                None,
            ),
            Request::Mount { .. } => r("POST", "/v1/mount".into(), body),
            Request::Unmount => r("DELETE", "/v1/mount".into(), None),
            Request::JobPause { pool } => r("POST", format!("/v1/jobs/{}/pause", enc(pool)), None),
            Request::JobResume { pool } => {
                r("POST", format!("/v1/jobs/{}/resume", enc(pool)), None)
            }
            Request::VolCreate { .. } => r("POST", "/v1/volumes".into(), body),
            Request::VolList { pool } => r(
                "GET",
                format!("/v1/volumes{}", query(&[("pool", pool.as_ref())])),
                None,
            ),
            Request::VolImport { path, .. } => r(
                "POST",
                format!("/v1/volumes/{}/import", vol_path(path)),
                body,
            ),
            Request::VolExport { path, .. } => r(
                "POST",
                format!("/v1/volumes/{}/export", vol_path(path)),
                body,
            ),
            Request::VolClone { source, .. } => r(
                "POST",
                format!("/v1/volumes/{}/clone", vol_path(source)),
                body,
            ),
            Request::VolRollback { path } => r(
                "POST",
                format!("/v1/volumes/{}/rollback", vol_path(path)),
                None,
            ),
            Request::VolResize { path, .. } => r(
                "POST",
                format!("/v1/volumes/{}/resize", vol_path(path)),
                body,
            ),
            Request::VolRemove { path, recursive } => r(
                "DELETE",
                format!(
                    "/v1/volumes/{}{}",
                    vol_path(path),
                    if *recursive { "?recursive=true" } else { "" }
                ),
                None,
            ),
            Request::SnapCreate { .. } => r("POST", "/v1/snapshots".into(), body),
            Request::SnapList { pool, volume } => r(
                "GET",
                format!(
                    "/v1/snapshots{}",
                    query(&[("pool", pool.as_ref()), ("volume", volume.as_ref())])
                ),
                None,
            ),
            Request::SnapRemove { path } => {
                r("DELETE", format!("/v1/snapshots/{}", vol_path(path)), None)
            }
            Request::VolDiff { from, to } => r(
                "GET",
                format!(
                    "/v1/diff{}",
                    query(&[("from", Some(from)), ("to", Some(to))])
                ),
                None,
            ),
            Request::ReceiveToken { target } => {
                r("GET", format!("/v1/receive/{}", vol_path(target)), None)
            }
            Request::ReceiveAbort { target } => {
                r("DELETE", format!("/v1/receive/{}", vol_path(target)), None)
            }
        }
    }

    /// The request an HTTP call stands for. Bodies carry the whole request
    /// (`{"vol_create": {...}}`); paths and queries carry the rest.
    pub fn from_http(method: &str, url: &str, body: &[u8]) -> Result<Request, RouteError> {
        let (path, q) = url.split_once('?').unwrap_or((url, ""));
        let params: Vec<(String, String)> = q
            .split('&')
            .filter(|p| !p.is_empty())
            .filter_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                Some((decode_component(k)?, decode_component(v)?))
            })
            .collect();
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let flag = |k: &str| param(k).is_some_and(|v| v == "true" || v == "1");
        let segs: Vec<String> = path
            .trim_start_matches('/')
            .split('/')
            .map(|s| decode_component(s).ok_or_else(|| format!("bad escape in '{s}'")))
            .collect::<Result<_, _>>()?;
        let segs_owned = segs.clone();
        let segs: Vec<&str> = segs.iter().map(|s| s.as_str()).collect();
        let from_body = || -> Result<Request, String> {
            serde_json::from_slice(body).map_err(|e| format!("request body: {e}"))
        };
        let req = match (method, segs.as_slice()) {
            ("GET", ["v1", "pools"]) => Request::PoolList,
            ("POST", ["v1", "pools"])
            | ("POST", ["v1", "import"])
            | ("POST", ["v1", "volumes"])
            | ("POST", ["v1", "snapshots"]) => from_body()?,
            ("GET", ["v1", "pools", name]) => Request::PoolStatus {
                name: name.to_string(),
            },
            ("DELETE", ["v1", "pools", name]) => Request::PoolDestroy {
                name: name.to_string(),
                force: flag("force"),
            },
            ("POST", ["v1", "pools", name, "export"]) => Request::PoolExport {
                name: name.to_string(),
            },
            ("POST", ["v1", "pools", _, "check" | "members" | "scrub" | "set"])
            | ("POST", ["v1", "pools", _, "members", "remove" | "fail" | "replace" | "clear"]) => {
                from_body()?
            }
            ("GET", ["v1", "jobs"]) => Request::JobList,
            ("GET", ["v1", "events"]) => Request::Events {
                after: match param("after") {
                    Some(a) => a.parse().map_err(|_| format!("after={a}: not a number"))?,
                    None => 0,
                },
                pool: param("pool"),
            },
            ("GET", ["v1", "iostat"]) => Request::PoolIostat {
                pool: param("pool"),
            },
            ("POST", ["v1", "mount"]) => from_body()?,
            ("DELETE", ["v1", "mount"]) => Request::Unmount,
            ("POST", ["v1", "jobs", pool, "pause"]) => Request::JobPause {
                pool: pool.to_string(),
            },
            ("POST", ["v1", "jobs", pool, "resume"]) => Request::JobResume {
                pool: pool.to_string(),
            },
            ("GET", ["v1", "volumes"]) => Request::VolList {
                pool: param("pool"),
            },
            ("GET", ["v1", "snapshots"]) => Request::SnapList {
                pool: param("pool"),
                volume: param("volume"),
            },
            ("DELETE", ["v1", "volumes", pool, vol]) => Request::VolRemove {
                path: format!("{pool}/{vol}"),
                recursive: flag("recursive"),
            },
            ("DELETE", ["v1", "snapshots", pool, vol]) => Request::SnapRemove {
                path: format!("{pool}/{vol}"),
            },
            ("GET", ["v1", "diff"]) => Request::VolDiff {
                from: param("from").ok_or_else(|| "from=POOL/VOL@SNAP is missing".to_string())?,
                to: param("to").ok_or_else(|| "to=POOL/VOL@SNAP is missing".to_string())?,
            },
            ("GET", ["v1", "receive", pool, vol]) => Request::ReceiveToken {
                target: format!("{pool}/{vol}"),
            },
            ("DELETE", ["v1", "receive", pool, vol]) => Request::ReceiveAbort {
                target: format!("{pool}/{vol}"),
            },
            ("POST", ["v1", "volumes", pool, vol, "rollback"]) => Request::VolRollback {
                path: format!("{pool}/{vol}"),
            },
            ("POST", ["v1", "volumes", _, _, "import" | "export" | "clone" | "resize"]) => {
                from_body()?
            }
            _ => {
                return Err(RouteError::NoSuchCall(format!(
                    "no such call: {method} {path} (see docs/API.md)"
                )))
            }
        };
        // The path names the call and its object; a body only carries
        // parameters. A body asking for another call (a `pool_destroy`
        // sent to a scrub's path) or another object is refused.
        let canon = req.route();
        let canon_path = canon
            .path
            .split_once('?')
            .map_or(canon.path.as_str(), |(p, _)| p);
        let canon_segs: Option<Vec<String>> = canon_path
            .trim_start_matches('/')
            .split('/')
            .map(decode_component)
            .collect();
        if canon.method != method || canon_segs.as_deref() != Some(&segs_owned[..]) {
            let name = serde_json::to_value(&req)
                .ok()
                .and_then(|v| match v {
                    serde_json::Value::Object(m) => m.keys().next().cloned(),
                    serde_json::Value::String(s) => Some(s),
                    _ => None,
                })
                .unwrap_or_default();
            return Err(RouteError::Invalid(format!(
                "the body asks for '{name}' at {} {canon_path}, not {method} {path}: a body carries the parameters of the call its path names (see docs/API.md)",
                canon.method
            )));
        }
        Ok(req)
    }
}

/// For fuzzing and robustness tests: arbitrary bytes as an HTTP call to
/// the control API (first byte picks the method, then the URL up to a
/// newline, then the body). Must never panic; a call that parses must
/// come back the same through its own route.
pub fn fuzz_http(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let method = ["GET", "POST", "DELETE", "PUT"][(m % 4) as usize];
    let (url, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let url = String::from_utf8_lossy(url);
    if let Ok(req) = Request::from_http(method, &url, body) {
        let r = req.route();
        let body = r
            .body
            .map(|b| serde_json::to_vec(&b).expect("a request serializes"))
            .unwrap_or_default();
        assert_eq!(
            Request::from_http(r.method, &r.path, &body).expect("its own route parses"),
            req
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_survives_its_route() {
        let reqs = vec![
            Request::PoolCreate {
                name: "t".into(),
                raid: RaidLevel::Raid5,
                devices: vec!["/a".into()],
                stripe_unit: 65536,
                force: false,
                checksums: false,
                metadata_size: Some(64 << 20),
            },
            Request::PoolList,
            Request::PoolStatus { name: "t a".into() },
            Request::PoolSet {
                name: "t".into(),
                metadata_size: Some(1 << 30),
                metadata_autogrow: Some(false),
            },
            Request::PoolExport { name: "t".into() },
            Request::PoolImport {
                name: None,
                scan: vec!["/d".into()],
                devices: vec![],
                force: true,
            },
            Request::PoolDestroy {
                name: "t".into(),
                force: true,
            },
            Request::PoolCheck {
                name: "t".into(),
                repair: false,
            },
            Request::PoolAdd {
                name: "t".into(),
                devices: vec!["/d4".into()],
                force: false,
                spare: true,
            },
            Request::PoolRemove {
                name: "t".into(),
                device: "/d2".into(),
            },
            Request::PoolFail {
                name: "t".into(),
                member: "/d2".into(),
            },
            Request::PoolReplace {
                name: "t".into(),
                member: "1".into(),
                device: "/d5".into(),
                force: true,
            },
            Request::PoolClear {
                name: "t".into(),
                member: None,
            },
            Request::PoolScrub {
                name: "t".into(),
                check_only: true,
            },
            Request::JobList,
            Request::PoolIostat { pool: None },
            Request::Events {
                after: 0,
                pool: None,
            },
            Request::Events {
                after: 17,
                pool: Some("t".into()),
            },
            Request::PoolIostat {
                pool: Some("t".into()),
            },
            Request::Mount {
                dir: "/run/vpool/volumes".into(),
            },
            Request::Unmount,
            Request::JobPause { pool: "t".into() },
            Request::JobResume { pool: "t".into() },
            Request::VolCreate {
                path: "t/v".into(),
                size: 4096,
            },
            Request::VolList {
                pool: Some("t".into()),
            },
            Request::VolList { pool: None },
            Request::VolImport {
                path: "t/v".into(),
                from: "/x".into(),
                offset: 0,
            },
            Request::VolExport {
                path: "t/v@s".into(),
                to: "/y".into(),
                force: false,
            },
            Request::VolClone {
                source: "t/v@s".into(),
                target: "t/w".into(),
            },
            Request::VolRollback {
                path: "t/v@s".into(),
            },
            Request::VolResize {
                path: "t/v".into(),
                size: "+1G".into(),
                force: false,
                resize_fs: true,
            },
            Request::VolRemove {
                path: "t/v".into(),
                recursive: true,
            },
            Request::SnapCreate {
                path: "t/v@s".into(),
            },
            Request::SnapList {
                pool: Some("t".into()),
                volume: Some("v".into()),
            },
            Request::SnapRemove {
                path: "t/v@s".into(),
            },
            Request::VolDiff {
                from: "t/v@a".into(),
                to: "t/v@b c".into(),
            },
            Request::ReceiveToken {
                target: "t/v".into(),
            },
            Request::ReceiveAbort {
                target: "t/v".into(),
            },
        ];
        for req in reqs {
            let r = req.route();
            let body = r
                .body
                .map(|b| serde_json::to_vec(&b).unwrap())
                .unwrap_or_default();
            assert_eq!(
                Request::from_http(r.method, &r.path, &body).unwrap(),
                req,
                "{} {}",
                r.method,
                r.path
            );
        }
    }
}
