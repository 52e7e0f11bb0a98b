//! The send stream (`vpool snap send`, docs/FORMAT.md "Send stream"): a
//! BEGIN record naming the snapshot, its base and the stream, then data,
//! zero and discard records in increasing offset order, then END. Every
//! record carries a sequence number and a CRC32 over the stream's id, its
//! header and its payload, so a truncated, corrupt, reordered or spliced
//! stream is refused at the first record that is wrong.

use crate::error::Error;
use anyhow::bail;
use std::io::{Read, Write};

pub const RECORD_MAGIC: u32 = 0x3152_5356; // "VSR1"
pub const STREAM_VERSION: u32 = 1;
pub const RECORD_HEADER: usize = 40;
pub const BEGIN_BYTES: usize = 304;
/// Largest payload of a record: data records carry at most 1 MiB.
pub const MAX_PAYLOAD: usize = 1 << 20;
const NAME_MAX: usize = 63;

pub const FLAG_INCREMENTAL: u32 = 1;
pub const FLAG_RESUMED: u32 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Begin = 1,
    /// Bytes: the payload is the range's contents.
    Data = 2,
    /// The range reads as zeros in the snapshot (mapped zeros).
    Zero = 3,
    /// The range was discarded since the base (unmapped).
    Discard = 4,
    End = 5,
    /// The sender failed: the payload says why. Nothing follows.
    Error = 6,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Begin,
            2 => Kind::Data,
            3 => Kind::Zero,
            4 => Kind::Discard,
            5 => Kind::End,
            6 => Kind::Error,
            _ => return None,
        })
    }
}

/// What a stream is: the BEGIN record's payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub flags: u32,
    pub stream_id: [u8; 16],
    pub volume_uuid: [u8; 16],
    pub snapshot_uuid: [u8; 16],
    /// Zero for a full stream.
    pub base_uuid: [u8; 16],
    pub volume_size: u64,
    pub chunk_size: u64,
    /// Where a resumed stream starts (0 otherwise).
    pub resume_offset: u64,
    /// Data bytes the stream carries (for progress).
    pub data_bytes: u64,
    pub created: u64,
    pub snapshot: String,
    pub base: String,
    pub volume: String,
}

impl Header {
    pub fn incremental(&self) -> bool {
        self.flags & FLAG_INCREMENTAL != 0
    }

    fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BEGIN_BYTES];
        b[0..4].copy_from_slice(&STREAM_VERSION.to_le_bytes());
        b[4..8].copy_from_slice(&self.flags.to_le_bytes());
        b[8..24].copy_from_slice(&self.stream_id);
        b[24..40].copy_from_slice(&self.volume_uuid);
        b[40..56].copy_from_slice(&self.snapshot_uuid);
        b[56..72].copy_from_slice(&self.base_uuid);
        for (at, v) in [
            (72, self.volume_size),
            (80, self.chunk_size),
            (88, self.resume_offset),
            (96, self.data_bytes),
            (104, self.created),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        for (at, s) in [
            (112, &self.snapshot),
            (176, &self.base),
            (240, &self.volume),
        ] {
            let n = s.len().min(NAME_MAX);
            b[at] = n as u8;
            b[at + 1..at + 1 + n].copy_from_slice(&s.as_bytes()[..n]);
        }
        b
    }

    fn decode(b: &[u8]) -> anyhow::Result<Header> {
        if b.len() != BEGIN_BYTES {
            bail!(damaged(format!("its BEGIN record holds {} bytes", b.len())));
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let u64_at = |o: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(x)
        };
        let id = |o: usize| {
            let mut x = [0u8; 16];
            x.copy_from_slice(&b[o..o + 16]);
            x
        };
        let text = |o: usize| -> anyhow::Result<String> {
            let n = b[o] as usize;
            if n > NAME_MAX {
                bail!(damaged("a name in its BEGIN record is too long".into()));
            }
            Ok(String::from_utf8(b[o + 1..o + 1 + n].to_vec())
                .map_err(|_| damaged("a name in its BEGIN record is not UTF-8".into()))?)
        };
        let version = u32_at(0);
        if version != STREAM_VERSION {
            bail!(Error::Invalid(format!(
                "the stream is of format version {version}; this vpool reads version {STREAM_VERSION}: receive it with the vpool that sent it, or a newer one"
            )));
        }
        let h = Header {
            flags: u32_at(4),
            stream_id: id(8),
            volume_uuid: id(24),
            snapshot_uuid: id(40),
            base_uuid: id(56),
            volume_size: u64_at(72),
            chunk_size: u64_at(80),
            resume_offset: u64_at(88),
            data_bytes: u64_at(96),
            created: u64_at(104),
            snapshot: text(112)?,
            base: text(176)?,
            volume: text(240)?,
        };
        if h.flags & !(FLAG_INCREMENTAL | FLAG_RESUMED) != 0 {
            bail!(damaged(format!("unknown flags {:#x}", h.flags)));
        }
        if h.incremental() != (h.base_uuid != [0; 16]) {
            bail!(damaged("its base and its flags disagree".into()));
        }
        if h.volume_size == 0
            || !h.volume_size.is_multiple_of(4096)
            || h.resume_offset > h.volume_size
        {
            bail!(damaged("its volume size or resume offset is wrong".into()));
        }
        Ok(h)
    }
}

