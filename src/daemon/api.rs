//! The control API: HTTP/1.1 + JSON on a unix socket (mode 0600), versioned
//! under `/v1`. Each call is a [`Request`]; answers are [`Response`] JSON, or
//! `{"error", "kind"}` with a 4xx/5xx status.

use super::engine::DaemonEngine;
use crate::control::{error_kind, execute, Request};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const MAX_BODY: u64 = 1 << 20;
const WORKERS: usize = 4;

pub struct ApiServer {
    server: Arc<tiny_http::Server>,
    threads: Vec<JoinHandle<()>>,
    stopping: Arc<AtomicBool>,
}

fn status_for(kind: &str) -> u16 {
    match kind {
        "not_found" => 404,
        "exists" | "in_use" => 409,
        "no_space" => 507,
        "read_only" => 403,
        "corrupt" | "io" | "unavailable" => 500,
        _ => 400,
    }
}

fn json_response(
    status: u16,
    body: &serde_json::Value,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let bytes = serde_json::to_vec_pretty(body).unwrap_or_default();
    let mut r = tiny_http::Response::from_data(bytes).with_status_code(status);
    if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]) {
        r.add_header(h);
    }
    r
}

impl ApiServer {
    pub fn start(path: &Path, engine: Arc<DaemonEngine>) -> anyhow::Result<ApiServer> {
        let server = Arc::new(
            tiny_http::Server::http_unix(path)
                .map_err(|e| anyhow::anyhow!("control socket {}: {e}", path.display()))?,
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let threads = (0..WORKERS)
            .map(|_| {
                let server = server.clone();
                let engine = engine.clone();
                let stopping = stopping.clone();
                std::thread::spawn(move || {
                    while !stopping.load(Ordering::Relaxed) {
                        match server.recv_timeout(Duration::from_millis(200)) {
                            Ok(Some(req)) => {
                                crate::frontend::guarded("control API", || handle(&engine, req))
                            }
                            Ok(None) => {}
                            Err(_) => break,
                        }
                    }
                })
            })
            .collect();
        Ok(ApiServer {
            server,
            threads,
            stopping,
        })
    }

    pub fn stop(self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.server.unblock();
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn handle(engine: &DaemonEngine, mut req: tiny_http::Request) {
    let method = req.method().as_str().to_string();
    let url = req.url().to_string();
    let mut body = Vec::new();
    let read = req.as_reader().take(MAX_BODY + 1).read_to_end(&mut body);
    let answer = if read.is_err() || body.len() as u64 > MAX_BODY {
        json_response(
            413,
            &serde_json::json!({"error": "request body too large or unreadable", "kind": "invalid"}),
        )
    } else {
        match Request::from_http(&method, &url, &body) {
            Err(e) => json_response(
                e.status(),
                &serde_json::json!({"error": e.to_string(), "kind": "invalid"}),
            ),
            Ok(r) => {
                let mutates = r.mutates();
                match execute(engine, r) {
                    Ok(resp) => {
                        if mutates {
                            tracing::info!(
                                "{method} {url}: {}",
                                resp.message.clone().unwrap_or_default()
                            );
                        }
                        json_response(200, &serde_json::to_value(resp).unwrap_or_default())
                    }
                    Err(e) => {
                        let kind = error_kind(&e);
                        tracing::info!("{method} {url}: {e:#}");
                        json_response(
                            status_for(kind),
                            &serde_json::json!({"error": format!("{e:#}"), "kind": kind}),
                        )
                    }
                }
            }
        }
    };
    let _ = req.respond(answer);
}
