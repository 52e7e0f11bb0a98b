//! `vpool daemon --metrics-listen ADDR`: `GET /metrics` in Prometheus'
//! text format (see `control::metrics`), on TCP for a Prometheus server to
//! scrape, as node_exporter serves. Read-only and unauthenticated, like
//! node_exporter: it tells pool and volume names and I/O rates, never
//! data. Anything else is 404; request bodies are refused.

use super::engine::DaemonEngine;
use crate::control::metrics::{render, Snapshot};
use crate::frontend::http::HttpServer;
use crate::frontend::nbd::NbdServer;
use std::net::SocketAddr;
use std::sync::Arc;

pub struct MetricsServer(HttpServer);

impl MetricsServer {
    pub fn start(
        addr: SocketAddr,
        engine: Arc<DaemonEngine>,
        nbd: Arc<NbdServer>,
    ) -> anyhow::Result<MetricsServer> {
        let handler = move |req: tiny_http::Request, _body: Option<Vec<u8>>| {
            let (status, text) = match (req.method(), req.url()) {
                (tiny_http::Method::Get, "/metrics") => (200, scrape(&engine, &nbd)),
                _ => (404, "only GET /metrics is served here\n".to_string()),
            };
            let mut r = tiny_http::Response::from_data(text.into_bytes()).with_status_code(status);
            let kind = &b"text/plain; version=0.0.4; charset=utf-8"[..];
            if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], kind) {
                r = r.with_header(h);
            }
            let _ = req.respond(r);
        };
        let server = HttpServer::start_tcp(addr, "metrics", 2, 0, Arc::new(handler))?;
        Ok(MetricsServer(server))
    }

    /// The port it listens on.
    pub fn port(&self) -> Option<u16> {
        self.0.local_port()
    }

    pub fn stop(self) {
        self.0.stop();
    }
}

fn scrape(engine: &DaemonEngine, nbd: &NbdServer) -> String {
    let pools = (engine.all().into_iter())
        .map(|(_, p)| (p.info(), p.iostat()))
        .collect();
    render(&Snapshot {
        pools,
        connections: vec![
            ("nbd", nbd.connections() as u64),
            ("fuse", engine.fuse_open_files() as u64),
        ],
    })
}
