//! The fixed-newstyle handshake and option haggling. Ends with an export
//! chosen (GO or EXPORT_NAME) or the connection closed.

use super::proto::*;
use super::Exports;
use crate::Volume;
use std::io;

/// Where the handshake stands with TLS.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TlsState {
    /// Not offered on this socket: STARTTLS is refused.
    Off,
    /// Required: every option but STARTTLS and ABORT is refused until the
    /// client has started TLS.
    Required,
    /// Started. The greeting was sent before it; the client's flags stand.
    Active { no_zeroes: bool },
}

/// How a handshake ended.
pub enum Outcome {
    /// An export was chosen.
    Serve(Negotiated),
    /// The client left (ABORT, or no export).
    Closed,
    /// STARTTLS was accepted: run the TLS handshake, then negotiate again
    /// with `TlsState::Active` (nothing negotiated before it carries over).
    StartTls { no_zeroes: bool },
}

/// What the client negotiated.
pub struct Negotiated {
    pub volume: Volume,
    pub structured: bool,
    pub allocation_context: bool,
}

fn reply(s: &mut Vec<u8>, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    s.extend_from_slice(&option_reply(option, kind, data.len() as u32));
    s.extend_from_slice(data);
    Ok(())
}

pub(super) fn error_reply(
    s: &mut Vec<u8>,
    option: u32,
    kind: u32,
    message: &str,
) -> io::Result<()> {
    reply(s, option, kind, message.as_bytes())
}

fn bad(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.to_string())
}

/// Transmission flags for an export.
pub fn transmission_flags(read_only: bool) -> u16 {
    let mut f = TF_HAS_FLAGS | TF_SEND_FLUSH | TF_SEND_FUA | TF_SEND_DF | TF_CAN_MULTI_CONN;
    if read_only {
        f |= TF_READ_ONLY;
    } else {
        f |= TF_SEND_TRIM | TF_SEND_WRITE_ZEROES | TF_SEND_FAST_ZERO;
    }
    f
}

fn export_info(v: &Volume) -> io::Result<(u64, u16)> {
    let size = v.size().map_err(|e| io::Error::other(e.to_string()))?;
    Ok((size, transmission_flags(v.is_read_only())))
}

/// The server's greeting, the first bytes on every connection.
pub fn greeting() -> Vec<u8> {
    let mut hello = Vec::with_capacity(18);
    hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
    hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
    hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    hello
}

/// One connection's handshake, fed one whole message at a time (the
/// reactor frames them; a worker answers each option).
pub struct Handshake {
    tls: TlsState,
    no_zeroes: bool,
    structured: bool,
    allocation_context: bool,
}

impl Handshake {
    /// A handshake at its start (after STARTTLS: `TlsState::Active`,
    /// which carries the client's flags).
    pub fn new(tls: TlsState) -> Handshake {
        let no_zeroes = match tls {
            TlsState::Active { no_zeroes } => no_zeroes,
            _ => false,
        };
        Handshake {
            tls,
            no_zeroes,
            structured: false,
            allocation_context: false,
        }
    }

