//! The control API: HTTP/1.1 + JSON on a unix socket (mode 0600), versioned
//! under `/v1`. Each call is a [`Request`]; answers are [`Response`] JSON, or
//! `{"error", "kind"}` with a 4xx/5xx status.

use super::engine::DaemonEngine;
use crate::control::{error_kind, execute, Request};
use crate::frontend::http::HttpServer;
use std::path::Path;
use std::sync::Arc;

const MAX_BODY: u64 = 1 << 20;
const WORKERS: usize = 4;

pub struct ApiServer {
    http: HttpServer,
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
        let http = HttpServer::start(
            path,
            "control API",
            WORKERS,
            MAX_BODY,
            Arc::new(move |req, body| handle(&engine, req, body)),
        )?;
        Ok(ApiServer { http })
    }

    pub fn stop(self) {
        self.http.stop();
    }
}

fn handle(engine: &DaemonEngine, req: tiny_http::Request, body: Option<Vec<u8>>) {
    let method = req.method().as_str().to_string();
    let url = req.url().to_string();
    let answer = match body {
        Some(body) => answer(engine, &method, &url, &body),
        None => json_response(
            413,
            &serde_json::json!({"error": "request body too large or unreadable", "kind": "invalid"}),
        ),
    };
    let _ = req.respond(answer);
}

fn answer(
    engine: &DaemonEngine,
    method: &str,
    url: &str,
    body: &[u8],
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let r = match Request::from_http(method, url, body) {
        Err(e) => {
            return json_response(
                e.status(),
                &serde_json::json!({"error": e.to_string(), "kind": "invalid"}),
            )
        }
        Ok(r) => r,
    };
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
