//! TLS for NBD, as the protocol specifies it (`NBD_OPT_STARTTLS`): X.509
//! certificates and pre-shared keys, through OpenSSL (the system library;
//! no cryptography here).
//!
//! The handshake and transmission code work on one plain [`Stream`] that
//! they clone into a reader and a writer, which a TLS session cannot be.
//! So after the TLS handshake a pump thread owns the session and carries
//! bytes between it and one end of a socket pair; the other end becomes the
//! connection's stream. Half-closes pass through both ways, so a server stop
//! (the socket's read side shut down) still lets in-flight replies out.

use super::stream::Stream;
use anyhow::{bail, Context};
use openssl::error::ErrorStack;
use openssl::ex_data::Index;
use openssl::ssl::{
    ErrorCode, HandshakeError, Ssl, SslContext, SslFiletype, SslMethod, SslMode, SslOptions,
    SslStream, SslVerifyMode, SslVersion,
};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where the credentials are, as nbdkit and qemu-nbd take them.
#[derive(Clone, Debug, Default)]
pub struct TlsOptions {
    /// A directory with `server-cert.pem`, `server-key.pem` and
    /// `ca-cert.pem`: the server's certificate, and the authority whose
    /// certificates clients must present.
    pub certificates: Option<PathBuf>,
    /// A GnuTLS `psktool` key file: lines of `IDENTITY:HEXKEY`.
    pub psk_file: Option<PathBuf>,
}

impl TlsOptions {
    pub fn enabled(&self) -> bool {
        self.certificates.is_some() || self.psk_file.is_some()
    }
}

/// A server TLS context.
pub struct Tls {
    ctx: SslContext,
    identity: Index<Ssl, String>,
}

/// The buffered bytes each way, past which the pump stops reading.
const CAP: usize = 1 << 20;
/// A peer that takes no bytes for this long while some wait is dropped.
const STALL: Duration = Duration::from_secs(60);

/// Read a `psktool` key file.
pub fn read_psk_file(path: &Path) -> anyhow::Result<HashMap<String, Vec<u8>>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the PSK file {}", path.display()))?;
    let mut keys = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((id, hex)) = line.split_once(':') else {
            bail!(
                "{} line {}: expected IDENTITY:HEXKEY (as `psktool -u NAME -p FILE` writes)",
                path.display(),
                n + 1
            );
        };
        let key = decode_hex(hex.trim()).with_context(|| {
            format!(
                "{} line {}: the key is not hexadecimal",
                path.display(),
                n + 1
            )
        })?;
        if id.is_empty() || key.is_empty() || key.len() > 256 {
            bail!(
                "{} line {}: an identity and a key of 1 to 256 bytes are needed",
                path.display(),
                n + 1
            );
        }
        keys.insert(id.to_string(), key);
    }
    if keys.is_empty() {
        bail!("{} holds no keys", path.display());
    }
    Ok(keys)
}

fn decode_hex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        bail!("odd length or not ASCII");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("not a hex digit"))
        .collect()
}

