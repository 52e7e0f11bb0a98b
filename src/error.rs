//! One error type for the library. Variants carry what a caller can act on;
//! messages say what is wrong, and where useful what to do.

use std::io;

#[derive(thiserror::Error, Debug)]
pub enum Error {
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
    Corrupt(String),
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
