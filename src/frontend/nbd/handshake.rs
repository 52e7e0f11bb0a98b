//! The fixed-newstyle handshake and option haggling. Ends with an export
//! chosen (GO or EXPORT_NAME) or the connection closed.

use super::proto::*;
use super::stream::{skip, Stream};
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

fn read_u32(s: &mut dyn Stream) -> io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_u64(s: &mut dyn Stream) -> io::Result<u64> {
    let mut b = [0u8; 8];
    s.read_exact(&mut b)?;
    Ok(u64::from_be_bytes(b))
}

fn reply(s: &mut dyn Stream, option: u32, kind: u32, data: &[u8]) -> io::Result<()> {
    let mut msg = option_reply(option, kind, data.len() as u32).to_vec();
    msg.extend_from_slice(data);
    s.write_all(&msg)
}

fn error_reply(s: &mut dyn Stream, option: u32, kind: u32, message: &str) -> io::Result<()> {
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

/// Run the handshake (or, after STARTTLS, its rest).
pub fn negotiate(s: &mut dyn Stream, exports: &dyn Exports, tls: TlsState) -> io::Result<Outcome> {
    let no_zeroes = match tls {
        TlsState::Active { no_zeroes } => no_zeroes,
        _ => {
            let mut hello = Vec::with_capacity(18);
            hello.extend_from_slice(&NBDMAGIC.to_be_bytes());
            hello.extend_from_slice(&IHAVEOPT.to_be_bytes());
            hello.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
            s.write_all(&hello)?;
            let client_flags = read_u32(s)?;
            if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
                return Err(bad("unknown client flags"));
            }
            client_flags & FLAG_C_NO_ZEROES != 0
        }
    };
    let mut structured = false;
    let mut allocation_context = false;
    loop {
        if read_u64(s)? != IHAVEOPT {
            return Err(bad("bad option magic"));
        }
        let option = read_u32(s)?;
        let len = read_u32(s)?;
        if len > MAX_OPTION {
            if option == OPT_EXPORT_NAME || len > 16 * MAX_PAYLOAD {
                return Err(bad("option payload too large"));
            }
            skip(s, len as u64)?;
            error_reply(s, option, REP_ERR_TOO_BIG, "option payload too large")?;
            continue;
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data)?;
        if tls == TlsState::Required && !matches!(option, OPT_STARTTLS | OPT_ABORT) {
            if option == OPT_EXPORT_NAME {
                return Ok(Outcome::Closed); // no error reply exists for it
            }
            error_reply(
                s,
                option,
                REP_ERR_TLS_REQD,
                "TLS is required here (qemu: --object tls-creds-psk/x509; libnbd: nbds:// or tls=require)",
            )?;
            continue;
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
                        return Ok(Outcome::StartTls { no_zeroes });
                    }
                };
                error_reply(s, option, kind, why)?;
            }
            OPT_EXPORT_NAME => {
                let Some(v) = String::from_utf8(data).ok().and_then(|n| exports.open(&n)) else {
                    return Ok(Outcome::Closed); // the protocol's only answer: hang up
                };
                let (size, flags) = export_info(&v)?;
                let mut msg = size.to_be_bytes().to_vec();
                msg.extend_from_slice(&flags.to_be_bytes());
                if !no_zeroes {
                    msg.extend_from_slice(&[0u8; 124]);
                }
                s.write_all(&msg)?;
                return Ok(Outcome::Serve(Negotiated {
                    volume: v,
                    structured,
                    allocation_context,
                }));
            }
            OPT_ABORT => {
                let _ = reply(s, option, REP_ACK, &[]);
                return Ok(Outcome::Closed);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    error_reply(s, option, REP_ERR_INVALID, "LIST takes no data")?;
                    continue;
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
                    continue;
                };
                let Some(v) = exports.open(&name) else {
                    error_reply(
                        s,
                        option,
                        REP_ERR_UNKNOWN,
                        &format!("no export named '{name}' (names are POOL/VOLUME[@SNAPSHOT])"),
                    )?;
                    continue;
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
                    return Ok(Outcome::Serve(Negotiated {
                        volume: v,
                        structured,
                        allocation_context,
                    }));
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    error_reply(s, option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")?;
                    continue;
                }
                structured = true;
                reply(s, option, REP_ACK, &[])?;
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if !structured {
                    error_reply(
                        s,
                        option,
                        REP_ERR_INVALID,
                        "negotiate structured replies first",
                    )?;
                    continue;
                }
                let Some((name, queries)) = parse_meta_request(&data) else {
                    error_reply(s, option, REP_ERR_INVALID, "malformed meta context request")?;
                    continue;
                };
                if exports.open(&name).is_none() {
                    error_reply(
                        s,
                        option,
                        REP_ERR_UNKNOWN,
                        &format!("no export named '{name}'"),
                    )?;
                    continue;
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
                    allocation_context = wanted;
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
    }
}