impl Tls {
    pub fn new(opts: &TlsOptions) -> anyhow::Result<Tls> {
        if opts.certificates.is_some() && opts.psk_file.is_some() {
            // As qemu-nbd takes one tls-creds object: OpenSSL answers a
            // GnuTLS PSK client with a certificate when both are set.
            bail!("give either --tls-certificates or --tls-psk, not both");
        }
        let mut b = SslContext::builder(SslMethod::tls_server())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_options(
            SslOptions::NO_RENEGOTIATION
                | SslOptions::CIPHER_SERVER_PREFERENCE
                | SslOptions::IGNORE_UNEXPECTED_EOF
                | SslOptions::NO_TICKET,
        );
        // The pump retries a write from a buffer that may have moved and
        // grown (only ever with the same bytes first).
        b.set_mode(SslMode::ACCEPT_MOVING_WRITE_BUFFER | SslMode::ENABLE_PARTIAL_WRITE);
        // TLS 1.2 suites with forward secrecy and AEAD, and the PSK ones.
        b.set_cipher_list("ECDHE+AESGCM:ECDHE+CHACHA20:DHEPSK+AESGCM:ECDHEPSK:PSK+AESGCM")?;
        let identity = Ssl::new_ex_index::<String>()?;
        if let Some(dir) = &opts.certificates {
            let file = |name: &str| {
                let p = dir.join(name);
                if p.is_file() {
                    Ok(p)
                } else {
                    Err(anyhow::anyhow!(
                        "{} is missing: --tls-certificates wants server-cert.pem, server-key.pem \
                         and ca-cert.pem (the authority that signs the clients' certificates)",
                        p.display()
                    ))
                }
            };
            let (cert, key, ca) = (
                file("server-cert.pem")?,
                file("server-key.pem")?,
                file("ca-cert.pem")?,
            );
            warn_if_readable(&key);
            b.set_certificate_chain_file(&cert)
                .with_context(|| format!("loading {}", cert.display()))?;
            b.set_private_key_file(&key, SslFiletype::PEM)
                .with_context(|| format!("loading {}", key.display()))?;
            b.check_private_key()
                .with_context(|| format!("{} does not match {}", key.display(), cert.display()))?;
            b.set_ca_file(&ca)
                .with_context(|| format!("loading {}", ca.display()))?;
            // Clients prove who they are, as with qemu-nbd's verify-peer=on.
            b.set_verify(SslVerifyMode::PEER | SslVerifyMode::FAIL_IF_NO_PEER_CERT);
        }
        if let Some(path) = &opts.psk_file {
            warn_if_readable(path);
            let keys = read_psk_file(path)?;
            b.set_psk_server_callback(move |ssl, id, out| {
                let id = String::from_utf8_lossy(id.unwrap_or_default()).into_owned();
                match keys.get(&id) {
                    Some(k) if k.len() <= out.len() => {
                        out[..k.len()].copy_from_slice(k);
                        ssl.set_ex_data(identity, id);
                        Ok(k.len())
                    }
                    _ => {
                        tracing::warn!("nbd: TLS client with unknown PSK identity '{id}'");
                        Ok(0)
                    }
                }
            });
        }
        if !opts.enabled() {
            bail!("TLS needs --tls-certificates DIR or --tls-psk FILE");
        }
        Ok(Tls {
            ctx: b.build(),
            identity,
        })
    }

    /// Run the TLS handshake on `stream` (the client has just been told yes
    /// to STARTTLS) and start the pump. Returns the plain stream the rest of
    /// the connection uses, and who the client proved to be.
    pub fn upgrade(&self, stream: Box<dyn Stream>) -> io::Result<(Box<dyn Stream>, String)> {
        let ssl = Ssl::new(&self.ctx).map_err(stack_error)?;
        let tls = ssl.accept(stream).map_err(|e| {
            let why = match e {
                HandshakeError::SetupFailure(s) => s.to_string(),
                HandshakeError::Failure(m) => m.error().to_string(),
                HandshakeError::WouldBlock(_) => "timed out".to_string(),
            };
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("TLS handshake failed: {why}"),
            )
        })?;
        let who = if let Some(id) = tls.ssl().ex_data(self.identity) {
            format!("PSK identity '{id}'")
        } else if let Some(cert) = tls.ssl().peer_certificate() {
            let subject: Vec<String> = cert
                .subject_name()
                .entries()
                .filter_map(|e| e.data().to_string().ok())
                .collect();
            format!("certificate '{}'", subject.join(","))
        } else {
            "no identity".to_string()
        };
        let version = tls.ssl().version_str().to_string();
        let (inner, outer) = UnixStream::pair()?;
        std::thread::Builder::new()
            .name("nbd-tls".into())
            .spawn(move || {
                if let Err(e) = pump(tls, outer) {
                    tracing::info!("nbd: TLS session ended: {e}");
                }
            })?;
        Ok((Box::new(inner), format!("{version}, {who}")))
    }
}

fn stack_error(e: ErrorStack) -> io::Error {
    io::Error::other(e.to_string())
}

