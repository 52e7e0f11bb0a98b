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

/// The head of an HTTP response, read byte by byte (the body follows on
/// the same reader): status and whether the body is chunked.
fn read_head(r: &mut impl std::io::BufRead) -> anyhow::Result<(u16, bool, Option<usize>)> {
    let mut status = None;
    let (mut chunked, mut length) = (false, None);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("the daemon closed the connection without an answer");
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if status.is_none() {
            status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
            if status.is_none() {
                bail!("malformed status line from the daemon");
            }
        } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
            chunked = true;
        } else if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().ok();
        }
    }
    Ok((status.unwrap_or(500), chunked, length))
}

/// A non-2xx answer as the error it carries.
fn error_from(status: u16, payload: &[u8]) -> anyhow::Error {
    match serde_json::from_slice::<ApiError>(payload) {
        Ok(e) => anyhow!(DaemonError {
            message: e.error,
            kind: e.kind
        }),
        Err(_) => anyhow!(
            "the daemon answered HTTP {status}: {}",
            String::from_utf8_lossy(payload)
        ),
    }
}

/// Call a streaming route: the JSON `body` goes up, and a 200 answer's
/// body is handed to `consume` as it arrives. `None`: no daemon.
pub fn call_streaming(
    state_dir: &Path,
    path: &str,
    body: &serde_json::Value,
    consume: &mut dyn FnMut(&mut dyn Read) -> anyhow::Result<()>,
) -> Option<anyhow::Result<()>> {
    let mut stream = connect(state_dir)?;
    Some((|| {
        let body = serde_json::to_vec(body)?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: vpool\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(&body)?;
        let mut r = std::io::BufReader::with_capacity(1 << 20, stream);
        let (status, chunked, length) = read_head(&mut r)?;
        let mut body: Box<dyn Read> = match (chunked, length) {
            (true, _) => Box::new(chunked_transfer::Decoder::new(r)),
            (false, Some(n)) => Box::new(r.take(n as u64)),
            (false, None) => Box::new(r),
        };
        if !(200..300).contains(&status) {
            let mut payload = Vec::new();
            body.take(1 << 20).read_to_end(&mut payload)?;
            return Err(error_from(status, &payload));
        }
        consume(&mut body)
    })())
}

/// Call a route whose request body is a stream: `produce` writes it (sent
/// chunked); the JSON answer comes back. `None`: no daemon. If the daemon
/// answers before taking the whole body (it refused the stream), its
/// answer is what is returned.
pub fn call_upload(
    state_dir: &Path,
    path: &str,
    produce: &mut dyn FnMut(&mut dyn Write) -> anyhow::Result<()>,
) -> Option<anyhow::Result<Response>> {
    let stream = connect(state_dir)?;
    Some((|| {
        let mut w = stream.try_clone()?;
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: vpool\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        );
        w.write_all(head.as_bytes())?;
        let sent = {
            let mut enc = std::io::BufWriter::with_capacity(1 << 20, Chunked(&mut w));
            produce(&mut enc).and_then(|()| Ok(enc.flush()?))
        };
        // The last chunk only after a whole body: a body cut short (the
        // input failed) must reach the daemon as cut, not as complete.
        let sent = sent.and_then(|()| Ok(w.write_all(b"0\r\n\r\n")?));
        let _ = w.shutdown(std::net::Shutdown::Write);
        let mut raw = Vec::new();
        let read = (&stream).read_to_end(&mut raw);
        // A daemon that refused the stream closed with some of it unread:
        // its answer comes first, then ECONNRESET.
        match (read, sent) {
            (_, sent) if !raw.is_empty() => {
                let (status, payload) = parse_response(&raw)?;
                if (200..300).contains(&status) {
                    sent?;
                    return Ok(serde_json::from_slice(&payload)?);
                }
                Err(error_from(status, &payload))
            }
            (_, Err(e)) => Err(e),
            (Err(e), Ok(())) => Err(e.into()),
            (Ok(_), Ok(())) => bail!("the daemon closed the connection without an answer"),
        }
    })())
}

/// HTTP/1.1 chunked coding of a body (a request's here, a streamed answer's
/// in the daemon): each write is a chunk (a `BufWriter` in front makes them
/// large); the caller writes the last, empty chunk when the body is
/// complete, and only then.
pub struct Chunked<W: Write>(pub W);

impl<W: Write> Write for Chunked<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if !buf.is_empty() {
            self.0
                .write_all(format!("{:x}\r\n", buf.len()).as_bytes())?;
            self.0.write_all(buf)?;
            self.0.write_all(b"\r\n")?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}
