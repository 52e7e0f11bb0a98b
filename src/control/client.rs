//! The CLI's side of the control API: HTTP/1.1 with JSON over the daemon's
//! unix socket. If no daemon answers, the CLI works on the devices itself.

use super::{hint_for, Request, Response};
use anyhow::{anyhow, bail};
use serde::Deserialize;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("vpool.sock")
}

/// An error the daemon reported.
#[derive(Debug, Deserialize)]
pub struct ApiError {
    pub error: String,
    pub kind: String,
}

#[derive(Debug)]
pub struct DaemonError {
    pub message: String,
    pub kind: String,
}

impl std::fmt::Display for DaemonError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = hint_for(&self.kind) {
            write!(f, "\nhint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DaemonError {}

/// Connect to a running daemon, if there is one.
pub fn connect(state_dir: &Path) -> Option<UnixStream> {
    UnixStream::connect(socket_path(state_dir)).ok()
}

/// Send `req` to the daemon listening in `state_dir`. `None`: no daemon.
pub fn call(state_dir: &Path, req: &Request) -> Option<anyhow::Result<Response>> {
    let stream = connect(state_dir)?;
    Some(exchange(stream, req))
}

fn exchange(mut stream: UnixStream, req: &Request) -> anyhow::Result<Response> {
    let long = matches!(
        req,
        Request::VolImport { .. }
            | Request::VolExport { .. }
            | Request::PoolCheck { .. }
            | Request::PoolScrub { .. }
    );
    stream.set_read_timeout(if long {
        None
    } else {
        Some(Duration::from_secs(300))
    })?;
    let route = req.route();
    let body = route
        .body
        .map(|b| serde_json::to_vec(&b))
        .transpose()?
        .unwrap_or_default();
    let head = format!(
        "{} {} HTTP/1.1\r\nHost: vpool\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        route.method,
        route.path,
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(&body)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let (status, payload) = parse_response(&raw)?;
    if (200..300).contains(&status) {
        return Ok(serde_json::from_slice(&payload)?);
    }
    match serde_json::from_slice::<ApiError>(&payload) {
        Ok(e) => Err(anyhow!(DaemonError {
            message: e.error,
            kind: e.kind
        })),
        Err(_) => bail!(
            "the daemon answered HTTP {status}: {}",
            String::from_utf8_lossy(&payload)
        ),
    }
}

/// Status code and body of an HTTP/1.1 response (Content-Length or chunked).
pub fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed reply from the daemon"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed status line from the daemon"))?;
    let chunked = lines.any(|l| {
        l.to_ascii_lowercase().starts_with("transfer-encoding:")
            && l.to_ascii_lowercase().contains("chunked")
    });
    let body = &raw[split + 4..];
    if !chunked {
        return Ok((status, body.to_vec()));
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let nl = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk"))?;
        let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).trim(), 16)?;
        rest = &rest[nl + 2..];
        if size == 0 {
            break;
        }
        if rest.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    Ok((status, out))
}
