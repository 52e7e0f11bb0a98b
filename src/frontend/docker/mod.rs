//! Docker's (and Podman's) legacy volume plugin protocol: HTTP POST with
//! JSON bodies on a unix socket. Docker finds the plugin by the socket's
//! name under `/run/docker/plugins/` (`vpool.sock` is driver `vpool`).
//! Every answer is JSON; a failure is HTTP 500 with `{"Err": message}`,
//! which Docker shows to the user as it is.

mod driver;
mod registry;

pub use driver::{Driver, DriverConfig};

use super::http::HttpServer;
use anyhow::Context;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const MAX_BODY: u64 = 1 << 20;
const WORKERS: usize = 4;
const CONTENT_TYPE: &[u8] = b"application/vnd.docker.plugins.v1.2+json";

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct Call {
    #[serde(default)]
    name: String,
    #[serde(default)]
    opts: Option<BTreeMap<String, String>>,
    #[serde(default, rename = "ID")]
    id: String,
}

pub struct PluginServer {
    http: HttpServer,
    driver: Arc<Driver>,
    socket: PathBuf,
}

impl PluginServer {
    pub fn start(socket: &Path, driver: Driver) -> anyhow::Result<PluginServer> {
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let driver = Arc::new(driver);
        let d = driver.clone();
        // Docker (root) is its one client: the socket is owner only.
        let http = HttpServer::start(
            socket,
            "volume plugin",
            WORKERS,
            MAX_BODY,
            Arc::new(move |req, body| handle(&d, req, body)),
        )?;
        Ok(PluginServer {
            http,
            driver,
            socket: socket.to_path_buf(),
        })
    }

    /// Stop answering, unmount every volume, remove the socket.
    pub fn stop(self) {
        self.http.stop();
        self.driver.shutdown();
        let _ = std::fs::remove_file(&self.socket);
    }
}

fn respond(req: tiny_http::Request, status: u16, body: &Value) {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut r = tiny_http::Response::from_data(bytes).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE) {
        r.add_header(h);
    }
    let _ = req.respond(r);
}

fn handle(driver: &Driver, req: tiny_http::Request, body: Option<Vec<u8>>) {
    let url = req.url().to_string();
    let Some(body) = body else {
        return respond(
            req,
            400,
            &json!({"Err": "request body too large or unreadable"}),
        );
    };
    let call: Call = if body.iter().all(|b| b.is_ascii_whitespace()) {
        Call::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(c) => c,
            Err(e) => return respond(req, 400, &json!({"Err": format!("bad JSON: {e}")})),
        }
    };
    let method = url.trim_start_matches('/');
    let answer = dispatch(driver, method, call);
    match answer {
        Ok(Some(v)) => respond(req, 200, &v),
        Ok(None) => respond(
            req,
            404,
            &json!({"Err": format!("vpool's volume plugin has no call '{method}'")}),
        ),
        Err(e) => {
            tracing::info!("{method}: {e:#}");
            respond(req, 500, &json!({"Err": format!("{e:#}")}))
        }
    }
}

/// For fuzzing and robustness tests: arbitrary bytes as a plugin call's
/// body, decoded as the workers decode it, and its name mapped as `Create`
/// maps it (without a pool). Must never panic.
pub fn fuzz_body(data: &[u8]) {
    let Ok(call) = serde_json::from_slice::<Call>(data) else {
        return;
    };
    if let Ok(name) = registry::volume_name(&call.name) {
        assert!(
            crate::pool::names::validate("volume", &name).is_ok(),
            "a Docker name maps to a valid volume name: {name:?}"
        );
    }
}

fn need_name(c: &Call) -> anyhow::Result<&str> {
    if c.name.is_empty() {
        anyhow::bail!(crate::Error::Invalid("the call names no volume".into()));
    }
    Ok(&c.name)
}

fn view_json(v: driver::VolumeView) -> Value {
    json!({
        "Name": v.name,
        "Mountpoint": v.mountpoint.map(|p| p.display().to_string()).unwrap_or_default(),
        "CreatedAt": crate::units::rfc3339(v.created),
        "Status": v.status,
    })
}

/// One plugin call; `None` for a call the protocol does not have.
fn dispatch(driver: &Driver, method: &str, c: Call) -> anyhow::Result<Option<Value>> {
    let path_json = |p: Option<PathBuf>| json!({"Mountpoint": p.map(|p| p.display().to_string()).unwrap_or_default(), "Err": ""});
    Ok(Some(match method {
        "Plugin.Activate" => json!({"Implements": ["VolumeDriver"]}),
        "VolumeDriver.Capabilities" => json!({"Capabilities": {"Scope": "local"}}),
        "VolumeDriver.Create" => {
            driver.create(need_name(&c)?, &c.opts.clone().unwrap_or_default())?;
            tracing::info!("Create {}", c.name);
            json!({"Err": ""})
        }
        "VolumeDriver.Remove" => {
            driver.remove(need_name(&c)?)?;
            json!({"Err": ""})
        }
        "VolumeDriver.Mount" => {
            let p = driver.mount(need_name(&c)?, &c.id)?;
            tracing::info!("Mount {} for {}", c.name, c.id);
            path_json(Some(p))
        }
        "VolumeDriver.Unmount" => {
            driver.unmount(need_name(&c)?, &c.id)?;
            tracing::info!("Unmount {} for {}", c.name, c.id);
            json!({"Err": ""})
        }
        "VolumeDriver.Path" => path_json(driver.path(need_name(&c)?)?),
        "VolumeDriver.Get" => json!({"Volume": view_json(driver.get(need_name(&c)?)?), "Err": ""}),
        "VolumeDriver.List" => {
            let vols: Vec<Value> = driver.list().into_iter().map(view_json).collect();
            json!({"Volumes": vols, "Err": ""})
        }
        _ => return Ok(None),
    }))
}