/// Keys readable by others are keys others have.
fn warn_if_readable(path: &Path) {
    if let Ok(m) = std::fs::metadata(path) {
        if m.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "{} can be read by other users: anyone who reads it can reach the volumes \
                 (chmod 600 it)",
                path.display()
            );
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Carry bytes between the TLS session and the plain end until both sides
/// are done.
fn pump(mut tls: SslStream<Box<dyn Stream>>, plain: UnixStream) -> io::Result<()> {
    tls.get_ref().set_nonblocking(true)?;
    plain.set_nonblocking(true)?;
    let tls_fd = tls.get_ref().fd();
    let plain_fd = plain.as_raw_fd();
    let mut down: Vec<u8> = Vec::new(); // client → server
    let mut up: Vec<u8> = Vec::new(); // server → client
    let (mut tls_eof, mut plain_eof, mut told_eof) = (false, false, false);
    let mut buf = vec![0u8; 64 << 10];
    let mut last_progress = Instant::now();
    let result = loop {
        let mut progress = false;
        let (mut tls_wants_read, mut tls_wants_write) = (false, false);
        if !tls_eof && down.len() < CAP {
            match tls.ssl_read(&mut buf) {
                Ok(n) => {
                    down.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Err(e) => match e.code() {
                    ErrorCode::WANT_READ => tls_wants_read = true,
                    ErrorCode::WANT_WRITE => tls_wants_write = true,
                    ErrorCode::ZERO_RETURN => tls_eof = true,
                    ErrorCode::SYSCALL if e.io_error().is_none() => tls_eof = true,
                    _ => break Err(io::Error::other(format!("reading: {e}"))),
                },
            }
        }
        if !down.is_empty() {
            match (&plain).write(&down) {
                Ok(n) => {
                    down.drain(..n);
                    progress = true;
                }
                Err(e) if would_block(&e) => {}
                Err(e) => break Err(e),
            }
        }
        if tls_eof && down.is_empty() && !told_eof {
            let _ = plain.shutdown(Shutdown::Write);
            told_eof = true;
        }
        if !plain_eof && up.len() < CAP {
            match (&plain).read(&mut buf) {
                Ok(0) => plain_eof = true,
                Ok(n) => {
                    up.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => plain_eof = true,
            }
        }
        if !up.is_empty() {
            match tls.ssl_write(&up) {
                Ok(n) => {
                    up.drain(..n);
                    progress = true;
                }
                Err(e) => match e.code() {
                    ErrorCode::WANT_READ => tls_wants_read = true,
                    ErrorCode::WANT_WRITE => tls_wants_write = true,
                    _ => break Err(io::Error::other(format!("writing: {e}"))),
                },
            }
        }
        if plain_eof && up.is_empty() {
            break Ok(());
        }
        if progress {
            last_progress = Instant::now();
            continue;
        }
        let mut tls_events = 0;
        if tls_wants_read || (!tls_eof && down.len() < CAP) {
            tls_events |= libc::POLLIN;
        }
        if tls_wants_write {
            tls_events |= libc::POLLOUT;
        }
        let mut plain_events = 0;
        if !plain_eof && up.len() < CAP {
            plain_events |= libc::POLLIN;
        }
        if !down.is_empty() {
            plain_events |= libc::POLLOUT;
        }
        let ready = super::stream::wait(
            &[(tls_fd, tls_events), (plain_fd, plain_events)],
            Duration::from_secs(1),
        )?;
        let waiting = !up.is_empty() || !down.is_empty();
        if !ready && waiting && last_progress.elapsed() > STALL {
            break Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer took no bytes for a minute",
            ));
        }
    };
    let _ = tls.shutdown();
    tls.get_ref().shutdown(Shutdown::Both);
    let _ = plain.shutdown(Shutdown::Both);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn psk_files_as_psktool_writes_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("keys.psk");
        std::fs::write(&p, "alice:00ff10\n\n# comment\nbob:abcdef0123\n").unwrap();
        let keys = read_psk_file(&p).unwrap();
        assert_eq!(keys["alice"], vec![0, 0xff, 0x10]);
        assert_eq!(keys["bob"].len(), 5);
        for bad in ["alice", "alice:0g", "alice:abc", ":00", "alice:"] {
            std::fs::write(&p, bad).unwrap();
            assert!(read_psk_file(&p).is_err(), "{bad} is refused");
        }
    }
}