fn damaged(why: String) -> Error {
    Error::Invalid(format!(
        "the stream is damaged: {why}; nothing was changed by this record"
    ))
}

/// One record of a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub kind: Kind,
    pub offset: u64,
    pub len: u64,
    pub payload: Vec<u8>,
}

fn crc(stream_id: &[u8; 16], head: &[u8], payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(stream_id);
    h.update(head);
    h.update(payload);
    h.finalize()
}

/// Writes a stream: `begin`, then records in offset order, then `end`.
pub struct Writer<W: Write> {
    out: W,
    stream_id: [u8; 16],
    seq: u64,
    pub data_bytes: u64,
    pub written: u64,
}

impl<W: Write> Writer<W> {
    pub fn begin(mut out: W, h: &Header) -> std::io::Result<Writer<W>> {
        let payload = h.encode();
        write_record(&mut out, &[0; 16], 0, Kind::Begin, 0, 0, &payload)?;
        Ok(Writer {
            out,
            stream_id: h.stream_id,
            seq: 0,
            data_bytes: 0,
            written: (RECORD_HEADER + BEGIN_BYTES) as u64,
        })
    }

    pub fn record(
        &mut self,
        kind: Kind,
        offset: u64,
        len: u64,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.seq += 1;
        write_record(
            &mut self.out,
            &self.stream_id,
            self.seq,
            kind,
            offset,
            len,
            payload,
        )?;
        if kind == Kind::Data {
            self.data_bytes += payload.len() as u64;
        }
        self.written += (RECORD_HEADER + payload.len()) as u64;
        Ok(())
    }

