//! One error type for the library (layer 0: it may use only `units`).
//! Variants carry what a caller can act on, and a reader needs: a damaged
//! metadata block says which block, of which tree, and why each copy was
//! refused ([`Damage`]); a member's failed I/O says which member, device
//! and offset ([`MemberIo`], inside [`Error::Io`]). Messages say what is
//! wrong, and where useful what to do.

use crate::units::Block;
use std::fmt;
use std::io;

#[derive(thiserror::Error, Debug)]
pub enum Error {
    /// An I/O error; when a member failed it, `source` carries a
    /// [`MemberIo`] (see [`Error::member`]).
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    /// Physical space (data chunks or metadata blocks) exhausted.
    #[error("pool '{pool}' is full: {detail}")]
    NoSpace { pool: String, detail: String },
    #[error("metadata is damaged: {0}")]
    Corrupt(Box<Damage>),
    #[error("{0} is read-only")]
    ReadOnly(String),
    #[error("{0}")]
    InUse(String),
    /// Not enough members to serve the data.
    #[error("{0}")]
    Unavailable(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// Damaged metadata described in words only (an inconsistency between
    /// structures rather than one bad block).
    pub fn corrupt(what: impl Into<String>) -> Error {
        Damage::new(what, Why::Stated).into()
    }

    /// The member whose I/O failed, if this is a member's error.
    pub fn member(&self) -> Option<&MemberIo> {
        match self {
            Error::Io { source, .. } => MemberIo::of(source),
            _ => None,
        }
    }

    /// The damage, if this is damaged metadata.
    pub fn damage(&self) -> Option<&Damage> {
        match self {
            Error::Corrupt(d) => Some(d),
            _ => None,
        }
    }

    /// This error as met by I/O on volume `name` (`pool/volume`): a
    /// device's error and damaged metadata then name the volume too. The
    /// variant is kept, so callers match on it as before.
    pub fn in_volume(self, name: &str) -> Error {
        match self {
            Error::Io { context, source } => Error::Io {
                context: format!("volume '{name}': {context}"),
                source,
            },
            Error::Corrupt(mut d) => {
                d.volume = Some(name.to_string());
                Error::Corrupt(d)
            }
            e => e,
        }
    }

    /// The errno a block or file client should see: the one mapping the
    /// library, NBD (through `nbd::proto::nbd_error`) and FUSE use. A
    /// member's error is the volume's EIO whatever it was on the member (a
    /// member's ENOSPC is not the pool being full).
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { .. } => libc::EIO,
            Error::NotFound(_) => libc::ENOENT,
            Error::Exists(_) => libc::EEXIST,
            Error::Invalid(_) => libc::EINVAL,
            Error::NoSpace { .. } => libc::ENOSPC,
            Error::Corrupt(_) | Error::Unavailable(_) => libc::EIO,
            Error::ReadOnly(_) => libc::EROFS,
            Error::InUse(_) => libc::EBUSY,
        }
    }
}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::from_raw_os_error(e.errno())
    }
}

impl From<Damage> for Error {
    fn from(d: Damage) -> Error {
        Error::Corrupt(Box::new(d))
    }
}

/// A member I/O that failed: which member, which device, what, where. The
/// RAID layer wraps a member's `io::Error` in one, so that the error that
/// reaches a caller names the member without parsing a message.
#[derive(Debug)]
pub struct MemberIo {
    /// Index in the pool's member table.
    pub member: usize,
    /// The device or file, as the member table names it.
    pub device: String,
    pub op: Op,
    /// Byte offset on the member (none for a flush).
    pub offset: Option<u64>,
    pub source: io::Error,
}

/// The kind of a member I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    Discard,
}

impl MemberIo {
    /// Wrap as an `io::Error` of the same kind.
    pub fn into_io(self) -> io::Error {
        io::Error::new(self.source.kind(), self)
    }

    /// The member error inside `e`, if it is one.
    pub fn of(e: &io::Error) -> Option<&MemberIo> {
        e.get_ref()?.downcast_ref::<MemberIo>()
    }
}

impl fmt::Display for MemberIo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
        };
        write!(f, "member {} ({}): {op}", self.member, self.device)?;
        if let Some(o) = self.offset {
            write!(f, " at byte {o}")?;
        }
        write!(f, " failed: {}", self.source)
    }
}

impl std::error::Error for MemberIo {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Why a metadata block read from a device was refused: by its own
/// header and checksum, or because it is not what the pointer to it
/// expects (a lost or misdirected write).
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum BlockFault {
    #[error("block is {0} bytes, expected 4096")]
    Size(usize),
    #[error("kind {found} where {expected} expected")]
    Kind { found: u16, expected: &'static str },
    #[error("checksum mismatch")]
    Checksum,
    #[error("no superblock (magic missing)")]
    NoMagic,
    #[error("unsupported format version {0}")]
    Version(u32),
    #[error("outside the metadata area")]
    OutsideArea,
    #[error("block claims number {0} (misplaced write)")]
    Misplaced(u64),
    #[error("block belongs to another pool")]
    ForeignPool,
    #[error("written by transaction {found} after the last commit {last}")]
    Future { found: u64, last: u64 },
    #[error("level {found} where its parent expects {expected}")]
    Level { found: u8, expected: u8 },
    #[error("value size {found} where its tree has {expected}")]
    ValueSize { found: u16, expected: u16 },
    #[error("written by transaction {0}, not the one its parent points at (a lost write left an older version)")]
    Stale(u64),
    #[error("owner {found:#x} where its tree is {expected:#x}")]
    Owner { found: u64, expected: u64 },
    #[error("empty, where its parent points at entries")]
    Empty,
    #[error("keys start at {first}, below its parent's {low}")]
    KeysBelow { first: u64, low: u64 },
    #[error("keys reach {last}, past its parent's bound {high}")]
    KeysPast { last: u64, high: u64 },
    /// The block's own structure is wrong (sizes, order, pointers).
    #[error("{0}")]
    Malformed(String),
}

/// One copy of a metadata block that could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFault {
    /// Which copy: "member 1 (/dev/sdb)" or "extent copy 0".
    pub copy: String,
    pub why: CopyWhy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyWhy {
    /// It could not be read.
    Io(String),
    /// It was read and refused.
    Invalid(BlockFault),
}

impl fmt::Display for CopyFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.why {
            CopyWhy::Io(e) => write!(f, "{}: {e}", self.copy),
            CopyWhy::Invalid(b) => write!(f, "{}: {b}", self.copy),
        }
    }
}

