//! The transmission phase, on the workers: validate a request, run it
//! against the volume and reply (replies go out in the order requests
//! finish, many in flight). The reactor has read the request and its
//! payload and charged its bytes to the connection's budget; the reply
//! gives them back once the client has taken it.

use super::conn::{Body, Conn, Held, Job, Work};
use super::handshake::Negotiated;
use super::proto::*;
use crate::error::Error;
use crate::thin::known::{self, Received};
use std::sync::atomic::Ordering;

/// Least a request is charged, so many tiny requests are bounded too.
pub(super) const MIN_COST: u64 = 64 << 10;

/// Run one item of a connection's work (on a worker). Replies may be
/// held back in `held` (see `Conn::reply`).
pub(super) fn run(conn: &Conn, work: Work, held: &mut Held) {
    match work {
        Work::Option { option, data } => {
            let mut out = Vec::new();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                conn.handshake
                    .lock()
                    .option(option, data, &*conn.policy.exports, &mut out)
            }))
            .unwrap_or_else(|_| Err(std::io::Error::other("an option's answer panicked")));
            conn.send(&out, &[], 0);
            *conn.outcome.lock() = Some(outcome);
            conn.hub.revisit(conn.id);
        }
        Work::Request(job) => request(conn, job, held),
    }
}

fn request(conn: &Conn, job: Job, held: &mut Held) {
    let Job {
        req,
        mut data,
        mut crcs,
        error,
        cost,
        ..
    } = job;
    if conn.dead.load(Ordering::SeqCst) {
        // Nobody to answer: drop it.
        conn.give_buffer(data);
        conn.release(cost);
        return;
    }
    let Some(neg) = conn.serving.get() else {
        conn.kill();
        conn.release(cost);
        return;
    };
    // Replies held back wait only on plain reads and writes: a flush, a
    // FUA write or a trim may take a device's fsync, so they go first.
    if !matches!(req.kind, CMD_READ | CMD_WRITE) || req.flags & CMD_FLAG_FUA != 0 {
        conn.send_held(held);
    }
    let error = error.or_else(|| validate(neg, &req));
    if error.is_none() && req.kind == CMD_WRITE {
        name_ahead(conn, neg);
    }
    let outcome = match error {
        Some(e) => Err(e),
        // A panic in one request is that request's EIO: the worker, the
        // connection and the others' requests go on.
        None => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            execute(conn, neg, &req, &mut data, &mut crcs)
        }))
        .unwrap_or_else(|_| {
            tracing::error!("nbd: a request panicked; it gets EIO and the connection goes on");
            Err(EIO)
        }),
    };
    match outcome {
        // The read's buffer goes with its reply (back to the pool once out).
        Ok(Payload::Read) => return send_read(conn, held, neg, &req, data, cost),
        Ok(Payload::None) => {
            let h = simple_reply(req.cookie, 0);
            conn.reply(held, &h, Body::Borrowed(&[]), cost)
        }
        Ok(Payload::Status(descriptors)) => send_status(conn, held, &req, &descriptors, cost),
        Err(e) => send_error(conn, held, neg, &req, e, cost),
    }
    conn.give_buffer(data);
}

/// Largest queued write whose intents `name_ahead` queues.
const AHEAD_MAX: usize = 32 << 10;

/// Before a write runs: queue the write intents of the small writes
/// waiting behind it in its connection's queue, so that its round of
/// intents (on pools that overwrite in place under intents) takes theirs
/// too, and each of them, when a worker runs it, finds them durable
/// instead of running a round of its own (with a client's queue deep,
/// rounds carried about one write each). Each write is named once; the
/// queue's lock is held only to gather their checksums (the reactor
/// computed them as the payloads came: `thin::known`).
fn name_ahead(conn: &Conn, neg: &Negotiated) {
    // The checksum block: only whole ones are named.
    const BLOCK: usize = crate::thin::store::csum::CSUM_BLOCK as usize;
    let v = &neg.volume;
    if !v.names_ahead() {
        return;
    }
    let writes: Vec<(u64, Vec<u32>, Vec<u16>)> = {
        let mut q = conn.queue.lock();
        q.work
            .iter_mut()
            .take(super::conn::PER_CONN)
            .filter_map(|w| match w {
                Work::Request(j)
                    if j.req.kind == CMD_WRITE
                        && !j.announced
                        && j.error.is_none()
                        && (1..=AHEAD_MAX).contains(&j.data.len())
                        && j.data.len().is_multiple_of(BLOCK)
                        && j.req.offset.is_multiple_of(BLOCK as u64) =>
                {
                    j.announced = true;
                    let crcs = known::with_known(&j.data, &mut j.crcs, || {
                        j.data.chunks(BLOCK).map(crate::thin::csum::crc).collect()
                    });
                    let heads = crate::thin::csum::heads(&j.data, 0);
                    Some((j.req.offset, crcs, heads))
                }
                _ => None,
            })
            .collect()
    };
    if !writes.is_empty() {
        v.name_ahead(&writes);
    }
}