    /// END: the records and data bytes the stream carried.
    pub fn end(mut self) -> std::io::Result<W> {
        let mut p = Vec::with_capacity(16);
        p.extend_from_slice(&self.seq.to_le_bytes());
        p.extend_from_slice(&self.data_bytes.to_le_bytes());
        self.record(Kind::End, 0, 0, &p)?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// ERROR: the sender failed part way; the receiver keeps what came.
    pub fn error(mut self, why: &str) -> std::io::Result<()> {
        let why = &why.as_bytes()[..why.len().min(4096)];
        self.record(Kind::Error, 0, 0, why)?;
        self.out.flush()
    }
}

fn write_record(
    out: &mut dyn Write,
    stream_id: &[u8; 16],
    seq: u64,
    kind: Kind,
    offset: u64,
    len: u64,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut head = [0u8; RECORD_HEADER];
    head[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
    head[4] = kind as u8;
    head[8..16].copy_from_slice(&seq.to_le_bytes());
    head[16..24].copy_from_slice(&offset.to_le_bytes());
    head[24..32].copy_from_slice(&len.to_le_bytes());
    head[32..36].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    let c = crc(stream_id, &head[..36], payload);
    head[36..40].copy_from_slice(&c.to_le_bytes());
    out.write_all(&head)?;
    out.write_all(payload)
}

/// Reads and checks a stream record by record.
pub struct Reader<R: Read> {
    input: R,
    pub header: Header,
    seq: u64,
    /// Where the next record may start (records never go back).
    pub next_offset: u64,
    pub data_bytes: u64,
    pub ended: bool,
}

impl<R: Read> Reader<R> {
    /// Read and check the BEGIN record.
    pub fn begin(mut input: R) -> anyhow::Result<Reader<R>> {
        let (kind, _, offset, len, payload) = read_record(&mut input, &[0; 16], 0)?
            .ok_or_else(|| Error::Invalid("the stream is empty: nothing was sent".into()))?;
        if kind != Kind::Begin || offset != 0 || len != 0 {
            bail!(Error::Invalid(
                "this is not a vpool send stream (it does not start with a BEGIN record)".into()
            ));
        }
        let header = Header::decode(&payload)?;
        Ok(Reader {
            input,
            next_offset: header.resume_offset,
            header,
            seq: 0,
            data_bytes: 0,
            ended: false,
        })
    }

    /// The next record, checked: `None` after END. A stream that stops
    /// before its END is an error (truncated).
    pub fn next_record(&mut self) -> anyhow::Result<Option<Record>> {
        if self.ended {
            return Ok(None);
        }
        self.seq += 1;
        let Some((kind, seq, offset, len, payload)) =
            read_record(&mut self.input, &self.header.stream_id, self.seq)?
        else {
            bail!(Error::Invalid(
                "the stream ends before its END record (truncated: the sender stopped or the pipe broke)".to_string()
            ));
        };
        if seq != self.seq {
            bail!(damaged(format!(
                "record {seq} came where record {} belongs",
                self.seq
            )));
        }
        match kind {
            Kind::Begin => bail!(damaged("a second BEGIN record".into())),
            Kind::Error => bail!(Error::Invalid(format!(
                "the sender failed: {}",
                String::from_utf8_lossy(&payload)
            ))),
            Kind::End => {
                if payload.len() != 16 {
                    bail!(damaged("its END record is malformed".into()));
                }
                let records = u64::from_le_bytes(payload[0..8].try_into().unwrap_or_default());
                let bytes = u64::from_le_bytes(payload[8..16].try_into().unwrap_or_default());
                if records != self.seq - 1 || bytes != self.data_bytes {
                    bail!(damaged(format!(
                        "its END counts {records} records and {bytes} data bytes, {} and {} came",
                        self.seq - 1,
                        self.data_bytes
                    )));
                }
                self.ended = true;
                return Ok(None);
            }
            Kind::Data | Kind::Zero | Kind::Discard => {}
        }
        let end = offset.checked_add(len);
        if offset < self.next_offset || end.is_none_or(|e| e > self.header.volume_size) || len == 0
        {
            bail!(damaged(format!(
                "record {seq} covers bytes {offset}+{len}, out of order or outside the volume"
            )));
        }
        if (kind == Kind::Data) == payload.is_empty()
            || (kind == Kind::Data && payload.len() as u64 != len)
        {
            bail!(damaged(format!(
                "record {seq}'s payload does not match its length"
            )));
        }
        self.next_offset = offset + len;
        self.data_bytes += payload.len() as u64;
        Ok(Some(Record {
            kind,
            offset,
            len,
            payload,
        }))
    }
}

type RawRecord = (Kind, u64, u64, u64, Vec<u8>);

/// One record: `None` at a clean end of input (before any byte of it).
fn read_record(
    input: &mut dyn Read,
    stream_id: &[u8; 16],
    want_seq: u64,
) -> anyhow::Result<Option<RawRecord>> {
    let mut head = [0u8; RECORD_HEADER];
    let mut got = 0;
    let magic = RECORD_MAGIC.to_le_bytes();
    let not_a_stream = || {
        Error::Invalid(
            "this is not a vpool send stream (it does not start with a BEGIN record)".into(),
        )
    };
    while got < RECORD_HEADER {
        match input.read(&mut head[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) if want_seq == 0 && head[..got.min(4)] != magic[..got.min(4)] => {
                bail!(not_a_stream())
            }
            Ok(0) => bail!(Error::Invalid(format!(
                "the stream ends inside record {want_seq} (truncated)"
            ))),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(anyhow::Error::new(e).context("reading the stream")),
        }
    }
    let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap_or_default());
    if u32::from_le_bytes([head[0], head[1], head[2], head[3]]) != RECORD_MAGIC {
        if want_seq == 0 {
            bail!(not_a_stream());
        }
        bail!(damaged(format!("record {want_seq} has no record magic")));
    }
    let kind = Kind::from_u8(head[4])
        .ok_or_else(|| damaged(format!("record {want_seq} is of unknown kind {}", head[4])))?;
    let plen = u32::from_le_bytes([head[32], head[33], head[34], head[35]]) as usize;
    if plen > MAX_PAYLOAD {
        bail!(damaged(format!(
            "record {want_seq} announces a payload of {plen} bytes"
        )));
    }
    let mut payload = vec![0u8; plen];
    input.read_exact(&mut payload).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            anyhow::Error::new(Error::Invalid(format!(
                "the stream ends inside record {want_seq} (truncated)"
            )))
        } else {
            anyhow::Error::new(e).context("reading the stream")
        }
    })?;
    let want = u32::from_le_bytes([head[36], head[37], head[38], head[39]]);
    if crc(stream_id, &head[..36], &payload) != want {
        bail!(damaged(format!("record {want_seq} fails its checksum")));
    }
    Ok(Some((kind, u64_at(8), u64_at(16), u64_at(24), payload)))
}