/// Damaged metadata: whose (pool, and the volume whose I/O met it), what
/// was being read, which block of which tree, and why it (or each of its
/// copies) was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The pool, when the reader knows it (the metadata store does).
    pub pool: Option<String>,
    /// The volume (`pool/volume`) whose I/O met the damage.
    pub volume: Option<String>,
    /// What was being read: "node", "space-map page 3", "catalog", ...
    pub what: String,
    /// The metadata block, when one block is at fault.
    pub block: Option<Block>,
    /// The tree (the owner a node carries), when known.
    pub tree: Option<u64>,
    pub why: Why,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Why {
    /// `what` says it all.
    Stated,
    /// The one copy looked at was refused.
    Block(BlockFault),
    /// Every copy failed, each for its reason.
    Copies(Vec<CopyFault>),
}

impl Damage {
    pub fn new(what: impl Into<String>, why: Why) -> Damage {
        Damage {
            pool: None,
            volume: None,
            what: what.into(),
            block: None,
            tree: None,
            why,
        }
    }

    /// Damage of metadata block `b`.
    pub fn block(what: impl Into<String>, b: Block, why: Why) -> Damage {
        Damage {
            block: Some(b),
            ..Damage::new(what, why)
        }
    }

    pub fn in_tree(mut self, owner: u64) -> Damage {
        self.tree = Some(owner);
        self
    }

    /// Damage in pool `name` (nothing when the name is not known yet).
    pub fn in_pool(mut self, name: &str) -> Damage {
        if !name.is_empty() {
            self.pool = Some(name.to_string());
        }
        self
    }
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.pool, &self.volume) {
            (_, Some(v)) => write!(f, "volume '{v}': ")?,
            (Some(p), None) => write!(f, "pool '{p}': ")?,
            (None, None) => {}
        }
        f.write_str(&self.what)?;
        if let Some(b) = self.block {
            write!(f, " (metadata block {b}")?;
            if let Some(t) = self.tree {
                write!(f, ", tree {t:#x}")?;
            }
            f.write_str(")")?;
        }
        match &self.why {
            Why::Stated => Ok(()),
            Why::Block(b) => write!(f, ": {b}"),
            Why::Copies(c) if c.is_empty() => write!(f, ": no copy is present"),
            Why::Copies(c) => {
                f.write_str(": ")?;
                for (i, x) in c.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_errors_are_found_in_an_io_error() {
        let m = MemberIo {
            member: 2,
            device: "/dev/sdc".into(),
            op: Op::Write,
            offset: Some(8192),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        let e = Error::io("writing data", m.into_io());
        let got = e.member().expect("member error");
        assert_eq!((got.member, got.offset, got.op), (2, Some(8192), Op::Write));
        assert!(e
            .to_string()
            .contains("member 2 (/dev/sdc): write at byte 8192 failed"));
        assert_eq!(e.errno(), libc::EIO);
    }

    #[test]
    fn damage_names_the_block_the_tree_and_each_copy() {
        let d = Damage::block(
            "node",
            Block(77),
            Why::Copies(vec![
                CopyFault {
                    copy: "member 0 (a)".into(),
                    why: CopyWhy::Invalid(BlockFault::Misplaced(78)),
                },
                CopyFault {
                    copy: "member 1 (b)".into(),
                    why: CopyWhy::Io("EIO".into()),
                },
            ]),
        )
        .in_tree(0x10);
        let e: Error = d.clone().into();
        assert_eq!(e.damage(), Some(&d));
        assert_eq!(
            e.to_string(),
            "metadata is damaged: node (metadata block 77, tree 0x10): member 0 (a): block claims number 78 (misplaced write); member 1 (b): EIO"
        );
        let e: Error = d.in_pool("tank").into();
        assert!(e
            .to_string()
            .starts_with("metadata is damaged: pool 'tank': node (metadata block 77"));
        let e = e.in_volume("tank/db");
        assert!(e
            .to_string()
            .starts_with("metadata is damaged: volume 'tank/db': node (metadata block 77"));
        assert_eq!(e.damage().and_then(|d| d.pool.as_deref()), Some("tank"));
    }

    #[test]
    fn a_volume_names_itself_in_a_members_error_and_keeps_the_variant() {
        let m = MemberIo {
            member: 0,
            device: "/dev/sdb".into(),
            op: Op::Read,
            offset: Some(4096),
            source: io::Error::from_raw_os_error(libc::EIO),
        };
        let e = Error::io("reading data", m.into_io()).in_volume("tank/db");
        assert_eq!(e.member().map(|m| m.member), Some(0));
        assert!(e
            .to_string()
            .starts_with("volume 'tank/db': reading data: member 0 (/dev/sdb): read at byte 4096"));
        let e = Error::NotFound("x".into()).in_volume("tank/db");
        assert!(matches!(e, Error::NotFound(_)));
    }
}