    /// The client's flags, the 4 bytes after the greeting.
    pub fn client_flags(&mut self, client_flags: u32) -> io::Result<()> {
        if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(bad("unknown client flags"));
        }
        self.no_zeroes = client_flags & FLAG_C_NO_ZEROES != 0;
        Ok(())
    }

    /// Answer one option into `s`: `None` while the haggling goes on.
    pub fn option(
        &mut self,
        option: u32,
        data: Vec<u8>,
        exports: &dyn Exports,
        s: &mut Vec<u8>,
    ) -> io::Result<Option<Outcome>> {
        let (tls, no_zeroes) = (self.tls, self.no_zeroes);
        let structured = &mut self.structured;
        let allocation_context = &mut self.allocation_context;
        if tls == TlsState::Required && !matches!(option, OPT_STARTTLS | OPT_ABORT) {
            if option == OPT_EXPORT_NAME {
                return Ok(Some(Outcome::Closed)); // no error reply exists for it
            }
            error_reply(
                s,
                option,
                REP_ERR_TLS_REQD,
                "TLS is required here (qemu: --object tls-creds-psk/x509; libnbd: nbds:// or tls=require)",
            )?;
            return Ok(None);
        }
        match option {
            OPT_STARTTLS => {
                let (kind, why) = match tls {
                    TlsState::Off => (REP_ERR_POLICY, "TLS is not offered on this socket"),
                    TlsState::Active { .. } => (REP_ERR_INVALID, "TLS is already started"),
                    TlsState::Required if !data.is_empty() => {
                        (REP_ERR_INVALID, "STARTTLS takes no data")
                    }
                    TlsState::Required => {
                        reply(s, option, REP_ACK, &[])?;
                        return Ok(Some(Outcome::StartTls { no_zeroes }));
                    }
                };
                error_reply(s, option, kind, why)?;
            }
            OPT_EXPORT_NAME => {
                let Some(v) = String::from_utf8(data).ok().and_then(|n| exports.open(&n)) else {
                    return Ok(Some(Outcome::Closed)); // the protocol's only answer: hang up
                };
                let (size, flags) = export_info(&v)?;
                let mut msg = size.to_be_bytes().to_vec();
                msg.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    msg.extend_from_slice(&[0u8; 124]);
                }
                s.extend_from_slice(&msg);
                return Ok(Some(Outcome::Serve(Negotiated {
                    volume: v,
                    structured: *structured,
                    allocation_context: *allocation_context,
                })));
            }
            OPT_ABORT => {
                let _ = reply(s, option, REP_ACK, &[]);
                return Ok(Some(Outcome::Closed));
            }
            OPT_LIST => {
                if !data.is_empty() {
                    error_reply(s, option, REP_ERR_INVALID, "LIST takes no data")?;
                    return Ok(None);
                }
                for name in exports.list() {
                    let mut d = (name.len() as u32).to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    reply(s, option, REP_SERVER, &d)?;
                }
                reply(s, option, REP_ACK, &[])?;
            }
            OPT_INFO | OPT_GO => {
                let Some((name, infos)) = parse_info_request(&data) else {
                    error_reply(s, option, REP_ERR_INVALID, "malformed INFO/GO request")?;
                    return Ok(None);
                };
                let Some(v) = exports.open(&name) else {
                    error_reply(
                        s,
                        option,
                        REP_ERR_UNKNOWN,
                        &format!("no export named '{name}' (names are POOL/VOLUME[@SNAPSHOT])"),
                    )?;
                    return Ok(None);
                };
                let (size, flags) = export_info(&v)?;
                let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                d.extend_from_slice(&size.to_be_bytes());
                d.extend_from_slice(&flags.to_be_bytes());
                reply(s, option, REP_INFO, &d)?;
                let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                d.extend_from_slice(&1u32.to_be_bytes());
                d.extend_from_slice(&4096u32.to_be_bytes());
                d.extend_from_slice(&MAX_PAYLOAD.to_be_bytes());
                reply(s, option, REP_INFO, &d)?;
                if infos.contains(&INFO_NAME) {
                    let mut d = INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(name.as_bytes());
                    reply(s, option, REP_INFO, &d)?;
                }
                if infos.contains(&INFO_DESCRIPTION) {
                    let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                    d.extend_from_slice(format!("vpool volume {}", v.name()).as_bytes());
                    reply(s, option, REP_INFO, &d)?;
                }
                reply(s, option, REP_ACK, &[])?;
                if option == OPT_GO {
                    return Ok(Some(Outcome::Serve(Negotiated {
                        volume: v,
                        structured: *structured,
                        allocation_context: *allocation_context,
                    })));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    error_reply(s, option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")?;
                    return Ok(None);
                }
                *structured = true;
                reply(s, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if !*structured {
                    error_reply(
                        s,
                        option,
                        REP_ERR_INVALID,
                        "negotiate structured replies first",
                    )?;
                    return Ok(None);
                }
                let Some((name, queries)) = parse_meta_request(&data) else {
                    error_reply(s, option, REP_ERR_INVALID, "malformed meta context request")?;
                    return Ok(None);
                };
                if exports.open(&name).is_none() {
                    error_reply(
                        s,
                        option,
                        REP_ERR_UNKNOWN,
                        &format!("no export named '{name}'"),
                    )?;
                    return Ok(None);
                }
                let set = option == OPT_SET_META_CONTEXT;
                let wanted = if set {
                    queries.iter().any(|q| q == META_CONTEXT_ALLOCATION)
                } else {
                    queries.is_empty()
                        || queries
                            .iter()
                            .any(|q| q == "base:" || q == META_CONTEXT_ALLOCATION)
                };
                if set {
                    *allocation_context = wanted;
                }
                if wanted {
                    let id = if set { ALLOCATION_CONTEXT_ID } else { 0 };
                    let mut d = id.to_be_bytes().to_vec();
                    d.extend_from_slice(META_CONTEXT_ALLOCATION.as_bytes());
                    reply(s, option, REP_META_CONTEXT, &d)?;
                }
                reply(s, option, REP_ACK, &[])?;
            }
            _ => error_reply(s, option, REP_ERR_UNSUP, "option not supported")?,
        }
        Ok(None)
    }
}