/// Protocol-level checks, before touching the volume.
fn validate(neg: &Negotiated, req: &Request) -> Option<u32> {
    let known =
        CMD_FLAG_FUA | CMD_FLAG_NO_HOLE | CMD_FLAG_DF | CMD_FLAG_REQ_ONE | CMD_FLAG_FAST_ZERO;
    if req.flags & !known != 0 {
        return Some(EINVAL);
    }
    let allowed = CMD_FLAG_FUA
        | match req.kind {
            CMD_READ => CMD_FLAG_DF,
            CMD_WRITE_ZEROES => CMD_FLAG_NO_HOLE | CMD_FLAG_FAST_ZERO,
            CMD_BLOCK_STATUS => CMD_FLAG_REQ_ONE,
            _ => 0,
        };
    if req.flags & !allowed != 0 {
        return Some(EINVAL);
    }
    let v = &neg.volume;
    match req.kind {
        CMD_FLUSH => return None,
        CMD_READ | CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES | CMD_BLOCK_STATUS => {}
        _ => return Some(EINVAL),
    }
    // The protocol: a block status length MUST NOT be 0; the request is
    // answered with EINVAL and the connection goes on.
    if req.kind == CMD_BLOCK_STATUS
        && (!(neg.allocation_context && neg.structured) || req.length == 0)
    {
        return Some(EINVAL);
    }
    if req.kind == CMD_READ && req.length > MAX_PAYLOAD {
        return Some(EOVERFLOW);
    }
    if v.is_read_only() && matches!(req.kind, CMD_WRITE | CMD_TRIM | CMD_WRITE_ZEROES) {
        return Some(EPERM);
    }
    let size = match v.size() {
        Ok(s) => s,
        Err(_) => return Some(EIO),
    };
    match req.offset.checked_add(req.length as u64) {
        Some(end) if end <= size => None,
        _ if req.kind == CMD_WRITE => Some(ENOSPC),
        _ => Some(EINVAL),
    }
}

enum Payload {
    None,
    Read,
    Status(Vec<(u32, u32)>),
}

fn execute(
    conn: &Conn,
    neg: &Negotiated,
    req: &Request,
    data: &mut Vec<u8>,
    crcs: &mut Received,
) -> Result<Payload, u32> {
    let v = &neg.volume;
    let fua = req.flags & CMD_FLAG_FUA != 0;
    let e = |e: Error| errno(&e);
    match req.kind {
        CMD_READ => {
            *data = conn.take_buffer(req.length as usize);
            v.read_at(data, req.offset).map_err(e)?;
            return Ok(Payload::Read);
        }
        CMD_WRITE => known::with_known(data, crcs, || v.write_at(data, req.offset)).map_err(e)?,
        CMD_FLUSH => v.flush().map_err(e)?,
        CMD_TRIM => v.discard(req.offset, req.length as u64).map_err(e)?,
        CMD_WRITE_ZEROES => {
            if req.flags & CMD_FLAG_NO_HOLE != 0 {
                if req.flags & CMD_FLAG_FAST_ZERO != 0 {
                    return Err(ENOTSUP);
                }
                let zeros = vec![0u8; (req.length as usize).min(1 << 20)];
                let mut off = 0u64;
                while off < req.length as u64 {
                    let n = (req.length as u64 - off).min(zeros.len() as u64) as usize;
                    v.write_at(&zeros[..n], req.offset + off).map_err(e)?;
                    off += n as u64;
                }
            } else {
                v.write_zeroes(req.offset, req.length as u64).map_err(e)?;
            }
        }
        CMD_BLOCK_STATUS => {
            let max = if req.flags & CMD_FLAG_REQ_ONE != 0 {
                1
            } else {
                1024
            };
            let extents = v
                .allocation(req.offset, req.length as u64, max)
                .map_err(e)?;
            let descriptors = extents
                .into_iter()
                .map(|(len, mapped)| (len as u32, if mapped { 0 } else { STATE_HOLE | STATE_ZERO }))
                .collect();
            return Ok(Payload::Status(descriptors));
        }
        _ => return Err(EINVAL),
    }
    if fua && req.kind != CMD_FLUSH {
        v.flush().map_err(e)?;
    }
    Ok(Payload::None)
}

fn errno(e: &Error) -> u32 {
    nbd_error(e.errno())
}

fn send_read(
    conn: &Conn,
    held: &mut Held,
    neg: &Negotiated,
    req: &Request,
    data: Vec<u8>,
    cost: u64,
) {
    if !neg.structured {
        let h = simple_reply(req.cookie, 0);
        return conn.reply(held, &h, Body::Owned(data), cost);
    }
    let mut h = structured_header(
        req.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        data.len() as u32 + 8,
    )
    .to_vec();
    h.extend_from_slice(&req.offset.to_be_bytes());
    conn.reply(held, &h, Body::Owned(data), cost)
}

fn send_status(conn: &Conn, held: &mut Held, req: &Request, descriptors: &[(u32, u32)], cost: u64) {
    let mut body = ALLOCATION_CONTEXT_ID.to_be_bytes().to_vec();
    for (len, flags) in descriptors {
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&flags.to_be_bytes());
    }
    let h = structured_header(
        req.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        body.len() as u32,
    );
    conn.reply(held, &h, Body::Borrowed(&body), cost)
}

fn send_error(
    conn: &Conn,
    held: &mut Held,
    neg: &Negotiated,
    req: &Request,
    error: u32,
    cost: u64,
) {
    if !neg.structured || !matches!(req.kind, CMD_READ | CMD_BLOCK_STATUS) {
        let h = simple_reply(req.cookie, error);
        return conn.reply(held, &h, Body::Borrowed(&[]), cost);
    }
    let mut body = error.to_be_bytes().to_vec();
    body.extend_from_slice(&0u16.to_be_bytes());
    let h = structured_header(
        req.cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        body.len() as u32,
    );
    conn.reply(held, &h, Body::Borrowed(&body), cost)
}