/// For fuzzing: arbitrary bytes as a stream. Must never panic nor take
/// memory beyond one record's payload; a stream read to its END holds
/// records in order, inside the volume.
pub fn fuzz_stream(data: &[u8]) {
    let Ok(mut r) = Reader::begin(data) else {
        return;
    };
    let mut last = r.header.resume_offset;
    while let Ok(Some(rec)) = r.next_record() {
        assert!(rec.offset >= last && rec.offset + rec.len <= r.header.volume_size);
        assert!(rec.payload.len() <= MAX_PAYLOAD);
        last = rec.offset + rec.len;
    }
}

/// The header of [`sample_stream`].
pub fn sample_header() -> Header {
    Header {
        flags: 0,
        stream_id: [9; 16],
        volume_uuid: [1; 16],
        snapshot_uuid: [2; 16],
        base_uuid: [0; 16],
        volume_size: 1 << 20,
        chunk_size: 65536,
        resume_offset: 0,
        data_bytes: 8192,
        created: 5,
        snapshot: "s1".into(),
        base: String::new(),
        volume: "db".into(),
    }
}

/// A valid stream of a few records, to mutate (fuzzing and tests).
pub fn sample_stream() -> Vec<u8> {
    let mut out = Vec::new();
    if let Ok(mut w) = Writer::begin(&mut out, &sample_header()) {
        let _ = w.record(Kind::Data, 0, 512, &[7; 512]);
        let _ = w.record(Kind::Zero, 65536, 65536, &[]);
        let _ = w.record(Kind::Discard, 200_704, 4096, &[]);
        let _ = w.end();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        sample_header()
    }

    fn stream() -> Vec<u8> {
        let mut w = Writer::begin(Vec::new(), &header()).unwrap();
        w.record(Kind::Data, 0, 4096, &[7; 4096]).unwrap();
        w.record(Kind::Zero, 65536, 65536, &[]).unwrap();
        w.record(Kind::Data, 200_000, 4096, &[8; 4096]).unwrap();
        w.end().unwrap()
    }

    fn read_all(b: &[u8]) -> anyhow::Result<(Header, Vec<Record>)> {
        let mut r = Reader::begin(b)?;
        let mut out = Vec::new();
        while let Some(rec) = r.next_record()? {
            out.push(rec);
        }
        Ok((r.header, out))
    }

    #[test]
    fn a_stream_round_trips() {
        let (h, recs) = read_all(&stream()).unwrap();
        assert_eq!(h, header());
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].kind, Kind::Zero);
        assert_eq!(recs[2].payload, vec![8; 4096]);
    }

    #[test]
    fn every_damage_is_refused() {
        let s = stream();
        // Truncated anywhere.
        for cut in [
            0,
            10,
            RECORD_HEADER + BEGIN_BYTES,
            s.len() - 1,
            s.len() - 60,
        ] {
            assert!(read_all(&s[..cut]).is_err(), "cut at {cut}");
        }
        // Any bit flipped.
        for at in (0..s.len()).step_by(97) {
            let mut bad = s.clone();
            bad[at] ^= 0x10;
            assert!(read_all(&bad).is_err(), "bit flipped at {at}");
        }
        // Two records swapped.
        let first = RECORD_HEADER + BEGIN_BYTES;
        let second = first + RECORD_HEADER + 4096;
        let third = second + RECORD_HEADER;
        let mut swapped = s[..first].to_vec();
        swapped.extend_from_slice(&s[second..third]);
        swapped.extend_from_slice(&s[first..second]);
        swapped.extend_from_slice(&s[third..]);
        assert!(read_all(&swapped).is_err());
        // A record of another stream spliced in.
        let mut other = header();
        other.stream_id = [3; 16];
        let mut w = Writer::begin(Vec::new(), &other).unwrap();
        w.record(Kind::Data, 0, 4096, &[7; 4096]).unwrap();
        let o = w.end().unwrap();
        let mut spliced = s[..first].to_vec();
        spliced.extend_from_slice(&o[first..first + RECORD_HEADER + 4096]);
        spliced.extend_from_slice(&s[second..]);
        assert!(read_all(&spliced).is_err());
    }

    #[test]
    fn a_senders_error_is_reported() {
        let mut w = Writer::begin(Vec::new(), &header()).unwrap();
        w.record(Kind::Data, 0, 4096, &[7; 4096]).unwrap();
        let mut out = Vec::new();
        {
            let mut w2 = Writer::begin(&mut out, &header()).unwrap();
            w2.record(Kind::Data, 0, 4096, &[7; 4096]).unwrap();
            w2.error("member failed").unwrap();
        }
        let e = read_all(&out).unwrap_err();
        assert!(format!("{e:#}").contains("member failed"), "{e:#}");
    }
}
