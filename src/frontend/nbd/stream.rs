//! One client connection, over TCP or a unix socket.

use nix::sys::socket::{setsockopt, sockopt};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::io::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub trait Stream: Read + Write + Send + Sync + 'static {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>>;
    /// Stop reading (graceful shutdown) or everything.
    fn shutdown(&self, how: Shutdown);
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn peer(&self) -> String;
    fn set_nonblocking(&self, on: bool) -> io::Result<()>;
    /// The socket, for poll(2).
    fn fd(&self) -> RawFd;
}

impl Stream for TcpStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = TcpStream::shutdown(self, how);
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        TcpStream::set_write_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        TcpStream::set_nonblocking(self, on)
    }
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    fn peer(&self) -> String {
        self.peer_addr()
            .map(|a| a.to_string())
            .unwrap_or_else(|_| "tcp".into())
    }
}

impl Stream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Box<dyn Stream>> {
        Ok(Box::new(self.try_clone()?))
    }
    fn shutdown(&self, how: Shutdown) {
        let _ = UnixStream::shutdown(self, how);
    }
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
    fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        UnixStream::set_nonblocking(self, on)
    }
    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    fn peer(&self) -> String {
        "unix".into()
    }
}

/// Room the kernel gives a connection's replies (`SO_SNDBUF`; Linux
/// doubles it for its own bookkeeping): a 1 MiB read reply with room to
/// spare. With the default 208 KiB of a unix socket, a worker's `writev`
/// of such a reply stopped after a fifth and the reactor sent the rest
/// from a buffer the worker's core had filled: that copy cost twice
/// nbdkit's per byte, whose thread sends what it has just read. TCP's own
/// tuning grows a buffer up to 4 MiB (`tcp_wmem`); this fixes it at 2 MiB.
/// A client that reads nothing can keep that much kernel memory per
/// connection, as TCP's tuning allows already.
pub(super) const SEND_BUFFER: usize = 1 << 20;

/// Give `fd` a send buffer of `bytes`: `SO_SNDBUFFORCE` (root, past
/// `net.core.wmem_max`), else `SO_SNDBUF` (up to that limit). What the
/// kernel allows is what the socket keeps; nothing fails for less.
pub(super) fn widen_send_buffer(fd: BorrowedFd<'_>, bytes: usize) {
    if setsockopt(&fd, sockopt::SndBufForce, &bytes).is_err() {
        let _ = setsockopt(&fd, sockopt::SndBuf, &bytes);
    }
}

/// The send buffer the kernel gives `fd` (`SO_SNDBUF`, as doubled).
#[cfg(test)]
pub(super) fn send_buffer(fd: BorrowedFd<'_>) -> usize {
    nix::sys::socket::getsockopt(&fd, sockopt::SndBuf).unwrap_or(0)
}

/// Wait until one of the descriptors is ready for what is asked (false:
/// the timeout passed).
pub(super) fn wait(fds: &[(i32, i16)], timeout: Duration) -> io::Result<bool> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&(fd, events)| libc::pollfd {
            fd,
            events,
            revents: 0,
        })
        .collect();
    // SAFETY: `p` is a valid array of `p.len()` pollfd for the call's duration.
    let n = unsafe {
        libc::poll(
            p.as_mut_ptr(),
            p.len() as libc::nfds_t,
            timeout.as_millis() as i32,
        )
    };
    match n {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => Ok(true),
                _ => Err(e),
            }
        }
        n => Ok(n > 0),
    }
}
