//! The control API: HTTP/1.1 + JSON on a unix socket (mode 0600), versioned
//! under `/v1`. Each call is a [`Request`]; answers are [`Response`] JSON, or
//! `{"error", "kind"}` with a 4xx/5xx status.

use super::engine::DaemonEngine;
use crate::control::client::Chunked;
use crate::control::decode_component;
use crate::control::receive::ReceiveOpts;
use crate::control::send::SendSpec;
use crate::control::{error_kind, execute, Request};
use crate::frontend::http::{HttpServer, Streams};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

const MAX_BODY: u64 = 1 << 20;
const WORKERS: usize = 4;
/// Sends and receives at once.
const MAX_STREAMS: usize = 16;

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
        let streams = Streams {
            matches: is_stream,
            handler: {
                let engine = engine.clone();
                Arc::new(move |req| stream(&engine, req))
            },
            max: MAX_STREAMS,
        };
        let http = HttpServer::start_with_streams(
            path,
            "control API",
            WORKERS,
            MAX_BODY,
            Arc::new(move |req, body| handle(&engine, req, body)),
            streams,
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

/// `POST /v1/send` (answer: the stream) and `POST /v1/receive?target=...`
/// (body: the stream).
fn is_stream(method: &str, url: &str) -> bool {
    let path = url.split_once('?').map_or(url, |(p, _)| p);
    method == "POST" && (path == "/v1/send" || path == "/v1/receive")
}

fn error_json(e: &anyhow::Error) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let kind = error_kind(e);
    json_response(
        status_for(kind),
        &serde_json::json!({"error": format!("{e:#}"), "kind": kind}),
    )
}

fn stream(engine: &Arc<DaemonEngine>, req: tiny_http::Request) {
    if req.url().starts_with("/v1/send") {
        send(engine, req)
    } else {
        receive(engine, req)
    }
}

fn send(engine: &Arc<DaemonEngine>, mut req: tiny_http::Request) {
    let mut body = Vec::new();
    let read = req.as_reader().take(MAX_BODY + 1).read_to_end(&mut body);
    let spec: anyhow::Result<SendSpec> = match read {
        Ok(_) if body.len() as u64 <= MAX_BODY => serde_json::from_slice(&body)
            .map_err(|e| anyhow::anyhow!(crate::Error::Invalid(format!("request body: {e}")))),
        _ => Err(anyhow::anyhow!(crate::Error::Invalid(
            "request body too large or unreadable".into()
        ))),
    };
    let spec = match spec.and_then(|s| crate::control::send::check(&**engine, &s).map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            tracing::info!("POST /v1/send: {e:#}");
            let _ = req.respond(error_json(&e));
            return;
        }
    };
    // The stream is written here, on this call's own thread, straight to
    // the socket in 1 MiB chunks (tiny_http's own answer path copies 8 KiB
    // at a time through a 1 KiB buffer: a fifth of the speed).
    let mut sock = req.into_writer();
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if sock.write_all(head.as_bytes()).is_err() {
        return;
    }
    let sent = {
        let mut body = std::io::BufWriter::with_capacity(1 << 20, Chunked(&mut sock));
        let r = crate::control::send::send(&**engine, &spec, &mut body);
        r.and_then(|m| body.flush().map(|()| m).map_err(anyhow::Error::from))
    };
    match sent {
        Ok(m) => {
            // The last chunk only after a whole stream (a failed one ends
            // with its ERROR record, then the connection closes).
            let _ = sock.write_all(b"0\r\n\r\n").and_then(|()| sock.flush());
            tracing::info!("POST /v1/send: {m}");
        }
        Err(e) => tracing::warn!("POST /v1/send: {e:#}"),
    }
}

fn receive(engine: &Arc<DaemonEngine>, mut req: tiny_http::Request) {
    let url = req.url().to_string();
    let q = url.split_once('?').map_or("", |(_, q)| q);
    let mut opts = ReceiveOpts::default();
    for (k, v) in q.split('&').filter_map(|p| p.split_once('=')) {
        let v = decode_component(v).unwrap_or_default();
        match k {
            "target" => opts.target = v,
            "resume" => opts.resume = v == "true" || v == "1",
            "force" => opts.force = v == "true" || v == "1",
            _ => {}
        }
    }
    let answer = crate::control::receive::receive(&**engine, &opts, req.as_reader());
    let answer = match answer {
        Ok(resp) => {
            tracing::info!(
                "POST /v1/receive: {}",
                resp.message.clone().unwrap_or_default()
            );
            json_response(200, &serde_json::to_value(resp).unwrap_or_default())
        }
        Err(e) => {
            tracing::info!("POST /v1/receive: {e:#}");
            error_json(&e)
        }
    };
    let _ = req.respond(answer);
}
